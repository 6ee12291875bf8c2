/**
 * `tenantry/platform`: operating a multi-tenant database — tenant lifecycle, cross-tenant
 * analytics, partitioning.
 *
 * @example
 * ```ts
 * import { platformMigrationSource } from 'tenantry/platform';
 * ```
 */

export {
  type AdminLifecycle,
  type AdminServer,
  type AdminServerOptions,
  createAdminServer,
} from './admin-server.ts';
export {
  type Analytics,
  type AnalyticsJobState,
  type AnalyticsOptions,
  createAnalytics,
  createRequestMetrics,
  type DailySeries,
  type JobCounts,
  type ListTenantsOptions,
  type NoisyMeasure,
  type NoisyNeighbour,
  type PlatformDay,
  type PlatformMetrics,
  type RequestMetrics,
  type RequestMetricsOptions,
  type RequestMetricsSnapshot,
  type TenantPage,
  type TenantRequestStats,
  type TenantStats,
  type TenantStatus,
  type TenantSummary,
} from './analytics.ts';
export {
  createTenantLifecycle,
  type TenantLifecycle,
  type TenantLifecycleOptions,
  type TenantRecord,
  type TenantTransition,
} from './lifecycle.ts';
export { platformMigrationSource, platformMigrationsDirectory } from './migration-source.ts';
export {
  dedicatedPartitionName,
  dedicatePartition,
  type ListPartitionsOptions,
  listPartitions,
  type PartitionInfo,
  type PartitionMoveOptions,
  type PartitionMoveResult,
  type PartitionProgress,
  type PartitionRole,
  undedicatePartition,
} from './partitioning.ts';
export {
  canonicalJson,
  type EraseTenantOptions,
  type ErasureProgress,
  type ErasureReport,
  type ErasureStep,
  type SignedErasureReport,
  signErasureReport,
  verifyErasureReport,
} from './tenant-erasure.ts';
export type {
  ExportPart,
  ExportProgress,
  ExportTenantOptions,
  ExportTenantResult,
  TenantExportManifest,
} from './tenant-export.ts';
export {
  deletionOrder,
  listTenantTables,
  listTenantTablesOf,
  type Queryable,
  type TenantTable,
  type TenantTablesOfTenant,
} from './tenant-tables.ts';
