import { AsyncLocalStorage } from 'node:async_hooks';
import { setTimeout as delay } from 'node:timers/promises';
import {
  CompiledQuery,
  type DatabaseConnection,
  type Dialect,
  type Driver,
  Kysely,
  type KyselyPlugin,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  type QueryResult,
  type TransactionSettings,
} from 'kysely';
import pg from 'pg';
import Cursor from 'pg-cursor';
import { defaultTenantrySchema, parseIdentifier, quoteIdentifier } from './config.ts';
import { ContextStatement } from './context-statement.ts';
import { isRetryableError, toTenantryError } from './database-errors.ts';
import { isTenantryError, TenantryError } from './errors.ts';
import { type Logger, silentLogger, summarizeError } from './logger.ts';
import { StatementCache } from './statement-cache.ts';
import { createTenantGuardPlugin } from './tenant-guard.ts';
import { parseTenantId, parseUserId, type TenantId, type UserId } from './tenant-id.ts';

/**
 * Internal to the package (not exported from the index): `tenantry[setCommitStatement](sql,
 * values)` inside a unit of work sends that statement with the unit's COMMIT, in one round trip.
 * `Symbol.for` so a second copy of the package still recognises it.
 */
export const setCommitStatement: unique symbol = Symbol.for('tenantry.setCommitStatement');

/** The tenant (and optionally the user) a unit of work runs for. */
export interface TenantContext {
  readonly tenantId: TenantId;
  readonly userId?: UserId;
}

/** A tenant id, or a tenant id with the acting user's id (for per-user policies). */
export type TenantSelector = string | { readonly tenantId: string; readonly userId?: string };

/** Options for {@link createTenantry}. */
export interface TenantryOptions {
  /** Connection string of the app role (never the owner, never a superuser). */
  readonly connectionString: string;
  /** Largest number of pooled connections. @defaultValue 10 */
  readonly maxConnections?: number;
  /**
   * How long a unit of work waits for a pooled connection (or a new one to open) before it
   * fails with `TENANTRY_ERR_DB_UNAVAILABLE`, instead of waiting forever on an exhausted pool.
   * @defaultValue 10000
   */
  readonly acquireTimeoutMs?: number;
  /** Server-side `statement_timeout` for every pooled connection. @defaultValue 30000 */
  readonly statementTimeoutMs?: number;
  /** Server-side `idle_in_transaction_session_timeout`. @defaultValue 60000 */
  readonly idleInTransactionTimeoutMs?: number;
  /** Schemas whose tables with a `tenant_id` column are tenant tables. @defaultValue ['public'] */
  readonly schemas?: readonly string[];
  /**
   * Tenant tables for the guard (`table` or `schema.table`). When omitted they are discovered
   * from the catalog at start-up.
   */
  readonly tenantTables?: readonly string[];
  /**
   * `enforce` scopes queries on tenant tables and throws outside a tenant context; `off`
   * leaves only RLS.
   * @defaultValue 'enforce'
   */
  readonly guard?: 'enforce' | 'off';
  /**
   * Times a unit of work is run again, from the start, after a serialization failure, a deadlock
   * or a prepared statement invalidated by a schema change. @defaultValue 2
   */
  readonly serializationRetries?: number;
  /**
   * Run the queries of units of work as named prepared statements, kept per connection (least
   * recently used evicted past 256). Parsing and planning once per connection is most of what a
   * point lookup costs the server. Turn off behind a pooler that cannot keep prepared
   * statements (PgBouncer before 1.21, or without `max_prepared_statements`).
   * @defaultValue true
   */
  readonly preparedStatements?: boolean;
  /**
   * Until a unit of work's first write, run each query-builder SELECT as its own read-only
   * transaction in the unit's context (BEGIN READ ONLY, context, query, COMMIT in one round
   * trip); the unit's transaction opens with its first write, savepoint, raw query or stream.
   * Under read committed a statement sees the same rows either way, and a read-only request then
   * costs no COMMIT round trip. What differs: `now()` is per statement for those reads, and a
   * transaction-scoped advisory lock taken inside such a SELECT ends with it. Units with
   * `repeatable read` or `serializable` never do this.
   * @defaultValue true
   */
  readonly autocommitReads?: boolean;
  /** Extra Kysely plugins, applied after the guard. @defaultValue [] */
  readonly plugins?: readonly KyselyPlugin[];
  /**
   * The schema holding a tenant's tables when it is not in the shared (`public`) ones, or
   * `undefined` for a pooled tenant; asked once per unit of work, before its first statement,
   * so answer from a cache (`createSchemaPlacementRouter` from `tenantry/placement` does). The
   * unit then runs with `SET LOCAL search_path = <schema>, public`, which ends with its
   * transaction. A rejection fails the unit; nothing falls back to the shared tables.
   * @defaultValue every tenant in the shared tables
   */
  readonly tenantSchema?: (
    tenantId: TenantId,
  ) => string | undefined | PromiseLike<string | undefined>;
  /**
   * Where a tenant's units of work take their connection when its tables are in a dedicated
   * database, or `undefined` for the app role's pool; asked once per unit of work, before its
   * first statement (`createPlacementRouter` from `tenantry/placement` answers from a cache).
   * A rejection fails the unit; nothing falls back to the pool.
   * @defaultValue every tenant on the app role's pool
   */
  readonly tenantPool?: (
    tenantId: TenantId,
  ) => TenantConnectionSource | undefined | PromiseLike<TenantConnectionSource | undefined>;
  readonly logger?: Logger;
}

