import pg from 'pg';
import { TenantryError } from '../errors.ts';
import { type Logger, silentLogger, summarizeError } from '../logger.ts';

/** Options for {@link createPoolRegistry}. */
export interface PoolRegistryOptions {
  /**
   * The dedicated databases, by connection name: each an app-role URL. Configured in code or the
   * environment, never stored in the database (the catalog names the connection only).
   */
  readonly connections: Readonly<Record<string, string>>;
  /** Connections with at least one open server connection; the least recently used idle one is closed first. @defaultValue 50 */
  readonly maxPoolsOpen?: number;
  /** Server connections per connection name. @defaultValue 5 */
  readonly maxConnectionsPerPool?: number;
  /** Server connections across every connection name: never exceeded. @defaultValue 50 */
  readonly maxConnectionsTotal?: number;
  /** An idle server connection is closed after this long. @defaultValue 30000 */
  readonly idleEvictMs?: number;
  /** How long a unit of work waits for a connection before `TENANTRY_ERR_DB_UNAVAILABLE`. @defaultValue 10000 */
  readonly acquireTimeoutMs?: number;
  /** Server-side `statement_timeout`. @defaultValue 30000 */
  readonly statementTimeoutMs?: number;
  /** Server-side `idle_in_transaction_session_timeout`. @defaultValue 60000 */
  readonly idleInTransactionTimeoutMs?: number;
  readonly logger?: Logger;
}

/** Where a unit of work takes its connection: what `createTenantry({ tenantPool })` accepts. */
export interface ConnectionSource {
  connect(): Promise<pg.PoolClient>;
}

/** One connection name's share of a {@link PoolRegistry}. */
export interface PoolStats {
  readonly name: string;
  readonly open: number;
  readonly idle: number;
  readonly busy: number;
}

/** Counts of a {@link PoolRegistry}, for metrics and tests. */
export interface PoolRegistryStats {
  /** Server connections open or being opened. */
  readonly openConnections: number;
  /** The most that were ever open at once. */
  readonly peakConnections: number;
  /** Connection names with at least one open server connection. */
  readonly openPools: number;
  /** Units of work waiting for a connection. */
  readonly waiting: number;
  /** Server connections closed because they were idle or their slot was needed elsewhere. */
  readonly evictedConnections: number;
  readonly pools: readonly PoolStats[];
}

/** Lazy, bounded connections to the dedicated databases. */
export interface PoolRegistry {
  /** The configured connection names. */
  readonly names: readonly string[];
  /** The connection source of one connection name; unknown names throw `TENANTRY_ERR_CONFIG_INVALID`. */
  pool(name: string): ConnectionSource;
  stats(): PoolRegistryStats;
  /** Closes idle server connections now (all of them with `0`), returns how many. */
  evictIdle(olderThanMs?: number): Promise<number>;
  /** Refuses new work, fails the waiting units and closes every connection (busy ones on release). */
  close(): Promise<void>;
}

interface IdleClient {
  readonly client: pg.Client;
  readonly since: number;
}

interface PoolState {
  readonly name: string;
  readonly url: string;
  readonly idle: IdleClient[];
  busy: number;
  opening: number;
  closing: number;
  readonly source: ConnectionSource;
}

interface Waiter {
  readonly pool: PoolState;
  readonly resolve: (client: pg.PoolClient) => void;
  readonly reject: (error: unknown) => void;
  readonly timer: NodeJS.Timeout;
}

const defaults = {
  maxPoolsOpen: 50,
  maxConnectionsPerPool: 5,
  maxConnectionsTotal: 50,
  idleEvictMs: 30_000,
  acquireTimeoutMs: 10_000,
  statementTimeoutMs: 30_000,
  idleInTransactionTimeoutMs: 60_000,
};

const namePattern = /^[a-z][a-z0-9_-]{0,62}$/;

function opened(pool: PoolState): number {
  return pool.idle.length + pool.busy + pool.opening + pool.closing;
}

/**
 * Creates the registry of connections to dedicated databases: one lazy pool per connection name,
 * opened on first use, and one budget of server connections shared by all of them. A unit of
 * work that needs a connection when the budget is spent takes the slot of another database's
 * idle connection (least recently used first), or waits for one and fails with
 * `TENANTRY_ERR_DB_UNAVAILABLE` after `acquireTimeoutMs`. Connections count against the budget
 * from the moment they are opened until the server has closed them, so the number of server
 * connections never exceeds `maxConnectionsTotal`.
 *
 * @example
 * ```ts
 * import { createPoolRegistry } from 'tenantry/placement';
 * const registry = createPoolRegistry({
 *   connections: { eu_1: process.env.EU_1_APP_URL, acme: process.env.ACME_APP_URL },
 *   maxConnectionsTotal: 40,
 * });
 * const client = await registry.pool('acme').connect();
 * client.release();
 * await registry.close();
 * ```
 */
