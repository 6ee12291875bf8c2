import pg from 'pg';
import {
  defaultTenantrySchema,
  parseIdentifier,
  quoteIdentifier,
  type RoleNames,
} from '../config.ts';
import { type BootstrapOptions, bootstrapDatabase } from '../database/bootstrap.ts';
import { connectClient } from '../database/client.ts';
import { createNotificationListener } from '../database/notification-listener.ts';
import { toTenantryError } from '../database-errors.ts';
import { isTenantryError, TenantryError } from '../errors.ts';
import { type Logger, silentLogger, summarizeError } from '../logger.ts';
import { type MigrationSource, migrate } from '../migrations/migrate.ts';
import { isUuid, parseTenantId, type TenantId } from '../tenant-id.ts';
import type { TenantConnectionSource } from '../tenantry.ts';
import {
  ownerRoleStatement,
  type PlacementSettings,
  poolAppliedFiles,
  readTenantMigrations,
  resolvePlacementSettings,
  type TenantMigrationFile,
} from './migrate-targets.ts';
import type { PoolRegistry } from './pool-registry.ts';

/** Where a tenant's tables live: the pool, a dedicated schema, or a dedicated database. */
export type TenantPlacement =
  | { readonly kind: 'pool' }
  | { readonly kind: 'schema'; readonly schema: string }
  | { readonly kind: 'database'; readonly connection: string };

/** Options for {@link createPlacementRouter}. */
export interface PlacementRouterOptions {
  /** A role that can read the placement catalog of the control database: the app role can. */
  readonly connectionString: string;
  /**
   * The connections named by database placements. Without it a tenant placed in a dedicated
   * database fails its units of work (`TENANTRY_ERR_CONFIG_INVALID`) instead of being served
   * from the pool.
   */
  readonly registry?: PoolRegistry;
  /** Schema of Tenantry's own objects. @defaultValue 'tenantry' */
  readonly schema?: string;
  /** How long an answer stays cached (changes are also announced). @defaultValue 60000 */
  readonly ttlMs?: number;
  /** Most tenants kept; the least recently used go first. @defaultValue 10000 */
  readonly maxEntries?: number;
  readonly logger?: Logger;
}

/** Routes each tenant's units of work, for `createTenantry({ tenantSchema, tenantPool })`. */
export interface PlacementRouter {
  /** The tenant's placement; a cached answer is returned as is (no promise). */
  readonly placementFor: (tenantId: TenantId) => TenantPlacement | Promise<TenantPlacement>;
  /** The tenant's dedicated schema, or `undefined`: pass it as `tenantSchema`. */
  readonly tenantSchema: (tenantId: TenantId) => string | undefined | Promise<string | undefined>;
  /** The tenant's dedicated database's connections, or `undefined`: pass it as `tenantPool`. */
  readonly tenantPool: (
    tenantId: TenantId,
  ) => TenantConnectionSource | undefined | Promise<TenantConnectionSource | undefined>;
  /** Drops one tenant's cached answer, or all. */
  invalidate(tenantId?: string): void;
  /** Whether the change listener is connected (answers are only cached while it is). */
  readonly isListening: boolean;
  /** Stops listening and closes the catalog connections (not the registry). */
  close(): Promise<void>;
}

interface Entry {
  readonly placement: TenantPlacement;
  readonly expiresAt: number;
}

const pooled: TenantPlacement = Object.freeze({ kind: 'pool' });

/**
 * Creates the router that tells Tenantry where each tenant's tables live: in the pool, in a
 * dedicated schema (`tenantSchema`) or in a dedicated database reached through a connection of
 * the registry (`tenantPool`). Answers are cached per tenant like
 * `createSchemaPlacementRouter`'s: dropped at once on a `tenantry_placements` notification,
 * never cached while the listener is disconnected. A failed read fails the unit of work
 * (`TENANTRY_ERR_DB_UNAVAILABLE`); a tenant placed on a connection this process does not
 * configure fails it with `TENANTRY_ERR_CONFIG_INVALID`. Nothing falls back to the pool.
 *
 * @example
 * ```ts
 * import { createTenantry } from 'tenantry';
 * import { createPlacementRouter, createPoolRegistry } from 'tenantry/placement';
 * const registry = createPoolRegistry({ connections: { acme: acmeAppUrl }, maxConnectionsTotal: 40 });
 * const placements = await createPlacementRouter({ connectionString: appUrl, registry });
 * const tenantry = await createTenantry<DB>({
 *   connectionString: appUrl,
 *   tenantSchema: placements.tenantSchema,
 *   tenantPool: placements.tenantPool,
 * });
 * // on shutdown
 * await tenantry.close();
 * await placements.close();
 * await registry.close();
 * ```
 */
