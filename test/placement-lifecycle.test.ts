import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Kysely } from 'kysely';
import { createTenantry, isTenantryError, type Tenantry } from 'tenantry';
import {
  createSchemaPlacementRouter,
  placeTenantInSchema,
  type SchemaPlacementRouter,
} from 'tenantry/placement';
import {
  type Analytics,
  createAnalytics,
  createTenantLifecycle,
  type ErasureProgress,
  type TenantExportManifest,
  type TenantLifecycle,
  verifyErasureReport,
} from 'tenantry/platform';
import { createLocalStorageDriver, type LocalStorageDriver } from 'tenantry/storage';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import type { AppDatabase } from '../app/database.ts';
import { type AppStorage, createAppStorage } from '../app/files/app-storage.ts';
import { withClient } from './fixtures.ts';

const appSources = [
  { name: 'app', directory: new URL('../app/migrations/', import.meta.url).pathname },
];
const signingKey = randomBytes(48).toString('base64');
const ledgers = new Set(['tenantry.outbox_events', 'tenantry.tenant_erasures']);

let database: TestDatabase;
let router: SchemaPlacementRouter;
let tenantry: Tenantry<AppDatabase>;
let files: AppStorage;
let driver: LocalStorageDriver;
let lifecycle: TenantLifecycle;
let analytics: Analytics;
let filesRoot: string;
let workDir: string;

interface Tenant {
  readonly id: string;
  readonly slug: string;
  /** The dedicated schema, or `null` in the pool. */
  readonly schema: string | null;
}
let pooled: Tenant;
let placed: Tenant;
let neighbour: Tenant;

async function admin<R extends Record<string, unknown>>(
  text: string,
  values: unknown[] = [],
): Promise<R[]> {
  return withClient(
    database.adminUrl,
    async (client) => (await client.query<R>(text, values)).rows,
  );
}

/** A tenant (placed before it has any row when `schema`), with rows written through Tenantry. */
async function createTenant(slug: string, placement: 'pool' | 'schema'): Promise<Tenant> {
  const id = randomUUID();
  const userId = randomUUID();
  await admin('insert into tenantry.tenants (id, slug, name) values ($1, $2, $3)', [
    id,
    slug,
    slug,
  ]);
  await admin(
    `insert into auth.users (id, email, name, password_hash) values ($1, $2, $3, 'unusable')`,
    [userId, `owner@${slug}.test`, slug],
  );
  let schema: string | null = null;
  if (placement === 'schema') {
    schema = (
      await placeTenantInSchema({
        connectionString: database.adminUrl,
        tenantId: id,
        sources: appSources,
      })
    ).schema;
  }
  await tenantry.withTenant(id, async (db: Kysely<AppDatabase>) => {
    await db.insertInto('memberships').values({ user_id: userId, role: 'owner' }).execute();
    await db
      .insertInto('workspace_settings')
      .values({ inbound_webhook_secret: `${slug}-secret` })
      .execute();
    const tag = await db
      .insertInto('tags')
      .values({ name: `${slug} tag` })
      .returning('id')
      .executeTakeFirstOrThrow();
    for (let i = 0; i < 3; i++) {
      const contact = await db
        .insertInto('contacts')
        .values({ name: `${slug} contact ${i}`, phone: `+1555${i}${slug.length}` })
        .returning('id')
        .executeTakeFirstOrThrow();
      await db
        .insertInto('contact_tags')
        .values({ contact_id: contact.id, tag_id: tag.id })
        .execute();
      const conversation = await db
        .insertInto('conversations')
        .values({ contact_id: contact.id, subject: `${slug} subject ${i}` })
        .returning('id')
        .executeTakeFirstOrThrow();
      for (let m = 0; m < 2; m++) {
        await db
          .insertInto('messages')
          .values({
            conversation_id: conversation.id,
            direction: 'inbound',
            body: `${slug} secret body ${i}.${m}`,
          })
          .execute();
      }
    }
    for (let i = 0; i < 2; i++) {
      await files.putFile(db, {
        fileName: `${slug}-${i}.txt`,
        contentType: 'text/plain',
        body: Buffer.from(`file ${i} of ${slug}: ${randomBytes(8).toString('hex')}\n`),
      });
    }
  });
  return { id, slug, schema };
}

/** Every table with a tenant_id column in any schema, read from the catalog independently. */
async function catalogTables(): Promise<string[]> {
  const rows = await admin<{ name: string }>(
    `select format('%I.%I', n.nspname, c.relname) as name
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
       join pg_attribute a on a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped
      where c.relkind in ('r', 'p') and not c.relispartition
        and n.nspname not in ('pg_catalog', 'information_schema')
      order by 1`,
  );
  return rows.map((row) => row.name);
}

