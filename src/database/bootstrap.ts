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

/** Options for {@link bootstrapDatabase}. */
export interface BootstrapOptions {
  /** A superuser connection (any database on the server). */
  readonly adminConnectionString: string;
  /** The application database; created (owned by the owner role) when missing. */
  readonly database: string;
  /** Role names. @defaultValue {@link defaultRoleNames} */
  readonly roles?: Partial<RoleNames>;
  /** Passwords to set; a role without one keeps its current password. */
  readonly passwords?: Partial<Record<keyof RoleNames, string>>;
  /** Schema for Tenantry's own objects. @defaultValue 'tenantry' */
  readonly schema?: string;
  readonly logger?: Logger;
}

const minimumServerVersion = 150000;

/**
 * Creates (or corrects) the three roles and the application database, as a superuser.
 *
 * Idempotent: run it before every `migrate`. The owner role gets BYPASSRLS so migrations and
 * backfills see every row; the app role is LOGIN, NOSUPERUSER, NOBYPASSRLS and gets DML grants
 * only from migrations; the analytics role is BYPASSRLS and read-only by default.
 *
 * @example
 * ```ts
 * import { bootstrapDatabase } from 'tenantry';
 * await bootstrapDatabase({
 *   adminConnectionString: 'postgres://postgres:secret@127.0.0.1:5432/postgres',
 *   database: 'tenantry',
 *   passwords: { app: 'app-secret', analytics: 'analytics-secret' },
 * });
 * ```
 */
export async function bootstrapDatabase(options: BootstrapOptions): Promise<void> {
  const logger = options.logger ?? silentLogger;
  const roles = resolveRoleNames(options.roles);
  const database = parseIdentifier(options.database, 'database');
  const schema = parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema');

  const admin = await connect(options.adminConnectionString);
  try {
    const info = await admin.query<{ version: number; superuser: boolean }>(
      `select current_setting('server_version_num')::int as version,
              (select rolsuper from pg_roles where rolname = current_user) as superuser`,
    );
    const version = info.rows[0]?.version ?? 0;
    if (version < minimumServerVersion) {
      throw new TenantryError(
        'TENANTRY_ERR_SERVER_VERSION_UNSUPPORTED',
        `PostgreSQL ${Math.floor(version / 10000)} is not supported; Tenantry needs PostgreSQL 15 or newer.`,
      );
    }
    if (info.rows[0]?.superuser !== true) {
      throw new TenantryError(
        'TENANTRY_ERR_BOOTSTRAP_FAILED',
        'Creating Tenantry roles needs a superuser connection (BYPASSRLS can only be granted by one). ' +
          'Run "tenantry setup" with a superuser DATABASE_URL, or create the roles as docs/reference/security-model.md shows.',
      );
    }
    const attributes: Record<keyof RoleNames, string> = {
      owner: 'login nosuperuser nocreatedb nocreaterole noreplication bypassrls',
      app: 'login nosuperuser nocreatedb nocreaterole noreplication nobypassrls noinherit',
      analytics: 'login nosuperuser nocreatedb nocreaterole noreplication bypassrls noinherit',
    };
    for (const key of ['owner', 'app', 'analytics'] as const) {
      const role = quoteIdentifier(roles[key]);
      const exists = await admin.query('select 1 from pg_roles where rolname = $1', [roles[key]]);
      const password = options.passwords?.[key];
      const passwordClause = password === undefined ? '' : ` password ${quoteLiteral(password)}`;
      const verb = exists.rowCount === 0 ? 'create' : 'alter';
      await admin.query(`${verb} role ${role} with ${attributes[key]}${passwordClause}`);
      if (verb === 'create') logger.info({ role: roles[key] }, 'created role');
    }
    await admin.query(
      `alter role ${quoteIdentifier(roles.analytics)} set default_transaction_read_only = on`,
    );

    const dbExists = await admin.query('select 1 from pg_database where datname = $1', [database]);
    if (dbExists.rowCount === 0) {
      await admin.query(
        `create database ${quoteIdentifier(database)} owner ${quoteIdentifier(roles.owner)}`,
      );
      logger.info({ database }, 'created database');
    }
  } finally {
    await admin.end().catch(() => undefined);
  }

  const target = await connect(withDatabase(options.adminConnectionString, database));
  try {
    const db = quoteIdentifier(database);
    const owner = quoteIdentifier(roles.owner);
    const app = quoteIdentifier(roles.app);
    const analytics = quoteIdentifier(roles.analytics);
    await target.query(`
      revoke all on database ${db} from public;
      grant connect, temporary on database ${db} to ${app}, ${analytics};
      grant connect, create, temporary on database ${db} to ${owner};
      revoke create on schema public from public;
      grant usage, create on schema public to ${owner};
      grant usage on schema public to ${app}, ${analytics};
      create schema if not exists ${quoteIdentifier(schema)} authorization ${owner};
      alter default privileges for role ${owner} in schema public grant select on tables to ${analytics};
      alter default privileges for role ${owner} in schema ${quoteIdentifier(schema)} grant select on tables to ${analytics};
    `);
  } finally {
    await target.end().catch(() => undefined);
  }
}

async function connect(connectionString: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString });
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (error) {
    throw new TenantryError(
      'TENANTRY_ERR_DB_UNAVAILABLE',
      `Cannot connect to PostgreSQL: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
  return client;
}

/** Returns the connection string with its database (path) replaced. */
export function withDatabase(connectionString: string, database: string): string {
  const url = new URL(connectionString);
  url.pathname = `/${encodeURIComponent(database)}`;
  return url.toString();
}

/** Returns the connection string with its user and password replaced. */
export function withCredentials(
  connectionString: string,
  user: string,
  password: string | undefined,
): string {
  const url = new URL(connectionString);
  url.username = encodeURIComponent(user);
  url.password = password === undefined ? '' : encodeURIComponent(password);
  return url.toString();
}
