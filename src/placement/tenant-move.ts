import type pg from 'pg';
import { quoteIdentifier, type RoleNames } from '../config.ts';
import { connectClient } from '../database/client.ts';
import { toTenantryError } from '../database-errors.ts';
import { isTenantryError, TenantryError, type TenantryErrorCode } from '../errors.ts';
import { type Logger, silentLogger } from '../logger.ts';
import type { MigrationSource } from '../migrations/migrate.ts';
import { deletionOrder, listTenantTables } from '../platform/tenant-tables.ts';
import { parseTenantId, type TenantId } from '../tenant-id.ts';
import { advanceAcross, checkDatabaseUrl, rollbackAcross } from './database-move.ts';
import {
  ownerRoleStatement,
  type PlacementSettings,
  poolAppliedFiles,
  readTenantMigrations,
  resolvePlacementSettings,
  schemaLockKey,
} from './migrate-targets.ts';
import {
  compareWithPool,
  defaultTenantSchemaName,
  moveFenceTriggerPrefix,
  provisionTenantSchema,
  type ReplayedMigration,
} from './schema-targets.ts';

/**
 * Where a tenant's rows live: the shared tables of `public`, a schema of its own, or the `public`
 * schema of a dedicated database.
 */
export type MovablePlacement = 'pool' | 'schema' | 'database';

/**
 * The last step of a move that committed. `held`: the tenant's writes are refused (its requests
 * get 503) until the move switches or is rolled back; `switched`: the tenant is served from the
 * target; `finished` and `rolled_back` close the move.
 */
export type TenantMoveStep =
  | 'started'
  | 'provisioned'
  | 'copied'
  | 'held'
  | 'switched'
  | 'cleaned'
  | 'finished'
  | 'rolled_back';

/** What a move reports as it goes. */
export interface TenantMoveProgress {
  readonly moveId: string;
  readonly tenantId: TenantId;
  /** The step that just committed, or, for a table event, the step under way. */
  readonly step: TenantMoveStep;
  /** On table events: the table (`contacts`). */
  readonly table?: string;
  /** On table events: rows copied (`copy`) or rows inserted and deleted to catch up (`delta`). */
  readonly phase?: 'copy' | 'delta';
  readonly rows?: number;
  readonly deleted?: number;
}

/** One table of a moved tenant, as the move verified it. */
export interface TenantMoveTable {
  readonly table: string;
  /** Rows of the tenant when the move switched (or when it copied, before the switch). */
  readonly rows: number;
  /** md5 of the tenant's rows in text form, sorted; equal in source and target. */
  readonly checksum: string;
  /** Rows copied from the snapshot. */
  readonly copiedRows: number;
  /** Rows inserted into and deleted from the target during the hold, to catch up. */
  readonly deltaInserted: number;
  readonly deltaDeleted: number;
}

/** A move's journal row, as the functions of this module return it. */
export interface TenantMoveReport {
  readonly moveId: string;
  readonly tenantId: TenantId;
  readonly from: MovablePlacement;
  readonly to: MovablePlacement;
  /** `public` for the pool and for a dedicated database, else the dedicated schema. */
  readonly fromSchema: string;
  readonly toSchema: string;
  /** The dedicated database's connection name and database name, when one is the source. */
  readonly fromConnection: string | null;
  readonly fromDatabase: string | null;
  /** The dedicated database's connection name and database name, when one is the target. */
  readonly toConnection: string | null;
  readonly toDatabase: string | null;
  readonly step: TenantMoveStep;
  readonly tables: readonly TenantMoveTable[];
  /** How long the tenant's writes were held (from the hold to the switch), once switched. */
  readonly holdMs: number | null;
  readonly startedAt: Date;
  readonly finishedAt: Date | null;
  /** Time spent by this call. */
  readonly durationMs: number;
}

/** Options shared by {@link moveTenant}, {@link resumeTenantMove} and {@link rollbackTenantMove}. */
export interface TenantMoveCommonOptions {
  /**
   * A superuser's URL (statements then run as the owner), or the owner's when it may set
   * `session_replication_role` (`GRANT SET ON PARAMETER session_replication_role TO <owner>`):
   * copies run with it set to `replica`, so the application's triggers (quota counters, search
   * terms) do not count the copied rows twice and the write fence lets the mover through.
   */
  readonly connectionString: string;
  readonly tenantId: string;
  /**
   * The application's tenant migration sources (as for `placeTenantInSchema`): replayed in a new
   * schema when moving to one. Required to move to a schema.
   */
  readonly sources?: readonly MigrationSource[];
  /**
   * How long one attempt waits for a table lock (fence on, fence off, schema drop) before giving
   * way to the application's transactions and retrying. Other tenants' writes to the pool wait at
   * most this long. @defaultValue 200
   */
  readonly lockTimeoutMs?: number;
  /** Attempts at each of those locks before the step fails. @defaultValue 50 */
  readonly lockAttempts?: number;
  /**
   * After moving a tenant out of the pool, how long the write fence stays on the pool's tables
   * once the switch committed: a process that read the old placement just before the switch
   * (its router had not received the notification yet) is refused instead of writing into the
   * pool. @defaultValue 5000
   */
  readonly fenceGraceMs?: number;
  /**
   * Owner (or superuser) URLs of the dedicated databases, by connection name (the names
   * `createPoolRegistry` routes with): required when a move's source or target is a dedicated
   * database. Each URL must name the database the catalog records for that connection.
   */
  readonly databases?: Readonly<Record<string, string>>;
  /**
   * Sources applied whole to a dedicated database before the tenant statements when moving a
   * tenant into one, after Tenantry's core (always applied): as for `placeTenantInDatabase`.
   * @defaultValue []
   */
  readonly platformSources?: readonly MigrationSource[];
  /**
   * Called after each step commits and for each table copied. An error it throws stops the move
   * where it is, exactly like a crash: resume or roll it back.
   */
  readonly onProgress?: (progress: TenantMoveProgress) => void | Promise<void>;
  /** Schema of Tenantry's own objects. @defaultValue 'tenantry' */
  readonly tenantrySchema?: string;
  readonly roles?: Partial<RoleNames>;
  readonly logger?: Logger;
}

