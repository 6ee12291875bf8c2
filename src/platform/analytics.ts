import { CompiledQuery, type Kysely, type RawBuilder, sql, type Transaction } from 'kysely';
import { defaultTenantrySchema, parseIdentifier } from '../config.ts';
import { toTenantryError } from '../database-errors.ts';
import { TenantryError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import { createPlatformDatabase, type PlatformDatabase } from '../platform-database.ts';
import { parseTenantId, type TenantId } from '../tenant-id.ts';
import {
  listTenantTables,
  listTenantTablesOf,
  type Queryable,
  type TenantTable,
} from './tenant-tables.ts';

// Analytics arguments a caller got wrong (a bad `days`, `limit`, `by`): 400 on the admin API.
const invalidQuery = 'TENANTRY_ERR_HTTP_VALIDATION' as const;

/** A tenant status in the catalog. */
export type TenantStatus = 'active' | 'suspended' | 'moving' | 'deleted';

const tenantStatuses: readonly TenantStatus[] = ['active', 'suspended', 'moving', 'deleted'];

/** A job's state, as `createJobAdmin()` names them. */
export type AnalyticsJobState = 'waiting' | 'running' | 'dead' | 'parked';

/** Job counts per state. */
export type JobCounts = Readonly<Record<AnalyticsJobState, number>>;

/**
 * A daily-count series of {@link PlatformMetrics}: rows of a tenant table counted per UTC day of
 * a timestamp column. A row in any series also marks its tenant active that day.
 */
export interface DailySeries {
  /** Name in the output, e.g. `messages`. Lowercase letters, digits and `_`. */
  readonly name: string;
  /** The table, `name` or `schema.name`; it must have a `tenant_id` column. */
  readonly table: string;
  /** A `timestamptz` column of the table, e.g. `created_at`. */
  readonly timestampColumn: string;
}

/** Options for {@link createAnalytics}. */
export interface AnalyticsOptions {
  /** Connection of the analytics role (BYPASSRLS, read-only by default). */
  readonly connectionString: string;
  /** The daily-count series of {@link Analytics.platformMetrics}. @defaultValue [] */
  readonly series?: readonly DailySeries[];
  /**
   * This process's request recorder (`createRequestMetrics()`): requests and latency in
   * `tenantStats()`, and `noisyNeighbours({ by: 'requests' | 'latency' })`.
   */
  readonly requestMetrics?: RequestMetrics;
  /** Tenantry's schema. @defaultValue 'tenantry' */
  readonly schema?: string;
  /** Largest number of pooled connections. @defaultValue 2 */
  readonly maxConnections?: number;
  /** Time limit of each statement; a full count of a large table may need more. @defaultValue 30000 */
  readonly statementTimeoutMs?: number;
  /**
   * Refuse a role whose transactions are not read-only by default. Every analytics transaction
   * is read-only either way; pass `false` to fall back to the owner connection (the CLI does when
   * no analytics connection is configured).
   * @defaultValue true
   */
  readonly readOnly?: boolean;
  readonly logger?: Logger;
}

/** A tenant as operators see it. */
export interface TenantSummary {
  readonly id: TenantId;
  readonly slug: string;
  readonly name: string;
  readonly plan: string;
  readonly status: TenantStatus;
  readonly placement: string;
  readonly createdAt: Date;
  readonly updatedAt: Date;
  /** Current usage per metric: count metrics, and period metrics in the current billing period. */
  readonly usage: Readonly<Record<string, number>>;
}

/** Filters and paging of {@link Analytics.listTenants}. */
export interface ListTenantsOptions {
  /** Part of the slug or name (case-insensitive), or a whole tenant id. */
  readonly search?: string;
  readonly status?: TenantStatus;
  readonly plan?: string;
  /** @defaultValue 50 (1 to 500) */
  readonly limit?: number;
  /** `nextCursor` of the previous page. */
  readonly cursor?: string;
}

/** A page of tenants, in slug order. */
export interface TenantPage {
  readonly tenants: readonly TenantSummary[];
  /** Pass as `cursor` for the next page; `null` on the last page. */
  readonly nextCursor: string | null;
}

/** One UTC day of {@link PlatformMetrics}. */
export interface PlatformDay {
  /** `YYYY-MM-DD` (UTC). */
  readonly day: string;
  /** Rows per series created that day, across tenants. */
  readonly counts: Readonly<Record<string, number>>;
  /** Tenants with a row in any series that day. */
  readonly activeTenants: number;
}

/** Figures across every tenant. */
export interface PlatformMetrics {
  /** Start of the first day in the window (UTC midnight). */
  readonly from: Date;
  readonly to: Date;
  readonly days: readonly PlatformDay[];
  /** Rows per series in the window. */
  readonly totals: Readonly<Record<string, number>>;
  /** Tenants with a row in any series in the window; `null` without series. */
  readonly activeTenants: number | null;
  /** Tenants in the catalog per status. */
  readonly tenants: Readonly<Record<TenantStatus, number>> & { readonly total: number };
  /** Uploaded files (registry `tenantry.files`). */
  readonly storage: { readonly files: number; readonly bytes: number };
  /** Jobs per state; `waiting` is the backlog. */
  readonly jobs: JobCounts;
}

/** Per-tenant statistics. */
export interface TenantStats {
  readonly tenant: TenantSummary;
  /** Exact row counts per tenant table (discovered from the catalog), largest first. */
  readonly tables: readonly { readonly table: string; readonly rows: number }[];
  readonly totalRows: number;
  /** Tenant tables the connection may not read (not counted). */
  readonly unreadableTables: readonly string[];
  readonly storage: { readonly files: number; readonly bytes: number };
  readonly jobs: JobCounts;
  /** This process's requests for the tenant; `null` without a request recorder. */
  readonly requests: TenantRequestStats | null;
}

/** What {@link Analytics.noisyNeighbours} ranks tenants by. */
export type NoisyMeasure = 'rows' | 'storage' | 'requests' | 'latency';

const noisyMeasures: readonly NoisyMeasure[] = ['rows', 'storage', 'requests', 'latency'];

/** A tenant in a noisy-neighbour ranking. */
export interface NoisyNeighbour {
  readonly tenantId: TenantId;
  readonly slug: string;
  readonly name: string;
  readonly plan: string;
  readonly status: TenantStatus;
  /** Rows, bytes, requests, or p95 milliseconds. */
  readonly value: number;
  readonly unit: 'rows' | 'bytes' | 'requests' | 'ms';
  /** Share of the total across tenants (rows, storage, requests); `null` for latency. */
  readonly share: number | null;
}

/** Cross-tenant reads for operators, on the analytics role's own pool. */
export interface Analytics {
  /** The role the pool connects as. */
  readonly role: string;
  listTenants(options?: ListTenantsOptions): Promise<TenantPage>;
  /** One tenant; `TENANTRY_ERR_TENANT_NOT_FOUND` when the id is unknown. */
  getTenant(tenantId: string): Promise<TenantSummary>;
  platformMetrics(options?: { readonly days?: number }): Promise<PlatformMetrics>;
  tenantStats(tenantId: string): Promise<TenantStats>;
  noisyNeighbours(options: {
    readonly by: NoisyMeasure;
    readonly limit?: number;
  }): Promise<NoisyNeighbour[]>;
  /**
   * The tenant tables, as `listTenantTables()` finds them: every table with a `tenant_id uuid`
   * column (partitions and platform ledgers excluded).
   */
  tenantTables(): Promise<TenantTable[]>;
  close(): Promise<void>;
}

interface ResolvedSeries {
  readonly name: string;
  readonly schema: string;
  readonly table: string;
  readonly column: string;
}

type Executor = Kysely<unknown> | Transaction<unknown>;

const looseIdentifier = /^[A-Za-z_][A-Za-z0-9_$]{0,62}$/;
const seriesName = /^[a-z][a-z0-9_]{0,62}$/;

/**
 * Opens cross-tenant analytics on the analytics role's own pool: tenants with their plan,
 * status, placement and usage; platform metrics; per-tenant statistics; noisy neighbours. Every
 * read runs in one read-only, repeatable-read transaction, so a report is one snapshot.
 *
 * @example
 * ```ts
 * import { createAnalytics, createRequestMetrics } from 'tenantry/platform';
 * const analytics = await createAnalytics({
 *   connectionString: process.env.TENANTRY_ANALYTICS_DATABASE_URL,
 *   series: [{ name: 'messages', table: 'messages', timestampColumn: 'created_at' }],
 *   requestMetrics: createRequestMetrics(),
 * });
 * const { tenants } = await analytics.listTenants({ status: 'active', limit: 20 });
 * const week = await analytics.platformMetrics({ days: 7 });
 * const heaviest = await analytics.noisyNeighbours({ by: 'rows', limit: 10 });
 * await analytics.close();
 * ```
 */
export async function createAnalytics(options: AnalyticsOptions): Promise<Analytics> {
  const schema = parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema');
  const statementTimeoutMs = options.statementTimeoutMs ?? 30_000;
  if (!Number.isInteger(statementTimeoutMs) || statementTimeoutMs < 1) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'statementTimeoutMs must be a positive integer.',
    );
  }
  const declared = options.series ?? [];
  const names = new Set<string>();
  for (const entry of declared) {
    if (!seriesName.test(entry.name) || names.has(entry.name)) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `Series names must be distinct lowercase identifiers, got ${JSON.stringify(entry.name)}.`,
      );
    }
    names.add(entry.name);
  }
  const platform: PlatformDatabase<unknown> = await createPlatformDatabase({
    connectionString: options.connectionString,
    maxConnections: options.maxConnections ?? 2,
    ...(options.readOnly === undefined ? {} : { readOnly: options.readOnly }),
    ...(options.logger === undefined ? {} : { logger: options.logger }),
  });
  const requestMetrics = options.requestMetrics;
  const t = (name: string) => sql.id(schema, name);

  const read = async <T>(fn: (trx: Transaction<unknown>) => Promise<T>): Promise<T> => {
    try {
      return await platform.db.transaction().execute(async (trx) => {
        await sql`set transaction isolation level repeatable read, read only`.execute(trx);
        await sql`select set_config('statement_timeout', ${String(statementTimeoutMs)}, true)`.execute(
          trx,
        );
        return fn(trx);
      });
    } catch (error) {
      throw toTenantryError(error);
    }
  };

  let series: readonly ResolvedSeries[];
  try {
    series = await read((trx) => resolveSeries(trx, declared));
  } catch (error) {
    await platform.close();
    throw error;
  }

  const summarySelect = sql`
    select t.id, t.slug, t.name, t.plan, t.status, t.placement, t.created_at, t.updated_at,
           coalesce((select jsonb_object_agg(c.metric, c.used)
                       from ${t('usage_counters')} c
                      where c.tenant_id = t.id
                        and (c.period_start = '-infinity'
                             or c.period_start = ${t('billing_period_start')}(now(), t.billing_anchor_day))),
                    '{}'::jsonb) as usage
      from ${t('tenants')} t`;

  // The one definition of a tenant table (tenant-tables.ts), read through this transaction.
  // With a tenant: the tables its placement can hold its rows in (not other tenants' schemas).
  const discoverTables = async (executor: Executor, tenantId?: TenantId) => {
    const queryable = {
      query: (text: string, values?: unknown[]) =>
        executor.executeQuery(CompiledQuery.raw(text, values ?? [])),
    } as unknown as Queryable;
    const tables =
      tenantId === undefined
        ? await listTenantTables(queryable, { tenantrySchema: schema })
        : (await listTenantTablesOf(queryable, tenantId, { tenantrySchema: schema })).tables;
    const unreadable = await sql<{ name: string }>`
      select name from unnest(${tables.map((table) => table.sql)}::text[]) as name
       where not has_any_column_privilege(name, 'select')`.execute(executor);
    const refused = new Set(unreadable.rows.map((row) => row.name));
    return tables.map((table) => ({ table, readable: !refused.has(table.sql) }));
  };

  const jobCounts = async (executor: Executor, tenantId: TenantId | null) => {
    const result = await sql<{ state: AnalyticsJobState; jobs: number }>`
      select state, count(*)::integer as jobs from ${t('job_states')}
       where ${tenantId}::text is null or tenant_id = ${tenantId}::text
       group by state`.execute(executor);
    const counts: Record<AnalyticsJobState, number> = {
      waiting: 0,
      running: 0,
      dead: 0,
      parked: 0,
    };
    for (const row of result.rows) counts[row.state] = row.jobs;
    return Object.freeze(counts);
  };

  const storageOf = async (executor: Executor, tenantId: TenantId | null) => {
    const result = await sql<{ files: number; bytes: string }>`
      select count(*)::integer as files, coalesce(sum(size_bytes), 0)::text as bytes
        from ${t('files')}
       where status = 'uploaded' and (${tenantId}::uuid is null or tenant_id = ${tenantId}::uuid)`.execute(
      executor,
    );
    const row = result.rows[0];
    return Object.freeze({ files: row?.files ?? 0, bytes: Number(row?.bytes ?? 0) });
  };

  const findTenant = async (executor: Executor, tenantId: TenantId) => {
    const result = await sql<SummaryRow>`${summarySelect} where t.id = ${tenantId}::uuid`.execute(
      executor,
    );
    const row = result.rows[0];
    if (row === undefined) {
      throw new TenantryError('TENANTRY_ERR_TENANT_NOT_FOUND', `No tenant with id ${tenantId}.`);
    }
    return toSummary(row);
  };

  const rank = async (
    executor: Executor,
    ranked: RawBuilder<{ tenant_id: string; value: string; total: string }>,
    limit: number,
    unit: NoisyNeighbour['unit'],
  ): Promise<NoisyNeighbour[]> => {
    const result = await sql<{
      tenant_id: TenantId;
      value: string;
      total: string;
      slug: string;
      name: string;
      plan: string;
      status: TenantStatus;
    }>`
      select r.tenant_id, r.value::text, r.total::text, t.slug, t.name, t.plan, t.status
        from (${ranked}) r
        join ${t('tenants')} t on t.id = r.tenant_id
       order by r.value desc, t.slug
       limit ${limit}`.execute(executor);
    return result.rows.map((row) =>
      Object.freeze({
        tenantId: row.tenant_id,
        slug: row.slug,
        name: row.name,
        plan: row.plan,
        status: row.status,
        value: Number(row.value),
        unit,
        share: Number(row.total) > 0 ? Number(row.value) / Number(row.total) : null,
      }),
    );
  };

  const rankFromMemory = async (by: 'requests' | 'latency', limit: number) => {
    if (requestMetrics === undefined) {
      throw new TenantryError(
        invalidQuery,
        `Ranking by ${by} needs the request recorder of the process that serves the API (createAnalytics({ requestMetrics })).`,
      );
    }
    const all = requestMetrics.snapshot().tenants;
    const total = all.reduce((sum, entry) => sum + entry.requests, 0);
    const top = [...all]
      .sort((a, b) =>
        by === 'requests'
          ? b.requests - a.requests || b.p95Ms - a.p95Ms
          : b.p95Ms - a.p95Ms || b.requests - a.requests,
      )
      .slice(0, limit);
    if (top.length === 0) return [];
    const tenants = await read(async (trx) => {
      const result =
        await sql<SummaryRow>`${summarySelect} where t.id = any(${top.map((entry) => entry.tenantId)}::uuid[])`.execute(
          trx,
        );
      return new Map<string, SummaryRow>(result.rows.map((row) => [row.id, row]));
    });
    return top.flatMap((entry) => {
      const tenant = tenants.get(entry.tenantId);
      if (tenant === undefined) return [];
      return [
        Object.freeze({
          tenantId: tenant.id,
          slug: tenant.slug,
          name: tenant.name,
          plan: tenant.plan,
          status: tenant.status,
          value: by === 'requests' ? entry.requests : entry.p95Ms,
          unit: by === 'requests' ? ('requests' as const) : ('ms' as const),
          share: by === 'requests' && total > 0 ? entry.requests / total : null,
        }),
      ];
    });
  };

  return Object.freeze({
    role: platform.role,

    async listTenants(filter: ListTenantsOptions = {}) {
      const limit = integerArgument('limit', filter.limit ?? 50, 1, 500);
      if (filter.status !== undefined && !tenantStatuses.includes(filter.status)) {
        throw new TenantryError(
          invalidQuery,
          `status must be one of ${tenantStatuses.join(', ')}, got ${JSON.stringify(filter.status)}.`,
        );
      }
      const search = filter.search?.trim() ?? '';
      if (search.length > 200) {
        throw new TenantryError(invalidQuery, 'search is at most 200 characters.');
      }
      const after = filter.cursor === undefined ? null : decodeCursor(filter.cursor);
      const pattern = search === '' ? null : `%${search.toLowerCase().replace(/[\\%_]/g, '\\$&')}%`;
      const searchId = isTenantIdLike(search) ? search.toLowerCase() : null;
      const rows = await read(async (trx) => {
        const result = await sql<SummaryRow>`${summarySelect}
          where (${pattern}::text is null
                 or lower(t.slug) like ${pattern} or lower(t.name) like ${pattern}
                 or t.id::text = ${searchId}::text)
            and (${filter.status ?? null}::text is null or t.status = ${filter.status ?? null}::text)
            and (${filter.plan ?? null}::text is null or t.plan = ${filter.plan ?? null}::text)
            and (${after}::text is null or t.slug > ${after}::text)
          order by t.slug
          limit ${limit + 1}`.execute(trx);
        return result.rows;
      });
      const page = rows.slice(0, limit).map(toSummary);
      const last = page.at(-1);
      return Object.freeze({
        tenants: Object.freeze(page),
        nextCursor: rows.length > limit && last !== undefined ? encodeCursor(last.slug) : null,
      });
    },

    async getTenant(tenantId: string) {
      const id = parseTenantId(tenantId);
      return read((trx) => findTenant(trx, id));
    },

    async platformMetrics(window: { readonly days?: number } = {}) {
      const days = integerArgument('days', window.days ?? 30, 1, 366);
      return read(async (trx) => {
        const bounds = await sql<{ from: Date; to: Date; days: string[] }>`
          select b.start as from, now() as to,
                 array(select to_char(d, 'YYYY-MM-DD')
                         from generate_series((b.start at time zone 'UTC')::date,
                                              (now() at time zone 'UTC')::date,
                                              interval '1 day') d) as days
            from (select (date_trunc('day', now() at time zone 'UTC')
                          - (${days}::integer - 1) * interval '1 day') at time zone 'UTC' as start) b`.execute(
          trx,
        );
        const window = bounds.rows[0];
        if (window === undefined) throw new Error('the window query returned no row');
        const perDay = new Map<string, Record<string, number>>(
          window.days.map((day) => [day, Object.fromEntries(series.map((s) => [s.name, 0]))]),
        );
        const totals: Record<string, number> = {};
        for (const entry of series) {
          const column = sql.id(entry.column);
          const result = await sql<{ day: string; rows: string }>`
            select to_char((${column} at time zone 'UTC')::date, 'YYYY-MM-DD') as day,
                   count(*)::text as rows
              from ${sql.id(entry.schema, entry.table)}
             where ${column} >= ${window.from}::timestamptz
             group by 1`.execute(trx);
          let total = 0;
          for (const row of result.rows) {
            const counts = perDay.get(row.day);
            if (counts !== undefined) counts[entry.name] = Number(row.rows);
            total += Number(row.rows);
          }
          totals[entry.name] = total;
        }
        const activeByDay = new Map<string, number>();
        let activeTenants: number | null = null;
        if (series.length > 0) {
          const activity = sql.join(
            series.map(
              (entry) => sql`
                select distinct (${sql.id(entry.column)} at time zone 'UTC')::date as day, tenant_id
                  from ${sql.id(entry.schema, entry.table)}
                 where ${sql.id(entry.column)} >= ${window.from}::timestamptz`,
            ),
            sql` union `,
          );
          const result = await sql<{ day: string | null; tenants: number }>`
            select to_char(day, 'YYYY-MM-DD') as day, count(distinct tenant_id)::integer as tenants
              from (${activity}) active
             group by rollup (day)`.execute(trx);
          activeTenants = 0;
          for (const row of result.rows) {
            if (row.day === null) activeTenants = row.tenants;
            else activeByDay.set(row.day, row.tenants);
          }
        }
        const statuses = await sql<{ status: TenantStatus; tenants: number }>`
          select status, count(*)::integer as tenants from ${t('tenants')} group by status`.execute(
          trx,
        );
        const tenants: Record<TenantStatus, number> = {
          active: 0,
          suspended: 0,
          moving: 0,
          deleted: 0,
        };
        for (const row of statuses.rows) tenants[row.status] = row.tenants;
        return Object.freeze({
          from: window.from,
          to: window.to,
          days: Object.freeze(
            window.days.map((day) =>
              Object.freeze({
                day,
                counts: Object.freeze(perDay.get(day) ?? {}),
                activeTenants: activeByDay.get(day) ?? 0,
              }),
            ),
          ),
          totals: Object.freeze(totals),
          activeTenants,
          tenants: Object.freeze({
            ...tenants,
            total: Object.values(tenants).reduce((sum, n) => sum + n, 0),
          }),
          storage: await storageOf(trx, null),
          jobs: await jobCounts(trx, null),
        });
      });
    },

    async tenantStats(tenantId: string) {
      const id = parseTenantId(tenantId);
      return read(async (trx) => {
        const tenant = await findTenant(trx, id);
        const discovered = await discoverTables(trx, id);
        const readable = discovered.filter((entry) => entry.readable).map((entry) => entry.table);
        let tables: { table: string; rows: number }[] = [];
        if (readable.length > 0) {
          // One exact count per table; every tenant table leads its primary key with tenant_id.
          const counts = sql.join(
            readable.map(
              (table) => sql`
                select ${table.name}::text as table_name, count(*)::text as rows
                  from ${sql.id(table.schema, table.table)} where tenant_id = ${id}::uuid`,
            ),
            sql` union all `,
          );
          const result = await sql<{ table_name: string; rows: string }>`${counts}`.execute(trx);
          tables = result.rows
            .map((row) => ({ table: row.table_name, rows: Number(row.rows) }))
            .sort((a, b) => b.rows - a.rows || a.table.localeCompare(b.table));
        }
        return Object.freeze({
          tenant,
          tables: Object.freeze(tables.map((entry) => Object.freeze(entry))),
          totalRows: tables.reduce((sum, entry) => sum + entry.rows, 0),
          unreadableTables: Object.freeze(
            discovered.filter((entry) => !entry.readable).map((entry) => entry.table.name),
          ),
          storage: await storageOf(trx, id),
          jobs: await jobCounts(trx, id),
          requests: requestMetrics === undefined ? null : requestMetrics.tenant(id),
        });
      });
    },

    async noisyNeighbours(request: { readonly by: NoisyMeasure; readonly limit?: number }) {
      if (!noisyMeasures.includes(request.by)) {
        throw new TenantryError(
          invalidQuery,
          `by must be one of ${noisyMeasures.join(', ')}, got ${JSON.stringify(request.by)}.`,
        );
      }
      const limit = integerArgument('limit', request.limit ?? 10, 1, 100);
      if (request.by === 'requests' || request.by === 'latency') {
        return rankFromMemory(request.by, limit);
      }
      if (request.by === 'storage') {
        return read((trx) =>
          rank(
            trx,
            sql`select tenant_id, sum(size_bytes) as value, sum(sum(size_bytes)) over () as total
                  from ${t('files')} where status = 'uploaded'
                 group by tenant_id having sum(size_bytes) > 0`,
            limit,
            'bytes',
          ),
        );
      }
      return read(async (trx) => {
        const readable = (await discoverTables(trx)).filter((entry) => entry.readable);
        if (readable.length === 0) return [];
        const perTable = sql.join(
          readable.map(
            ({ table }) => sql`
              select tenant_id, count(*) as rows from ${sql.id(table.schema, table.table)}
               group by tenant_id`,
          ),
          sql` union all `,
        );
        return rank(
          trx,
          sql`select tenant_id, sum(rows) as value, sum(sum(rows)) over () as total
                from (${perTable}) counted group by tenant_id`,
          limit,
          'rows',
        );
      });
    },

    async tenantTables() {
      const tables = await read((trx) => discoverTables(trx));
      return tables.map((entry) => entry.table);
    },

    close: () => platform.close(),
  });
}