export async function createPlacementRouter(
  options: PlacementRouterOptions,
): Promise<PlacementRouter> {
  if (typeof options?.connectionString !== 'string' || options.connectionString === '') {
    throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'connectionString is required.');
  }
  if (options.registry !== undefined && typeof options.registry?.pool !== 'function') {
    throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'registry must be a pool registry.');
  }
  const ttlMs = options.ttlMs ?? 60_000;
  const maxEntries = options.maxEntries ?? 10_000;
  for (const [key, value] of [
    ['ttlMs', ttlMs],
    ['maxEntries', maxEntries],
  ] as const) {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `${key} must be a non-negative integer.`,
      );
    }
  }
  const registry = options.registry;
  const logger = options.logger ?? silentLogger;
  const schema = quoteIdentifier(
    parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema'),
  );
  const selectSql = `select schema_name, connection_name from ${schema}.tenant_placements where tenant_id = $1`;
  const pool = new pg.Pool({ connectionString: options.connectionString, max: 2 });
  pool.on('error', (error) =>
    logger.warn({ err: summarizeError(error) }, 'placement router connection failed'),
  );

  const cache = new Map<string, Entry>();
  const inFlight = new Map<string, Promise<TenantPlacement>>();
  let closed = false;
  // Bumped on every invalidation: a read that started before a change never caches its answer.
  let generation = 0;

  const invalidate = (tenantId?: string) => {
    generation++;
    if (tenantId === undefined) cache.clear();
    else cache.delete(tenantId.toLowerCase());
  };

  const listener = createNotificationListener({
    connectionString: options.connectionString,
    channel: 'tenantry_placements',
    name: 'placement router',
    logger,
    onNotification: (message) => {
      const payload = message.payload ?? '';
      invalidate(isUuid(payload) ? payload : undefined);
    },
    onConnected: () => invalidate(),
    onDisconnected: () => invalidate(),
  });

  const read = (tenantId: string): Promise<TenantPlacement> => {
    const pending = inFlight.get(tenantId);
    if (pending !== undefined) return pending;
    const started = generation;
    const query = (async () => {
      try {
        const result = await pool.query<{
          schema_name: string | null;
          connection_name: string | null;
        }>(selectSql, [tenantId]);
        const row = result.rows[0];
        const placement: TenantPlacement =
          row?.schema_name != null
            ? Object.freeze({ kind: 'schema', schema: row.schema_name })
            : row?.connection_name != null
              ? Object.freeze({ kind: 'database', connection: row.connection_name })
              : pooled;
        if (listener.isListening && generation === started && ttlMs > 0 && maxEntries > 0) {
          cache.set(tenantId, { placement, expiresAt: Date.now() + ttlMs });
          while (cache.size > maxEntries) {
            const oldest = cache.keys().next().value;
            if (oldest === undefined) break;
            cache.delete(oldest);
          }
        }
        return placement;
      } catch (error) {
        throw new TenantryError(
          'TENANTRY_ERR_DB_UNAVAILABLE',
          "The tenant's placement cannot be read right now; retry shortly.",
          { cause: toTenantryError(error) },
        );
      } finally {
        inFlight.delete(tenantId);
      }
    })();
    inFlight.set(tenantId, query);
    return query;
  };

  try {
    await listener.start();
  } catch (error) {
    await pool.end().catch(() => undefined);
    throw toTenantryError(error);
  }

  const placementFor = (tenantId: TenantId): TenantPlacement | Promise<TenantPlacement> => {
    if (closed) {
      return Promise.reject(
        new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'The placement router is closed.'),
      );
    }
    const entry = cache.get(tenantId);
    if (entry !== undefined && entry.expiresAt > Date.now()) {
      cache.delete(tenantId);
      cache.set(tenantId, entry);
      return entry.placement;
    }
    return read(tenantId);
  };

  const schemaOf = (placement: TenantPlacement) =>
    placement.kind === 'schema' ? placement.schema : undefined;
  const sourceOf = (placement: TenantPlacement) => {
    if (placement.kind !== 'database') return undefined;
    if (registry === undefined) {
      // Never serve a tenant of a dedicated database from the pool's tables.
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `A tenant is placed in a dedicated database (connection "${placement.connection}"); route with a pool registry (createPlacementRouter({ registry })).`,
      );
    }
    return registry.pool(placement.connection);
  };

  return Object.freeze({
    placementFor,
    tenantSchema(tenantId: TenantId) {
      const placement = placementFor(tenantId);
      return placement instanceof Promise ? placement.then(schemaOf) : schemaOf(placement);
    },
    tenantPool(tenantId: TenantId) {
      const placement = placementFor(tenantId);
      if (placement instanceof Promise) return placement.then(sourceOf);
      try {
        return sourceOf(placement);
      } catch (error) {
        return Promise.reject(error);
      }
    },
    invalidate,
    get isListening() {
      return listener.isListening;
    },
    async close() {
      if (closed) return;
      closed = true;
      await listener.close();
      invalidate();
      if (!pool.ended) await pool.end();
    },
  });
}

