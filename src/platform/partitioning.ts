import type pg from 'pg';
import {
  defaultTenantrySchema,
  parseIdentifier,
  quoteIdentifier,
  quoteLiteral,
  type RoleNames,
  resolveRoleNames,
} from '../config.ts';
import { connectClient } from '../database/client.ts';
import { toTenantryError } from '../database-errors.ts';
import { TenantryError } from '../errors.ts';
import { parseTenantId } from '../tenant-id.ts';

/** How a partition of a tenant-partitioned table holds its tenants. */
export type PartitionRole = 'dedicated' | 'hashed' | 'hash' | 'other';

/** One partition of a table in the Tenantry partition layout, as {@link listPartitions} sees it. */
export interface PartitionInfo {
  /** Schema-qualified, quoted as needed, e.g. `public.messages_h03`. */
  readonly name: string;
  /**
   * `dedicated`: one tenant's LIST partition; `hashed`: the DEFAULT partition holding the hash
   * scheme; `hash`: one of its hash partitions; `other`: anything else.
   */
  readonly role: PartitionRole;
  /** 1 for partitions of the table, 2 for the hash partitions under the default. */
  readonly level: number;
  /** The partition bound as PostgreSQL prints it, e.g. `FOR VALUES WITH (modulus 16, remainder 3)`. */
  readonly bound: string;
  /** The tenant of a dedicated partition. */
  readonly tenantId: string | undefined;
  /** Rows as of the last ANALYZE (`undefined` if never analyzed; 0 for the partitioned default). */
  readonly estimatedRows: number | undefined;
  /** Table, index and TOAST bytes. */
  readonly totalBytes: number;
  readonly rowSecurity: boolean;
  readonly forceRowSecurity: boolean;
}

/** Options for {@link listPartitions}. */
export interface ListPartitionsOptions {
  /** Owner or superuser connection. */
  readonly connectionString: string;
  /** The partitioned table, e.g. `messages` or `tenantry.usage_events`. */
  readonly table: string;
}

/** A step of {@link dedicatePartition} or {@link undedicatePartition}, for progress output. */
export interface PartitionProgress {
  readonly phase:
    | 'locking'
    | 'counting'
    | 'copying'
    | 'deleting'
    | 'attaching'
    | 'detaching'
    | 'securing'
    | 'verifying'
    | 'committed';
  readonly table: string;
  readonly partition: string;
  /** Rows of the tenant concerned by the step, once known. */
  readonly rows?: number;
  /** Milliseconds since the operation started. */
  readonly elapsedMs: number;
}

/** Options for {@link dedicatePartition} and {@link undedicatePartition}. */
export interface PartitionMoveOptions {
  /**
   * Owner connection, or a superuser / member of the table's owner (the work then runs as the
   * owner, so the owner owns the new partition).
   */
  readonly connectionString: string;
  /** The partitioned table, e.g. `messages` or `tenantry.usage_events`. */
  readonly table: string;
  readonly tenantId: string;
  /** Schema of Tenantry's own objects (for `enable_tenant_isolation`). @defaultValue 'tenantry' */
  readonly tenantrySchema?: string;
  /** Role names (the app role keeps exactly the table privileges it had). */
  readonly roles?: Partial<RoleNames>;
  /**
   * How long to wait for each lock before giving up (the move then rolls back and changes
   * nothing). @defaultValue 10000
   */
  readonly lockTimeoutMs?: number;
  /** Called at each step. @defaultValue none */
  readonly onProgress?: (progress: PartitionProgress) => void;
}

/** What {@link dedicatePartition} or {@link undedicatePartition} did, verified before commit. */
export interface PartitionMoveResult {
  readonly table: string;
  readonly tenantId: string;
  /** The dedicated partition created (dedicate) or dropped (undedicate). */
  readonly partition: string;
  /** The hash partition the tenant's rows left (dedicate) or returned to (undedicate). */
  readonly hashPartition: string;
  /** The tenant's rows, equal before and after the move. */
  readonly rowsMoved: number;
  /** Other tenants' rows in the hash partition, equal before and after the move. */
  readonly neighbourRows: number;
  readonly durationMs: number;
}

interface Layout {
  readonly oid: number;
  /** Schema-qualified and quoted. */
  readonly name: string;
  readonly schema: string;
  readonly relname: string;
  readonly owner: string;
  /** The DEFAULT partition (hash-partitioned), schema-qualified and quoted. */
  readonly hashed: string;
}