interface SummaryRow {
  id: TenantId;
  slug: string;
  name: string;
  plan: string;
  status: TenantStatus;
  placement: string;
  created_at: Date;
  updated_at: Date;
  usage: Record<string, number | string>;
}

function toSummary(row: SummaryRow): TenantSummary {
  return Object.freeze({
    id: row.id,
    slug: row.slug,
    name: row.name,
    plan: row.plan,
    status: row.status,
    placement: row.placement,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    usage: Object.freeze(
      Object.fromEntries(Object.entries(row.usage).map(([metric, used]) => [metric, Number(used)])),
    ),
  });
}

async function resolveSeries(
  executor: Executor,
  declared: readonly DailySeries[],
): Promise<ResolvedSeries[]> {
  const resolved: ResolvedSeries[] = [];
  for (const entry of declared) {
    const parts = typeof entry.table === 'string' ? entry.table.split('.') : [];
    const column = entry.timestampColumn;
    if (
      parts.length < 1 ||
      parts.length > 2 ||
      !parts.every((part) => looseIdentifier.test(part)) ||
      typeof column !== 'string' ||
      !looseIdentifier.test(column)
    ) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `Series "${entry.name}": table must be "name" or "schema.name" and timestampColumn a column name, got ${JSON.stringify(entry.table)} / ${JSON.stringify(column)}.`,
      );
    }
    const relation = parts.map((part) => `"${part}"`).join('.');
    const result = await sql<{
      schema: string;
      table: string;
      has_tenant: boolean;
      column_type: string | null;
    }>`
      select n.nspname as schema, c.relname as table,
             exists (select 1 from pg_catalog.pg_attribute a
                      where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped) as has_tenant,
             (select format_type(a.atttypid, a.atttypmod) from pg_catalog.pg_attribute a
               where a.attrelid = c.oid and a.attname = ${column} and not a.attisdropped) as column_type
        from pg_catalog.pg_class c
        join pg_catalog.pg_namespace n on n.oid = c.relnamespace
       where c.oid = to_regclass(${relation})`.execute(executor);
    const row = result.rows[0];
    if (row === undefined || !row.has_tenant || row.column_type !== 'timestamp with time zone') {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `Series "${entry.name}": ${entry.table} must be a table the analytics role can see, with a tenant_id column and a timestamptz column ${column}.`,
      );
    }
    resolved.push(
      Object.freeze({ name: entry.name, schema: row.schema, table: row.table, column }),
    );
  }
  return resolved;
}

