import type pg from 'pg';
import { parseIdentifier, quoteIdentifier, type RoleNames } from '../config.ts';
import { connectClient } from '../database/client.ts';
import { toTenantryError } from '../database-errors.ts';
import { isTenantryError, TenantryError } from '../errors.ts';
import { type Logger, silentLogger } from '../logger.ts';
import type { MigrationSource } from '../migrations/migrate.ts';
import { parseTenantId, type TenantId } from '../tenant-id.ts';
import {
  applyToSchema,
  ownerRoleStatement,
  poolAppliedFiles,
  readTenantMigrations,
  resolvePlacementSettings,
  schemaLockKey,
} from './migrate-targets.ts';

/**
 * The default schema of a tenant placed in its own: `t_` and the first 12 hex digits of its id.
 *
 * @example
 * ```ts
 * defaultTenantSchemaName('8f14e45f-ceea-467f-a0e6-7a1b2c3d4e5f'); // 't_8f14e45fceea'
 * ```
 */
export function defaultTenantSchemaName(tenantId: string): string {
  return `t_${parseTenantId(tenantId).replaceAll('-', '').slice(0, 12)}`;
}

/** Options for {@link placeTenantInSchema}. */
export interface PlaceTenantInSchemaOptions {
  /** The owner role's URL, or a superuser's (statements then run as the owner). */
  readonly connectionString: string;
  readonly tenantId: string;
  /** The schema to create (it must not exist). @defaultValue {@link defaultTenantSchemaName} */
  readonly schema?: string;
  /**
   * The application's tenant migration sources, already applied to the pool: their tenant
   * statements are replayed in the new schema.
   */
  readonly sources: readonly MigrationSource[];
  /**
   * Compare the new schema's tenant tables with the pool's (columns, constraints, indexes,
   * policies, triggers, partitions) and refuse the placement when they differ. Turn off only when
   * the sources do not hold every tenant table of the pool.
   * @defaultValue true
   */
  readonly verify?: boolean;
  /** Schema of Tenantry's own objects. @defaultValue 'tenantry' */
  readonly tenantrySchema?: string;
  readonly roles?: Partial<RoleNames>;
  readonly logger?: Logger;
}

/** What {@link placeTenantInSchema} did. */
export interface SchemaPlacement {
  readonly tenantId: TenantId;
  readonly schema: string;
  /** Migration files replayed in the schema. */
  readonly applied: number;
  readonly durationMs: number;
}

/** One way a dedicated schema's tenant tables differ from the pool's. */
export interface SchemaDifference {
  readonly table: string;
  /** `table`, `column`, `constraint`, `index`, `policy`, `trigger` or `partition`. */
  readonly kind: string;
  readonly name: string;
  /** What the pool (`public`) has, or `null` when only the schema has it. */
  readonly pool: string | null;
  /** What the schema has, or `null` when it lacks it. */
  readonly schema: string | null;
}

/**
 * Places a tenant that has no rows yet in a schema of its own, in one transaction: creates the
 * schema, replays the tenant statements of the application's migration files in it (unqualified
 * names land there; `tenantry.*` helpers apply RLS and the convention to its tables), records the
 * placement and sets `tenants.placement = 'schema'`. Routers drop the tenant from their caches
 * when it commits. A tenant with rows in the pool is refused (`TENANTRY_ERR_TENANT_STATE_CONFLICT`):
 * moving rows is not what this does. Place a tenant right after creating it, before traffic.
 *
 * @example
 * ```ts
 * import { placeTenantInSchema } from 'tenantry/placement';
 * const placed = await placeTenantInSchema({
 *   connectionString: adminUrl,
 *   tenantId,
 *   sources: [{ name: 'app', directory: 'app/migrations' }],
 * });
 * console.log(placed.schema); // 't_8f14e45fceea'
 * ```
 */
