import { setTimeout as delay } from 'node:timers/promises';
import {
  defaultTenantrySchema,
  parseIdentifier,
  quoteIdentifier,
  type RoleNames,
  resolveRoleNames,
} from '../config.ts';
import { TenantryError } from '../errors.ts';
import { retryDelayMs } from '../jobs/retry-delay.ts';
import { type Logger, silentLogger, summarizeError } from '../logger.ts';
import { createOwnerPool } from './webhook-admin.ts';
import { signWebhook, webhookInvalidCode } from './webhook-signing.ts';

/** Options of {@link createWebhookDispatcher}. */
export interface WebhookDispatcherOptions {
  /** Owner or superuser connection (a superuser URL acts as the owner). */
  readonly connectionString: string;
  /** Schema of Tenantry's objects. @defaultValue 'tenantry' */
  readonly schema?: string;
  readonly roles?: Partial<RoleNames>;
  /** Requests in flight at once, over all endpoints. @defaultValue 16 */
  readonly concurrency?: number;
  /**
   * Requests in flight at once to one endpoint, over all dispatchers: what a slow or hanging
   * endpoint can hold, the rest of `concurrency` serves the others. At most `concurrency`.
   * @defaultValue 4
   */
  readonly endpointConcurrency?: number;
  /** How often due deliveries are looked for. @defaultValue 1000 */
  readonly pollIntervalMs?: number;
  /** How long one request (connection, response and excerpt) may take. @defaultValue 15000 */
  readonly requestTimeoutMs?: number;
  /**
   * How long a claimed delivery belongs to this dispatcher; if it crashes, the delivery is due
   * again after the lease. Longer than `requestTimeoutMs`.
   * @defaultValue requestTimeoutMs + 60000
   */
  readonly leaseMs?: number;
  /**
   * Backoff after a failed attempt n: `baseDelayMs * 2^(n-1)` capped at `maxDelayMs`, then a
   * random 50-100 % of it.
   * @defaultValue { baseDelayMs: 30000, maxDelayMs: 21600000 }
   */
  readonly retry?: { readonly baseDelayMs?: number; readonly maxDelayMs?: number };
  /** How long `stop()` lets requests in flight finish before aborting them. @defaultValue requestTimeoutMs */
  readonly shutdownGraceMs?: number;
  /** @defaultValue 'tenantry-webhooks' */
  readonly userAgent?: string;
  /** @defaultValue a silent logger */
  readonly logger?: Logger;
  /** The fetch implementation (a proxy-aware one, for instance). @defaultValue globalThis.fetch */
  readonly fetch?: typeof fetch;
}

/** What {@link WebhookDispatcher.runOnce} did. */
export interface WebhookDispatchSummary {
  readonly claimed: number;
  readonly succeeded: number;
  /** Failed attempts that will be retried. */
  readonly retried: number;
  /** Deliveries given up after their last attempt. */
  readonly failed: number;
}

/** The dispatcher's state, for a health endpoint. */
export interface WebhookDispatcherHealth {
  readonly status: 'idle' | 'running' | 'stopping' | 'stopped';
  readonly inFlight: number;
  /** The last time due deliveries were claimed without an error. */
  readonly lastPollAt: Date | undefined;
  /** The last claim error, cleared by the next successful claim. */
  readonly lastError: string | undefined;
}

/** Delivers outbox events to webhook endpoints (see {@link createWebhookDispatcher}). */
export interface WebhookDispatcher {
  /** Checks the webhook tables are installed, then polls until `stop()`. */
  start(): Promise<void>;
  /**
   * Stops claiming, lets requests in flight finish for `shutdownGraceMs`, aborts the rest
   * (they are due again at once, the attempt not counted) and closes the pool.
   */
  stop(): Promise<void>;
  /** Claims what is due now (up to the free concurrency) and delivers it. */
  runOnce(): Promise<WebhookDispatchSummary>;
  health(): WebhookDispatcherHealth;
}

type Outcome = 'succeeded' | 'retried' | 'failed' | 'aborted' | 'lost';

