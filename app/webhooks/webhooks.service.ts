import type { Kysely } from 'kysely';
import { TenantryError } from 'tenantry';
import {
  insertConversation,
  touchConversation,
} from '../conversations/conversations.repository.ts';
import type { AppDatabase } from '../database.ts';
import { findMessageByProviderId, insertMessage } from '../messages/messages.repository.ts';
import {
  findOpenConversationId,
  findOrCreateContactByPhone,
  lockInboundMessage,
  lockInboundSender,
} from './webhooks.repository.ts';

/** A message the channel provider delivered (the verified, validated webhook body). */
export interface InboundMessage {
  /** The provider's message id; a redelivery carries the same one. */
  messageId: string;
  /** The sender's phone number, E.164. */
  from: string;
  name?: string | undefined;
  text: string;
  /** When the provider received it: unix seconds or an ISO 8601 date-time. */
  timestamp: number | string;
}

/** What the webhook answers: whether the message was new, and our id for it. */
export interface InboundResult {
  status: 'accepted' | 'duplicate';
  messageId: string;
}

function parseTimestamp(value: number | string): Date {
  const date = typeof value === 'number' ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) {
    throw new TenantryError('TENANTRY_ERR_HTTP_VALIDATION', '/body/timestamp is not a date.', {
      details: { errors: [{ pointer: '/body/timestamp', message: 'is not a date' }] },
    });
  }
  return date;
}

/**
 * Stores an inbound message in the current workspace: finds or creates the contact by phone,
 * reuses their open conversation or opens one, and inserts the message stamped with the
 * provider's time. A message whose provider id is already stored is reported as a duplicate
 * and changes nothing.
 *
 * @example
 * ```ts
 * const result = await receiveInboundMessage(db, tenant.id, {
 *   messageId: 'wamid.1', from: '+15550100', text: 'Hello', timestamp: 1767225600,
 * });
 * ```
 */
export async function receiveInboundMessage(
  db: Kysely<AppDatabase>,
  tenantId: string,
  inbound: InboundMessage,
): Promise<InboundResult> {
  const createdAt = parseTimestamp(inbound.timestamp);
  // Redeliveries of one message may claim other senders: serialise on the message id too.
  await lockInboundMessage(db, tenantId, inbound.messageId);
  await lockInboundSender(db, tenantId, inbound.from);
  const previous = await findMessageByProviderId(db, inbound.messageId);
  if (previous !== undefined) return { status: 'duplicate', messageId: previous.id };
  const contact = await findOrCreateContactByPhone(db, inbound.from, inbound.name ?? inbound.from);
  const conversationId =
    (contact.created ? undefined : await findOpenConversationId(db, contact.id)) ??
    (await insertConversation(db, { contactId: contact.id, subject: null, assigneeId: null }));
  const message = await insertMessage(db, {
    conversationId,
    direction: 'inbound',
    body: inbound.text,
    status: 'received',
    providerMessageId: inbound.messageId,
    createdAt,
  });
  if (message === undefined) {
    // Another delivery of this provider id (from another sender, so not serialised by the lock)
    // committed meanwhile. Failing rolls back the contact or conversation made above; the
    // provider's retry is then answered as a duplicate.
    throw new TenantryError(
      'TENANTRY_ERR_DB_CONFLICT',
      'Another delivery of this message was stored concurrently; retry.',
    );
  }
  await touchConversation(db, conversationId, createdAt);
  return { status: 'accepted', messageId: message.id };
}
