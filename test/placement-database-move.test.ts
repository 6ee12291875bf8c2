import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { Generated } from 'kysely';
import {
  bootstrapDatabase,
  createTenantry,
  defaultRoleNames,
  isTenantryError,
  migrate,
  type Tenantry,
  withCredentials,
  withDatabase,
} from 'tenantry';
import { billingMigrationSource } from 'tenantry/billing';
import { defineJob, enqueueJob, jobsMigrationSource } from 'tenantry/jobs';
import {
  createPlacementRouter,
  createPoolRegistry,
  defaultTenantSchemaName,
  migrateTargets,
  moveTenant,
  type PlacementRouter,
  type PoolRegistry,
  resumeTenantMove,
  rollbackTenantMove,
  type TenantMoveProgress,
  type TenantMoveStep,
} from 'tenantry/placement';
import { platformMigrationSource } from 'tenantry/platform';
import { storageMigrationSource } from 'tenantry/storage';
import { readTestCluster } from 'tenantry/testing';
import { withClient } from './fixtures.ts';

const execFileAsync = promisify(execFile);
const cli = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));

async function runCli(args: readonly string[], env: Record<string, string>) {
  try {
    const { stdout, stderr } = await execFileAsync(
      process.execPath,
      ['--conditions=development', cli, ...args],
      { env: { PATH: process.env.PATH ?? '', ...env } },
    );
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code?: number; stdout?: string; stderr?: string };
    return { code: failed.code ?? -1, stdout: failed.stdout ?? '', stderr: failed.stderr ?? '' };
  }
}

/*
 * Moves into and out of dedicated databases, on an application of its own (notes, comments and
 * an audit log) so the dedicated databases hold every tenant table of the
 * pool: the reference app's tenant tables reference its global users, which a dedicated database
 * does not have.
 */

interface NotesDatabase {
  notes: {
    tenant_id: Generated<string>;
    id: string;
    body: string;
    score: number;
    labels: string[];
    payload: Buffer | null;
    created_at: Generated<Date>;
  };
  comments: { tenant_id: Generated<string>; id: string; note_id: string; body: string };
  audit: {
    tenant_id: Generated<string>;
    id: Generated<string>;
    action: string;
    at: Generated<Date>;
  };
}

const cluster = readTestCluster();
const controlName = `tenantry_dbmove_${randomBytes(5).toString('hex')}`;
const controlAdminUrl = withDatabase(cluster.adminUrl, controlName);
const controlAppUrl = withCredentials(controlAdminUrl, defaultRoleNames.app, cluster.appPassword);
const dedicatedName = `tenantry_dbmove_${randomBytes(5).toString('hex')}`;
const dedicatedAdminUrl = withDatabase(cluster.adminUrl, dedicatedName);
const dedicatedAppUrl = withCredentials(
  dedicatedAdminUrl,
  defaultRoleNames.app,
  cluster.appPassword,
);
const databases = { eu_1: dedicatedAdminUrl };
const tables = ['notes', 'comments', 'audit'] as const;

let sourceDirectory: string;
let sources: { name: string; directory: string }[];
let registry: PoolRegistry;
let router: PlacementRouter;
let tenantry: Tenantry<NotesDatabase>;

async function query<R extends Record<string, unknown>>(
  url: string,
  text: string,
  values: unknown[] = [],
): Promise<R[]> {
  return withClient(url, async (client) => (await client.query<R>(text, values)).rows);
}

async function dropDatabase(name: string): Promise<void> {
  await query(
    cluster.adminUrl,
    'select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()',
    [name],
  );
  await query(cluster.adminUrl, `drop database if exists "${name}"`);
}

async function createTenant(slug: string): Promise<string> {
  const tenantId = randomUUID();
  await query(
    controlAdminUrl,
    'insert into tenantry.tenants (id, slug, name) values ($1, $2, $2)',
    [tenantId, `${slug}-${randomBytes(3).toString('hex')}`],
  );
  return tenantId;
}

