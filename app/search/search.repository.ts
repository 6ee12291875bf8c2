import { type Generated, type Kysely, type RawBuilder, type SqlBool, sql } from 'kysely';
import type { AppDatabase } from '../database.ts';

/**
 * The term tables of `app/migrations/0003-search.sql`. Their rows are written by triggers, never
 * by the application, so only the search reads them.
 */
type SearchTables = {
  contact_search_terms: { tenant_id: Generated<string>; contact_id: string; term: string };
  contact_attribute_terms: { tenant_id: Generated<string>; contact_id: string; term: string };
  conversation_search_terms: {
    tenant_id: Generated<string>;
    conversation_id: string;
    term: string;
  };
};

type SearchDatabase = AppDatabase & SearchTables;

/** Exact matches on custom attributes: `{ plan: 'gold' }` keeps `attributes @> '{"plan":"gold"}'`. */
export type AttributeFilter = Readonly<Record<string, string | number | boolean>>;

/** The keyset position after which a page starts: the last row's `updated_at_key` and id. */
export interface SearchCursor {
  readonly updatedAt: string;
  readonly id: string;
}

/** What {@link searchConversations} filters and where it continues. */
export interface ConversationSearchParams {
  /**
   * Free text. Each word must start a word of the contact's name, email or phone or of the
   * subject, case-insensitively; a word of digits also matches the start or the end of the
   * contact's phone number (`4567` finds `+1 555 123 4567`). Only the first
   * {@link maxSearchWords} words count.
   */
  readonly query?: string | undefined;
  readonly status?: 'open' | 'closed' | undefined;
  readonly assigneeId?: string | undefined;
  /** Exact matches on the contact's custom attributes (jsonb containment). */
  readonly attributes?: AttributeFilter | undefined;
  readonly limit: number;
  readonly after?: SearchCursor | undefined;
}

/** A conversation found by {@link searchConversations}. */
export interface ConversationSearchRow {
  readonly id: string;
  readonly contact_id: string;
  readonly contact_name: string;
  readonly subject: string | null;
  readonly status: 'open' | 'closed';
  readonly assignee_id: string | null;
  readonly updated_at: Date;
  /** `updated_at` with its microseconds, as text, for the next cursor (a Date rounds them off). */
  readonly updated_at_key: string;
}

/** What {@link searchContacts} filters and where it continues. */
export interface ContactSearchParams {
  /** Free text over name, email and phone, with the rules of {@link ConversationSearchParams}. */
  readonly query?: string | undefined;
  readonly attributes?: AttributeFilter | undefined;
  readonly limit: number;
  readonly after?: SearchCursor | undefined;
}

/** A contact found by {@link searchContacts}. */
export interface ContactSearchRow {
  readonly id: string;
  readonly name: string;
  readonly phone: string | null;
  readonly email: string | null;
  readonly attributes: Record<string, unknown>;
  readonly updated_at: Date;
  /** `updated_at` with its microseconds, as text, for the next cursor. */
  readonly updated_at_key: string;
}

/**
 * Words of a query beyond this many are ignored: each one is one more index range to intersect.
 *
 * @example
 * ```ts
 * if (searchWords(input).length === maxSearchWords) reply.header('x-search-truncated', '1');
 * ```
 */
export const maxSearchWords = 8;

const digitsOnly = /^[0-9]{1,32}$/;

/**
 * Splits free text into query words: runs of letters, combining marks and digits. Anything
 * else separates words, a superset of what `search_words()` cuts documents at, so the database
 * never has to split a query word again; it only lowercases it (`search_key()`).
 *
 * @example
 * ```ts
 * searchWords('  Ada@Example.com +1 555 '); // ['Ada', 'Example', 'com', '1', '555']
 * ```
 */
export function searchWords(query: string | undefined): string[] {
  if (query === undefined) return [];
  const words = query.split(/[^\p{L}\p{M}\p{N}]+/u).filter((word) => word !== '');
  return [...new Set(words)].slice(0, maxSearchWords);
}

/**
 * The ids owning a term that starts with `word`: one btree range on `(tenant_id, term)`. Text
 * comparison is leakproof, so under RLS the range is an index condition. A word of digits adds
 * the range of reversed phone numbers, which finds the numbers that end with it.
 */
function termOwners(
  search: Kysely<SearchDatabase>,
  table: 'contact_search_terms' | 'conversation_search_terms',
  word: string,
) {
  const owner = table === 'contact_search_terms' ? 'contact_id' : 'conversation_id';
  const range = (key: RawBuilder<string>) =>
    search
      .selectFrom(table)
      .select(sql<string>`${sql.ref(owner)}`.as('owner'))
      .where('term', '>=', key)
      .where('term', '<', sql<string>`search_key_end(${key})`);
  const words = range(sql<string>`search_key(${word})`);
  return digitsOnly.test(word) ? words.unionAll(range(sql`search_phone_key(${word})`)) : words;
}

/**
 * One query per attribute of `filter`, each returning the ids of the contacts holding it: one
 * term equality on the index. For scalar values, holding the term is `attributes @> filter`.
 */
function attributeOwners(search: Kysely<SearchDatabase>, filter: AttributeFilter) {
  return Object.entries(filter).map(([key, value]) =>
    search
      .selectFrom('contact_attribute_terms')
      .select('contact_id')
      .where(
        'term',
        '=',
        sql<string>`search_attribute_term(${key}, cast(${JSON.stringify(value)} as jsonb))`,
      ),
  );
}

