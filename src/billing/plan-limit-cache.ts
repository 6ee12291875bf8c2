import pg from 'pg';
import { defaultTenantrySchema, parseIdentifier, quoteIdentifier } from '../config.ts';
import { createNotificationListener } from '../database/notification-listener.ts';
import { toTenantryError } from '../database-errors.ts';
import { TenantryError } from '../errors.ts';
import { type Logger, silentLogger, summarizeError } from '../logger.ts';
import { isUuid } from '../tenant-id.ts';

/** Options of {@link createPlanLimitCache}. */
export interface PlanLimitCacheOptions {
  /**
   * The owner role's URL, or the app role's: each lookup sets the tenant's context for its own
   * statement, which is all `tenantry.effective_limit()` asks of the app role.
   */
  readonly connectionString: string;
  /** The metrics this cache serves; a lookup of another one is refused. @defaultValue ['api_requests_per_minute'] */
  readonly metrics?: readonly string[];
  /**
   * How long a limit stays cached. Plan changes are announced on `tenantry_plans` and drop the
   * entries at once; the lifetime only bounds staleness while the listener is disconnected.
   * @defaultValue 30000
   */
  readonly ttlMs?: number;
  /** Most entries kept; the least recently used go first. @defaultValue 10000 */
  readonly maxEntries?: number;
  /** Listen for plan changes on a dedicated connection. @defaultValue true */
  readonly listen?: boolean;
  /** Schema of Tenantry's own objects. @defaultValue 'tenantry' */
  readonly schema?: string;
  /** Clock of the cache lifetimes, in epoch milliseconds. @defaultValue Date.now */
  readonly now?: () => number;
  readonly logger?: Logger;
}

/** Tenants' limits (`tenantry.effective_limit`) through a bounded cache that plan changes invalidate. */
export interface PlanLimitCache {
  /**
   * The tenant's limit for `metric` (the first configured metric by default); `null` means
   * unlimited. When the database cannot answer, the last value read is served however old it is;
   * with none, it throws `TENANTRY_ERR_DB_UNAVAILABLE` (503).
   */
  get(tenantId: string, metric?: string): Promise<number | null>;
  /** Drops one tenant's cached limits, or every tenant's. */
  invalidate(tenantId?: string): void;
  /** Whether the plan-change listener is connected. */
  readonly isListening: boolean;
  /** Stops listening and closes the connections. */
  close(): Promise<void>;
}

interface Entry {
  readonly value: number | null;
  /** Fresh until then; afterwards the next lookup reads the database again. */
  expiresAt: number;
}

const metricPattern = /^[a-z][a-z0-9_]{0,62}$/;
const planChannel = 'tenantry_plans';
/** While the database fails, a stale value is served this long before it is tried again. */
const staleRetryMs = 1_000;
const maxReconnectDelayMs = 5_000;

function configError(message: string): TenantryError {
  return new TenantryError('TENANTRY_ERR_CONFIG_INVALID', `Plan limit cache: ${message}`);
}

function nonNegativeInteger(value: number | undefined, fallback: number, name: string): number {
  const resolved = value ?? fallback;
  if (!Number.isSafeInteger(resolved) || resolved < 0) {
    throw configError(`${name} must be a non-negative integer.`);
  }
  return resolved;
}

/**
 * Creates a cache of tenants' plan limits, read with `tenantry.effective_limit(tenant, metric)`
 * (the tenant's override, else its plan's limit; `null` is unlimited). Entries live `ttlMs` at
 * most, and a dedicated connection listens on `tenantry_plans`, which the billing schema
 * notifies whenever a tenant's plan or override changes (payload: the tenant id) or a plan's
 * limits change (payload `*`): every process drops the entries named at once. After the listener
 * reconnects (with backoff) the whole cache is dropped, since changes made meanwhile are unknown.
 *
 * Lookups of the same key share one query. When the database fails, the last value read is
 * served (fail static) and retried at most once a second; a tenant with no known value gets
 * `TENANTRY_ERR_DB_UNAVAILABLE` (fail closed).
 *
 * @example
 * ```ts
 * import { createPlanLimitCache } from 'tenantry/billing';
 * const limits = await createPlanLimitCache({ connectionString: appUrl });
 * await limits.get(tenantId); // 600, or null when the plan sets no limit
 * await limits.close();
 * ```
 */
