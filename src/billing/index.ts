/**
 * `tenantry/billing`: plans and limits, atomic quotas, usage metering and billing events.
 *
 * @example
 * ```ts
 * import { billingMigrationSource, createQuotas } from 'tenantry/billing';
 * ```
 */

export {
  type BillingAdmin,
  type BillingAdminOptions,
  createBillingAdmin,
  type PlanDefinition,
  type TenantUsageRow,
  type UsageReportOptions,
} from './billing-admin.ts';
export { billingMigrationSource, billingMigrationsDirectory } from './migration-source.ts';
export {
  createQuotas,
  type Entitlement,
  type MetricKind,
  type PeriodUsage,
  type QuotaBalance,
  type QuotaCheck,
  type QuotaExecutor,
  type Quotas,
  type QuotasOptions,
  type UsageRecord,
  type UsageResult,
} from './quotas.ts';
