import { fileURLToPath } from 'node:url';
import type { MigrationSource } from '../migrations/migrate.ts';

/** The folder of Tenantry's storage migrations (applied under the source name `tenantry_storage`). */
export const storageMigrationsDirectory = fileURLToPath(
  new URL('../../sql/storage/', import.meta.url),
);

/**
 * The migration source that installs the file registry (`tenantry.files`, a tenant table under
 * RLS). List it before the application's sources.
 *
 * @example
 * ```ts
 * import { migrate } from 'tenantry';
 * import { storageMigrationSource } from 'tenantry/storage';
 * await migrate({ connectionString: adminUrl, sources: [storageMigrationSource(), { name: 'app', directory: 'migrations' }] });
 * ```
 */
export function storageMigrationSource(): MigrationSource {
  return Object.freeze({ name: 'tenantry_storage', directory: storageMigrationsDirectory });
}