interface ClaimedDelivery {
  readonly event_id: string;
  readonly endpoint_id: string;
  readonly attempts: number;
  readonly max_attempts: number;
  readonly lease_token: string;
  readonly url: string;
  readonly secret: string;
  readonly previous_secret: string | null;
  readonly type: string;
  readonly tenant_id: string | null;
  readonly data: Record<string, unknown>;
  readonly created_at: Date;
}

const excerptBytes = 1024;
const errorLength = 1000;

/**
 * Creates the dispatcher that delivers every row of `tenantry.outbox_events` to the endpoints
 * subscribed to its type, signed per the Standard Webhooks specification, at least once: a
 * delivery is marked succeeded only after a 2xx response. Other responses, timeouts and
 * connection errors are retried with exponential backoff and jitter until the endpoint's
 * `maxAttempts`, then the delivery is marked failed (see `WebhookAdmin.replay`). Due deliveries
 * are claimed with `FOR UPDATE SKIP LOCKED` under a lease, so several dispatchers can run, and
 * at most `endpointConcurrency` requests go to one endpoint at once: a hanging endpoint never
 * holds up the others.
 *
 * @example
 * ```ts
 * import { createWebhookDispatcher } from 'tenantry/billing';
 * const dispatcher = createWebhookDispatcher({ connectionString: ownerUrl, logger });
 * await dispatcher.start();
 * process.once('SIGTERM', () => void dispatcher.stop());
 * ```
 */
