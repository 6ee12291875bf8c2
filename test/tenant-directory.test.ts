import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { createTenantDirectory, isTenantryError, type TenantDirectory } from 'tenantry';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { withClient } from './fixtures.ts';

let database: TestDatabase;
const directories: TenantDirectory[] = [];

before(async () => {
  database = await createTestDatabase();
});

after(async () => {
  await Promise.all(directories.map((directory) => directory.close()));
  await database.drop();
});

async function admin(text: string, values: unknown[] = []): Promise<Record<string, unknown>[]> {
  return withClient(database.adminUrl, async (client) => (await client.query(text, values)).rows);
}

/**
 * Runs statements as the superuser with triggers off for that session only, so the catalog
 * changes without a notification: what the directory answers then comes from its cache.
 */
async function adminSilently(text: string, values: unknown[] = []): Promise<void> {
  await withClient(database.adminUrl, async (client) => {
    await client.query('set session_replication_role = replica');
    await client.query(text, values);
  });
}

async function insertTenant(slug: string, status = 'active'): Promise<string> {
  const id = randomUUID();
  await admin('insert into tenantry.tenants (id, slug, name, status) values ($1, $2, $3, $4)', [
    id,
    slug,
    slug,
    status,
  ]);
  return id;
}

async function open(
  options: { listen?: boolean; ttlMs?: number; notFoundTtlMs?: number } = {},
): Promise<TenantDirectory> {
  const directory = await createTenantDirectory({ connectionString: database.appUrl, ...options });
  directories.push(directory);
  return directory;
}

