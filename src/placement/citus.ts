import type pg from 'pg';
import { defaultRoleNames, defaultTenantrySchema, quoteIdentifier } from '../config.ts';
import { connectClient } from '../database/client.ts';
import { TenantryError } from '../errors.ts';
import type { Queryable } from '../platform/tenant-tables.ts';

/** What {@link detectCitus} found on a server. */
export interface CitusInfo {
  /** The `citus` extension exists in this database. */
  readonly installed: boolean;
  /** Its version (`extversion`), when installed. */
  readonly version: string | undefined;
  /** Active primary worker nodes registered on this node (0 when not installed). */
  readonly workers: number;
  /** The coordinator is itself in the node metadata (`citus_set_coordinator_host`). */
  readonly coordinatorInMetadata: boolean;
}

/**
 * Tells whether the database behind `client` is a Citus node, and how many workers it knows.
 *
 * @example
 * ```ts
 * import { detectCitus } from 'tenantry/placement';
 * const citus = await detectCitus(pool);
 * if (citus.installed) console.log(`Citus ${citus.version}, ${citus.workers} workers`);
 * ```
 */
export async function detectCitus(client: Queryable): Promise<CitusInfo> {
  const extension = await client.query<{ version: string }>(
    `select extversion as version from pg_catalog.pg_extension where extname = 'citus'`,
  );
  const version = extension.rows[0]?.version;
  if (version === undefined) {
    return Object.freeze({
      installed: false,
      version: undefined,
      workers: 0,
      coordinatorInMetadata: false,
    });
  }
  const nodes = await client.query<{ workers: number; coordinator: boolean }>(
    `select count(*) filter (where groupid <> 0 and noderole = 'primary' and isactive)::int as workers,
            bool_or(groupid = 0) is true as coordinator
       from pg_catalog.pg_dist_node`,
  );
  return Object.freeze({
    installed: true,
    version,
    workers: nodes.rows[0]?.workers ?? 0,
    coordinatorInMetadata: nodes.rows[0]?.coordinator ?? false,
  });
}

/** A foreign key of a {@link DistributionCatalogTable}. */
export interface DistributionForeignKey {
  readonly name: string;
  /** Referencing columns, in key order. */
  readonly columns: readonly string[];
  /** The referenced table, `schema.table`. */
  readonly references: string;
  readonly referencedColumns: readonly string[];
}

/** One table as {@link planDistribution} needs it, read by {@link readDistributionCatalog}. */
export interface DistributionCatalogTable {
  /** `schema.table`, unquoted. */
  readonly name: string;
  readonly schema: string;
  readonly table: string;
  /** Has a `tenant_id uuid` column. */
  readonly hasTenantId: boolean;
  /** Row Level Security enabled and forced. */
  readonly isolated: boolean;
  readonly partitioned: boolean;
  /** Has a partition that is itself partitioned (Citus cannot distribute it). */
  readonly multiLevelPartitioned: boolean;
  /** Columns of the primary key and of every unique constraint or unique index. */
  readonly uniqueKeys: readonly (readonly string[])[];
  readonly foreignKeys: readonly DistributionForeignKey[];
  /** Policies with their `USING` / `WITH CHECK` expressions as the server prints them. */
  readonly policies: readonly { readonly name: string; readonly expressions: readonly string[] }[];
  /** User (not internal) triggers on the table. */
  readonly triggers: readonly string[];
  /** How Citus already holds the table; `undefined` for a plain table or a plain server. */
  readonly citus:
    | {
        readonly type: 'distributed' | 'reference' | 'local';
        readonly distributionColumn: string | undefined;
        readonly colocationId: number;
      }
    | undefined;
}

const excludedSchemas = [
  'information_schema',
  'citus',
  'citus_internal',
  'columnar',
  'columnar_internal',
];

