import { createTenantry, type Logger, type Tenantry, type TenantryOptions } from 'tenantry';
import type { JobDefinition, JobSchedule, JobsModuleContext, JobsModuleSetup } from 'tenantry/jobs';
import { closeBillingPeriodJob, closeBillingPeriodSchedule } from './billing/billing.jobs.ts';
import { type BroadcastJobs, createBroadcastJobs } from './broadcasts/broadcast.jobs.ts';
import {
  type ChannelProvider,
  createDatabaseChannelProvider,
} from './channels/channel-provider.ts';
import type { AppDatabase } from './database.ts';
import { conversationDigestJob, conversationDigestSchedule } from './digests/digest.jobs.ts';
import { createStorageJobs, type StorageJobs } from './exports/export.jobs.ts';
import type { AppStorage } from './files/app-storage.ts';
import { expireIdempotencyKeysJob, idempotencyExpirySchedule } from './http/idempotency.jobs.ts';

/** Settings of the app's jobs. */
export interface AppJobsConfig {
  /**
   * Share of new deliveries the default channel provider fails, from 0 to 1
   * (`TENANTRY_CHANNEL_FAILURE_RATE`). Ignored with `channelProvider`. @defaultValue 0
   */
  readonly channelFailureRate?: number;
  /** Sends through this provider instead of the default database one. */
  readonly channelProvider?: ChannelProvider;
  /** Recipients per `broadcast.send-batch` job. @defaultValue 100 */
  readonly broadcastBatchSize?: number;
  /** Attempts of each `broadcast.send-batch` job. @defaultValue 10 */
  readonly broadcastSendAttempts?: number;
}

/** What {@link setupJobs} needs: the same shape `tenantry worker --jobs app/jobs.ts` passes. */
export interface AppJobsContext {
  /** The app-role Tenantry instance the worker runs the jobs on. */
  readonly tenantry: Tenantry<AppDatabase>;
  /** The app role's connection string; the default channel provider opens its own pool on it. */
  readonly appConnectionString: string;
  /**
   * Where each tenant's tables live (the `tenantSchema` the app's Tenantry was built with, e.g. a
   * placement router's `schemaFor`): the default channel provider's own Tenantry routes with it,
   * so a placed tenant's deliveries land in its schema. @defaultValue every tenant pooled
   */
  readonly tenantSchema?: TenantryOptions['tenantSchema'];
  readonly logger: Logger;
  readonly config?: AppJobsConfig;
  /**
   * The app's storage (`createAppStorage()`): adds `contacts.export` and the hourly
   * `storage.cleanup-pending`. `tenantry worker --jobs app/jobs.ts` passes none, so a worker
   * started that way does not run them.
   */
  readonly files?: AppStorage;
}

/** The app's job definitions and schedules, and what they opened. */
export interface AppJobs {
  /** Every job a worker of this app runs. */
  // biome-ignore lint/suspicious/noExplicitAny: definitions of different payload types in one list
  readonly jobs: readonly JobDefinition<any, AppDatabase>[];
  /** `conversation-digest`: `digest.daily` for every active workspace at 03:00 UTC. */
  readonly schedules: readonly JobSchedule[];
  /** The broadcast jobs; `buildApp({ jobs })` enqueues `broadcasts.dispatch`. */
  readonly broadcasts: BroadcastJobs;
  /** The export and upload-cleanup jobs, when `files` was given. */
  readonly storage: StorageJobs | undefined;
  /** Closes the default channel provider's pool. Call it after the worker stopped. */
  close(): Promise<void>;
}

/**
 * Builds the reference app's jobs: the broadcast jobs on a channel provider (by default one that
 * records deliveries in `channel_deliveries` through a small Tenantry instance of its own, so each
 * delivery commits independently of the job, like a call to an external system), the nightly
 * conversation digest with its schedule, the hourly idempotency-key expiry and, given the app's
 * storage, the contacts export and the hourly cleanup of unconfirmed uploads. `tenantry worker --jobs app/jobs.ts` calls it.
 *
 * @example
 * ```ts
 * const jobs = await setupJobs({ tenantry, appConnectionString: appUrl, logger });
 * const worker = await createJobWorker({ tenantry, connectionString: adminUrl, jobs: jobs.jobs, schedules: jobs.schedules });
 * // on shutdown:
 * await worker.stop();
 * await jobs.close();
 * ```
 */
export async function setupJobs(context: AppJobsContext): Promise<AppJobs> {
  const config = context.config ?? {};
  let deliveries: Tenantry<Pick<AppDatabase, 'channel_deliveries'>> | undefined;
  let broadcasts: BroadcastJobs;
  try {
    let provider = config.channelProvider;
    if (provider === undefined) {
      deliveries = await createTenantry<Pick<AppDatabase, 'channel_deliveries'>>({
        connectionString: context.appConnectionString,
        maxConnections: 4,
        tenantTables: ['channel_deliveries'],
        logger: context.logger,
        ...(context.tenantSchema === undefined ? {} : { tenantSchema: context.tenantSchema }),
      });
      provider = createDatabaseChannelProvider({
        tenantry: deliveries,
        ...(config.channelFailureRate === undefined
          ? {}
          : { failureRate: config.channelFailureRate }),
      });
    }
    broadcasts = createBroadcastJobs({
      provider,
      ...(config.broadcastBatchSize === undefined ? {} : { batchSize: config.broadcastBatchSize }),
      ...(config.broadcastSendAttempts === undefined
        ? {}
        : { sendAttempts: config.broadcastSendAttempts }),
    });
  } catch (error) {
    await deliveries?.close();
    throw error;
  }
  const opened = deliveries;
  const storage = context.files === undefined ? undefined : createStorageJobs(context.files);
  return Object.freeze({
    jobs: Object.freeze([
      broadcasts.dispatch,
      broadcasts.sendBatch,
      conversationDigestJob,
      expireIdempotencyKeysJob,
      closeBillingPeriodJob,
      ...(storage === undefined ? [] : [storage.contactsExport, storage.cleanupPending]),
    ]),
    schedules: Object.freeze([
      conversationDigestSchedule,
      idempotencyExpirySchedule,
      closeBillingPeriodSchedule,
      ...(storage === undefined ? [] : [storage.cleanupSchedule]),
    ]),
    broadcasts,
    storage,
    close: async () => {
      await opened?.close();
    },
  });
}

// The contract `tenantry worker --jobs app/jobs.ts` loads this module by.
setupJobs satisfies (context: JobsModuleContext) => Promise<JobsModuleSetup>;
