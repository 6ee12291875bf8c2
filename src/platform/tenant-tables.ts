import type pg from 'pg';
import { defaultTenantrySchema, quoteIdentifier } from '../config.ts';
import { TenantryError, type TenantryErrorCode } from '../errors.ts';
import { parseTenantId, type TenantId } from '../tenant-id.ts';

/** A table holding tenants' rows, as the catalog describes it. */
export interface TenantTable {
  /** `schema.table`, unquoted: how reports and archives name it. */
  readonly name: string;
  readonly schema: string;
  readonly table: string;
  /** `"schema"."table"`, for SQL. */
  readonly sql: string;
  /** Row Level Security enabled and forced (the tenant-table convention is applied). */
  readonly isolated: boolean;
  readonly partitioned: boolean;
  /** Primary key columns in key order (empty when the table has none). */
  readonly primaryKey: readonly string[];
  readonly columns: readonly string[];
  /** Tenant tables this one references with a foreign key (by {@link TenantTable.name}). */
  readonly references: readonly string[];
}

/** Anything that runs a query: a `pg` pool or client. */
export type Queryable = Pick<pg.ClientBase, 'query'>;

/**
 * Platform ledgers that carry a `tenant_id` column without being the tenant's own table: the
 * outbox (its events are exported and erased by their own steps, the final `tenant.deleted`
 * excepted) and the erasure journal itself.
 */
const platformLedgers = ['outbox_events', 'tenant_erasures'];

const discoverColumns = `
  select c.oid::bigint::text as oid, n.nspname as schema, c.relname as table,
         c.relrowsecurity and c.relforcerowsecurity as isolated,
         c.relkind = 'p' as partitioned,
         coalesce((select array_agg(pa.attname::text order by k.ord)
                     from pg_catalog.pg_constraint pk
                     cross join lateral unnest(pk.conkey) with ordinality as k(attnum, ord)
                     join pg_catalog.pg_attribute pa on pa.attrelid = c.oid and pa.attnum = k.attnum
                    where pk.conrelid = c.oid and pk.contype = 'p'), '{}'::text[]) as primary_key,
         array(select ca.attname::text from pg_catalog.pg_attribute ca
                where ca.attrelid = c.oid and ca.attnum > 0 and not ca.attisdropped
                order by ca.attnum) as columns,
         array(select distinct f.confrelid::bigint::text from pg_catalog.pg_constraint f
                where f.conrelid = c.oid and f.contype = 'f' and f.confrelid <> c.oid) as references
    from pg_catalog.pg_class c
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    join pg_catalog.pg_attribute a
      on a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped
     and a.atttypid = 'uuid'::regtype
   where c.relkind in ('r', 'p') and not c.relispartition
     and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_'
     and not (n.nspname = $1 and c.relname = any($2::text[]))`;

const discoverSql = `${discoverColumns}
   order by n.nspname, c.relname`;

/** The tables a tenant's rows can be in: every schema but the schemas placed for other tenants. */
const discoverOfTenantSql = (placements: string) => `${discoverColumns}
     and not exists (select 1 from ${placements} p
                      where p.schema_name = n.nspname and p.tenant_id <> $3::uuid)
   order by n.nspname, c.relname`;

const placementSql = (tenants: string) => `
  select t.placement,
         to_regclass(format('%I.tenant_placements', $2::text)) is not null as has_placements
    from ${tenants} t where t.id = $1`;

/**
 * Lists every table that holds tenants' rows — any ordinary or partitioned table with a
 * `tenant_id uuid` column, in any schema — read from the catalog at call time, so a table added
 * by a later migration is included without a code change. Isolated tables (RLS forced) and
 * tables that missed the convention are both listed: an export or an erasure must not skip a
 * table because its isolation was forgotten. The platform ledgers (`outbox_events`,
 * `tenant_erasures`) are not tenant tables.
 *
 * @example
 * ```ts
 * import { listTenantTables } from 'tenantry/platform';
 * const tables = await listTenantTables(pool);
 * console.log(tables.map((table) => table.name)); // ['public.contacts', …, 'tenantry.usage_events']
 * ```
 */
