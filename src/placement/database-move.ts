import type pg from 'pg';
import Cursor from 'pg-cursor';
import { quoteIdentifier } from '../config.ts';
import { connectClient } from '../database/client.ts';
import { TenantryError } from '../errors.ts';
import { type MigrationSource, migrate } from '../migrations/migrate.ts';
import { applyTenantFilesToDatabase, sameServer } from './database-targets.ts';
import {
  connectionUrlVariable,
  ownerRoleStatement,
  poolAppliedFiles,
  readTenantMigrations,
} from './migrate-targets.ts';
import { compareDatabaseWithPool, moveFenceTriggerPrefix } from './schema-targets.ts';
import {
  checksumOn,
  clean,
  columnList,
  copyMode,
  dropFences,
  fenceName,
  hold,
  type MoveRow,
  type MoveTableSpec,
  moveErrorCodes,
  moveOutputSettings,
  moveTables,
  notify,
  notifyDeltas,
  provision,
  qualified,
  removeLocalCopy,
  type Session,
  setStep,
  switchCatalog,
  switchJournal,
  type TenantMoveStep,
  type TenantMoveTable,
  transaction,
  waitOutStaleRoutes,
  withLockRetries,
} from './tenant-move.ts';

/*
 * The steps of a move whose source or target is a dedicated database. They follow the same
 * journal as moves inside the control database; what differs is that the rows travel between two
 * servers' sessions (streamed in batches as JSON, inserted with json_populate_recordset), so each
 * step commits the other database first and the control database's journal last: a crash between
 * the two leaves the journal at the previous step, and re-running that step is harmless (a copy
 * starts by deleting what an earlier attempt copied, a catch-up compares keys and row hashes).
 */

/** Rows per batch when copying or catching up between databases. */
const batchRows = 500;

/** A session on a dedicated database, as its owner. */
interface Remote {
  readonly client: pg.Client;
  readonly roleStatement: string;
  readonly database: string;
}

/**
 * Checks that the move knows an owner URL for `connection`, that it leads to `database` (when the
 * catalog names one) and that it is not the control database itself; returns the database name.
 */
export async function checkDatabaseUrl(
  session: Session,
  connection: string,
  database?: string,
): Promise<string> {
  const remote = await openRemote(session, connection, database);
  try {
    const control = await session.client.query<{ name: string; port: string }>(
      `select current_database() as name, current_setting('port') as port`,
    );
    const other = await remote.client.query<{ port: string }>(
      `select current_setting('port') as port`,
    );
    if (
      control.rows[0]?.name === remote.database &&
      control.rows[0]?.port === other.rows[0]?.port &&
      (await sameServer(session.client, remote.client))
    ) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `Connection "${connection}" leads to the control database itself; move the tenant to a schema instead.`,
      );
    }
    return remote.database;
  } finally {
    await remote.client.end().catch(() => undefined);
  }
}

async function openRemote(
  session: Session,
  connection: string,
  database: string | undefined,
): Promise<Remote> {
  const url = session.settings.databases[connection];
  if (url === undefined) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `No URL for the dedicated database of connection "${connection}": pass databases: { "${connection}": <owner URL> } (CLI: ${connectionUrlVariable(connection)}).`,
      { details: { connection } },
    );
  }
  const client = await connectClient(url);
  try {
    const name = (await client.query<{ name: string }>('select current_database() as name')).rows[0]
      ?.name as string;
    if (database !== undefined && name !== database) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `The URL of connection "${connection}" leads to database ${name}, but the catalog places tenants of that connection in ${database}.`,
        { details: { connection, database, actual: name } },
      );
    }
    const roleStatement = await ownerRoleStatement(client, session.settings.placement.roles.owner);
    return { client, roleStatement, database: name };
  } catch (error) {
    await client.end().catch(() => undefined);
    throw error;
  }
}

async function withRemote<T>(
  session: Session,
  side: 'from' | 'to',
  move: MoveRow,
  fn: (remote: Remote) => Promise<T>,
): Promise<T> {
  const connection = side === 'from' ? move.from_connection : move.to_connection;
  const database = side === 'from' ? move.from_database : move.to_database;
  if (connection === null || database === null) {
    throw new TenantryError(
      moveErrorCodes.stateConflict,
      `Move ${move.id} has no dedicated database as its ${side === 'from' ? 'source' : 'target'}.`,
    );
  }
  const remote = await openRemote(session, connection, database);
  try {
    return await fn(remote);
  } finally {
    await remote.client.end().catch(() => undefined);
  }
}