const catalogSql = `
  select n.nspname as schema, c.relname as table,
         exists (select 1 from pg_catalog.pg_attribute a
                  where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped
                    and a.atttypid = 'uuid'::regtype) as has_tenant_id,
         c.relrowsecurity and c.relforcerowsecurity as isolated,
         c.relkind = 'p' as partitioned,
         exists (select 1 from pg_catalog.pg_inherits i
                   join pg_catalog.pg_class child on child.oid = i.inhrelid
                  where i.inhparent = c.oid and child.relkind = 'p') as multi_level,
         array(select array_to_string(array(
                        select a.attname::text from unnest(x.indkey) with ordinality as k(attnum, ord)
                          join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum
                         order by k.ord), ',')
                 from pg_catalog.pg_index x where x.indrelid = c.oid and x.indisunique) as unique_keys,
         coalesce((select json_agg(json_build_object(
                    'name', f.conname,
                    'columns', array(select a.attname::text from unnest(f.conkey) with ordinality as k(attnum, ord)
                                       join pg_catalog.pg_attribute a on a.attrelid = f.conrelid and a.attnum = k.attnum
                                      order by k.ord),
                    'references', rn.nspname || '.' || r.relname,
                    'referencedColumns', array(select a.attname::text from unnest(f.confkey) with ordinality as k(attnum, ord)
                                       join pg_catalog.pg_attribute a on a.attrelid = f.confrelid and a.attnum = k.attnum
                                      order by k.ord)) order by f.conname)
                     from pg_catalog.pg_constraint f
                     join pg_catalog.pg_class r on r.oid = f.confrelid
                     join pg_catalog.pg_namespace rn on rn.oid = r.relnamespace
                    where f.conrelid = c.oid and f.contype = 'f' and f.conparentid = 0), '[]'::json) as foreign_keys,
         coalesce((select json_agg(json_build_object(
                    'name', p.polname,
                    'expressions', array_remove(array[pg_catalog.pg_get_expr(p.polqual, p.polrelid),
                                                      pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)], null))
                    order by p.polname)
                     from pg_catalog.pg_policy p where p.polrelid = c.oid), '[]'::json) as policies,
         array(select t.tgname::text from pg_catalog.pg_trigger t
                where t.tgrelid = c.oid and not t.tgisinternal order by t.tgname) as triggers
    from pg_catalog.pg_class c
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.relkind in ('r', 'p') and not c.relispartition and c.relpersistence = 'p'
     and n.nspname !~ '^pg_' and n.nspname <> all($1::text[])
     and not exists (select 1 from pg_catalog.pg_depend d
                      where d.classid = 'pg_catalog.pg_class'::regclass and d.objid = c.oid
                        and d.deptype = 'e')
   order by n.nspname, c.relname`;

const citusTablesSql = `
  select n.nspname || '.' || c.relname as name,
         case when p.partmethod = 'h' then 'distributed'
              when p.repmodel = 't' then 'reference' else 'local' end as type,
         case when p.partmethod = 'h'
              then pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) end as distribution_column,
         p.colocationid as colocation_id
    from pg_catalog.pg_dist_partition p
    join pg_catalog.pg_class c on c.oid = p.logicalrelid
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace`;

/**
 * Reads what {@link planDistribution} needs from the catalog: every ordinary or partitioned
 * table outside the system and Citus schemas (tables owned by an extension excluded), with its
 * keys, foreign keys, policies, triggers and, on Citus, how it is distributed already.
 *
 * @example
 * ```ts
 * const plan = planDistribution(await readDistributionCatalog(client));
 * ```
 */
