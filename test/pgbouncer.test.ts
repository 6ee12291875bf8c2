import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { type Kysely, sql } from 'kysely';
import pg from 'pg';
import {
  createMigrationCheck,
  createTenantDirectory,
  createTenantry,
  isTenantryError,
  type TenantDirectory,
  type Tenantry,
} from 'tenantry';
import { billingMigrationSource } from 'tenantry/billing';
import { jobsMigrationSource } from 'tenantry/jobs';
import { platformMigrationSource } from 'tenantry/platform';
import { storageMigrationSource } from 'tenantry/storage';
import { createTestDatabase, readTestCluster, type TestDatabase } from 'tenantry/testing';
import { buildApp } from '../app/app.ts';
import type { AppInstance } from '../app/http/types.ts';
import { appMigrationSource, bodyOf, signAccessToken } from './app-fixtures.ts';
import {
  type ReferenceDatabase,
  referenceTenantTables,
  type SeededTenant,
  seedTenant,
  sqlState,
  withClient,
} from './fixtures.ts';
import {
  findPgBouncer,
  type PgBouncerLookup,
  startPgBouncer,
  type TestPgBouncer,
} from './pgbouncer-fixtures/pgbouncer.ts';

/**
 * The isolation properties through PgBouncer in transaction mode, where every transaction may
 * run on another server session and one server session serves many clients in turn. What a
 * deployment behind it needs, as these tests run it:
 * - `preparedStatements: false` (PgBouncer before 1.21 keeps no prepared statements across
 *   transactions; the default fails as soon as a client lands on another server connection);
 * - `ignore_startup_parameters = statement_timeout, idle_in_transaction_session_timeout`
 *   (otherwise PgBouncer refuses the pool's connections; the pool's timeouts are then not
 *   applied, so set them on the role: `alter role tenantry_app set statement_timeout = '30s'`);
 * - LISTEN connections (the tenant directory, the plan limit cache) straight to PostgreSQL.
 *
 * `TENANTRY_LONG=1` runs 5,000 interleaved units instead of 360.
 */
const lookup = await findPgBouncer();
const skip = lookup.found ? false : lookup.reason;
const found = (): Extract<PgBouncerLookup, { found: true }> => {
  assert.ok(lookup.found, 'pgbouncer lookup');
  return lookup;
};
const appRole = 'tenantry_app';
const version = lookup.found ? lookup.version : '(not installed)';

test('a PgBouncer binary is available to the suites below', (t) => {
  if (!lookup.found) {
    t.skip(lookup.reason);
    return;
  }
  assert.match(lookup.version, /^\d+\.\d+/);
});

/** A small deterministic generator, so a failing interleaving can be replayed. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** The element at `index % length` (the lists here are never empty). */
function nth<T>(items: readonly T[], index: number): T {
  const item = items[index % items.length];
  assert.ok(item !== undefined, 'empty list');
  return item;
}

/** Lets other units run between two statements of a unit, so transactions interleave. */
const yieldTurn = () => new Promise<void>((resolveTurn) => setImmediate(resolveTurn));

async function openClient(url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {});
  await client.connect();
  return client;
}

interface Environment {
  readonly database: TestDatabase;
  readonly bouncer: TestPgBouncer;
  /** Tenantry instances whose pools all go through PgBouncer (many clients, few servers). */
  readonly instances: readonly Tenantry<ReferenceDatabase>[];
  readonly tenants: readonly (SeededTenant & { readonly slug: string })[];
  close(): Promise<void>;
}

