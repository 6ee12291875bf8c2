import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { toTenantryError } from './database-errors.ts';
import { TenantryError } from './errors.ts';
import { type Logger, silentLogger, summarizeError } from './logger.ts';

/** Options for {@link createPlatformDatabase}. */
export interface PlatformDatabaseOptions {
  /**
   * Connection of a BYPASSRLS role: the analytics role for cross-tenant reads, or the owner role
   * for operator actions. Never the app role.
   */
  readonly connectionString: string;
  /** Largest number of pooled connections. @defaultValue 4 */
  readonly maxConnections?: number;
  /**
   * Refuse a role whose transactions are not read-only by default (the analytics role is).
   * @defaultValue true
   */
  readonly readOnly?: boolean;
  readonly logger?: Logger;
}

/** A cross-tenant database handle on its own pool. */
export interface PlatformDatabase<DB> {
  /** Kysely without the tenant guard: queries see every tenant's rows. */
  readonly db: Kysely<DB>;
  /** The role the pool connects as. */
  readonly role: string;
  close(): Promise<void>;
}

/**
 * Opens the one escape hatch for platform work across tenants: a separate pool that logs in as
 * a BYPASSRLS role. Tenant isolation is never switched off by a setting the app role could flip;
 * cross-tenant access requires these other credentials, which the tenant-facing API never holds.
 *
 * @example
 * ```ts
 * import { createPlatformDatabase } from 'tenantry';
 * const platform = await createPlatformDatabase<DB>({ connectionString: process.env.ANALYTICS_DATABASE_URL });
 * const perTenant = await platform.db
 *   .selectFrom('messages')
 *   .select(['tenant_id', (eb) => eb.fn.countAll().as('messages')])
 *   .groupBy('tenant_id')
 *   .execute();
 * await platform.close();
 * ```
 */
export async function createPlatformDatabase<DB>(
  options: PlatformDatabaseOptions,
): Promise<PlatformDatabase<DB>> {
  const logger = options.logger ?? silentLogger;
  const pool = new pg.Pool({
    connectionString: options.connectionString,
    max: options.maxConnections ?? 4,
  });
  pool.on('error', (error) =>
    logger.warn({ err: summarizeError(error) }, 'idle platform connection failed'),
  );
  let role: string;
  try {
    const result = await pool.query<{
      role: string;
      bypassrls: boolean;
      superuser: boolean;
      read_only: string;
    }>(
      `select current_user as role, r.rolbypassrls as bypassrls, r.rolsuper as superuser,
              current_setting('default_transaction_read_only') as read_only
       from pg_catalog.pg_roles r where r.rolname = current_user`,
    );
    const row = result.rows[0];
    if (row === undefined || (!row.bypassrls && !row.superuser)) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `The platform database must connect as a BYPASSRLS role (the analytics or owner role), not "${row?.role}". ` +
          'The app role is confined to one tenant by design.',
      );
    }
    if ((options.readOnly ?? true) && row.read_only !== 'on') {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `Role "${row.role}" is not read-only by default; use the analytics role, or pass readOnly: false for operator actions.`,
      );
    }
    role = row.role;
  } catch (error) {
    await pool.end().catch(() => undefined);
    throw toTenantryError(error);
  }
  const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) });
  return Object.freeze({
    db,
    role,
    async close() {
      await db.destroy();
      if (!pool.ended) await pool.end();
    },
  });
}
