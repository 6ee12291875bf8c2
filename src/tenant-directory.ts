import pg from 'pg';
import { defaultTenantrySchema, parseIdentifier, quoteIdentifier } from './config.ts';
import { createNotificationListener } from './database/notification-listener.ts';
import { toTenantryError } from './database-errors.ts';
import { TenantryError } from './errors.ts';
import { type Logger, silentLogger, summarizeError } from './logger.ts';
import { isUuid, type TenantId } from './tenant-id.ts';

/** A tenant as the catalog (`tenantry.tenants`) describes it. */
export interface TenantRecord {
  readonly id: TenantId;
  readonly slug: string;
  readonly name: string;
  readonly plan: string;
  readonly status: 'active' | 'suspended' | 'moving' | 'deleted';
  readonly placement: string;
}

/** Options for {@link createTenantDirectory}. */
export interface TenantDirectoryOptions {
  /** Connection string of a role that can read the catalog (the app role can). */
  readonly connectionString: string;
  /** Schema of Tenantry's own objects. @defaultValue 'tenantry' */
  readonly schema?: string;
  /**
   * How long a found tenant stays cached. Changes are announced by the catalog's trigger and
   * drop entries at once; the lifetime only bounds staleness while notifications are lost.
   * @defaultValue 60000
   */
  readonly ttlMs?: number;
  /** How long "no such tenant" stays cached (creations are announced too). @defaultValue 5000 */
  readonly notFoundTtlMs?: number;
  /** Most entries kept; the least recently used go first. @defaultValue 10000 */
  readonly maxEntries?: number;
  /** Listen for catalog changes on a dedicated connection. @defaultValue true */
  readonly listen?: boolean;
  readonly logger?: Logger;
}

/** Slug and id lookups of tenants through a cache that catalog changes invalidate. */
export interface TenantDirectory {
  /** The tenant with this slug, or `undefined`. Invalid slugs are never looked up. */
  bySlug(slug: string): Promise<TenantRecord | undefined>;
  /** The tenant with this id, or `undefined`. Invalid ids are never looked up. */
  byId(id: string): Promise<TenantRecord | undefined>;
  /** Drops cached entries: one tenant's (by id or slug), or all. */
  invalidate(idOrSlug?: string): void;
  /** Whether the change listener is connected (entries are then dropped on change). */
  readonly isListening: boolean;
  /** Stops listening and closes the connections. */
  close(): Promise<void>;
}

const slugPattern = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

interface Entry {
  readonly record: TenantRecord | undefined;
  readonly expiresAt: number;
}

const defaults = { ttlMs: 60_000, notFoundTtlMs: 5_000, maxEntries: 10_000 };

/**
 * Creates a tenant directory: slug → tenant and id → tenant through a bounded cache. A trigger
 * on the catalog announces every insert, update and delete (channel `tenantry_tenants`); the
 * directory listens on its own connection and drops the entries named, so a suspended tenant
 * is refused on the next request. While the listener is disconnected nothing is cached.
 *
 * @example
 * ```ts
 * import { createTenantDirectory } from 'tenantry';
 * const directory = await createTenantDirectory({ connectionString: appUrl });
 * const acme = await directory.bySlug('acme'); // { id, slug: 'acme', status: 'active', ... }
 * await directory.close();
 * ```
 */
