import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type pg from 'pg';
import {
  defaultTenantrySchema,
  parseIdentifier,
  quoteIdentifier,
  type RoleNames,
  resolveRoleNames,
} from '../config.ts';
import { connectClient } from '../database/client.ts';
import { isTenantryError, TenantryError, type TenantryErrorCode } from '../errors.ts';
import { type Logger, silentLogger } from '../logger.ts';
import { type MigrationSource, substituteVariables } from '../migrations/migrate.ts';
import { applyTenantFilesToDatabase } from './database-targets.ts';
import { splitMigrationStatements } from './tenant-statements.ts';

/** A migration file of a tenant source, with the statements a dedicated schema runs. */
export interface TenantMigrationFile {
  readonly source: string;
  readonly version: number;
  readonly name: string;
  readonly checksum: string;
  /** The file's tenant statements (variables substituted), joined; empty when it has none. */
  readonly tenantSql: string;
}

const fileNamePattern = /^(\d+)[-_]([a-z0-9][a-z0-9_-]*)\.sql$/;

/**
 * Reads the tenant sources' files in order, as `migrate()` does (same names, same checksums),
 * keeping the statements a dedicated schema runs.
 */
export async function readTenantMigrations(
  sources: readonly MigrationSource[],
  variables: Readonly<Record<string, string>>,
): Promise<TenantMigrationFile[]> {
  const names = new Set<string>();
  const files: TenantMigrationFile[] = [];
  for (const source of sources) {
    if (names.has(source.name)) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `Migration source "${source.name}" is listed twice.`,
      );
    }
    names.add(source.name);
    let entries: string[];
    try {
      entries = await readdir(source.directory);
    } catch (error) {
      throw new TenantryError(
        'TENANTRY_ERR_MIGRATION_INVALID_FILE',
        `Cannot read migration folder ${source.directory} for source "${source.name}".`,
        { cause: error },
      );
    }
    const ofSource: TenantMigrationFile[] = [];
    for (const entry of entries) {
      if (!entry.endsWith('.sql')) continue;
      const match = fileNamePattern.exec(entry);
      if (match === null) {
        throw new TenantryError(
          'TENANTRY_ERR_MIGRATION_INVALID_FILE',
          `Migration file ${join(source.directory, entry)} must be named <number>-<name>.sql (lowercase).`,
        );
      }
      const text = await readFile(join(source.directory, entry), 'utf8');
      let statements: ReturnType<typeof splitMigrationStatements>;
      try {
        statements = splitMigrationStatements(substituteVariables(text, variables));
      } catch (error) {
        if (!isTenantryError(error)) throw error;
        throw new TenantryError(error.code, `${join(source.directory, entry)}: ${error.message}`, {
          cause: error,
          details: error.details,
        });
      }
      ofSource.push({
        source: source.name,
        version: Number.parseInt(match[1] ?? '', 10),
        name: match[2] ?? entry,
        checksum: createHash('sha256').update(text).digest('hex'),
        tenantSql: statements
          .filter((statement) => statement.scope === 'tenant')
          .map((statement) => `${statement.sql};`)
          .join('\n'),
      });
    }
    files.push(...ofSource.sort((a, b) => a.version - b.version));
  }
  return files;
}

/** Names, roles and variables every placement operation needs. */
export interface PlacementSettings {
  readonly schema: string;
  readonly roles: RoleNames;
  readonly variables: Readonly<Record<string, string>>;
}

export function resolvePlacementSettings(options: {
  readonly tenantrySchema?: string;
  readonly roles?: Partial<RoleNames>;
}): PlacementSettings {
  const schema = parseIdentifier(options.tenantrySchema ?? defaultTenantrySchema, 'tenantrySchema');
  const roles = resolveRoleNames(options.roles);
  return Object.freeze({
    schema,
    roles,
    variables: Object.freeze({
      tenantry_schema: schema,
      owner_role: roles.owner,
      app_role: roles.app,
      analytics_role: roles.analytics,
    }),
  });
}

