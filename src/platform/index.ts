/**
 * `tenantry/platform`: operating a multi-tenant database — tenant lifecycle, cross-tenant
 * analytics, partitioning.
 *
 * @example
 * ```ts
 * import { platformMigrationSource } from 'tenantry/platform';
 * ```
 */
export { platformMigrationSource, platformMigrationsDirectory } from './migration-source.ts';
