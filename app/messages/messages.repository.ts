import { type Kysely, sql } from 'kysely';
import type { AppDatabase } from '../database.ts';

/** A message as stored, with the exact `created_at` for cursors. */
export interface MessageRow {
  id: string;
  conversation_id: string;
  direction: 'inbound' | 'outbound';
  body: string;
  status: 'received' | 'queued' | 'sent' | 'delivered' | 'read' | 'failed';
  sender_id: string | null;
  provider_message_id: string | null;
  created_at: Date;
  /** `created_at` with its microseconds, as text (a `Date` keeps only milliseconds). */
  created_at_key: string;
}

const messageColumns = [
  'id',
  'conversation_id',
  'direction',
  'body',
  'status',
  'sender_id',
  'provider_message_id',
  'created_at',
  sql<string>`to_json(created_at) #>> '{}'`.as('created_at_key'),
] as const;

/**
 * Inserts a message in the current tenant. With a `providerMessageId` already stored at the same
 * `createdAt`, nothing is inserted and `undefined` is returned (a redelivered webhook).
 *
 * @example
 * ```ts
 * const message = await insertMessage(db, { conversationId, direction: 'outbound', body: 'Hi' });
 * ```
 */
export async function insertMessage(
  db: Kysely<AppDatabase>,
  values: {
    conversationId: string;
    direction: 'inbound' | 'outbound';
    body: string;
    status?: 'received' | 'queued';
    senderId?: string | null;
    providerMessageId?: string | null;
    createdAt?: Date;
  },
): Promise<MessageRow | undefined> {
  return db
    .insertInto('messages')
    .values({
      conversation_id: values.conversationId,
      direction: values.direction,
      body: values.body,
      ...(values.status === undefined ? {} : { status: values.status }),
      sender_id: values.senderId ?? null,
      provider_message_id: values.providerMessageId ?? null,
      ...(values.createdAt === undefined ? {} : { created_at: values.createdAt }),
    })
    .onConflict((conflict) =>
      conflict.columns(['tenant_id', 'provider_message_id', 'created_at']).doNothing(),
    )
    .returning(messageColumns)
    .executeTakeFirst();
}

/**
 * Finds the message stored for a channel provider's message id, if any.
 *
 * @example
 * ```ts
 * const previous = await findMessageByProviderId(db, 'wamid.HBgL...');
 * ```
 */
export async function findMessageByProviderId(
  db: Kysely<AppDatabase>,
  providerMessageId: string,
): Promise<MessageRow | undefined> {
  return db
    .selectFrom('messages')
    .select(messageColumns)
    .where('provider_message_id', '=', providerMessageId)
    .orderBy('created_at')
    .limit(1)
    .executeTakeFirst();
}

/**
 * Lists a conversation's messages by `(created_at, id)`, `limit` rows after the keyset position.
 *
 * @example
 * ```ts
 * const rows = await listMessageRows(db, conversationId, { order: 'desc' }, 51);
 * ```
 */
export async function listMessageRows(
  db: Kysely<AppDatabase>,
  conversationId: string,
  position: { order: 'asc' | 'desc'; after?: { createdAt: string; id: string } | undefined },
  limit: number,
): Promise<MessageRow[]> {
  let query = db
    .selectFrom('messages')
    .select(messageColumns)
    .where('conversation_id', '=', conversationId);
  const after = position.after;
  if (after !== undefined) {
    const key = sql`(cast(${after.createdAt} as timestamptz), cast(${after.id} as uuid))`;
    query = query.where(
      position.order === 'desc'
        ? sql<boolean>`(created_at, id) < ${key}`
        : sql<boolean>`(created_at, id) > ${key}`,
    );
  }
  return query
    .orderBy('created_at', position.order)
    .orderBy('id', position.order)
    .limit(limit)
    .execute();
}

/**
 * Reads the body of one of the tenant's message templates.
 *
 * @example
 * ```ts
 * const template = await findTemplateBody(db, templateId); // undefined when not visible
 * ```
 */
export async function findTemplateBody(
  db: Kysely<AppDatabase>,
  templateId: string,
): Promise<string | undefined> {
  const row = await db
    .selectFrom('message_templates')
    .select('body')
    .where('id', '=', templateId)
    .executeTakeFirst();
  return row?.body;
}

/** A file attached to a message, as the message lists it. */
export interface AttachmentRow {
  message_id: string;
  file_id: string;
  file_name: string;
  content_type: string;
  size_bytes: string;
}

/**
 * The ids among `fileIds` that name uploaded files of the current tenant (RLS hides the others),
 * locked against deletion until the transaction ends.
 *
 * @example
 * ```ts
 * const usable = await findUploadedFileIds(db, ['0d5c…']);
 * ```
 */
export async function findUploadedFileIds(
  db: Kysely<AppDatabase>,
  fileIds: readonly string[],
): Promise<Set<string>> {
  const result = await sql<{ id: string }>`
    select id from tenantry.files
     where tenant_id = tenantry.current_tenant_id() and id = any(${[...fileIds]}::uuid[])
       and status = 'uploaded'
       for key share`.execute(db);
  return new Set(result.rows.map((row) => row.id));
}

/**
 * Attaches files to a message, in order.
 *
 * @example
 * ```ts
 * await insertAttachments(db, message, [fileId]);
 * ```
 */
export async function insertAttachments(
  db: Kysely<AppDatabase>,
  message: Pick<MessageRow, 'id' | 'created_at_key'>,
  fileIds: readonly string[],
): Promise<void> {
  if (fileIds.length === 0) return;
  // The exact created_at (microseconds) the foreign key to the message compares with.
  const createdAt = sql<Date>`cast(${message.created_at_key} as timestamptz)`;
  await db
    .insertInto('message_attachments')
    .values(
      fileIds.map((fileId, position) => ({
        message_id: message.id,
        message_created_at: createdAt,
        file_id: fileId,
        position,
      })),
    )
    .execute();
}

/**
 * The attachments of some messages of the current tenant, each message's in order.
 *
 * @example
 * ```ts
 * const attachments = await listAttachments(db, [messageId]);
 * ```
 */
export async function listAttachments(
  db: Kysely<AppDatabase>,
  messageIds: readonly string[],
): Promise<AttachmentRow[]> {
  if (messageIds.length === 0) return [];
  const result = await sql<AttachmentRow>`
    select a.message_id, a.file_id, f.file_name, f.content_type, f.size_bytes::text as size_bytes
      from message_attachments a
      join tenantry.files f on f.tenant_id = a.tenant_id and f.id = a.file_id
     where a.tenant_id = tenantry.current_tenant_id() and a.message_id = any(${[...messageIds]}::uuid[])
     order by a.message_id, a.position`.execute(db);
  return result.rows;
}
