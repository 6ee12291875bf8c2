import { defaultRoleNames } from '../config.ts';
import { bootstrapDatabase, withDatabase } from '../database/bootstrap.ts';
import { withClient } from '../database/client.ts';
import {
  type EmbeddedPostgresServer,
  startEmbeddedPostgres,
} from '../database/embedded-postgres.ts';
import { TenantryError } from '../errors.ts';
import { type Logger, silentLogger } from '../logger.ts';
import type { CliConfig } from './config.ts';

/** Connection strings for the three roles on a prepared database. */
export interface PreparedDatabase {
  /** Superuser or owner connection to the application database (migrations, doctor). */
  readonly adminUrl: string;
  /** App role connection (the API and workers); unknown for an external server without one. */
  readonly appUrl: string | undefined;
  /** Analytics role connection (platform reads). */
  readonly analyticsUrl: string | undefined;
  readonly embedded: EmbeddedPostgresServer | undefined;
  /** Stops the embedded server, if one was started. */
  stop(): Promise<void>;
}

/** Where {@link prepareDatabase} finds or starts the server (see `loadCliConfig`). */
export type PrepareDatabaseOptions = Pick<
  CliConfig,
  'databaseUrl' | 'appDatabaseUrl' | 'analyticsDatabaseUrl' | 'databaseName' | 'embeddedDirectory'
> & {
  /**
   * Whether the embedded server stops itself on SIGINT/SIGTERM (see `startEmbeddedPostgres`);
   * `false` for an application that shuts down gracefully and calls `stop()` last.
   * @defaultValue true
   */
  readonly stopOnSignal?: boolean;
};

/**
 * Starts the embedded server (no `DATABASE_URL`) or checks the external one, then makes sure
 * the roles and database exist. Migrations are left to the caller.
 *
 * @example
 * ```ts
 * import { loadCliConfig, migrate, prepareDatabase, requireAppUrl } from 'tenantry';
 * const database = await prepareDatabase(loadCliConfig(process.env));
 * await migrate({ connectionString: database.adminUrl, sources: [{ name: 'app', directory: 'migrations' }] });
 * const appUrl = requireAppUrl(database);
 * // ... on shutdown:
 * await database.stop();
 * ```
 */
export async function prepareDatabase(
  config: PrepareDatabaseOptions,
  logger: Logger = silentLogger,
): Promise<PreparedDatabase> {
  const stopOnSignal = config.stopOnSignal;
  if (config.databaseUrl === undefined) {
    const server = await startEmbeddedPostgres({
      directory: config.embeddedDirectory,
      logger,
      ...(stopOnSignal === undefined ? {} : { stopOnSignal }),
    });
    try {
      await bootstrapDatabase({
        adminConnectionString: server.connectionString('postgres'),
        database: config.databaseName,
        passwords: {
          owner: server.secrets.ownerPassword,
          app: server.secrets.appPassword,
          analytics: server.secrets.analyticsPassword,
        },
        logger,
      });
    } catch (error) {
      await server.stop();
      throw error;
    }
    return Object.freeze({
      adminUrl: server.connectionString(config.databaseName),
      appUrl: server.connectionString(
        config.databaseName,
        defaultRoleNames.app,
        server.secrets.appPassword,
      ),
      analyticsUrl: server.connectionString(
        config.databaseName,
        defaultRoleNames.analytics,
        server.secrets.analyticsPassword,
      ),
      embedded: server,
      stop: () => server.stop(),
    });
  }

  const adminUrl = config.databaseUrl;
  if (await isSuperuser(adminUrl)) {
    const database = decodeURIComponent(new URL(adminUrl).pathname.slice(1)) || config.databaseName;
    await bootstrapDatabase({
      adminConnectionString: withDatabase(adminUrl, 'postgres'),
      database,
      passwords: {
        app: passwordOf(config.appDatabaseUrl),
        analytics: passwordOf(config.analyticsDatabaseUrl),
      },
      logger,
    });
  }
  return Object.freeze({
    adminUrl,
    appUrl: config.appDatabaseUrl,
    analyticsUrl: config.analyticsDatabaseUrl,
    embedded: undefined,
    stop: async () => {},
  });
}

/**
 * Returns the app role's connection, or explains which variable to set.
 *
 * @example
 * ```ts
 * const tenantry = await createTenantry({ connectionString: requireAppUrl(database) });
 * ```
 */
export function requireAppUrl(database: PreparedDatabase): string {
  if (database.appUrl === undefined) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'With DATABASE_URL set, also set TENANTRY_APP_DATABASE_URL: the connection of the tenantry_app role ' +
        '(never the owner or a superuser) that the API and workers use.',
    );
  }
  return database.appUrl;
}

function passwordOf(url: string | undefined): string | undefined {
  if (url === undefined) return undefined;
  const password = decodeURIComponent(new URL(url).password);
  return password === '' ? undefined : password;
}

async function isSuperuser(url: string): Promise<boolean> {
  return withClient(url, async (client) => {
    const result = await client.query<{ super: boolean; missing: string[] }>(
      `select r.rolsuper as super,
              array(select name from unnest($1::text[]) as name
                    where not exists (select 1 from pg_roles where rolname = name)) as missing
       from pg_roles r where r.rolname = current_user`,
      [Object.values(defaultRoleNames)],
    );
    const row = result.rows[0];
    if (row?.super !== true && (row?.missing.length ?? 0) > 0) {
      throw new TenantryError(
        'TENANTRY_ERR_BOOTSTRAP_FAILED',
        `DATABASE_URL is not a superuser, so Tenantry cannot create the roles ${row?.missing.join(', ')}. ` +
          'Create them as docs/reference/security-model.md shows, or use a superuser connection once.',
      );
    }
    return row?.super === true;
  });
}