/** Options for {@link placeTenantInDatabase}. */
export interface PlaceTenantInDatabaseOptions {
  /** The control database (the pool), as its owner or a superuser. */
  readonly controlConnectionString: string;
  /** The dedicated database, as its owner or a superuser; it must exist and have the roles. */
  readonly targetAdminUrl: string;
  /** The connection name the application reaches the database through (see `createPoolRegistry`). */
  readonly connectionName: string;
  readonly tenantId: string;
  /**
   * The application's tenant migration sources, already applied to the pool: their tenant
   * statements run in the dedicated database's `public` schema.
   */
  readonly sources: readonly MigrationSource[];
  /**
   * Sources applied whole to the dedicated database before the tenant statements, after
   * Tenantry's core (always applied): the Tenantry components the tenant statements call, e.g.
   * `billingMigrationSource()` for `tenantry.attach_quota()`.
   * @defaultValue []
   */
  readonly platformSources?: readonly MigrationSource[];
  /** When given, `bootstrapDatabase(bootstrap)` runs first (creates the roles and the database). */
  readonly bootstrap?: BootstrapOptions;
  /** Schema of Tenantry's own objects. @defaultValue 'tenantry' */
  readonly tenantrySchema?: string;
  readonly roles?: Partial<RoleNames>;
  readonly logger?: Logger;
}

/** What {@link placeTenantInDatabase} did. */
export interface DatabasePlacement {
  readonly tenantId: TenantId;
  readonly connectionName: string;
  readonly databaseName: string;
  /** Migration files whose tenant statements ran in the database now (0 when it had them). */
  readonly applied: number;
  readonly durationMs: number;
}

const connectionNamePattern = /^[a-z][a-z0-9_-]{0,62}$/;

/**
 * Places a tenant without rows in a dedicated database: bootstraps it when asked, applies
 * Tenantry's core migrations (and `platformSources`) there, runs the tenant statements of every
 * application file the pool has applied in its `public` schema (files it already ran for another
 * tenant on the same connection are not run again; their checksums must match), and records the
 * placement in the control database (`tenant_placements.connection_name`,
 * `tenants.placement = 'database'`), which notifies the routers. It refuses a tenant that is not
 * pooled or that has rows in any tenant table of the pool (`TENANTRY_ERR_TENANT_STATE_CONFLICT`):
 * moving rows between databases is not supported yet.
 *
 * @example
 * ```ts
 * import { placeTenantInDatabase } from 'tenantry/placement';
 * await placeTenantInDatabase({
 *   controlConnectionString: ownerUrl,
 *   targetAdminUrl: acmeOwnerUrl,
 *   connectionName: 'acme',
 *   tenantId,
 *   sources: [{ name: 'app', directory: 'migrations' }],
 * });
 * ```
 */
