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
import { connectClient as connect } from './client.ts';

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

interface RoleFlags {
  readonly login: boolean;
  readonly superuser: boolean;
  readonly bypassrls: boolean;
  readonly inherit: boolean;
  readonly createdb: boolean;
  readonly createrole: boolean;
  readonly replication: boolean;
}

const roleAttributes: Record<keyof RoleNames, RoleFlags> = {
  owner: {
    login: true,
    superuser: false,
    bypassrls: true,
    inherit: true,
    createdb: false,
    createrole: false,
    replication: false,
  },
  app: {
    login: true,
    superuser: false,
    bypassrls: false,
    inherit: false,
    createdb: false,
    createrole: false,
    replication: false,
  },
  analytics: {
    login: true,
    superuser: false,
    bypassrls: true,
    inherit: false,
    createdb: false,
    createrole: false,
    replication: false,
  },
};

function sameFlags(a: RoleFlags, b: RoleFlags): boolean {
  return (Object.keys(b) as (keyof RoleFlags)[]).every((key) => a[key] === b[key]);
}

function flagsClause(flags: RoleFlags): string {
  return (Object.keys(flags) as (keyof RoleFlags)[])
    .map((key) => (flags[key] ? key : `no${key}`))
    .join(' ');
}

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
    for (const key of ['owner', 'app', 'analytics'] as const) {
      const wanted = roleAttributes[key];
      const current = await admin.query<RoleFlags>(
        `select rolcanlogin as login, rolsuper as superuser, rolbypassrls as bypassrls, rolinherit as inherit,
                rolcreatedb as createdb, rolcreaterole as createrole, rolreplication as replication
         from pg_roles where rolname = $1`,
        [roles[key]],
      );
      const password = options.passwords?.[key];
      const row = current.rows[0];
      // Only touch a role that differs: concurrent bootstraps altering the same role collide.
      if (row !== undefined && password === undefined && sameFlags(row, wanted)) continue;
      const verb = row === undefined ? 'create' : 'alter';
      const passwordClause = password === undefined ? '' : ` password ${quoteLiteral(password)}`;
      await admin.query(
        `${verb} role ${quoteIdentifier(roles[key])} with ${flagsClause(wanted)}${passwordClause}`,
      );
      if (verb === 'create') logger.info({ role: roles[key] }, 'created role');
    }
    // Checked on every run, not only at creation: a reset setting would leave a BYPASSRLS role
    // writable.
    const readOnly = await admin.query(
      `select 1 from pg_db_role_setting s join pg_roles r on r.oid = s.setrole
       where r.rolname = $1 and s.setdatabase = 0
         and exists (select 1 from unnest(s.setconfig) as setting
                     where setting ~* '^default_transaction_read_only=(on|true|yes|1)$')`,
      [roles.analytics],
    );
    if (readOnly.rowCount === 0) {
      await admin.query(
        `alter role ${quoteIdentifier(roles.analytics)} set default_transaction_read_only = on`,
      );
      logger.info({ role: roles.analytics }, 'made role read-only by default');
    }

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
      -- No TEMPORARY for the app role: its temporary schema is searched first for types and
      -- relations, the first thing an attacker with SQL injection would plant objects in.
      revoke temporary on database ${db} from ${app};
      grant connect on database ${db} to ${app};
      grant connect, temporary on database ${db} to ${analytics};
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

/**
 * Returns the connection string with its database (path) replaced.
 *
 * @example
 * ```ts
 * import { withDatabase } from 'tenantry';
 * withDatabase('postgres://u:p@127.0.0.1:5432/postgres', 'tenantry'); // '.../tenantry'
 * ```
 */
export function withDatabase(connectionString: string, database: string): string {
  const url = new URL(connectionString);
  url.pathname = `/${encodeURIComponent(database)}`;
  return url.toString();
}

/**
 * Returns the connection string with its user and password replaced.
 *
 * @example
 * ```ts
 * import { withCredentials } from 'tenantry';
 * const appUrl = withCredentials(adminUrl, 'tenantry_app', appPassword);
 * ```
 */
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