/** A source of connections for {@link TenantryOptions.tenantPool}: a `pg.Pool` is one. */
export interface TenantConnectionSource {
  connect(): Promise<pg.PoolClient>;
}

/** Options for one {@link Tenantry.withTenant} call. */
export interface UnitOfWorkOptions {
  readonly isolationLevel?: 'read committed' | 'repeatable read' | 'serializable';
  readonly accessMode?: 'read write' | 'read only';
}

/**
 * A unit of work opened with {@link Tenantry.beginUnit}: its own guarded database handle,
 * bound to it without AsyncLocalStorage, and the calls that end it.
 *
 * @example
 * ```ts
 * const unit = tenantry.beginUnit({ tenantId, userId });
 * try {
 *   await unit.db.insertInto('tags').values({ name: 'vip' }).execute();
 *   await unit.commit();
 * } catch (error) {
 *   await unit.rollback();
 *   throw error;
 * }
 * ```
 */
export interface OpenUnitOfWork<DB> {
  readonly context: TenantContext;
  /** A guarded database that always runs on this unit (savepoints for `transaction()`). */
  readonly db: Kysely<DB>;
  /** Whether a query ran, so the unit holds a connection and an open transaction. */
  readonly isActive: boolean;
  /** Whether `commit()` or `rollback()` was called. */
  readonly isClosed: boolean;
  /**
   * Runs `fn` with this unit as the current one, so `tenantry.db`, `withTenant` and
   * `currentContext()` inside it join the unit.
   */
  run<T>(fn: () => T): T;
  /** Commits (a unit that never queried just closes); a failed commit rolls back and throws. */
  commit(): Promise<void>;
  /** Rolls back and releases the connection; calling it after `commit()` does nothing. */
  rollback(): Promise<void>;
}

/** A Tenantry instance: a guarded Kysely database on the app role's pool and the tenant context. */
export interface Tenantry<DB> {
  /**
   * The guarded database. Inside a unit of work it runs on that unit's transaction; outside,
   * on the pool, where queries on tenant tables throw `TENANTRY_ERR_CONTEXT_MISSING`.
   */
  readonly db: Kysely<DB>;
  /** Tenant tables the guard scopes. */
  readonly tenantTables: ReadonlySet<string>;
  /**
   * Runs `fn` in a transaction whose first statements set the tenant context; commits when it
   * resolves, rolls back when it throws. Nested calls for the same tenant join the open unit of
   * work instead of taking a second connection.
   */
  withTenant<T>(
    tenant: TenantSelector,
    fn: (db: Kysely<DB>) => Promise<T>,
    options?: UnitOfWorkOptions,
  ): Promise<T>;
  /**
   * Runs a unit of work made of exactly one query, sending BEGIN, the context, the query and
   * COMMIT in one round trip.
   */
  oneShot<T>(tenant: TenantSelector, fn: (db: Kysely<DB>) => Promise<T>): Promise<T>;
  /**
   * Opens a unit of work by hand, for frameworks whose request spans several callbacks (the
   * Fastify plugin uses it). Like `withTenant` it takes no connection until its first query;
   * unlike it, the caller must end it with `commit()` or `rollback()`, and nothing is retried.
   */
  beginUnit(tenant: TenantSelector, options?: UnitOfWorkOptions): OpenUnitOfWork<DB>;
  /** The context of the unit of work the caller runs in, if any. */
  currentContext(): TenantContext | undefined;
  /** Closes the pool. */
  close(): Promise<void>;
}

const defaults = {
  maxConnections: 10,
  acquireTimeoutMs: 10_000,
  statementTimeoutMs: 30_000,
  idleInTransactionTimeoutMs: 60_000,
  serializationRetries: 2,
};

function parseSelector(tenant: TenantSelector): TenantContext {
  if (typeof tenant === 'string') return { tenantId: parseTenantId(tenant) };
  if (typeof tenant !== 'object' || tenant === null) return { tenantId: parseTenantId(tenant) };
  const tenantId = parseTenantId(tenant.tenantId);
  return tenant.userId === undefined
    ? { tenantId }
    : { tenantId, userId: parseUserId(tenant.userId) };
}

/**
 * Builds the statements that open a unit of work. The ids are validated UUIDs (hex and hyphens
 * only), so the literals are safe; `SET LOCAL` is used because Citus forwards it to workers and
 * does not forward `set_config()`.
 */
function contextStatements(
  context: TenantContext,
  options: UnitOfWorkOptions | undefined,
): string[] {
  let begin = 'begin';
  if (options?.isolationLevel !== undefined)
    begin += ` isolation level ${isolationLevels[options.isolationLevel]}`;
  if (options?.accessMode !== undefined)
    begin += options.accessMode === 'read only' ? ' read only' : ' read write';
  const statements = [begin, `set local tenantry.tenant_id = '${parseTenantId(context.tenantId)}'`];
  if (context.userId !== undefined)
    statements.push(`set local tenantry.user_id = '${parseUserId(context.userId)}'`);
  return statements;
}