export async function placeTenantInSchema(
  options: PlaceTenantInSchemaOptions,
): Promise<SchemaPlacement> {
  const started = performance.now();
  const logger = options.logger ?? silentLogger;
  const tenantId = parseTenantId(options.tenantId);
  const schemaName = parseIdentifier(options.schema ?? defaultTenantSchemaName(tenantId), 'schema');
  if (schemaName === 'public' || schemaName.startsWith('pg_')) {
    throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', `Schema ${schemaName} is reserved.`);
  }
  const settings = resolvePlacementSettings(options);
  const files = await readTenantMigrations(options.sources, settings.variables);
  const tenantry = quoteIdentifier(settings.schema);
  const schema = quoteIdentifier(schemaName);

  const client = await connectClient(options.connectionString);
  try {
    const roleStatement = await ownerRoleStatement(client, settings.roles.owner);
    const { ready, waiting } = await poolAppliedFiles(client, settings, files);
    if (waiting.length > 0) {
      const first = waiting[0] as (typeof waiting)[number];
      throw new TenantryError(
        'TENANTRY_ERR_MIGRATION_FAILED',
        `Migration ${first.source}/${first.version}-${first.name} is not applied to the pool yet: run "tenantry migrate" first.`,
        { details: { source: first.source, version: first.version } },
      );
    }
    await client.query('begin');
    try {
      if (roleStatement !== '') await client.query(roleStatement);
      await client.query('select pg_advisory_xact_lock(hashtextextended($1, 0))', [
        schemaLockKey(schemaName),
      ]);
      const tenant = await client.query<{ placement: string; status: string }>(
        `select placement, status from ${tenantry}.tenants where id = $1 for update`,
        [tenantId],
      );
      const row = tenant.rows[0];
      if (row === undefined) {
        throw new TenantryError('TENANTRY_ERR_TENANT_NOT_FOUND', `No tenant ${tenantId}.`);
      }
      if (row.placement !== 'pool' || row.status === 'deleted') {
        throw new TenantryError(
          'TENANTRY_ERR_TENANT_STATE_CONFLICT',
          `Tenant ${tenantId} is ${row.status} with placement ${row.placement}; only a pooled tenant can be placed in a schema.`,
          { details: { placement: row.placement, status: row.status } },
        );
      }
      const withRows = await tablesWithRows(client, tenantId);
      if (withRows.length > 0) {
        throw new TenantryError(
          'TENANTRY_ERR_TENANT_STATE_CONFLICT',
          `Tenant ${tenantId} already has rows in the pool (${withRows.join(', ')}); only a tenant without rows can be placed in a schema.`,
          { details: { tables: withRows } },
        );
      }
      const exists = await client.query(
        'select 1 from pg_catalog.pg_namespace where nspname = $1',
        [schemaName],
      );
      if (exists.rowCount !== 0) {
        throw new TenantryError(
          'TENANTRY_ERR_TENANT_STATE_CONFLICT',
          `Schema ${schemaName} already exists; choose another name.`,
        );
      }
      await client.query(`create schema ${schema}`);
      await client.query(
        `grant usage on schema ${schema} to ${quoteIdentifier(settings.roles.app)}, ${quoteIdentifier(settings.roles.analytics)}`,
      );
      await client.query(
        `insert into ${tenantry}.tenant_placements (tenant_id, schema_name) values ($1, $2)`,
        [tenantId, schemaName],
      );
      await client.query(
        `update ${tenantry}.tenants set placement = 'schema', updated_at = now() where id = $1`,
        [tenantId],
      );
      for (const file of ready) {
        try {
          await applyToSchema(client, settings, schemaName, file);
        } catch (error) {
          throw new TenantryError(
            'TENANTRY_ERR_MIGRATION_FAILED',
            `Migration ${file.source}/${file.version}-${file.name} failed in ${schemaName}: ${
              error instanceof Error ? error.message : String(error)
            }`,
            { cause: error, details: { source: file.source, version: file.version } },
          );
        }
      }
      await client.query('reset search_path');
      if (options.verify !== false) {
        const differences = await compareWithPool(client, schemaName);
        if (differences.length > 0) {
          throw new TenantryError(
            'TENANTRY_ERR_MIGRATION_FAILED',
            `The tenant tables of ${schemaName} differ from the pool's (${differences.length} differences, first: ${describe(differences[0] as SchemaDifference)}); are all tenant sources listed?`,
            { details: { differences: differences.slice(0, 50) } },
          );
        }
      }
      await client.query('commit');
    } catch (error) {
      await client.query('rollback').catch(() => undefined);
      throw isTenantryError(error) ? error : toTenantryError(error);
    }
    const durationMs = Math.round(performance.now() - started);
    logger.info({ tenantId, schema: schemaName, durationMs }, 'tenant placed in its own schema');
    return Object.freeze({ tenantId, schema: schemaName, applied: ready.length, durationMs });
  } finally {
    await client.end().catch(() => undefined);
  }
}