/** Options for {@link moveTenant}. */
export interface MoveTenantOptions extends TenantMoveCommonOptions {
  readonly to: MovablePlacement;
  /** The dedicated schema to create when moving to one. @defaultValue {@link defaultTenantSchemaName} */
  readonly schema?: string;
  /** The dedicated database's connection name when moving to one (a key of `databases`). */
  readonly connection?: string;
}

/**
 * Error codes a move raises beyond the catalog's own, kept in one place so each can land on a
 * dedicated code at once.
 */
export const moveErrorCodes = Object.freeze({
  /** A move that cannot start or go on in the tenant's state (open move, wrong placement). */
  stateConflict: 'TENANTRY_ERR_TENANT_STATE_CONFLICT',
  /** Source and target rows differ after a copy. */
  verifyFailed: 'TENANTRY_ERR_TENANT_MOVE_VERIFY_FAILED',
  /** Locks not obtained within the attempts. */
  busy: 'TENANTRY_ERR_DB_TIMEOUT',
} as const satisfies Record<string, TenantryErrorCode>);

/** SQLSTATE of the write fence's refusal. */
export const tenantMovingSqlState = 'TM001';

export interface MoveRow {
  id: string;
  tenant_id: TenantId;
  from_placement: MovablePlacement;
  to_placement: MovablePlacement;
  from_schema: string;
  to_schema: string;
  from_connection: string | null;
  from_database: string | null;
  to_connection: string | null;
  to_database: string | null;
  step: TenantMoveStep;
  tables: Record<string, Partial<TenantMoveTable>>;
  migrations: ReplayedMigration[];
  started_at: Date;
  held_at: Date | null;
  switched_at: Date | null;
  finished_at: Date | null;
}

export interface MoveTableSpec {
  readonly table: string;
  readonly columns: readonly string[];
  readonly primaryKey: readonly string[];
}

interface Settings {
  readonly placement: PlacementSettings;
  readonly connectionString: string;
  readonly databases: Readonly<Record<string, string>>;
  readonly platformSources: readonly MigrationSource[];
  readonly tenantry: string;
  readonly lockTimeoutMs: number;
  readonly lockAttempts: number;
  readonly fenceGraceMs: number;
  readonly logger: Logger;
  readonly onProgress: TenantMoveCommonOptions['onProgress'];
}

export interface Session {
  readonly client: pg.Client;
  readonly tenantId: TenantId;
  readonly settings: Settings;
  readonly roleStatement: string;
  readonly started: number;
}

/** A hook failure: propagated untouched, with nothing undone (it stands for a crash). */
class ProgressHookError extends Error {
  readonly original: unknown;
  constructor(original: unknown) {
    super('onProgress failed');
    this.original = original;
  }
}

/**
 * Moves a tenant with rows between the pool and a dedicated schema of the same database, online:
 * copies its rows from every tenant table of `public` in one snapshot, verifies counts and
 * checksums, holds its writes (its requests get 503 with `Retry-After`, its jobs are deferred, and
 * a write fence refuses whatever still reaches the old place), catches up the rows changed since
 * the snapshot, verifies again and switches the placement in one transaction, then removes the
 * tenant's rows from the source. Other tenants are never refused; their writes to the pool wait
 * at most `lockTimeoutMs` while the fence goes on and off.
 *
 * Every step is recorded in `tenantry.tenant_moves`; a move stopped at any step leaves the tenant
 * served from exactly one place and is finished by {@link resumeTenantMove} or undone by
 * {@link rollbackTenantMove}.
 *
 * @example
 * ```ts
 * import { moveTenant } from 'tenantry/placement';
 * const report = await moveTenant({
 *   connectionString: adminUrl,
 *   tenantId,
 *   to: 'schema',
 *   sources: [{ name: 'app', directory: 'app/migrations' }],
 *   onProgress: (event) => console.error(event.step, event.table ?? '', event.rows ?? ''),
 * });
 * console.log(report.holdMs, report.tables);
 * ```
 */
export async function moveTenant(options: MoveTenantOptions): Promise<TenantMoveReport> {
  if (options.to !== 'pool' && options.to !== 'schema' && options.to !== 'database') {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'to must be "pool", "schema" or "database".',
    );
  }
  return withSession(options, async (session) => {
    const move = await startMove(session, options);
    await report(session, move, move.step);
    return advance(session, move, options.sources);
  });
}

/**
 * Finishes the tenant's open move from the last step it committed.
 *
 * @example
 * ```ts
 * import { resumeTenantMove } from 'tenantry/placement';
 * const report = await resumeTenantMove({ connectionString: adminUrl, tenantId, sources });
 * ```
 */
export async function resumeTenantMove(
  options: TenantMoveCommonOptions,
): Promise<TenantMoveReport> {
  return withSession(options, async (session) => {
    const move = await openMove(session);
    return advance(session, move, options.sources);
  });
}

/**
 * Undoes the tenant's open move if it has not switched yet: drops what was copied to the target,
 * takes the write fence off and lets the tenant's writes through again. A move that switched is
 * refused (`TENANTRY_ERR_TENANT_STATE_CONFLICT`): the tenant is served from the target already;
 * resume it, then move the tenant back.
 *
 * @example
 * ```ts
 * import { rollbackTenantMove } from 'tenantry/placement';
 * const report = await rollbackTenantMove({ connectionString: adminUrl, tenantId });
 * console.log(report.step); // 'rolled_back'
 * ```
 */
export async function rollbackTenantMove(
  options: TenantMoveCommonOptions,
): Promise<TenantMoveReport> {
  return withSession(options, async (session) => {
    const move = await openMove(session);
    if (move.step === 'switched' || move.step === 'cleaned') {
      throw new TenantryError(
        moveErrorCodes.stateConflict,
        `The move of tenant ${move.tenant_id} already switched it to ${move.to_schema}; resume it instead, then move the tenant back.`,
        { details: { moveId: move.id, step: move.step } },
      );
    }
    if (move.from_placement === 'database' || move.to_placement === 'database') {
      await rollbackAcross(session, move);
      await report(session, move, 'rolled_back');
      return reportOf(session, move.id);
    }
    const tables = await moveTables(session);
    await withLockRetries(session, 'roll back the move', () =>
      transaction(session, { lockTimeout: true }, async () => {
        await removeLocalCopy(session, move, tables);
        if (move.step === 'held') {
          await dropFences(session, move.from_schema, tables);
          await session.client.query(
            `update ${session.settings.tenantry}.tenants set status = 'active', updated_at = now() where id = $1 and status = 'moving'`,
            [move.tenant_id],
          );
        }
        await setStep(session, move, 'rolled_back', { finished: true });
      }),
    );
    await report(session, move, 'rolled_back');
    return reportOf(session, move.id);
  });
}