const layoutSql = `
  select c.oid, format('%I.%I', n.nspname, c.relname) as name, n.nspname as schema,
         c.relname, pg_get_userbyid(c.relowner) as owner,
         p.partstrat as strategy,
         (select array_agg(a.attname::text order by k.ord)
            from unnest(p.partattrs::int2[]) with ordinality as k(attnum, ord)
            join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum) as key_columns,
         p.partexprs is not null as has_expressions,
         case when d.oid is not null then format('%I.%I', dn.nspname, d.relname) end as hashed,
         dp.partstrat as hashed_strategy,
         (select array_agg(a.attname::text order by k.ord)
            from unnest(dp.partattrs::int2[]) with ordinality as k(attnum, ord)
            join pg_attribute a on a.attrelid = d.oid and a.attnum = k.attnum) as hashed_key_columns
    from pg_class c
    join pg_namespace n on n.oid = c.relnamespace
    left join pg_partitioned_table p on p.partrelid = c.oid
    left join pg_class d on d.oid = p.partdefid
    left join pg_namespace dn on dn.oid = d.relnamespace
    left join pg_partitioned_table dp on dp.partrelid = d.oid
   where c.oid = to_regclass($1)`;

/** The tenants of one-tenant LIST partitions, read from the bound `FOR VALUES IN ('<uuid>')`. */
const partitionsSql = `
  select format('%I.%I', n.nspname, c.relname) as name, t.level, t.isleaf,
         pg_get_expr(c.relpartbound, c.oid) as bound,
         c.oid = pp.partdefid as is_default,
         c.relkind = 'p' as is_partitioned,
         substring(pg_get_expr(c.relpartbound, c.oid)
           from '^FOR VALUES IN \\(''([0-9a-f-]{36})''\\)$') as tenant_id,
         case when c.reltuples < 0 then null else c.reltuples::float8 end as estimated_rows,
         pg_total_relation_size(c.oid)::float8 as total_bytes,
         c.relrowsecurity as rls, c.relforcerowsecurity as forced
    from pg_partition_tree($1::regclass) t
    join pg_class c on c.oid = t.relid
    join pg_namespace n on n.oid = c.relnamespace
    left join pg_partitioned_table pp on pp.partrelid = t.parentrelid
   where t.level > 0
   order by t.level, c.relname`;

interface PartitionRow {
  name: string;
  level: number;
  isleaf: boolean;
  bound: string;
  is_default: boolean | null;
  is_partitioned: boolean;
  tenant_id: string | null;
  estimated_rows: number | null;
  total_bytes: number;
  rls: boolean;
  forced: boolean;
}

/**
 * Lists the partitions of a table in the Tenantry layout (LIST on tenant_id, a DEFAULT
 * partition HASH-partitioned on tenant_id, one LIST partition per dedicated tenant).
 *
 * @example
 * ```ts
 * import { listPartitions } from 'tenantry/platform';
 * for (const partition of await listPartitions({ connectionString: adminUrl, table: 'messages' })) {
 *   console.log(partition.name, partition.role, partition.tenantId ?? '', partition.estimatedRows);
 * }
 * ```
 */