function describe(difference: SchemaDifference): string {
  return `${difference.kind} ${difference.table}.${difference.name}: pool ${difference.pool ?? 'none'}, schema ${difference.schema ?? 'none'}`;
}

/**
 * Tenant tables of `public` holding rows of the tenant. Read in the tenant's context (set for
 * this transaction only), since RLS is forced on the owner too.
 */
async function tablesWithRows(client: pg.Client, tenantId: TenantId): Promise<string[]> {
  const tables = await client.query<{ name: string }>(
    `select c.relname as name
       from pg_catalog.pg_class c
       join pg_catalog.pg_namespace n on n.oid = c.relnamespace
       join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped
      where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relispartition
      order by c.relname`,
  );
  if (tables.rows.length === 0) return [];
  await client.query(`select set_config('tenantry.tenant_id', $1, true)`, [tenantId]);
  const probes = tables.rows.map(
    (table) =>
      `select ${quoteLiteralName(table.name)} as name where exists (select 1 from public.${quoteIdentifier(table.name)} where tenant_id = $1)`,
  );
  const found = await client.query<{ name: string }>(probes.join(' union all '), [tenantId]);
  await client.query(`select set_config('tenantry.tenant_id', '', true)`);
  return found.rows.map((row) => row.name);
}

function quoteLiteralName(name: string): string {
  return `'${name.replaceAll("'", "''")}'`;
}

const structureSql = `
  with tables as (
    select c.oid, c.relname, n.nspname
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where n.nspname = any($1::text[]) and c.relkind in ('r', 'p')
       and exists (select 1 from pg_catalog.pg_attribute a
                    where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped)
  )
  select t.nspname as namespace, t.relname as table_name, 'table' as kind, t.relname as name,
         concat_ws(' ', c.relkind, 'rls=' || c.relrowsecurity, 'force=' || c.relforcerowsecurity,
           pg_catalog.pg_get_partkeydef(c.oid), pg_catalog.pg_get_expr(c.relpartbound, c.oid)) as definition
    from tables t join pg_catalog.pg_class c on c.oid = t.oid
  union all
  select t.nspname, t.relname, 'column', a.attname,
         concat_ws(' ', pg_catalog.format_type(a.atttypid, a.atttypmod), case when a.attnotnull then 'not null' end,
           'position ' || a.attnum, case when a.attgenerated <> '' then 'generated' end)
    from tables t join pg_catalog.pg_attribute a on a.attrelid = t.oid and a.attnum > 0 and not a.attisdropped
  union all
  select t.nspname, t.relname, 'constraint', k.conname,
         concat_ws(' ', k.contype, (select r.relname from pg_catalog.pg_class r where r.oid = k.confrelid))
    from tables t join pg_catalog.pg_constraint k on k.conrelid = t.oid
  union all
  select t.nspname, t.relname, 'index', i.relname, pg_catalog.pg_get_indexdef(x.indexrelid)
    from tables t join pg_catalog.pg_index x on x.indrelid = t.oid join pg_catalog.pg_class i on i.oid = x.indexrelid
  union all
  select t.nspname, t.relname, 'policy', p.polname,
         concat_ws(' ', p.polpermissive, p.polcmd, pg_catalog.pg_get_expr(p.polqual, p.polrelid),
           pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid))
    from tables t join pg_catalog.pg_policy p on p.polrelid = t.oid
  union all
  select t.nspname, t.relname, 'trigger', g.tgname, g.tgtype::text || ' ' || g.tgfoid::regproc::text
    from tables t join pg_catalog.pg_trigger g on g.tgrelid = t.oid and not g.tgisinternal
   -- A tenant move's temporary write fence is not part of the schema's shape.
   where g.tgname not like 'tenantry\\_move\\_fence\\_%'`;

