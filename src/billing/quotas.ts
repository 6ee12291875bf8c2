import { type Kysely, sql } from 'kysely';
import { defaultTenantrySchema, parseIdentifier } from '../config.ts';
import { isTenantryError, TenantryError } from '../errors.ts';

/** The Kysely of an open tenant unit of work, whatever its database type. */
// biome-ignore lint/suspicious/noExplicitAny: quotas run static SQL, independent of the app's tables
export type QuotaExecutor = Kysely<any>;

/** How a metric is counted (see `tenantry.metrics`). */
export type MetricKind = 'count' | 'period' | 'rate';

/** A tenant's standing on one metric, like the entitlement APIs of SaaS billing tools. */
export interface Entitlement {
  readonly metric: string;
  readonly kind: MetricKind;
  readonly unit: string;
  /** The plan's (or the tenant's override) limit; `null` is unlimited. */
  readonly limit: number | null;
  /** Current amount (count) or this period's total (period); `null` for rate metrics. */
  readonly used: number | null;
  /** `limit - used`, never negative; `null` when unlimited or a rate. */
  readonly remaining: number | null;
  /** Start of the tenant's current billing period. */
  readonly periodStart: Date;
  /** End (exclusive) of the tenant's current billing period. */
  readonly periodEnd: Date;
}

/** The answer to "can I use `quantity` more?". */
export interface QuotaCheck extends Entitlement {
  readonly allowed: boolean;
  readonly requested: number;
}

/** What {@link Quotas.consume} and {@link Quotas.release} leave behind. */
export interface QuotaBalance {
  readonly metric: string;
  readonly limit: number | null;
  readonly used: number;
}

/** A usage event of a period metric (see {@link Quotas.recordUsage}). */
export interface UsageRecord {
  readonly metric: string;
  /** Positive integer. @defaultValue 1 */
  readonly quantity?: number;
  /**
   * Unique per tenant: a repeated key records and counts nothing. Derive it from the action
   * (`message:<id>`, `export:<id>`) so retries of the same action count once.
   */
  readonly idempotencyKey: string;
  /** When it happened; must lie in the current billing period. @defaultValue now */
  readonly occurredAt?: Date;
  /** Small JSON object kept with the event (at most 4 KiB). */
  readonly properties?: Readonly<Record<string, unknown>>;
  /**
   * Refuse (throw `TENANTRY_ERR_QUOTA_EXCEEDED`, record nothing) when the event would pass the
   * limit; `false` records and counts it anyway and reports `allowed: false` (metering without
   * enforcement). @defaultValue true
   */
  readonly enforce?: boolean;
}

/** The outcome of {@link Quotas.recordUsage}. */
export interface UsageResult {
  /** `false` when the idempotency key was already recorded: nothing was counted. */
  readonly recorded: boolean;
  /** Whether the period's total is within the limit after this event. */
  readonly allowed: boolean;
  readonly limit: number | null;
  /** The period's total for the metric afterwards. */
  readonly used: number;
}

/** A tenant's usage in one billing period. */
export interface PeriodUsage {
  readonly periodStart: Date;
  readonly metrics: readonly {
    readonly metric: string;
    readonly quantity: number;
    readonly events: number;
  }[];
}

/**
 * The one quota API every code path uses: HTTP handlers, inbound webhooks, jobs, the CLI and
 * admin tools pass the `db` of their open tenant unit of work, and consumption happens in that
 * transaction (a rollback releases it). Tables attached with `tenantry.attach_quota()` count
 * their rows in the database itself, so their limits hold even for code that never calls this.
 */
export interface Quotas {
  /**
   * Consumes `quantity` of a count metric (contacts, seats, storage bytes) for the current tenant,
   * or throws `TENANTRY_ERR_QUOTA_EXCEEDED` (402, details: metric, limit, used, requested) and
   * consumes nothing. Atomic under concurrency: racing consumers never pass the limit.
   */
  consume(db: QuotaExecutor, metric: string, quantity?: number): Promise<QuotaBalance>;
  /** Gives back `quantity` of a count metric (never below zero). */
  release(db: QuotaExecutor, metric: string, quantity?: number): Promise<QuotaBalance>;
  /** "Can I?": whether `quantity` more fits now, with limit, used and remaining. Changes nothing. */
  check(db: QuotaExecutor, metric: string, quantity?: number): Promise<QuotaCheck>;
  /** Every metric's entitlement for the current tenant. */
  entitlements(db: QuotaExecutor): Promise<readonly Entitlement[]>;
  /** Records a usage event of a period metric, once per idempotency key, counted in its period. */
  recordUsage(db: QuotaExecutor, record: UsageRecord): Promise<UsageResult>;
  /** The current tenant's totals per period metric for the period starting at `periodStart`. */
  periodUsage(db: QuotaExecutor, periodStart?: Date): Promise<PeriodUsage>;
  /**
   * Emits `period.closed` for the current tenant's previous billing period, once; returns the
   * event id, or `undefined` when it was already emitted. Run daily per tenant (a job).
   */
  closeBillingPeriod(db: QuotaExecutor): Promise<string | undefined>;
}

