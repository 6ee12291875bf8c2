import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Generated, sql } from 'kysely';
import {
  createTenantry,
  defaultRoleNames,
  isTenantryError,
  migrate,
  type TenantId,
  type Tenantry,
  withCredentials,
  withDatabase,
} from 'tenantry';
import {
  createPlacementRouter,
  createPoolRegistry,
  createSchemaPlacementRouter,
  type PlacementRouter,
  type PoolRegistry,
  placeTenantInDatabase,
} from 'tenantry/placement';
import { createTestDatabase, readTestCluster, type TestDatabase } from 'tenantry/testing';
import { withClient } from './fixtures.ts';

interface NotesDatabase {
  notes: { tenant_id: Generated<string>; id: Generated<string>; body: string };
}

const cluster = readTestCluster();
let control: TestDatabase;
let sourceDirectory: string;
let sources: { name: string; directory: string }[];
const dedicated: { name: string; database: string; adminUrl: string; appUrl: string }[] = [];
const connections: Record<string, string> = {};
const resources: { close(): Promise<void> }[] = [];

async function query<R extends Record<string, unknown>>(
  url: string,
  text: string,
  values: unknown[] = [],
): Promise<R[]> {
  return withClient(url, async (client) => (await client.query<R>(text, values)).rows);
}

async function createTenant(): Promise<string> {
  const tenantId = randomUUID();
  const slug = `t-${randomBytes(4).toString('hex')}`;
  await query(
    control.adminUrl,
    'insert into tenantry.tenants (id, slug, name) values ($1, $2, $2)',
    [tenantId, slug],
  );
  return tenantId;
}

async function dropDatabase(name: string): Promise<void> {
  await query(
    cluster.adminUrl,
    'select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()',
    [name],
  );
  await query(cluster.adminUrl, `drop database if exists "${name}"`);
}