/** Row count and md5 of one tenant's rows in every tenant-id table of every schema. */
async function fingerprint(tenantId: string): Promise<Record<string, string>> {
  const result: Record<string, string> = {};
  for (const table of await catalogTables()) {
    if (table === 'tenantry.tenant_erasures') continue;
    const [row] = await admin<{ n: number; md5: string }>(
      `select count(*)::int as n, md5(coalesce(string_agg(t::text, '|' order by t::text), '')) as md5
         from ${table} t where tenant_id = $1`,
      [tenantId],
    );
    result[table] = `${row?.n}:${row?.md5}`;
  }
  return result;
}

/** Rows of one tenant per table, every schema (ledgers aside), tables with rows only. */
async function rowsOf(tenantId: string): Promise<Map<string, number>> {
  const rows = new Map<string, number>();
  for (const table of await catalogTables()) {
    if (ledgers.has(table)) continue;
    const [row] = await admin<{ n: number }>(
      `select count(*)::int as n from ${table} where tenant_id = $1`,
      [tenantId],
    );
    if ((row?.n ?? 0) > 0) rows.set(table, row?.n ?? 0);
  }
  return rows;
}

/** The tenant's rows are unchanged in every table; a dropped schema's tables held none of them. */
async function assertSameRows(
  tenantId: string,
  before: Record<string, string> | undefined,
): Promise<void> {
  assert.ok(before !== undefined);
  const now = await fingerprint(tenantId);
  for (const [table, print] of Object.entries(before)) {
    if (now[table] === undefined) assert.match(print, /^0:/, `${table} dropped with rows`);
    else assert.equal(now[table], print, table);
  }
  assert.deepEqual(
    Object.keys(now).filter((table) => !(table in before)),
    [],
  );
}

async function schemaExists(name: string): Promise<boolean> {
  return (await admin('select 1 from pg_namespace where nspname = $1', [name])).length === 1;
}

before(async () => {
  database = await createTestDatabase();
  router = await createSchemaPlacementRouter({ connectionString: database.appUrl });
  tenantry = await createTenantry<AppDatabase>({
    connectionString: database.appUrl,
    tenantSchema: router.schemaFor,
  });
  filesRoot = await mkdtemp(join(tmpdir(), 'tenantry-placelife-files-'));
  workDir = await mkdtemp(join(tmpdir(), 'tenantry-placelife-'));
  files = createAppStorage({
    driver: 'local',
    root: filesRoot,
    secret: randomBytes(32).toString('hex'),
    baseUrl: 'http://localhost/files',
    maxUploadBytes: 1024 * 1024,
  });
  driver = createLocalStorageDriver({
    root: filesRoot,
    baseUrl: 'http://localhost/files',
    secret: randomBytes(32).toString('hex'),
  });
  lifecycle = createTenantLifecycle({
    connectionString: database.adminUrl,
    storage: { driver },
  });
  analytics = await createAnalytics({ connectionString: database.analyticsUrl });
  pooled = await createTenant('pooled', 'pool');
  placed = await createTenant('placed', 'schema');
  neighbour = await createTenant('neighbour', 'schema');
});

after(async () => {
  await analytics?.close();
  await lifecycle?.close();
  await driver?.close();
  await files?.close();
  await tenantry?.close();
  await router?.close();
  await database?.drop();
  if (filesRoot !== undefined) await rm(filesRoot, { recursive: true, force: true });
  if (workDir !== undefined) await rm(workDir, { recursive: true, force: true });
});

