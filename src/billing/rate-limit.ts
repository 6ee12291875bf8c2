import pg from 'pg';
import { defaultTenantrySchema, parseIdentifier, quoteIdentifier } from '../config.ts';
import { toTenantryError } from '../database-errors.ts';
import { TenantryError } from '../errors.ts';
import { type Logger, silentLogger, summarizeError } from '../logger.ts';

/** The outcome of one {@link RateLimitStore.hit}. */
export interface RateLimitResult {
  /** Whether the request fits; a refused request consumes nothing. */
  readonly allowed: boolean;
  /** Requests that would still be allowed right now, after this one. */
  readonly remaining: number;
  /** Milliseconds until the whole quota is available again. */
  readonly resetMs: number;
  /** Milliseconds until the next request can be allowed; `0` when this one was. */
  readonly retryAfterMs: number;
  readonly limit: number;
}

/**
 * Where request budgets are kept. Both stores implement GCRA (the generic cell rate algorithm, a
 * token bucket kept as one timestamp per key): a key may spend `limit` requests at once, and
 * regains one every `windowMs / limit` milliseconds, so a full quota comes back within `windowMs`.
 *
 * @example
 * ```ts
 * const store: RateLimitStore = createMemoryRateLimitStore();
 * const result = await store.hit(`api:${tenantId}`, 600, 60_000, Date.now());
 * if (!result.allowed) reply.header('retry-after', Math.ceil(result.retryAfterMs / 1000));
 * ```
 */
export interface RateLimitStore {
  /**
   * Spends one request of `key`'s budget of `limit` per `windowMs` at instant `now` (epoch
   * milliseconds), if it fits. `limit` is a non-negative integer; `0` refuses everything.
   */
  hit(key: string, limit: number, windowMs: number, now: number): Promise<RateLimitResult>;
  /** Releases the store's resources (timers, connections). */
  close(): Promise<void>;
}

/**
 * Float tolerance of the GCRA comparisons, in milliseconds: `windowMs / limit` is rarely exact, and
 * a full burst must not be cut short by rounding. `tenantry.hit_rate_limit()` uses the same.
 */
const toleranceMs = 0.01;
const keyPattern = /^[\x21-\x7e]{1,200}$/;

function invalid(message: string): TenantryError {
  return new TenantryError('TENANTRY_ERR_CONFIG_INVALID', `Rate limit: ${message}`);
}

function checkHit(key: string, limit: number, windowMs: number, now: number): void {
  if (typeof key !== 'string' || !keyPattern.test(key)) {
    throw invalid('key must be 1 to 200 visible ASCII characters.');
  }
  if (!Number.isSafeInteger(limit) || limit < 0) {
    throw invalid('limit must be a non-negative integer.');
  }
  if (!Number.isSafeInteger(windowMs) || windowMs <= 0) {
    throw invalid('windowMs must be a positive integer.');
  }
  if (!Number.isFinite(now)) throw invalid('now must be a finite number of milliseconds.');
}

function refusedOutright(limit: number, windowMs: number): RateLimitResult {
  return Object.freeze({ allowed: false, remaining: 0, resetMs: 0, retryAfterMs: windowMs, limit });
}

/** Durations are reported in whole milliseconds, without the float noise below the tolerance. */
const wholeMs = (milliseconds: number) => Math.max(Math.ceil(milliseconds - toleranceMs), 0);

/**
 * The GCRA decision at `now`: `base` is when the key's spent budget is paid back (`now` when it is
 * full), `next` the same after an admitted request (`undefined`: refused).
 */
function outcome(
  limit: number,
  windowMs: number,
  now: number,
  next: number | undefined,
  base: number,
): RateLimitResult {
  const intervalMs = windowMs / limit;
  if (next !== undefined) {
    const backlogMs = Math.max(next - now, 0);
    return Object.freeze({
      allowed: true,
      remaining: Math.max(Math.floor((windowMs + toleranceMs - backlogMs) / intervalMs), 0),
      resetMs: wholeMs(backlogMs),
      retryAfterMs: 0,
      limit,
    });
  }
  return Object.freeze({
    allowed: false,
    remaining: 0,
    resetMs: wholeMs(base - now),
    retryAfterMs: wholeMs(base + intervalMs - windowMs - now),
    limit,
  });
}