/** Opens a transaction on the dedicated database, in the tenant's context, as its owner. */
async function beginRemote(
  session: Session,
  remote: Remote,
  options: {
    readonly snapshot?: boolean;
    readonly replica?: boolean;
    readonly lockTimeout?: boolean;
  },
): Promise<void> {
  const { client } = remote;
  await client.query(
    options.snapshot === true ? 'begin isolation level repeatable read read only' : 'begin',
  );
  try {
    if (options.replica === true) {
      try {
        await client.query('set local session_replication_role = replica');
      } catch (error) {
        throw new TenantryError(
          'TENANTRY_ERR_CONFIG_INVALID',
          'A tenant move needs a superuser URL for the dedicated database, or an owner granted SET on session_replication_role.',
          { cause: error },
        );
      }
    }
    if (remote.roleStatement !== '') await client.query(remote.roleStatement);
    if (options.lockTimeout === true) {
      await client.query(`select set_config('lock_timeout', $1, true)`, [
        `${session.settings.lockTimeoutMs}ms`,
      ]);
    }
    await client.query(`select set_config('tenantry.tenant_id', $1, true)`, [session.tenantId]);
    await client.query(moveOutputSettings);
  } catch (error) {
    await client.query('rollback').catch(() => undefined);
    throw error;
  }
}

async function remoteTransaction<T>(
  session: Session,
  remote: Remote,
  options: { readonly replica?: boolean; readonly lockTimeout?: boolean },
  fn: () => Promise<T>,
): Promise<T> {
  await beginRemote(session, remote, options);
  try {
    const result = await fn();
    await remote.client.query('commit');
    return result;
  } catch (error) {
    await remote.client.query('rollback').catch(() => undefined);
    throw error;
  }
}

/** Runs the next step of a move whose source or target is a dedicated database. */
export async function advanceAcross(
  session: Session,
  move: MoveRow,
  next: TenantMoveStep,
  sources: readonly MigrationSource[] | undefined,
): Promise<void> {
  switch (next) {
    case 'provisioned':
      if (move.to_placement === 'database') await provisionDatabase(session, move, sources);
      else await provision(session, move, sources);
      return;
    case 'copied':
      await copyAcross(session, move);
      return;
    case 'held':
      if (move.from_placement === 'database') await holdRemote(session, move);
      else await hold(session, move);
      return;
    case 'switched':
      await switchAcross(session, move, sources);
      return;
    case 'cleaned':
      if (move.from_placement === 'database') await cleanRemote(session, move);
      else {
        // A stale search path to a dropped schema resolves to the pool, not to the database the
        // tenant moved to: wait out routers that read the old placement before dropping it.
        if (move.from_placement === 'schema') await waitOutStaleRoutes(session, move);
        await clean(session, move);
      }
      return;
    case 'finished':
      await finishAcross(session, move);
      return;
    default:
      throw new TenantryError(moveErrorCodes.stateConflict, `Unexpected move step ${next}.`);
  }
}

/**
 * Prepares the dedicated database: Tenantry's core (and `platformSources`) migrations, then the
 * tenant statements of every application file the pool has applied that the database has not
 * run (recorded in the database itself), and a structure check against the pool.
 */
async function provisionDatabase(
  session: Session,
  move: MoveRow,
  sources: readonly MigrationSource[] | undefined,
): Promise<void> {
  if (sources === undefined || sources.length === 0) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      "sources (the application's tenant migration sources) are required to move to a database.",
    );
  }
  const { settings } = session;
  const url = settings.databases[move.to_connection as string] as string;
  await migrate({
    connectionString: url,
    schema: settings.placement.schema,
    roles: settings.placement.roles,
    sources: settings.platformSources,
    logger: settings.logger,
  });
  const files = await readTenantMigrations(sources, settings.placement.variables);
  await withRemote(session, 'to', move, async (remote) => {
    await transaction(session, {}, async () => {
      const { ready, waiting } = await poolAppliedFiles(session.client, settings.placement, files);
      if (waiting.length > 0) {
        const first = waiting[0] as (typeof waiting)[number];
        throw new TenantryError(
          'TENANTRY_ERR_MIGRATION_FAILED',
          `Migration ${first.source}/${first.version}-${first.name} is not applied to the pool yet: run "tenantry migrate" first.`,
          { details: { source: first.source, version: first.version } },
        );
      }
      await remoteTransaction(session, remote, {}, async () => {
        await applyTenantFilesToDatabase(session.client, remote.client, settings.placement, ready, {
          connectionName: move.to_connection as string,
          databaseName: remote.database,
        });
        await checkStructureAcross(session, remote);
      });
      await setStep(session, move, 'provisioned');
    });
  });
}