/**
 * Removes what a move copied into the control database, in the caller's transaction: the schema
 * it provisioned (unless a tenant is placed there), or the tenant's rows of the pool's tables.
 */
export async function removeLocalCopy(
  session: Session,
  move: MoveRow,
  tables: readonly MoveTableSpec[],
): Promise<void> {
  await copyMode(session, true);
  if (move.to_placement === 'schema') {
    const placed = await session.client.query(
      `select 1 from ${session.settings.tenantry}.tenant_placements where schema_name = $1`,
      [move.to_schema],
    );
    if (placed.rowCount !== 0) {
      throw new TenantryError(
        moveErrorCodes.stateConflict,
        `Schema ${move.to_schema} serves a tenant; it is not dropped.`,
      );
    }
    await session.client.query(`drop schema if exists ${quoteIdentifier(move.to_schema)} cascade`);
  } else {
    for (const table of [...tables].reverse()) {
      await session.client.query(
        `delete from public.${quoteIdentifier(table.table)} where tenant_id = $1`,
        [move.tenant_id],
      );
    }
  }
  await copyMode(session, false);
}

/** Waits until `fenceGraceMs` have passed since the move switched. */
export async function waitOutStaleRoutes(session: Session, move: MoveRow): Promise<void> {
  const waited = await session.client.query<{ remaining_ms: string }>(
    `select greatest(0, extract(epoch from (switched_at + make_interval(secs => $2::double precision / 1000) - clock_timestamp())) * 1000)::bigint::text as remaining_ms
       from ${session.settings.tenantry}.tenant_moves where id = $1`,
    [move.id, session.settings.fenceGraceMs],
  );
  const remainingMs = Number(waited.rows[0]?.remaining_ms ?? 0);
  if (remainingMs > 0) await new Promise((resolve) => setTimeout(resolve, remainingMs));
}

/** Reads the tenant's moves, newest first. */
export async function listTenantMoves(options: {
  readonly connectionString: string;
  readonly tenantId: string;
  readonly tenantrySchema?: string;
}): Promise<TenantMoveReport[]> {
  const settings = resolvePlacementSettings(options);
  const tenantId = parseTenantId(options.tenantId);
  const client = await connectClient(options.connectionString);
  try {
    const result = await client.query<MoveRow>(
      `select * from ${quoteIdentifier(settings.schema)}.tenant_moves where tenant_id = $1 order by id desc`,
      [tenantId],
    );
    return result.rows.map((row) => toReport(row, 0));
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function withSession<T>(
  options: TenantMoveCommonOptions,
  fn: (session: Session) => Promise<T>,
): Promise<T> {
  const started = performance.now();
  const tenantId = parseTenantId(options.tenantId);
  const placement = resolvePlacementSettings(options);
  const settings: Settings = Object.freeze({
    placement,
    tenantry: quoteIdentifier(placement.schema),
    connectionString: options.connectionString,
    databases: Object.freeze({ ...(options.databases ?? {}) }),
    platformSources: Object.freeze([...(options.platformSources ?? [])]),
    lockTimeoutMs: nonNegative('lockTimeoutMs', options.lockTimeoutMs ?? 200, 1),
    lockAttempts: nonNegative('lockAttempts', options.lockAttempts ?? 50, 1),
    fenceGraceMs: nonNegative('fenceGraceMs', options.fenceGraceMs ?? 5_000, 0),
    logger: options.logger ?? silentLogger,
    onProgress: options.onProgress,
  });
  const client = await connectClient(options.connectionString);
  try {
    const roleStatement = await ownerRoleStatement(client, placement.roles.owner);
    const session: Session = { client, tenantId, settings, roleStatement, started };
    // Session locks: one mover per tenant; moves share the migrator's lock, so no migration of
    // the pool (whose tenant DDL a schema being provisioned would miss) runs during a move.
    const locks = await client.query<{ tenant: boolean; migrations: boolean }>(
      `select pg_try_advisory_lock(hashtextextended($1, 0)) as tenant,
              pg_try_advisory_lock_shared(hashtextextended($2, 0)) as migrations`,
      [`tenantry:move:${tenantId}`, `tenantry:migrate:${placement.schema}`],
    );
    const locked = locks.rows[0];
    if (locked?.tenant !== true || locked.migrations !== true) {
      throw new TenantryError(
        moveErrorCodes.stateConflict,
        locked?.tenant !== true
          ? `Another process is moving tenant ${tenantId}.`
          : 'A migration is running; move the tenant once it finished.',
      );
    }
    return await fn(session);
  } catch (error) {
    if (error instanceof ProgressHookError) throw error.original;
    throw isTenantryError(error) ? error : toTenantryError(error);
  } finally {
    await client.end().catch(() => undefined);
  }
}

function nonNegative(name: string, value: number, minimum: number): number {
  if (!Number.isSafeInteger(value) || value < minimum) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `${name} must be an integer of at least ${minimum}.`,
    );
  }
  return value;
}

