import { createPlanLimitCache, type PlanLimitCache, planJobLimits } from 'tenantry/billing';
import type { JobsModuleContext, JobsModuleSetup } from 'tenantry/jobs';
import { developmentSecret, loadAppConfig } from './config.ts';
import { createAppStorage } from './files/app-storage.ts';
import { setupJobs as setupAppJobs } from './jobs.ts';

/**
 * The reference app's jobs module for a separate worker process:
 * `tenantry worker --jobs app/worker.ts`. It reads the app's configuration from the same
 * environment as `npm start` (storage driver and secret, channel failure rate) and opens the app's
 * storage, so the worker runs every job the in-process one does, `contacts.export` and
 * `storage.cleanup-pending` included, each workspace limited to its plan's `concurrent_jobs`.
 * Start the app with `TENANTRY_WORKER=off` next to it.
 *
 * @example
 * ```sh
 * TENANTRY_WORKER=off npm start &
 * npm run tenantry -- worker --jobs app/worker.ts --concurrency 8
 * ```
 */
export async function setupJobs(context: JobsModuleContext): Promise<JobsModuleSetup> {
  const config = loadAppConfig(process.env, developmentSecret(process.env));
  const files = createAppStorage(config.storage);
  let limits: PlanLimitCache | undefined;
  try {
    limits = await createPlanLimitCache({
      connectionString: context.appConnectionString,
      metrics: ['concurrent_jobs'],
      logger: context.logger,
    });
    const planLimits = limits;
    const jobs = await setupAppJobs({
      tenantry: context.tenantry,
      appConnectionString: context.appConnectionString,
      logger: context.logger,
      ...(context.tenantSchema === undefined ? {} : { tenantSchema: context.tenantSchema }),
      config: { channelFailureRate: config.channelFailureRate },
      files,
    });
    return {
      jobs: jobs.jobs,
      schedules: jobs.schedules,
      // Each workspace's concurrent jobs come from its plan (`--tenant-concurrency` overrides).
      tenantConcurrency: planJobLimits(planLimits),
      async close() {
        await jobs.close();
        await files.close();
        await planLimits.close();
      },
    };
  } catch (error) {
    await files.close();
    await limits?.close();
    throw error;
  }
}