/**
 * The statements that open a read-only transaction for one read before the unit's first write,
 * or `undefined` when reads must share the unit's transaction (repeatable read and serializable
 * units, whose reads must see one snapshot, or `autocommitReads: false`).
 */
function readStatements(
  context: TenantContext,
  options: UnitOfWorkOptions | undefined,
  enabled: boolean,
): string[] | undefined {
  const level = options?.isolationLevel;
  if (!enabled || (level !== undefined && level !== 'read committed')) return undefined;
  const [, ...settings] = contextStatements(context, undefined);
  return ['begin read only', ...settings];
}

const isolationLevels = {
  'read committed': 'read committed',
  'repeatable read': 'repeatable read',
  serializable: 'serializable',
} as const;

function toQueryResult<R>(result: pg.QueryResult): QueryResult<R> {
  const command = result.command;
  if (command === 'INSERT' || command === 'UPDATE' || command === 'DELETE' || command === 'MERGE') {
    return { numAffectedRows: BigInt(result.rowCount ?? 0), rows: (result.rows ?? []) as R[] };
  }
  return { rows: (result.rows ?? []) as R[] };
}

async function runQuery(client: pg.PoolClient, compiled: CompiledQuery): Promise<pg.QueryResult> {
  try {
    return await client.query({ text: compiled.sql, values: compiled.parameters as unknown[] });
  } catch (error) {
    throw toTenantryError(error);
  }
}

/**
 * Reads a query through a server-side cursor, `chunkSize` rows per round trip, so a large
 * result never sits in memory whole. `onRead` sees every read (to record failures).
 */
async function* streamRows<R>(
  client: pg.PoolClient,
  compiled: CompiledQuery,
  chunkSize: number | undefined,
  onRead: <T>(read: Promise<T>) => Promise<T> = (read) => read,
): AsyncIterableIterator<QueryResult<R>> {
  const size = chunkSize ?? 100;
  if (!Number.isInteger(size) || size < 1) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'The stream chunk size must be a positive integer.',
    );
  }
  const cursor = client.query(new Cursor<R>(compiled.sql, compiled.parameters as unknown[]));
  try {
    while (true) {
      let rows: R[];
      try {
        rows = await onRead(cursor.read(size));
      } catch (error) {
        throw toTenantryError(error);
      }
      if (rows.length === 0) return;
      yield { rows };
    }
  } finally {
    await cursor.close().catch(() => undefined);
  }
}

class PooledConnection implements DatabaseConnection {
  readonly client: pg.PoolClient;
  constructor(client: pg.PoolClient) {
    this.client = client;
  }
  async executeQuery<R>(compiled: CompiledQuery): Promise<QueryResult<R>> {
    return toQueryResult<R>(await runQuery(this.client, compiled));
  }
  streamQuery<R>(
    compiled: CompiledQuery,
    chunkSize?: number,
  ): AsyncIterableIterator<QueryResult<R>> {
    return streamRows<R>(this.client, compiled, chunkSize);
  }
}

/**
 * One tenant transaction on one pooled connection. Nothing is sent until the first query, which
 * carries `BEGIN` and the context in the same round trip (one Sync); a unit of work that runs no
 * query costs no statement at all.
 */
class UnitOfWork implements DatabaseConnection {
  readonly context: TenantContext;
  readonly #acquire: () => Promise<pg.PoolClient>;
  #connecting: Promise<pg.PoolClient> | undefined;
  #ended = false;
  readonly #prefix: readonly string[];
  /** Set while reads may still run as their own read-only transactions (see executeQuery). */
  #readPrefix: readonly string[] | undefined;
  readonly #oneShot: boolean;
  #state: 'idle' | 'begun' | 'done' | 'closed' = 'idle';
  #pending = new Set<Promise<unknown>>();
  #failure: unknown;
  /** The first consumption a limit refused in this unit (see {@link noteQuotaRefusal}). */
  #quotaRefusal: TenantryError | undefined;
  #savepoints = 0;
  #streaming = false;
  #broken = false;
  readonly #savepointStack: { name: string; failure: unknown }[] = [];
  #commitStatement: { readonly sql: string; readonly values: readonly unknown[] } | undefined;

  readonly #statements: StatementCache | undefined;
  readonly #tenantSchema: TenantryOptions['tenantSchema'];
  readonly #tenantPool: TenantryOptions['tenantPool'];
  /** `SET LOCAL search_path` for a tenant placed in its own schema, known once connected. */
  #searchPath: string | undefined;

  constructor(
    acquire: () => Promise<pg.PoolClient>,
    context: TenantContext,
    prefix: readonly string[],
    oneShot: boolean,
    statements: StatementCache | undefined,
    readPrefix: readonly string[] | undefined = undefined,
    tenantSchema: TenantryOptions['tenantSchema'] = undefined,
    tenantPool: TenantryOptions['tenantPool'] = undefined,
  ) {
    this.#tenantSchema = tenantSchema;
    this.#tenantPool = tenantPool;
    this.#acquire = acquire;
    this.#readPrefix = readPrefix;
    this.context = context;
    this.#prefix = prefix;
    this.#oneShot = oneShot;
    this.#statements = statements;
  }

