import type pg from 'pg';
import { type RoleNames, resolveRoleNames } from '../config.ts';
import { toTenantryError } from '../database-errors.ts';
import { TenantryError } from '../errors.ts';
import { createRunnerPool } from '../jobs/runner-support.ts';
import { parseTenantId } from '../tenant-id.ts';

/** A plan and its limits (`null`: unlimited; a metric left out is unlimited too). */
export interface PlanDefinition {
  readonly id: string;
  readonly name: string;
  readonly limits: Readonly<Record<string, number | null>>;
}

/** One row of {@link BillingAdmin.usageReport}: a tenant's standing on one metric. */
export interface TenantUsageRow {
  readonly tenantId: string;
  readonly slug: string;
  readonly plan: string;
  readonly metric: string;
  readonly kind: 'count' | 'period';
  readonly limit: number | null;
  readonly used: number;
  readonly periodStart: Date;
}

/** Filters of {@link BillingAdmin.usageReport}. */
export interface UsageReportOptions {
  readonly tenantId?: string;
  readonly metric?: string;
  /** @defaultValue 1000 (at most 10,000) */
  readonly limit?: number;
}

/**
 * Operator access to plans and usage (owner role): the catalog, tenants' plans and overrides, and
 * everyone's usage. Every change takes effect at the next consumption (limits are read in the
 * consuming transaction) and notifies `tenantry_plans` for caches of limits.
 */
export interface BillingAdmin {
  /** Creates or replaces a plan and its limits. */
  definePlan(plan: PlanDefinition): Promise<void>;
  listPlans(): Promise<PlanDefinition[]>;
  /** Moves a tenant to a plan (emits `tenant.plan_changed`); optionally sets its billing anchor day. */
  setTenantPlan(tenantId: string, planId: string, options?: { anchorDay?: number }): Promise<void>;
  /** Sets a per-tenant limit that wins over the plan's (`null`: unlimited). */
  setLimitOverride(tenantId: string, metric: string, limit: number | null): Promise<void>;
  /** Removes a per-tenant override; the plan's limit applies again. */
  clearLimitOverride(tenantId: string, metric: string): Promise<boolean>;
  /** Every tenant's usage of count metrics and of its current period, with limits. */
  usageReport(options?: UsageReportOptions): Promise<TenantUsageRow[]>;
  close(): Promise<void>;
}

/** Options of {@link createBillingAdmin}. */
export interface BillingAdminOptions {
  /** Owner role URL (or a superuser's: the pool switches to the owner role). */
  readonly connectionString: string;
  readonly roles?: Partial<RoleNames>;
}

const planPattern = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const metricPattern = /^[a-z][a-z0-9_]{0,62}$/;

/**
 * Opens operator access to plans and usage.
 *
 * @example
 * ```ts
 * import { createBillingAdmin } from 'tenantry/billing';
 * const admin = createBillingAdmin({ connectionString: process.env.DATABASE_URL! });
 * await admin.definePlan({ id: 'pro', name: 'Pro', limits: { seats: 50, contacts: 100_000 } });
 * await admin.setTenantPlan(tenantId, 'pro');
 * await admin.close();
 * ```
 */