async function startMove(session: Session, options: MoveTenantOptions): Promise<MoveRow> {
  const { client, tenantId, settings } = session;
  const t = settings.tenantry;
  const open = await client.query(
    `select step from ${t}.tenant_moves where tenant_id = $1 and finished_at is null`,
    [tenantId],
  );
  if (open.rowCount !== 0) {
    throw new TenantryError(
      moveErrorCodes.stateConflict,
      `Tenant ${tenantId} has an unfinished move (step ${open.rows[0]?.step}); resume or roll it back.`,
    );
  }
  const tenant = await client.query<{
    status: string;
    placement: string;
    schema_name: string | null;
    connection_name: string | null;
    database_name: string | null;
  }>(
    `select t.status, t.placement, p.schema_name, p.connection_name, p.database_name
       from ${t}.tenants t left join ${t}.tenant_placements p on p.tenant_id = t.id
      where t.id = $1`,
    [tenantId],
  );
  const row = tenant.rows[0];
  if (row === undefined) {
    throw new TenantryError('TENANTRY_ERR_TENANT_NOT_FOUND', `No tenant ${tenantId}.`);
  }
  if (row.status !== 'active') {
    throw new TenantryError(
      moveErrorCodes.stateConflict,
      `Tenant ${tenantId} is ${row.status}; only an active tenant is moved.`,
      { details: { status: row.status } },
    );
  }
  if (
    row.placement === options.to ||
    (row.placement !== 'pool' && row.placement !== 'schema' && row.placement !== 'database')
  ) {
    throw new TenantryError(
      moveErrorCodes.stateConflict,
      `Tenant ${tenantId} has placement ${row.placement}; it cannot move to ${options.to}.`,
      { details: { placement: row.placement } },
    );
  }
  const fromSchema = row.placement === 'schema' ? (row.schema_name as string) : 'public';
  const fromConnection = row.placement === 'database' ? row.connection_name : null;
  const fromDatabase = row.placement === 'database' ? row.database_name : null;
  if (fromConnection !== null) {
    await checkDatabaseUrl(session, fromConnection, fromDatabase as string);
  }
  let toConnection: string | null = null;
  let toDatabase: string | null = null;
  if (options.to === 'database') {
    if (typeof options.connection !== 'string' || options.connection === '') {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        "connection (the dedicated database's connection name) is required to move to a database.",
      );
    }
    toConnection = options.connection;
    toDatabase = await checkDatabaseUrl(session, toConnection);
  } else if (options.connection !== undefined) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'connection goes with a move to a database.',
    );
  }
  let toSchema = 'public';
  if (options.to === 'schema') {
    if (options.sources === undefined || options.sources.length === 0) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        "sources (the application's tenant migration sources) are required to move to a schema.",
      );
    }
    toSchema = options.schema ?? defaultTenantSchemaName(tenantId);
    if (
      toSchema === 'public' ||
      toSchema.startsWith('pg_') ||
      !/^[a-z_][a-z0-9_]{0,62}$/.test(toSchema)
    ) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `Schema name ${toSchema} is reserved or not a lowercase identifier.`,
      );
    }
    const exists = await client.query('select 1 from pg_catalog.pg_namespace where nspname = $1', [
      toSchema,
    ]);
    if (exists.rowCount !== 0) {
      throw new TenantryError(
        moveErrorCodes.stateConflict,
        `Schema ${toSchema} already exists; choose another name.`,
      );
    }
  }
  await refuseSequences(session);
  const inserted = await client.query<MoveRow>(
    `insert into ${t}.tenant_moves (tenant_id, from_placement, to_placement, from_schema, to_schema,
                                   from_connection, from_database, to_connection, to_database)
     values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning *`,
    [
      tenantId,
      row.placement,
      options.to,
      fromSchema,
      toSchema,
      fromConnection,
      fromDatabase,
      toConnection,
      toDatabase,
    ],
  );
  const move = inserted.rows[0] as MoveRow;
  settings.logger.info(
    { tenantId, moveId: move.id, from: fromSchema, to: toSchema },
    'tenant move started',
  );
  return move;
}

/**
 * Values drawn from a sequence are unique only within that sequence: rows carried to another
 * schema would collide with the target's own. Such tables are refused rather than moved.
 */
async function refuseSequences(session: Session): Promise<void> {
  const result = await session.client.query<{ name: string }>(
    `select c.relname || '.' || a.attname as name
       from pg_catalog.pg_class c
       join pg_catalog.pg_namespace n on n.oid = c.relnamespace
       join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
       left join pg_catalog.pg_attrdef d on d.adrelid = c.oid and d.adnum = a.attnum
      where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relispartition
        and exists (select 1 from pg_catalog.pg_attribute t
                     where t.attrelid = c.oid and t.attname = 'tenant_id' and not t.attisdropped)
        and (a.attidentity <> '' or pg_catalog.pg_get_expr(d.adbin, d.adrelid) like 'nextval(%')
      order by 1`,
  );
  if (result.rows.length > 0) {
    throw new TenantryError(
      moveErrorCodes.stateConflict,
      `Tenant tables with sequence-generated columns cannot be moved (${result.rows.map((row) => row.name).join(', ')}): their values are unique only within one sequence.`,
      { details: { columns: result.rows.map((row) => row.name) } },
    );
  }
}

async function openMove(session: Session): Promise<MoveRow> {
  const result = await session.client.query<MoveRow>(
    `select * from ${session.settings.tenantry}.tenant_moves where tenant_id = $1 and finished_at is null`,
    [session.tenantId],
  );
  const move = result.rows[0];
  if (move === undefined) {
    throw new TenantryError(
      moveErrorCodes.stateConflict,
      `Tenant ${session.tenantId} has no unfinished move.`,
    );
  }
  return move;
}

const stepOrder: readonly TenantMoveStep[] = [
  'started',
  'provisioned',
  'copied',
  'held',
  'switched',
  'cleaned',
  'finished',
];

async function advance(
  session: Session,
  move: MoveRow,
  sources: readonly MigrationSource[] | undefined,
): Promise<TenantMoveReport> {
  let step = move.step;
  const across = move.from_placement === 'database' || move.to_placement === 'database';
  while (step !== 'finished') {
    const next = stepOrder[stepOrder.indexOf(step) + 1] as TenantMoveStep;
    if (across) {
      await advanceAcross(session, move, next, sources);
      step = next;
      await report(session, move, step);
      continue;
    }
    switch (next) {
      case 'provisioned':
        await provision(session, move, sources);
        break;
      case 'copied':
        await copy(session, move);
        break;
      case 'held':
        await hold(session, move);
        break;
      case 'switched':
        await switchPlacement(session, move, sources);
        break;
      case 'cleaned':
        await clean(session, move);
        break;
      case 'finished':
        await finish(session, move);
        break;
      default:
        throw new TenantryError(moveErrorCodes.stateConflict, `Unexpected move step ${step}.`);
    }
    step = next;
    await report(session, move, step);
  }
  session.settings.logger.info({ tenantId: session.tenantId, moveId: move.id }, 'tenant moved');
  return reportOf(session, move.id);
}