export function createWebhookDispatcher(options: WebhookDispatcherOptions): WebhookDispatcher {
  const settings = resolveSettings(options);
  const { concurrency, endpointConcurrency, requestTimeoutMs, leaseMs, retry, logger } = settings;
  const schema = quoteIdentifier(
    parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema'),
  );
  const fetchImpl = options.fetch ?? globalThis.fetch;
  const pool = createOwnerPool(options.connectionString, resolveRoleNames(options.roles).owner, 4);
  const stopController = new AbortController();
  const inFlight = new Set<Promise<Outcome>>();
  let status: WebhookDispatcherHealth['status'] = 'idle';
  let lastPollAt: Date | undefined;
  let lastError: string | undefined;
  let loop: Promise<void> | undefined;
  let wake: (() => void) | undefined;
  let stopWake: (() => void) | undefined;
  let stopping: Promise<void> | undefined;

  const giveUpStatement = `
    update ${schema}.webhook_deliveries d
       set status = 'failed', lease_token = null, updated_at = now(),
           last_error = case when d.status = 'delivering'
             then 'lease expired during the last attempt (the dispatcher stopped or lost the database)'
             else d.last_error end
      from ${schema}.webhook_endpoints e
     where e.id = d.endpoint_id
       and d.status in ('pending', 'delivering')
       and d.next_attempt_at <= now()
       and d.attempts >= e.max_attempts`;

  // Per endpoint: its oldest due deliveries, no more than its free slots (live leases of every
  // dispatcher count); over all endpoints, the oldest first up to this dispatcher's free slots.
  const claimStatement = `
    with candidates as (
      select c.event_id, c.endpoint_id, c.next_attempt_at
        from ${schema}.webhook_endpoints e
        cross join lateral (
          select d.event_id, d.endpoint_id, d.next_attempt_at
            from ${schema}.webhook_deliveries d
           where d.endpoint_id = e.id
             and d.status in ('pending', 'delivering')
             and d.next_attempt_at <= now()
             and d.attempts < e.max_attempts
           order by d.next_attempt_at, d.event_id
           limit greatest(0, $2::integer - (
             select count(*) from ${schema}.webhook_deliveries busy
              where busy.endpoint_id = e.id
                and busy.status = 'delivering'
                and busy.next_attempt_at > now()))
           for update of d skip locked
        ) c
       where e.enabled
       order by c.next_attempt_at, c.event_id
       limit $1
    ),
    claimed as (
      update ${schema}.webhook_deliveries d
         set status = 'delivering', attempts = d.attempts + 1,
             next_attempt_at = now() + make_interval(secs => $3::double precision / 1000),
             lease_token = gen_random_uuid(), updated_at = now()
        from candidates c
       where d.event_id = c.event_id and d.endpoint_id = c.endpoint_id
      returning d.event_id, d.endpoint_id, d.attempts, d.lease_token
    )
    select cl.event_id, cl.endpoint_id, cl.attempts, cl.lease_token, e.max_attempts, e.url,
           e.secret, case when e.previous_expires_at > now() then e.previous_secret end
             as previous_secret,
           o.type, o.tenant_id, o.data, o.created_at
      from claimed cl
      join ${schema}.webhook_endpoints e on e.id = cl.endpoint_id
      join ${schema}.outbox_events o on o.id = cl.event_id`;

  // The attempt is logged whatever happened to the lease; the delivery's state only changes
  // while this claim still holds it.
  const settleStatement = `
    with logged as (
      insert into ${schema}.webhook_attempts
        (event_id, endpoint_id, attempt, started_at, duration_ms, status_code, error, response_excerpt)
      values ($1, $2, $3, $4, $5, $6, $7, $8)
    )
    update ${schema}.webhook_deliveries d
       set status = $9,
           attempts = case when $11::boolean then greatest(d.attempts - 1, 0) else d.attempts end,
           next_attempt_at = case when $9 = 'pending'
             then now() + make_interval(secs => $10::double precision / 1000)
             else d.next_attempt_at end,
           last_status_code = $6, last_error = $7,
           delivered_at = case when $9 = 'succeeded' then now() else d.delivered_at end,
           lease_token = null, updated_at = now()
     where d.event_id = $1 and d.endpoint_id = $2 and d.lease_token = $12`;

  async function claim(): Promise<ClaimedDelivery[]> {
    const free = concurrency - inFlight.size;
    if (free <= 0) return [];
    await pool.query(giveUpStatement);
    const result = await pool.query<ClaimedDelivery>(claimStatement, [
      free,
      endpointConcurrency,
      leaseMs,
    ]);
    lastPollAt = new Date();
    lastError = undefined;
    return result.rows;
  }

  function track(delivery: ClaimedDelivery): Promise<Outcome> {
    const running = deliver(delivery).finally(() => {
      inFlight.delete(running);
      wake?.();
    });
    inFlight.add(running);
    return running;
  }

  async function deliver(delivery: ClaimedDelivery): Promise<Outcome> {
    const startedAt = new Date();
    const started = performance.now();
    const body = JSON.stringify({
      type: delivery.type,
      timestamp: delivery.created_at.toISOString(),
      data: { ...delivery.data, tenantId: delivery.tenant_id },
    });
    const secrets =
      delivery.previous_secret === null
        ? [delivery.secret]
        : [delivery.secret, delivery.previous_secret];
    let statusCode: number | undefined;
    let error: string | undefined;
    let excerpt: string | undefined;
    let aborted = false;
    const timeout = AbortSignal.timeout(requestTimeoutMs);
    const signal = AbortSignal.any([timeout, stopController.signal]);
    try {
      const headers = signWebhook({ id: delivery.event_id, timestamp: new Date(), body, secrets });
      const response = await untilAborted(
        fetchImpl(delivery.url, {
          method: 'POST',
          headers: {
            ...headers,
            'content-type': 'application/json',
            'user-agent': settings.userAgent,
          },
          body,
          redirect: 'manual',
          signal,
        }),
        signal,
      );
      statusCode = response.status;
      excerpt = await untilAborted(readExcerpt(response), signal).catch(() => undefined);
      if (statusCode >= 300 && statusCode < 400) error = 'redirects are not followed';
      else if (statusCode < 200 || statusCode >= 300) error = `HTTP ${statusCode}`;
    } catch (caught) {
      if (stopController.signal.aborted && !timeout.aborted) {
        aborted = true;
        error = 'aborted: the dispatcher stopped';
      } else if (timeout.aborted) {
        error = `timed out after ${requestTimeoutMs} ms`;
      } else {
        error = describeFetchError(caught);
      }
    }
    const succeeded = error === undefined;
    const outcome: Outcome = succeeded
      ? 'succeeded'
      : aborted
        ? 'aborted'
        : delivery.attempts >= delivery.max_attempts
          ? 'failed'
          : 'retried';
    const nextStatus =
      outcome === 'succeeded' ? 'succeeded' : outcome === 'failed' ? 'failed' : 'pending';
    const nextDelayMs = outcome === 'retried' ? retryDelayMs(delivery.attempts, retry) : 0;
    const fields = {
      eventId: delivery.event_id,
      endpointId: delivery.endpoint_id,
      attempt: delivery.attempts,
      ...(statusCode === undefined ? {} : { statusCode }),
    };
    try {
      const settled = await pool.query(settleStatement, [
        delivery.event_id,
        delivery.endpoint_id,
        delivery.attempts,
        startedAt,
        Math.max(0, Math.round(performance.now() - started)),
        statusCode ?? null,
        error === undefined ? null : clean(error, errorLength),
        excerpt === undefined ? null : clean(excerpt, excerptBytes),
        nextStatus,
        nextDelayMs,
        aborted,
        delivery.lease_token,
      ]);
      if (settled.rowCount === 0) {
        logger.warn(fields, 'webhook delivery settled after its lease passed to another claim');
        return 'lost';
      }
    } catch (settleError) {
      // The lease runs out and the delivery is sent again: at least once, never lost.
      logger.error(
        { ...fields, error: summarizeError(settleError) },
        'recording a webhook attempt failed; the delivery is retried after its lease',
      );
      return 'lost';
    }
    if (outcome === 'succeeded') logger.debug(fields, 'webhook delivered');
    else if (outcome === 'failed')
      logger.warn({ ...fields, error }, 'webhook delivery failed for good');
    else if (outcome === 'retried') {
      logger.info({ ...fields, error, retryInMs: nextDelayMs }, 'webhook attempt failed');
    }
    return outcome;
  }

  async function runLoop(): Promise<void> {
    while (status === 'running') {
      let claimed = 0;
      try {
        const deliveries = await claim();
        for (const delivery of deliveries) void track(delivery);
        claimed = deliveries.length;
      } catch (error) {
        lastError = error instanceof Error ? error.message : String(error);
        logger.error({ error: summarizeError(error) }, 'claiming webhook deliveries failed');
      }
      if (status !== 'running') break;
      if (claimed > 0 && inFlight.size < concurrency) continue;
      const saturated = inFlight.size >= concurrency;
      await new Promise<void>((resolveSleep) => {
        const timer = setTimeout(done, settings.pollIntervalMs);
        function done() {
          clearTimeout(timer);
          wake = undefined;
          stopWake = undefined;
          resolveSleep();
        }
        // A finished request frees a slot; only worth an early claim when every slot was busy.
        wake = saturated ? done : undefined;
        stopWake = done;
      });
    }
  }

  return Object.freeze({
    async start() {
      if (status !== 'idle') {
        throw new TenantryError(
          webhookInvalidCode,
          `The webhook dispatcher is ${status}; create a new one to start again.`,
        );
      }
      try {
        await pool.query(`select 1 from ${schema}.webhook_deliveries limit 0`);
      } catch (error) {
        throw new TenantryError(
          'TENANTRY_ERR_CONFIG_INVALID',
          'The webhook tables are missing or not readable: apply the billing migrations (tenantry migrate) and connect as the owner role.',
          { cause: error },
        );
      }
      status = 'running';
      loop = runLoop();
    },

    stop() {
      stopping ??= (async () => {
        if (status === 'stopped') return;
        status = 'stopping';
        stopWake?.();
        await loop;
        if (inFlight.size > 0) {
          const grace = new AbortController();
          await Promise.race([
            Promise.allSettled([...inFlight]),
            delay(settings.shutdownGraceMs, undefined, { signal: grace.signal }).catch(() => {}),
          ]);
          grace.abort();
          stopController.abort();
          await Promise.allSettled([...inFlight]);
        }
        await pool.end();
        status = 'stopped';
      })();
      return stopping;
    },

    async runOnce() {
      if (status === 'stopping' || status === 'stopped') {
        throw new TenantryError(webhookInvalidCode, 'The webhook dispatcher is stopped.');
      }
      const outcomes = await Promise.all((await claim()).map(track));
      const count = (outcome: Outcome) => outcomes.filter((value) => value === outcome).length;
      return Object.freeze({
        claimed: outcomes.length,
        succeeded: count('succeeded'),
        retried: count('retried'),
        failed: count('failed'),
      });
    },

    health() {
      return Object.freeze({ status, inFlight: inFlight.size, lastPollAt, lastError });
    },
  });
}

