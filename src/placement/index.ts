/**
 * Tenant placement: tenants whose tables live in the pool, a dedicated schema of the pool
 * database or a dedicated database; the router that sends their units of work there, online
 * moves between them, migrations across every target, and Citus distribution.
 *
 * @example
 * ```ts
 * import { createSchemaPlacementRouter, migrateTargets, placeTenantInSchema } from 'tenantry/placement';
 * ```
 */

export {
  type CitusInfo,
  type DistributeProgress,
  type DistributeSummary,
  type DistributeTenantTablesOptions,
  type DistributionBlocker,
  type DistributionCatalogTable,
  type DistributionForeignKey,
  type DistributionPlan,
  type DistributionStep,
  detectCitus,
  distributeTenantTables,
  type PlanDistributionOptions,
  planDistribution,
  readDistributionCatalog,
  requireCitus,
} from './citus.ts';
export {
  createPlacementRouter,
  type DatabasePlacement,
  type PlacementRouter,
  type PlacementRouterOptions,
  type PlaceTenantInDatabaseOptions,
  placeTenantInDatabase,
  type TenantPlacement,
} from './database-targets.ts';
export {
  connectionUrlVariable,
  type MigrateTargetsOptions,
  type MigrateTargetsProgress,
  type MigrateTargetsSummary,
  migrateTargets,
  type TargetMigrationResult,
} from './migrate-targets.ts';
export {
  createSchemaPlacementRouter,
  listPlacements,
  type PlacementInfo,
  type SchemaPlacementRouter,
  type SchemaPlacementRouterOptions,
} from './placement-catalog.ts';
export {
  type ConnectionSource,
  createPoolRegistry,
  type PoolRegistry,
  type PoolRegistryOptions,
  type PoolRegistryStats,
  type PoolStats,
} from './pool-registry.ts';
export {
  compareDatabaseWithPool,
  compareWithPool,
  defaultTenantSchemaName,
  moveFenceTriggerPrefix,
  type PlaceTenantInSchemaOptions,
  placeTenantInSchema,
  provisionTenantSchema,
  type ReplayedMigration,
  type SchemaDifference,
  type SchemaPlacement,
} from './schema-targets.ts';
export {
  listTenantMoves,
  type MovablePlacement,
  type MoveTenantOptions,
  moveErrorCodes,
  moveTenant,
  resumeTenantMove,
  rollbackTenantMove,
  type TenantMoveCommonOptions,
  type TenantMoveProgress,
  type TenantMoveReport,
  type TenantMoveStep,
  type TenantMoveTable,
  tenantMovingSqlState,
} from './tenant-move.ts';
export { type MigrationStatement, splitMigrationStatements } from './tenant-statements.ts';
