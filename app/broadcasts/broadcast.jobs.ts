import { isTenantryError, isUuid, TenantryError } from 'tenantry';
import { createQuotas } from 'tenantry/billing';
import { defineJob, enqueueJobs, type JobContext, type JobDefinition } from 'tenantry/jobs';
import type { ChannelProvider } from '../channels/channel-provider.ts';
import type { AppDatabase, BroadcastVariable } from '../database.ts';
import { renderTemplate } from '../messages/messages.service.ts';
import {
  addToCounters,
  finishBroadcast,
  hasPendingRecipients,
  lockBroadcast,
  lockPendingRecipients,
  markBroadcastSending,
  type PendingRecipient,
  pendingContactIds,
  settleRecipient,
} from './broadcasts.repository.ts';

/** Payload of `broadcast.dispatch`. */
export interface BroadcastDispatchPayload {
  readonly broadcastId: string;
}

/** Payload of `broadcast.send-batch`: one batch of a broadcast's recipients. */
export interface BroadcastSendBatchPayload {
  readonly broadcastId: string;
  readonly contactIds: readonly string[];
}

/** The two job definitions of broadcasts. */
export interface BroadcastJobs {
  /** Splits a queued broadcast's recipients into `broadcast.send-batch` jobs. */
  readonly dispatch: JobDefinition<BroadcastDispatchPayload, AppDatabase>;
  /** Sends one batch through the channel provider and settles its recipients. */
  readonly sendBatch: JobDefinition<BroadcastSendBatchPayload, AppDatabase>;
}

/** Options of {@link createBroadcastJobs}. */
export interface BroadcastJobOptions {
  readonly provider: ChannelProvider;
  /** Recipients per `broadcast.send-batch` job, 1 to 1000. @defaultValue 100 */
  readonly batchSize?: number;
  /**
   * Attempts of each batch; on the last one, recipients the channel still refuses are marked
   * failed instead of retried. 1 to 100. @defaultValue 10
   */
  readonly sendAttempts?: number;
}

const maxBatchSize = 1000;
// Pending recipients read per query by the dispatcher; the batches of one page are enqueued in
// one statement (enqueueJobs takes at most 10,000 payloads).
const batchesPerPage = 1000;

function invalidPayload(task: string, problem: string): TenantryError {
  return new TenantryError('TENANTRY_ERR_JOB_INVALID', `The payload of ${task} ${problem}.`);
}

function parseObject(task: string, data: unknown): Record<string, unknown> {
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw invalidPayload(task, 'is not an object');
  }
  return data as Record<string, unknown>;
}

function parseBroadcastId(task: string, value: unknown): string {
  if (typeof value !== 'string' || !isUuid(value)) {
    throw invalidPayload(task, 'has no broadcastId (a UUID)');
  }
  return value.toLowerCase();
}

/**
 * Checks a stored `broadcast.dispatch` payload.
 *
 * @throws TenantryError `TENANTRY_ERR_JOB_INVALID` (the job is dead-lettered at once).
 * @example
 * ```ts
 * parseDispatchPayload({ broadcastId: '0190a6d2-5a4e-7c1b-9f00-3b0c2d1e4f50' });
 * ```
 */
export function parseDispatchPayload(data: unknown): BroadcastDispatchPayload {
  const record = parseObject('broadcast.dispatch', data);
  return { broadcastId: parseBroadcastId('broadcast.dispatch', record.broadcastId) };
}

/**
 * Checks a stored `broadcast.send-batch` payload: a broadcast id and 1 to 1000 contact ids.
 *
 * @throws TenantryError `TENANTRY_ERR_JOB_INVALID` (the job is dead-lettered at once).
 * @example
 * ```ts
 * parseSendBatchPayload({ broadcastId, contactIds: [contactId] });
 * ```
 */
export function parseSendBatchPayload(data: unknown): BroadcastSendBatchPayload {
  const task = 'broadcast.send-batch';
  const record = parseObject(task, data);
  const broadcastId = parseBroadcastId(task, record.broadcastId);
  const contactIds = record.contactIds;
  if (
    !Array.isArray(contactIds) ||
    contactIds.length === 0 ||
    contactIds.length > maxBatchSize ||
    !contactIds.every((id) => typeof id === 'string' && isUuid(id))
  ) {
    throw invalidPayload(task, `has no contactIds (1 to ${maxBatchSize} UUIDs)`);
  }
  return { broadcastId, contactIds: contactIds.map((id: string) => id.toLowerCase()) };
}