export function createPoolRegistry(options: PoolRegistryOptions): PoolRegistry {
  if (typeof options?.connections !== 'object' || options.connections === null) {
    throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'connections is required.');
  }
  const settings = Object.freeze({
    maxPoolsOpen: options.maxPoolsOpen ?? defaults.maxPoolsOpen,
    maxConnectionsPerPool: options.maxConnectionsPerPool ?? defaults.maxConnectionsPerPool,
    maxConnectionsTotal: options.maxConnectionsTotal ?? defaults.maxConnectionsTotal,
    idleEvictMs: options.idleEvictMs ?? defaults.idleEvictMs,
    acquireTimeoutMs: options.acquireTimeoutMs ?? defaults.acquireTimeoutMs,
    statementTimeoutMs: options.statementTimeoutMs ?? defaults.statementTimeoutMs,
    idleInTransactionTimeoutMs:
      options.idleInTransactionTimeoutMs ?? defaults.idleInTransactionTimeoutMs,
  });
  for (const [key, value] of Object.entries(settings)) {
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', `${key} must be a positive integer.`);
    }
  }
  const logger = options.logger ?? silentLogger;

  // Map order is recency of use: the first entries are the least recently used.
  const pools = new Map<string, PoolState>();
  for (const [name, url] of Object.entries(options.connections)) {
    if (!namePattern.test(name)) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `Connection name "${name}" must match ${namePattern}.`,
      );
    }
    if (typeof url !== 'string' || url === '') {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `Connection "${name}" needs a connection string.`,
      );
    }
    const state: PoolState = {
      name,
      url,
      idle: [],
      busy: 0,
      opening: 0,
      closing: 0,
      source: Object.freeze({ connect: () => acquire(state) }),
    };
    pools.set(name, state);
  }
  const names = Object.freeze([...pools.keys()]);
  const waiters: Waiter[] = [];
  let open = 0;
  let peak = 0;
  let evicted = 0;
  let closed = false;
  const ending = new Set<Promise<void>>();

  const touch = (pool: PoolState) => {
    pools.delete(pool.name);
    pools.set(pool.name, pool);
  };

  const openPools = () => {
    let count = 0;
    for (const pool of pools.values()) if (opened(pool) > 0) count++;
    return count;
  };

  const destroy = (pool: PoolState, client: pg.Client) => {
    pool.closing++;
    const ended = client
      .end()
      .catch(() => undefined)
      .finally(() => {
        pool.closing--;
        open--;
        ending.delete(ended);
        pump();
      });
    ending.add(ended);
  };

  const checkout = (pool: PoolState, client: pg.Client): pg.PoolClient => {
    pool.busy++;
    let released = false;
    return Object.assign(client, {
      release(error?: Error | boolean) {
        if (released) return;
        released = true;
        pool.busy--;
        if (error !== undefined && error !== false) destroy(pool, client);
        else if (closed) destroy(pool, client);
        else pool.idle.push({ client, since: Date.now() });
        pump();
      },
    }) as pg.PoolClient;
  };

  /** Closes the least recently used idle connection of another pool; false when there is none. */
  const evictOneFor = (needy: PoolState, wholePool: boolean): boolean => {
    for (const pool of pools.values()) {
      if (pool === needy || pool.idle.length === 0) continue;
      if (wholePool && (pool.busy > 0 || pool.opening > 0)) continue;
      const victims = wholePool ? pool.idle.splice(0) : pool.idle.splice(0, 1);
      for (const victim of victims) destroy(pool, victim.client);
      evicted += victims.length;
      return true;
    }
    return false;
  };

  const startOpen = (waiter: Waiter) => {
    const pool = waiter.pool;
    pool.opening++;
    open++;
    peak = Math.max(peak, open);
    const client = new pg.Client({
      connectionString: pool.url,
      statement_timeout: settings.statementTimeoutMs,
      idle_in_transaction_session_timeout: settings.idleInTransactionTimeoutMs,
      connectionTimeoutMillis: settings.acquireTimeoutMs,
    });
    // A connection lost while checked out must not crash the process (its next query fails and
    // the unit discards it); one lost while idle is closed at once instead of being handed out.
    client.on('error', (error) => {
      logger.warn(
        { err: summarizeError(error), connection: pool.name },
        'dedicated database connection failed',
      );
      const index = pool.idle.findIndex((entry) => entry.client === client);
      if (index >= 0) {
        pool.idle.splice(index, 1);
        destroy(pool, client);
      }
    });
    client.connect().then(
      () => {
        pool.opening--;
        clearTimeout(waiter.timer);
        if (timedOut.has(waiter)) {
          timedOut.delete(waiter);
          pool.idle.push({ client, since: Date.now() });
          pump();
          return;
        }
        waiter.resolve(checkout(pool, client));
      },
      (error: unknown) => {
        pool.opening--;
        open--;
        clearTimeout(waiter.timer);
        const late = timedOut.delete(waiter);
        if (!late) {
          waiter.reject(
            new TenantryError(
              'TENANTRY_ERR_DB_UNAVAILABLE',
              `The dedicated database "${pool.name}" is unavailable; try again shortly.`,
              { cause: error, details: { connection: pool.name } },
            ),
          );
        }
        pump();
      },
    );
  };

  // Waiters that timed out while their connection was being opened.
  const timedOut = new Set<Waiter>();

  const pump = () => {
    // Slots already being freed by connections that are closing: a waiter counts on one of
    // those before another idle connection is closed for it.
    let freeing = 0;
    for (const pool of pools.values()) freeing += pool.closing;
    for (let index = 0; index < waiters.length; ) {
      const waiter = waiters[index] as Waiter;
      const pool = waiter.pool;
      const idle = pool.idle.pop();
      if (idle !== undefined) {
        waiters.splice(index, 1);
        clearTimeout(waiter.timer);
        waiter.resolve(checkout(pool, idle.client));
        continue;
      }
      if (opened(pool) >= settings.maxConnectionsPerPool) {
        index++;
        continue;
      }
      const needsPoolSlot = opened(pool) === 0 && openPools() >= settings.maxPoolsOpen;
      if (needsPoolSlot || open >= settings.maxConnectionsTotal) {
        if (freeing > 0) freeing--;
        else evictOneFor(pool, needsPoolSlot);
        index++;
        continue;
      }
      waiters.splice(index, 1);
      startOpen(waiter);
    }
  };

  function acquire(pool: PoolState): Promise<pg.PoolClient> {
    if (closed) {
      return Promise.reject(
        new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'The pool registry is closed.'),
      );
    }
    touch(pool);
    return new Promise<pg.PoolClient>((resolve, reject) => {
      const waiter: Waiter = {
        pool,
        resolve,
        reject,
        timer: setTimeout(() => {
          const index = waiters.indexOf(waiter);
          if (index >= 0) waiters.splice(index, 1);
          else timedOut.add(waiter);
          reject(
            new TenantryError(
              'TENANTRY_ERR_DB_UNAVAILABLE',
              `No connection to the dedicated database "${pool.name}" became free within ${settings.acquireTimeoutMs} ms; try again shortly.`,
              {
                details: {
                  connection: pool.name,
                  maxConnectionsTotal: settings.maxConnectionsTotal,
                },
              },
            ),
          );
        }, settings.acquireTimeoutMs),
      };
      waiters.push(waiter);
      pump();
    });
  }

  const evictIdle = async (olderThanMs: number = settings.idleEvictMs): Promise<number> => {
    const cutoff = Date.now() - olderThanMs;
    let count = 0;
    for (const pool of pools.values()) {
      const keep = pool.idle.filter((entry) => entry.since > cutoff);
      const victims = pool.idle.filter((entry) => !keep.includes(entry));
      pool.idle.splice(0, pool.idle.length, ...keep);
      for (const victim of victims) destroy(pool, victim.client);
      count += victims.length;
    }
    evicted += count;
    await Promise.all([...ending]);
    return count;
  };

  const sweeper = setInterval(
    () => {
      evictIdle().catch(() => undefined);
    },
    Math.max(10, Math.floor(settings.idleEvictMs / 2)),
  );
  sweeper.unref();

  return Object.freeze({
    names,
    pool(name: string): ConnectionSource {
      const pool = pools.get(name);
      if (pool === undefined) {
        throw new TenantryError(
          'TENANTRY_ERR_CONFIG_INVALID',
          `No connection named "${name}" is configured.`,
          { details: { connection: name } },
        );
      }
      return pool.source;
    },
    stats(): PoolRegistryStats {
      return Object.freeze({
        openConnections: open,
        peakConnections: peak,
        openPools: openPools(),
        waiting: waiters.length,
        evictedConnections: evicted,
        pools: [...pools.values()]
          .filter((pool) => opened(pool) > 0)
          .map((pool) =>
            Object.freeze({
              name: pool.name,
              open: opened(pool),
              idle: pool.idle.length,
              busy: pool.busy,
            }),
          ),
      });
    },
    evictIdle,
    async close() {
      if (closed) return;
      closed = true;
      clearInterval(sweeper);
      for (const waiter of waiters.splice(0)) {
        clearTimeout(waiter.timer);
        waiter.reject(
          new TenantryError('TENANTRY_ERR_DB_UNAVAILABLE', 'The pool registry is closing.'),
        );
      }
      for (const pool of pools.values()) {
        for (const entry of pool.idle.splice(0)) destroy(pool, entry.client);
      }
      await Promise.all([...ending]);
    },
  });
}
