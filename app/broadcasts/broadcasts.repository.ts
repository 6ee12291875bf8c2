import { type Kysely, sql } from 'kysely';
import type {
  AppDatabase,
  BroadcastStatus,
  BroadcastVariable,
  RecipientStatus,
} from '../database.ts';

/** A broadcast row as the API and the jobs read it. */
export interface BroadcastRow {
  readonly id: string;
  readonly name: string;
  readonly template_id: string;
  readonly body: string;
  readonly variables: BroadcastVariable[];
  readonly tag_ids: string[];
  readonly status: BroadcastStatus;
  readonly created_by: string | null;
  readonly recipient_count: number;
  readonly sent_count: number;
  readonly failed_count: number;
  readonly created_at: Date;
  readonly started_at: Date | null;
  readonly completed_at: Date | null;
  /** `created_at` with its microseconds, as text, for cursors. */
  readonly created_at_key: string;
}

/** A recipient row with its contact's name, for the recipient list. */
export interface RecipientRow {
  readonly contact_id: string;
  readonly contact_name: string;
  readonly status: RecipientStatus;
  readonly attempts: number;
  readonly provider_message_id: string | null;
  readonly last_error: string | null;
  readonly sent_at: Date | null;
}

/** A pending recipient locked for sending, with the contact fields a message needs. */
export interface PendingRecipient {
  readonly contact_id: string;
  readonly name: string;
  readonly phone: string | null;
  readonly email: string | null;
}

const columns = [
  'broadcasts.id',
  'broadcasts.name',
  'broadcasts.template_id',
  'broadcasts.body',
  'broadcasts.variables',
  'broadcasts.tag_ids',
  'broadcasts.status',
  'broadcasts.created_by',
  'broadcasts.recipient_count',
  'broadcasts.sent_count',
  'broadcasts.failed_count',
  'broadcasts.created_at',
  'broadcasts.started_at',
  'broadcasts.completed_at',
  sql<string>`to_json(broadcasts.created_at) #>> '{}'`.as('created_at_key'),
] as const;

/**
 * Inserts a queued broadcast with no recipients yet.
 *
 * @example
 * ```ts
 * const row = await insertBroadcast(db, { name: 'Spring sale', templateId, body: 'Hi {{1}}', variables: [{ contact: 'name' }], tagIds, createdBy: userId });
 * ```
 */
export async function insertBroadcast(
  db: Kysely<AppDatabase>,
  fields: {
    readonly name: string;
    readonly templateId: string;
    readonly body: string;
    readonly variables: readonly BroadcastVariable[];
    readonly tagIds: readonly string[];
    readonly createdBy: string | null;
  },
): Promise<BroadcastRow> {
  return db
    .insertInto('broadcasts')
    .values({
      name: fields.name,
      template_id: fields.templateId,
      body: fields.body,
      variables: JSON.stringify(fields.variables),
      tag_ids: [...fields.tagIds],
      created_by: fields.createdBy,
    })
    .returning(columns)
    .executeTakeFirstOrThrow();
}

/**
 * Makes every contact that has any of `tagIds` a pending recipient of the broadcast (one
 * statement, `insert ... select`), records how many there are and returns the number.
 *
 * @example
 * ```ts
 * const count = await snapshotRecipients(db, broadcastId, tagIds);
 * ```
 */
export async function snapshotRecipients(
  db: Kysely<AppDatabase>,
  broadcastId: string,
  tagIds: readonly string[],
): Promise<number> {
  const inserted = await db
    .insertInto('broadcast_recipients')
    .columns(['broadcast_id', 'contact_id'])
    .expression((eb) =>
      eb
        .selectFrom('contact_tags')
        .select([sql<string>`cast(${broadcastId} as uuid)`.as('broadcast_id'), 'contact_id'])
        .where('tag_id', 'in', [...tagIds])
        .distinct(),
    )
    .executeTakeFirst();
  const count = Number(inserted.numInsertedOrUpdatedRows ?? 0n);
  await db
    .updateTable('broadcasts')
    .set({ recipient_count: count })
    .where('id', '=', broadcastId)
    .execute();
  return count;
}

/**
 * Finds one broadcast of the current workspace.
 *
 * @example
 * ```ts
 * const row = await findBroadcast(db, id); // undefined when absent or another workspace's
 * ```
 */
export async function findBroadcast(
  db: Kysely<AppDatabase>,
  id: string,
): Promise<BroadcastRow | undefined> {
  return db.selectFrom('broadcasts').select(columns).where('id', '=', id).executeTakeFirst();
}

