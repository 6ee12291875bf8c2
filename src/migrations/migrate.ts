import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Kysely, sql } from 'kysely';
import pg from 'pg';
import {
  defaultTenantrySchema,
  parseIdentifier,
  quoteIdentifier,
  quoteLiteral,
  type RoleNames,
  resolveRoleNames,
} from '../config.ts';
import { TenantryError } from '../errors.ts';
import { type Logger, silentLogger } from '../logger.ts';

/** A folder of numbered `.sql` migration files, tracked under its own name. */
export interface MigrationSource {
  /** Name the applied versions are recorded under, e.g. `'app'`. */
  readonly name: string;
  /** Folder holding files named `<number>-<name>.sql` (or `<number>_<name>.sql`). */
  readonly directory: string;
  /**
   * Runs before this source's pending files, under the migration lock, with the migrator's
   * connection string and owner role: for a component that installs its own schema with its own
   * migrator (the job runner does). It must be idempotent; it runs on every `migrate()`.
   */
  readonly before?: (context: {
    readonly connectionString: string;
    readonly ownerRole: string;
    readonly logger: Logger;
  }) => Promise<void>;
}

/** Options for {@link migrate}. */
export interface MigrateOptions {
  /**
   * Connection as the owner role, or as a superuser / member of the owner role (migrations then
   * run with `SET LOCAL ROLE <owner>` so the owner owns every object).
   */
  readonly connectionString: string;
  /** Schema for Tenantry's own objects. @defaultValue 'tenantry' */
  readonly schema?: string;
  /** Role names. @defaultValue {@link defaultRoleNames} */
  readonly roles?: Partial<RoleNames>;
  /**
   * The application's migration folders, applied after Tenantry's core migrations.
   * @defaultValue []
   */
  readonly sources?: readonly MigrationSource[];
  /** Progress lines at info level. @defaultValue a silent logger */
  readonly logger?: Logger;
}

/** One migration file applied by {@link migrate}. */
export interface AppliedMigration {
  readonly source: string;
  readonly version: number;
  readonly name: string;
  readonly durationMs: number;
}

/** What {@link migrate} did. */
export interface MigrateSummary {
  readonly applied: readonly AppliedMigration[];
  /** Files that were already applied (checksums verified). */
  readonly upToDate: number;
}

interface MigrationFile {
  readonly version: number;
  readonly name: string;
  readonly path: string;
  readonly sql: string;
  readonly checksum: string;
}

const fileNamePattern = /^(\d+)[-_]([a-z0-9][a-z0-9_-]*)\.sql$/;

/**
 * The folder of Tenantry's own migrations (applied first, under the source name `tenantry`).
 *
 * @example
 * ```ts
 * import { coreMigrationsDirectory } from 'tenantry';
 * console.log(coreMigrationsDirectory);
 * ```
 */
export const coreMigrationsDirectory = fileURLToPath(new URL('../../sql/', import.meta.url));

/**
 * Applies Tenantry's core migrations, then each application source, in order.
 *
 * Forward-only: each file runs in its own transaction and is recorded with its checksum in
 * `<schema>.migrations`; an applied file that changed is an error. A session advisory lock
 * makes concurrent migrators wait for each other. Files may use the psql-style variables
 * `:"tenantry_schema"`, `:"owner_role"`, `:"app_role"`, `:"analytics_role"` (identifiers)
 * and `:'name'` (literals).
 *
 * @example
 * ```ts
 * import { migrate } from 'tenantry';
 * const summary = await migrate({
 *   connectionString: process.env.DATABASE_URL,
 *   sources: [{ name: 'app', directory: 'migrations' }],
 * });
 * console.log(`${summary.applied.length} applied`);
 * ```
 */