  get isOpen(): boolean {
    return this.#state !== 'closed';
  }

  /**
   * A statement sent with the COMMIT, in the same round trip; if it fails, the server skips the
   * COMMIT and the unit rolls back. The job worker settles a job this way, atomically with the
   * job's work.
   */
  setCommitStatement(sql: string, values: readonly unknown[]): void {
    this.#assertUsable();
    if (this.#oneShot) {
      throw new TenantryError(
        'TENANTRY_ERR_ONE_SHOT_SECOND_QUERY',
        'A one-shot unit of work runs exactly one query; use withTenant() for more.',
      );
    }
    this.#commitStatement = { sql, values };
  }

  /** Whether a statement was sent, so the unit holds a connection and a transaction. */
  get isActive(): boolean {
    return this.#connecting !== undefined;
  }

  /**
   * The unit's connection, taken from the pool by the first statement: a unit of work that
   * never queries never takes one.
   */
  #connect(): Promise<pg.PoolClient> {
    this.#connecting ??=
      this.#tenantSchema === undefined && this.#tenantPool === undefined
        ? this.#acquire()
        : this.#route();
    return this.#connecting;
  }

  /** Asks where the tenant's tables live before taking a connection. */
  async #route(): Promise<pg.PoolClient> {
    const schema = await this.#tenantSchema?.(this.context.tenantId);
    if (schema !== undefined) {
      this.#searchPath = `set local search_path = ${quoteIdentifier(parseIdentifier(schema, 'tenantSchema'))}, public`;
    }
    if (this.#tenantPool === undefined) return this.#acquire();
    const source = await this.#tenantPool(this.context.tenantId);
    return source === undefined ? this.#acquire() : connectClient(source);
  }

  /** The statements that open a transaction, with the tenant's search path when it has one. */
  #routed(prefix: readonly string[]): readonly string[] {
    return this.#searchPath === undefined ? prefix : [...prefix, this.#searchPath];
  }

  /** Whether the connection's transaction state is unknown, so it must not be reused. */
  get isBroken(): boolean {
    return this.#broken;
  }

  /**
   * Savepoints for Kysely transactions inside the unit. Rolling back to one also forgets the
   * statement failures that happened after it, so the unit can still commit.
   */
  async savepoint(verb: 'savepoint' | 'release' | 'rollback'): Promise<void> {
    if (verb === 'savepoint') {
      this.#savepoints++;
      const name = `tenantry_savepoint_${this.#savepoints}`;
      this.#savepointStack.push({ name, failure: this.#failure });
      await this.executeQuery(CompiledQuery.raw(`savepoint ${name}`));
      return;
    }
    const top = this.#savepointStack.pop();
    if (top === undefined) return;
    if (verb === 'release') {
      await this.executeQuery(CompiledQuery.raw(`release savepoint ${top.name}`));
      return;
    }
    await this.#settle();
    await this.executeQuery(CompiledQuery.raw(`rollback to savepoint ${top.name}`));
    this.#failure = top.failure;
  }

  #track<T>(promise: Promise<T>): Promise<T> {
    this.#pending.add(promise);
    promise.then(
      () => this.#pending.delete(promise),
      (error: unknown) => {
        this.#pending.delete(promise);
        const mapped = toTenantryError(error);
        this.#failure ??= mapped;
        if (isTenantryError(mapped, 'TENANTRY_ERR_QUOTA_EXCEEDED')) this.#quotaRefusal ??= mapped;
      },
    );
    return promise;
  }

  async executeQuery<R>(compiled: CompiledQuery): Promise<QueryResult<R>> {
    this.#assertUsable();
    if (this.#oneShot) return this.#executeOneShot<R>(compiled);
    if (
      this.#state === 'idle' &&
      this.#readPrefix !== undefined &&
      compiled.query.kind === 'SelectQueryNode'
    ) {
      return this.#executeRead<R>(compiled, this.#readPrefix);
    }
    const values = compiled.parameters as unknown[];
    // The first query opens the transaction; `#state` changes before anything is awaited so
    // concurrent queries queue behind it on the client in order.
    const opens = this.#state === 'idle';
    this.#state = 'begun';
    const sent = this.#track(
      this.#connect().then((client) =>
        new ContextStatement(
          opens ? this.#routed(this.#prefix) : [],
          compiled.sql,
          values,
          [],
          this.#statements,
        ).run(client),
      ),
    );
    try {
      const { result, commands } = await sent;
      if (opens && commands[0] !== 'BEGIN') throw rolledBack(undefined);
      return toQueryResult<R>(result);
    } catch (error) {
      throw toTenantryError(error);
    }
  }

  /**
   * A query-builder SELECT before the unit's first write runs as its own read-only transaction
   * (BEGIN READ ONLY, the context, the query and COMMIT under one Sync): one round trip, and no
   * COMMIT left for the end of the unit. Under read committed every statement takes its own
   * snapshot anyway, so the rows seen are the same as inside one transaction. A SELECT that
   * turns out to write (a volatile function, FOR UPDATE) is refused by the server as read-only
   * (25006), changed nothing, and runs again inside the unit's transaction, which it opens.
   */
  async #executeRead<R>(
    compiled: CompiledQuery,
    readPrefix: readonly string[],
  ): Promise<QueryResult<R>> {
    const values = compiled.parameters as unknown[];
    const read = async (): Promise<pg.QueryResult> => {
      const client = await this.#connect();
      try {
        const outcome = await new ContextStatement(
          this.#routed(readPrefix),
          compiled.sql,
          values,
          ['commit'],
          this.#statements,
        ).run(client);
        if (outcome.commands[0] !== 'BEGIN' || outcome.commands.at(-1) !== 'COMMIT') {
          throw rolledBack(undefined);
        }
        return outcome.result;
      } catch (error) {
        // The server skipped the COMMIT after the error, leaving the transaction aborted.
        await client.query('rollback').catch(() => {
          this.#broken = true;
        });
        if ((error as { code?: unknown }).code !== '25006') throw error;
      }
      this.#readPrefix = undefined;
      const prefix = this.#state === 'idle' ? this.#routed(this.#prefix) : [];
      this.#state = 'begun';
      const { result, commands } = await new ContextStatement(
        prefix,
        compiled.sql,
        values,
        [],
        this.#statements,
      ).run(client);
      if (prefix.length > 0 && commands[0] !== 'BEGIN') throw rolledBack(undefined);
      return result;
    };
    try {
      return toQueryResult<R>(await this.#track(read()));
    } catch (error) {
      throw toTenantryError(error);
    }
  }

  async #executeOneShot<R>(compiled: CompiledQuery): Promise<QueryResult<R>> {
    if (this.#state !== 'idle') {
      throw new TenantryError(
        'TENANTRY_ERR_ONE_SHOT_SECOND_QUERY',
        'A one-shot unit of work runs exactly one query; use withTenant() for more.',
      );
    }
    this.#state = 'begun';
    const client = await this.#connect();
    let outcome: Awaited<ReturnType<ContextStatement['run']>>;
    try {
      outcome = await new ContextStatement(
        this.#routed(this.#prefix),
        compiled.sql,
        compiled.parameters as unknown[],
        ['commit'],
        this.#statements,
      ).run(client);
    } catch (error) {
      // The server skipped the COMMIT after the error, leaving the transaction aborted.
      await client.query('rollback').catch(() => {
        this.#broken = true;
      });
      this.#state = 'done';
      throw toTenantryError(error);
    }
    this.#state = 'done';
    if (outcome.commands.at(-1) !== 'COMMIT') throw rolledBack(undefined);
    return toQueryResult<R>(outcome.result);
  }

  /**
   * Streams through a cursor inside the unit's transaction. While a stream is open the
   * connection is busy with it: another query on the unit is refused rather than left waiting
   * behind the stream forever.
   */
  async *streamQuery<R>(
    compiled: CompiledQuery,
    chunkSize?: number,
  ): AsyncIterableIterator<QueryResult<R>> {
    this.#assertUsable();
    if (this.#oneShot) {
      throw new TenantryError(
        'TENANTRY_ERR_STREAMING_UNSUPPORTED',
        'A one-shot unit of work cannot stream; use withTenant() to read through a cursor.',
      );
    }
    this.#streaming = true;
    try {
      const client = await this.#connect();
      if (this.#state === 'idle') {
        this.#state = 'begun';
        // The prefix holds only validated literals (see contextStatements).
        const begun = await this.#track(client.query(this.#routed(this.#prefix).join('; ')));
        const commands = (Array.isArray(begun) ? begun : [begun]).map(
          (result: pg.QueryResult) => result.command,
        );
        if (commands[0] !== 'BEGIN') throw rolledBack(undefined);
      }
      yield* streamRows<R>(client, compiled, chunkSize, (read) => this.#track(read));
    } finally {
      this.#streaming = false;
    }
  }

  #assertUsable(): void {
    if (this.#state === 'closed') {
      throw new TenantryError(
        'TENANTRY_ERR_UNIT_OF_WORK_CLOSED',
        'This unit of work has already committed or rolled back; start a new one with withTenant().',
      );
    }
    if (this.#streaming) {
      throw new TenantryError(
        'TENANTRY_ERR_STREAM_OPEN',
        'A stream is still open on this unit of work; finish or break out of it before running another query.',
      );
    }
  }

  async #settle(): Promise<unknown> {
    while (this.#pending.size > 0) await Promise.allSettled([...this.#pending]);
    return this.#failure;
  }

  async #commit(client: pg.PoolClient): Promise<void> {
    if (this.#oneShot) {
      this.#state = 'closed';
      return;
    }
    const commitStatement = this.#commitStatement;
    if (this.#state === 'idle' && commitStatement === undefined) {
      // Only autocommitted reads ran; a failed one still fails the unit.
      const failure = await this.#settle();
      this.#state = 'closed';
      if (failure !== undefined) throw rolledBack(failure);
      return;
    }
    const begun = this.#state === 'begun';
    const failure = await this.#settle();
    this.#state = 'closed';
    if (failure !== undefined) {
      if (begun) await client.query('rollback');
      throw rolledBack(failure);
    }
    if (commitStatement !== undefined) {
      let outcome: Awaited<ReturnType<ContextStatement['run']>>;
      try {
        outcome = await new ContextStatement(
          begun ? [] : this.#routed(this.#prefix),
          commitStatement.sql,
          commitStatement.values as unknown[],
          ['commit'],
          this.#statements,
        ).run(client);
      } catch (error) {
        // The server skipped the COMMIT after the error, leaving the transaction aborted.
        await client.query('rollback').catch(() => {
          this.#broken = true;
        });
        throw toTenantryError(error);
      }
      if (outcome.commands.at(-1) !== 'COMMIT') throw rolledBack(undefined);
      return;
    }
    let result: pg.QueryResult;
    try {
      result = await client.query('commit');
    } catch (error) {
      throw toTenantryError(error);
    }
    if (result.command !== 'COMMIT') throw rolledBack(undefined);
  }

  async #rollback(client: pg.PoolClient): Promise<void> {
    const begun = this.#state === 'begun' && !this.#oneShot;
    this.#state = 'closed';
    await this.#settle();
    if (begun) await client.query('rollback');
  }

  /**
   * Commits (or, with `commit` false, rolls back) and gives the connection back. A failed
   * commit rolls back and rethrows. `cause` is the error that ended the unit, if any.
   */
  async end(commit: boolean, cause?: unknown): Promise<void> {
    if (this.#ended) return;
    this.#ended = true;
    // A unit whose only statement is its commit statement still has to send it.
    if (commit && this.#commitStatement !== undefined && this.#state === 'idle') this.#connect();
    const connecting = this.#connecting;
    if (connecting === undefined) {
      this.#state = 'closed';
      return;
    }
    let client: pg.PoolClient;
    try {
      client = await connecting;
    } catch (error) {
      this.#state = 'closed';
      // The statements never ran, so the unit cannot commit even if the caller swallowed that.
      if (commit) throw rolledBack(toTenantryError(error));
      return;
    }
    let broken = this.#broken || isTenantryError(cause, 'TENANTRY_ERR_DB_UNAVAILABLE');
    let failure: unknown;
    if (commit) {
      try {
        await this.#commit(client);
      } catch (error) {
        failure = error;
        broken ||= isTenantryError(error, 'TENANTRY_ERR_DB_UNAVAILABLE');
      }
    }
    if (!commit || failure !== undefined) {
      await this.#rollback(client).catch(() => {
        broken = true;
      });
    }
    if (this.#quotaRefusal !== undefined && !broken) {
      broken = !(await noteQuotaRefusal(client, this.#prefix, this.#quotaRefusal));
    }
    // A connection whose transaction state is unknown must never go back to the pool.
    client.release(
      broken ? new Error('tenantry: discarding connection after a failed unit of work') : undefined,
    );
    if (failure !== undefined) throw failure;
  }
}

/**
 * Records `quota.exceeded` for a refused consumption, in a transaction of its own on the unit's
 * connection after the unit ended: the refusal rolled back the statement (usually the whole unit)
 * that would have written it. `tenantry.note_quota_exceeded()` emits the event once per tenant,
 * metric and billing period. Best effort: the caller already has its error. Returns false when
 * the connection's state is unknown afterwards.
 */
async function noteQuotaRefusal(
  client: pg.PoolClient,
  prefix: readonly string[],
  refusal: TenantryError,
): Promise<boolean> {
  const metric = refusal.details?.metric;
  if (typeof metric !== 'string') return true;
  const requested = refusal.details?.requested;
  try {
    await new ContextStatement(
      ['begin', ...prefix.slice(1)],
      `select ${defaultTenantrySchema}.note_quota_exceeded($1, $2)`,
      [metric, typeof requested === 'number' ? requested : null],
      ['commit'],
    ).run(client);
    return true;
  } catch {
    return client
      .query('rollback')
      .then(() => true)
      .catch(() => false);
  }
}

function rolledBack(cause: unknown): TenantryError {
  if (cause instanceof TenantryError) return cause;
  return new TenantryError(
    'TENANTRY_ERR_TRANSACTION_ROLLED_BACK',
    'The transaction was rolled back because a statement in it failed.',
    { cause },
  );
}

class TenantryDriver implements Driver {
  readonly #pool: pg.Pool;
  readonly #unit: () => UnitOfWork | undefined;
  readonly #ownsPool: boolean;

  /**
   * `unit` names the unit of work queries run on (the AsyncLocalStorage one, or a bound one);
   * without one they run on a pooled connection, where the guard refuses tenant tables.
   */
  constructor(pool: pg.Pool, unit: () => UnitOfWork | undefined, ownsPool: boolean) {
    this.#pool = pool;
    this.#unit = unit;
    this.#ownsPool = ownsPool;
  }

  async init(): Promise<void> {}

  async acquireConnection(): Promise<DatabaseConnection> {
    const unit = this.#unit();
    if (unit !== undefined) return unit;
    return new PooledConnection(await connectClient(this.#pool));
  }

  async beginTransaction(
    connection: DatabaseConnection,
    settings: TransactionSettings,
  ): Promise<void> {
    if (connection instanceof UnitOfWork) {
      await connection.savepoint('savepoint');
      return;
    }
    let statement = 'begin';
    if (settings.isolationLevel !== undefined)
      statement += ` isolation level ${settings.isolationLevel}`;
    if (settings.accessMode !== undefined) statement += ` ${settings.accessMode}`;
    await (connection as PooledConnection).client.query(statement);
  }

  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    if (connection instanceof UnitOfWork) await connection.savepoint('release');
    else await (connection as PooledConnection).client.query('commit');
  }

  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    if (connection instanceof UnitOfWork) await connection.savepoint('rollback');
    else await (connection as PooledConnection).client.query('rollback');
  }

  async releaseConnection(connection: DatabaseConnection): Promise<void> {
    if (connection instanceof PooledConnection) connection.client.release();
  }

  async destroy(): Promise<void> {
    if (this.#ownsPool && !this.#pool.ended) await this.#pool.end();
  }
}

/**
 * pg-pool listens for a client's `error` only while the client is idle in the pool; a connection
 * lost while a unit of work holds it (a terminated backend, a failover) would otherwise emit an
 * unhandled `error` and crash the process. The unit's next query fails and is mapped anyway.
 */
function ignoreClientError(): void {}

async function connectClient(pool: TenantConnectionSource): Promise<pg.PoolClient> {
  try {
    const client = await pool.connect();
    if (!client.listeners('error').includes(ignoreClientError))
      client.on('error', ignoreClientError);
    return client;
  } catch (error) {
    const mapped = toTenantryError(error);
    if (mapped instanceof TenantryError) throw mapped;
    throw new TenantryError(
      'TENANTRY_ERR_DB_UNAVAILABLE',
      'The database is unavailable; try again shortly.',
      {
        cause: error,
      },
    );
  }
}

/**
 * Discovers tenant tables: relations with a `tenant_id` column in the managed schemas.
 * Partitions are left out: the app role reaches them only through their parent.
 */
const discoverTenantTablesSql = `
  select n.nspname as schema, c.relname as name
  from pg_catalog.pg_class c
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped
  where c.relkind in ('r', 'p', 'v', 'm', 'f') and not c.relispartition and n.nspname = any($1::text[])`;

/**
 * Creates a Tenantry instance on the app role's connection pool.
 *
 * @example
 * ```ts
 * import { createTenantry } from 'tenantry';
 * const tenantry = await createTenantry<DB>({ connectionString: process.env.APP_DATABASE_URL });
 * const contacts = await tenantry.withTenant(tenantId, (db) =>
 *   db.selectFrom('contacts').selectAll().execute(),
 * );
 * const one = await tenantry.oneShot(tenantId, (db) =>
 *   db.selectFrom('contacts').selectAll().where('id', '=', contactId).executeTakeFirst(),
 * );
 * await tenantry.close();
 * ```
 */
export async function createTenantry<DB>(options: TenantryOptions): Promise<Tenantry<DB>> {
  const settings = Object.freeze({ ...defaults, ...stripUndefined(options) });
  if (typeof settings.connectionString !== 'string' || settings.connectionString === '') {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'connectionString (the app role) is required.',
    );
  }
  for (const key of [
    'maxConnections',
    'acquireTimeoutMs',
    'statementTimeoutMs',
    'idleInTransactionTimeoutMs',
  ] as const) {
    if (!Number.isInteger(settings[key]) || settings[key] < 1) {
      throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', `${key} must be a positive integer.`);
    }
  }
  if (!Number.isInteger(settings.serializationRetries) || settings.serializationRetries < 0) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'serializationRetries must be a non-negative integer.',
    );
  }
  if (options.tenantSchema !== undefined && typeof options.tenantSchema !== 'function') {
    throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'tenantSchema must be a function.');
  }
  if (options.tenantPool !== undefined && typeof options.tenantPool !== 'function') {
    throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'tenantPool must be a function.');
  }
  const logger = options.logger ?? silentLogger;
  const pool = new pg.Pool({
    connectionString: settings.connectionString,
    max: settings.maxConnections,
    connectionTimeoutMillis: settings.acquireTimeoutMs,
    statement_timeout: settings.statementTimeoutMs,
    idle_in_transaction_session_timeout: settings.idleInTransactionTimeoutMs,
  });
  pool.on('error', (error) =>
    logger.warn({ err: summarizeError(error) }, 'idle database connection failed'),
  );

  let tenantTables: Set<string>;
  try {
    tenantTables = new Set(
      options.tenantTables ?? (await discoverTenantTables(pool, options.schemas ?? ['public'])),
    );
  } catch (error) {
    await pool.end().catch(() => undefined);
    throw toTenantryError(error);
  }

  const storage = new AsyncLocalStorage<UnitOfWork>();
  const statements = options.preparedStatements === false ? undefined : new StatementCache(256);
  const currentUnit = () => {
    const unit = storage.getStore();
    return unit?.isOpen ? unit : undefined;
  };
  const guarded = (options.guard ?? 'enforce') === 'enforce';
  const autocommitReads = options.autocommitReads !== false;
  const createDatabase = (driver: Driver, currentTenantId: () => string | undefined) =>
    new Kysely<DB>({
      dialect: {
        createAdapter: () => new PostgresAdapter(),
        createDriver: () => driver,
        createIntrospector: (db) => new PostgresIntrospector(db),
        createQueryCompiler: () => new PostgresQueryCompiler(),
      } satisfies Dialect,
      plugins: [
        ...(guarded ? [createTenantGuardPlugin({ tenantTables, currentTenantId })] : []),
        ...(options.plugins ?? []),
      ],
    });
  const db = createDatabase(
    new TenantryDriver(pool, currentUnit, true),
    () => currentUnit()?.context.tenantId,
  );

  // A nested call naming only the tenant joins a unit that also carries a user: it asks for no
  // more than the open unit has. Another tenant, or another user, is refused.
  const joinOrFail = (context: TenantContext, unit: UnitOfWork) => {
    if (
      unit.context.tenantId !== context.tenantId ||
      (context.userId !== undefined && unit.context.userId !== context.userId)
    ) {
      throw new TenantryError(
        'TENANTRY_ERR_CONTEXT_MISMATCH',
        'A unit of work for another tenant or user was started inside an open one; run it outside instead.',
      );
    }
  };

  async function runUnit<T>(
    context: TenantContext,
    fn: (db: Kysely<DB>) => Promise<T>,
    unitOptions: UnitOfWorkOptions | undefined,
    oneShot: boolean,
  ): Promise<T> {
    const unit = new UnitOfWork(
      () => connectClient(pool),
      context,
      contextStatements(context, unitOptions),
      oneShot,
      statements,
      oneShot ? undefined : readStatements(context, unitOptions, autocommitReads),
      options.tenantSchema,
      options.tenantPool,
    );
    let result: T;
    try {
      result = await storage.run(unit, () => fn(db));
    } catch (error) {
      // Database errors were mapped where they arose; errors of fn's own pass through as they are.
      await unit.end(false, error).catch(() => undefined);
      throw error;
    }
    await unit.end(true);
    return result;
  }

  async function runWithRetries<T>(
    tenant: TenantSelector,
    fn: (db: Kysely<DB>) => Promise<T>,
    unitOptions: UnitOfWorkOptions | undefined,
    oneShot: boolean,
  ): Promise<T> {
    const context = parseSelector(tenant);
    const open = currentUnit();
    if (open !== undefined) {
      joinOrFail(context, open);
      return fn(db);
    }
    for (let attempt = 0; ; attempt++) {
      try {
        return await runUnit(context, fn, unitOptions, oneShot);
      } catch (error) {
        if (attempt >= settings.serializationRetries || !isRetryableError(error)) throw error;
        logger.debug({ attempt, tenantId: context.tenantId, err: error }, 'retrying unit of work');
        await delay(5 * 2 ** attempt + Math.random() * 10);
      }
    }
  }

  return Object.freeze({
    db,
    tenantTables,
    withTenant<T>(
      tenant: TenantSelector,
      fn: (db: Kysely<DB>) => Promise<T>,
      unitOptions?: UnitOfWorkOptions,
    ) {
      return runWithRetries(tenant, fn, unitOptions, false);
    },
    oneShot<T>(tenant: TenantSelector, fn: (db: Kysely<DB>) => Promise<T>) {
      return runWithRetries(tenant, fn, undefined, true);
    },
    beginUnit(tenant: TenantSelector, unitOptions?: UnitOfWorkOptions): OpenUnitOfWork<DB> {
      const context = parseSelector(tenant);
      const unit = new UnitOfWork(
        () => connectClient(pool),
        context,
        contextStatements(context, unitOptions),
        false,
        statements,
        readStatements(context, unitOptions, autocommitReads),
        options.tenantSchema,
        options.tenantPool,
      );
      const unitDb = createDatabase(
        new TenantryDriver(pool, () => unit, false),
        () => context.tenantId,
      );
      return Object.freeze({
        context,
        db: unitDb,
        get isActive() {
          return unit.isActive;
        },
        get isClosed() {
          return !unit.isOpen;
        },
        run: <T>(fn: () => T): T => storage.run(unit, fn),
        commit: () => unit.end(true),
        rollback: () => unit.end(false),
      });
    },
    currentContext() {
      return currentUnit()?.context;
    },
    [setCommitStatement](sql: string, values: readonly unknown[]): void {
      const unit = currentUnit();
      if (unit === undefined) {
        throw new TenantryError(
          'TENANTRY_ERR_CONTEXT_MISSING',
          'A commit statement can only be set inside a unit of work.',
        );
      }
      unit.setCommitStatement(sql, values);
    },
    async close() {
      await db.destroy();
      // Kysely destroys only a driver it has used; the pool is ended here either way.
      if (!pool.ended) await pool.end();
    },
  });
}

async function discoverTenantTables(pool: pg.Pool, schemas: readonly string[]): Promise<string[]> {
  const result = await pool.query<{ schema: string; name: string }>(discoverTenantTablesSql, [
    schemas,
  ]);
  return result.rows.flatMap((row) => [row.name, `${row.schema}.${row.name}`]);
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(
    Object.entries(value).filter(([, entry]) => entry !== undefined),
  ) as Partial<T>;
}
