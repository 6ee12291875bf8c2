import { billingMigrationSource } from 'tenantry/billing';
import { jobsMigrationSource } from 'tenantry/jobs';
import { platformMigrationSource } from 'tenantry/platform';
import { storageMigrationSource } from 'tenantry/storage';
import { startTestCluster } from 'tenantry/testing';

let stop: (() => Promise<void>) | undefined;

export async function globalSetup(): Promise<void> {
  ({ stop } = await startTestCluster({
    databaseUrl: process.env.TENANTRY_TEST_DATABASE_URL,
    // A separate folder lets two test runs share a machine (each starts its own cluster).
    directory: process.env.TENANTRY_TEST_DIRECTORY ?? '.tenantry/test-postgres',
    sources: [
      jobsMigrationSource(),
      storageMigrationSource(),
      billingMigrationSource(),
      platformMigrationSource(),
      { name: 'app', directory: new URL('../app/migrations/', import.meta.url).pathname },
    ],
  }));
}

export async function globalTeardown(): Promise<void> {
  await stop?.();
}
