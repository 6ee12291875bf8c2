import { fileURLToPath } from 'node:url';
import type { MigrationSource } from '../migrations/migrate.ts';

/** The folder of Tenantry's billing migrations (applied under the source name `tenantry_billing`). */
export const billingMigrationsDirectory = fileURLToPath(
  new URL('../../sql/billing/', import.meta.url),
);

/**
 * The migration source that installs plans, limits, quota counters, the usage ledger and the
 * outbox. List it after the storage source and before the application's sources (the app's
 * migrations call `tenantry.attach_quota()` on their tables).
 *
 * @example
 * ```ts
 * import { migrate } from 'tenantry';
 * import { billingMigrationSource } from 'tenantry/billing';
 * await migrate({ connectionString: adminUrl, sources: [billingMigrationSource(), { name: 'app', directory: 'migrations' }] });
 * ```
 */
export function billingMigrationSource(): MigrationSource {
  return Object.freeze({ name: 'tenantry_billing', directory: billingMigrationsDirectory });
}