/** A tenant with rows of every column type the fixture has, in every table. */
async function seedTenant(slug: string): Promise<string> {
  const tenantId = await createTenant(slug);
  await tenantry.withTenant(tenantId, async (db) => {
    for (let index = 0; index < 40; index++) {
      const noteId = randomUUID();
      await db
        .insertInto('notes')
        .values({
          id: noteId,
          body: `note ${index} ✓ "quoted" \\ back`,
          score: index / 3,
          labels: ['a', `b${index}`, 'with,comma'],
          payload: index % 2 === 0 ? Buffer.from([0, 1, 2, index]) : null,
        })
        .execute();
      await db
        .insertInto('comments')
        .values({ id: randomUUID(), note_id: noteId, body: `comment ${index}` })
        .execute();
    }
    await db.insertInto('audit').values({ action: 'seeded' }).execute();
    await db.insertInto('audit').values({ action: 'seeded' }).execute();
  });
  return tenantId;
}

/** Where the catalog places the tenant, and the URL and schema its rows are read at. */
async function locationOf(
  tenantId: string,
): Promise<{ placement: string; url: string; schema: string }> {
  const [row] = await query<{
    placement: string;
    schema_name: string | null;
    connection_name: string | null;
  }>(
    controlAdminUrl,
    `select t.placement, p.schema_name, p.connection_name from tenantry.tenants t
       left join tenantry.tenant_placements p on p.tenant_id = t.id where t.id = $1`,
    [tenantId],
  );
  assert.ok(row);
  if (row.placement === 'database') {
    assert.equal(row.connection_name, 'eu_1');
    return { placement: 'database', url: dedicatedAdminUrl, schema: 'public' };
  }
  return { placement: row.placement, url: controlAdminUrl, schema: row.schema_name ?? 'public' };
}

/** Rows and md5 of the tenant's rows of every table at one place (a missing schema: none). */
async function checksums(tenantId: string, url: string, schema: string) {
  const sums: Record<string, string> = {};
  const present = await query(url, 'select 1 from pg_namespace where nspname = $1', [schema]);
  if (present.length === 0) return sums;
  for (const table of tables) {
    const [row] = await query<{ rows: string; sum: string }>(
      url,
      `select count(*)::text as rows, md5(coalesce(string_agg(r, E'\\n' order by r collate "C"), '')) as sum
         from (select t::text as r from "${schema}"."${table}" t where tenant_id = $1) x`,
      [tenantId],
    );
    sums[table] = `${row?.rows}:${row?.sum}`;
  }
  return sums;
}

/** How many rows the tenant has at each place it could be. */
async function rowsEverywhere(tenantId: string): Promise<Record<string, number>> {
  const places: [string, string, string][] = [
    ['pool', controlAdminUrl, 'public'],
    ['schema', controlAdminUrl, defaultTenantSchemaName(tenantId)],
    ['database', dedicatedAdminUrl, 'public'],
  ];
  const counts: Record<string, number> = {};
  for (const [name, url, schema] of places) {
    const sums = await checksums(tenantId, url, schema);
    counts[name] = Object.values(sums).reduce((total, sum) => total + Number(sum.split(':')[0]), 0);
  }
  return counts;
}

/** Moves a tenant into the dedicated database of `eu_1`, with no fence grace. */
function moveToDatabase(
  tenantId: string,
  extra: Pick<Parameters<typeof moveTenant>[0], 'onProgress'> = {},
) {
  return moveTenant({
    connectionString: controlAdminUrl,
    tenantId,
    to: 'database',
    connection: 'eu_1',
    sources,
    databases,
    fenceGraceMs: 0,
    ...extra,
  });
}

function isMovingRefusal(error: unknown): boolean {
  for (let current: unknown = error; current !== undefined && current !== null; ) {
    if (isTenantryError(current, 'TENANTRY_ERR_TENANT_MOVING')) return true;
    if ((current as { code?: unknown }).code === 'TM001') return true;
    current = (current as { cause?: unknown }).cause;
  }
  return false;
}

interface Traffic {
  /** Notes written and still there. */
  readonly acknowledged: string[];
  /** Notes deleted (with their comments) after they were acknowledged. */
  readonly deleted: string[];
  /** The score each updated note was last given. */
  readonly scores: Map<string, number>;
  readonly errors: unknown[];
}

/**
 * Per unit of work, through the router, until stopped: writes a note and a comment; every fifth
 * unit also deletes the oldest note it wrote, every third updates the score of an older one.
 */