/** `SET LOCAL ROLE <owner>` when connected as another role (a superuser), so the owner owns all. */
export async function ownerRoleStatement(client: pg.Client, owner: string): Promise<string> {
  const result = await client.query<{ current: string; exists: boolean }>(
    'select current_user as current, exists (select 1 from pg_roles where rolname = $1) as exists',
    [owner],
  );
  const row = result.rows[0];
  if (row === undefined || !row.exists) {
    throw new TenantryError(
      'TENANTRY_ERR_MIGRATION_FAILED',
      `Role "${owner}" does not exist. Run "tenantry setup" as a superuser first.`,
    );
  }
  return row.current === owner ? '' : `set local role ${quoteIdentifier(owner)}`;
}

/**
 * The files of the tenant sources that the pool has applied (same checksum), in order, and the
 * ones it has not: a dedicated schema never runs a file before the pool, whose shared statements
 * it may depend on. Per source, everything after the first file the pool lacks waits.
 */
export async function poolAppliedFiles(
  client: pg.Client,
  settings: PlacementSettings,
  files: readonly TenantMigrationFile[],
): Promise<{ ready: TenantMigrationFile[]; waiting: TenantMigrationFile[] }> {
  const result = await client.query<{ source: string; version: number; checksum: string }>(
    `select source, version, checksum from ${quoteIdentifier(settings.schema)}.migrations`,
  );
  const applied = new Map(result.rows.map((row) => [`${row.source}:${row.version}`, row.checksum]));
  const ready: TenantMigrationFile[] = [];
  const waiting: TenantMigrationFile[] = [];
  const blocked = new Set<string>();
  for (const file of files) {
    const checksum = applied.get(`${file.source}:${file.version}`);
    if (checksum !== undefined && checksum !== file.checksum) {
      throw new TenantryError(
        'TENANTRY_ERR_MIGRATION_CHANGED',
        `Migration ${file.source}/${file.version}-${file.name} differs from the one the pool applied. ` +
          'Migrations are forward-only: restore the file and add a new migration instead.',
        { details: { source: file.source, version: file.version } },
      );
    }
    if (checksum === undefined || blocked.has(file.source)) {
      blocked.add(file.source);
      waiting.push(file);
    } else ready.push(file);
  }
  return { ready, waiting };
}

/**
 * Runs one file's tenant statements in `schemaName` (the search path points there, then at
 * `public` for shared objects) and records it, in the caller's open transaction.
 */
export async function applyToSchema(
  client: pg.Client,
  settings: PlacementSettings,
  schemaName: string,
  file: TenantMigrationFile,
): Promise<void> {
  await client.query(`set local search_path = ${quoteIdentifier(schemaName)}, public`);
  if (file.tenantSql !== '') await client.query(file.tenantSql);
  await client.query(
    `insert into ${quoteIdentifier(settings.schema)}.placement_migrations
       (schema_name, source, version, name, checksum) values ($1, $2, $3, $4, $5)`,
    [schemaName, file.source, file.version, file.name, file.checksum],
  );
}

/**
 * The environment variable the CLI reads a dedicated database's owner URL from:
 * `TENANTRY_CONNECTION_<NAME>_URL`, the connection name upper-cased with `-` as `_`.
 *
 * @example
 * ```ts
 * connectionUrlVariable('eu-1'); // 'TENANTRY_CONNECTION_EU_1_URL'
 * ```
 */
export function connectionUrlVariable(connection: string): string {
  return `TENANTRY_CONNECTION_${connection.toUpperCase().replaceAll('-', '_')}_URL`;
}

/** The advisory lock key that serialises provisioning and migrating one dedicated schema. */
export function schemaLockKey(schemaName: string): string {
  return `tenantry:placement:${schemaName}`;
}

/** Options for {@link migrateTargets}. */
export interface MigrateTargetsOptions {
  /** The owner role's URL, or a superuser's (statements then run as the owner). */
  readonly connectionString: string;
  /**
   * The application's tenant migration sources, the same ones `migrate()` applies to the pool
   * (their shared statements run only there).
   */
  readonly sources: readonly MigrationSource[];
  /** Dedicated schemas and databases migrated at once, each on its own connection. @defaultValue 4 */
  readonly concurrency?: number;
  /**
   * Owner (or superuser) URLs of the dedicated databases, by connection name. A dedicated
   * database whose connection has no URL here is reported `failed` (the others go on).
   * @defaultValue {}
   */
  readonly databases?: Readonly<Record<string, string>>;
  /** Schema of Tenantry's own objects. @defaultValue 'tenantry' */
  readonly tenantrySchema?: string;
  readonly roles?: Partial<RoleNames>;
  /** Called after each target, with how many are done. */
  readonly onProgress?: (progress: MigrateTargetsProgress) => void;
  readonly logger?: Logger;
}