/**
 * Lists `limit` broadcasts newest first after the keyset position `(created_at, id)`.
 *
 * @example
 * ```ts
 * const rows = await listBroadcasts(db, { limit: 26 });
 * ```
 */
export async function listBroadcasts(
  db: Kysely<AppDatabase>,
  options: {
    readonly limit: number;
    readonly after?: { readonly createdAt: string; readonly id: string } | undefined;
  },
): Promise<BroadcastRow[]> {
  let query = db
    .selectFrom('broadcasts')
    .select(columns)
    .orderBy('broadcasts.created_at', 'desc')
    .orderBy('broadcasts.id', 'desc')
    .limit(options.limit);
  const after = options.after;
  if (after !== undefined) {
    query = query.where(
      sql<boolean>`(broadcasts.created_at, broadcasts.id) < (cast(${after.createdAt} as timestamptz), cast(${after.id} as uuid))`,
    );
  }
  return query.execute();
}

/**
 * Lists `limit` recipients of a broadcast in contact id order after `afterContactId`,
 * optionally only those in `status`.
 *
 * @example
 * ```ts
 * const rows = await listRecipients(db, broadcastId, { limit: 26, status: 'failed' });
 * ```
 */
export async function listRecipients(
  db: Kysely<AppDatabase>,
  broadcastId: string,
  options: {
    readonly limit: number;
    readonly status?: RecipientStatus | undefined;
    readonly afterContactId?: string | undefined;
  },
): Promise<RecipientRow[]> {
  let query = db
    .selectFrom('broadcast_recipients as r')
    .innerJoin('contacts as c', 'c.id', 'r.contact_id')
    .select([
      'r.contact_id',
      'c.name as contact_name',
      'r.status',
      'r.attempts',
      'r.provider_message_id',
      'r.last_error',
      'r.sent_at',
    ])
    .where('r.broadcast_id', '=', broadcastId)
    .orderBy('r.contact_id')
    .limit(options.limit);
  if (options.status !== undefined) query = query.where('r.status', '=', options.status);
  if (options.afterContactId !== undefined) {
    query = query.where('r.contact_id', '>', options.afterContactId);
  }
  return query.execute();
}

/**
 * Locks a broadcast row until the transaction ends and returns what the jobs need of it. Every
 * job that changes a broadcast's status or counters takes this lock first, so they apply one
 * after another and the last one to finish sees all the others' recipients settled.
 *
 * @example
 * ```ts
 * const broadcast = await lockBroadcast(db, broadcastId);
 * ```
 */
export async function lockBroadcast(
  db: Kysely<AppDatabase>,
  id: string,
): Promise<
  Pick<BroadcastRow, 'id' | 'status' | 'body' | 'variables' | 'recipient_count'> | undefined
> {
  return db
    .selectFrom('broadcasts')
    .select(['id', 'status', 'body', 'variables', 'recipient_count'])
    .where('id', '=', id)
    .forUpdate()
    .executeTakeFirst();
}

/**
 * Marks a queued broadcast as sending.
 *
 * @example
 * ```ts
 * await markBroadcastSending(db, broadcastId);
 * ```
 */
export async function markBroadcastSending(db: Kysely<AppDatabase>, id: string): Promise<void> {
  await db
    .updateTable('broadcasts')
    .set({ status: 'sending', started_at: sql<Date>`now()` })
    .where('id', '=', id)
    .where('status', '=', 'queued')
    .execute();
}

/**
 * Lists up to `limit` pending recipients' contact ids in id order after `afterContactId`.
 *
 * @example
 * ```ts
 * const ids = await pendingContactIds(db, broadcastId, { limit: 10_000 });
 * ```
 */
export async function pendingContactIds(
  db: Kysely<AppDatabase>,
  broadcastId: string,
  options: { readonly limit: number; readonly afterContactId?: string | undefined },
): Promise<string[]> {
  let query = db
    .selectFrom('broadcast_recipients')
    .select('contact_id')
    .where('broadcast_id', '=', broadcastId)
    .where('status', '=', 'pending')
    .orderBy('contact_id')
    .limit(options.limit);
  if (options.afterContactId !== undefined) {
    query = query.where('contact_id', '>', options.afterContactId);
  }
  return (await query.execute()).map((row) => row.contact_id);
}

/**
 * Locks the recipients among `contactIds` that are still pending (in contact id order, so two
 * jobs never wait on each other in a cycle) and returns them with their contact fields. A
 * recipient another transaction settles meanwhile is not returned.
 *
 * @example
 * ```ts
 * const recipients = await lockPendingRecipients(db, broadcastId, contactIds);
 * ```
 */