export async function placeTenantInDatabase(
  options: PlaceTenantInDatabaseOptions,
): Promise<DatabasePlacement> {
  const started = performance.now();
  const tenantId = parseTenantId(options.tenantId);
  const connectionName = options.connectionName;
  if (typeof connectionName !== 'string' || !connectionNamePattern.test(connectionName)) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `connectionName must match ${connectionNamePattern}.`,
    );
  }
  for (const key of ['controlConnectionString', 'targetAdminUrl'] as const) {
    if (typeof options[key] !== 'string' || options[key] === '') {
      throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', `${key} is required.`);
    }
  }
  const logger = options.logger ?? silentLogger;
  const settings = resolvePlacementSettings(options);
  const tenantry = quoteIdentifier(settings.schema);
  const files = await readTenantMigrations(options.sources, settings.variables);

  if (options.bootstrap !== undefined) await bootstrapDatabase(options.bootstrap);
  await migrate({
    connectionString: options.targetAdminUrl,
    schema: settings.schema,
    roles: settings.roles,
    sources: options.platformSources ?? [],
    logger,
  });

  const control = await connectClient(options.controlConnectionString);
  let target: pg.Client | undefined;
  try {
    target = await connectClient(options.targetAdminUrl);
    const databaseName = (await target.query<{ name: string }>('select current_database() as name'))
      .rows[0]?.name as string;
    const controlDatabase = (
      await control.query<{ name: string; port: string }>(
        `select current_database() as name, current_setting('port') as port`,
      )
    ).rows[0];
    const targetPort = (
      await target.query<{ port: string }>(`select current_setting('port') as port`)
    ).rows[0]?.port;
    if (
      controlDatabase?.name === databaseName &&
      controlDatabase.port === targetPort &&
      (await sameServer(control, target))
    ) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        'The dedicated database is the control database itself; place the tenant in a schema instead.',
      );
    }

    await control.query('begin');
    await target.query('begin');
    try {
      const controlRole = await ownerRoleStatement(control, settings.roles.owner);
      if (controlRole !== '') await control.query(controlRole);
      const targetRole = await ownerRoleStatement(target, settings.roles.owner);
      if (targetRole !== '') await target.query(targetRole);

      const tenant = await control.query<{ placement: string }>(
        `select placement from ${tenantry}.tenants where id = $1 for update`,
        [tenantId],
      );
      const placement = tenant.rows[0]?.placement;
      if (placement === undefined) {
        throw new TenantryError(
          'TENANTRY_ERR_TENANT_NOT_FOUND',
          `Tenant ${tenantId} does not exist.`,
        );
      }
      if (placement !== 'pool') {
        throw new TenantryError(
          'TENANTRY_ERR_TENANT_STATE_CONFLICT',
          `Tenant ${tenantId} is already placed (${placement}).`,
        );
      }
      const withRows = await tablesWithRows(control, tenantId);
      if (withRows.length > 0) {
        throw new TenantryError(
          'TENANTRY_ERR_TENANT_STATE_CONFLICT',
          `Tenant ${tenantId} already has rows in ${withRows.join(', ')}; move it with moveTenant({ to: 'database' }) ("tenantry tenants move --to database").`,
          { details: { tables: withRows } },
        );
      }
      const { ready, waiting } = await poolAppliedFiles(control, settings, files);
      if (waiting.length > 0) {
        const first = waiting[0] as (typeof waiting)[number];
        throw new TenantryError(
          'TENANTRY_ERR_MIGRATION_FAILED',
          `Migration ${first.source}/${first.version}-${first.name} is not applied to the pool yet: run "tenantry migrate" first.`,
          { details: { source: first.source, version: first.version } },
        );
      }
      const applied = (
        await applyTenantFilesToDatabase(control, target, settings, ready, {
          connectionName,
          databaseName,
        })
      ).length;
      await control.query(
        `insert into ${tenantry}.tenant_placements (tenant_id, connection_name, database_name)
         values ($1, $2, $3)`,
        [tenantId, connectionName, databaseName],
      );
      await control.query(
        `update ${tenantry}.tenants set placement = 'database', updated_at = now() where id = $1`,
        [tenantId],
      );
      // The target commits first: a committed catalog row must never name tables that do not exist.
      await target.query('commit');
      await control.query('commit');
      const durationMs = Math.round(performance.now() - started);
      logger.info(
        { tenantId, connectionName, databaseName, applied, durationMs },
        'tenant placed in a dedicated database',
      );
      return Object.freeze({ tenantId, connectionName, databaseName, applied, durationMs });
    } catch (error) {
      await target.query('rollback').catch(() => undefined);
      await control.query('rollback').catch(() => undefined);
      throw isTenantryError(error) ? error : toTenantryError(error);
    }
  } finally {
    await target?.end().catch(() => undefined);
    await control.end().catch(() => undefined);
  }
}