async function createEnvironment(poolSize: number, tenantCount: number): Promise<Environment> {
  const cleanup: (() => Promise<void>)[] = [];
  const close = async () => {
    for (const step of cleanup.reverse()) await step();
  };
  try {
    const database = await createTestDatabase();
    cleanup.push(() => database.drop());
    const bouncer = await startPgBouncer({
      lookup: found(),
      upstreamUrl: database.adminUrl,
      users: { [appRole]: readTestCluster().appPassword },
      poolSize,
    });
    cleanup.push(() => bouncer.stop());
    const instances: Tenantry<ReferenceDatabase>[] = [];
    for (let index = 0; index < 3; index++) {
      const instance = await createTenantry<ReferenceDatabase>({
        connectionString: bouncer.url(appRole),
        // PgBouncer 1.18 keeps no prepared statements in transaction mode (see the test below).
        preparedStatements: false,
        maxConnections: 20,
        // Thousands of queued units share one or two server connections: this measures
        // isolation, not latency, so a unit may wait long for its turn.
        acquireTimeoutMs: 120_000,
      });
      instances.push(instance);
      cleanup.push(() => instance.close());
    }
    const tenants = [];
    for (let index = 0; index < tenantCount; index++) {
      const slug = `pgb${index}x${randomBytes(2).toString('hex')}`;
      const seeded = await seedTenant(database.adminUrl, nth(instances, index), slug);
      tenants.push({ ...seeded, slug });
    }
    return { database, bouncer, instances, tenants, close };
  } catch (error) {
    await close();
    throw error;
  }
}

/** The application name of app-role connections that bypass PgBouncer on purpose (LISTEN). */
const directApplication = 'tenantry-direct-listener';

/**
 * Server connections of the app role to the database, as PostgreSQL sees them, leaving out
 * the ones opened directly under {@link directApplication}.
 */
async function serverConnections(database: TestDatabase): Promise<number> {
  return withClient(database.adminUrl, async (admin) => {
    const result = await admin.query<{ n: number }>(
      `select count(*)::int as n from pg_stat_activity
       where datname = $1 and usename = $2 and application_name is distinct from $3`,
      [database.name, appRole, directApplication],
    );
    return result.rows[0]?.n ?? -1;
  });
}

interface Seen {
  readonly tenantId: string;
  readonly context: string | null;
  readonly pid: number;
}