async function report(session: Session, move: MoveRow, step: TenantMoveStep): Promise<void> {
  await notify(session, { moveId: move.id, tenantId: move.tenant_id, step });
}

export async function notify(session: Session, progress: TenantMoveProgress): Promise<void> {
  if (session.settings.onProgress === undefined) return;
  try {
    await session.settings.onProgress(Object.freeze(progress));
  } catch (error) {
    throw new ProgressHookError(error);
  }
}

export async function transaction<T>(
  session: Session,
  options: { readonly repeatableRead?: boolean; readonly lockTimeout?: boolean },
  fn: () => Promise<T>,
): Promise<T> {
  const { client } = session;
  await client.query(
    options.repeatableRead === true ? 'begin isolation level repeatable read' : 'begin',
  );
  try {
    if (session.roleStatement !== '') await client.query(session.roleStatement);
    if (options.lockTimeout === true) {
      await client.query(`select set_config('lock_timeout', $1, true)`, [
        `${session.settings.lockTimeoutMs}ms`,
      ]);
    }
    // RLS is forced on the owner too: the mover works in the tenant's context.
    await client.query(`select set_config('tenantry.tenant_id', $1, true)`, [session.tenantId]);
    await client.query(moveOutputSettings);
    const result = await fn();
    await client.query('commit');
    return result;
  } catch (error) {
    await client.query('rollback').catch(() => undefined);
    throw error;
  }
}

/**
 * Settings that make a row's text form the same in every session and database, so checksums
 * computed on two servers compare (time zone, date and interval styles, float digits, bytea).
 */
export const moveOutputSettings = `select set_config('timezone', 'UTC', true), set_config('datestyle', 'ISO, MDY', true),
  set_config('intervalstyle', 'postgres', true), set_config('extra_float_digits', '1', true),
  set_config('bytea_output', 'hex', true)`;

/**
 * Copies and deletes run with `session_replication_role = replica`: the application's triggers
 * (quota counters, search terms maintained from other tables, the write fence) and foreign key
 * actions skip them, since every table is copied or deleted as it is. Catalog writes run with it
 * back to `origin`, so the placement's notification and consistency triggers fire.
 */
export async function copyMode(session: Session, on: boolean): Promise<void> {
  const { client } = session;
  // Only a superuser (or a role granted SET on it) may change it: step out of the owner role.
  if (session.roleStatement !== '') await client.query('reset role');
  try {
    await client.query(`set local session_replication_role = ${on ? 'replica' : 'origin'}`);
  } catch (error) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'A tenant move needs a superuser connection, or an owner granted SET on session_replication_role.',
      { cause: error },
    );
  }
  if (session.roleStatement !== '') await client.query(session.roleStatement);
}

export async function withLockRetries<T>(
  session: Session,
  what: string,
  fn: () => Promise<T>,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (error) {
      const sqlState = (error as { code?: unknown }).code;
      if (sqlState !== '55P03') throw error;
      if (attempt >= session.settings.lockAttempts) {
        throw new TenantryError(
          moveErrorCodes.busy,
          `Could not ${what}: the tables stayed locked through ${attempt} attempts of ${session.settings.lockTimeoutMs}ms.`,
          { cause: error },
        );
      }
      session.settings.logger.debug({ attempt, what }, 'tenant move waiting for table locks');
      const backoffMs = Math.min(20 * attempt, 500);
      await new Promise((resolve) =>
        setTimeout(resolve, backoffMs / 2 + Math.random() * (backoffMs / 2)),
      );
    }
  }
}

export async function setStep(
  session: Session,
  move: MoveRow,
  step: TenantMoveStep,
  changes: {
    readonly tables?: Record<string, Partial<TenantMoveTable>>;
    readonly migrations?: readonly ReplayedMigration[];
    /** `set` stamps held_at, `clear` empties it (a released hold). */
    readonly held?: 'set' | 'clear';
    readonly switched?: boolean;
    readonly finished?: boolean;
  } = {},
): Promise<void> {
  await session.client.query(
    `update ${session.settings.tenantry}.tenant_moves
        set step = $2, updated_at = now(),
            tables = coalesce($3::jsonb, tables),
            migrations = coalesce($4::jsonb, migrations),
            held_at = case $5::text when 'set' then clock_timestamp() when 'clear' then null else held_at end,
            switched_at = case when $6 then clock_timestamp() else switched_at end,
            finished_at = case when $7 then clock_timestamp() else finished_at end
      where id = $1`,
    [
      move.id,
      step,
      changes.tables === undefined ? null : JSON.stringify(changes.tables),
      changes.migrations === undefined ? null : JSON.stringify(changes.migrations),
      changes.held ?? null,
      changes.switched === true,
      changes.finished === true,
    ],
  );
  move.step = step;
  if (changes.tables !== undefined) move.tables = changes.tables;
  if (changes.migrations !== undefined) move.migrations = [...changes.migrations];
}

/** The application's tenant tables of `public`, parents first, with their insertable columns. */
export async function moveTables(session: Session): Promise<MoveTableSpec[]> {
  const tables = (
    await listTenantTables(session.client, {
      tenantrySchema: session.settings.placement.schema,
    })
  ).filter((table) => table.schema === 'public');
  const generated = await session.client.query<{ table: string; column: string }>(
    `select c.relname as table, a.attname as column
       from pg_catalog.pg_attribute a
       join pg_catalog.pg_class c on c.oid = a.attrelid
       join pg_catalog.pg_namespace n on n.oid = c.relnamespace
      where n.nspname = 'public' and a.attgenerated <> '' and not a.attisdropped`,
  );
  const skip = new Set(generated.rows.map((row) => `${row.table}.${row.column}`));
  // deletionOrder puts children first; copies go parents first.
  return deletionOrder(tables)
    .reverse()
    .map((table) =>
      Object.freeze({
        table: table.table,
        columns: table.columns.filter((column) => !skip.has(`${table.table}.${column}`)),
        primaryKey: table.primaryKey,
      }),
    );
}