/** The dedicated database's tenant tables must be the pool's (a move's own fences excepted). */
async function checkStructureAcross(session: Session, remote: Remote): Promise<void> {
  const differences = (await compareDatabaseWithPool(session.client, remote.client)).filter(
    (difference) =>
      !(difference.kind === 'trigger' && difference.name.startsWith(moveFenceTriggerPrefix)),
  );
  if (differences.length > 0) {
    const first = differences[0] as (typeof differences)[number];
    throw new TenantryError(
      'TENANTRY_ERR_MIGRATION_FAILED',
      `The tenant tables of database ${remote.database} differ from the pool's (${differences.length} differences, first: ${first.kind} ${first.table}.${first.name}); run "tenantry migrate" first.`,
      { details: { differences: differences.slice(0, 50) } },
    );
  }
}

/** Streams the tenant's rows of one table from `source` into `target` (in their open transactions). */
async function copyTable(
  source: pg.Client,
  sourceSchema: string,
  target: pg.Client,
  targetSchema: string,
  table: MoveTableSpec,
  tenantId: string,
  where = '',
  values: unknown[] = [],
): Promise<number> {
  const cursor = source.query(
    new Cursor<{ r: string }>(
      `select row_to_json(x)::text as r
         from (select ${columnList(table, 's')} from ${qualified(sourceSchema, table.table)} s
                where s.tenant_id = $1 ${where}) x`,
      [tenantId, ...values],
    ),
  );
  let copied = 0;
  try {
    for (;;) {
      const rows = await cursor.read(batchRows);
      if (rows.length === 0) break;
      const inserted = await target.query(
        `insert into ${qualified(targetSchema, table.table)} (${columnList(table)}) overriding system value
         select ${columnList(table, 'j')} from json_populate_recordset(null::${qualified(targetSchema, table.table)}, $1::json) j`,
        [`[${rows.map((row) => row.r).join(',')}]`],
      );
      copied += inserted.rowCount ?? 0;
    }
  } finally {
    await cursor.close();
  }
  return copied;
}

async function verifyAcross(
  session: Session,
  move: MoveRow,
  source: pg.Client,
  target: pg.Client,
  tables: readonly MoveTableSpec[],
): Promise<Map<string, { rows: number; checksum: string }>> {
  const sums = new Map<string, { rows: number; checksum: string }>();
  for (const table of tables) {
    const [from, to] = await Promise.all([
      checksumOn(source, session.tenantId, move.from_schema, table),
      checksumOn(target, session.tenantId, move.to_schema, table),
    ]);
    if (from.rows !== to.rows || from.checksum !== to.checksum) {
      throw new TenantryError(
        moveErrorCodes.verifyFailed,
        `Table ${table.table} differs after the copy: ${from.rows} rows (${from.checksum}) at the source, ${to.rows} rows (${to.checksum}) at the target.`,
        { details: { table: table.table, source: from, target: to } },
      );
    }
    sums.set(table.table, from);
  }
  return sums;
}

/**
 * Runs `work` with the source and target sessions of the move in open transactions, then
 * `journal` on the control database's session (the move's own, back in origin mode) in the same
 * control transaction. When the dedicated database is the target it commits before `journal`
 * runs; when the control database is the target, the rows and the journal commit together. The
 * source reads one snapshot when `snapshot` is set.
 */
async function acrossTransaction<T>(
  session: Session,
  move: MoveRow,
  options: { readonly snapshot: boolean },
  work: (source: pg.Client, target: pg.Client) => Promise<T>,
  journal: (result: T) => Promise<void>,
): Promise<void> {
  if (move.from_placement === 'database') {
    await withRemote(session, 'from', move, async (remote) => {
      await beginRemote(session, remote, { snapshot: options.snapshot });
      try {
        await transaction(session, {}, async () => {
          await copyMode(session, true);
          await checkStructureAcross(session, remote);
          const result = await work(remote.client, session.client);
          await copyMode(session, false);
          await journal(result);
        });
      } finally {
        await remote.client.query('rollback').catch(() => undefined);
      }
    });
    return;
  }
  await withRemote(session, 'to', move, async (remote) => {
    await transaction(session, { repeatableRead: options.snapshot }, async () => {
      const result = await remoteTransaction(session, remote, { replica: true }, async () => {
        await checkStructureAcross(session, remote);
        return work(session.client, remote.client);
      });
      await journal(result);
    });
  });
}