for (const poolSize of [2, 1]) {
  describe(`through PgBouncer ${version} in transaction mode, ${poolSize} server connection(s)`, {
    skip,
  }, () => {
    let env: Environment;

    before(async () => {
      env = await createEnvironment(poolSize, 8);
    });
    after(() => env?.close());

    test('many tenants interleaved on the shared server connections each see only their own rows', async () => {
      const next = random(0x5eed + poolSize);
      const { tenants, instances } = env;
      const wrong: string[] = [];
      const pids = new Set<number>();
      const committed = new Map<string, string[]>();
      const rolledBack: string[] = [];
      const record = (tenantId: string, rows: readonly Seen[]) => {
        for (const row of rows) {
          pids.add(row.pid);
          if (row.tenantId !== tenantId || row.context !== tenantId) {
            wrong.push(`${tenantId} saw tenant ${row.tenantId} in context ${row.context}`);
          }
        }
      };
      const seenSql = (table: string) =>
        sql<Seen>`select tenant_id as "tenantId", current_setting('tenantry.tenant_id', true) as context,
          pg_backend_pid() as pid from ${sql.table(table)}`;
      const unitCount = process.env.TENANTRY_LONG === '1' ? 5000 : 360;
      const units = Array.from({ length: unitCount }, async (_, index) => {
        const tenant = nth(tenants, Math.floor(next() * tenants.length));
        const tenantry = nth(instances, index);
        const table = nth(referenceTenantTables, index);
        const kind = index % 4;
        if (kind === 0) {
          const name = `${tenant.slug} unit ${index}`;
          await tenantry.withTenant(tenant.tenantId, async (db) => {
            const before = await db.selectFrom('contacts').select(['tenant_id', 'name']).execute();
            if (before.some((row) => row.tenant_id !== tenant.tenantId))
              wrong.push(`${tenant.tenantId}: autocommitted read saw another tenant`);
            await yieldTurn();
            await db.insertInto('contacts').values({ name }).execute();
            await yieldTurn();
            record(tenant.tenantId, (await seenSql(table).execute(db)).rows);
          });
          committed.set(tenant.tenantId, [...(committed.get(tenant.tenantId) ?? []), name]);
        } else if (kind === 1) {
          const rows = await tenantry.oneShot(
            tenant.tenantId,
            async (db) => (await seenSql(table).execute(db)).rows,
          );
          record(tenant.tenantId, rows);
        } else if (kind === 2) {
          const name = `${tenant.slug} rolled back ${index}`;
          const failure = new Error('abandon this unit');
          await assert.rejects(
            tenantry.withTenant(tenant.tenantId, async (db) => {
              await db.insertInto('contacts').values({ name }).execute();
              await yieldTurn();
              record(tenant.tenantId, (await seenSql(table).execute(db)).rows);
              throw failure;
            }),
            (error) => error === failure,
          );
          rolledBack.push(name);
        } else {
          await tenantry.withTenant(
            tenant.tenantId,
            async (db) => {
              record(tenant.tenantId, (await seenSql('contacts').execute(db)).rows);
              await yieldTurn();
              record(tenant.tenantId, (await seenSql(table).execute(db)).rows);
            },
            { isolationLevel: 'repeatable read' },
          );
        }
      });
      // Every unit settles before anything is checked (none keeps writing into the next test).
      const failures = (await Promise.allSettled(units)).flatMap((outcome) =>
        outcome.status === 'rejected' ? [outcome.reason] : [],
      );
      assert.deepEqual(failures, []);
      assert.deepEqual(wrong, []);
      assert.ok(pids.size >= 1 && pids.size <= poolSize, `server pids: ${[...pids].join(', ')}`);
      assert.ok((await serverConnections(env.database)) <= poolSize);
      await withClient(env.database.adminUrl, async (admin) => {
        for (const tenant of tenants) {
          const stored = await admin.query<{ name: string }>(
            `select name from contacts where tenant_id = $1 and name like '% unit %' order by name`,
            [tenant.tenantId],
          );
          assert.deepEqual(
            stored.rows.map((row) => row.name),
            [...(committed.get(tenant.tenantId) ?? [])].sort(),
          );
        }
        const misplaced = await admin.query(
          `select c.name from contacts c join tenantry.tenants t on t.id = c.tenant_id
           where (c.name like '% unit %' or c.name like '% rolled back %')
             and c.name not like t.slug || ' %'`,
        );
        assert.deepEqual(misplaced.rows, []);
        const leftOver = await admin.query('select name from contacts where name = any($1)', [
          rolledBack,
        ]);
        assert.deepEqual(leftOver.rows, []);
      });
    });

    test('every tenant table: a tenant reads its rows only and cannot touch another tenant’s, interleaved', async () => {
      const { tenants, instances, database } = env;
      // Every table's insertable columns and one row per tenant, read once up front.
      const { columnsOf, rowsOf } = await withClient(database.adminUrl, async (admin) => {
        const columns = await admin.query<{ table: string; columns: string }>(
          `select c.relname as table, string_agg(quote_ident(a.attname), ', ' order by a.attnum) as columns
           from pg_class c join pg_attribute a on a.attrelid = c.oid
           where c.relnamespace = 'public'::regnamespace and c.relname = any($1)
             and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''
           group by c.relname`,
          [referenceTenantTables],
        );
        const rows = new Map<string, Map<string, Record<string, unknown>>>();
        for (const table of referenceTenantTables) {
          const result = await admin.query<{ tenant_id: string; row: Record<string, unknown> }>(
            `select distinct on (tenant_id) tenant_id, to_jsonb(t) as row from ${table} t`,
          );
          rows.set(table, new Map(result.rows.map((row) => [row.tenant_id, row.row])));
        }
        return {
          columnsOf: new Map(columns.rows.map((row) => [row.table, row.columns])),
          rowsOf: rows,
        };
      });
      const fingerprint = () =>
        withClient(database.adminUrl, async (admin) => {
          const digests = referenceTenantTables.map(
            (table) =>
              `select '${table}=' || count(*) || ':' || coalesce(md5(string_agg(t::text, '|' order by t::text)), '') from ${table} t`,
          );
          const result = await admin.query<{ digest: string }>(
            `select digest from (${digests.join(' union all ')}) as d(digest)`,
          );
          return result.rows.map((row) => row.digest);
        });
      const before = await fingerprint();
      const violations: string[] = [];
      const checks = referenceTenantTables.flatMap((table, tableIndex) =>
        tenants.map(async (tenant, index) => {
          const other = nth(tenants, index + 1 + (tableIndex % (tenants.length - 1)));
          const tenantry = nth(instances, index + tableIndex);
          const otherRow = rowsOf.get(table)?.get(other.tenantId);
          if (otherRow === undefined) {
            violations.push(`${table}: no seeded row for ${other.slug}`);
            return;
          }
          const fresh = 'id' in otherRow ? { ...otherRow, id: randomUUID() } : otherRow;
          const columns = sql.raw(columnsOf.get(table) ?? '*');
          const label = `${table} as ${tenant.slug}`;
          await tenantry.withTenant(tenant.tenantId, async (db: Kysely<ReferenceDatabase>) => {
            const own = await sql<{
              tenant_id: string;
            }>`select tenant_id from ${sql.table(table)}`.execute(db);
            if (own.rows.length === 0) violations.push(`${label}: none of its own rows`);
            if (own.rows.some((row) => row.tenant_id !== tenant.tenantId))
              violations.push(`${label}: saw another tenant`);
            await yieldTurn();
            const filtered =
              await sql`select 1 from ${sql.table(table)} where tenant_id = ${other.tenantId}`.execute(
                db,
              );
            if (filtered.rows.length !== 0) violations.push(`${label}: filter by B returned rows`);
            const updated =
              await sql`update ${sql.table(table)} set tenant_id = tenant_id where tenant_id = ${other.tenantId}`.execute(
                db,
              );
            if (updated.numAffectedRows !== 0n) violations.push(`${label}: update reached B`);
          });
          // Each refused write in a unit of its own: the refusal rolls the unit back.
          const insertState = await sqlState(
            tenantry.withTenant(tenant.tenantId, (db) =>
              sql`insert into ${sql.table(table)} (${columns}) select ${columns} from jsonb_populate_record(null::${sql.table(table)}, ${JSON.stringify(fresh)}::jsonb)`.execute(
                db,
              ),
            ),
          );
          if (insertState !== 'TENANTRY_ERR_DB_FORBIDDEN')
            violations.push(`${label}: insert with B's tenant_id gave ${insertState}`);
          const moveState = await sqlState(
            tenantry.withTenant(tenant.tenantId, (db) =>
              sql`update ${sql.table(table)} set tenant_id = ${other.tenantId} where tenant_id = ${tenant.tenantId}`.execute(
                db,
              ),
            ),
          );
          if (moveState !== 'TENANTRY_ERR_DB_FORBIDDEN')
            violations.push(`${label}: moving a row to B gave ${moveState}`);
        }),
      );
      await Promise.all(checks);
      assert.deepEqual(violations, []);
      assert.deepEqual(await fingerprint(), before);
    });

    test('the query builder refuses a row naming another tenant, and RLS refuses raw SQL', async () => {
      const a = nth(env.tenants, 0);
      const b = nth(env.tenants, 1);
      const tenantry = nth(env.instances, 0);
      const countOfB = () =>
        withClient(env.database.adminUrl, async (admin) => {
          const result = await admin.query(
            'select count(*)::int as n from contacts where tenant_id = $1',
            [b.tenantId],
          );
          return result.rows[0].n as number;
        });
      const before = await countOfB();
      await assert.rejects(
        tenantry.withTenant(a.tenantId, (db) =>
          db.insertInto('contacts').values({ tenant_id: b.tenantId, name: 'smuggled' }).execute(),
        ),
        (error) => isTenantryError(error, 'TENANTRY_ERR_GUARD_TENANT_MISMATCH'),
      );
      await assert.rejects(
        tenantry.withTenant(a.tenantId, (db) =>
          sql`insert into contacts (tenant_id, name) values (${b.tenantId}, 'smuggled')`.execute(
            db,
          ),
        ),
        (error) => isTenantryError(error, 'TENANTRY_ERR_DB_FORBIDDEN'),
      );
      await assert.rejects(
        tenantry.withTenant(a.tenantId, (db) =>
          db.updateTable('contacts').set({ tenant_id: b.tenantId }).execute(),
        ),
        (error) => isTenantryError(error, 'TENANTRY_ERR_GUARD_TENANT_MISMATCH'),
      );
      assert.equal(await countOfB(), before);
    });

    test('no context outlives its transaction on the shared server connection', async () => {
      const a = nth(env.tenants, 0);
      const tenantry = nth(env.instances, 0);
      const bare = await openClient(env.bouncer.url(appRole));
      try {
        const probe = async (after: string) => {
          const result = await bare.query<{ context: string | null; rows: number; pid: number }>(
            `select current_setting('tenantry.tenant_id', true) as context,
                    (select count(*)::int from contacts) + (select count(*)::int from messages) as rows,
                    pg_backend_pid() as pid`,
          );
          const row = nth(result.rows, 0);
          assert.ok(row.context === null || row.context === '', `${after}: context ${row.context}`);
          assert.equal(row.rows, 0, `${after}: a query without context saw rows`);
          return row.pid;
        };
        const pidOf = async (db: Kysely<ReferenceDatabase>) =>
          nth((await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(db)).rows, 0).pid;
        const unitPids: number[] = [];
        const probePids: number[] = [];
        for (let round = 0; round < 10; round++) {
          unitPids.push(
            await tenantry.withTenant(a.tenantId, async (db) => {
              await db
                .insertInto('tags')
                .values({ name: `leak check ${round}` })
                .execute();
              return pidOf(db);
            }),
          );
          probePids.push(await probe('a committed unit'));
          unitPids.push(await tenantry.oneShot(a.tenantId, pidOf));
          probePids.push(await probe('a one-shot unit'));
          await assert.rejects(
            tenantry.withTenant(a.tenantId, async (db) => {
              unitPids.push(await pidOf(db));
              await sql`select 1 / 0`.execute(db);
            }),
          );
          probePids.push(await probe('a unit that failed mid-transaction'));
          await tenantry.withTenant(a.tenantId, async (db) => {
            await db.selectFrom('contacts').selectAll().execute();
          });
          probePids.push(await probe('an autocommitted read'));
        }
        if (poolSize === 1) {
          // One server connection: every probe ran right after a unit, on the unit's session.
          assert.equal(new Set([...unitPids, ...probePids]).size, 1);
        }
      } finally {
        await bare.end();
      }
    });

    test('a cursor streams inside a unit through the pooler', async () => {
      const a = nth(env.tenants, 0);
      const names = await nth(env.instances, 1).withTenant(a.tenantId, async (db) => {
        const streamed: string[] = [];
        for await (const row of db.selectFrom('contacts').select(['name', 'tenant_id']).stream(2)) {
          assert.equal(row.tenant_id, a.tenantId);
          streamed.push(row.name);
        }
        return streamed;
      });
      const expected = await withClient(env.database.adminUrl, async (admin) => {
        const result = await admin.query('select name from contacts where tenant_id = $1', [
          a.tenantId,
        ]);
        return result.rows.map((row) => row.name as string);
      });
      assert.deepEqual(names.sort(), expected.sort());
    });

    if (poolSize === 1) {
      test('negative control: a session-level SET on the shared connection is seen by the next client', async () => {
        const a = nth(env.tenants, 0);
        const careless = await openClient(env.bouncer.url(appRole));
        const bare = await openClient(env.bouncer.url(appRole));
        try {
          // What a `set` instead of `set local` would do: the setting stays with the server session.
          await careless.query(`set tenantry.tenant_id = '${a.tenantId}'`);
          const leaked = await bare.query('select count(*)::int as n from contacts');
          assert.ok(leaked.rows[0].n > 0, 'the leak check would not notice a leaked context');
        } finally {
          await careless.query('reset tenantry.tenant_id');
          await careless.end();
          await bare.end();
        }
        const cleared = await nth(env.instances, 0).oneShot(a.tenantId, async () => undefined);
        assert.equal(cleared, undefined);
      });
    }
  });
}