/** What happened to one dedicated schema in {@link migrateTargets}. */
export interface TargetMigrationResult {
  /** The tenant placed in the schema; for a dedicated database, the first of its tenants. */
  readonly tenantId: string;
  /** The dedicated schema, or `public` for a dedicated database. */
  readonly schema: string;
  /** For a dedicated database: its connection name and database name. */
  readonly connection?: string;
  readonly database?: string;
  /**
   * `migrated`: files applied; `up-to-date`: nothing to do; `failed`: a file failed and was
   * rolled back, the ones before it stay applied; `busy`: another migrator holds this schema.
   */
  readonly status: 'migrated' | 'up-to-date' | 'failed' | 'busy';
  readonly applied: readonly { readonly source: string; readonly version: number }[];
  readonly error?: {
    readonly code: TenantryErrorCode;
    readonly message: string;
    readonly source?: string;
    readonly version?: number;
  };
  readonly durationMs: number;
}

/** Progress of {@link migrateTargets}: reported once per finished target. */
export interface MigrateTargetsProgress {
  readonly done: number;
  readonly total: number;
  readonly target: TargetMigrationResult;
}

/** What {@link migrateTargets} did. */
export interface MigrateTargetsSummary {
  readonly total: number;
  readonly migrated: number;
  readonly upToDate: number;
  readonly failed: readonly TargetMigrationResult[];
  readonly busy: readonly TargetMigrationResult[];
  /** Files the pool has not applied yet: run `tenantry migrate` first; no schema got them. */
  readonly waitingForPool: readonly { readonly source: string; readonly version: number }[];
  readonly results: readonly TargetMigrationResult[];
  readonly durationMs: number;
}

type Target =
  | { readonly kind: 'schema'; readonly tenantId: string; readonly schema: string }
  | {
      readonly kind: 'database';
      readonly tenantId: string;
      readonly connection: string;
      readonly database: string;
    };

/**
 * Applies the tenant statements of the application's migration files to every dedicated schema,
 * `concurrency` schemas at a time. Each schema is tracked on its own (`placement_migrations`),
 * each file runs in its own transaction, and only files the pool has already applied are run.
 * A failing file stops its schema only: the others go on, and the summary lists the failure.
 * Running it again applies only what is missing; a schema another migrator is working on is
 * reported `busy`, not waited for.
 *
 * @example
 * ```ts
 * import { migrateTargets } from 'tenantry/placement';
 * const summary = await migrateTargets({
 *   connectionString: adminUrl,
 *   sources: [{ name: 'app', directory: 'app/migrations' }],
 *   concurrency: 8,
 *   onProgress: ({ done, total }) => process.stderr.write(`\r${done}/${total}`),
 * });
 * if (summary.failed.length > 0) process.exitCode = 1;
 * ```
 */
