import { fileURLToPath } from 'node:url';
import type { MigrationSource } from '../migrations/migrate.ts';

/** The folder of Tenantry's platform migrations (applied under the source name `tenantry_platform`). */
export const platformMigrationsDirectory = fileURLToPath(
  new URL('../../sql/platform/', import.meta.url),
);

/**
 * The migration source of platform operations: tenant lifecycle events, the lifecycle journal
 * and the analytics views. List it after the jobs source (its job view reads the queue) and the
 * billing source (it writes to the outbox), and before the application's sources.
 *
 * @example
 * ```ts
 * import { migrate } from 'tenantry';
 * import { billingMigrationSource } from 'tenantry/billing';
 * import { platformMigrationSource } from 'tenantry/platform';
 * await migrate({ connectionString: adminUrl, sources: [billingMigrationSource(), platformMigrationSource(), { name: 'app', directory: 'migrations' }] });
 * ```
 */
export function platformMigrationSource(): MigrationSource {
  return Object.freeze({ name: 'tenantry_platform', directory: platformMigrationsDirectory });
}