describe(`prepared statements through PgBouncer ${version} in transaction mode`, { skip }, () => {
  let database: TestDatabase;
  let bouncer: TestPgBouncer;
  let tenant: SeededTenant;

  before(async () => {
    database = await createTestDatabase();
    bouncer = await startPgBouncer({
      lookup: found(),
      upstreamUrl: database.adminUrl,
      users: { [appRole]: readTestCluster().appPassword },
      poolSize: 2,
    });
    const direct = await createTenantry<ReferenceDatabase>({ connectionString: database.appUrl });
    tenant = await seedTenant(
      database.adminUrl,
      direct,
      `pgbprepared${randomBytes(2).toString('hex')}`,
    );
    await direct.close();
  });
  after(async () => {
    await bouncer?.stop();
    await database?.drop();
  });

  /**
   * Runs the same read twice on one client connection, the second time on the other server
   * connection: a bare client holds server 1 while the first read takes server 2, then frees
   * server 1, which PgBouncer (LIFO) hands to the second read.
   */
  async function readOnBothServers(preparedStatements: boolean): Promise<unknown> {
    const tenantry = await createTenantry<ReferenceDatabase>({
      connectionString: bouncer.url(appRole),
      preparedStatements,
      maxConnections: 1,
    });
    const holder = await openClient(bouncer.url(appRole));
    const read = () =>
      tenantry.withTenant(tenant.tenantId, async (db) => {
        const rows = await db
          .selectFrom('contacts')
          .select(['tenant_id', sql<number>`pg_backend_pid()`.as('pid')])
          .execute();
        return rows;
      });
    try {
      await holder.query('begin');
      const held = (await holder.query('select pg_backend_pid() as pid')).rows[0].pid as number;
      const first = await read();
      assert.notEqual(first[0]?.pid, held);
      await holder.query('commit');
      return await read().then(
        (rows) => {
          assert.equal(
            rows[0]?.pid,
            held,
            'the second read should run on the server the holder freed',
          );
          return rows;
        },
        (error: unknown) => error,
      );
    } finally {
      await holder.end();
      await tenantry.close();
    }
  }

  test('with preparedStatements (the default) a unit fails once its connection lands on another server', async () => {
    const outcome = await readOnBothServers(true);
    assert.ok(outcome instanceof Error, 'the second read should have failed');
    const cause = (outcome as { cause?: { code?: string } }).cause;
    assert.equal(cause?.code, '26000', String(outcome)); // prepared statement does not exist
  });

  test('with preparedStatements: false the same reads succeed', async () => {
    const outcome = await readOnBothServers(false);
    assert.ok(Array.isArray(outcome), String(outcome));
    assert.ok(outcome.every((row) => (row as { tenant_id: string }).tenant_id === tenant.tenantId));
  });

  test('the pool’s startup timeouts are refused by PgBouncer unless it is told to ignore them', async () => {
    const strict = await startPgBouncer({
      lookup: found(),
      upstreamUrl: database.adminUrl,
      users: { [appRole]: readTestCluster().appPassword },
      poolSize: 1,
      ignoreStartupParameters: [],
    });
    try {
      await assert.rejects(
        createTenantry({ connectionString: strict.url(appRole), preparedStatements: false }),
        (error) =>
          /unsupported startup parameter: statement_timeout/.test(
            String((error as Error).cause ?? error),
          ),
      );
    } finally {
      await strict.stop();
    }
  });
});

