export {
  type ApiKeyInfo,
  type AuthenticatedApiKey,
  authenticateApiKey,
  type CreateApiKeyOptions,
  type CreatedApiKey,
  createApiKey,
  listApiKeys,
  revokeApiKey,
} from './api-keys.ts';
export { type CliConfig, loadCliConfig } from './cli/config.ts';
export {
  type PrepareDatabaseOptions,
  type PreparedDatabase,
  prepareDatabase,
  requireAppUrl,
} from './cli/database.ts';
export { defaultRoleNames, defaultTenantrySchema, type RoleNames } from './config.ts';
export {
  type BootstrapOptions,
  bootstrapDatabase,
  withCredentials,
  withDatabase,
} from './database/bootstrap.ts';
export {
  type EmbeddedPostgresOptions,
  type EmbeddedPostgresSecrets,
  type EmbeddedPostgresServer,
  startEmbeddedPostgres,
} from './database/embedded-postgres.ts';
export { isRetryableError, toTenantryError } from './database-errors.ts';
export {
  type DoctorFinding,
  type DoctorFindingKind,
  type DoctorOptions,
  type DoctorReport,
  doctorFindingKinds,
  formatDoctorReport,
  runDoctor,
  trustedSecurityDefinerFunctions,
} from './doctor/doctor.ts';
export {
  errorCodes,
  isTenantryError,
  TenantryError,
  type TenantryErrorCode,
  type TenantryErrorOptions,
} from './errors.ts';
export { type Logger, silentLogger } from './logger.ts';
export {
  type AppliedMigration,
  coreMigrationsDirectory,
  createMigrationCheck,
  type MigrateOptions,
  type MigrateSummary,
  type MigrationSource,
  migrate,
  type PendingMigration,
} from './migrations/migrate.ts';
export {
  createPlatformDatabase,
  type PlatformDatabase,
  type PlatformDatabaseOptions,
} from './platform-database.ts';
export {
  createTenantDirectory,
  type TenantDirectory,
  type TenantDirectoryOptions,
  type TenantRecord,
} from './tenant-directory.ts';
export { createTenantGuardPlugin, type TenantGuardOptions } from './tenant-guard.ts';
export { isUuid, parseTenantId, parseUserId, type TenantId, type UserId } from './tenant-id.ts';
export {
  createTenantry,
  type OpenUnitOfWork,
  type TenantConnectionSource,
  type TenantContext,
  type Tenantry,
  type TenantryOptions,
  type TenantSelector,
  type UnitOfWorkOptions,
} from './tenantry.ts';