export function createBillingAdmin(options: BillingAdminOptions): BillingAdmin {
  const roles = resolveRoleNames(options.roles);
  const pool = createRunnerPool(options.connectionString, roles.owner, 2);

  async function query<R extends pg.QueryResultRow>(text: string, values: unknown[] = []) {
    try {
      return await pool.query<R>(text, values);
    } catch (error) {
      throw toTenantryError(error);
    }
  }

  async function inTransaction<T>(fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await pool.connect().catch((error: unknown) => {
      throw toTenantryError(error);
    });
    try {
      await client.query('begin');
      const result = await fn(client);
      await client.query('commit');
      return result;
    } catch (error) {
      await client.query('rollback').catch(() => undefined);
      throw toTenantryError(error);
    } finally {
      client.release();
    }
  }

  async function requireMetrics(names: readonly string[]): Promise<void> {
    if (names.length === 0) return;
    const known = await query<{ name: string }>(
      'select name from tenantry.metrics where name = any($1::text[])',
      [names],
    );
    const missing = names.filter((name) => !known.rows.some((row) => row.name === name));
    if (missing.length > 0) {
      throw new TenantryError(
        'TENANTRY_ERR_PLAN_INVALID',
        `Unknown metric ${missing.map((name) => JSON.stringify(name)).join(', ')}.`,
        { details: { metrics: missing } },
      );
    }
  }

  async function requireTenant(client: pg.PoolClient | pg.Pool, tenantId: string) {
    const found = await client.query('select 1 from tenantry.tenants where id = $1', [tenantId]);
    if (found.rowCount === 0) {
      throw new TenantryError('TENANTRY_ERR_TENANT_NOT_FOUND', `No tenant ${tenantId}.`);
    }
  }

  return Object.freeze({
    async definePlan(plan: PlanDefinition) {
      const id = parsePlanId(plan?.id);
      const name = plan.name;
      if (typeof name !== 'string' || name.length === 0 || name.length > 200) {
        throw new TenantryError(
          'TENANTRY_ERR_PLAN_INVALID',
          'A plan name has 1 to 200 characters.',
        );
      }
      const limits = Object.entries(plan.limits ?? {});
      for (const [metric, limit] of limits) {
        parseMetric(metric);
        parseLimit(limit);
      }
      await requireMetrics(limits.map(([metric]) => metric));
      await inTransaction(async (client) => {
        await client.query(
          `insert into tenantry.plans (id, name) values ($1, $2)
           on conflict (id) do update set name = excluded.name`,
          [id, name],
        );
        await client.query(
          'delete from tenantry.plan_limits where plan_id = $1 and not (metric = any($2::text[]))',
          [id, limits.map(([metric]) => metric)],
        );
        for (const [metric, limit] of limits) {
          await client.query(
            `insert into tenantry.plan_limits (plan_id, metric, limit_value) values ($1, $2, $3)
             on conflict (plan_id, metric) do update set limit_value = excluded.limit_value
             where plan_limits.limit_value is distinct from excluded.limit_value`,
            [id, metric, limit],
          );
        }
      });
    },

    async listPlans() {
      const result = await query<{
        id: string;
        name: string;
        limits: Record<string, string | null>;
      }>(
        `select p.id, p.name,
                coalesce(jsonb_object_agg(l.metric, l.limit_value::text)
                         filter (where l.metric is not null), '{}') as limits
           from tenantry.plans p left join tenantry.plan_limits l on l.plan_id = p.id
          group by p.id, p.name order by p.id`,
      );
      return result.rows.map((row) => ({
        id: row.id,
        name: row.name,
        limits: Object.fromEntries(
          Object.entries(row.limits).map(([metric, limit]) => [
            metric,
            limit === null ? null : Number(limit),
          ]),
        ),
      }));
    },

    async setTenantPlan(
      tenantId: string,
      planId: string,
      planOptions: { anchorDay?: number } = {},
    ) {
      const tenant = parseTenantId(tenantId);
      const plan = parsePlanId(planId);
      const anchorDay = planOptions.anchorDay;
      if (
        anchorDay !== undefined &&
        (!Number.isInteger(anchorDay) || anchorDay < 1 || anchorDay > 31)
      ) {
        throw new TenantryError('TENANTRY_ERR_PLAN_INVALID', 'anchorDay must be from 1 to 31.');
      }
      await inTransaction(async (client) => {
        await requireTenant(client, tenant);
        const found = await client.query('select 1 from tenantry.plans where id = $1', [plan]);
        if (found.rowCount === 0) {
          throw new TenantryError('TENANTRY_ERR_PLAN_NOT_FOUND', `No plan "${plan}".`);
        }
        await client.query(
          `update tenantry.tenants
              set plan = $2, billing_anchor_day = coalesce($3, billing_anchor_day), updated_at = now()
            where id = $1`,
          [tenant, plan, anchorDay ?? null],
        );
      });
    },

    async setLimitOverride(tenantId: string, metric: string, limit: number | null) {
      const tenant = parseTenantId(tenantId);
      parseMetric(metric);
      parseLimit(limit);
      await requireMetrics([metric]);
      await inTransaction(async (client) => {
        await requireTenant(client, tenant);
        await client.query(
          `insert into tenantry.tenant_limit_overrides (tenant_id, metric, limit_value)
           values ($1, $2, $3)
           on conflict (tenant_id, metric) do update set limit_value = excluded.limit_value`,
          [tenant, metric, limit],
        );
      });
    },

    async clearLimitOverride(tenantId: string, metric: string) {
      const tenant = parseTenantId(tenantId);
      parseMetric(metric);
      const result = await query(
        'delete from tenantry.tenant_limit_overrides where tenant_id = $1 and metric = $2',
        [tenant, metric],
      );
      return (result.rowCount ?? 0) > 0;
    },

    async usageReport(reportOptions: UsageReportOptions = {}) {
      const tenant =
        reportOptions.tenantId === undefined ? null : parseTenantId(reportOptions.tenantId);
      const metric = reportOptions.metric === undefined ? null : parseMetric(reportOptions.metric);
      const limit = reportOptions.limit ?? 1000;
      if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) {
        throw new TenantryError('TENANTRY_ERR_USAGE_INVALID', 'limit must be from 1 to 10000.');
      }
      const result = await query<{
        tenant_id: string;
        slug: string;
        plan: string;
        metric: string;
        kind: 'count' | 'period';
        limit_value: string | null;
        used: string;
        period_start: Date;
      }>(
        `select t.id as tenant_id, t.slug, t.plan, m.name as metric, m.kind,
                tenantry.effective_limit(t.id, m.name)::text as limit_value,
                coalesce(c.used, 0)::text as used,
                tenantry.billing_period_start(now(), t.billing_anchor_day) as period_start
           from tenantry.tenants t
           cross join tenantry.metrics m
           left join tenantry.usage_counters c
             on c.tenant_id = t.id and c.metric = m.name
            and c.period_start = case when m.kind = 'count' then '-infinity'::timestamptz
                                      else tenantry.billing_period_start(now(), t.billing_anchor_day) end
          where m.kind <> 'rate' and t.status <> 'deleted'
            and ($1::uuid is null or t.id = $1) and ($2::text is null or m.name = $2)
          order by t.slug, m.name
          limit $3`,
        [tenant, metric, limit],
      );
      return result.rows.map((row) => ({
        tenantId: row.tenant_id,
        slug: row.slug,
        plan: row.plan,
        metric: row.metric,
        kind: row.kind,
        limit: row.limit_value === null ? null : Number(row.limit_value),
        used: Number(row.used),
        periodStart: row.period_start,
      }));
    },

    async close() {
      await pool.end();
    },
  });
}

function parsePlanId(value: unknown): string {
  if (typeof value !== 'string' || !planPattern.test(value)) {
    throw new TenantryError(
      'TENANTRY_ERR_PLAN_INVALID',
      'A plan id is lowercase letters, digits, - and _ (up to 63), starting with a letter or digit.',
    );
  }
  return value;
}

function parseMetric(value: unknown): string {
  if (typeof value !== 'string' || !metricPattern.test(value)) {
    throw new TenantryError(
      'TENANTRY_ERR_PLAN_INVALID',
      `Invalid metric name ${JSON.stringify(String(value)).slice(0, 80)}.`,
    );
  }
  return value;
}

function parseLimit(value: unknown): void {
  if (value !== null && (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0)) {
    throw new TenantryError(
      'TENANTRY_ERR_PLAN_INVALID',
      'A limit is a non-negative integer, or null for unlimited.',
    );
  }
}