export async function sameServer(control: pg.Client, target: pg.Client): Promise<boolean> {
  const sql = `select system_identifier::text as id from pg_catalog.pg_control_system()`;
  try {
    const [a, b] = await Promise.all([control.query(sql), target.query(sql)]);
    return a.rows[0]?.id === b.rows[0]?.id;
  } catch {
    return true;
  }
}

/** Tenant tables of the pool's `public` holding rows of the tenant, read in its context. */
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
  const found: string[] = [];
  for (const table of tables.rows) {
    const probe = await client.query(
      `select 1 from public.${quoteIdentifier(table.name)} where tenant_id = $1 limit 1`,
      [tenantId],
    );
    if (probe.rowCount !== 0) found.push(table.name);
  }
  await client.query(`select set_config('tenantry.tenant_id', '', true)`);
  return found;
}

/**
 * Runs, in `target` (a dedicated database, in the caller's open transaction, as its owner), the
 * tenant statements of every file of `ready` it has not run yet, in its `public` schema. The
 * database records what it ran in its own `tenantry.tenant_migrations`, in the same transaction
 * as the statements, so a crash between the two databases never runs a file twice; the control
 * database's `database_placement_migrations` mirrors it (in the caller's transaction on
 * `control`). A file recorded with another checksum fails (`TENANTRY_ERR_MIGRATION_CHANGED`).
 * Returns the files run now.
 */
export async function applyTenantFilesToDatabase(
  control: pg.Client,
  target: pg.Client,
  settings: PlacementSettings,
  ready: readonly TenantMigrationFile[],
  names: { readonly connectionName: string; readonly databaseName: string },
): Promise<TenantMigrationFile[]> {
  const tenantry = quoteIdentifier(settings.schema);
  // Serialises runs on one database: the second waits and sees the first's files.
  await target.query('select pg_advisory_xact_lock(hashtextextended($1, 0))', [
    `tenantry:placement:database:${settings.schema}`,
  ]);
  await target.query(
    `create table if not exists ${tenantry}.tenant_migrations (
       source text not null,
       version integer not null,
       name text not null,
       checksum text not null,
       applied_at timestamptz not null default now(),
       primary key (source, version)
     )`,
  );
  await target.query(`revoke all on ${tenantry}.tenant_migrations from public`);
  const recorded = await target.query<{ source: string; version: number; checksum: string }>(
    `select source, version, checksum from ${tenantry}.tenant_migrations`,
  );
  const done = new Map(recorded.rows.map((row) => [`${row.source}:${row.version}`, row.checksum]));
  const applied: TenantMigrationFile[] = [];
  await target.query('set local search_path = public');
  for (const file of ready) {
    const checksum = done.get(`${file.source}:${file.version}`);
    if (checksum !== undefined) {
      if (checksum !== file.checksum) {
        throw new TenantryError(
          'TENANTRY_ERR_MIGRATION_CHANGED',
          `Migration ${file.source}/${file.version}-${file.name} differs from the one database ${names.databaseName} ran.`,
          { details: { source: file.source, version: file.version } },
        );
      }
      continue;
    }
    try {
      if (file.tenantSql !== '') await target.query(file.tenantSql);
    } catch (error) {
      throw new TenantryError(
        'TENANTRY_ERR_MIGRATION_FAILED',
        `Migration ${file.source}/${file.version}-${file.name} failed in database ${names.databaseName}: ${
          error instanceof Error ? error.message : String(error)
        }`,
        { cause: error, details: { source: file.source, version: file.version } },
      );
    }
    await target.query(
      `insert into ${tenantry}.tenant_migrations (source, version, name, checksum) values ($1, $2, $3, $4)`,
      [file.source, file.version, file.name, file.checksum],
    );
    applied.push(file);
  }
  await target.query('reset search_path');
  for (const file of ready) {
    await control.query(
      `insert into ${tenantry}.database_placement_migrations
         (connection_name, database_name, source, version, name, checksum)
       values ($1, $2, $3, $4, $5, $6)
       on conflict (connection_name, database_name, source, version) do nothing`,
      [
        names.connectionName,
        names.databaseName,
        file.source,
        file.version,
        file.name,
        file.checksum,
      ],
    );
  }
  return applied;
}