export async function migrateTargets(
  options: MigrateTargetsOptions,
): Promise<MigrateTargetsSummary> {
  const started = performance.now();
  const concurrency = options.concurrency ?? 4;
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 64) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'concurrency must be an integer from 1 to 64.',
    );
  }
  const logger = options.logger ?? silentLogger;
  const settings = resolvePlacementSettings(options);
  const files = await readTenantMigrations(options.sources, settings.variables);
  const tenantry = quoteIdentifier(settings.schema);

  const main = await connectClient(options.connectionString);
  let ready: TenantMigrationFile[];
  let waiting: TenantMigrationFile[];
  let targets: Target[];
  try {
    ({ ready, waiting } = await poolAppliedFiles(main, settings, files));
    const listed = await main.query<{ tenant_id: string; schema_name: string }>(
      `select tenant_id, schema_name from ${tenantry}.tenant_placements
        where schema_name is not null order by schema_name`,
    );
    targets = listed.rows.map((row) => ({
      kind: 'schema' as const,
      tenantId: row.tenant_id,
      schema: row.schema_name,
    }));
    const databases = await main.query<{
      tenant_id: string;
      connection_name: string;
      database_name: string;
    }>(
      `select min(tenant_id::text) as tenant_id, connection_name, database_name
         from ${tenantry}.tenant_placements where connection_name is not null
        group by connection_name, database_name order by connection_name, database_name`,
    );
    for (const row of databases.rows) {
      targets.push({
        kind: 'database',
        tenantId: row.tenant_id,
        connection: row.connection_name,
        database: row.database_name,
      });
    }
  } finally {
    await main.end().catch(() => undefined);
  }

  const results: TargetMigrationResult[] = [];
  let next = 0;
  const worker = async () => {
    if (next >= targets.length) return;
    const client = await connectClient(options.connectionString);
    try {
      const roleStatement = await ownerRoleStatement(client, settings.roles.owner);
      while (next < targets.length) {
        const target = targets[next++] as Target;
        const result =
          target.kind === 'schema'
            ? await migrateTarget(client, settings, roleStatement, target, ready)
            : await migrateDatabaseTarget(
                client,
                settings,
                roleStatement,
                target,
                ready,
                options.databases ?? {},
              );
        results.push(result);
        if (result.status === 'failed') {
          logger.warn(
            { schema: result.schema, database: result.database, error: result.error },
            'dedicated target failed',
          );
        }
        options.onProgress?.({ done: results.length, total: targets.length, target: result });
      }
    } finally {
      await client.end().catch(() => undefined);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, targets.length) }, worker));

  const byStatus = (status: TargetMigrationResult['status']) =>
    results.filter((result) => result.status === status);
  return Object.freeze({
    total: targets.length,
    migrated: byStatus('migrated').length,
    upToDate: byStatus('up-to-date').length,
    failed: Object.freeze(byStatus('failed')),
    busy: Object.freeze(byStatus('busy')),
    waitingForPool: Object.freeze(
      waiting.map((file) => Object.freeze({ source: file.source, version: file.version })),
    ),
    results: Object.freeze(results),
    durationMs: Math.round(performance.now() - started),
  });
}

/** A target's result, as {@link migrateTargets} reports it. */
function targetResult(
  target: Target,
  started: number,
  applied: readonly { source: string; version: number }[],
  status: TargetMigrationResult['status'],
  error?: TargetMigrationResult['error'],
): TargetMigrationResult {
  return Object.freeze({
    tenantId: target.tenantId,
    ...(target.kind === 'schema'
      ? { schema: target.schema }
      : { schema: 'public', connection: target.connection, database: target.database }),
    status,
    applied: Object.freeze([...applied]),
    ...(error === undefined ? {} : { error: Object.freeze(error) }),
    durationMs: Math.round(performance.now() - started),
  });
}

async function migrateTarget(
  client: pg.Client,
  settings: PlacementSettings,
  roleStatement: string,
  target: Extract<Target, { kind: 'schema' }>,
  ready: readonly TenantMigrationFile[],
): Promise<TargetMigrationResult> {
  const started = performance.now();
  const applied: { source: string; version: number }[] = [];
  const finish = (
    status: TargetMigrationResult['status'],
    error?: TargetMigrationResult['error'],
  ) => targetResult(target, started, applied, status, error);
  const lockKey = schemaLockKey(target.schema);
  const locked = await client.query<{ locked: boolean }>(
    'select pg_try_advisory_lock(hashtextextended($1, 0)) as locked',
    [lockKey],
  );
  if (locked.rows[0]?.locked !== true) return finish('busy');
  let current: TenantMigrationFile | undefined;
  try {
    // Read under the lock: what another run applied meanwhile is not applied twice.
    const done = await client.query<{ source: string; version: number; checksum: string }>(
      `select source, version, checksum from ${quoteIdentifier(settings.schema)}.placement_migrations
        where schema_name = $1`,
      [target.schema],
    );
    const checksums = new Map(
      done.rows.map((row) => [`${row.source}:${row.version}`, row.checksum]),
    );
    for (const file of ready) {
      const checksum = checksums.get(`${file.source}:${file.version}`);
      if (checksum === undefined) continue;
      if (checksum !== file.checksum) {
        return finish('failed', {
          code: 'TENANTRY_ERR_MIGRATION_CHANGED',
          message: `Migration ${file.source}/${file.version}-${file.name} was changed after it was applied to ${target.schema}.`,
          source: file.source,
          version: file.version,
        });
      }
    }
    for (const file of ready) {
      if (checksums.has(`${file.source}:${file.version}`)) continue;
      current = file;
      await client.query('begin');
      try {
        if (roleStatement !== '') await client.query(roleStatement);
        await applyToSchema(client, settings, target.schema, file);
        await client.query('commit');
      } catch (error) {
        await client.query('rollback').catch(() => undefined);
        throw error;
      }
      applied.push({ source: file.source, version: file.version });
    }
    return finish(applied.length === 0 ? 'up-to-date' : 'migrated');
  } catch (error) {
    return finish('failed', {
      code: 'TENANTRY_ERR_MIGRATION_FAILED',
      message: `Migration ${current?.source}/${current?.version}-${current?.name} failed in ${target.schema} and was rolled back: ${
        error instanceof Error ? error.message : String(error)
      }`,
      ...(current === undefined ? {} : { source: current.source, version: current.version }),
    });
  } finally {
    await client
      .query('select pg_advisory_unlock(hashtextextended($1, 0))', [lockKey])
      .catch(() => undefined);
  }
}