export async function lockPendingRecipients(
  db: Kysely<AppDatabase>,
  broadcastId: string,
  contactIds: readonly string[],
): Promise<PendingRecipient[]> {
  if (contactIds.length === 0) return [];
  return db
    .selectFrom('broadcast_recipients as r')
    .innerJoin('contacts as c', 'c.id', 'r.contact_id')
    .select(['r.contact_id', 'c.name', 'c.phone', 'c.email'])
    .where('r.broadcast_id', '=', broadcastId)
    .where('r.contact_id', 'in', [...contactIds])
    .where('r.status', '=', 'pending')
    .orderBy('r.contact_id')
    .forUpdate('r')
    .execute();
}

/**
 * Settles a pending recipient as sent (with the provider's message id) or failed (with the
 * error), at job attempt `attempt`.
 *
 * @example
 * ```ts
 * await settleRecipient(db, broadcastId, contactId, { status: 'sent', providerMessageId }, ctx.attempt);
 * ```
 */
export async function settleRecipient(
  db: Kysely<AppDatabase>,
  broadcastId: string,
  contactId: string,
  outcome:
    | { readonly status: 'sent'; readonly providerMessageId: string }
    | { readonly status: 'failed'; readonly error: string },
  attempt: number,
): Promise<void> {
  await db
    .updateTable('broadcast_recipients')
    .set(
      outcome.status === 'sent'
        ? {
            status: 'sent',
            provider_message_id: outcome.providerMessageId,
            last_error: null,
            sent_at: sql<Date>`now()`,
            attempts: attempt,
          }
        : { status: 'failed', last_error: outcome.error.slice(0, 2000), attempts: attempt },
    )
    .where('broadcast_id', '=', broadcastId)
    .where('contact_id', '=', contactId)
    .where('status', '=', 'pending')
    .execute();
}

/**
 * Adds to a broadcast's sent and failed counters.
 *
 * @example
 * ```ts
 * await addToCounters(db, broadcastId, { sent: 98, failed: 2 });
 * ```
 */
export async function addToCounters(
  db: Kysely<AppDatabase>,
  id: string,
  counts: { readonly sent: number; readonly failed: number },
): Promise<void> {
  if (counts.sent === 0 && counts.failed === 0) return;
  await db
    .updateTable('broadcasts')
    .set((eb) => ({
      sent_count: eb('sent_count', '+', counts.sent),
      failed_count: eb('failed_count', '+', counts.failed),
    }))
    .where('id', '=', id)
    .execute();
}

/**
 * Tells whether a broadcast has recipients left to send.
 *
 * @example
 * ```ts
 * if (!(await hasPendingRecipients(db, broadcastId))) await finishBroadcast(db, broadcastId);
 * ```
 */
export async function hasPendingRecipients(
  db: Kysely<AppDatabase>,
  broadcastId: string,
): Promise<boolean> {
  const row = await db
    .selectFrom('broadcast_recipients')
    .select('contact_id')
    .where('broadcast_id', '=', broadcastId)
    .where('status', '=', 'pending')
    .limit(1)
    .executeTakeFirst();
  return row !== undefined;
}

/**
 * Recounts a broadcast's recipients and closes it: `failed` when it had recipients and none was
 * sent, `completed` otherwise.
 *
 * @example
 * ```ts
 * const status = await finishBroadcast(db, broadcastId);
 * ```
 */
export async function finishBroadcast(
  db: Kysely<AppDatabase>,
  id: string,
): Promise<BroadcastStatus> {
  const counts = await db
    .selectFrom('broadcast_recipients')
    .select([
      sql<number>`count(*)::integer`.as('total'),
      sql<number>`(count(*) filter (where status = 'sent'))::integer`.as('sent'),
      sql<number>`(count(*) filter (where status = 'failed'))::integer`.as('failed'),
    ])
    .where('broadcast_id', '=', id)
    .executeTakeFirstOrThrow();
  const status: BroadcastStatus = counts.total > 0 && counts.sent === 0 ? 'failed' : 'completed';
  await db
    .updateTable('broadcasts')
    .set({
      status,
      recipient_count: counts.total,
      sent_count: counts.sent,
      failed_count: counts.failed,
      completed_at: sql<Date>`now()`,
      started_at: sql<Date>`coalesce(started_at, now())`,
    })
    .where('id', '=', id)
    .execute();
  return status;
}