async function waitFor(
  what: string,
  condition: () => Promise<boolean> | boolean,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

async function appBackends(): Promise<number> {
  const rows = await admin(
    `select count(*)::int as n from pg_stat_activity
      where datname = current_database() and usename = 'tenantry_app' and pid <> pg_backend_pid()`,
  );
  return rows[0]?.n as number;
}

describe('tenant directory', () => {
  test('finds tenants by slug and by id (any case), and misses unknown ones', async () => {
    const id = await insertTenant('dir-lookup');
    const directory = await open();
    const bySlug = await directory.bySlug('dir-lookup');
    assert.deepEqual(
      { ...bySlug },
      {
        id,
        slug: 'dir-lookup',
        name: 'dir-lookup',
        plan: 'free',
        status: 'active',
        placement: 'pool',
      },
    );
    assert.equal((await directory.byId(id))?.slug, 'dir-lookup');
    assert.equal((await directory.byId(id.toUpperCase()))?.id, id);
    assert.equal(await directory.bySlug('dir-nobody'), undefined);
    assert.equal(await directory.byId(randomUUID()), undefined);
  });

  test('never queries for invalid slugs or ids', async () => {
    // A directory on a closed port fails every real lookup, so an answer proves no query ran.
    const unreachable = await createTenantDirectory({
      connectionString: 'postgres://tenantry_app:x@127.0.0.1:1/nowhere',
      listen: false,
    });
    directories.push(unreachable);
    await assert.rejects(unreachable.bySlug('valid-slug'), (error: unknown) =>
      isTenantryError(error, 'TENANTRY_ERR_DB_UNAVAILABLE'),
    );
    for (const slug of ['', 'UPPER', 'a/b', "x' or 1=1 --", '-lead', `${'a'.repeat(64)}`, '..']) {
      assert.equal(await unreachable.bySlug(slug), undefined, slug);
    }
    for (const id of ['', 'not-a-uuid', `${randomUUID()}x`, "' or 1=1"]) {
      assert.equal(await unreachable.byId(id), undefined, id);
    }
    assert.equal(await unreachable.bySlug(42 as unknown as string), undefined);
    assert.equal(await unreachable.byId(null as unknown as string), undefined);
  });

  test('serves found tenants from the cache until the catalog announces a change', async () => {
    const id = await insertTenant('dir-cached');
    const directory = await open();
    assert.equal((await directory.bySlug('dir-cached'))?.status, 'active');
    await adminSilently(`update tenantry.tenants set status = 'suspended' where id = $1`, [id]);
    assert.equal((await directory.bySlug('dir-cached'))?.status, 'active', 'served from cache');
    assert.equal((await directory.byId(id))?.status, 'active', 'id entry cached too');
    directory.invalidate('dir-cached');
    assert.equal((await directory.bySlug('dir-cached'))?.status, 'suspended');
    assert.equal((await directory.byId(id))?.status, 'suspended');
  });

  test('without a listener nothing is cached', async () => {
    const id = await insertTenant('dir-unlistened');
    const directory = await open({ listen: false });
    assert.equal(directory.isListening, false);
    assert.equal((await directory.byId(id))?.status, 'active');
    await adminSilently(`update tenantry.tenants set status = 'moving' where id = $1`, [id]);
    assert.equal((await directory.byId(id))?.status, 'moving');
  });

  test('drops entries when a status changes', async () => {
    const id = await insertTenant('dir-status');
    const directory = await open();
    assert.equal((await directory.bySlug('dir-status'))?.status, 'active');
    assert.equal((await directory.byId(id))?.status, 'active');
    await admin(`update tenantry.tenants set status = 'suspended' where id = $1`, [id]);
    await waitFor('the slug entry to be dropped', async () => {
      return (await directory.bySlug('dir-status'))?.status === 'suspended';
    });
    assert.equal((await directory.byId(id))?.status, 'suspended');
  });

  test('drops both slugs when a slug changes', async () => {
    const id = await insertTenant('dir-old-slug');
    const directory = await open();
    assert.equal((await directory.bySlug('dir-old-slug'))?.id, id);
    assert.equal(await directory.bySlug('dir-new-slug'), undefined);
    await admin(`update tenantry.tenants set slug = 'dir-new-slug' where id = $1`, [id]);
    await waitFor('the old slug to stop resolving', async () => {
      return (await directory.bySlug('dir-old-slug')) === undefined;
    });
    assert.equal((await directory.bySlug('dir-new-slug'))?.id, id, 'negative entry dropped');
    assert.equal((await directory.byId(id))?.slug, 'dir-new-slug');
  });

  test('drops entries when a tenant is deleted', async () => {
    const id = await insertTenant('dir-deleted');
    const directory = await open();
    assert.equal((await directory.byId(id))?.id, id);
    assert.equal((await directory.bySlug('dir-deleted'))?.id, id);
    await admin('delete from tenantry.tenants where id = $1', [id]);
    await waitFor('the deleted tenant to disappear', async () => {
      return (await directory.byId(id)) === undefined;
    });
    assert.equal(await directory.bySlug('dir-deleted'), undefined);
  });

  test('drops the cached "not found" when the tenant is created', async () => {
    const directory = await open({ notFoundTtlMs: 600_000 });
    assert.equal(await directory.bySlug('dir-late'), undefined);
    const id = randomUUID();
    await adminSilently(
      `insert into tenantry.tenants (id, slug, name) values ($1, 'dir-late', 'x')`,
      [id],
    );
    assert.equal(await directory.bySlug('dir-late'), undefined, 'negative entry is cached');
    await admin(`update tenantry.tenants set name = 'Late' where id = $1`, [id]);
    await waitFor('the new tenant to resolve', async () => {
      return (await directory.bySlug('dir-late'))?.id === id;
    });

    assert.equal(await directory.bySlug('dir-later'), undefined);
    const laterId = await insertTenant('dir-later');
    await waitFor('the inserted tenant to resolve', async () => {
      return (await directory.bySlug('dir-later'))?.id === laterId;
    });
  });

  test('reconnects after the listener connection is killed, and stays correct', async () => {
    const id = await insertTenant('dir-reconnect');
    const directory = await open();
    assert.equal(directory.isListening, true);
    assert.equal((await directory.bySlug('dir-reconnect'))?.status, 'active');
    const killed = await admin(
      `select pg_terminate_backend(pid) as ok from pg_stat_activity
        where datname = current_database() and query = 'listen tenantry_tenants'`,
    );
    assert.ok(killed.length >= 1);
    await waitFor('the listener to notice', () => !directory.isListening);
    // Changed while nobody listened: must not be served from a stale entry.
    await adminSilently(`update tenantry.tenants set status = 'suspended' where id = $1`, [id]);
    assert.equal((await directory.bySlug('dir-reconnect'))?.status, 'suspended');
    await waitFor('the listener to reconnect', () => directory.isListening);
    assert.equal((await directory.bySlug('dir-reconnect'))?.status, 'suspended');
    await admin(`update tenantry.tenants set status = 'active' where id = $1`, [id]);
    await waitFor('a change after reconnecting to be seen', async () => {
      return (await directory.bySlug('dir-reconnect'))?.status === 'active';
    });
  });

  test('close() ends the listener and the pool', async () => {
    await Promise.all(directories.splice(0).map((directory) => directory.close()));
    await waitFor('earlier connections to end', async () => (await appBackends()) === 0);
    const directory = await createTenantDirectory({ connectionString: database.appUrl });
    await directory.bySlug('dir-lookup');
    assert.ok((await appBackends()) >= 2, 'listener and pool connected');
    await directory.close();
    assert.equal(directory.isListening, false);
    await waitFor('the connections to end', async () => (await appBackends()) === 0);
    await assert.rejects(directory.bySlug('dir-lookup'));
  });

  test('rejects invalid options', async () => {
    for (const options of [
      { connectionString: '' },
      { connectionString: database.appUrl, ttlMs: -1 },
      { connectionString: database.appUrl, maxEntries: 1.5 },
      { connectionString: database.appUrl, schema: 'bad"schema' },
    ]) {
      await assert.rejects(createTenantDirectory(options), (error: unknown) =>
        isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
      );
    }
  });
});