describe(`the reference app's contact API through PgBouncer ${version}`, { skip }, () => {
  let database: TestDatabase;
  let bouncer: TestPgBouncer;
  let tenantry: Tenantry<ReferenceDatabase>;
  let directory: TenantDirectory;
  let app: AppInstance;
  const auth = Object.freeze({
    mode: 'local' as const,
    jwtSecret: randomBytes(32).toString('hex'),
    issuer: 'tenantry-test',
    audience: 'tenantry-test-api',
    accessTokenTtlSec: 900,
    refreshTokenTtlSec: 3600,
  });

  before(async () => {
    database = await createTestDatabase();
    bouncer = await startPgBouncer({
      lookup: found(),
      upstreamUrl: database.adminUrl,
      users: { [appRole]: readTestCluster().appPassword },
      poolSize: 1,
    });
    tenantry = await createTenantry<ReferenceDatabase>({
      connectionString: bouncer.url(appRole),
      preparedStatements: false,
      maxConnections: 30,
    });
    // The directory LISTENs for tenant changes: a session PgBouncer's transaction mode cannot
    // keep, so it connects to PostgreSQL directly.
    const directUrl = new URL(database.appUrl);
    directUrl.searchParams.set('application_name', directApplication);
    directory = await createTenantDirectory({ connectionString: directUrl.toString() });
    app = await buildApp({
      tenantry,
      directory,
      auth,
      pendingMigrations: await createMigrationCheck({
        sources: [
          jobsMigrationSource(),
          storageMigrationSource(),
          billingMigrationSource(),
          platformMigrationSource(),
          appMigrationSource,
        ],
      }),
    });
    await app.ready();
  });
  after(async () => {
    await app?.close();
    await directory?.close();
    await bouncer?.stop();
    await database?.drop();
  });

  async function workspace(slug: string) {
    const tenantId = randomUUID();
    const userId = randomUUID();
    await withClient(database.adminUrl, async (admin) => {
      await admin.query('insert into tenantry.tenants (id, slug, name) values ($1, $2, $2)', [
        tenantId,
        slug,
      ]);
      await admin.query(
        `insert into auth.users (id, email, name, password_hash) values ($1, $2, $3, 'unusable')`,
        [userId, `owner@${slug}.test`, slug],
      );
      await admin.query(
        `insert into memberships (tenant_id, user_id, role) values ($1, $2, 'owner')`,
        [tenantId, userId],
      );
    });
    const token = await signAccessToken(auth, { tenantId, userId, role: 'owner' });
    return { tenantId, slug, headers: { authorization: `Bearer ${token}` } };
  }

  test('concurrent workspaces create and list contacts, each seeing only its own', async () => {
    const ready = await app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(ready.statusCode, 200, ready.body);
    const workspaces = await Promise.all(
      Array.from({ length: 6 }, (_, index) =>
        workspace(`pgb-app-${index}-${randomBytes(2).toString('hex')}`),
      ),
    );
    const perWorkspace = 8;
    const created = await Promise.all(
      workspaces.flatMap((ws) =>
        Array.from({ length: perWorkspace }, async (_, index) => {
          const response = await app.inject({
            method: 'POST',
            url: index % 2 === 0 ? '/v1/contacts' : `/t/${ws.slug}/v1/contacts`,
            headers: ws.headers,
            payload: { name: `${ws.slug} contact ${index}`, attributes: { n: index } },
          });
          assert.equal(response.statusCode, 201, response.body);
          return { tenantId: ws.tenantId, id: bodyOf<{ id: string }>(response).id };
        }),
      ),
    );
    const idsOf = (tenantId: string) =>
      created
        .filter((entry) => entry.tenantId === tenantId)
        .map((entry) => entry.id)
        .sort();
    const lists = await Promise.all(
      workspaces.flatMap((ws) =>
        [0, 1, 2].map(async () => {
          const response = await app.inject({
            method: 'GET',
            url: '/v1/contacts?limit=100',
            headers: ws.headers,
          });
          assert.equal(response.statusCode, 200, response.body);
          const ids = bodyOf<{ items: { id: string; name: string }[] }>(response)
            .items.map((contact) => contact.id)
            .sort();
          return { ws, ids };
        }),
      ),
    );
    for (const { ws, ids } of lists) assert.deepEqual(ids, idsOf(ws.tenantId), ws.slug);
    const crossReads = await Promise.all(
      workspaces.map(async (ws, index) => {
        const other = nth(workspaces, index + 1);
        const [foreignId] = idsOf(other.tenantId);
        const response = await app.inject({
          method: 'GET',
          url: `/v1/contacts/${foreignId}`,
          headers: ws.headers,
        });
        const deleted = await app.inject({
          method: 'DELETE',
          url: `/v1/contacts/${foreignId}`,
          headers: ws.headers,
        });
        return [response.statusCode, deleted.statusCode];
      }),
    );
    assert.deepEqual(
      crossReads,
      workspaces.map(() => [404, 404]),
    );
    const stored = await withClient(database.adminUrl, async (admin) => {
      const result = await admin.query<{ id: string; tenant_id: string }>(
        'select id, tenant_id from contacts where id = any($1)',
        [created.map((entry) => entry.id)],
      );
      return result.rows;
    });
    assert.equal(stored.length, created.length);
    for (const row of stored) {
      assert.equal(row.tenant_id, created.find((entry) => entry.id === row.id)?.tenantId);
    }
    assert.ok((await serverConnections(database)) <= 1);
  });
});