function resolveSettings(options: WebhookDispatcherOptions) {
  const integer = (
    name: string,
    value: number | undefined,
    fallback: number,
    min: number,
    max: number,
  ) => {
    const resolved = value ?? fallback;
    if (!Number.isSafeInteger(resolved) || resolved < min || resolved > max) {
      throw new TenantryError(
        webhookInvalidCode,
        `${name} is an integer from ${min} to ${max}, got ${String(resolved)}.`,
      );
    }
    return resolved;
  };
  if (typeof options?.connectionString !== 'string' || options.connectionString === '') {
    throw new TenantryError(
      webhookInvalidCode,
      'connectionString is the owner (or superuser) connection URL.',
    );
  }
  const day = 24 * 60 * 60 * 1000;
  const concurrency = integer('concurrency', options.concurrency, 16, 1, 1000);
  const endpointConcurrency = integer(
    'endpointConcurrency',
    options.endpointConcurrency,
    Math.min(4, concurrency),
    1,
    concurrency,
  );
  const requestTimeoutMs = integer('requestTimeoutMs', options.requestTimeoutMs, 15_000, 1, day);
  const leaseMs = integer(
    'leaseMs',
    options.leaseMs,
    requestTimeoutMs + 60_000,
    requestTimeoutMs + 1,
    7 * day,
  );
  const baseDelayMs = integer('retry.baseDelayMs', options.retry?.baseDelayMs, 30_000, 1, day);
  const maxDelayMs = integer(
    'retry.maxDelayMs',
    options.retry?.maxDelayMs,
    Math.max(baseDelayMs, 6 * 60 * 60 * 1000),
    baseDelayMs,
    7 * day,
  );
  const userAgent = options.userAgent ?? 'tenantry-webhooks';
  if (typeof userAgent !== 'string' || !/^[\x20-\x7e]{1,200}$/.test(userAgent)) {
    throw new TenantryError(webhookInvalidCode, 'userAgent is 1-200 printable ASCII characters.');
  }
  return Object.freeze({
    concurrency,
    endpointConcurrency,
    pollIntervalMs: integer('pollIntervalMs', options.pollIntervalMs, 1000, 1, day),
    requestTimeoutMs,
    leaseMs,
    retry: Object.freeze({ baseDelayMs, maxDelayMs }),
    shutdownGraceMs: integer('shutdownGraceMs', options.shutdownGraceMs, requestTimeoutMs, 0, day),
    userAgent,
    logger: options.logger ?? silentLogger,
  });
}

/** Settles with `promise`, or rejects as soon as `signal` aborts (even if `promise` never does). */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolvePromise, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolvePromise(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}

/** The first kilobyte of a response body, as text; the rest is not read. */
async function readExcerpt(response: Response): Promise<string | undefined> {
  if (response.body === null) return undefined;
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let length = 0;
  try {
    while (length < excerptBytes) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      length += value.byteLength;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  if (length === 0) return undefined;
  const bytes = Buffer.concat(chunks).subarray(0, excerptBytes);
  return new TextDecoder('utf-8', { fatal: false }).decode(bytes);
}

/** What went wrong with a request that got no response, without the request itself. */
function describeFetchError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const cause = (error as { cause?: unknown }).cause;
  if (cause instanceof Error) {
    const code = (cause as { code?: unknown }).code;
    return `${typeof code === 'string' ? `${code}: ` : ''}${cause.message}`;
  }
  return error.message;
}

/** Text PostgreSQL can store (no NUL), at most `max` characters. */
function clean(text: string, max: number): string {
  const flat = text.replaceAll('\0', '');
  return flat.length <= max ? flat : flat.slice(0, max);
}
