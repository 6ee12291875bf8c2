import { type Kysely, sql } from 'kysely';
import type { AppDatabase } from '../database.ts';

/**
 * Reads the current workspace's inbound webhook secret (`undefined` when none is configured).
 *
 * @example
 * ```ts
 * const secret = await findInboundWebhookSecret(requireTenant(request).db);
 * ```
 */
export async function findInboundWebhookSecret(
  db: Kysely<AppDatabase>,
): Promise<string | undefined> {
  const row = await db
    .selectFrom('workspace_settings')
    .select('inbound_webhook_secret')
    .executeTakeFirst();
  return row?.inbound_webhook_secret;
}

/**
 * Serialises inbound deliveries from one phone number in one workspace until the transaction
 * ends, so concurrent (re)deliveries neither create the contact or conversation twice nor store
 * a message twice.
 *
 * @example
 * ```ts
 * await lockInboundSender(db, tenantId, '+15550100');
 * ```
 */
export async function lockInboundSender(
  db: Kysely<AppDatabase>,
  tenantId: string,
  phone: string,
): Promise<void> {
  const key = `inbound:${tenantId}:${phone}`;
  await sql`select pg_advisory_xact_lock(hashtextextended(${key}, 0))`.execute(db);
}

/**
 * Serialises the deliveries of one provider message id in the workspace until the transaction
 * ends, whoever they claim to come from: the duplicate check that follows then sees the first
 * delivery's message. Taken before {@link lockInboundSender}, always in that order.
 *
 * @example
 * ```ts
 * await lockInboundMessage(db, tenantId, 'SM123');
 * ```
 */
export async function lockInboundMessage(
  db: Kysely<AppDatabase>,
  tenantId: string,
  messageId: string,
): Promise<void> {
  const key = `inbound-message:${tenantId}:${messageId}`;
  await sql`select pg_advisory_xact_lock(hashtextextended(${key}, 0))`.execute(db);
}

/**
 * Returns the id of the tenant's contact with this phone number, creating the contact (named
 * `name`) when there is none.
 *
 * @example
 * ```ts
 * const contactId = await findOrCreateContactByPhone(db, '+15550100', 'Ana');
 * ```
 */
export async function findOrCreateContactByPhone(
  db: Kysely<AppDatabase>,
  phone: string,
  name: string,
): Promise<{ id: string; created: boolean }> {
  const inserted = await db
    .insertInto('contacts')
    .values({ name, phone })
    .onConflict((conflict) => conflict.columns(['tenant_id', 'phone']).doNothing())
    .returning('id')
    .executeTakeFirst();
  if (inserted !== undefined) return { id: inserted.id, created: true };
  const existing = await db
    .selectFrom('contacts')
    .select('id')
    .where('phone', '=', phone)
    .executeTakeFirstOrThrow();
  return { id: existing.id, created: false };
}

/**
 * Finds the contact's most recently updated open conversation.
 *
 * @example
 * ```ts
 * const conversationId = await findOpenConversationId(db, contactId);
 * ```
 */
export async function findOpenConversationId(
  db: Kysely<AppDatabase>,
  contactId: string,
): Promise<string | undefined> {
  const row = await db
    .selectFrom('conversations')
    .select('id')
    .where('contact_id', '=', contactId)
    .where('status', '=', 'open')
    .orderBy('updated_at', 'desc')
    .limit(1)
    .executeTakeFirst();
  return row?.id;
}
