import { type Kysely, sql } from 'kysely';
import { jsonArrayFrom } from 'kysely/helpers/postgres';
import type { AppDatabase } from '../database.ts';

/** A contact row as the API reads it. */
export interface ContactRow {
  readonly id: string;
  readonly name: string;
  readonly phone: string | null;
  readonly email: string | null;
  readonly attributes: Record<string, unknown>;
  readonly version: number;
  readonly created_at: Date;
  readonly updated_at: Date;
}

/** Writable fields of a contact. */
export interface ContactFields {
  readonly name: string;
  readonly phone: string | null;
  readonly email: string | null;
  readonly attributes: Readonly<Record<string, string | number | boolean>>;
}

/** The orders a contact list can be read in; each is served by an index. */
export type ContactSort = 'created_at' | '-created_at' | 'name' | '-name';

/** What {@link listContacts} filters and where it continues. */
export interface ContactListOptions {
  readonly limit: number;
  readonly sort: ContactSort;
  /** The sort key and id of the last row of the previous page. */
  readonly after?: { readonly key: string; readonly id: string } | undefined;
  readonly tagId?: string | undefined;
  readonly phone?: string | undefined;
  readonly email?: string | undefined;
  /** Exact matches on custom attributes, compared as text. */
  readonly attributes?: readonly (readonly [string, string])[] | undefined;
}

const columns = [
  'contacts.id',
  'contacts.name',
  'contacts.phone',
  'contacts.email',
  'contacts.attributes',
  'contacts.version',
  'contacts.created_at',
  'contacts.updated_at',
] as const;

/**
 * Inserts a contact; a phone or email the workspace already has raises
 * `TENANTRY_ERR_DB_CONFLICT`.
 *
 * @example
 * ```ts
 * const row = await insertContact(db, { name: 'Ada', phone: '+5511999990000', email: null, attributes: {} });
 * ```
 */
export async function insertContact(
  db: Kysely<AppDatabase>,
  fields: ContactFields,
): Promise<ContactRow> {
  return db
    .insertInto('contacts')
    .values({
      name: fields.name,
      phone: fields.phone,
      email: fields.email,
      attributes: JSON.stringify(fields.attributes),
    })
    .returning(columns)
    .executeTakeFirstOrThrow();
}

/**
 * Finds one contact of the current workspace.
 *
 * @example
 * ```ts
 * const row = await findContact(db, id); // undefined when absent or another workspace's
 * ```
 */
export async function findContact(
  db: Kysely<AppDatabase>,
  id: string,
): Promise<ContactRow | undefined> {
  return db.selectFrom('contacts').select(columns).where('id', '=', id).executeTakeFirst();
}

/**
 * Finds one contact of the current workspace with its tags (name order), in one query.
 *
 * @example
 * ```ts
 * const row = await findContactWithTags(db, id); // { ..., tags: [{ id, name }] } or undefined
 * ```
 */
export async function findContactWithTags(
  db: Kysely<AppDatabase>,
  id: string,
): Promise<(ContactRow & { tags: { id: string; name: string }[] }) | undefined> {
  return db
    .selectFrom('contacts')
    .select(columns)
    .select((eb) =>
      jsonArrayFrom(
        eb
          .selectFrom('contact_tags')
          .innerJoin('tags', 'tags.id', 'contact_tags.tag_id')
          .select(['tags.id', 'tags.name'])
          .whereRef('contact_tags.contact_id', '=', 'contacts.id')
          .orderBy('tags.name'),
      ).as('tags'),
    )
    .where('contacts.id', '=', id)
    .executeTakeFirst();
}

/**
 * Updates a contact if it is still at `version`, incrementing the version; returns `undefined`
 * when no row matched (absent, or changed since).
 *
 * @example
 * ```ts
 * const row = await updateContact(db, id, 3, { name: 'Ada L.' });
 * ```
 */
export async function updateContact(
  db: Kysely<AppDatabase>,
  id: string,
  version: number,
  changes: Partial<ContactFields>,
): Promise<ContactRow | undefined> {
  const { attributes, ...rest } = changes;
  return db
    .updateTable('contacts')
    .set({
      ...rest,
      ...(attributes === undefined ? {} : { attributes: JSON.stringify(attributes) }),
      version: sql<number>`version + 1`,
      updated_at: sql<Date>`now()`,
    })
    .where('id', '=', id)
    .where('version', '=', version)
    .returning(columns)
    .executeTakeFirst();
}

/**
 * Deletes a contact (its tag links go with it); tells whether a row was deleted. A contact that
 * conversations refer to raises `TENANTRY_ERR_DB_INVALID_REFERENCE`.
 *
 * @example
 * ```ts
 * const deleted = await deleteContact(db, id);
 * ```
 */
