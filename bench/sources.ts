import type { MigrationSource } from 'tenantry';
import { billingMigrationSource } from 'tenantry/billing';
import { jobsMigrationSource } from 'tenantry/jobs';
import { platformMigrationSource } from 'tenantry/platform';
import { storageMigrationSource } from 'tenantry/storage';

/**
 * Every migration source the reference app needs, in `tenantry migrate`'s order: the benches
 * that load the app's schema use it, so they never fall behind a new source.
 *
 * @example
 * ```ts
 * await migrate({ connectionString: adminUrl, sources: referenceAppSources() });
 * ```
 */
export function referenceAppSources(): MigrationSource[] {
  return [
    jobsMigrationSource(),
    storageMigrationSource(),
    billingMigrationSource(),
    platformMigrationSource(),
    { name: 'app', directory: new URL('../app/migrations/', import.meta.url).pathname },
  ];
}