export async function createTenantDirectory(
  options: TenantDirectoryOptions,
): Promise<TenantDirectory> {
  const settings = Object.freeze({
    ...defaults,
    ...Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)),
  }) as Required<Omit<TenantDirectoryOptions, 'logger'>> & typeof defaults;
  if (typeof settings.connectionString !== 'string' || settings.connectionString === '') {
    throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'connectionString is required.');
  }
  for (const key of ['ttlMs', 'notFoundTtlMs', 'maxEntries'] as const) {
    if (!Number.isInteger(settings[key]) || settings[key] < 0) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `${key} must be a non-negative integer.`,
      );
    }
  }
  const schema = quoteIdentifier(
    parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema'),
  );
  const logger = options.logger ?? silentLogger;
  const selectSql = `select id, slug, name, plan, status, placement from ${schema}.tenants`;
  const pool = new pg.Pool({ connectionString: settings.connectionString, max: 2 });
  pool.on('error', (error) =>
    logger.warn({ err: summarizeError(error) }, 'tenant directory connection failed'),
  );

  const cache = new Map<string, Entry>();
  const inFlight = new Map<string, Promise<TenantRecord | undefined>>();
  // Bumped on every invalidation, so a lookup that started before a change never caches the
  // row it read before that change.
  let generation = 0;

  const drop = (key: string) => {
    cache.delete(key);
    generation++;
  };

  const invalidate = (idOrSlug?: string) => {
    if (idOrSlug === undefined) {
      cache.clear();
      generation++;
      return;
    }
    const key = isUuid(idOrSlug) ? `id:${idOrSlug.toLowerCase()}` : `slug:${idOrSlug}`;
    const entry = cache.get(key);
    drop(key);
    if (entry?.record !== undefined) {
      drop(`id:${entry.record.id}`);
      drop(`slug:${entry.record.slug}`);
    }
  };

  const onNotification = (message: pg.Notification) => {
    try {
      const payload = JSON.parse(message.payload ?? '') as { id: string; slugs: string[] };
      drop(`id:${payload.id}`);
      for (const slug of payload.slugs) drop(`slug:${slug}`);
    } catch {
      invalidate();
    }
  };

  const listener = createNotificationListener({
    connectionString: settings.connectionString,
    channel: 'tenantry_tenants',
    name: 'tenant directory',
    logger,
    onNotification,
    // Changes made while no one listened are unknown: start from an empty cache.
    onConnected: () => invalidate(),
    onDisconnected: () => invalidate(),
  });

  const remember = (key: string, record: TenantRecord | undefined) => {
    if (!listener.isListening) return;
    const ttl = record === undefined ? settings.notFoundTtlMs : settings.ttlMs;
    if (ttl === 0 || settings.maxEntries === 0) return;
    cache.set(key, { record, expiresAt: Date.now() + ttl });
    while (cache.size > settings.maxEntries) {
      const oldest = cache.keys().next().value;
      if (oldest === undefined) break;
      cache.delete(oldest);
    }
  };

  const lookup = async (
    key: string,
    column: 'id' | 'slug',
    value: string,
  ): Promise<TenantRecord | undefined> => {
    const entry = cache.get(key);
    if (entry !== undefined) {
      if (entry.expiresAt > Date.now()) {
        cache.delete(key);
        cache.set(key, entry);
        return entry.record;
      }
      cache.delete(key);
    }
    const pending = inFlight.get(key);
    if (pending !== undefined) return pending;
    const started = generation;
    const query = (async () => {
      try {
        const result = await pool.query<TenantRecord>(`${selectSql} where ${column} = $1`, [value]);
        const record = result.rows[0] === undefined ? undefined : Object.freeze(result.rows[0]);
        if (generation === started) {
          remember(key, record);
          if (record !== undefined) {
            remember(column === 'id' ? `slug:${record.slug}` : `id:${record.id}`, record);
          }
        }
        return record;
      } catch (error) {
        throw toTenantryError(error);
      } finally {
        inFlight.delete(key);
      }
    })();
    inFlight.set(key, query);
    return query;
  };

  if (options.listen !== false) {
    try {
      await listener.start();
    } catch (error) {
      await pool.end().catch(() => undefined);
      throw toTenantryError(error);
    }
  }

  return Object.freeze({
    bySlug(slug: string) {
      if (typeof slug !== 'string' || !slugPattern.test(slug)) return Promise.resolve(undefined);
      return lookup(`slug:${slug}`, 'slug', slug);
    },
    byId(id: string) {
      if (typeof id !== 'string' || !isUuid(id)) return Promise.resolve(undefined);
      const canonical = id.toLowerCase();
      return lookup(`id:${canonical}`, 'id', canonical);
    },
    invalidate,
    get isListening() {
      return listener.isListening;
    },
    async close() {
      await listener.close();
      invalidate();
      if (!pool.ended) await pool.end();
    },
  });
}