/** Server connections of the app role to the dedicated databases, as the server counts them. */
async function appConnections(): Promise<number> {
  const rows = await query<{ count: number }>(
    cluster.adminUrl,
    `select count(*)::int as count from pg_stat_activity where usename = $1 and datname = any($2::text[])`,
    [defaultRoleNames.app, dedicated.map((target) => target.database)],
  );
  return rows[0]?.count ?? -1;
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

async function open(
  registry: PoolRegistry,
): Promise<{ router: PlacementRouter; tenantry: Tenantry<NotesDatabase> }> {
  const router = await createPlacementRouter({ connectionString: control.appUrl, registry });
  const tenantry = await createTenantry<NotesDatabase>({
    connectionString: control.appUrl,
    tenantSchema: router.tenantSchema,
    tenantPool: router.tenantPool,
  });
  resources.push(tenantry, router, registry);
  return { router, tenantry };
}

/** Closes what earlier tests opened, so the server's connection count is this test's alone. */
async function closeEarlier(): Promise<void> {
  for (const resource of resources.splice(0).reverse()) await resource.close();
  await waitFor('earlier connections to close', async () => (await appConnections()) === 0);
}

const tenants: string[] = [];
let pooledTenant: string;

before(async () => {
  control = await createTestDatabase();
  sourceDirectory = await mkdtemp(join(tmpdir(), 'tenantry-dbplace-'));
  await writeFile(
    join(sourceDirectory, '0001-notes.sql'),
    `create table notes (
       tenant_id uuid not null default tenantry.current_tenant_id(),
       id uuid not null default gen_random_uuid(),
       body text not null,
       primary key (tenant_id, id)
     );
     select tenantry.enable_tenant_isolation('notes');\n`,
  );
  sources = [{ name: 'notes', directory: sourceDirectory }];
  await migrate({ connectionString: control.adminUrl, sources });
  for (let index = 0; index < 5; index++) {
    const database = `tenantry_dbplace_${randomBytes(5).toString('hex')}`;
    const adminUrl = withDatabase(cluster.adminUrl, database);
    const target = {
      name: `dedicated_${index}`,
      database,
      adminUrl,
      appUrl: withCredentials(adminUrl, defaultRoleNames.app, cluster.appPassword),
    };
    dedicated.push(target);
    connections[target.name] = target.appUrl;
    const tenantId = await createTenant();
    tenants.push(tenantId);
    const placed = await placeTenantInDatabase({
      controlConnectionString: control.adminUrl,
      targetAdminUrl: adminUrl,
      connectionName: target.name,
      tenantId,
      sources,
      bootstrap: { adminConnectionString: cluster.adminUrl, database },
    });
    assert.equal(placed.databaseName, database);
    assert.equal(placed.applied, 1);
  }
  pooledTenant = await createTenant();
});

after(async () => {
  for (const resource of resources.reverse()) await resource.close().catch(() => undefined);
  for (const target of dedicated) await dropDatabase(target.database);
  await control?.drop();
  if (sourceDirectory !== undefined) await rm(sourceDirectory, { recursive: true, force: true });
});

describe('tenants in a dedicated database', () => {
  test('rows land in the tenant database only and neither tenant sees the other', async () => {
    const { tenantry } = await open(createPoolRegistry({ connections }));
    const [a] = tenants as [string];
    const b = pooledTenant;
    await tenantry.withTenant(a, (db) =>
      db.insertInto('notes').values({ body: 'a-note' }).execute(),
    );
    await tenantry.withTenant(b, (db) =>
      db.insertInto('notes').values({ body: 'b-note' }).execute(),
    );
    const [first] = dedicated as [(typeof dedicated)[number]];
    assert.deepEqual(await query(first.adminUrl, 'select tenant_id::text, body from notes'), [
      { tenant_id: a, body: 'a-note' },
    ]);
    assert.deepEqual(await query(control.adminUrl, 'select tenant_id::text, body from notes'), [
      { tenant_id: b, body: 'b-note' },
    ]);
    const seenByA = await tenantry.withTenant(a, (db) =>
      db.selectFrom('notes').select('body').execute(),
    );
    const seenByB = await tenantry.oneShot(b, (db) =>
      db.selectFrom('notes').select('body').execute(),
    );
    assert.deepEqual(seenByA, [{ body: 'a-note' }]);
    assert.deepEqual(seenByB, [{ body: 'b-note' }]);

    // Without the router, A's units go to the pool: its rows are not there.
    const unrouted = await createTenantry<NotesDatabase>({ connectionString: control.appUrl });
    resources.push(unrouted);
    assert.deepEqual(
      await unrouted.withTenant(a, (db) => db.selectFrom('notes').select('body').execute()),
      [],
    );
  });

  test('the schema-only router refuses a tenant of a dedicated database instead of serving the pool', async () => {
    const router = await createSchemaPlacementRouter({ connectionString: control.adminUrl });
    try {
      await assert.rejects(
        Promise.resolve(router.schemaFor(tenants[0] as TenantId)),
        (error: unknown) =>
          isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID') &&
          /dedicated database/.test(error.message),
      );
    } finally {
      await router.close();
    }
  });

  test('RLS still walls tenants apart inside a dedicated database', async () => {
    const registry = createPoolRegistry({ connections });
    resources.push(registry);
    const [a] = tenants as [string];
    const [first] = dedicated as [(typeof dedicated)[number]];
    await assertHasRows(a);
    // Every tenant sent to A's database: B's units see none of A's rows and cannot write as A.
    const misrouted = await createTenantry<NotesDatabase>({
      connectionString: control.appUrl,
      tenantPool: () => registry.pool(first.name),
    });
    resources.push(misrouted);
    assert.deepEqual(
      await misrouted.withTenant(pooledTenant, (db) =>
        db.selectFrom('notes').select('body').execute(),
      ),
      [],
    );
    await assert.rejects(
      misrouted.withTenant(pooledTenant, (db) =>
        db.insertInto('notes').values({ tenant_id: a, body: 'forged' }).execute(),
      ),
    );
    const rows = await query<{ body: string }>(first.adminUrl, 'select body from notes');
    assert.ok(rows.every((row) => row.body !== 'forged'));
  });

  test('placements are refused for placed tenants, tenants with rows and unknown connections', async () => {
    const [a] = tenants as [string];
    const [first] = dedicated as [(typeof dedicated)[number]];
    const attempt = (tenantId: string) =>
      placeTenantInDatabase({
        controlConnectionString: control.adminUrl,
        targetAdminUrl: first.adminUrl,
        connectionName: first.name,
        tenantId,
        sources,
      });
    await assert.rejects(attempt(a), (error) =>
      isTenantryError(error, 'TENANTRY_ERR_TENANT_STATE_CONFLICT'),
    );
    // pooledTenant wrote 'b-note' in the pool.
    await assert.rejects(attempt(pooledTenant), (error) =>
      isTenantryError(error, 'TENANTRY_ERR_TENANT_STATE_CONFLICT'),
    );
    const placements = await query<{ placement: string; count: number }>(
      control.adminUrl,
      `select t.placement, (select count(*)::int from tenantry.tenant_placements p where p.tenant_id = t.id) as count
         from tenantry.tenants t where t.id = $1`,
      [pooledTenant],
    );
    assert.deepEqual(placements, [{ placement: 'pool', count: 0 }]);

    // A catalog naming a connection this process does not configure fails the unit, no fallback.
    const partial = createPoolRegistry({ connections: { other: first.appUrl } });
    const { tenantry } = await open(partial);
    await assert.rejects(
      tenantry.withTenant(a, (db) => db.selectFrom('notes').select('body').execute()),
      (error) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
    );
  });

  test('tenants.placement and the placement row must agree', async () => {
    const tenantId = await createTenant();
    await assert.rejects(
      query(control.adminUrl, `update tenantry.tenants set placement = 'database' where id = $1`, [
        tenantId,
      ]),
      /placement database/,
    );
    await assert.rejects(
      query(
        control.adminUrl,
        `insert into tenantry.tenant_placements (tenant_id, connection_name, database_name) values ($1, 'x', 'y')`,
        [tenantId],
      ),
      /placement pool/,
    );
    await assert.rejects(
      query(
        control.adminUrl,
        `insert into tenantry.tenant_placements (tenant_id, schema_name, connection_name, database_name) values ($1, 's', 'x', 'y')`,
        [tenantId],
      ),
      /tenant_placements_target_check/,
    );
  });

  test('the global connection cap holds across five dedicated databases', async () => {
    await closeEarlier();
    const registry = createPoolRegistry({
      connections,
      maxConnectionsTotal: 3,
      maxConnectionsPerPool: 2,
      acquireTimeoutMs: 30_000,
    });
    const { tenantry } = await open(registry);
    let serverPeak = 0;
    let running = true;
    const sampler = (async () => {
      while (running) {
        serverPeak = Math.max(serverPeak, await appConnections());
      }
    })();
    const units = Array.from({ length: 60 }, (_, index) => {
      const tenantId = tenants[index % tenants.length] as string;
      return tenantry.withTenant(tenantId, async (db) => {
        await db
          .insertInto('notes')
          .values({ body: `load-${index}` })
          .execute();
        await sql`select pg_sleep(0.005)`.execute(db);
      });
    });
    const outcomes = await Promise.allSettled(units);
    running = false;
    await sampler;
    assert.deepEqual(
      outcomes.filter((outcome) => outcome.status === 'rejected'),
      [],
    );
    const stats = registry.stats();
    assert.ok(stats.peakConnections <= 3, `registry peak ${stats.peakConnections}`);
    assert.ok(stats.peakConnections >= 2, 'the load used more than one connection');
    assert.ok(serverPeak <= 3, `server saw ${serverPeak} connections`);
    assert.ok(serverPeak >= 1);
    for (const [index, target] of dedicated.entries()) {
      const rows = await query<{ count: number }>(
        target.adminUrl,
        `select count(*)::int as count from notes where body like 'load-%' and tenant_id = $1`,
        [tenants[index]],
      );
      assert.equal(rows[0]?.count, 12, target.name);
    }
    await registry.close();
    await waitFor('the connections to close', async () => (await appConnections()) === 0);
  });

  test('a unit waits for a slot and fails with TENANTRY_ERR_DB_UNAVAILABLE, never exceeding the cap', async () => {
    const registry = createPoolRegistry({
      connections,
      maxConnectionsTotal: 1,
      acquireTimeoutMs: 300,
    });
    const { tenantry } = await open(registry);
    const [a, c] = tenants as [string, string];
    const held = tenantry.beginUnit(a);
    await held.db.insertInto('notes').values({ body: 'held' }).execute();
    await assert.rejects(
      tenantry.withTenant(c, (db) => db.selectFrom('notes').select('body').execute()),
      (error) => isTenantryError(error, 'TENANTRY_ERR_DB_UNAVAILABLE'),
    );
    assert.equal(registry.stats().peakConnections, 1);
    await held.commit();
    // The slot of A's now idle connection is handed over: C gets its database.
    const seen = await tenantry.withTenant(c, (db) =>
      db.selectFrom('notes').select('body').execute(),
    );
    assert.ok(seen.every((row) => row.body !== 'held'));
    assert.equal(registry.stats().peakConnections, 1);
  });

  test('idle pools are evicted and reopened transparently, at most maxPoolsOpen at a time', async () => {
    await closeEarlier();
    const registry = createPoolRegistry({ connections, maxPoolsOpen: 2, idleEvictMs: 50 });
    const { tenantry } = await open(registry);
    for (const tenantId of tenants) {
      await tenantry.withTenant(tenantId, (db) => db.selectFrom('notes').select('body').execute());
      assert.ok(registry.stats().openPools <= 2, `open pools ${registry.stats().openPools}`);
    }
    await waitFor(
      'idle connections to be evicted',
      async () => registry.stats().openConnections === 0,
    );
    await waitFor('the server to see them closed', async () => (await appConnections()) === 0);
    const [a] = tenants as [string];
    const seen = await tenantry.withTenant(a, (db) =>
      db.selectFrom('notes').select('body').where('body', '=', 'a-note').execute(),
    );
    assert.deepEqual(seen, [{ body: 'a-note' }]);
    assert.ok(registry.stats().evictedConnections >= 5);
  });

  test('a connection terminated while idle is dropped and replaced', async () => {
    await closeEarlier();
    const registry = createPoolRegistry({ connections });
    const { tenantry } = await open(registry);
    const [a] = tenants as [string];
    const read = () =>
      tenantry.withTenant(a, (db) =>
        db.selectFrom('notes').select('body').where('body', '=', 'a-note').execute(),
      );
    assert.deepEqual(await read(), [{ body: 'a-note' }]);
    assert.equal(registry.stats().openConnections, 1);
    await query(
      cluster.adminUrl,
      'select pg_terminate_backend(pid) from pg_stat_activity where usename = $1 and datname = $2',
      [defaultRoleNames.app, (dedicated[0] as (typeof dedicated)[number]).database],
    );
    await waitFor(
      'the lost connection to be dropped',
      async () => registry.stats().openConnections === 0,
    );
    assert.deepEqual(await read(), [{ body: 'a-note' }]);
  });

  test('no tenant context or search path stays on a reused connection', async () => {
    const [first] = dedicated as [(typeof dedicated)[number]];
    const registry = createPoolRegistry({ connections, maxConnectionsPerPool: 1 });
    resources.push(registry);
    const [a, c] = tenants as [string, string];
    const tenantry = await createTenantry<NotesDatabase>({
      connectionString: control.appUrl,
      tenantPool: () => registry.pool(first.name),
      tenantSchema: (tenantId) => (tenantId === a ? 'pg_catalog' : undefined),
    });
    resources.push(tenantry);
    const probe = (tenantId: string) =>
      tenantry.withTenant(tenantId, async (db) => {
        const result = await sql<{
          pid: number;
          tenant: string;
          path: string;
        }>`select pg_backend_pid() as pid, current_setting('tenantry.tenant_id') as tenant, current_setting('search_path') as path`.execute(
          db,
        );
        return result.rows[0];
      });
    const inA = await probe(a);
    const inC = await probe(c);
    assert.equal(inA?.pid, inC?.pid, 'the connection is reused');
    assert.equal(inA?.tenant, a);
    assert.match(inA?.path ?? '', /pg_catalog/);
    assert.equal(inC?.tenant, c);
    assert.doesNotMatch(inC?.path ?? '', /pg_catalog/);
    const client = await registry.pool(first.name).connect();
    try {
      const after = await client.query<{ pid: number; tenant: string | null }>(
        `select pg_backend_pid() as pid, current_setting('tenantry.tenant_id', true) as tenant`,
      );
      assert.equal(after.rows[0]?.pid, inA?.pid);
      assert.ok((after.rows[0]?.tenant ?? '') === '', 'no tenant context outside a unit');
    } finally {
      client.release();
    }
  });
});

async function assertHasRows(tenantId: string): Promise<void> {
  const rows = await query<{ count: number }>(
    (dedicated[0] as (typeof dedicated)[number]).adminUrl,
    `select count(*)::int as count from notes where tenant_id = $1`,
    [tenantId],
  );
  assert.ok((rows[0]?.count ?? 0) >= 1, 'A has rows in its database');
}