/**
 * Settles how the rest of the unit of work is planned, in one round trip:
 *
 * - each statement for its values (`plan_cache_mode`). A prepared statement may switch to a
 *   generic plan after five runs, and a generic plan cannot tell a word found in 20
 *   conversations from one found in 40,000; the plan that is right for one is 40 times too slow
 *   for the other. Planning costs about half a millisecond.
 * - without parallel workers (`max_parallel_workers_per_gather`). Starting them costs 10 to 20
 *   ms, more than a page of results takes to find; measured in docs/guides/search-under-rls.md.
 */
async function planForThisSearch(db: Kysely<AppDatabase>): Promise<void> {
  await sql`select set_config('plan_cache_mode', 'force_custom_plan', true),
                   set_config('max_parallel_workers_per_gather', '0', true)`.execute(db);
}

/** `(updated_at, id)` strictly before the cursor, in the order `updated_at desc, id desc`. */
function before(alias: string, after: SearchCursor): RawBuilder<SqlBool> {
  return sql<SqlBool>`(${sql.ref(`${alias}.updated_at`)}, ${sql.ref(`${alias}.id`)}) < (cast(${after.updatedAt} as timestamptz), cast(${after.id} as uuid))`;
}

/**
 * Searches the current tenant's conversations, newest-updated first, `limit` rows after the
 * cursor. Every condition is an index range or equality on a leakproof operator, so it stays
 * fast under RLS in a tenant of any size (see docs/guides/search-under-rls.md). With words or
 * attributes it first sets custom plans and no parallel workers for the rest of the transaction,
 * so it needs a unit of work that may run two statements (`withTenant`, not `oneShot`).
 *
 * @example
 * ```ts
 * const page = await searchConversations(db, {
 *   query: 'garcia refund',
 *   status: 'open',
 *   attributes: { plan: 'gold' },
 *   limit: 25,
 * });
 * const last = page.at(-1);
 * const next = last && (await searchConversations(db, {
 *   query: 'garcia refund', status: 'open', attributes: { plan: 'gold' }, limit: 25,
 *   after: { updatedAt: last.updated_at_key, id: last.id },
 * }));
 * ```
 */
export async function searchConversations(
  db: Kysely<AppDatabase>,
  params: ConversationSearchParams,
): Promise<ConversationSearchRow[]> {
  const words = searchWords(params.query);
  const attributes = params.attributes ?? {};
  if (words.length > 0 || Object.keys(attributes).length > 0) await planForThisSearch(db);
  const search = db.withTables<SearchTables>();
  let matches = search
    .selectFrom('conversations as c')
    .select(['c.id', 'c.contact_id', 'c.subject', 'c.status', 'c.assignee_id', 'c.updated_at']);
  for (const word of words) {
    matches = matches.where('c.id', 'in', termOwners(search, 'conversation_search_terms', word));
  }
  for (const owners of attributeOwners(search, attributes)) {
    matches = matches.where('c.contact_id', 'in', owners);
  }
  if (params.status !== undefined) matches = matches.where('c.status', '=', params.status);
  if (params.assigneeId !== undefined) {
    matches = matches.where('c.assignee_id', '=', params.assigneeId);
  }
  if (params.after !== undefined) matches = matches.where(before('c', params.after));
  const page = matches.orderBy('c.updated_at', 'desc').orderBy('c.id', 'desc').limit(params.limit);
  return search
    .selectFrom(page.as('c'))
    .innerJoin('contacts as k', 'k.id', 'c.contact_id')
    .select([
      'c.id',
      'c.contact_id',
      'k.name as contact_name',
      'c.subject',
      'c.status',
      'c.assignee_id',
      'c.updated_at',
      sql<string>`to_json(c.updated_at) #>> '{}'`.as('updated_at_key'),
    ])
    .orderBy('c.updated_at', 'desc')
    .orderBy('c.id', 'desc')
    .execute();
}

/**
 * Searches the current tenant's contacts by name, email, phone and custom attributes,
 * newest-updated first, `limit` rows after the cursor, like {@link searchConversations} (and
 * with the same planning settings).
 *
 * @example
 * ```ts
 * const rows = await searchContacts(db, { query: 'ada', attributes: { vip: true }, limit: 25 });
 * ```
 */
export async function searchContacts(
  db: Kysely<AppDatabase>,
  params: ContactSearchParams,
): Promise<ContactSearchRow[]> {
  const words = searchWords(params.query);
  const attributes = params.attributes ?? {};
  if (words.length > 0 || Object.keys(attributes).length > 0) await planForThisSearch(db);
  const search = db.withTables<SearchTables>();
  let query = search
    .selectFrom('contacts as k')
    .select([
      'k.id',
      'k.name',
      'k.phone',
      'k.email',
      'k.attributes',
      'k.updated_at',
      sql<string>`to_json(k.updated_at) #>> '{}'`.as('updated_at_key'),
    ]);
  for (const word of words) {
    query = query.where('k.id', 'in', termOwners(search, 'contact_search_terms', word));
  }
  for (const owners of attributeOwners(search, attributes)) {
    query = query.where('k.id', 'in', owners);
  }
  if (params.after !== undefined) query = query.where(before('k', params.after));
  return query
    .orderBy('k.updated_at', 'desc')
    .orderBy('k.id', 'desc')
    .limit(params.limit)
    .execute();
}