/**
 * When a key's spent budget is paid back under the current interval. A budget spent under
 * another limit (the plan changed) counts as the same number of requests, and never as more
 * than a whole window, so an upgrade frees capacity at once and a downgrade blocks one window
 * at most.
 */
function paidBackAt(
  state: KeyState | undefined,
  intervalMs: number,
  windowMs: number,
  now: number,
): number {
  if (state === undefined || state.tat <= now) return now;
  const backlogMs = state.tat - now;
  if (state.intervalMs === intervalMs) return state.tat;
  return now + Math.min((backlogMs * intervalMs) / state.intervalMs, windowMs);
}

interface KeyState {
  /** GCRA theoretical arrival time, epoch milliseconds. */
  readonly tat: number;
  /** `windowMs / limit` when `tat` was set. */
  readonly intervalMs: number;
}

/** Options of {@link createMemoryRateLimitStore}. */
export interface MemoryRateLimitStoreOptions {
  /**
   * Most keys kept. Beyond it, keys whose budget is full again are dropped first (dropping them
   * changes nothing), then the least recently used (which forgets what they spent).
   * @defaultValue 100000
   */
  readonly maxKeys?: number;
}

/**
 * Creates the in-process store: one number per key in a `Map`, about a microsecond per request.
 * Each process counts on its own, so with N instances behind a load balancer a tenant gets up to
 * N times its limit; use {@link createPostgresRateLimitStore} to share the budget.
 *
 * @example
 * ```ts
 * import { createMemoryRateLimitStore } from 'tenantry/billing';
 * const store = createMemoryRateLimitStore({ maxKeys: 50_000 });
 * await store.hit(`api:${tenantId}`, 5, 60_000, Date.now()); // { allowed: true, remaining: 4, ... }
 * ```
 */
export function createMemoryRateLimitStore(
  options: MemoryRateLimitStoreOptions = {},
): RateLimitStore {
  const maxKeys = options.maxKeys ?? 100_000;
  if (!Number.isSafeInteger(maxKeys) || maxKeys < 1) {
    throw invalid('maxKeys must be a positive integer.');
  }
  // Insertion order is recency order: a hit moves its key to the end.
  const arrivals = new Map<string, KeyState>();

  // Frees a tenth of the capacity at once, so a full map costs one sweep per maxKeys / 10 new
  // keys rather than one per key.
  const evict = (now: number) => {
    const target = Math.floor(maxKeys * 0.9);
    for (const [key, state] of arrivals) {
      if (state.tat <= now) arrivals.delete(key);
    }
    for (const key of arrivals.keys()) {
      if (arrivals.size <= target) break;
      arrivals.delete(key);
    }
  };

  return Object.freeze({
    async hit(key: string, limit: number, windowMs: number, now: number) {
      checkHit(key, limit, windowMs, now);
      if (limit === 0) return refusedOutright(limit, windowMs);
      const intervalMs = windowMs / limit;
      const state = arrivals.get(key);
      const base = paidBackAt(state, intervalMs, windowMs, now);
      const next = base + intervalMs;
      if (next - now > windowMs + toleranceMs) {
        return outcome(limit, windowMs, now, undefined, base);
      }
      if (state === undefined && arrivals.size >= maxKeys) evict(now);
      arrivals.delete(key);
      arrivals.set(key, { tat: next, intervalMs });
      return outcome(limit, windowMs, now, next, base);
    },
    async close() {
      arrivals.clear();
    },
  });
}

/** Options of {@link createPostgresRateLimitStore}. */
export interface PostgresRateLimitStoreOptions {
  /**
   * The app role's URL (it may only execute `tenantry.hit_rate_limit()` and
   * `tenantry.prune_rate_limits()`), or the owner's.
   */
  readonly connectionString: string;
  /** Connections of the store's own pool. @defaultValue 4 */
  readonly maxConnections?: number;
  /** Server-side limit of each statement. @defaultValue 2000 */
  readonly statementTimeoutMs?: number;
  /** How often replenished keys are deleted; `0` never (call `prune()`). @defaultValue 60000 */
  readonly pruneIntervalMs?: number;
  /** Schema of Tenantry's own objects. @defaultValue 'tenantry' */
  readonly schema?: string;
  readonly logger?: Logger;
}