export async function readDistributionCatalog(
  client: Queryable,
): Promise<DistributionCatalogTable[]> {
  const result = await client.query<{
    schema: string;
    table: string;
    has_tenant_id: boolean;
    isolated: boolean;
    partitioned: boolean;
    multi_level: boolean;
    unique_keys: string[];
    foreign_keys: DistributionForeignKey[];
    policies: { name: string; expressions: string[] }[];
    triggers: string[];
  }>(catalogSql, [excludedSchemas]);
  const citus = new Map<
    string,
    {
      type: 'distributed' | 'reference' | 'local';
      distribution_column: string | null;
      colocation_id: number;
    }
  >();
  if ((await detectCitus(client)).installed) {
    const tables = await client.query<{
      name: string;
      type: 'distributed' | 'reference' | 'local';
      distribution_column: string | null;
      colocation_id: number;
    }>(citusTablesSql);
    for (const row of tables.rows) citus.set(row.name, row);
  }
  return result.rows.map((row) => {
    const name = `${row.schema}.${row.table}`;
    const held = citus.get(name);
    return Object.freeze({
      name,
      schema: row.schema,
      table: row.table,
      hasTenantId: row.has_tenant_id,
      isolated: row.isolated,
      partitioned: row.partitioned,
      multiLevelPartitioned: row.multi_level,
      uniqueKeys: Object.freeze(row.unique_keys.map((key) => Object.freeze(key.split(',')))),
      foreignKeys: Object.freeze(row.foreign_keys.map((key) => Object.freeze(key))),
      policies: Object.freeze(row.policies.map((policy) => Object.freeze(policy))),
      triggers: Object.freeze([...row.triggers]),
      citus:
        held === undefined
          ? undefined
          : Object.freeze({
              type: held.type,
              distributionColumn: held.distribution_column ?? undefined,
              colocationId: held.colocation_id,
            }),
    });
  });
}

/** One `create_reference_table` or `create_distributed_table` call of a {@link DistributionPlan}. */
export interface DistributionStep {
  /** `schema.table`. */
  readonly table: string;
  readonly action: 'reference' | 'distribute';
  /** For `distribute`: the table it is co-located with, or `undefined` for the first one. */
  readonly colocateWith: string | undefined;
  /** `done` when Citus already holds the table this way (a second run skips it). */
  readonly status: 'pending' | 'done';
  /** Parameterised SQL and its values. */
  readonly text: string;
  readonly values: readonly string[];
}

/** Something that stops the distribution; nothing is changed while one remains. */
export interface DistributionBlocker {
  readonly table: string;
  readonly problem: string;
}

/** What {@link planDistribution} decided, in the order the steps must run. */
export interface DistributionPlan {
  /** Reference tables first (referenced before referencing), then tenant tables likewise. */
  readonly steps: readonly DistributionStep[];
  /** The tenant table every other one is co-located with. */
  readonly anchor: string | undefined;
  /** Tables that stay on the coordinator, and why. */
  readonly local: readonly { readonly table: string; readonly reason: string }[];
  readonly blockers: readonly DistributionBlocker[];
  /** Tables with user triggers: they run per shard on the workers (`citus.enable_unsafe_triggers`). */
  readonly triggerTables: readonly string[];
}

/** Options for {@link planDistribution}. */
export interface PlanDistributionOptions {
  /** Tenantry's schema. @defaultValue 'tenantry' */
  readonly tenantrySchema?: string;
  /**
   * Tables to make reference tables even when no tenant table references them (`schema.table`);
   * the tables they and the tenant tables reference are added. @defaultValue the catalog:
   * `tenants`, `plans`, `plan_limits` and `metrics` of Tenantry's schema
   */
  readonly referenceTables?: readonly string[];
}

/**
 * Ledgers with a `tenant_id` that must outlive a tenant's erasure and are written on the
 * coordinator only (the same list `listTenantTables` leaves out).
 */
const platformLedgers = ['outbox_events', 'tenant_erasures'];