async function copyAcross(session: Session, move: MoveRow): Promise<void> {
  const tables = await moveTables(session);
  await acrossTransaction(
    session,
    move,
    { snapshot: true },
    async (source, target) => {
      const copied = new Map<string, number>();
      for (const table of tables) {
        await target.query(
          `delete from ${qualified(move.to_schema, table.table)} where tenant_id = $1`,
          [session.tenantId],
        );
        const rows = await copyTable(
          source,
          move.from_schema,
          target,
          move.to_schema,
          table,
          session.tenantId,
        );
        copied.set(table.table, rows);
        await notify(session, {
          moveId: move.id,
          tenantId: move.tenant_id,
          step: 'copied',
          table: table.table,
          phase: 'copy',
          rows,
        });
      }
      // Fresh statistics for the catch-up's key-ordered reads of the target.
      for (const table of tables) {
        await target.query(`analyze ${qualified(move.to_schema, table.table)}`);
      }
      const sums = await verifyAcross(session, move, source, target, tables);
      const journal: Record<string, Partial<TenantMoveTable>> = {};
      for (const table of tables) {
        journal[table.table] = {
          ...(sums.get(table.table) as { rows: number; checksum: string }),
          copiedRows: copied.get(table.table) ?? 0,
          deltaInserted: 0,
          deltaDeleted: 0,
        };
      }
      return journal;
    },
    (journal) => setStep(session, move, 'copied', { tables: journal }),
  );
}

/**
 * The write hold on a dedicated database: the fence triggers there (the fence function is
 * created the first time), then the tenant marked `moving` in the control database.
 */
async function holdRemote(session: Session, move: MoveRow): Promise<void> {
  const tables = await moveTables(session);
  const { tenantry } = session.settings;
  const fence = quoteIdentifier(fenceName(session.tenantId));
  await withRemote(session, 'from', move, async (remote) => {
    await withLockRetries(session, "hold the tenant's writes", () =>
      remoteTransaction(session, remote, { lockTimeout: true }, async () => {
        const exists = await remote.client.query<{ found: boolean }>(
          `select to_regprocedure($1) is not null as found`,
          [`${session.settings.placement.schema}.refuse_moving_tenant_writes()`],
        );
        if (exists.rows[0]?.found !== true) {
          // The control database's definition (sql/platform/000005-moves.sql), replayed as is.
          const definition = await session.client.query<{ sql: string }>(
            `select pg_get_functiondef(to_regprocedure($1)) as sql`,
            [`${session.settings.placement.schema}.refuse_moving_tenant_writes()`],
          );
          await remote.client.query(definition.rows[0]?.sql as string);
          await remote.client.query(
            `revoke all on function ${tenantry}.refuse_moving_tenant_writes() from public`,
          );
        }
        await remote.client.query(
          `lock table ${tables.map((table) => qualified('public', table.table)).join(', ')} in share row exclusive mode`,
        );
        for (const table of tables) {
          const target = qualified('public', table.table);
          await remote.client.query(`drop trigger if exists ${fence} on ${target}`);
          await remote.client.query(
            `create trigger ${fence} before insert or update or delete on ${target}
               for each statement execute function ${tenantry}.refuse_moving_tenant_writes('${session.tenantId}')`,
          );
        }
      }),
    );
  });
  await transaction(session, {}, async () => {
    await session.client.query(
      `update ${tenantry}.tenants set status = 'moving', updated_at = now() where id = $1`,
      [session.tenantId],
    );
    await setStep(session, move, 'held', { held: 'set' });
  });
}

interface KeyedRow {
  readonly k: string;
  readonly key: string;
  readonly h: string;
}

/**
 * Keys (as JSON objects) of the target's rows to delete and of the source's rows to insert so
 * the target holds exactly the source's rows: both sides are read in key order and merged.
 */
