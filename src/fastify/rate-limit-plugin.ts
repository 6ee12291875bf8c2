import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { PlanLimitCache } from '../billing/plan-limit-cache.ts';
import { createMemoryRateLimitStore, type RateLimitStore } from '../billing/rate-limit.ts';
import { isTenantryError, TenantryError } from '../errors.ts';

/** Options of {@link tenantRateLimit}. */
export interface TenantRateLimitOptions {
  /**
   * Each tenant's limit per window: a {@link PlanLimitCache} (from `createPlanLimitCache`), or a
   * function; `null` is unlimited (no counting, no headers).
   */
  readonly limits: PlanLimitCache | ((tenantId: string) => Promise<number | null>);
  /**
   * Where budgets are kept: `createMemoryRateLimitStore()` (one process) or
   * `createPostgresRateLimitStore()` (shared by instances). A store passed in is not closed by
   * the plugin. @defaultValue a memory store, closed with Fastify
   */
  readonly store?: RateLimitStore;
  /** The window the limit counts over. @defaultValue 60000 */
  readonly windowMs?: number;
  /** The metric read from a {@link PlanLimitCache}. @defaultValue 'api_requests_per_minute' */
  readonly metric?: string;
  /** Requests that are neither counted nor limited (health checks, say). */
  readonly skip?: (request: FastifyRequest) => boolean;
  /**
   * Let requests through, unlimited, when the limits or the store fail; the default refuses them
   * with 503 `TENANTRY_ERR_DB_UNAVAILABLE`. @defaultValue false
   */
  readonly failOpen?: boolean;
  /** The clock, in epoch milliseconds. @defaultValue Date.now */
  readonly now?: () => number;
}

const policyName = '"tenant"';

function configError(message: string): TenantryError {
  return new TenantryError('TENANTRY_ERR_CONFIG_INVALID', `Tenant rate limit: ${message}`);
}

function isPlanLimitCache(value: unknown): value is PlanLimitCache {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as PlanLimitCache).get === 'function' &&
    typeof (value as PlanLimitCache).invalidate === 'function'
  );
}

const seconds = (milliseconds: number) => Math.ceil(milliseconds / 1000);

const tenantRateLimitPlugin: FastifyPluginAsync<TenantRateLimitOptions> = async (
  fastify: FastifyInstance,
  options: TenantRateLimitOptions,
) => {
  const windowMs = options.windowMs ?? 60_000;
  if (!Number.isSafeInteger(windowMs) || windowMs < 1000 || windowMs % 1000 !== 0) {
    throw configError('windowMs must be a whole number of seconds, in milliseconds.');
  }
  const metric = options.metric ?? 'api_requests_per_minute';
  let readLimit: (tenantId: string) => Promise<number | null>;
  if (isPlanLimitCache(options.limits)) {
    const cache = options.limits;
    readLimit = (tenantId) => cache.get(tenantId, metric);
  } else if (typeof options.limits === 'function') {
    readLimit = options.limits;
  } else {
    throw configError('limits must be a plan limit cache or a function of the tenant id.');
  }
  if (options.skip !== undefined && typeof options.skip !== 'function') {
    throw configError('skip must be a function of the request.');
  }
  const ownStore = options.store === undefined;
  const store = options.store ?? createMemoryRateLimitStore();
  if (typeof store.hit !== 'function') throw configError('store must be a rate limit store.');
  const now = options.now ?? Date.now;
  const failOpen = options.failOpen === true;
  const windowSeconds = windowMs / 1000;

  // Registered after the Tenantry plugin (a declared dependency), so this onRequest hook runs
  // once the tenant is identified, and before the body is parsed: a refused request costs no
  // parsing, no unit of work and no handler. Requests that fail identification never get here.
  fastify.addHook('onRequest', async (request: FastifyRequest, reply: FastifyReply) => {
    const tenant = request.tenant;
    if (tenant === null || options.skip?.(request) === true) return;
    let limit: number | null;
    let result: Awaited<ReturnType<RateLimitStore['hit']>>;
    try {
      limit = await readLimit(tenant.id);
      if (limit === null) return;
      if (!Number.isSafeInteger(limit) || limit < 0) {
        throw configError(`the limit of tenant ${tenant.id} is not a non-negative integer.`);
      }
      result = await store.hit(`api:${tenant.id}`, limit, windowMs, now());
    } catch (error) {
      if (!failOpen) {
        if (isTenantryError(error, 'TENANTRY_ERR_DB_UNAVAILABLE')) throw error;
        throw new TenantryError(
          'TENANTRY_ERR_DB_UNAVAILABLE',
          'The rate limit cannot be checked right now; retry shortly.',
          { cause: error },
        );
      }
      request.log.warn({ err: error }, 'rate limit not checked; request let through');
      return;
    }
    reply.header('ratelimit-policy', `${policyName};q=${limit};w=${windowSeconds}`);
    reply.header('ratelimit', `${policyName};r=${result.remaining};t=${seconds(result.resetMs)}`);
    if (result.allowed) return;
    const retryAfterSeconds = Math.max(seconds(result.retryAfterMs), 1);
    reply.header('retry-after', String(retryAfterSeconds));
    throw new TenantryError(
      'TENANTRY_ERR_RATE_LIMITED',
      `This workspace made more than ${limit} requests in ${windowSeconds} seconds; retry in ${retryAfterSeconds} seconds.`,
      { details: { limit, windowSeconds, retryAfterSeconds } },
    );
  });

  if (ownStore) fastify.addHook('onClose', () => store.close());
};

/**
 * Per-tenant API rate limiting (noisy-neighbour protection): every request of an identified
 * tenant spends one request of its plan's `api_requests_per_minute` budget. Within it, responses
 * carry `RateLimit-Policy: "tenant";q=<limit>;w=<seconds>` and `RateLimit: "tenant";r=<remaining>;t=<seconds>`
 * (draft-ietf-httpapi-ratelimit-headers); over it, the request is answered 429 problem+json
 * `TENANTRY_ERR_RATE_LIMITED` with `Retry-After`, before its body is read or its handler runs.
 * Register it after `tenantryFastify`; routes without a tenant are not limited.
 *
 * @example
 * ```ts
 * import { createPlanLimitCache, createPostgresRateLimitStore } from 'tenantry/billing';
 * import { tenantRateLimit, tenantryFastify } from 'tenantry/fastify';
 *
 * await app.register(tenantryFastify, { tenantry, directory, strategies });
 * const limits = await createPlanLimitCache({ connectionString: appUrl });
 * const store = createPostgresRateLimitStore({ connectionString: appUrl });
 * await app.register(tenantRateLimit, { limits, store });
 * app.addHook('onClose', async () => { await limits.close(); await store.close(); });
 * ```
 */
export const tenantRateLimit = fp(tenantRateLimitPlugin, {
  fastify: '5.x',
  name: 'tenantry-rate-limit',
  dependencies: ['tenantry'],
});