export async function migrate(options: MigrateOptions): Promise<MigrateSummary> {
  const logger = options.logger ?? silentLogger;
  const schema = parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema');
  const roles = resolveRoleNames(options.roles);
  const sources: MigrationSource[] = [
    { name: 'tenantry', directory: coreMigrationsDirectory },
    ...(options.sources ?? []),
  ];
  const names = new Set<string>();
  for (const source of sources) {
    if (names.has(source.name)) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `Migration source "${source.name}" is listed twice.`,
      );
    }
    names.add(source.name);
  }
  const plan = await Promise.all(
    sources.map(async (source) => ({ source, files: await readMigrationFiles(source) })),
  );
  const variables = {
    tenantry_schema: schema,
    owner_role: roles.owner,
    app_role: roles.app,
    analytics_role: roles.analytics,
  };

  const client = new pg.Client({ connectionString: options.connectionString });
  client.on('error', () => {});
  await client.connect();
  try {
    const lockKey = `tenantry:migrate:${schema}`;
    const locked = await client.query<{ locked: boolean }>(
      'select pg_try_advisory_lock(hashtextextended($1, 0)) as locked',
      [lockKey],
    );
    if (locked.rows[0]?.locked !== true) {
      logger.info({ schema }, 'another migrator holds the lock; waiting for it to finish');
      await client.query('select pg_advisory_lock(hashtextextended($1, 0))', [lockKey]);
    }
    try {
      const asOwner = await needsSetRole(client, roles.owner);
      const roleStatement = asOwner ? `set local role ${quoteIdentifier(roles.owner)};` : '';
      try {
        await client.query(
          `begin; ${roleStatement}
           create schema if not exists ${quoteIdentifier(schema)};
           create table if not exists ${quoteIdentifier(schema)}.migrations (
             source text not null,
             version integer not null,
             name text not null,
             checksum text not null,
             applied_at timestamptz not null default now(),
             primary key (source, version)
           );
           commit;`,
        );
      } catch (error) {
        await client.query('rollback').catch(() => undefined);
        throw new TenantryError(
          'TENANTRY_ERR_MIGRATION_FAILED',
          `Cannot create the migrations table ${schema}.migrations as role "${roles.owner}": ${
            error instanceof Error ? error.message : String(error)
          }`,
          { cause: error },
        );
      }
      const appliedRows = await client.query<{
        source: string;
        version: number;
        name: string;
        checksum: string;
      }>(`select source, version, name, checksum from ${quoteIdentifier(schema)}.migrations`);
      const applied = new Map(appliedRows.rows.map((row) => [`${row.source}:${row.version}`, row]));
      // Every applied file is verified before anything runs: a changed file in a later source
      // must not let an earlier source's pending files through.
      const pending: { source: MigrationSource; file: MigrationFile }[] = [];
      let upToDate = 0;
      for (const { source, files } of plan) {
        for (const file of files) {
          const previous = applied.get(`${source.name}:${file.version}`);
          if (previous === undefined) {
            pending.push({ source, file });
            continue;
          }
          if (previous.checksum !== file.checksum) {
            throw new TenantryError(
              'TENANTRY_ERR_MIGRATION_CHANGED',
              `Migration ${source.name}/${file.version}-${file.name} was changed after it was applied. ` +
                'Migrations are forward-only: restore the file and add a new migration instead.',
              { details: { source: source.name, version: file.version } },
            );
          }
          upToDate++;
        }
      }
      const done: AppliedMigration[] = [];
      const total = pending.length;
      let position = 0;
      // Sources run in order; a source's `before` hook runs even when it has no pending files,
      // so the component it installs is upgraded with the package.
      const ordered = plan.flatMap(({ source }) => [
        { source, file: undefined },
        ...pending.filter((entry) => entry.source === source),
      ]);
      for (const { source, file } of ordered) {
        if (file === undefined) {
          await source.before?.({
            connectionString: options.connectionString,
            ownerRole: roles.owner,
            logger,
          });
          continue;
        }
        position++;
        const started = performance.now();
        logger.info(
          { source: source.name, version: file.version, name: file.name, position, total },
          'applying migration',
        );
        try {
          await client.query('begin');
          if (asOwner) await client.query(`set local role ${quoteIdentifier(roles.owner)}`);
          await client.query(substituteVariables(file.sql, variables));
          await client.query(
            `insert into ${quoteIdentifier(schema)}.migrations (source, version, name, checksum) values ($1, $2, $3, $4)`,
            [source.name, file.version, file.name, file.checksum],
          );
          await client.query('commit');
        } catch (error) {
          await client.query('rollback').catch(() => undefined);
          throw new TenantryError(
            'TENANTRY_ERR_MIGRATION_FAILED',
            `Migration ${source.name}/${file.version}-${file.name} failed and was rolled back: ${
              error instanceof Error ? error.message : String(error)
            }`,
            {
              cause: error,
              details: { source: source.name, version: file.version, file: file.path },
            },
          );
        }
        const durationMs = Math.round(performance.now() - started);
        done.push({ source: source.name, version: file.version, name: file.name, durationMs });
      }
      logger.info({ applied: done.length, upToDate }, 'migrations complete');
      return Object.freeze({ applied: Object.freeze(done), upToDate });
    } finally {
      await client
        .query('select pg_advisory_unlock(hashtextextended($1, 0))', [lockKey])
        .catch(() => undefined);
    }
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function needsSetRole(client: pg.Client, owner: string): Promise<boolean> {
  const result = await client.query<{ current: string; exists: boolean }>(
    'select current_user as current, exists (select 1 from pg_roles where rolname = $1) as exists',
    [owner],
  );
  const row = result.rows[0];
  if (row === undefined || !row.exists) {
    throw new TenantryError(
      'TENANTRY_ERR_MIGRATION_FAILED',
      `Role "${owner}" does not exist. Run "tenantry setup" (or bootstrapDatabase()) as a superuser first.`,
    );
  }
  return row.current !== owner;
}

async function readMigrationFiles(source: MigrationSource): Promise<MigrationFile[]> {
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
  const files: MigrationFile[] = [];
  const versions = new Map<number, string>();
  for (const entry of entries.sort()) {
    if (!entry.endsWith('.sql')) continue;
    const match = fileNamePattern.exec(entry);
    if (match === null) {
      throw new TenantryError(
        'TENANTRY_ERR_MIGRATION_INVALID_FILE',
        `Migration file ${join(source.directory, entry)} must be named <number>-<name>.sql (lowercase).`,
      );
    }
    const version = Number.parseInt(match[1] ?? '', 10);
    const clash = versions.get(version);
    if (clash !== undefined) {
      throw new TenantryError(
        'TENANTRY_ERR_MIGRATION_INVALID_FILE',
        `Migration files ${clash} and ${entry} share version ${version}.`,
      );
    }
    versions.set(version, entry);
    const path = join(source.directory, entry);
    const sql = await readFile(path, 'utf8');
    files.push({
      version,
      name: match[2] ?? entry,
      path,
      sql,
      checksum: createHash('sha256').update(sql).digest('hex'),
    });
  }
  return files.sort((a, b) => a.version - b.version);
}

/** Replaces psql-style `:"name"` and `:'name'` variables; other text is left untouched. */
export function substituteVariables(
  sql: string,
  variables: Readonly<Record<string, string>>,
): string {
  return sql.replace(/:(["'])([a-z_]+)\1/g, (whole, quote: string, name: string) => {
    const value = variables[name];
    if (value === undefined) return whole;
    return quote === '"' ? quoteIdentifier(value) : quoteLiteral(value);
  });
}

/** A migration file not yet applied (or changed since), from {@link createMigrationCheck}. */
export interface PendingMigration {
  readonly source: string;
  readonly version: number;
  readonly name: string;
  /** `pending`: never applied; `changed`: applied with another checksum. */
  readonly state: 'pending' | 'changed';
}

/**
 * Reads the migration files once and returns a check that lists what the database has not
 * applied: a readiness probe's "migrations current". The check runs one query on `db` (the app
 * role may read `<schema>.migrations`).
 *
 * @example
 * ```ts
 * import { createMigrationCheck } from 'tenantry';
 * const pendingMigrations = await createMigrationCheck({ sources: [{ name: 'app', directory: 'migrations' }] });
 * const pending = await pendingMigrations(tenantry.db); // [] when current
 * ```
 */
export async function createMigrationCheck(
  options: { readonly schema?: string; readonly sources?: readonly MigrationSource[] } = {},
): Promise<(db: Kysely<any>) => Promise<PendingMigration[]>> {
  const schema = parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema');
  const sources = [
    { name: 'tenantry', directory: coreMigrationsDirectory },
    ...(options.sources ?? []),
  ];
  const expected = (
    await Promise.all(
      sources.map(async (source) =>
        (await readMigrationFiles(source)).map((file) => ({ source: source.name, file })),
      ),
    )
  ).flat();
  return async (db) => {
    const result = await sql<{ source: string; version: number; checksum: string }>`
      select source, version, checksum from ${sql.id(schema, 'migrations')}`.execute(db);
    const applied = new Map(
      result.rows.map((row) => [`${row.source}/${row.version}`, row.checksum]),
    );
    return expected.flatMap(({ source, file }) => {
      const checksum = applied.get(`${source}/${file.version}`);
      if (checksum === file.checksum) return [];
      return [
        Object.freeze({
          source,
          version: file.version,
          name: file.name,
          state: checksum === undefined ? ('pending' as const) : ('changed' as const),
        }),
      ];
    });
  };
}