export function qualified(schema: string, table: string): string {
  return `${quoteIdentifier(schema)}.${quoteIdentifier(table)}`;
}

export function columnList(table: MoveTableSpec, alias?: string): string {
  return table.columns
    .map((column) => (alias === undefined ? '' : `${alias}.`) + quoteIdentifier(column))
    .join(', ');
}

async function checksum(
  session: Session,
  schema: string,
  table: MoveTableSpec,
): Promise<{ rows: number; checksum: string }> {
  return checksumOn(session.client, session.tenantId, schema, table);
}

/** Rows and md5 of the tenant's rows of one table, as text sorted bytewise. */
export async function checksumOn(
  client: pg.Client,
  tenantId: TenantId,
  schema: string,
  table: MoveTableSpec,
): Promise<{ rows: number; checksum: string }> {
  const result = await client.query<{ rows: string; checksum: string }>(
    `select count(*)::text as rows, md5(coalesce(string_agg(r, E'\\n' order by r collate "C"), '')) as checksum
       from (select row(${columnList(table, 's')})::text as r
               from ${qualified(schema, table.table)} s where s.tenant_id = $1) rows`,
    [tenantId],
  );
  const row = result.rows[0] as { rows: string; checksum: string };
  return { rows: Number(row.rows), checksum: row.checksum };
}

/** Compares every table in source and target; throws on the first difference. */
async function verify(
  session: Session,
  move: MoveRow,
  tables: readonly MoveTableSpec[],
): Promise<Map<string, { rows: number; checksum: string }>> {
  const sums = new Map<string, { rows: number; checksum: string }>();
  for (const table of tables) {
    const source = await checksum(session, move.from_schema, table);
    const target = await checksum(session, move.to_schema, table);
    if (source.rows !== target.rows || source.checksum !== target.checksum) {
      throw new TenantryError(
        moveErrorCodes.verifyFailed,
        `Table ${table.table} differs after the copy: ${source.rows} rows (${source.checksum}) in ${move.from_schema}, ${target.rows} rows (${target.checksum}) in ${move.to_schema}.`,
        { details: { table: table.table, source, target } },
      );
    }
    sums.set(table.table, source);
  }
  return sums;
}

/** The dedicated side must hold the pool's tenant tables (a move's own fences excepted). */
async function checkStructure(session: Session, move: MoveRow): Promise<void> {
  const schema = move.from_placement === 'schema' ? move.from_schema : move.to_schema;
  const differences = (await compareWithPool(session.client, schema)).filter(
    (difference) =>
      !(difference.kind === 'trigger' && difference.name.startsWith(moveFenceTriggerPrefix)),
  );
  if (differences.length > 0) {
    const first = differences[0] as (typeof differences)[number];
    throw new TenantryError(
      'TENANTRY_ERR_MIGRATION_FAILED',
      `The tenant tables of ${schema} differ from the pool's (${differences.length} differences, first: ${first.kind} ${first.table}.${first.name}); run "tenantry placement migrate" first.`,
      { details: { differences: differences.slice(0, 50) } },
    );
  }
}

export async function provision(
  session: Session,
  move: MoveRow,
  sources: readonly MigrationSource[] | undefined,
): Promise<void> {
  await transaction(session, {}, async () => {
    let migrations: ReplayedMigration[] = [];
    if (move.to_placement === 'schema') {
      if (sources === undefined || sources.length === 0) {
        throw new TenantryError(
          'TENANTRY_ERR_CONFIG_INVALID',
          "sources (the application's tenant migration sources) are required to move to a schema.",
        );
      }
      await session.client.query('select pg_advisory_xact_lock(hashtextextended($1, 0))', [
        schemaLockKey(move.to_schema),
      ]);
      migrations = await provisionTenantSchema(session.client, {
        schema: move.to_schema,
        sources,
        tenantrySchema: session.settings.placement.schema,
        roles: session.settings.placement.roles,
      });
    }
    await setStep(session, move, 'provisioned', { migrations });
  });
}

async function copy(session: Session, move: MoveRow): Promise<void> {
  const tables = await moveTables(session);
  const copied = new Map<string, number>();
  await transaction(session, { repeatableRead: true }, async () => {
    await copyMode(session, true);
    await checkStructure(session, move);
    for (const table of tables) {
      const target = qualified(move.to_schema, table.table);
      await session.client.query(`delete from ${target} where tenant_id = $1`, [session.tenantId]);
      const inserted = await session.client.query(
        `insert into ${target} (${columnList(table)}) overriding system value
         select ${columnList(table, 's')} from ${qualified(move.from_schema, table.table)} s
          where s.tenant_id = $1`,
        [session.tenantId],
      );
      copied.set(table.table, inserted.rowCount ?? 0);
      await notify(session, {
        moveId: move.id,
        tenantId: move.tenant_id,
        step: 'copied',
        table: table.table,
        phase: 'copy',
        rows: inserted.rowCount ?? 0,
      });
    }
    // A new schema's tables have no statistics yet: without them the catch-up's anti-joins
    // could be planned as nested loops over every copied row.
    for (const table of tables) {
      await session.client.query(`analyze ${qualified(move.to_schema, table.table)}`);
    }
    const sums = await verify(session, move, tables);
    const journal: Record<string, Partial<TenantMoveTable>> = {};
    for (const table of tables) {
      journal[table.table] = {
        ...(sums.get(table.table) as { rows: number; checksum: string }),
        copiedRows: copied.get(table.table) ?? 0,
        deltaInserted: 0,
        deltaDeleted: 0,
      };
    }
    await setStep(session, move, 'copied', { tables: journal });
  });
}

export function fenceName(tenantId: TenantId): string {
  return `${moveFenceTriggerPrefix}${tenantId.replaceAll('-', '')}`;
}

export async function dropFences(
  session: Session,
  schema: string,
  tables: readonly MoveTableSpec[],
): Promise<void> {
  const exists = await session.client.query(
    'select 1 from pg_catalog.pg_namespace where nspname = $1',
    [schema],
  );
  if (exists.rowCount === 0) return;
  for (const table of tables) {
    await session.client.query(
      `drop trigger if exists ${quoteIdentifier(fenceName(session.tenantId))} on ${qualified(schema, table.table)}`,
    );
  }
}