export async function deleteContact(db: Kysely<AppDatabase>, id: string): Promise<boolean> {
  const result = await db.deleteFrom('contacts').where('id', '=', id).executeTakeFirst();
  return result.numDeletedRows > 0n;
}

const sortColumns = {
  created_at: { column: 'created_at', direction: 'asc' },
  '-created_at': { column: 'created_at', direction: 'desc' },
  name: { column: 'name', direction: 'asc' },
  '-name': { column: 'name', direction: 'desc' },
} as const;

/**
 * Lists `limit` contacts in `sort` order after the row `after` (keyset pagination over
 * `(sort column, id)`, which the `(tenant_id, created_at, id)` and `(tenant_id, name, id)`
 * indexes serve in either direction). Each row carries `sort_key`, its sort value as exact text
 * (microsecond timestamps do not survive a JavaScript `Date`).
 *
 * @example
 * ```ts
 * const rows = await listContacts(db, { limit: 26, sort: '-created_at', tagId });
 * ```
 */
export async function listContacts(
  db: Kysely<AppDatabase>,
  options: ContactListOptions,
): Promise<(ContactRow & { sort_key: string })[]> {
  const { column, direction } = sortColumns[options.sort];
  const sortKey =
    column === 'created_at'
      ? sql<string>`to_char(contacts.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`
      : sql<string>`contacts.name`;
  let query = db
    .selectFrom('contacts')
    .select([...columns, sortKey.as('sort_key')])
    .orderBy(`contacts.${column}`, direction)
    .orderBy('contacts.id', direction)
    .limit(options.limit);
  const after = options.after;
  if (after !== undefined) {
    const key =
      column === 'created_at' ? sql<string>`cast(${after.key} as timestamptz)` : after.key;
    const operator = direction === 'asc' ? '>' : '<';
    query = query.where(({ eb, refTuple, tuple }) =>
      eb(refTuple(`contacts.${column}`, 'contacts.id'), operator, tuple(key, after.id)),
    );
  }
  if (options.tagId !== undefined) {
    const tagId = options.tagId;
    query = query.where(({ exists, selectFrom }) =>
      exists(
        selectFrom('contact_tags')
          .select('contact_tags.tag_id')
          .whereRef('contact_tags.contact_id', '=', 'contacts.id')
          .where('contact_tags.tag_id', '=', tagId),
      ),
    );
  }
  if (options.phone !== undefined) query = query.where('contacts.phone', '=', options.phone);
  if (options.email !== undefined) {
    query = query.where('contacts.email_normalized', '=', sql<string>`lower(${options.email})`);
  }
  for (const [name, value] of options.attributes ?? []) {
    query = query.where(sql<string>`contacts.attributes ->> ${name}`, '=', value);
  }
  return query.execute();
}

/**
 * The tags of each of `contactIds`, in name order.
 *
 * @example
 * ```ts
 * const tags = await tagsOfContacts(db, rows.map((row) => row.id));
 * ```
 */
export async function tagsOfContacts(
  db: Kysely<AppDatabase>,
  contactIds: readonly string[],
): Promise<Map<string, { id: string; name: string }[]>> {
  const byContact = new Map<string, { id: string; name: string }[]>();
  if (contactIds.length === 0) return byContact;
  const rows = await db
    .selectFrom('contact_tags')
    .innerJoin('tags', 'tags.id', 'contact_tags.tag_id')
    .select(['contact_tags.contact_id', 'tags.id', 'tags.name'])
    .where('contact_tags.contact_id', 'in', contactIds)
    .orderBy('tags.name')
    .execute();
  for (const row of rows) {
    const list = byContact.get(row.contact_id) ?? [];
    list.push({ id: row.id, name: row.name });
    byContact.set(row.contact_id, list);
  }
  return byContact;
}

/**
 * Links tags to a contact; links that exist already are kept.
 *
 * @example
 * ```ts
 * await linkTags(db, contactId, [tagId]);
 * ```
 */
export async function linkTags(
  db: Kysely<AppDatabase>,
  contactId: string,
  tagIds: readonly string[],
): Promise<void> {
  if (tagIds.length === 0) return;
  await db
    .insertInto('contact_tags')
    .values(tagIds.map((tagId) => ({ contact_id: contactId, tag_id: tagId })))
    .onConflict((conflict) => conflict.doNothing())
    .execute();
}

/**
 * Unlinks a tag from a contact; tells whether it was linked.
 *
 * @example
 * ```ts
 * await unlinkTag(db, contactId, tagId);
 * ```
 */
export async function unlinkTag(
  db: Kysely<AppDatabase>,
  contactId: string,
  tagId: string,
): Promise<boolean> {
  const result = await db
    .deleteFrom('contact_tags')
    .where('contact_id', '=', contactId)
    .where('tag_id', '=', tagId)
    .executeTakeFirst();
  return result.numDeletedRows > 0n;
}
