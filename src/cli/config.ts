import { resolve } from 'node:path';
import { TenantryError } from '../errors.ts';

/** Settings of the CLI and reference app, read from the environment in this one place. */
export interface CliConfig {
  /** External server (superuser or owner connection); embedded PostgreSQL when undefined. */
  readonly databaseUrl: string | undefined;
  /** App role connection for an external server; derived from `databaseUrl` when undefined. */
  readonly appDatabaseUrl: string | undefined;
  /** Analytics role connection for an external server. */
  readonly analyticsDatabaseUrl: string | undefined;
  /** Database name used on the embedded server. @defaultValue 'tenantry' */
  readonly databaseName: string;
  /** Folder for the embedded cluster. @defaultValue '.tenantry/postgres' */
  readonly embeddedDirectory: string;
  /** The application's migration folder. @defaultValue 'app/migrations' */
  readonly migrationsDirectory: string;
  readonly logLevel: string;
}

/**
 * Reads the configuration from environment variables (`DATABASE_URL`,
 * `TENANTRY_APP_DATABASE_URL`, `TENANTRY_ANALYTICS_DATABASE_URL`, `TENANTRY_DATABASE_NAME`,
 * `TENANTRY_DATA_DIR`, `TENANTRY_MIGRATIONS_DIR`, `LOG_LEVEL`). Call it from your composition
 * root. The library never reads the environment; besides this, only the CLI's entry point does
 * (`TENANTRY_ADMIN_TOKEN`, and the erasure signing key and storage settings it hands to
 * `tenantry tenants export|erase`).
 *
 * @example
 * ```ts
 * import { loadCliConfig } from 'tenantry';
 * const config = loadCliConfig(process.env);
 * console.log(config.databaseUrl ?? 'embedded PostgreSQL');
 * ```
 */
export function loadCliConfig(
  env: NodeJS.ProcessEnv = process.env,
  cwd: string = process.cwd(),
): CliConfig {
  const url = (name: string) => {
    const value = env[name];
    if (value === undefined || value === '') return undefined;
    try {
      const parsed = new URL(value);
      if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:')
        throw new Error(parsed.protocol);
    } catch (error) {
      throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', `${name} must be a postgres:// URL.`, {
        cause: error,
      });
    }
    return value;
  };
  return Object.freeze({
    databaseUrl: url('DATABASE_URL'),
    appDatabaseUrl: url('TENANTRY_APP_DATABASE_URL'),
    analyticsDatabaseUrl: url('TENANTRY_ANALYTICS_DATABASE_URL'),
    databaseName: env.TENANTRY_DATABASE_NAME ?? 'tenantry',
    embeddedDirectory: resolve(cwd, env.TENANTRY_DATA_DIR ?? '.tenantry/postgres'),
    migrationsDirectory: resolve(cwd, env.TENANTRY_MIGRATIONS_DIR ?? 'app/migrations'),
    logLevel: env.LOG_LEVEL ?? 'info',
  });
}
