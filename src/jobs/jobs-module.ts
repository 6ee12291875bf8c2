import type { Logger } from '../logger.ts';
import type { Tenantry, TenantryOptions } from '../tenantry.ts';
import type { JobDefinition } from './define-job.ts';
import type { JobSchedule, TenantJobLimits } from './worker.ts';

/**
 * What `tenantry worker --jobs <module>` hands to the module's `setupJobs()`.
 *
 * @example
 * ```ts
 * import type { JobsModuleContext, JobsModuleSetup } from 'tenantry/jobs';
 * export async function setupJobs({ tenantry, logger }: JobsModuleContext): Promise<JobsModuleSetup> {
 *   return { jobs: [welcomeEmail], schedules: [] };
 * }
 * ```
 */
export interface JobsModuleContext {
  /** The app-role Tenantry instance the worker runs every tenant job on. */
  // biome-ignore lint/suspicious/noExplicitAny: the module's database type is its own
  readonly tenantry: Tenantry<any>;
  /** The app role's connection string, for resources of the module's own (never the owner's). */
  readonly appConnectionString: string;
  readonly logger: Logger;
  /**
   * The placement routing the worker's Tenantry uses (`createTenantry({ tenantSchema })`): pass
   * it to any Tenantry the module opens, so a schema-placed tenant's rows land in its schema.
   */
  readonly tenantSchema?: TenantryOptions['tenantSchema'];
}

/** What a jobs module's `setupJobs()` resolves to. */
export interface JobsModuleSetup {
  // biome-ignore lint/suspicious/noExplicitAny: definitions of any payload and database type
  readonly jobs: readonly JobDefinition<any, any>[];
  readonly schedules?: readonly JobSchedule[];
  /** Used unless `--tenant-concurrency` is given. */
  readonly tenantConcurrency?: number | TenantJobLimits;
  /** Closes what `setupJobs()` opened; called after the worker stopped. */
  close?(): Promise<void> | void;
}
