import { defaultTenantrySchema, parseIdentifier, quoteIdentifier } from '../config.ts';
import { withClient } from '../database/client.ts';
import { TenantryError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import { parseTenantId, type TenantId } from '../tenant-id.ts';
import { createPlacementRouter, type TenantPlacement } from './database-targets.ts';

/** Options for {@link createSchemaPlacementRouter}. */
export interface SchemaPlacementRouterOptions {
  /** A role that can read the placement catalog: the app role can. */
  readonly connectionString: string;
  /** Schema of Tenantry's own objects. @defaultValue 'tenantry' */
  readonly schema?: string;
  /**
   * How long an answer stays cached. Placement changes are announced on `tenantry_placements`
   * and drop the entry at once; the lifetime bounds staleness if a notification is lost.
   * @defaultValue 60000
   */
  readonly ttlMs?: number;
  /** Most tenants kept; the least recently used go first. @defaultValue 10000 */
  readonly maxEntries?: number;
  readonly logger?: Logger;
}

/** Where each tenant's tables live, for `createTenantry({ tenantSchema })`. */
export interface SchemaPlacementRouter {
  /**
   * The tenant's dedicated schema, or `undefined` for a pooled tenant. A cached answer is
   * returned as is (no promise, no allocation); a miss reads the catalog. Pass it as
   * `tenantSchema` to `createTenantry`.
   */
  readonly schemaFor: (tenantId: TenantId) => string | undefined | Promise<string | undefined>;
  /** Drops one tenant's cached answer, or all. */
  invalidate(tenantId?: string): void;
  /** Whether the change listener is connected (answers are only cached while it is). */
  readonly isListening: boolean;
  /** Stops listening and closes the connections. */
  close(): Promise<void>;
}

/**
 * Creates the router that tells Tenantry which schema holds a tenant's tables. Answers (including
 * "pooled", the common one) are cached per tenant, least recently used evicted; a listener on
 * channel `tenantry_placements` drops a tenant's answer when its placement changes. While the
 * listener is disconnected nothing is cached and every unit of work reads the catalog: stale
 * routing would send a tenant's writes to the wrong tables. A failed read fails the unit of work
 * (`TENANTRY_ERR_DB_UNAVAILABLE`); it never falls back to the shared tables.
 *
 * @example
 * ```ts
 * import { createTenantry } from 'tenantry';
 * import { createSchemaPlacementRouter } from 'tenantry/placement';
 * const placements = await createSchemaPlacementRouter({ connectionString: appUrl });
 * const tenantry = await createTenantry<DB>({
 *   connectionString: appUrl,
 *   tenantSchema: placements.schemaFor,
 * });
 * // ... on shutdown
 * await tenantry.close();
 * await placements.close();
 * ```
 */
export async function createSchemaPlacementRouter(
  options: SchemaPlacementRouterOptions,
): Promise<SchemaPlacementRouter> {
  // The placement router without a pool registry: the same catalog reads, cache and listener.
  const router = await createPlacementRouter(options);
  const schemaOf = (tenantId: TenantId, placement: TenantPlacement): string | undefined => {
    if (placement.kind === 'database') {
      // Never serve a tenant of a dedicated database from the pool's tables.
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `Tenant ${tenantId} is placed in a dedicated database (connection "${placement.connection}"); route with createPlacementRouter().`,
      );
    }
    return placement.kind === 'schema' ? placement.schema : undefined;
  };
  return Object.freeze({
    schemaFor(tenantId: TenantId) {
      const placement = router.placementFor(tenantId);
      if (placement instanceof Promise) return placement.then((found) => schemaOf(tenantId, found));
      try {
        return schemaOf(tenantId, placement);
      } catch (error) {
        return Promise.reject(error);
      }
    },
    invalidate: router.invalidate,
    get isListening() {
      return router.isListening;
    },
    close: () => router.close(),
  });
}

/** A tenant placed in its own schema or in a dedicated database, and how far its migrations are. */
export interface PlacementInfo {
  readonly tenantId: TenantId;
  readonly slug: string;
  readonly kind: 'schema' | 'database';
  /** The dedicated schema, or `public` in a dedicated database. */
  readonly schema: string;
  /** For a dedicated database: the connection name and the database name. */
  readonly connection: string | null;
  readonly database: string | null;
  /** Migration files applied to the schema or database. */
  readonly appliedMigrations: number;
  /** The latest applied file, as `source/version`, or `null`. */
  readonly latestMigration: string | null;
  readonly placedAt: Date;
}

/**
 * Lists the tenants placed in their own schema or in a dedicated database, with the migrations
 * each target has applied.
 *
 * @example
 * ```ts
 * import { listPlacements } from 'tenantry/placement';
 * for (const placement of await listPlacements({ connectionString: adminUrl })) {
 *   console.log(placement.slug, placement.schema, placement.latestMigration);
 * }
 * ```
 */
export async function listPlacements(options: {
  readonly connectionString: string;
  /** Schema of Tenantry's own objects. @defaultValue 'tenantry' */
  readonly schema?: string;
  /** Only this tenant. */
  readonly tenantId?: string;
}): Promise<PlacementInfo[]> {
  const schema = quoteIdentifier(
    parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema'),
  );
  const tenantId = options.tenantId === undefined ? null : parseTenantId(options.tenantId);
  return withClient(options.connectionString, async (client) => {
    const result = await client.query<{
      tenant_id: TenantId;
      slug: string;
      schema_name: string | null;
      connection_name: string | null;
      database_name: string | null;
      applied: number;
      latest: string | null;
      created_at: Date;
    }>(
      `select p.tenant_id, t.slug, p.schema_name, p.connection_name, p.database_name, p.created_at,
              case when p.schema_name is not null
                then (select count(*)::int from ${schema}.placement_migrations m where m.schema_name = p.schema_name)
                else (select count(*)::int from ${schema}.database_placement_migrations m
                       where m.connection_name = p.connection_name and m.database_name = p.database_name)
              end as applied,
              case when p.schema_name is not null
                then (select m.source || '/' || m.version from ${schema}.placement_migrations m
                       where m.schema_name = p.schema_name order by m.applied_at desc, m.version desc limit 1)
                else (select m.source || '/' || m.version from ${schema}.database_placement_migrations m
                       where m.connection_name = p.connection_name and m.database_name = p.database_name
                       order by m.applied_at desc, m.version desc limit 1)
              end as latest
         from ${schema}.tenant_placements p
         join ${schema}.tenants t on t.id = p.tenant_id
        where ($1::uuid is null or p.tenant_id = $1::uuid)
        order by t.slug`,
      [tenantId],
    );
    return result.rows.map((row) =>
      Object.freeze({
        tenantId: row.tenant_id,
        slug: row.slug,
        kind: row.schema_name === null ? ('database' as const) : ('schema' as const),
        schema: row.schema_name ?? 'public',
        connection: row.connection_name,
        database: row.database_name,
        appliedMigrations: row.applied,
        latestMigration: row.latest,
        placedAt: row.created_at,
      }),
    );
  });
}
