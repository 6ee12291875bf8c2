export {
  defineJob,
  type JobContext,
  type JobDefinition,
  type JobDefinitionOptions,
} from './define-job.ts';
export { type EnqueueOptions, enqueueJob, enqueueJobs } from './enqueue.ts';
export {
  createJobAdmin,
  type JobAdmin,
  type JobInfo,
  type JobState,
  type ListJobsOptions,
} from './job-admin.ts';
export type { JobsModuleContext, JobsModuleSetup } from './jobs-module.ts';
export { jobsMigrationSource, jobsMigrationsDirectory } from './migration-source.ts';
export { retryDelayMs } from './retry-delay.ts';
export {
  createJobWorker,
  type FanOutResult,
  type JobSchedule,
  type JobWorker,
  type JobWorkerHealth,
  type JobWorkerOptions,
  type TenantJobLimits,
} from './worker.ts';