function integerArgument(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new TenantryError(
      invalidQuery,
      `${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(value)}.`,
    );
  }
  return value;
}

const tenantIdLike = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function isTenantIdLike(value: string): boolean {
  return tenantIdLike.test(value);
}

function encodeCursor(slug: string): string {
  return Buffer.from(slug, 'utf8').toString('base64url');
}

function decodeCursor(cursor: unknown): string {
  const slug =
    typeof cursor === 'string' && /^[A-Za-z0-9_-]{1,128}$/.test(cursor)
      ? Buffer.from(cursor, 'base64url').toString('utf8')
      : '';
  if (!/^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/.test(slug)) {
    throw new TenantryError(invalidQuery, 'cursor is not a nextCursor this API returned.');
  }
  return slug;
}

/** Options for {@link createRequestMetrics}. */
export interface RequestMetricsOptions {
  /**
   * Upper bounds of the latency histogram's buckets, in milliseconds, ascending; a last bucket
   * takes everything slower.
   * @defaultValue [1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]
   */
  readonly bucketBoundsMs?: readonly number[];
  /**
   * Most tenants tracked; requests of further tenants are only counted in `untrackedRequests`,
   * so memory stays bounded. @defaultValue 100000
   */
  readonly maxTenants?: number;
}

/** One tenant's requests since the recorder started (or was reset). */
export interface TenantRequestStats {
  readonly tenantId: string;
  readonly requests: number;
  /** Responses with a 5xx status. */
  readonly serverErrors: number;
  readonly meanMs: number;
  /** Percentiles estimated from the histogram (linear within a bucket, capped at the maximum). */
  readonly p50Ms: number;
  readonly p95Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
  /** Requests per bucket: `leMs` is the bucket's upper bound (`null`: slower than the last). */
  readonly histogram: readonly { readonly leMs: number | null; readonly count: number }[];
}