export async function listTenantTables(
  db: Queryable,
  options: { readonly tenantrySchema?: string } = {},
): Promise<TenantTable[]> {
  const result = await db.query<DiscoveredRow>(discoverSql, [
    options.tenantrySchema ?? defaultTenantrySchema,
    platformLedgers,
  ]);
  return toTenantTables(result.rows);
}

interface DiscoveredRow {
  oid: string;
  schema: string;
  table: string;
  isolated: boolean;
  partitioned: boolean;
  primary_key: string[];
  columns: string[];
  references: string[];
}

function toTenantTables(rows: readonly DiscoveredRow[]): TenantTable[] {
  const nameByOid = new Map(rows.map((row) => [row.oid, `${row.schema}.${row.table}`]));
  return rows.map((row) =>
    Object.freeze({
      name: `${row.schema}.${row.table}`,
      schema: row.schema,
      table: row.table,
      sql: `${quoteIdentifier(row.schema)}.${quoteIdentifier(row.table)}`,
      isolated: row.isolated,
      partitioned: row.partitioned,
      primaryKey: Object.freeze([...row.primary_key]),
      columns: Object.freeze([...row.columns]),
      references: Object.freeze(
        row.references.flatMap((oid) => {
          const name = nameByOid.get(oid);
          return name === undefined ? [] : [name];
        }),
      ),
    }),
  );
}

/** One tenant's tenant tables, where its placement puts them. */
export interface TenantTablesOfTenant {
  readonly tenantId: TenantId;
  /** `pool` (shared tables) or `schema` (a schema of its own, {@link TenantTablesOfTenant.schema}). */
  readonly placement: 'pool' | 'schema';
  /** The tenant's dedicated schema, or `null` for a pooled tenant. */
  readonly schema: string | null;
  /**
   * Tenantry's shared tenant tables (files registry, usage, placement row…), the tables of the
   * pool's schemas, and for a placed tenant the tables of its own schema. The pool's tables stay
   * listed for a placed tenant: a router that had not yet seen its placement may have written
   * rows there, and an export or an erasure must find them. Other tenants' dedicated schemas are
   * not listed.
   */
  readonly tables: readonly TenantTable[];
}

/**
 * Lists the tables that can hold one tenant's rows, following its placement: every tenant table
 * ({@link listTenantTables}) except those in the dedicated schemas of other tenants. A tenant in
 * a dedicated database is refused (`TENANTRY_ERR_TENANT_STATE_CONFLICT`), an unknown one is
 * `TENANTRY_ERR_TENANT_NOT_FOUND`. Read in the caller's transaction, so a snapshot export sees
 * the placement and the tables of the same instant.
 *
 * @example
 * ```ts
 * import { listTenantTablesOf } from 'tenantry/platform';
 * const { placement, schema, tables } = await listTenantTablesOf(pool, tenantId);
 * console.log(placement, schema, tables.map((table) => table.name));
 * // 'schema' 't_8f14e45fceea' ['public.contacts', …, 't_8f14e45fceea.contacts', …, 'tenantry.usage_events']
 * ```
 */