const subqueryPattern = /\(\s*select\b|\bexists\s*\(/i;

/**
 * Decides how a database becomes a Citus cluster, from its catalog alone (pure, so it can be
 * checked on a plain server): every table with a `tenant_id uuid` and forced Row Level Security
 * is distributed by `tenant_id`, all co-located with the first; Tenantry's catalog tables and
 * every table without `tenant_id` that a tenant or reference table references become reference
 * tables; everything else stays on the coordinator. Each list is ordered so that a table comes
 * after the tables it references. Tables Citus cannot take as they are, unique keys without
 * `tenant_id`, foreign keys that leave the tenant, policies with subqueries and tables already
 * distributed another way are reported as blockers.
 *
 * @example
 * ```ts
 * const plan = planDistribution(await readDistributionCatalog(client));
 * for (const blocker of plan.blockers) console.error(`${blocker.table}: ${blocker.problem}`);
 * for (const step of plan.steps) console.log(step.action, step.table, step.colocateWith ?? '');
 * ```
 */
export function planDistribution(
  tables: readonly DistributionCatalogTable[],
  options: PlanDistributionOptions = {},
): DistributionPlan {
  const tenantrySchema = options.tenantrySchema ?? defaultTenantrySchema;
  const byName = new Map(tables.map((table) => [table.name, table]));
  const isLedger = (table: DistributionCatalogTable) =>
    table.schema === tenantrySchema && platformLedgers.includes(table.table);
  const tenantTables = tables.filter(
    (table) => table.hasTenantId && table.isolated && !isLedger(table),
  );
  const tenantNames = new Set(tenantTables.map((table) => table.name));
  const blockers: DistributionBlocker[] = [];
  const local: { table: string; reason: string }[] = [];

  const seeds = options.referenceTables ?? [
    `${tenantrySchema}.tenants`,
    `${tenantrySchema}.plans`,
    `${tenantrySchema}.plan_limits`,
    `${tenantrySchema}.metrics`,
  ];
  const referenceNames = new Set<string>();
  const queue = [
    ...seeds.filter((name) => byName.has(name)),
    ...tenantTables.flatMap((table) => table.foreignKeys.map((key) => key.references)),
  ];
  while (queue.length > 0) {
    const name = queue.shift() as string;
    const table = byName.get(name);
    if (table === undefined || tenantNames.has(name) || referenceNames.has(name)) continue;
    if (table.hasTenantId && !isLedger(table)) continue;
    referenceNames.add(name);
    queue.push(...table.foreignKeys.map((key) => key.references));
  }

  for (const table of tenantTables) {
    const problems: string[] = [];
    if (table.multiLevelPartitioned) {
      problems.push(
        'it is partitioned on more than one level, which Citus cannot distribute; on Citus the shards already split tenants by a hash of tenant_id, so create it unpartitioned (or partitioned on one level)',
      );
    }
    for (const key of table.uniqueKeys) {
      if (!key.includes('tenant_id')) {
        problems.push(
          `the unique key (${key.join(', ')}) does not contain tenant_id, so one shard cannot enforce it`,
        );
      }
    }
    for (const key of table.foreignKeys) {
      if (tenantNames.has(key.references)) {
        const position = key.columns.indexOf('tenant_id');
        if (position < 0 || key.referencedColumns[position] !== 'tenant_id') {
          problems.push(
            `the foreign key ${key.name} to ${key.references} does not match tenant_id to tenant_id, so it would cross shards`,
          );
        }
      } else if (!referenceNames.has(key.references)) {
        problems.push(
          `the foreign key ${key.name} references ${key.references}, which has a tenant_id but no forced Row Level Security: fix that table (tenantry doctor) first`,
        );
      }
    }
    for (const policy of table.policies) {
      if (policy.expressions.some((expression) => subqueryPattern.test(expression))) {
        problems.push(
          `the policy ${policy.name} contains a subquery; Citus evaluates policies on each shard, so a policy must compare columns with tenantry.current_tenant_id() only`,
        );
      }
    }
    if (table.citus !== undefined && table.citus.type !== 'distributed') {
      problems.push(`Citus already holds it as a ${table.citus.type} table`);
    } else if (table.citus !== undefined && table.citus.distributionColumn !== 'tenant_id') {
      problems.push(
        `it is already distributed by ${table.citus.distributionColumn}, not tenant_id`,
      );
    }
    for (const problem of problems) blockers.push({ table: table.name, problem });
  }
  for (const name of referenceNames) {
    const table = byName.get(name) as DistributionCatalogTable;
    for (const key of table.foreignKeys) {
      if (tenantNames.has(key.references)) {
        blockers.push({
          table: name,
          problem: `the foreign key ${key.name} references the tenant table ${key.references}; a reference table cannot reference a distributed one`,
        });
      }
    }
    if (table.citus !== undefined && table.citus.type !== 'reference') {
      blockers.push({
        table: name,
        problem: `Citus already holds it as a ${table.citus.type} table`,
      });
    }
  }

  const distributed = tenantTables.filter((table) => table.citus?.type === 'distributed');
  const colocations = new Set(distributed.map((table) => table.citus?.colocationId));
  if (colocations.size > 1) {
    blockers.push({
      table: distributed.map((table) => table.name).join(', '),
      problem:
        'these tenant tables are distributed in different co-location groups, so a tenant is not on one node; undistribute and run again',
    });
  }

  const orderedReference = referencesFirst(
    tables.filter((table) => referenceNames.has(table.name)),
    referenceNames,
  );
  const orderedTenant = referencesFirst(tenantTables, tenantNames);
  for (const cycle of [...orderedReference.cycle, ...orderedTenant.cycle]) {
    blockers.push({
      table: cycle,
      problem: 'it is part of a foreign-key cycle; Citus needs referenced tables distributed first',
    });
  }

  const anchor = (distributed[0] ?? orderedTenant.ordered[0])?.name;
  const steps: DistributionStep[] = [];
  for (const table of orderedReference.ordered) {
    steps.push(
      Object.freeze({
        table: table.name,
        action: 'reference' as const,
        colocateWith: undefined,
        status: table.citus?.type === 'reference' ? ('done' as const) : ('pending' as const),
        text: 'select pg_catalog.create_reference_table($1::regclass)',
        values: Object.freeze([sqlName(table)]),
      }),
    );
  }
  for (const table of orderedTenant.ordered) {
    const colocateWith = table.name === anchor ? undefined : anchor;
    const anchorTable = colocateWith === undefined ? undefined : byName.get(colocateWith);
    steps.push(
      Object.freeze({
        table: table.name,
        action: 'distribute' as const,
        colocateWith,
        status: table.citus?.type === 'distributed' ? ('done' as const) : ('pending' as const),
        text: "select pg_catalog.create_distributed_table($1::regclass, 'tenant_id', colocate_with => $2)",
        values: Object.freeze([
          sqlName(table),
          anchorTable === undefined ? 'none' : sqlName(anchorTable),
        ]),
      }),
    );
  }

  for (const table of tables) {
    if (tenantNames.has(table.name) || referenceNames.has(table.name)) continue;
    const reason = isLedger(table)
      ? 'platform ledger: written on the coordinator, kept after a tenant is erased'
      : table.hasTenantId
        ? 'has tenant_id without forced Row Level Security: Tenantry bookkeeping, or a table that missed enable_tenant_isolation (tenantry doctor)'
        : table.foreignKeys.some((key) => referenceNames.has(key.references))
          ? 'coordinator table; Citus turns it into a Citus local table for its foreign key to a reference table'
          : 'coordinator table: no tenant table references it';
    local.push({ table: table.name, reason });
  }

  return Object.freeze({
    steps: Object.freeze(steps),
    anchor,
    local: Object.freeze(local),
    blockers: Object.freeze(blockers),
    triggerTables: Object.freeze(
      [...orderedReference.ordered, ...orderedTenant.ordered]
        .filter((table) => table.triggers.length > 0)
        .map((table) => table.name),
    ),
  });
}

function sqlName(table: DistributionCatalogTable): string {
  return `${quoteIdentifier(table.schema)}.${quoteIdentifier(table.table)}`;
}

/** Orders `tables` so each comes after the tables of `within` it references (catalog order otherwise). */
function referencesFirst(
  tables: readonly DistributionCatalogTable[],
  within: ReadonlySet<string>,
): { ordered: DistributionCatalogTable[]; cycle: string[] } {
  const ordered: DistributionCatalogTable[] = [];
  const done = new Set<string>();
  const remaining = [...tables].sort((a, b) => a.name.localeCompare(b.name));
  while (remaining.length > 0) {
    const index = remaining.findIndex((table) =>
      table.foreignKeys.every(
        (key) =>
          key.references === table.name || !within.has(key.references) || done.has(key.references),
      ),
    );
    if (index < 0) return { ordered, cycle: remaining.map((table) => table.name) };
    const [next] = remaining.splice(index, 1) as [DistributionCatalogTable];
    ordered.push(next);
    done.add(next.name);
  }
  return { ordered, cycle: [] };
}

/** Progress of {@link distributeTenantTables}, after each step. */
export interface DistributeProgress {
  readonly done: number;
  readonly total: number;
  readonly step: DistributionStep;
  readonly durationMs: number;
}

/** Options for {@link distributeTenantTables}. */
export interface DistributeTenantTablesOptions {
  /** Owner or superuser connection to the Citus coordinator, after `tenantry migrate`. */
  readonly connectionString: string;
  /** The role the application connects as. @defaultValue 'tenantry_app' */
  readonly appRole?: string;
  readonly tenantrySchema?: string;
  /** See {@link PlanDistributionOptions.referenceTables}. */
  readonly referenceTables?: readonly string[];
  /** Called after each table is distributed or made a reference table. */
  readonly onProgress?: (progress: DistributeProgress) => void;
}

/** What {@link distributeTenantTables} did. */
export interface DistributeSummary {
  readonly citusVersion: string;
  readonly workers: number;
  /** Tables made reference tables by this run. */
  readonly reference: readonly string[];
  /** Tenant tables distributed by this run. */
  readonly distributed: readonly string[];
  /** Tables Citus already held as planned (skipped). */
  readonly alreadyDone: readonly string[];
  readonly anchor: string | undefined;
  readonly local: DistributionPlan['local'];
  readonly triggerTables: readonly string[];
  /** Role and database settings applied (`alter role … set …`). */
  readonly settings: readonly string[];
  readonly durationMs: number;
}

/**
 * Turns a migrated Tenantry database on a Citus coordinator into a distributed one: plans with
 * {@link planDistribution}, refuses (changing nothing) on a server without Citus, without
 * workers, or while a blocker remains, then makes the reference tables, distributes every
 * tenant table by `tenant_id` co-located with the first, and sets
 * `citus.propagate_set_commands = 'local'` for the app role so the tenant context Tenantry sets
 * with `SET LOCAL` reaches the workers. Run it again after every `tenantry migrate`: tables
 * Citus already holds are skipped, new tenant tables are distributed.
 *
 * @example
 * ```ts
 * import { distributeTenantTables } from 'tenantry/placement';
 * const summary = await distributeTenantTables({
 *   connectionString: process.env.DATABASE_URL,
 *   onProgress: ({ done, total, step }) => console.error(`${done}/${total} ${step.action} ${step.table}`),
 * });
 * console.log(`${summary.distributed.length} tables distributed on ${summary.workers} workers`);
 * ```
 */
export async function distributeTenantTables(
  options: DistributeTenantTablesOptions,
): Promise<DistributeSummary> {
  const started = performance.now();
  const appRole = options.appRole ?? defaultRoleNames.app;
  const client = await connectClient(options.connectionString);
  try {
    const citus = await requireCitus(client);
    const plan = planDistribution(await readDistributionCatalog(client), {
      ...(options.tenantrySchema === undefined ? {} : { tenantrySchema: options.tenantrySchema }),
      ...(options.referenceTables === undefined
        ? {}
        : { referenceTables: options.referenceTables }),
    });
    const blockers = [...plan.blockers, ...(await missingRolesOnWorkers(client, appRole))];
    if (blockers.length > 0) {
      throw new TenantryError(
        'TENANTRY_ERR_MIGRATION_FAILED',
        `Cannot distribute this database; nothing was changed:\n${blockers
          .map((blocker) => `  ${blocker.table}: ${blocker.problem}`)
          .join('\n')}`,
        { details: { blockers } },
      );
    }
    if (plan.triggerTables.length > 0) {
      // Citus refuses to distribute a table with triggers unless told they are safe: Tenantry's
      // and the app's triggers only touch co-located rows of the same tenant or reference tables.
      await client.query('set citus.enable_unsafe_triggers = on');
    }
    const pending = plan.steps.filter((step) => step.status === 'pending');
    const reference: string[] = [];
    const distributed: string[] = [];
    let done = 0;
    for (const step of pending) {
      const stepStarted = performance.now();
      try {
        await client.query(step.text, [...step.values]);
      } catch (error) {
        throw new TenantryError(
          'TENANTRY_ERR_MIGRATION_FAILED',
          `Citus refused to ${step.action === 'reference' ? 'make a reference table of' : 'distribute'} ${step.table}: ${
            error instanceof Error ? error.message : String(error)
          }. The tables before it are done; fix the cause and run again.`,
          { cause: error, details: { table: step.table, done: [...reference, ...distributed] } },
        );
      }
      (step.action === 'reference' ? reference : distributed).push(step.table);
      done += 1;
      options.onProgress?.({
        done,
        total: pending.length,
        step,
        durationMs: Math.round(performance.now() - stepStarted),
      });
    }
    const database = await client.query<{ name: string }>('select current_database() as name');
    const settings = [
      `alter role ${quoteIdentifier(appRole)} set citus.propagate_set_commands = 'local'`,
    ];
    if (plan.triggerTables.length > 0) {
      settings.push(
        `alter database ${quoteIdentifier(database.rows[0]?.name ?? '')} set citus.enable_unsafe_triggers = on`,
      );
    }
    for (const statement of settings) await client.query(statement);
    return Object.freeze({
      citusVersion: citus.version as string,
      workers: citus.workers,
      reference: Object.freeze(reference),
      distributed: Object.freeze(distributed),
      alreadyDone: Object.freeze(
        plan.steps.filter((step) => step.status === 'done').map((step) => step.table),
      ),
      anchor: plan.anchor,
      local: plan.local,
      triggerTables: plan.triggerTables,
      settings: Object.freeze(settings),
      durationMs: Math.round(performance.now() - started),
    });
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * Fails with `TENANTRY_ERR_CONFIG_INVALID` unless `client` is on a Citus coordinator with at
 * least one worker; returns what {@link detectCitus} found.
 *
 * @example
 * ```ts
 * const citus = await requireCitus(client);
 * ```
 */
export async function requireCitus(client: Queryable): Promise<CitusInfo> {
  const citus = await detectCitus(client);
  if (!citus.installed) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'This database has no Citus extension: DATABASE_URL must point at the database on a Citus coordinator where "create extension citus" ran (see docs/guides/scale-out-with-citus.md). Nothing was changed.',
    );
  }
  if (citus.workers === 0) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `Citus ${citus.version} has no active worker: add them on the coordinator with "select citus_add_node('<host>', 5432)". Nothing was changed.`,
    );
  }
  return citus;
}

async function missingRolesOnWorkers(
  client: pg.Client,
  appRole: string,
): Promise<DistributionBlocker[]> {
  // The coordinator connects to each worker as the session's role, so the app role must exist
  // (and be able to log in) on every worker before its queries are routed there.
  const result = await client.query<{
    nodename: string;
    nodeport: number;
    success: boolean;
    result: string;
  }>(
    `select nodename, nodeport, success, result
       from pg_catalog.run_command_on_workers(
              format('select count(*) from pg_catalog.pg_roles where rolname = %L and rolcanlogin', $1::text))`,
    [appRole],
  );
  return result.rows
    .filter((row) => !row.success || row.result !== '1')
    .map((row) => ({
      table: `worker ${row.nodename}:${row.nodeport}`,
      problem: row.success
        ? `the role ${appRole} does not exist there or cannot log in: create it on every worker (docs/guides/scale-out-with-citus.md)`
        : `cannot check the role ${appRole} there: ${row.result}`,
    }));
}