/**
 * Compares the tenant tables of a dedicated schema with the pool's (`public`): the tables and
 * partitions, their columns, constraints, indexes, RLS flags, policies and triggers. An empty
 * list means the schema holds the same tenant tables. Trigger functions are compared by name,
 * so a schema's own copy of a trigger function counts as the same.
 *
 * @example
 * ```ts
 * import { compareWithPool } from 'tenantry/placement';
 * const differences = await withClient(adminUrl, (client) => compareWithPool(client, 't_8f14e45fceea'));
 * ```
 */
export async function compareWithPool(
  client: pg.Client | pg.PoolClient,
  schemaName: string,
): Promise<SchemaDifference[]> {
  parseIdentifier(schemaName, 'schema');
  const result = await client.query<{
    namespace: string;
    table_name: string;
    kind: string;
    name: string;
    definition: string | null;
  }>(structureSql, [['public', schemaName]]);
  const normalise = (definition: string | null) =>
    (definition ?? '')
      .replaceAll(`${quoteIdentifier(schemaName)}.`, '')
      .replaceAll(`${schemaName}.`, '')
      .replaceAll('public.', '');
  const pool = new Map<string, string>();
  const own = new Map<string, string>();
  for (const row of result.rows) {
    const key = `${row.table_name}\u0000${row.kind}\u0000${row.name}`;
    (row.namespace === 'public' ? pool : own).set(key, normalise(row.definition));
  }
  const differences: SchemaDifference[] = [];
  for (const key of new Set([...pool.keys(), ...own.keys()])) {
    const inPool = pool.get(key);
    const inSchema = own.get(key);
    if (inPool === inSchema) continue;
    const [table, kind, name] = key.split('\u0000') as [string, string, string];
    differences.push(
      Object.freeze({ table, kind, name, pool: inPool ?? null, schema: inSchema ?? null }),
    );
  }
  return differences.sort((a, b) =>
    `${a.table}.${a.kind}.${a.name}`.localeCompare(`${b.table}.${b.kind}.${b.name}`),
  );
}

/**
 * Compares the tenant tables of another database's `public` schema (a dedicated database) with
 * the pool's, like {@link compareWithPool} does for a schema of the same database.
 *
 * @example
 * ```ts
 * import { compareDatabaseWithPool } from 'tenantry/placement';
 * const differences = await compareDatabaseWithPool(controlClient, dedicatedClient);
 * ```
 */
export async function compareDatabaseWithPool(
  control: pg.Client | pg.PoolClient,
  target: pg.Client | pg.PoolClient,
): Promise<SchemaDifference[]> {
  type Row = { table_name: string; kind: string; name: string; definition: string | null };
  const read = async (client: pg.Client | pg.PoolClient) => {
    const result = await client.query<Row>(structureSql, [['public']]);
    return new Map(
      result.rows.map((row) => [
        `${row.table_name}\u0000${row.kind}\u0000${row.name}`,
        (row.definition ?? '').replaceAll('public.', ''),
      ]),
    );
  };
  const [pool, own] = await Promise.all([read(control), read(target)]);
  const differences: SchemaDifference[] = [];
  for (const key of new Set([...pool.keys(), ...own.keys()])) {
    const inPool = pool.get(key);
    const inTarget = own.get(key);
    if (inPool === inTarget) continue;
    const [table, kind, name] = key.split('\u0000') as [string, string, string];
    differences.push(
      Object.freeze({ table, kind, name, pool: inPool ?? null, schema: inTarget ?? null }),
    );
  }
  return differences.sort((a, b) =>
    `${a.table}.${a.kind}.${a.name}`.localeCompare(`${b.table}.${b.kind}.${b.name}`),
  );
}