function startTraffic(tenantId: string, stop: { done: boolean }) {
  const traffic: Traffic = { acknowledged: [], deleted: [], scores: new Map(), errors: [] };
  let round = 0;
  const done = (async () => {
    while (!stop.done) {
      round++;
      const noteId = randomUUID();
      const removed = round % 5 === 0 ? traffic.acknowledged[0] : undefined;
      // Mostly notes written long before: rows the snapshot copy carried that change afterwards.
      const updated =
        round % 3 === 0 ? traffic.acknowledged[round % traffic.acknowledged.length] : undefined;
      try {
        await tenantry.withTenant(tenantId, async (db) => {
          await db
            .insertInto('notes')
            .values({ id: noteId, body: 'traffic', score: 1.5, labels: [], payload: null })
            .execute();
          await db
            .insertInto('comments')
            .values({ id: randomUUID(), note_id: noteId, body: 'traffic' })
            .execute();
          if (removed !== undefined) {
            await db.deleteFrom('notes').where('id', '=', removed).execute();
          }
          if (updated !== undefined && updated !== removed) {
            await db.updateTable('notes').set({ score: round }).where('id', '=', updated).execute();
          }
        });
        traffic.acknowledged.push(noteId);
        if (removed !== undefined) {
          traffic.acknowledged.splice(traffic.acknowledged.indexOf(removed), 1);
          traffic.deleted.push(removed);
          traffic.scores.delete(removed);
        }
        if (updated !== undefined && updated !== removed) traffic.scores.set(updated, round);
      } catch (error) {
        traffic.errors.push(error);
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
  })();
  return { traffic, done };
}

async function waitForWrites(traffic: Traffic, count: number): Promise<void> {
  const target = traffic.acknowledged.length + count;
  const deadline = Date.now() + 20_000;
  while (traffic.acknowledged.length < target) {
    if (Date.now() > deadline) {
      const last = traffic.errors.at(-1) as Error | undefined;
      assert.fail(`no progress: ${String(last)} ${String(last?.cause)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Every acknowledged note is at the tenant's place exactly once (with its comment), and only there. */
async function assertLedger(tenantId: string, traffic: Traffic): Promise<void> {
  const place = await locationOf(tenantId);
  const [notes] = await query<{ found: string; distinct: string; comments: string }>(
    place.url,
    `select count(*)::text as found, count(distinct n.id)::text as distinct,
            (select count(*) from "${place.schema}".comments c
              where c.tenant_id = $1 and c.note_id = any($2::uuid[]))::text as comments
       from "${place.schema}".notes n where n.tenant_id = $1 and n.id = any($2::uuid[])`,
    [tenantId, traffic.acknowledged],
  );
  const expected = String(traffic.acknowledged.length);
  assert.deepEqual(notes, { found: expected, distinct: expected, comments: expected });
  const [gone] = await query<{ rows: string }>(
    place.url,
    `select count(*)::text as rows from "${place.schema}".notes where tenant_id = $1 and id = any($2::uuid[])`,
    [tenantId, traffic.deleted],
  );
  assert.equal(gone?.rows, '0', 'notes deleted during the moves stay deleted');
  const scores = await query<{ id: string; score: number }>(
    place.url,
    `select id::text, score from "${place.schema}".notes where tenant_id = $1 and id = any($2::uuid[])`,
    [tenantId, [...traffic.scores.keys()]],
  );
  assert.deepEqual(
    Object.fromEntries(scores.map((row) => [row.id, row.score])),
    Object.fromEntries(traffic.scores),
    'every acknowledged update survived the moves',
  );
  const counts = await rowsEverywhere(tenantId);
  for (const [name, rows] of Object.entries(counts)) {
    if (name !== place.placement)
      assert.equal(rows, 0, `no rows of the tenant are left in ${name}`);
  }
}

before(async () => {
  sourceDirectory = await mkdtemp(join(tmpdir(), 'tenantry-dbmove-'));
  await writeFile(
    join(sourceDirectory, '0001-notes.sql'),
    `create table notes (
       tenant_id uuid not null default tenantry.current_tenant_id(),
       id uuid not null,
       body text not null,
       score double precision not null,
       labels text[] not null,
       payload bytea,
       created_at timestamptz not null default now(),
       body_length integer generated always as (length(body)) stored,
       primary key (tenant_id, id)
     );
     select tenantry.enable_tenant_isolation('notes');
     create table comments (
       tenant_id uuid not null default tenantry.current_tenant_id(),
       id uuid not null,
       note_id uuid not null,
       body text not null,
       primary key (tenant_id, id),
       foreign key (tenant_id, note_id) references notes (tenant_id, id) on delete cascade
     );
     select tenantry.enable_tenant_isolation('comments');
     create table audit (
       tenant_id uuid not null default tenantry.current_tenant_id(),
       id uuid not null default gen_random_uuid(),
       action text not null,
       at timestamptz not null default now(),
       primary key (tenant_id, id)
     );
     select tenantry.enable_tenant_isolation('audit');\n`,
  );
  sources = [{ name: 'app', directory: sourceDirectory }];
  for (const database of [controlName, dedicatedName]) {
    await bootstrapDatabase({ adminConnectionString: cluster.adminUrl, database });
  }
  await migrate({
    connectionString: controlAdminUrl,
    sources: [
      jobsMigrationSource(),
      storageMigrationSource(),
      billingMigrationSource(),
      platformMigrationSource(),
      ...sources,
    ],
  });
  registry = createPoolRegistry({ connections: { eu_1: dedicatedAppUrl } });
  router = await createPlacementRouter({ connectionString: controlAppUrl, registry });
  tenantry = await createTenantry<NotesDatabase>({
    connectionString: controlAppUrl,
    tenantSchema: router.tenantSchema,
    tenantPool: router.tenantPool,
  });
});

after(async () => {
  await tenantry?.close();
  await router?.close();
  await registry?.close();
  await dropDatabase(controlName);
  await dropDatabase(dedicatedName);
  if (sourceDirectory !== undefined) await rm(sourceDirectory, { recursive: true, force: true });
});

describe('moves into and out of a dedicated database', () => {
  test('pool -> schema -> database -> pool under traffic: nothing lost or doubled, others untouched', async () => {
    const moving = await seedTenant('mover');
    const neighbour = await seedTenant('neighbour');
    const idle = await seedTenant('idle');
    const idleBefore = await checksums(idle, controlAdminUrl, 'public');
    const seeded = await checksums(moving, controlAdminUrl, 'public');

    const stop = { done: false };
    const mover = startTraffic(moving, stop);
    const other = startTraffic(neighbour, stop);
    const steps: TenantMoveStep[] = [];
    try {
      for (const to of ['schema', 'database', 'pool'] as const) {
        await waitForWrites(mover.traffic, 15);
        const report = await moveTenant({
          connectionString: controlAdminUrl,
          tenantId: moving,
          to,
          sources,
          databases,
          ...(to === 'database' ? { connection: 'eu_1' } : {}),
          fenceGraceMs: 300,
          onProgress: async (event: TenantMoveProgress) => {
            if (event.table === undefined) steps.push(event.step);
            // Writes land between the snapshot copy and the hold: the catch-up must carry them.
            if (event.step === 'copied' && event.table === undefined) {
              await waitForWrites(mover.traffic, 5);
            }
          },
        });
        assert.equal(report.step, 'finished');
        assert.equal(report.to, to);
        assert.equal((await locationOf(moving)).placement, to);
        if (to === 'database') {
          assert.equal(report.toConnection, 'eu_1');
          assert.equal(report.toDatabase, dedicatedName);
        }
        const notes = report.tables.find((table) => table.table === 'notes');
        assert.ok(notes !== undefined && notes.deltaInserted > 0, `${to}: the hold caught up`);
        assert.ok(report.holdMs !== null && report.holdMs >= 0);
        await waitForWrites(mover.traffic, 10);
      }
    } finally {
      stop.done = true;
      await Promise.all([mover.done, other.done]);
    }

    assert.deepEqual(steps.filter((step) => step === 'switched').length, 3);
    assert.ok(mover.traffic.deleted.length > 0 && mover.traffic.scores.size > 0);
    // The moved tenant saw nothing but the hold; the others saw nothing at all.
    const unexpected = mover.traffic.errors.filter((error) => !isMovingRefusal(error));
    assert.deepEqual(unexpected.map(String), []);
    assert.deepEqual(other.traffic.errors.map(String), []);
    await assertLedger(moving, mover.traffic);
    await assertLedger(neighbour, other.traffic);
    assert.deepEqual(await checksums(idle, controlAdminUrl, 'public'), idleBefore);

    // The seeded rows came back to the pool byte for byte (the traffic's notes set aside).
    const [seededNow] = await query<{ rows: string }>(
      controlAdminUrl,
      `select count(*)::text as rows from notes where tenant_id = $1 and body <> 'traffic'`,
      [moving],
    );
    assert.equal(seededNow?.rows, seeded.notes?.split(':')[0]);
    const [auditNow] = await query<{ sum: string }>(
      controlAdminUrl,
      `select count(*)::text || ':' || md5(coalesce(string_agg(t::text, E'\\n' order by t::text collate "C"), '')) as sum
         from audit t where tenant_id = $1`,
      [moving],
    );
    assert.equal(auditNow?.sum, seeded.audit);
  });

  test('a tenant in a dedicated database reads and writes there only, and the pool tenant never sees it', async () => {
    const placed = await seedTenant('placed');
    const pooled = await seedTenant('pooled');
    await moveToDatabase(placed);
    const noteId = randomUUID();
    await tenantry.withTenant(placed, (db) =>
      db
        .insertInto('notes')
        .values({ id: noteId, body: 'only here', score: 0, labels: [], payload: null })
        .execute(),
    );
    assert.equal(
      (await query(dedicatedAdminUrl, 'select 1 from notes where id = $1', [noteId])).length,
      1,
    );
    assert.equal(
      (await query(controlAdminUrl, 'select 1 from notes where id = $1', [noteId])).length,
      0,
    );
    const seen = await tenantry.withTenant(pooled, (db) =>
      db.selectFrom('notes').select('id').where('id', '=', noteId).execute(),
    );
    assert.deepEqual(seen, []);
    // Another tenant's context in the dedicated database sees none of the placed tenant's rows.
    const [leak] = await query<{ rows: string }>(
      dedicatedAppUrl,
      `select (select set_config('tenantry.tenant_id', $1, false)) is null, count(*)::text as rows from notes`,
      [pooled],
    );
    assert.equal(leak?.rows, '0');

    // The job queue lives in the control database only: enqueueing from the dedicated database's
    // unit of work is refused clearly instead of failing on a missing function.
    const ping = defineJob<{ n: number }>('notes.ping', { run: async () => {} });
    await assert.rejects(
      tenantry.withTenant(placed, (db) => enqueueJob(db, ping, { n: 1 })),
      (error: unknown) =>
        isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID') &&
        /dedicated database/.test((error as Error).message),
    );
  });

  test('two tenants sharing a dedicated database stay apart under RLS there', async () => {
    const a = await seedTenant('share-a');
    const b = await seedTenant('share-b');
    for (const tenantId of [a, b]) {
      await moveToDatabase(tenantId);
    }
    const [bNote] = await query<{ id: string }>(
      dedicatedAdminUrl,
      'select id::text from notes where tenant_id = $1 limit 1',
      [b],
    );
    assert.ok(bNote);
    const before = await checksums(b, dedicatedAdminUrl, 'public');
    await tenantry.withTenant(a, async (db) => {
      for (const table of tables) {
        const rows = await db
          .selectFrom(table)
          .select('tenant_id')
          .where('tenant_id', '=', b)
          .execute();
        assert.deepEqual(rows, [], `${table}: B's rows are invisible to A`);
      }
      const seen = await db.selectFrom('notes').select('tenant_id').distinct().execute();
      assert.deepEqual(seen, [{ tenant_id: a }]);
      const updated = await db
        .updateTable('notes')
        .set({ body: 'hijacked' })
        .where('id', '=', bNote.id)
        .executeTakeFirst();
      assert.equal(updated.numUpdatedRows, 0n);
      const deleted = await db.deleteFrom('comments').where('tenant_id', '=', b).executeTakeFirst();
      assert.equal(deleted.numDeletedRows, 0n);
    });
    await assert.rejects(
      tenantry.withTenant(a, (db) =>
        db
          .insertInto('notes')
          .values({
            tenant_id: b,
            id: randomUUID(),
            body: 'planted',
            score: 0,
            labels: [],
            payload: null,
          })
          .execute(),
      ),
      (error: unknown) => isTenantryError(error) && /tenant_id other than/.test(error.message),
    );
    // Below the query guard, RLS in the dedicated database refuses it too.
    await assert.rejects(
      withClient(dedicatedAppUrl, async (client) => {
        await client.query('begin');
        await client.query(`select set_config('tenantry.tenant_id', $1, true)`, [a]);
        await client.query(
          `insert into notes (tenant_id, id, body, score, labels) values ($1, gen_random_uuid(), 'planted', 0, '{}')`,
          [b],
        );
      }),
      (error: unknown) => (error as { code?: string }).code === '42501',
    );
    // A comment of A pointing at B's note fails like a reference to a missing row.
    await assert.rejects(
      tenantry.withTenant(a, (db) =>
        db
          .insertInto('comments')
          .values({ id: randomUUID(), note_id: bNote.id, body: 'cross' })
          .execute(),
      ),
    );
    assert.deepEqual(await checksums(b, dedicatedAdminUrl, 'public'), before);
  });

  for (const stopAt of ['provisioned', 'copied', 'held', 'switched', 'cleaned'] as const) {
    test(`a move into a database stopped after "${stopAt}" resumes to one copy`, async () => {
      const tenantId = await seedTenant(`crash-${stopAt}`);
      const before = await checksums(tenantId, controlAdminUrl, 'public');
      await assert.rejects(
        moveToDatabase(tenantId, {
          onProgress: (event) => {
            if (event.step === stopAt && event.table === undefined) throw new Error('crash');
          },
        }),
        /crash/,
      );
      const report = await resumeTenantMove({
        connectionString: controlAdminUrl,
        tenantId,
        sources,
        databases,
        fenceGraceMs: 0,
      });
      assert.equal(report.step, 'finished');
      assert.deepEqual(await checksums(tenantId, dedicatedAdminUrl, 'public'), before);
      assert.deepEqual(await rowsEverywhere(tenantId), {
        pool: 0,
        schema: 0,
        database: Object.values(before).reduce((n, sum) => n + Number(sum.split(':')[0]), 0),
      });
      const [tenant] = await query<{ status: string }>(
        controlAdminUrl,
        'select status from tenantry.tenants where id = $1',
        [tenantId],
      );
      assert.equal(tenant?.status, 'active');
    });
  }

  test('a move out of a database stopped while held rolls back: served from the database, writable', async () => {
    const tenantId = await seedTenant('rollback');
    await moveToDatabase(tenantId);
    const before = await checksums(tenantId, dedicatedAdminUrl, 'public');
    await assert.rejects(
      moveTenant({
        connectionString: controlAdminUrl,
        tenantId,
        to: 'pool',
        sources,
        databases,
        onProgress: (event) => {
          if (event.step === 'held' && event.table === undefined) throw new Error('crash');
        },
      }),
      /crash/,
    );
    // While held, the tenant's writes are refused in the dedicated database.
    await assert.rejects(
      tenantry.withTenant(tenantId, (db) =>
        db.insertInto('audit').values({ action: 'during hold' }).execute(),
      ),
      isMovingRefusal,
    );
    const report = await rollbackTenantMove({
      connectionString: controlAdminUrl,
      tenantId,
      databases,
    });
    assert.equal(report.step, 'rolled_back');
    assert.equal((await locationOf(tenantId)).placement, 'database');
    assert.deepEqual(await checksums(tenantId, dedicatedAdminUrl, 'public'), before);
    assert.equal((await rowsEverywhere(tenantId)).pool, 0, 'the copy in the pool was removed');
    await tenantry.withTenant(tenantId, (db) =>
      db.insertInto('audit').values({ action: 'after rollback' }).execute(),
    );
  });

  test('a database move without the URL of the connection is refused before anything changes', async () => {
    const tenantId = await seedTenant('no-url');
    await assert.rejects(
      moveTenant({
        connectionString: controlAdminUrl,
        tenantId,
        to: 'database',
        connection: 'eu_2',
        sources,
        databases,
      }),
      (error: unknown) =>
        isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID') &&
        /TENANTRY_CONNECTION_EU_2_URL/.test((error as Error).message),
    );
    await assert.rejects(
      moveTenant({
        connectionString: controlAdminUrl,
        tenantId,
        to: 'database',
        connection: 'self',
        sources,
        databases: { self: controlAdminUrl },
      }),
      (error: unknown) =>
        isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID') &&
        /control database itself/.test((error as Error).message),
    );
    const moves = await query(
      controlAdminUrl,
      'select 1 from tenantry.tenant_moves where tenant_id = $1',
      [tenantId],
    );
    assert.equal(moves.length, 0);
    assert.equal((await locationOf(tenantId)).placement, 'pool');
  });

  test('the CLI moves a tenant into a database and back, with progress and a report', async () => {
    const tenantId = await seedTenant('cli');
    const before = await checksums(tenantId, controlAdminUrl, 'public');
    const env = {
      DATABASE_URL: controlAdminUrl,
      TENANTRY_MIGRATIONS_DIR: sourceDirectory,
      TENANTRY_CONNECTION_EU_1_URL: dedicatedAdminUrl,
    };
    const refused = await runCli(
      ['tenants', 'move', tenantId, '--to', 'database', '--connection', 'eu_9'],
      env,
    );
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /Set TENANTRY_CONNECTION_EU_9_URL/);

    const moved = await runCli(
      [
        'tenants',
        'move',
        tenantId,
        '--to',
        'database',
        '--connection',
        'eu_1',
        '--fence-grace-ms',
        '0',
      ],
      env,
    );
    assert.equal(moved.code, 0, moved.stderr);
    assert.match(moved.stderr, /copied notes: 40 rows/);
    assert.match(moved.stdout, new RegExp(`-> database ${dedicatedName} via eu_1 finished`));
    assert.deepEqual(await checksums(tenantId, dedicatedAdminUrl, 'public'), before);

    const listed = await runCli(['placement', 'list'], env);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, new RegExp(`database ${dedicatedName} \\(eu_1\\)`));

    // The doctor audits the dedicated database too, and notices a hole there.
    const audited = await runCli(['doctor'], env);
    assert.equal(audited.code, 0, audited.stdout + audited.stderr);
    assert.match(
      audited.stdout,
      new RegExp(`dedicated database ${dedicatedName} \\(connection eu_1\\)`),
    );
    const unaudited = await runCli(['doctor'], { ...env, TENANTRY_CONNECTION_EU_1_URL: '' });
    assert.match(unaudited.stdout, /not audited \(set TENANTRY_CONNECTION_EU_1_URL to audit it\)/);
    await query(dedicatedAdminUrl, 'alter table audit no force row level security');
    try {
      const broken = await runCli(['doctor', '--json'], env);
      assert.equal(broken.code, 1);
      const report = JSON.parse(broken.stdout) as {
        findings: unknown[];
        dedicatedDatabases: {
          database: string;
          report: { findings: { kind: string; object: string }[] };
        }[];
      };
      assert.deepEqual(report.findings, []);
      assert.deepEqual(
        report.dedicatedDatabases[0]?.report.findings.map((finding) => [
          finding.kind,
          finding.object,
        ]),
        [['rls_not_forced', 'public.audit']],
      );
    } finally {
      await query(dedicatedAdminUrl, 'alter table audit force row level security');
    }

    const back = await runCli(
      ['tenants', 'move', tenantId, '--to', 'pool', '--fence-grace-ms', '0'],
      env,
    );
    assert.equal(back.code, 0, back.stderr);
    assert.deepEqual(await checksums(tenantId, controlAdminUrl, 'public'), before);
    assert.equal((await rowsEverywhere(tenantId)).database, 0);
  });

  test('tenantry migrate applies a new file to the dedicated database; a failing database stops only itself', async () => {
    const tenantId = await seedTenant('migrated');
    await moveToDatabase(tenantId);
    await writeFile(
      join(sourceDirectory, '0002-notes-pinned.sql'),
      'alter table notes add column pinned boolean not null default false;\n',
    );
    await migrate({ connectionString: controlAdminUrl, sources });
    // Without the database's URL, the database is reported failed and nothing else stops.
    const missing = await migrateTargets({ connectionString: controlAdminUrl, sources });
    assert.equal(missing.failed.length, 1);
    assert.equal(missing.failed[0]?.database, dedicatedName);
    assert.match(missing.failed[0]?.error?.message ?? '', /TENANTRY_CONNECTION_EU_1_URL/);

    const summary = await migrateTargets({ connectionString: controlAdminUrl, sources, databases });
    assert.equal(summary.failed.length, 0);
    const result = summary.results.find((entry) => entry.database === dedicatedName);
    assert.deepEqual(result?.applied, [{ source: 'app', version: 2 }]);
    const columns = await query(
      dedicatedAdminUrl,
      `select 1 from information_schema.columns where table_name = 'notes' and column_name = 'pinned'`,
    );
    assert.equal(columns.length, 1);
    const again = await migrateTargets({ connectionString: controlAdminUrl, sources, databases });
    assert.equal(
      again.results.find((entry) => entry.database === dedicatedName)?.status,
      'up-to-date',
    );
    // The tenant keeps working on the new column in its database.
    await tenantry.withTenant(tenantId, (db) =>
      db
        .updateTable('notes')
        .set({ pinned: true } as never)
        .execute(),
    );
  });
});
