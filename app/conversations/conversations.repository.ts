import { type Kysely, sql } from 'kysely';
import type { AppDatabase } from '../database.ts';

/** A conversation as stored, with its contact's name and the exact `updated_at` for cursors. */
export interface ConversationRow {
  id: string;
  contact_id: string;
  contact_name: string;
  subject: string | null;
  status: 'open' | 'closed';
  assignee_id: string | null;
  version: number;
  created_at: Date;
  updated_at: Date;
  last_message_at: Date | null;
  /** `updated_at` with its microseconds, as text (a `Date` keeps only milliseconds). */
  updated_at_key: string;
}

/** Filters and keyset position of a conversation listing. */
export interface ConversationFilter {
  status?: 'open' | 'closed' | undefined;
  /** A user id, or `null` for unassigned conversations. */
  assigneeId?: string | null | undefined;
  contactId?: string | undefined;
  ids?: readonly string[] | undefined;
  after?: { updatedAt: string; id: string } | undefined;
}

function selectConversations(db: Kysely<AppDatabase>) {
  return db
    .selectFrom('conversations as c')
    .innerJoin('contacts as k', 'k.id', 'c.contact_id')
    .select([
      'c.id',
      'c.contact_id',
      'k.name as contact_name',
      'c.subject',
      'c.status',
      'c.assignee_id',
      'c.version',
      'c.created_at',
      'c.updated_at',
      'c.last_message_at',
      sql<string>`to_json(c.updated_at) #>> '{}'`.as('updated_at_key'),
    ]);
}

/**
 * Reads one conversation of the current tenant (RLS hides every other tenant's).
 *
 * @example
 * ```ts
 * const conversation = await findConversation(db, id); // undefined when not visible
 * ```
 */
export async function findConversation(
  db: Kysely<AppDatabase>,
  id: string,
): Promise<ConversationRow | undefined> {
  return selectConversations(db).where('c.id', '=', id).executeTakeFirst();
}

/**
 * Lists conversations newest-updated first, `limit` rows after the keyset position.
 *
 * @example
 * ```ts
 * const rows = await listConversationRows(db, { status: 'open' }, 26);
 * ```
 */
export async function listConversationRows(
  db: Kysely<AppDatabase>,
  filter: ConversationFilter,
  limit: number,
): Promise<ConversationRow[]> {
  let query = selectConversations(db);
  if (filter.status !== undefined) query = query.where('c.status', '=', filter.status);
  if (filter.assigneeId === null) query = query.where('c.assignee_id', 'is', null);
  else if (filter.assigneeId !== undefined) {
    query = query.where('c.assignee_id', '=', filter.assigneeId);
  }
  if (filter.contactId !== undefined) query = query.where('c.contact_id', '=', filter.contactId);
  if (filter.ids !== undefined) {
    if (filter.ids.length === 0) return [];
    query = query.where('c.id', 'in', [...filter.ids]);
  }
  const after = filter.after;
  if (after !== undefined) {
    query = query.where(
      sql<boolean>`(c.updated_at, c.id) < (cast(${after.updatedAt} as timestamptz), cast(${after.id} as uuid))`,
    );
  }
  return query.orderBy('c.updated_at', 'desc').orderBy('c.id', 'desc').limit(limit).execute();
}

/**
 * Tells whether a contact is visible in the current tenant.
 *
 * @example
 * ```ts
 * if (!(await contactExists(db, contactId))) throw ...;
 * ```
 */
export async function contactExists(db: Kysely<AppDatabase>, contactId: string): Promise<boolean> {
  const row = await db
    .selectFrom('contacts')
    .select('id')
    .where('id', '=', contactId)
    .executeTakeFirst();
  return row !== undefined;
}

/**
 * Tells whether a user is a member of the current workspace.
 *
 * @example
 * ```ts
 * if (!(await isWorkspaceMember(db, assigneeId))) throw ...;
 * ```
 */
export async function isWorkspaceMember(db: Kysely<AppDatabase>, userId: string): Promise<boolean> {
  const row = await db
    .selectFrom('memberships')
    .select('user_id')
    .where('user_id', '=', userId)
    .executeTakeFirst();
  return row !== undefined;
}

/**
 * Inserts a conversation in the current tenant and returns its id.
 *
 * @example
 * ```ts
 * const id = await insertConversation(db, { contactId, subject: 'Order 42', assigneeId: null });
 * ```
 */
export async function insertConversation(
  db: Kysely<AppDatabase>,
  values: { contactId: string; subject: string | null; assigneeId: string | null },
): Promise<string> {
  const row = await db
    .insertInto('conversations')
    .values({
      contact_id: values.contactId,
      subject: values.subject,
      assignee_id: values.assigneeId,
    })
    .returning('id')
    .executeTakeFirstOrThrow();
  return row.id;
}

/**
 * Applies a patch when the conversation is still at `version`, incrementing the version.
 * Returns whether a row was updated.
 *
 * @example
 * ```ts
 * const updated = await updateConversationRow(db, id, 3, { status: 'closed' });
 * ```
 */
export async function updateConversationRow(
  db: Kysely<AppDatabase>,
  id: string,
  version: number,
  patch: {
    status?: 'open' | 'closed' | undefined;
    subject?: string | null | undefined;
    assigneeId?: string | null | undefined;
  },
): Promise<boolean> {
  const result = await db
    .updateTable('conversations')
    .set((eb) => ({
      ...(patch.status === undefined ? {} : { status: patch.status }),
      ...(patch.subject === undefined ? {} : { subject: patch.subject }),
      ...(patch.assigneeId === undefined ? {} : { assignee_id: patch.assigneeId }),
      version: eb('version', '+', 1),
      updated_at: sql<Date>`now()`,
    }))
    .where('id', '=', id)
    .where('version', '=', version)
    .executeTakeFirst();
  return result.numUpdatedRows > 0n;
}

/**
 * Records that a message was added at `at`: moves `last_message_at` forward (never back, so a
 * late-delivered old message does not reorder the inbox) and touches `updated_at`.
 *
 * @example
 * ```ts
 * await touchConversation(db, conversationId, message.created_at);
 * ```
 */
export async function touchConversation(
  db: Kysely<AppDatabase>,
  id: string,
  at: Date,
): Promise<void> {
  await db
    .updateTable('conversations')
    .set({
      last_message_at: sql<Date>`greatest(last_message_at, cast(${at.toISOString()} as timestamptz))`,
      updated_at: sql<Date>`now()`,
    })
    .where('id', '=', id)
    .execute();
}
