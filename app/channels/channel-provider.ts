import { type Tenantry, TenantryError } from 'tenantry';
import type { AppDatabase } from '../database.ts';

/** One outbound message handed to a channel provider. */
export interface ChannelMessage {
  /** The workspace sending it. */
  readonly tenantId: string;
  /**
   * Names the message for the provider: a second `send()` with the same key delivers nothing new
   * and answers with the first delivery's id.
   */
  readonly idempotencyKey: string;
  readonly contactId: string;
  /** The recipient's address on the channel (an E.164 phone number for WhatsApp). */
  readonly to: string;
  readonly body: string;
}

/**
 * Sends messages on a channel (WhatsApp, SMS, email). Implementations must be idempotent by
 * `idempotencyKey`: the broadcast jobs send again after a retry and rely on it to deliver each
 * message once.
 */
export interface ChannelProvider {
  /** Delivers the message, or throws (the caller retries). */
  send(message: ChannelMessage): Promise<{ readonly providerMessageId: string }>;
}

/** A delivery the channel refused or could not make; the sender may try again. */
export class ChannelUnavailableError extends Error {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ChannelUnavailableError';
  }
}

/** Options of {@link createDatabaseChannelProvider}. */
export interface DatabaseChannelProviderOptions {
  /**
   * A Tenantry instance of its own (not the one the jobs run on), so that each delivery commits
   * independently of the job that asked for it, as a call to an external system would.
   */
  readonly tenantry: Tenantry<Pick<AppDatabase, 'channel_deliveries'>>;
  /**
   * Share of new deliveries that fail with {@link ChannelUnavailableError} before anything is
   * recorded, from 0 to 1, to exercise retries. Repeated keys never fail. @defaultValue 0
   */
  readonly failureRate?: number;
  /** Recorded as the delivery's channel. @defaultValue 'whatsapp' */
  readonly channel?: string;
  /** Source of randomness for `failureRate`, in [0, 1). @defaultValue Math.random */
  readonly random?: () => number;
}

/**
 * A channel provider that records each delivery in `channel_deliveries` instead of calling an
 * external API. It is idempotent by key: the row is inserted with
 * `on conflict (tenant_id, idempotency_key) do nothing`, and a repeated key answers with the
 * existing row's id.
 *
 * @example
 * ```ts
 * const deliveries = await createTenantry({ connectionString: appUrl, maxConnections: 4, tenantTables: ['channel_deliveries'] });
 * const provider = createDatabaseChannelProvider({ tenantry: deliveries, failureRate: 0.1 });
 * const { providerMessageId } = await provider.send({ tenantId, idempotencyKey: 'welcome:42', contactId, to: '+5511999990000', body: 'Hi' });
 * ```
 */
export function createDatabaseChannelProvider(
  options: DatabaseChannelProviderOptions,
): ChannelProvider {
  const failureRate = options.failureRate ?? 0;
  if (!Number.isFinite(failureRate) || failureRate < 0 || failureRate > 1) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `failureRate must be a number from 0 to 1, got ${failureRate}.`,
    );
  }
  const channel = options.channel ?? 'whatsapp';
  const random = options.random ?? Math.random;
  const tenantry = options.tenantry;
  return Object.freeze({
    send(message: ChannelMessage) {
      return tenantry.withTenant(message.tenantId, async (db) => {
        const existing = await db
          .selectFrom('channel_deliveries')
          .select('id')
          .where('idempotency_key', '=', message.idempotencyKey)
          .executeTakeFirst();
        if (existing !== undefined) return { providerMessageId: existing.id };
        if (failureRate > 0 && random() < failureRate) {
          throw new ChannelUnavailableError(
            `The channel did not accept the message (simulated failure, rate ${failureRate}).`,
          );
        }
        const inserted = await db
          .insertInto('channel_deliveries')
          .values({
            idempotency_key: message.idempotencyKey,
            contact_id: message.contactId,
            channel,
            to_address: message.to,
            body: message.body,
          })
          .onConflict((conflict) => conflict.columns(['tenant_id', 'idempotency_key']).doNothing())
          .returning('id')
          .executeTakeFirst();
        if (inserted !== undefined) return { providerMessageId: inserted.id };
        // A concurrent send with the same key committed first.
        const winner = await db
          .selectFrom('channel_deliveries')
          .select('id')
          .where('idempotency_key', '=', message.idempotencyKey)
          .executeTakeFirstOrThrow();
        return { providerMessageId: winner.id };
      });
    },
  });
}
