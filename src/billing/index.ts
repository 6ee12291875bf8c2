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
export { type PlanJobLimitsOptions, planJobLimits } from './job-limits.ts';
export { billingMigrationSource, billingMigrationsDirectory } from './migration-source.ts';
export {
  createPlanLimitCache,
  type PlanLimitCache,
  type PlanLimitCacheOptions,
} from './plan-limit-cache.ts';
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
export {
  createMemoryRateLimitStore,
  createPostgresRateLimitStore,
  type MemoryRateLimitStoreOptions,
  type PostgresRateLimitStore,
  type PostgresRateLimitStoreOptions,
  type RateLimitResult,
  type RateLimitStore,
} from './rate-limit.ts';
export {
  type AddedWebhookEndpoint,
  type AddWebhookEndpointOptions,
  createWebhookAdmin,
  type ListWebhookDeliveriesOptions,
  type ReplayedWebhookDelivery,
  type ReplayWebhooksOptions,
  type WebhookAdmin,
  type WebhookAdminOptions,
  type WebhookAttempt,
  type WebhookDelivery,
  type WebhookDeliveryStatus,
  type WebhookEndpoint,
} from './webhook-admin.ts';
export {
  createWebhookDispatcher,
  type WebhookDispatcher,
  type WebhookDispatcherHealth,
  type WebhookDispatcherOptions,
  type WebhookDispatchSummary,
} from './webhook-dispatcher.ts';
export {
  generateWebhookSecret,
  parseWebhookSecret,
  type SignWebhookInput,
  signWebhook,
  type WebhookHeaders,
} from './webhook-signing.ts';