/**
 * The text a broadcast sends to one contact: the template body with each placeholder filled
 * from `variables` (fixed text, or the contact's name, phone or email; an absent field is empty).
 *
 * @throws AppError `APP_ERR_TEMPLATE_VARIABLES_INVALID` when the message comes out too long.
 * @example
 * ```ts
 * renderBroadcastMessage('Hi {{1}}, {{2}}', [{ contact: 'name' }, '20% off today'], { name: 'Ana', phone: null, email: null });
 * // 'Hi Ana, 20% off today'
 * ```
 */
export function renderBroadcastMessage(
  body: string,
  variables: readonly BroadcastVariable[],
  contact: Pick<PendingRecipient, 'name' | 'phone' | 'email'>,
): string {
  return renderTemplate(
    body,
    variables.map((variable) =>
      typeof variable === 'string' ? variable : (contact[variable.contact] ?? ''),
    ),
  );
}

const quotas = createQuotas();

function errorText(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

type Outcome =
  | { readonly contactId: string; readonly status: 'sent'; readonly providerMessageId: string }
  | { readonly contactId: string; readonly status: 'failed'; readonly error: string };

async function dispatch(
  { broadcastId }: BroadcastDispatchPayload,
  ctx: JobContext<AppDatabase>,
  sendBatch: BroadcastJobs['sendBatch'],
  batchSize: number,
): Promise<void> {
  const db = ctx.db;
  const broadcast = await lockBroadcast(db, broadcastId);
  if (broadcast === undefined || broadcast.status !== 'queued') {
    ctx.logger.info(
      { broadcastId, status: broadcast?.status },
      'broadcast not queued; nothing to do',
    );
    return;
  }
  await markBroadcastSending(db, broadcastId);
  let afterContactId: string | undefined;
  let batches = 0;
  for (;;) {
    const limit = batchSize * batchesPerPage;
    const ids = await pendingContactIds(db, broadcastId, { limit, afterContactId });
    const payloads: BroadcastSendBatchPayload[] = [];
    for (let start = 0; start < ids.length; start += batchSize) {
      payloads.push({ broadcastId, contactIds: ids.slice(start, start + batchSize) });
    }
    await enqueueJobs(db, sendBatch, payloads);
    batches += payloads.length;
    afterContactId = ids.at(-1);
    if (ids.length < limit) break;
  }
  // Every recipient's contact was deleted since the broadcast was created.
  if (batches === 0) await finishBroadcast(db, broadcastId);
  ctx.logger.info({ broadcastId, batches }, 'broadcast dispatched');
}

async function sendOneBatch(
  { broadcastId, contactIds }: BroadcastSendBatchPayload,
  ctx: JobContext<AppDatabase>,
  provider: ChannelProvider,
): Promise<void> {
  const db = ctx.db;
  const broadcast = await db
    .selectFrom('broadcasts')
    .select(['status', 'body', 'variables'])
    .where('id', '=', broadcastId)
    .executeTakeFirst();
  if (broadcast === undefined || broadcast.status !== 'sending') return;
  const recipients = await lockPendingRecipients(db, broadcastId, contactIds);
  const outcomes: Outcome[] = [];
  const refused: { contactId: string; error: unknown }[] = [];
  let quotaRefusal: string | undefined;
  for (const recipient of recipients) {
    ctx.signal.throwIfAborted();
    const contactId = recipient.contact_id;
    if (recipient.phone === null) {
      outcomes.push({ contactId, status: 'failed', error: 'The contact has no phone number.' });
      continue;
    }
    let body: string;
    try {
      body = renderBroadcastMessage(broadcast.body, broadcast.variables, recipient);
    } catch (error) {
      outcomes.push({ contactId, status: 'failed', error: errorText(error) });
      continue;
    }
    if (quotaRefusal === undefined) {
      try {
        // Each message sent counts against the plan's messages per billing period, once per
        // recipient (the key): a retried batch does not count its messages twice. In a savepoint,
        // so a refusal fails this recipient, not the whole batch.
        await db.transaction().execute((savepoint) =>
          quotas.recordUsage(savepoint, {
            metric: 'messages',
            idempotencyKey: `broadcast:${broadcastId}:${contactId}`,
            properties: { broadcastId },
          }),
        );
      } catch (error) {
        if (!isTenantryError(error, 'TENANTRY_ERR_QUOTA_EXCEEDED')) throw error;
        quotaRefusal = error.message;
      }
    }
    if (quotaRefusal !== undefined) {
      outcomes.push({ contactId, status: 'failed', error: quotaRefusal });
      continue;
    }
    try {
      const { providerMessageId } = await provider.send({
        tenantId: ctx.tenantId,
        idempotencyKey: `broadcast:${broadcastId}:${contactId}`,
        contactId,
        to: recipient.phone,
        body,
      });
      outcomes.push({ contactId, status: 'sent', providerMessageId });
    } catch (error) {
      refused.push({ contactId, error });
    }
  }
  // Throwing rolls back this attempt's settlements; the messages the channel accepted stay
  // delivered there, and the retry's send() of the same keys answers with those deliveries.
  if (refused.length > 0 && ctx.attempt < ctx.maxAttempts) {
    throw new AggregateError(
      refused.map((item) => item.error),
      `The channel refused ${refused.length} of ${recipients.length} messages (first: ${errorText(refused[0]?.error)}); the batch will be retried.`,
    );
  }
  for (const item of refused) {
    outcomes.push({ contactId: item.contactId, status: 'failed', error: errorText(item.error) });
  }
  for (const outcome of outcomes) {
    await settleRecipient(db, broadcastId, outcome.contactId, outcome, ctx.attempt);
  }
  await lockBroadcast(db, broadcastId);
  const sent = outcomes.filter((outcome) => outcome.status === 'sent').length;
  await addToCounters(db, broadcastId, { sent, failed: outcomes.length - sent });
  if (!(await hasPendingRecipients(db, broadcastId))) {
    const status = await finishBroadcast(db, broadcastId);
    ctx.logger.info({ broadcastId, status }, 'broadcast finished');
  }
}

function boundedInteger(value: number, name: string, max: number): number {
  if (!Number.isInteger(value) || value < 1 || value > max) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `${name} must be an integer from 1 to ${max}, got ${value}.`,
    );
  }
  return value;
}