/** Options of {@link createQuotas}. */
export interface QuotasOptions {
  /** Schema of Tenantry's tables. @defaultValue `'tenantry'` */
  readonly schema?: string;
}

const metricPattern = /^[a-z][a-z0-9_]{0,62}$/;

/**
 * Creates the quota service.
 *
 * @example
 * ```ts
 * import { createQuotas } from 'tenantry/billing';
 * const quotas = createQuotas();
 * await tenantry.withTenant(tenantId, async (db) => {
 *   await quotas.consume(db, 'seats'); // 402 TENANTRY_ERR_QUOTA_EXCEEDED when the plan is full
 *   await db.insertInto('memberships').values(member).execute();
 * });
 * ```
 */
export function createQuotas(options: QuotasOptions = {}): Quotas {
  const schema = sql.id(parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema'));

  async function entitlementRows(db: QuotaExecutor) {
    const result = await run(db, sql<EntitlementRow>`select * from ${schema}.entitlements()`);
    return result.map(toEntitlement);
  }

  async function balance(
    db: QuotaExecutor,
    metric: string,
    quantity: number,
    raise: boolean,
  ): Promise<{ allowed: boolean; limit: number | null; used: number }> {
    const [row] = await run(
      db,
      sql<{ allowed: boolean; limit_value: string | null; used: string | null }>`
        select * from ${schema}.consume_quota(${metric}, ${quantity}::bigint, ${raise})`,
    );
    return {
      allowed: row?.allowed === true,
      limit: toNumber(row?.limit_value ?? null),
      used: toNumber(row?.used ?? null) ?? 0,
    };
  }

  const quotas: Quotas = {
    async consume(db, metric, quantity = 1) {
      parseMetric(metric);
      parseQuantity(quantity, false);
      const { limit, used } = await balance(db, metric, quantity, true);
      return Object.freeze({ metric, limit, used });
    },

    async release(db, metric, quantity = 1) {
      parseMetric(metric);
      parseQuantity(quantity, false);
      const { limit, used } = await balance(db, metric, -quantity, true);
      return Object.freeze({ metric, limit, used });
    },

    async check(db, metric, quantity = 1) {
      parseMetric(metric);
      parseQuantity(quantity, true);
      const entitlement = (await entitlementRows(db)).find((row) => row.metric === metric);
      if (entitlement === undefined) throw unknownMetric(metric);
      const allowed =
        entitlement.limit === null ||
        entitlement.used === null ||
        entitlement.used + quantity <= entitlement.limit;
      return Object.freeze({ ...entitlement, allowed, requested: quantity });
    },

    async entitlements(db) {
      return Object.freeze(await entitlementRows(db));
    },

    async recordUsage(db, record) {
      const metric = parseMetric(record?.metric);
      const quantity = record.quantity ?? 1;
      parseQuantity(quantity, false);
      const key = record.idempotencyKey;
      if (typeof key !== 'string' || key.length === 0 || key.length > 200) {
        throw new TenantryError(
          'TENANTRY_ERR_USAGE_INVALID',
          'idempotencyKey must be a string of 1 to 200 characters.',
        );
      }
      const occurredAt = record.occurredAt;
      if (
        occurredAt !== undefined &&
        (!(occurredAt instanceof Date) || !Number.isFinite(occurredAt.getTime()))
      ) {
        throw new TenantryError('TENANTRY_ERR_USAGE_INVALID', 'occurredAt must be a valid Date.');
      }
      const properties = record.properties ?? {};
      if (typeof properties !== 'object' || properties === null || Array.isArray(properties)) {
        throw new TenantryError('TENANTRY_ERR_USAGE_INVALID', 'properties must be a JSON object.');
      }
      const json = JSON.stringify(properties);
      if (Buffer.byteLength(json) > 4000) {
        throw new TenantryError('TENANTRY_ERR_USAGE_INVALID', 'properties must stay under 4 KB.');
      }
      const [row] = await run(
        db,
        sql<{ recorded: boolean; allowed: boolean; limit_value: string | null; used: string }>`
          select * from ${schema}.record_usage(${metric}, ${quantity}::bigint, ${key},
            ${occurredAt ?? null}::timestamptz, ${json}::jsonb, ${record.enforce ?? true})`,
      );
      return Object.freeze({
        recorded: row?.recorded === true,
        allowed: row?.allowed === true,
        limit: toNumber(row?.limit_value ?? null),
        used: toNumber(row?.used ?? null) ?? 0,
      });
    },

    async periodUsage(db, periodStart) {
      if (
        periodStart !== undefined &&
        (!(periodStart instanceof Date) || !Number.isFinite(periodStart.getTime()))
      ) {
        throw new TenantryError('TENANTRY_ERR_USAGE_INVALID', 'periodStart must be a valid Date.');
      }
      const rows = await run(
        db,
        sql<{ period_start: Date; metric: string | null; quantity: string; events: string }>`
          with period as (
            select coalesce(${periodStart ?? null}::timestamptz,
                            ${schema}.billing_period_start(now(), t.billing_anchor_day)) as start
              from ${schema}.tenants t where t.id = ${schema}.current_tenant_id())
          select period.start as period_start, m.name as metric,
                 coalesce(sum(e.quantity), 0)::text as quantity, count(e.id)::text as events
            from period
            cross join ${schema}.metrics m
            left join ${schema}.usage_events e
              on e.tenant_id = ${schema}.current_tenant_id() and e.metric = m.name
             and e.period_start = period.start
           where m.kind = 'period'
           group by period.start, m.name
           order by m.name`,
      );
      const first = rows[0];
      if (first === undefined) {
        throw new TenantryError(
          'TENANTRY_ERR_CONTEXT_MISSING',
          'periodUsage() needs the db of an open tenant unit of work.',
        );
      }
      return Object.freeze({
        periodStart: first.period_start,
        metrics: Object.freeze(
          rows.map((row) =>
            Object.freeze({
              metric: row.metric ?? '',
              quantity: Number(row.quantity),
              events: Number(row.events),
            }),
          ),
        ),
      });
    },

    async closeBillingPeriod(db) {
      const [row] = await run(
        db,
        sql<{ id: string | null }>`select ${schema}.close_billing_period() as id`,
      );
      return row?.id ?? undefined;
    },
  };
  return Object.freeze(quotas);
}

interface EntitlementRow {
  metric: string;
  kind: MetricKind;
  unit: string;
  limit_value: string | null;
  used: string | null;
  remaining: string | null;
  period_start: Date;
  period_end: Date;
}

function toEntitlement(row: EntitlementRow): Entitlement {
  return Object.freeze({
    metric: row.metric,
    kind: row.kind,
    unit: row.unit,
    limit: toNumber(row.limit_value),
    used: toNumber(row.used),
    remaining: toNumber(row.remaining),
    periodStart: row.period_start,
    periodEnd: row.period_end,
  });
}

function toNumber(value: string | number | null): number | null {
  return value === null ? null : Number(value);
}

function parseMetric(metric: unknown): string {
  if (typeof metric !== 'string' || !metricPattern.test(metric)) throw unknownMetric(metric);
  return metric;
}

function parseQuantity(quantity: unknown, allowZero: boolean): void {
  if (
    typeof quantity !== 'number' ||
    !Number.isSafeInteger(quantity) ||
    quantity < (allowZero ? 0 : 1)
  ) {
    throw new TenantryError(
      'TENANTRY_ERR_USAGE_INVALID',
      `quantity must be a ${allowZero ? 'non-negative' : 'positive'} integer.`,
    );
  }
}

function unknownMetric(metric: unknown): TenantryError {
  return new TenantryError(
    'TENANTRY_ERR_USAGE_INVALID',
    `Unknown metric ${JSON.stringify(String(metric)).slice(0, 80)}.`,
  );
}

/** Runs a statement, turning Tenantry's SQL refusals into their error codes. */
async function run<T>(
  db: QuotaExecutor,
  query: { execute(db: QuotaExecutor): Promise<{ rows: T[] }> },
): Promise<T[]> {
  try {
    return (await query.execute(db)).rows;
  } catch (error) {
    throw translate(error);
  }
}

function translate(error: unknown): unknown {
  let current: unknown = error;
  let hint: string | undefined;
  for (let depth = 0; depth < 5 && current !== undefined && current !== null; depth++) {
    const value = (current as { hint?: unknown }).hint;
    if (typeof value === 'string') {
      hint = value;
      break;
    }
    current = (current as { cause?: unknown }).cause;
  }
  if (hint === 'tenantry:context_missing') {
    return new TenantryError(
      'TENANTRY_ERR_CONTEXT_MISSING',
      'Quotas and usage need the db of an open tenant unit of work.',
      { cause: error },
    );
  }
  if (hint === 'tenantry:metric_unknown') {
    return new TenantryError('TENANTRY_ERR_USAGE_INVALID', 'Unknown metric.', { cause: error });
  }
  if (hint === 'tenantry:metric_kind') {
    return new TenantryError(
      'TENANTRY_ERR_USAGE_INVALID',
      'This metric is not counted this way: consume/release count metrics, recordUsage() period metrics.',
      { cause: error },
    );
  }
  if (hint === 'tenantry:usage_period') {
    return new TenantryError(
      'TENANTRY_ERR_USAGE_INVALID',
      'occurredAt must lie in the current billing period.',
      { cause: error },
    );
  }
  if (isTenantryError(error)) return error;
  return error;
}