/** A migration file replayed in a schema by {@link provisionTenantSchema}. */
export interface ReplayedMigration {
  readonly source: string;
  readonly version: number;
  readonly name: string;
  readonly checksum: string;
}

/** Triggers a tenant move puts on the tables it moves a tenant out of, for the time it lasts. */
export const moveFenceTriggerPrefix = 'tenantry_move_fence_';

/**
 * Creates an empty dedicated schema holding the tenant tables, in the caller's open transaction
 * (connected as, or `SET LOCAL ROLE` to, the owner): creates the schema, grants the app and
 * analytics roles `USAGE`, replays the tenant statements of every file the pool has applied, and
 * compares the result with the pool (a tenant move's write fences excepted). Unlike
 * {@link placeTenantInSchema} it neither records a placement nor looks at the tenant's rows: the
 * caller records the placement, with the files returned, when it routes a tenant there.
 *
 * @example
 * ```ts
 * await client.query('begin');
 * const files = await provisionTenantSchema(client, { schema: 't_8f14e45fceea', sources });
 * await client.query('commit');
 * ```
 */
export async function provisionTenantSchema(
  client: pg.Client,
  options: {
    readonly schema: string;
    readonly sources: readonly MigrationSource[];
    /** Schema of Tenantry's own objects. @defaultValue 'tenantry' */
    readonly tenantrySchema?: string;
    readonly roles?: Partial<RoleNames>;
  },
): Promise<ReplayedMigration[]> {
  const schemaName = parseIdentifier(options.schema, 'schema');
  if (schemaName === 'public' || schemaName.startsWith('pg_')) {
    throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', `Schema ${schemaName} is reserved.`);
  }
  const settings = resolvePlacementSettings(options);
  const files = await readTenantMigrations(options.sources, settings.variables);
  const { ready, waiting } = await poolAppliedFiles(client, settings, files);
  if (waiting.length > 0) {
    const first = waiting[0] as (typeof waiting)[number];
    throw new TenantryError(
      'TENANTRY_ERR_MIGRATION_FAILED',
      `Migration ${first.source}/${first.version}-${first.name} is not applied to the pool yet: run "tenantry migrate" first.`,
      { details: { source: first.source, version: first.version } },
    );
  }
  const exists = await client.query('select 1 from pg_catalog.pg_namespace where nspname = $1', [
    schemaName,
  ]);
  if (exists.rowCount !== 0) {
    throw new TenantryError(
      'TENANTRY_ERR_TENANT_STATE_CONFLICT',
      `Schema ${schemaName} already exists; choose another name.`,
    );
  }
  const schema = quoteIdentifier(schemaName);
  await client.query(`create schema ${schema}`);
  await client.query(
    `grant usage on schema ${schema} to ${quoteIdentifier(settings.roles.app)}, ${quoteIdentifier(settings.roles.analytics)}`,
  );
  await client.query(`set local search_path = ${schema}, public`);
  for (const file of ready) {
    try {
      if (file.tenantSql !== '') await client.query(file.tenantSql);
    } catch (error) {
      throw new TenantryError(
        'TENANTRY_ERR_MIGRATION_FAILED',
        `Migration ${file.source}/${file.version}-${file.name} failed in ${schemaName}: ${
          error instanceof Error ? error.message : String(error)
        }`,
        { cause: error, details: { source: file.source, version: file.version } },
      );
    }
  }
  await client.query('reset search_path');
  const differences = (await compareWithPool(client, schemaName)).filter(
    (difference) =>
      !(difference.kind === 'trigger' && difference.name.startsWith(moveFenceTriggerPrefix)),
  );
  if (differences.length > 0) {
    throw new TenantryError(
      'TENANTRY_ERR_MIGRATION_FAILED',
      `The tenant tables of ${schemaName} differ from the pool's (${differences.length} differences, first: ${describe(differences[0] as SchemaDifference)}); are all tenant sources listed?`,
      { details: { differences: differences.slice(0, 50) } },
    );
  }
  return ready.map((file) =>
    Object.freeze({
      source: file.source,
      version: file.version,
      name: file.name,
      checksum: file.checksum,
    }),
  );
}