describe('a tenant placed in its own schema: export, stats, erasure', () => {
  let manifest: TenantExportManifest;
  const othersBefore: Record<string, Record<string, string>> = {};

  test('its rows are in its schema, not in the pool', async () => {
    const rows = await rowsOf(placed.id);
    assert.equal(rows.get(`${placed.schema}.contacts`), 3);
    assert.equal(rows.get(`${placed.schema}.messages`), 6);
    assert.equal(rows.get('tenantry.files'), 2);
    for (const table of rows.keys()) {
      assert.ok(
        table.startsWith(`${placed.schema}.`) || table.startsWith('tenantry.'),
        `${table} holds rows of the placed tenant`,
      );
    }
  });

  test('export: every row of the tenant, from its schema; no other tenant schema listed', async () => {
    const archive = join(workDir, 'placed.tar.gz');
    const result = await lifecycle.exportTenant({ tenantId: placed.id, output: archive });
    manifest = result.manifest;
    assert.deepEqual(manifest.placement, { kind: 'schema', schema: placed.schema });
    const names = manifest.tables.map((table) => table.table);
    assert.ok(names.includes(`${placed.schema}.contacts`));
    assert.ok(names.includes('tenantry.files') && names.includes('tenantry.usage_counters'));
    assert.equal(
      names.filter((name) => name.startsWith(`${neighbour.schema}.`)).length,
      0,
      'the neighbour schema is not listed',
    );
    // Counts: every table listed matches the database, and every row of the tenant anywhere is
    // in the archive (read from the catalog independently of the code under test).
    const expected = await rowsOf(placed.id);
    for (const table of manifest.tables) {
      assert.equal(table.rows, expected.get(table.table) ?? 0, table.table);
    }
    const total = [...expected.values()].reduce((sum, n) => sum + n, 0);
    assert.equal(manifest.totals.rows, total);
    assert.ok(
      manifest.tables
        .filter((table) => table.table.startsWith(`${placed.schema}.`))
        .reduce((sum, table) => sum + table.rows, 0) >= 15,
    );
    assert.equal(manifest.files.filter((file) => file.path !== undefined).length, 2);

    const extracted = join(workDir, 'placed');
    execFileSync('mkdir', ['-p', extracted]);
    execFileSync('tar', ['-xzf', archive, '-C', extracted]);
    const written = JSON.parse(await readFile(join(extracted, 'manifest.json'), 'utf8'));
    assert.deepEqual(written, JSON.parse(JSON.stringify(manifest)));
    const messages = manifest.tables.find((table) => table.table === `${placed.schema}.messages`);
    const lines: string[] = [];
    for (const part of messages?.parts ?? []) {
      const body = await readFile(join(extracted, part.path));
      assert.equal(createHash('sha256').update(body).digest('hex'), part.sha256);
      lines.push(...body.toString('utf8').trimEnd().split('\n'));
    }
    assert.equal(lines.length, 6);
    for (const line of lines) assert.equal(JSON.parse(line).tenant_id, placed.id);
  });

  test('export of a pooled tenant: no placement, no dedicated schema listed', async () => {
    const result = await lifecycle.exportTenant({
      tenantId: pooled.id,
      output: join(workDir, 'pooled.tar.gz'),
    });
    assert.equal('placement' in result.manifest, false);
    for (const table of result.manifest.tables) {
      assert.ok(!table.table.startsWith('t_'), table.table);
    }
    const expected = await rowsOf(pooled.id);
    assert.equal(
      result.manifest.totals.rows,
      [...expected.values()].reduce((a, n) => a + n, 0),
    );
    assert.equal(expected.get('public.contacts'), 3);
  });

  test('stats count the rows of its schema', async () => {
    const stats = await analytics.tenantStats(placed.id);
    assert.equal(stats.tenant.placement, 'schema');
    assert.deepEqual(stats.unreadableTables, []);
    const expected = await rowsOf(placed.id);
    assert.equal(
      stats.totalRows,
      [...expected.values()].reduce((sum, n) => sum + n, 0),
    );
    for (const entry of stats.tables) {
      assert.equal(entry.rows, expected.get(entry.table) ?? 0, entry.table);
      assert.ok(!entry.table.startsWith(`${neighbour.schema}.`), entry.table);
    }
    assert.equal(
      stats.tables.find((entry) => entry.table === `${placed.schema}.messages`)?.rows,
      6,
    );
    const pool = await analytics.tenantStats(pooled.id);
    assert.equal(pool.tables.find((entry) => entry.table === 'public.messages')?.rows, 6);
    assert.equal(pool.tables.filter((entry) => entry.table.startsWith('t_')).length, 0);
  });

  test('erase, crashing twice: nothing of it anywhere, schema dropped, others untouched', async () => {
    for (const other of [pooled, neighbour]) othersBefore[other.id] = await fingerprint(other.id);
    const schema = placed.schema as string;
    await lifecycle.suspend(placed.id);
    const crash = (when: (event: ErasureProgress) => boolean) => (event: ErasureProgress) => {
      if (when(event)) throw new Error('simulated crash');
    };
    // 1. After the first committed batch in the tenant's schema.
    await assert.rejects(
      lifecycle.eraseTenant({
        tenantId: placed.id,
        signingKey,
        batchRows: 1,
        onProgress: crash(
          (event) =>
            event.kind === 'rows' && event.table.startsWith(`${schema}.`) && event.deleted === 1,
        ),
      }),
      /simulated crash/,
    );
    assert.equal(await schemaExists(schema), true);
    // 2. After the schema is dropped and verified, before the report.
    await assert.rejects(
      lifecycle.eraseTenant({
        tenantId: placed.id,
        signingKey,
        onProgress: crash((event) => event.kind === 'step' && event.step === 'verified'),
      }),
      /simulated crash/,
    );
    assert.equal(await schemaExists(schema), false);
    const { report, signature, alreadyFinished } = await lifecycle.eraseTenant({
      tenantId: placed.id,
      signingKey,
    });
    assert.equal(alreadyFinished, false);
    assert.equal(verifyErasureReport({ report, signature }, signingKey), true);
    assert.deepEqual(report.placement, { schema, dropped: true });

    // Zero rows of it in every tenant-id table of every schema (pool, schemas, tenantry).
    assert.deepEqual([...(await rowsOf(placed.id)).entries()], []);
    const events = await admin<{ type: string }>(
      'select type from tenantry.outbox_events where tenant_id = $1',
      [placed.id],
    );
    assert.deepEqual(
      events.map((event) => event.type),
      ['tenant.deleted'],
    );
    assert.equal(await schemaExists(schema), false);
    const [catalog] = await admin<{ placement: string; status: string }>(
      'select placement, status from tenantry.tenants where id = $1',
      [placed.id],
    );
    assert.deepEqual(catalog, { placement: 'pool', status: 'deleted' });
    assert.equal(
      (await admin('select 1 from tenantry.placement_migrations where schema_name = $1', [schema]))
        .length,
      0,
    );

    // The report: every exported row counted as deleted once across the three runs.
    for (const table of manifest.tables) {
      const entry = report.tables.find((candidate) => candidate.table === table.table);
      assert.ok(entry !== undefined, table.table);
      assert.equal(entry.rowsBefore, table.rows, table.table);
      assert.equal(entry.rowsDeleted, table.rows, table.table);
      assert.equal(entry.rowsRemaining, 0, table.table);
    }
    assert.equal(report.objects?.deleted, 2);

    // The pooled tenant and the other placed tenant: same rows, same md5; still served.
    for (const other of [pooled, neighbour]) await assertSameRows(other.id, othersBefore[other.id]);
    assert.equal(await schemaExists(neighbour.schema as string), true);
    const served = await tenantry.withTenant(neighbour.id, (db) =>
      db.selectFrom('messages').select('body').execute(),
    );
    assert.equal(served.length, 6);
  });

  test('the schema is never dropped while it holds a row, nor while outside objects depend on it', async () => {
    const schema = neighbour.schema as string;
    // A row of another tenant in the neighbour's schema: dropping it would destroy that row.
    await admin(`insert into ${schema}.tags (tenant_id, name) values ($1, 'stray')`, [pooled.id]);
    await lifecycle.suspend(neighbour.id);
    await assert.rejects(
      lifecycle.eraseTenant({ tenantId: neighbour.id, signingKey }),
      (error: unknown) => isTenantryError(error, 'TENANTRY_ERR_TENANT_ERASURE_INCOMPLETE'),
    );
    assert.equal(await schemaExists(schema), true);
    const stray = await admin(`select 1 from ${schema}.tags where tenant_id = $1`, [pooled.id]);
    assert.equal(stray.length, 1);
    assert.equal((await rowsOf(neighbour.id)).get('tenantry.tenant_placements'), 1);
    await admin(`delete from ${schema}.tags where tenant_id = $1`, [pooled.id]);

    // A view in the pool reading the schema: a cascading drop would take it along.
    await admin(`create view public.neighbour_tags as select name from ${schema}.tags`);
    await assert.rejects(
      lifecycle.eraseTenant({ tenantId: neighbour.id, signingKey }),
      (error: unknown) => isTenantryError(error, 'TENANTRY_ERR_TENANT_STATE_CONFLICT'),
    );
    assert.equal(await schemaExists(schema), true);
    await admin('drop view public.neighbour_tags');

    const { report } = await lifecycle.eraseTenant({ tenantId: neighbour.id, signingKey });
    assert.deepEqual(report.placement, { schema, dropped: true });
    assert.equal(await schemaExists(schema), false);
    assert.deepEqual([...(await rowsOf(neighbour.id)).entries()], []);
    await assertSameRows(pooled.id, othersBefore[pooled.id]);
  });
});