/**
 * Applies the missing files to one dedicated database, one transaction per file on each side:
 * the database commits the file's statements with its own record first, then the control
 * database its mirror (see `applyTenantFilesToDatabase`).
 */
async function migrateDatabaseTarget(
  control: pg.Client,
  settings: PlacementSettings,
  roleStatement: string,
  target: Extract<Target, { kind: 'database' }>,
  ready: readonly TenantMigrationFile[],
  databases: Readonly<Record<string, string>>,
): Promise<TargetMigrationResult> {
  const started = performance.now();
  const applied: { source: string; version: number }[] = [];
  const finish = (
    status: TargetMigrationResult['status'],
    error?: TargetMigrationResult['error'],
  ) => targetResult(target, started, applied, status, error);
  const url = databases[target.connection];
  if (url === undefined) {
    return finish('failed', {
      code: 'TENANTRY_ERR_CONFIG_INVALID',
      message: `No URL for the dedicated database of connection "${target.connection}" (${target.database}): set ${connectionUrlVariable(target.connection)}.`,
    });
  }
  let remote: pg.Client | undefined;
  let current: TenantMigrationFile | undefined;
  try {
    remote = await connectClient(url);
    const name = (await remote.query<{ name: string }>('select current_database() as name')).rows[0]
      ?.name;
    if (name !== target.database) {
      return finish('failed', {
        code: 'TENANTRY_ERR_CONFIG_INVALID',
        message: `The URL of connection "${target.connection}" leads to database ${name}, not ${target.database}.`,
      });
    }
    const remoteRole = await ownerRoleStatement(remote, settings.roles.owner);
    for (const file of ready) {
      current = file;
      await control.query('begin');
      await remote.query('begin');
      try {
        if (roleStatement !== '') await control.query(roleStatement);
        if (remoteRole !== '') await remote.query(remoteRole);
        const ran = await applyTenantFilesToDatabase(control, remote, settings, [file], {
          connectionName: target.connection,
          databaseName: target.database,
        });
        await remote.query('commit');
        await control.query('commit');
        if (ran.length > 0) applied.push({ source: file.source, version: file.version });
      } catch (error) {
        await remote.query('rollback').catch(() => undefined);
        await control.query('rollback').catch(() => undefined);
        throw error;
      }
    }
    return finish(applied.length === 0 ? 'up-to-date' : 'migrated');
  } catch (error) {
    const code = isTenantryError(error) ? error.code : 'TENANTRY_ERR_MIGRATION_FAILED';
    return finish('failed', {
      code: code === 'TENANTRY_ERR_MIGRATION_CHANGED' ? code : 'TENANTRY_ERR_MIGRATION_FAILED',
      message: `Migration ${current?.source}/${current?.version}-${current?.name} failed in database ${target.database} and was rolled back: ${
        error instanceof Error ? error.message : String(error)
      }`,
      ...(current === undefined ? {} : { source: current.source, version: current.version }),
    });
  } finally {
    await remote?.end().catch(() => undefined);
  }
}
