import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  createMigrationCheck,
  createTenantDirectory,
  createTenantry,
  silentLogger,
  type TenantryOptions,
} from 'tenantry';
import { createPlanLimitCache } from 'tenantry/billing';
import type { TestDatabase } from 'tenantry/testing';
import { buildApp } from '../../app/app.ts';
import type { StorageConfig } from '../../app/config.ts';
import type { AppDatabase } from '../../app/database.ts';
import { createAppStorage } from '../../app/files/app-storage.ts';
import { type AppJobsConfig, setupJobs } from '../../app/jobs.ts';
import type { TestApp } from '../app-fixtures.ts';
import { appMigrationSources } from './private-cluster.ts';

/** Where {@link createFaultApp} keeps files: a local folder of its own, or an S3 bucket. */
export type FaultAppStorage =
  | { readonly driver: 'local' }
  | Omit<Extract<StorageConfig, { driver: 's3' }>, 'maxUploadBytes'>;

/** Options of {@link createFaultApp}. */
export interface FaultAppOptions {
  /** Any database migrated like the app's: a clone of the test template or a private cluster's. */
  readonly database: TestDatabase;
  /** @defaultValue `{ driver: 'local' }` */
  readonly storage?: FaultAppStorage;
  /** Options of the app's Tenantry instance (pool size, acquire timeout). */
  readonly tenantry?: Pick<TenantryOptions, 'maxConnections' | 'acquireTimeoutMs'>;
  readonly jobs?: AppJobsConfig;
}

/**
 * The reference app as `app/main.ts` composes it (Tenantry, tenant directory, plan-limit rate
 * limiting, jobs, storage), on a database the caller provides, shaped as the {@link TestApp} of
 * `test/app-fixtures.ts` so its `createWorkspace()` and `queryAsAdmin()` work on it. No worker
 * runs unless the test starts one. `close()` also calls `database.drop()`.
 *
 * @example
 * ```ts
 * const testApp = await createFaultApp({ database: cluster.database });
 * const workspace = await createWorkspace(testApp, 'fault-a');
 * await testApp.app.inject({ method: 'GET', url: '/v1/contacts', headers: workspace.headers });
 * ```
 */
export async function createFaultApp(options: FaultAppOptions): Promise<TestApp> {
  const { database } = options;
  const storage = options.storage ?? { driver: 'local' };
  const tenantry = await createTenantry<AppDatabase>({
    connectionString: database.appUrl,
    ...options.tenantry,
  });
  const directory = await createTenantDirectory({ connectionString: database.appUrl });
  const auth = Object.freeze({
    mode: 'local' as const,
    jwtSecret: randomBytes(32).toString('hex'),
    issuer: 'tenantry-test',
    audience: 'tenantry-test-api',
    accessTokenTtlSec: 900,
    refreshTokenTtlSec: 3600,
  });
  const maxUploadBytes = 1024 * 1024;
  const filesRoot =
    storage.driver === 'local' ? await mkdtemp(join(tmpdir(), 'tenantry-fault-files-')) : '';
  const files = createAppStorage(
    storage.driver === 'local'
      ? {
          driver: 'local',
          root: filesRoot,
          secret: randomBytes(32).toString('hex'),
          baseUrl: 'http://localhost/files',
          maxUploadBytes,
        }
      : { ...storage, maxUploadBytes },
  );
  const planLimits = await createPlanLimitCache({
    connectionString: database.appUrl,
    metrics: ['api_requests_per_minute'],
  });
  const jobs = await setupJobs({
    tenantry,
    appConnectionString: database.appUrl,
    logger: silentLogger,
    files,
    ...(options.jobs === undefined ? {} : { config: options.jobs }),
  });
  const app = await buildApp({
    tenantry,
    directory,
    auth,
    pendingMigrations: await createMigrationCheck({ sources: appMigrationSources }),
    webhookToleranceSec: 300,
    jobs,
    files,
    rateLimit: { limits: planLimits },
  });
  await app.ready();
  return {
    app,
    placement: 'pool',
    schemas: new Map(),
    tenantSchema: undefined,
    database,
    tenantry,
    directory,
    auth,
    jobs,
    files,
    filesRoot,
    async close() {
      await app.close();
      await jobs.close();
      await files.close();
      await planLimits.close();
      await database.drop();
      if (filesRoot !== '') await rm(filesRoot, { recursive: true, force: true });
    },
  };
}