export async function listTenantTablesOf(
  db: Queryable,
  tenantId: string,
  options: { readonly tenantrySchema?: string } = {},
): Promise<TenantTablesOfTenant> {
  const id = parseTenantId(tenantId);
  const tenantrySchema = options.tenantrySchema ?? defaultTenantrySchema;
  const tenantry = quoteIdentifier(tenantrySchema);
  const found = await db.query<{ placement: string; has_placements: boolean }>(
    placementSql(`${tenantry}.tenants`),
    [id, tenantrySchema],
  );
  const row = found.rows[0];
  if (row === undefined) {
    throw new TenantryError('TENANTRY_ERR_TENANT_NOT_FOUND', `No tenant ${id}.`);
  }
  if (row.placement !== 'pool' && row.placement !== 'schema') {
    throw new TenantryError(
      lifecycleErrorCodes.stateConflict,
      `Tenant ${id} is placed in a dedicated database (${row.placement}); its tables are not in this one. Move it to the pool first ("tenantry tenants move ${id} --to pool").`,
      { details: { placement: row.placement } },
    );
  }
  if (!row.has_placements) {
    return Object.freeze({
      tenantId: id,
      placement: 'pool',
      schema: null,
      tables: Object.freeze(await listTenantTables(db, options)),
    });
  }
  const own = await db.query<{ schema_name: string }>(
    `select schema_name from ${tenantry}.tenant_placements where tenant_id = $1`,
    [id],
  );
  const schema = own.rows[0]?.schema_name ?? null;
  const result = await db.query<DiscoveredRow>(
    discoverOfTenantSql(`${tenantry}.tenant_placements`),
    [tenantrySchema, platformLedgers, id],
  );
  return Object.freeze({
    tenantId: id,
    placement: schema === null ? 'pool' : 'schema',
    schema,
    tables: Object.freeze(toTenantTables(result.rows)),
  });
}

/**
 * Orders tenant tables so that every table comes before the tables it references (children
 * before parents): deleting in this order never trips a `RESTRICT` foreign key. Among tables
 * free to go next, the application's go first and Tenantry's usage ledger last, so triggers that
 * release quota on delete still find their counters. Tables in a reference cycle keep catalog
 * order at the end (their foreign keys must cascade or be deferrable).
 *
 * @example
 * ```ts
 * for (const table of deletionOrder(await listTenantTables(pool))) console.log(table.name);
 * ```
 */
export function deletionOrder(
  tables: readonly TenantTable[],
  tenantrySchema: string = defaultTenantrySchema,
): TenantTable[] {
  const rank = (table: TenantTable) =>
    table.schema !== tenantrySchema ? 0 : table.table.startsWith('usage_') ? 2 : 1;
  const byName = new Map(tables.map((table) => [table.name, table]));
  // A table is ready once every table referencing it is gone.
  const referencedBy = new Map<string, number>(tables.map((table) => [table.name, 0]));
  for (const table of tables) {
    for (const parent of new Set(table.references)) {
      if (byName.has(parent)) referencedBy.set(parent, (referencedBy.get(parent) ?? 0) + 1);
    }
  }
  const ordered: TenantTable[] = [];
  const done = new Set<string>();
  while (ordered.length < tables.length) {
    const ready = tables
      .filter((table) => !done.has(table.name) && referencedBy.get(table.name) === 0)
      .sort((a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name));
    const next = ready[0];
    if (next === undefined) {
      ordered.push(...tables.filter((table) => !done.has(table.name)));
      break;
    }
    ordered.push(next);
    done.add(next.name);
    for (const parent of new Set(next.references)) {
      if (byName.has(parent)) referencedBy.set(parent, (referencedBy.get(parent) ?? 1) - 1);
    }
  }
  return ordered;
}

/**
 * The error codes the lifecycle raises beyond the catalog's own (kept in one place so each
 * lands on its dedicated code at once).
 */
export const lifecycleErrorCodes = Object.freeze({
  /** A transition the tenant's status does not allow (resume a deleted tenant, erase an active one). */
  stateConflict: 'TENANTRY_ERR_TENANT_STATE_CONFLICT',
  /** A tenant name or suspension reason that is blank or too long. */
  inputInvalid: 'TENANTRY_ERR_TENANT_INVALID',
  /** An erasure whose verification still found the tenant's data. */
  erasureIncomplete: 'TENANTRY_ERR_TENANT_ERASURE_INCOMPLETE',
  /** Storage that failed to return an object. */
  storageUnavailable: 'TENANTRY_ERR_STORAGE_UNAVAILABLE',
} as const satisfies Record<string, TenantryErrorCode>);