async function diffByKey(
  source: pg.Client,
  sourceSchema: string,
  target: pg.Client,
  targetSchema: string,
  table: MoveTableSpec,
  tenantId: string,
): Promise<{ remove: string[]; add: string[] }> {
  const keyText = `row(${table.primaryKey.map((column) => `s.${quoteIdentifier(column)}`).join(', ')})::text`;
  const keyJson = `json_build_object(${table.primaryKey
    .map((column) => `'${column.replaceAll("'", "''")}', s.${quoteIdentifier(column)}`)
    .join(', ')})::text`;
  const sql = (schema: string) =>
    `select ${keyText} as k, ${keyJson} as key, md5(row(${columnList(table, 's')})::text) as h
       from ${qualified(schema, table.table)} s where s.tenant_id = $1
      order by ${keyText} collate "C"`;
  const from = source.query(new Cursor<KeyedRow>(sql(sourceSchema), [tenantId]));
  const to = target.query(new Cursor<KeyedRow>(sql(targetSchema), [tenantId]));
  const reader = (cursor: Cursor<KeyedRow>) => {
    let buffer: KeyedRow[] = [];
    let index = 0;
    let done = false;
    return async (): Promise<KeyedRow | undefined> => {
      if (index >= buffer.length && !done) {
        buffer = await cursor.read(batchRows * 4);
        index = 0;
        if (buffer.length === 0) done = true;
      }
      return done ? undefined : buffer[index++];
    };
  };
  const nextFrom = reader(from);
  const nextTo = reader(to);
  const remove: string[] = [];
  const add: string[] = [];
  try {
    let a = await nextFrom();
    let b = await nextTo();
    while (a !== undefined || b !== undefined) {
      const order =
        a === undefined
          ? 1
          : b === undefined
            ? -1
            : Buffer.compare(Buffer.from(a.k), Buffer.from(b.k));
      if (order < 0) {
        add.push((a as KeyedRow).key);
        a = await nextFrom();
      } else if (order > 0) {
        remove.push((b as KeyedRow).key);
        b = await nextTo();
      } else {
        if ((a as KeyedRow).h !== (b as KeyedRow).h) {
          remove.push((b as KeyedRow).key);
          add.push((a as KeyedRow).key);
        }
        a = await nextFrom();
        b = await nextTo();
      }
    }
  } finally {
    await Promise.all([from.close(), to.close()]);
  }
  return { remove, add };
}

/** Makes the target's rows of the tenant equal to the source's (the source is fenced). */
async function catchUp(
  session: Session,
  move: MoveRow,
  source: pg.Client,
  target: pg.Client,
  table: MoveTableSpec,
): Promise<{ inserted: number; deleted: number }> {
  const { tenantId } = session;
  const sourceTable = qualified(move.from_schema, table.table);
  const targetTable = qualified(move.to_schema, table.table);
  if (table.primaryKey.length === 0) {
    const [from, to] = await Promise.all([
      checksumOn(source, tenantId, move.from_schema, table),
      checksumOn(target, tenantId, move.to_schema, table),
    ]);
    if (from.rows === to.rows && from.checksum === to.checksum) return { inserted: 0, deleted: 0 };
    const deleted =
      (await target.query(`delete from ${targetTable} where tenant_id = $1`, [tenantId]))
        .rowCount ?? 0;
    const inserted = await copyTable(
      source,
      move.from_schema,
      target,
      move.to_schema,
      table,
      tenantId,
    );
    return { inserted, deleted };
  }
  const { remove, add } = await diffByKey(
    source,
    move.from_schema,
    target,
    move.to_schema,
    table,
    tenantId,
  );
  const keyMatch = (alias: string) =>
    `(${table.primaryKey.map((column) => `${alias}.${quoteIdentifier(column)}`).join(', ')})`;
  let deleted = 0;
  for (let index = 0; index < remove.length; index += batchRows) {
    const keys = `[${remove.slice(index, index + batchRows).join(',')}]`;
    deleted +=
      (
        await target.query(
          `delete from ${targetTable} t
            using json_populate_recordset(null::${targetTable}, $2::json) k
            where t.tenant_id = $1 and ${keyMatch('t')} = ${keyMatch('k')}`,
          [tenantId, keys],
        )
      ).rowCount ?? 0;
  }
  let inserted = 0;
  for (let index = 0; index < add.length; index += batchRows) {
    const keys = `[${add.slice(index, index + batchRows).join(',')}]`;
    inserted += await copyTable(
      source,
      move.from_schema,
      target,
      move.to_schema,
      table,
      tenantId,
      `and ${keyMatch('s')} in (select ${table.primaryKey.map((column) => `k.${quoteIdentifier(column)}`).join(', ')}
                                  from json_populate_recordset(null::${sourceTable}, $2::json) k)`,
      [keys],
    );
  }
  return { inserted, deleted };
}

/**
 * Catches the target up with the rows changed since the snapshot, verifies every table, and
 * switches the placement and releases the hold in the control database. If it fails, the hold is
 * released and the move goes back to `copied`.
 */
async function switchAcross(
  session: Session,
  move: MoveRow,
  sources: readonly MigrationSource[] | undefined,
): Promise<void> {
  const tables = await moveTables(session);
  const deltas = new Map<string, { inserted: number; deleted: number }>();
  try {
    await acrossTransaction(
      session,
      move,
      { snapshot: false },
      async (source, target) => {
        for (const table of tables) {
          deltas.set(table.table, await catchUp(session, move, source, target, table));
        }
        const sums = await verifyAcross(session, move, source, target, tables);
        return switchJournal(move, tables, sums, deltas);
      },
      (journal) => switchCatalog(session, move, sources, journal),
    );
  } catch (error) {
    await releaseHoldAcross(session, move, tables).catch((releaseError: unknown) =>
      session.settings.logger.error(
        { tenantId: session.tenantId, moveId: move.id, err: releaseError },
        'tenant move could not release its hold; roll it back',
      ),
    );
    throw error;
  }
  await notifyDeltas(session, move, tables, deltas);
}

async function releaseHoldAcross(
  session: Session,
  move: MoveRow,
  tables: readonly MoveTableSpec[],
): Promise<void> {
  await dropSourceFences(session, move, tables);
  await transaction(session, {}, async () => {
    await session.client.query(
      `update ${session.settings.tenantry}.tenants set status = 'active', updated_at = now() where id = $1 and status = 'moving'`,
      [session.tenantId],
    );
    await setStep(session, move, 'copied', { held: 'clear' });
  });
}

/** Takes the write fence off the source tables, wherever they are. */
async function dropSourceFences(
  session: Session,
  move: MoveRow,
  tables: readonly MoveTableSpec[],
): Promise<void> {
  if (move.from_placement === 'database') {
    await withRemote(session, 'from', move, (remote) =>
      withLockRetries(session, 'take the write fence off', () =>
        remoteTransaction(session, remote, { lockTimeout: true }, async () => {
          for (const table of tables) {
            await remote.client.query(
              `drop trigger if exists ${quoteIdentifier(fenceName(session.tenantId))} on ${qualified('public', table.table)}`,
            );
          }
        }),
      ),
    );
    return;
  }
  await withLockRetries(session, 'take the write fence off', () =>
    transaction(session, { lockTimeout: true }, () =>
      dropFences(session, move.from_schema, tables),
    ),
  );
}

/** Removes the tenant's rows from the dedicated database it left. */
async function cleanRemote(session: Session, move: MoveRow): Promise<void> {
  const tables = await moveTables(session);
  await withRemote(session, 'from', move, (remote) =>
    remoteTransaction(session, remote, { replica: true }, async () => {
      for (const table of [...tables].reverse()) {
        await remote.client.query(
          `delete from ${qualified('public', table.table)} where tenant_id = $1`,
          [session.tenantId],
        );
      }
    }),
  );
  await transaction(session, {}, () => setStep(session, move, 'cleaned'));
}

async function finishAcross(session: Session, move: MoveRow): Promise<void> {
  const tables = await moveTables(session);
  if (move.from_placement !== 'schema') {
    await waitOutStaleRoutes(session, move);
    await dropSourceFences(session, move, tables);
  }
  await transaction(session, {}, () => setStep(session, move, 'finished', { finished: true }));
}

/**
 * Undoes a move across databases that has not switched: removes what was copied to the target
 * (rows of a dedicated database or the pool; a schema it provisioned is dropped), takes the fence
 * off the source and lets the tenant's writes through.
 */
export async function rollbackAcross(session: Session, move: MoveRow): Promise<void> {
  const tables = await moveTables(session);
  const { tenantry } = session.settings;
  if (move.to_placement === 'database') {
    await withRemote(session, 'to', move, (remote) =>
      remoteTransaction(session, remote, { replica: true }, async () => {
        for (const table of [...tables].reverse()) {
          await remote.client.query(
            `delete from ${qualified('public', table.table)} where tenant_id = $1`,
            [session.tenantId],
          );
        }
      }),
    );
  } else {
    await withLockRetries(session, 'remove the copy', () =>
      transaction(session, { lockTimeout: true }, () => removeLocalCopy(session, move, tables)),
    );
  }
  await dropSourceFences(session, move, tables);
  await transaction(session, {}, async () => {
    await session.client.query(
      `update ${tenantry}.tenants set status = 'active', updated_at = now() where id = $1 and status = 'moving'`,
      [session.tenantId],
    );
    await setStep(session, move, 'rolled_back', { finished: true });
  });
}