/** The PostgreSQL store, with its maintenance. */
export interface PostgresRateLimitStore extends RateLimitStore {
  /** Deletes the rows of keys whose budget is full again at `now`; returns how many. */
  prune(now?: number): Promise<number>;
}

/**
 * Creates the store shared by every instance of an application: one row per key in the UNLOGGED
 * table `tenantry.rate_limits` (installed by the billing migrations), changed by one upsert per
 * request through `tenantry.hit_rate_limit()`. It runs on its own pool in autocommit, never in a
 * request's transaction: a request that rolls back has still been counted. Instances must agree on
 * the time (NTP): the caller's clock is used, and a skew of s seconds moves budgets by s seconds.
 *
 * @example
 * ```ts
 * import { createPostgresRateLimitStore } from 'tenantry/billing';
 * const store = createPostgresRateLimitStore({ connectionString: appUrl });
 * await store.hit(`api:${tenantId}`, 600, 60_000, Date.now());
 * await store.close();
 * ```
 */
export function createPostgresRateLimitStore(
  options: PostgresRateLimitStoreOptions,
): PostgresRateLimitStore {
  if (typeof options !== 'object' || options === null) throw invalid('options are required.');
  if (typeof options.connectionString !== 'string' || options.connectionString === '') {
    throw invalid('connectionString is required.');
  }
  const maxConnections = options.maxConnections ?? 4;
  const statementTimeoutMs = options.statementTimeoutMs ?? 2_000;
  const pruneIntervalMs = options.pruneIntervalMs ?? 60_000;
  if (!Number.isSafeInteger(maxConnections) || maxConnections < 1) {
    throw invalid('maxConnections must be a positive integer.');
  }
  for (const [name, value] of [
    ['statementTimeoutMs', statementTimeoutMs],
    ['pruneIntervalMs', pruneIntervalMs],
  ] as const) {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw invalid(`${name} must be a non-negative integer.`);
    }
  }
  const logger = options.logger ?? silentLogger;
  const schema = quoteIdentifier(
    parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema'),
  );
  const hitSql = `select tat, paid_back_at from ${schema}.hit_rate_limit($1, $2, $3, $4)`;
  const pruneSql = `select ${schema}.prune_rate_limits($1) as pruned`;
  const pool = new pg.Pool({
    connectionString: options.connectionString,
    max: maxConnections,
    ...(statementTimeoutMs > 0 ? { statement_timeout: statementTimeoutMs } : {}),
  });
  pool.on('error', (error) =>
    logger.warn({ err: summarizeError(error) }, 'rate limit store connection failed'),
  );

  const prune = async (now: number = Date.now()) => {
    try {
      const result = await pool.query<{ pruned: string }>(pruneSql, [now]);
      return Number(result.rows[0]?.pruned ?? 0);
    } catch (error) {
      throw toTenantryError(error);
    }
  };

  let pruneTimer: NodeJS.Timeout | undefined;
  if (pruneIntervalMs > 0) {
    pruneTimer = setInterval(() => {
      prune().catch((error: unknown) => {
        logger.warn({ err: summarizeError(error) }, 'pruning rate limits failed');
      });
    }, pruneIntervalMs);
    pruneTimer.unref();
  }

  return Object.freeze({
    async hit(key: string, limit: number, windowMs: number, now: number) {
      checkHit(key, limit, windowMs, now);
      if (limit === 0) return refusedOutright(limit, windowMs);
      let row: { tat: number | null; paid_back_at: number | null } | undefined;
      try {
        const result = await pool.query<{ tat: number | null; paid_back_at: number | null }>(
          hitSql,
          [key, now, windowMs / limit, windowMs],
        );
        row = result.rows[0];
      } catch (error) {
        throw toTenantryError(error);
      }
      return outcome(limit, windowMs, now, row?.tat ?? undefined, row?.paid_back_at ?? now);
    },
    prune,
    async close() {
      if (pruneTimer !== undefined) clearInterval(pruneTimer);
      if (!pool.ended) await pool.end();
    },
  });
}