/** Everything a {@link RequestMetrics} holds. */
export interface RequestMetricsSnapshot {
  readonly since: Date;
  readonly tenants: readonly TenantRequestStats[];
  /** Requests of tenants past `maxTenants`. */
  readonly untrackedRequests: number;
}

/** Per-tenant request counts and latency histograms, in this process's memory. */
export interface RequestMetrics {
  /** Records one finished request of a tenant. */
  record(tenantId: string, durationMs: number, statusCode?: number): void;
  /** The tenant's figures; zeros when it made no request. */
  tenant(tenantId: string): TenantRequestStats;
  snapshot(): RequestMetricsSnapshot;
  /** Forgets everything recorded. */
  reset(): void;
}

interface TenantEntry {
  readonly buckets: number[];
  requests: number;
  serverErrors: number;
  totalMs: number;
  maxMs: number;
}

const defaultBucketBoundsMs = [1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/**
 * Creates an in-process recorder of per-tenant request counts and latency histograms. It lives
 * in one process's memory: each API instance has its own, and a restart starts from zero. Feed
 * it from the HTTP server (a Fastify `onResponse` hook reading `request.tenant` and
 * `reply.elapsedTime`) and hand it to `createAnalytics()` and `createAdminServer()`.
 *
 * @example
 * ```ts
 * import { createRequestMetrics } from 'tenantry/platform';
 * const requestMetrics = createRequestMetrics();
 * app.addHook('onResponse', async (request, reply) => {
 *   if (request.tenant) requestMetrics.record(request.tenant.id, reply.elapsedTime, reply.statusCode);
 * });
 * requestMetrics.tenant(tenantId).p95Ms;
 * ```
 */
export function createRequestMetrics(options: RequestMetricsOptions = {}): RequestMetrics {
  const bounds = [...(options.bucketBoundsMs ?? defaultBucketBoundsMs)];
  if (
    bounds.length === 0 ||
    bounds.some(
      (bound, index) =>
        !Number.isFinite(bound) || bound <= 0 || (index > 0 && bound <= (bounds[index - 1] ?? 0)),
    )
  ) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'bucketBoundsMs must be positive, finite and ascending.',
    );
  }
  const maxTenants = options.maxTenants ?? 100_000;
  if (!Number.isInteger(maxTenants) || maxTenants < 1) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'maxTenants must be a positive integer.',
    );
  }
  let entries = new Map<string, TenantEntry>();
  let untrackedRequests = 0;
  let since = new Date();

  const percentile = (entry: TenantEntry, quantile: number): number => {
    if (entry.requests === 0) return 0;
    const rank = quantile * entry.requests;
    let seen = 0;
    for (let index = 0; index < entry.buckets.length; index++) {
      const count = entry.buckets[index] ?? 0;
      if (count > 0 && seen + count >= rank) {
        const lower = index === 0 ? 0 : (bounds[index - 1] ?? 0);
        const upper = bounds[index] ?? entry.maxMs;
        const estimate = lower + ((upper - lower) * (rank - seen)) / count;
        return Math.min(estimate, entry.maxMs);
      }
      seen += count;
    }
    return entry.maxMs;
  };

  const statsOf = (tenantId: string, entry: TenantEntry): TenantRequestStats =>
    Object.freeze({
      tenantId,
      requests: entry.requests,
      serverErrors: entry.serverErrors,
      meanMs: entry.requests === 0 ? 0 : entry.totalMs / entry.requests,
      p50Ms: percentile(entry, 0.5),
      p95Ms: percentile(entry, 0.95),
      p99Ms: percentile(entry, 0.99),
      maxMs: entry.maxMs,
      histogram: Object.freeze(
        entry.buckets.map((count, index) => Object.freeze({ leMs: bounds[index] ?? null, count })),
      ),
    });

  const empty = (): TenantEntry => ({
    buckets: new Array<number>(bounds.length + 1).fill(0),
    requests: 0,
    serverErrors: 0,
    totalMs: 0,
    maxMs: 0,
  });

  return Object.freeze({
    record(tenantId: string, durationMs: number, statusCode?: number) {
      let entry = entries.get(tenantId);
      if (entry === undefined) {
        if (entries.size >= maxTenants) {
          untrackedRequests++;
          return;
        }
        entry = empty();
        entries.set(tenantId, entry);
      }
      const duration = Number.isFinite(durationMs) && durationMs > 0 ? durationMs : 0;
      let index = bounds.findIndex((bound) => duration <= bound);
      if (index === -1) index = bounds.length;
      entry.buckets[index] = (entry.buckets[index] ?? 0) + 1;
      entry.requests++;
      if (statusCode !== undefined && statusCode >= 500) entry.serverErrors++;
      entry.totalMs += duration;
      if (duration > entry.maxMs) entry.maxMs = duration;
    },
    tenant(tenantId: string) {
      return statsOf(tenantId, entries.get(tenantId) ?? empty());
    },
    snapshot() {
      return Object.freeze({
        since,
        tenants: Object.freeze([...entries].map(([tenantId, entry]) => statsOf(tenantId, entry))),
        untrackedRequests,
      });
    },
    reset() {
      entries = new Map();
      untrackedRequests = 0;
      since = new Date();
    },
  });
}