export async function createPlanLimitCache(
  options: PlanLimitCacheOptions,
): Promise<PlanLimitCache> {
  if (typeof options !== 'object' || options === null) throw configError('options are required.');
  if (typeof options.connectionString !== 'string' || options.connectionString === '') {
    throw configError('connectionString is required.');
  }
  const metrics = Object.freeze([...(options.metrics ?? ['api_requests_per_minute'])]);
  if (metrics.length === 0 || !metrics.every((metric) => metricPattern.test(metric))) {
    throw configError('metrics must list metric names such as api_requests_per_minute.');
  }
  const ttlMs = nonNegativeInteger(options.ttlMs, 30_000, 'ttlMs');
  const maxEntries = nonNegativeInteger(options.maxEntries, 10_000, 'maxEntries');
  const now = options.now ?? Date.now;
  const logger = options.logger ?? silentLogger;
  const schema = quoteIdentifier(
    parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema'),
  );
  // CASE fixes the order: the context is set before effective_limit() reads it. Both are local
  // to the statement's implicit transaction, so nothing stays on the pooled connection.
  const limitSql = `select case when set_config('tenantry.tenant_id', $1::text, true) is not null
    then ${schema}.effective_limit($1::text::uuid, $2::text) end as limit_value`;

  const pool = new pg.Pool({ connectionString: options.connectionString, max: 2 });
  pool.on('error', (error) =>
    logger.warn({ err: summarizeError(error) }, 'plan limit cache connection failed'),
  );

  const cache = new Map<string, Entry>();
  const inFlight = new Map<string, Promise<number | null>>();
  let closed = false;
  // Bumped on every invalidation, so a lookup that started before a change never caches what
  // it read before that change.
  let generation = 0;

  const keyOf = (tenantId: string, metric: string) => `${tenantId}:${metric}`;

  const invalidate = (tenantId?: string) => {
    generation++;
    if (tenantId === undefined) {
      cache.clear();
      return;
    }
    const canonical = tenantId.toLowerCase();
    for (const metric of metrics) cache.delete(keyOf(canonical, metric));
  };

  const onNotification = (message: pg.Notification) => {
    const payload = message.payload ?? '';
    if (isUuid(payload)) invalidate(payload);
    else invalidate();
  };

  const listener = createNotificationListener({
    connectionString: options.connectionString,
    channel: planChannel,
    name: 'plan limit',
    logger,
    onNotification,
    // Changes made while no one listened are unknown: start again from the database. While
    // disconnected, entries live out their TTL.
    onConnected: () => invalidate(),
    maxReconnectDelayMs,
  });

  const remember = (key: string, value: number | null) => {
    if (ttlMs === 0 || maxEntries === 0) return;
    cache.delete(key);
    cache.set(key, { value, expiresAt: now() + ttlMs });
    while (cache.size > maxEntries) {
      const oldest = cache.keys().next().value;
      if (oldest === undefined) break;
      cache.delete(oldest);
    }
  };

  const read = (key: string, tenantId: string, metric: string): Promise<number | null> => {
    const pending = inFlight.get(key);
    if (pending !== undefined) return pending;
    const started = generation;
    const query = (async () => {
      try {
        const result = await pool.query<{ limit_value: string | null }>(limitSql, [
          tenantId,
          metric,
        ]);
        const raw = result.rows[0]?.limit_value ?? null;
        const value = raw === null ? null : Number(raw);
        if (generation === started) remember(key, value);
        return value;
      } catch (error) {
        const stale = cache.get(key);
        logger.warn(
          { err: summarizeError(error), tenantId, metric, servingStale: stale !== undefined },
          'plan limit lookup failed',
        );
        if (stale !== undefined) {
          stale.expiresAt = now() + Math.min(staleRetryMs, ttlMs);
          return stale.value;
        }
        throw new TenantryError(
          'TENANTRY_ERR_DB_UNAVAILABLE',
          'The plan limits cannot be read right now; retry shortly.',
          { cause: toTenantryError(error) },
        );
      } finally {
        inFlight.delete(key);
      }
    })();
    inFlight.set(key, query);
    return query;
  };

  if (options.listen !== false) {
    try {
      await listener.start();
    } catch (error) {
      await pool.end().catch(() => undefined);
      throw toTenantryError(error);
    }
  }

  return Object.freeze({
    get(tenantId: string, metric: string = metrics[0] as string): Promise<number | null> {
      if (closed) return Promise.reject(configError('the cache is closed.'));
      if (!isUuid(tenantId)) {
        return Promise.reject(
          new TenantryError('TENANTRY_ERR_TENANT_ID_INVALID', 'The tenant id is not a UUID.'),
        );
      }
      if (!metrics.includes(metric)) {
        return Promise.reject(configError(`metric ${metric} is not one of its metrics.`));
      }
      const canonical = tenantId.toLowerCase();
      const key = keyOf(canonical, metric);
      const entry = cache.get(key);
      if (entry !== undefined && entry.expiresAt > now()) {
        cache.delete(key);
        cache.set(key, entry);
        return Promise.resolve(entry.value);
      }
      return read(key, canonical, metric);
    },
    invalidate,
    get isListening() {
      return listener.isListening;
    },
    async close() {
      if (closed) return;
      closed = true;
      await listener.close();
      invalidate();
      if (!pool.ended) await pool.end();
    },
  });
}