/**
 * The write hold, in one transaction: the tenant is marked `moving` (requests refused with 503,
 * jobs deferred) and a statement trigger on every source table refuses statements run in its
 * context. Creating a trigger waits for the transactions that hold write locks on the table, so
 * when this commits no write of the tenant begun before it is still open on the source.
 */
export async function hold(session: Session, move: MoveRow): Promise<void> {
  const tables = await moveTables(session);
  const fence = quoteIdentifier(fenceName(session.tenantId));
  await withLockRetries(session, "hold the tenant's writes", () =>
    transaction(session, { lockTimeout: true }, async () => {
      await session.client.query(
        `lock table ${tables.map((table) => qualified(move.from_schema, table.table)).join(', ')} in share row exclusive mode`,
      );
      for (const table of tables) {
        const target = qualified(move.from_schema, table.table);
        await session.client.query(`drop trigger if exists ${fence} on ${target}`);
        await session.client.query(
          `create trigger ${fence} before insert or update or delete on ${target}
             for each statement execute function ${session.settings.tenantry}.refuse_moving_tenant_writes('${session.tenantId}')`,
        );
      }
      await session.client.query(
        `update ${session.settings.tenantry}.tenants set status = 'moving', updated_at = now() where id = $1`,
        [session.tenantId],
      );
      await setStep(session, move, 'held', { held: 'set' });
    }),
  );
}

/**
 * Catches the target up with the rows changed since the snapshot (the source is fenced), verifies
 * every table again, and switches the placement and releases the hold in the same transaction.
 * If it fails, the hold is released and the move goes back to `copied`.
 */
async function switchPlacement(
  session: Session,
  move: MoveRow,
  sources: readonly MigrationSource[] | undefined,
): Promise<void> {
  const tables = await moveTables(session);
  const deltas = new Map<string, { inserted: number; deleted: number }>();
  try {
    await transaction(session, {}, async () => {
      await copyMode(session, true);
      await checkStructure(session, move);
      for (const table of tables) {
        const target = qualified(move.to_schema, table.table);
        const source = qualified(move.from_schema, table.table);
        let deleted: number;
        let inserted: number;
        if (table.primaryKey.length > 0) {
          const key = (alias: string) =>
            `(${table.primaryKey.map((column) => `${alias}.${quoteIdentifier(column)}`).join(', ')})`;
          deleted =
            (
              await session.client.query(
                `delete from ${target} t where t.tenant_id = $1 and not exists (
                   select 1 from ${source} s
                    where s.tenant_id = $1 and ${key('s')} = ${key('t')}
                      and row(${columnList(table, 's')})::text = row(${columnList(table, 't')})::text)`,
                [session.tenantId],
              )
            ).rowCount ?? 0;
          inserted =
            (
              await session.client.query(
                `insert into ${target} (${columnList(table)}) overriding system value
                 select ${columnList(table, 's')} from ${source} s
                  where s.tenant_id = $1
                    and not exists (select 1 from ${target} t where t.tenant_id = $1 and ${key('t')} = ${key('s')})`,
                [session.tenantId],
              )
            ).rowCount ?? 0;
        } else {
          const before = await checksum(session, move.from_schema, table);
          const after = await checksum(session, move.to_schema, table);
          deleted = 0;
          inserted = 0;
          if (before.checksum !== after.checksum || before.rows !== after.rows) {
            deleted =
              (
                await session.client.query(`delete from ${target} where tenant_id = $1`, [
                  session.tenantId,
                ])
              ).rowCount ?? 0;
            inserted =
              (
                await session.client.query(
                  `insert into ${target} (${columnList(table)}) overriding system value
                   select ${columnList(table, 's')} from ${source} s where s.tenant_id = $1`,
                  [session.tenantId],
                )
              ).rowCount ?? 0;
          }
        }
        deltas.set(table.table, { inserted, deleted });
      }
      const sums = await verify(session, move, tables);
      await copyMode(session, false);
      await switchCatalog(session, move, sources, switchJournal(move, tables, sums, deltas));
    });
  } catch (error) {
    await releaseHold(session, move, tables).catch((releaseError: unknown) =>
      session.settings.logger.error(
        { tenantId: session.tenantId, moveId: move.id, err: releaseError },
        'tenant move could not release its hold; roll it back',
      ),
    );
    throw error;
  }
  await notifyDeltas(session, move, tables, deltas);
}

/** Reports each table's catch-up once the switch committed. */
export async function notifyDeltas(
  session: Session,
  move: MoveRow,
  tables: readonly MoveTableSpec[],
  deltas: ReadonlyMap<string, { inserted: number; deleted: number }>,
): Promise<void> {
  for (const table of tables) {
    const delta = deltas.get(table.table) ?? { inserted: 0, deleted: 0 };
    await notify(session, {
      moveId: move.id,
      tenantId: move.tenant_id,
      step: 'switched',
      table: table.table,
      phase: 'delta',
      rows: delta.inserted,
      deleted: delta.deleted,
    });
  }
}

/** The journal's tables at the switch: the verified sums, the copy's rows and the catch-up's. */
export function switchJournal(
  move: MoveRow,
  tables: readonly MoveTableSpec[],
  sums: ReadonlyMap<string, { rows: number; checksum: string }>,
  deltas: ReadonlyMap<string, { inserted: number; deleted: number }>,
): Record<string, Partial<TenantMoveTable>> {
  const journal: Record<string, Partial<TenantMoveTable>> = {};
  for (const table of tables) {
    const before = move.tables[table.table] ?? {};
    const delta = deltas.get(table.table) ?? { inserted: 0, deleted: 0 };
    journal[table.table] = {
      ...(sums.get(table.table) as { rows: number; checksum: string }),
      copiedRows: before.copiedRows ?? 0,
      deltaInserted: (before.deltaInserted ?? 0) + delta.inserted,
      deltaDeleted: (before.deltaDeleted ?? 0) + delta.deleted,
    };
  }
  return journal;
}

