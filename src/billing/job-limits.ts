import type { TenantJobLimits } from '../jobs/worker.ts';
import type { PlanLimitCache } from './plan-limit-cache.ts';

/** Options of {@link planJobLimits}. */
export interface PlanJobLimitsOptions {
  /** The metric holding the limit. @defaultValue 'concurrent_jobs' */
  readonly metric?: string;
  /** Concurrent jobs of a tenant whose plan sets no limit. @defaultValue 1000 */
  readonly unlimited?: number;
}

/**
 * Per-tenant concurrent-job limits from the tenant's plan (`concurrent_jobs`), for
 * `createJobWorker({ tenantConcurrency })` and `setupJobs()` modules: a plan change reaches the
 * worker through the cache's `tenantry_plans` notification (and the worker's own short cache).
 * The worker runs at least one job per tenant, so a limit of 0 still lets one job run at a time;
 * suspend a tenant to stop its jobs.
 *
 * @example
 * ```ts
 * import { createPlanLimitCache, planJobLimits } from 'tenantry/billing';
 * const limits = await createPlanLimitCache({ connectionString: appUrl, metrics: ['concurrent_jobs'] });
 * const worker = await createJobWorker({ tenantry, connectionString: adminUrl, jobs, tenantConcurrency: planJobLimits(limits) });
 * ```
 */
export function planJobLimits(
  cache: PlanLimitCache,
  options: PlanJobLimitsOptions = {},
): TenantJobLimits {
  const metric = options.metric ?? 'concurrent_jobs';
  const unlimited = options.unlimited ?? 1000;
  return Object.freeze({
    async concurrentJobs(tenantId: string): Promise<number> {
      const limit = await cache.get(tenantId, metric);
      return limit ?? unlimited;
    },
  });
}