/**
 * Defines the broadcast jobs on a channel provider. `broadcast.dispatch` marks a queued broadcast
 * as sending and enqueues one `broadcast.send-batch` job per `batchSize` pending recipients, in
 * the same transaction. A batch sends each recipient still pending with the idempotency key
 * `broadcast:<broadcastId>:<contactId>`; when the channel refuses some, the batch is retried
 * (the provider answers repeated keys with the first delivery, so nobody gets a message twice)
 * until its last attempt, which marks them failed with the error. The batch that settles the
 * last recipient closes the broadcast.
 *
 * @example
 * ```ts
 * const broadcasts = createBroadcastJobs({ provider, batchSize: 100 });
 * const worker = await createJobWorker({ tenantry, connectionString: ownerUrl, jobs: [broadcasts.dispatch, broadcasts.sendBatch] });
 * ```
 */
export function createBroadcastJobs(options: BroadcastJobOptions): BroadcastJobs {
  const batchSize = boundedInteger(options.batchSize ?? 100, 'batchSize', maxBatchSize);
  const sendAttempts = boundedInteger(options.sendAttempts ?? 10, 'sendAttempts', 100);
  const provider = options.provider;
  const sendBatch = defineJob<BroadcastSendBatchPayload, AppDatabase>('broadcast.send-batch', {
    parse: parseSendBatchPayload,
    maxAttempts: sendAttempts,
    run: (payload, ctx) => sendOneBatch(payload, ctx, provider),
  });
  const dispatchJob = defineJob<BroadcastDispatchPayload, AppDatabase>('broadcast.dispatch', {
    parse: parseDispatchPayload,
    run: (payload, ctx) => dispatch(payload, ctx, sendBatch, batchSize),
  });
  return Object.freeze({ dispatch: dispatchJob, sendBatch });
}