/** Points the catalog at the target and releases the hold, in the control session's transaction. */
export async function switchCatalog(
  session: Session,
  move: MoveRow,
  sources: readonly MigrationSource[] | undefined,
  journal: Record<string, Partial<TenantMoveTable>>,
): Promise<void> {
  const t = session.settings.tenantry;
  if (move.to_placement === 'schema') await checkMigrations(session, move, sources);
  await session.client.query(`delete from ${t}.tenant_placements where tenant_id = $1`, [
    session.tenantId,
  ]);
  if (move.to_placement === 'schema') {
    await session.client.query(
      `insert into ${t}.tenant_placements (tenant_id, schema_name) values ($1, $2)`,
      [session.tenantId, move.to_schema],
    );
    for (const file of move.migrations) {
      await session.client.query(
        `insert into ${t}.placement_migrations (schema_name, source, version, name, checksum)
         values ($1, $2, $3, $4, $5)`,
        [move.to_schema, file.source, file.version, file.name, file.checksum],
      );
    }
  } else if (move.to_placement === 'database') {
    await session.client.query(
      `insert into ${t}.tenant_placements (tenant_id, connection_name, database_name) values ($1, $2, $3)`,
      [session.tenantId, move.to_connection, move.to_database],
    );
  }
  await session.client.query(
    `update ${t}.tenants set placement = $2, status = 'active', updated_at = now() where id = $1`,
    [session.tenantId, move.to_placement],
  );
  await setStep(session, move, 'switched', { tables: journal, switched: true });
}

/** The pool must not have applied a tenant migration the provisioned schema lacks. */
export async function checkMigrations(
  session: Session,
  move: MoveRow,
  sources: readonly MigrationSource[] | undefined,
): Promise<void> {
  if (sources === undefined || sources.length === 0) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      "sources (the application's tenant migration sources) are required to move to a schema.",
    );
  }
  const files = await readTenantMigrations(sources, session.settings.placement.variables);
  const { ready } = await poolAppliedFiles(session.client, session.settings.placement, files);
  const replayed = new Set(move.migrations.map((file) => `${file.source}:${file.version}`));
  const missing = ready.filter((file) => !replayed.has(`${file.source}:${file.version}`));
  if (missing.length > 0) {
    throw new TenantryError(
      moveErrorCodes.stateConflict,
      `The pool applied migrations after ${move.to_schema} was provisioned (${missing.map((file) => `${file.source}/${file.version}`).join(', ')}); roll the move back and start it again.`,
    );
  }
}

async function releaseHold(
  session: Session,
  move: MoveRow,
  tables: readonly MoveTableSpec[],
): Promise<void> {
  await withLockRetries(session, 'release the hold', () =>
    transaction(session, { lockTimeout: true }, async () => {
      await dropFences(session, move.from_schema, tables);
      await session.client.query(
        `update ${session.settings.tenantry}.tenants set status = 'active', updated_at = now() where id = $1 and status = 'moving'`,
        [session.tenantId],
      );
      await setStep(session, move, 'copied', { held: 'clear' });
    }),
  );
}

export async function clean(session: Session, move: MoveRow): Promise<void> {
  if (move.from_placement === 'pool') {
    const tables = await moveTables(session);
    await transaction(session, {}, async () => {
      await copyMode(session, true);
      for (const table of [...tables].reverse()) {
        await session.client.query(
          `delete from ${qualified('public', table.table)} where tenant_id = $1`,
          [session.tenantId],
        );
      }
      await setStep(session, move, 'cleaned');
    });
    return;
  }
  // Dropping the schema also ends stale routes to it: a search path naming a missing schema
  // resolves to `public`, where the tenant now lives.
  await withLockRetries(session, `drop schema ${move.from_schema}`, () =>
    transaction(session, { lockTimeout: true }, async () => {
      const placed = await session.client.query(
        `select 1 from ${session.settings.tenantry}.tenant_placements where schema_name = $1`,
        [move.from_schema],
      );
      if (placed.rowCount !== 0) {
        throw new TenantryError(
          moveErrorCodes.stateConflict,
          `Schema ${move.from_schema} serves a tenant; it is not dropped.`,
        );
      }
      await session.client.query(
        `drop schema if exists ${quoteIdentifier(move.from_schema)} cascade`,
      );
      await setStep(session, move, 'cleaned');
    }),
  );
}

async function finish(session: Session, move: MoveRow): Promise<void> {
  const tables = await moveTables(session);
  // Waits out routers that had read the old placement just before the switch.
  if (move.from_placement === 'pool') await waitOutStaleRoutes(session, move);
  await withLockRetries(session, 'take the write fence off', () =>
    transaction(session, { lockTimeout: true }, async () => {
      if (move.from_placement === 'pool') await dropFences(session, 'public', tables);
      await setStep(session, move, 'finished', { finished: true });
    }),
  );
}

async function reportOf(session: Session, moveId: string): Promise<TenantMoveReport> {
  const result = await session.client.query<MoveRow>(
    `select * from ${session.settings.tenantry}.tenant_moves where id = $1`,
    [moveId],
  );
  return toReport(result.rows[0] as MoveRow, Math.round(performance.now() - session.started));
}

export function toReport(row: MoveRow, durationMs: number): TenantMoveReport {
  const tables = Object.entries(row.tables)
    .map(([table, entry]) =>
      Object.freeze({
        table,
        rows: entry.rows ?? 0,
        checksum: entry.checksum ?? '',
        copiedRows: entry.copiedRows ?? 0,
        deltaInserted: entry.deltaInserted ?? 0,
        deltaDeleted: entry.deltaDeleted ?? 0,
      }),
    )
    .sort((a, b) => a.table.localeCompare(b.table));
  return Object.freeze({
    moveId: String(row.id),
    tenantId: row.tenant_id,
    from: row.from_placement,
    to: row.to_placement,
    fromSchema: row.from_schema,
    toSchema: row.to_schema,
    fromConnection: row.from_connection ?? null,
    fromDatabase: row.from_database ?? null,
    toConnection: row.to_connection ?? null,
    toDatabase: row.to_database ?? null,
    step: row.step,
    tables: Object.freeze(tables),
    holdMs:
      row.held_at !== null && row.switched_at !== null
        ? row.switched_at.getTime() - row.held_at.getTime()
        : null,
    startedAt: row.started_at,
    finishedAt: row.finished_at,
    durationMs,
  });
}