export async function listPartitions(options: ListPartitionsOptions): Promise<PartitionInfo[]> {
  const client = await connectClient(options.connectionString);
  try {
    const layout = await loadLayout(client, options.table);
    return (await readPartitions(client, layout)).map(toPartitionInfo);
  } catch (error) {
    throw toTenantryError(error);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * Gives one tenant its own LIST partition of a tenant-partitioned table, moving its rows out of
 * the hash partition that held them, in one transaction: every row moves exactly once or the
 * transaction rolls back and nothing changes.
 *
 * Writes to the table pause while it runs (the table is locked in SHARE ROW EXCLUSIVE mode);
 * reads continue until the new partition is attached, then pause until commit (attaching scans
 * the DEFAULT partition under an ACCESS EXCLUSIVE lock). Foreign keys that reference the table
 * are dropped and re-created (validated) in the same transaction, so their cascades do not fire
 * for the moved rows. The parent's statement triggers (quota metering) do not fire either: no
 * row is created or destroyed. The new partition gets RLS, both policies and no app-role grants
 * from `enable_tenant_isolation()`. Counts are verified before commit.
 *
 * @example
 * ```ts
 * import { dedicatePartition } from 'tenantry/platform';
 * const result = await dedicatePartition({
 *   connectionString: adminUrl,
 *   table: 'messages',
 *   tenantId,
 *   onProgress: (step) => console.error(step.phase, step.rows ?? ''),
 * });
 * console.log(`${result.rowsMoved} rows now in ${result.partition}`);
 * ```
 */
export async function dedicatePartition(
  options: PartitionMoveOptions,
): Promise<PartitionMoveResult> {
  return movePartition(options, 'dedicate');
}

/**
 * Moves a tenant's rows from its dedicated partition back into the hash scheme and drops the
 * partition: the reverse of {@link dedicatePartition}, with the same transaction, locks,
 * foreign-key handling and verification.
 *
 * @example
 * ```ts
 * import { undedicatePartition } from 'tenantry/platform';
 * const result = await undedicatePartition({ connectionString: adminUrl, table: 'messages', tenantId });
 * console.log(`${result.rowsMoved} rows back in ${result.hashPartition}`);
 * ```
 */
export async function undedicatePartition(
  options: PartitionMoveOptions,
): Promise<PartitionMoveResult> {
  return movePartition(options, 'undedicate');
}

/**
 * The name a tenant's dedicated partition of `table` gets: `<table>_t_<first 12 hex digits of
 * the tenant id>`, within PostgreSQL's 63-byte identifier limit.
 *
 * @example
 * ```ts
 * dedicatedPartitionName('messages', '0b5c6a3e-6a8e-4f7e-9a51-2f7c1c9d2e10'); // 'messages_t_0b5c6a3e6a8e'
 * ```
 */
export function dedicatedPartitionName(table: string, tenantId: string): string {
  const id = parseTenantId(tenantId).replaceAll('-', '').slice(0, 12);
  return `${table.slice(0, 63 - 3 - id.length)}_t_${id}`;
}

async function movePartition(
  options: PartitionMoveOptions,
  direction: 'dedicate' | 'undedicate',
): Promise<PartitionMoveResult> {
  const tenantId = parseTenantId(options.tenantId);
  const tenantrySchema = parseIdentifier(
    options.tenantrySchema ?? defaultTenantrySchema,
    'tenantrySchema',
  );
  const appRole = resolveRoleNames(options.roles).app;
  const lockTimeoutMs = options.lockTimeoutMs ?? 10_000;
  if (!Number.isInteger(lockTimeoutMs) || lockTimeoutMs < 1) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'lockTimeoutMs must be a positive integer.',
    );
  }
  const started = performance.now();
  const client = await connectClient(options.connectionString);
  try {
    await client.query('begin');
    const layout = await loadLayout(client, options.table);
    const partitionName = dedicatedPartitionName(layout.relname, tenantId);
    const named = await client.query<{ name: string }>(
      "select format('%I.%I', $1::text, $2::text) as name",
      [layout.schema, partitionName],
    );
    const partition = named.rows[0]?.name ?? partitionName;
    const progress = (phase: PartitionProgress['phase'], rows?: number) =>
      options.onProgress?.({
        phase,
        table: layout.name,
        partition,
        ...(rows === undefined ? {} : { rows }),
        elapsedMs: Math.round(performance.now() - started),
      });

    await client.query(`set local lock_timeout = ${lockTimeoutMs}`);
    const role = await client.query<{ current_user: string }>('select current_user');
    if (role.rows[0]?.current_user !== layout.owner) {
      await client.query(`set local role ${quoteIdentifier(layout.owner)}`);
    }
    progress('locking');
    await client.query(`lock table ${layout.name} in share row exclusive mode`);
    // enable_tenant_isolation() (run below for the new partition) grants the app role full DML
    // on the parent; a table that withholds some (tenantry.usage_events is append-only through
    // record_usage()) must keep withholding them.
    const withheld = await client.query<{ privilege: string }>(
      `select privilege from unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE']) as privilege
        where not has_table_privilege($1, $2::regclass, privilege)`,
      [appRole, layout.name],
    );

    const existing = (await readPartitions(client, layout)).find(
      (row) => row.tenant_id === tenantId,
    );
    if (direction === 'dedicate' && existing !== undefined) {
      throw new TenantryError(
        'TENANTRY_ERR_PARTITION_EXISTS',
        `Tenant ${tenantId} already has the dedicated partition ${existing.name} of ${layout.name}.`,
        { details: { table: layout.name, partition: existing.name } },
      );
    }
    if (direction === 'undedicate' && existing === undefined) {
      throw new TenantryError(
        'TENANTRY_ERR_PARTITION_EXISTS',
        `Tenant ${tenantId} has no dedicated partition of ${layout.name}; its rows are in the hash partitions already.`,
        { details: { table: layout.name } },
      );
    }
    const dedicated = existing?.name ?? partition;
    if (direction === 'dedicate') {
      const taken = await client.query('select 1 from pg_class where oid = to_regclass($1)', [
        partition,
      ]);
      if (taken.rowCount !== 0) {
        throw new TenantryError(
          'TENANTRY_ERR_PARTITION_EXISTS',
          `A relation named ${partition} exists already; rename or drop it before dedicating a partition to tenant ${tenantId}.`,
          { details: { table: layout.name, partition } },
        );
      }
    }

    progress('counting');
    const hashPartition = await hashPartitionOf(client, layout, tenantId);
    const tenantRows = await countRows(client, layout.name, tenantId);
    const neighbourRows = await countNeighbours(client, hashPartition, tenantId);
    progress('counting', tenantRows);

    const references = await dropReferencingForeignKeys(client, layout.oid);
    const tenant = quoteLiteral(tenantId);
    if (direction === 'dedicate') {
      progress('copying', tenantRows);
      await client.query(
        `create table ${partition} (like ${layout.name} including defaults including constraints
           including generated including storage including comments including statistics)`,
      );
      // Straight into the new table: the parent's statement triggers (quota metering) do not
      // fire, as no row is created or destroyed. The owner bypasses RLS.
      const copied = await client.query(
        `insert into ${partition} select * from ${layout.name} where tenant_id = $1`,
        [tenantId],
      );
      progress('deleting', copied.rowCount ?? 0);
      await client.query(`delete from ${layout.hashed} where tenant_id = $1`, [tenantId]);
      progress('attaching', copied.rowCount ?? 0);
      await client.query(
        `alter table ${layout.name} attach partition ${partition} for values in (${tenant})`,
      );
    } else {
      progress('detaching', tenantRows);
      await client.query(`alter table ${layout.name} detach partition ${dedicated}`);
      progress('copying', tenantRows);
      await client.query(`insert into ${layout.hashed} select * from ${dedicated}`);
      await client.query(`drop table ${dedicated}`);
    }
    for (const statement of references) await client.query(statement);
    progress('securing');
    await client.query(
      `select ${quoteIdentifier(tenantrySchema)}.enable_tenant_isolation($1::regclass)`,
      [layout.name],
    );
    for (const { privilege } of withheld.rows) {
      await client.query(`revoke ${privilege} on ${layout.name} from ${quoteIdentifier(appRole)}`);
    }

    progress('verifying');
    const where = direction === 'dedicate' ? partition : hashPartition;
    const tenantAfter = await countRows(client, layout.name, tenantId);
    const inPlace = await countRows(client, where, tenantId);
    const neighboursAfter = await countNeighbours(client, hashPartition, tenantId);
    if (tenantAfter !== tenantRows || inPlace !== tenantRows || neighboursAfter !== neighbourRows) {
      throw new TenantryError(
        'TENANTRY_ERR_PARTITION_VERIFY_FAILED',
        `Row counts changed during the move of tenant ${tenantId} in ${layout.name} (tenant ${tenantRows} -> ${tenantAfter}, in ${where} ${inPlace}, neighbours ${neighbourRows} -> ${neighboursAfter}); rolled back.`,
        {
          details: {
            table: layout.name,
            tenantRows,
            tenantAfter,
            inPlace,
            neighbourRows,
            neighboursAfter,
          },
        },
      );
    }
    await client.query('commit');
    progress('committed', tenantRows);
    return Object.freeze({
      table: layout.name,
      tenantId,
      partition: dedicated,
      hashPartition,
      rowsMoved: tenantRows,
      neighbourRows,
      durationMs: Math.round(performance.now() - started),
    });
  } catch (error) {
    await client.query('rollback').catch(() => undefined);
    throw toTenantryError(error);
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function loadLayout(client: pg.ClientBase, table: string): Promise<Layout> {
  const result = await client.query<{
    oid: number;
    name: string;
    schema: string;
    relname: string;
    owner: string;
    strategy: string | null;
    key_columns: string[] | null;
    has_expressions: boolean;
    hashed: string | null;
    hashed_strategy: string | null;
    hashed_key_columns: string[] | null;
  }>(layoutSql, [table]);
  const row = result.rows[0];
  if (row === undefined) {
    throw new TenantryError(
      'TENANTRY_ERR_PARTITION_LAYOUT_INVALID',
      `Table "${table}" not found; name it as schema.table if it is not on the search path (e.g. tenantry.usage_events).`,
      { details: { table } },
    );
  }
  const byTenant = (columns: string[] | null) =>
    columns !== null && columns.length === 1 && columns[0] === 'tenant_id';
  if (
    row.strategy !== 'l' ||
    row.has_expressions ||
    !byTenant(row.key_columns) ||
    row.hashed === null ||
    row.hashed_strategy !== 'h' ||
    !byTenant(row.hashed_key_columns)
  ) {
    throw new TenantryError(
      'TENANTRY_ERR_PARTITION_LAYOUT_INVALID',
      `${row.name} is not in the tenant partition layout: it must be PARTITION BY LIST (tenant_id) with a DEFAULT partition that is PARTITION BY HASH (tenant_id) (see docs/guides/partitioning.md).`,
      { details: { table: row.name } },
    );
  }
  return {
    oid: row.oid,
    name: row.name,
    schema: row.schema,
    relname: row.relname,
    owner: row.owner,
    hashed: row.hashed,
  };
}

async function readPartitions(client: pg.ClientBase, layout: Layout): Promise<PartitionRow[]> {
  return (await client.query<PartitionRow>(partitionsSql, [layout.name])).rows;
}

function toPartitionInfo(row: PartitionRow): PartitionInfo {
  const role: PartitionRole =
    row.level === 1 && row.is_default === true && row.is_partitioned
      ? 'hashed'
      : row.level === 1 && row.tenant_id !== null
        ? 'dedicated'
        : row.level === 2 && row.bound.startsWith('FOR VALUES WITH')
          ? 'hash'
          : 'other';
  return Object.freeze({
    name: row.name,
    role,
    level: row.level,
    bound: row.bound,
    tenantId: role === 'dedicated' ? (row.tenant_id ?? undefined) : undefined,
    estimatedRows: row.is_partitioned ? 0 : (row.estimated_rows ?? undefined),
    totalBytes: row.total_bytes,
    rowSecurity: row.rls,
    forceRowSecurity: row.forced,
  });
}

/** The hash partition a tenant's rows are routed to when it has no LIST partition. */
async function hashPartitionOf(
  client: pg.ClientBase,
  layout: Layout,
  tenantId: string,
): Promise<string> {
  const result = await client.query<{ name: string }>(
    `select format('%I.%I', n.nspname, c.relname) as name
       from pg_partition_tree($1::regclass) t
       join pg_class c on c.oid = t.relid
       join pg_namespace n on n.oid = c.relnamespace
      where t.parentrelid = $1::regclass and t.isleaf
        and satisfies_hash_partition($1::regclass,
              (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'modulus (\\d+)'))[1]::int,
              (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'remainder (\\d+)'))[1]::int,
              $2::uuid)`,
    [layout.hashed, tenantId],
  );
  const name = result.rows[0]?.name;
  if (name === undefined) {
    throw new TenantryError(
      'TENANTRY_ERR_PARTITION_LAYOUT_INVALID',
      `No hash partition of ${layout.hashed} accepts tenant ${tenantId}: the hash partition set has a gap (run tenantry doctor).`,
      { details: { table: layout.name } },
    );
  }
  return name;
}

async function countRows(client: pg.ClientBase, relation: string, tenantId: string) {
  const result = await client.query<{ n: string }>(
    `select count(*) as n from ${relation} where tenant_id = $1`,
    [tenantId],
  );
  return Number(result.rows[0]?.n ?? 0);
}

async function countNeighbours(client: pg.ClientBase, relation: string, tenantId: string) {
  const result = await client.query<{ n: string }>(
    `select count(*) as n from ${relation} where tenant_id <> $1`,
    [tenantId],
  );
  return Number(result.rows[0]?.n ?? 0);
}

/**
 * Drops the foreign keys that reference the table (their ON DELETE actions would otherwise fire
 * for rows that only change partition) and returns the statements that re-create them as they
 * were; re-creating validates every reference.
 */
async function dropReferencingForeignKeys(client: pg.ClientBase, table: number): Promise<string[]> {
  const result = await client.query<{ source: string; name: string; definition: string }>(
    `select c.conrelid::regclass::text as source, quote_ident(c.conname) as name,
            pg_get_constraintdef(c.oid) as definition
       from pg_constraint c
      where c.confrelid = $1::oid and c.contype = 'f' and c.conparentid = 0
      order by c.conname`,
    [table],
  );
  const recreate: string[] = [];
  for (const row of result.rows) {
    await client.query(`alter table ${row.source} drop constraint ${row.name}`);
    recreate.push(`alter table ${row.source} add constraint ${row.name} ${row.definition}`);
  }
  return recreate;
}
