import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { sql } from 'kysely';
import {
  createMigrationCheck,
  createTenantDirectory,
  createTenantry,
  isTenantryError,
  runDoctor,
  silentLogger,
  type Tenantry,
} from 'tenantry';
import { billingMigrationSource } from 'tenantry/billing';
import { createJobWorker, defineJob, enqueueJob, jobsMigrationSource } from 'tenantry/jobs';
import {
  compareWithPool,
  createSchemaPlacementRouter,
  defaultTenantSchemaName,
  listPlacements,
  placeTenantInSchema,
  type SchemaPlacementRouter,
} from 'tenantry/placement';
import { platformMigrationSource } from 'tenantry/platform';
import { storageMigrationSource } from 'tenantry/storage';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { buildApp } from '../app/app.ts';
import type { AppDatabase } from '../app/database.ts';
import { type AppStorage, createAppStorage } from '../app/files/app-storage.ts';
import type { AppInstance } from '../app/http/types.ts';
import { type AppJobs, setupJobs } from '../app/jobs.ts';
import { signAccessToken } from './app-fixtures.ts';
import { withClient } from './fixtures.ts';

const appSources = [
  { name: 'app', directory: new URL('../app/migrations/', import.meta.url).pathname },
];

let database: TestDatabase;
let router: SchemaPlacementRouter;
let tenantry: Tenantry<AppDatabase>;
let app: AppInstance;
let jobs: AppJobs;
let files: AppStorage;
let filesRoot: string;
const auth = Object.freeze({
  mode: 'local' as const,
  jwtSecret: randomBytes(32).toString('hex'),
  issuer: 'tenantry-test',
  audience: 'tenantry-test-api',
  accessTokenTtlSec: 900,
  refreshTokenTtlSec: 3600,
});

interface Workspace {
  readonly tenantId: string;
  readonly headers: Readonly<Record<string, string>>;
}

let a: Workspace;
let b: Workspace;
let schemaA: string;

async function admin<R extends Record<string, unknown>>(
  text: string,
  values: unknown[] = [],
): Promise<R[]> {
  return withClient(
    database.adminUrl,
    async (client) => (await client.query<R>(text, values)).rows,
  );
}

/** A workspace with an owner, in the pool or (placed before any row exists) in its own schema. */
async function createWorkspace(slug: string, placement: 'pool' | 'schema'): Promise<Workspace> {
  const tenantId = randomUUID();
  const userId = randomUUID();
  await admin('insert into tenantry.tenants (id, slug, name) values ($1, $2, $3)', [
    tenantId,
    slug,
    slug,
  ]);
  await admin(
    `insert into auth.users (id, email, name, password_hash) values ($1, $2, $3, 'unusable')`,
    [userId, `owner@${slug}.test`, slug],
  );
  let table = 'public.memberships';
  if (placement === 'schema') {
    const placed = await placeTenantInSchema({
      connectionString: database.adminUrl,
      tenantId,
      sources: appSources,
    });
    table = `${placed.schema}.memberships`;
  }
  await admin(`insert into ${table} (tenant_id, user_id, role) values ($1, $2, 'owner')`, [
    tenantId,
    userId,
  ]);
  const token = await signAccessToken(auth, { tenantId, userId, role: 'owner' });
  return { tenantId, headers: { authorization: `Bearer ${token}` } };
}

function call(
  as: Workspace,
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE',
  url: string,
  body?: object,
): Promise<LightMyRequestResponse> {
  return app.inject({
    method,
    url,
    headers: as.headers,
    ...(body === undefined ? {} : { payload: body }),
  });
}

async function waitFor(condition: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await condition())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

before(async () => {
  database = await createTestDatabase();
  router = await createSchemaPlacementRouter({ connectionString: database.appUrl });
  tenantry = await createTenantry<AppDatabase>({
    connectionString: database.appUrl,
    tenantSchema: router.schemaFor,
  });
  const directory = await createTenantDirectory({ connectionString: database.appUrl });
  filesRoot = await mkdtemp(join(tmpdir(), 'tenantry-placement-files-'));
  files = createAppStorage({
    driver: 'local',
    root: filesRoot,
    secret: randomBytes(32).toString('hex'),
    baseUrl: 'http://localhost/files',
    maxUploadBytes: 1024 * 1024,
  });
  jobs = await setupJobs({
    tenantry,
    appConnectionString: database.appUrl,
    logger: silentLogger,
    files,
  });
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
        ...appSources,
      ],
    }),
    webhookToleranceSec: 300,
    jobs,
    files,
  });
  await app.ready();
  a = await createWorkspace('placed-a', 'schema');
  b = await createWorkspace('pooled-b', 'pool');
  schemaA = defaultTenantSchemaName(a.tenantId);
});

after(async () => {
  await app?.close();
  await jobs?.close();
  await files?.close();
  await router?.close();
  await database?.drop();
  if (filesRoot !== undefined) await rm(filesRoot, { recursive: true, force: true });
});

describe('placing a tenant in its own schema', () => {
  test('the schema holds the same tenant tables as the pool, with RLS forced', async () => {
    const differences = await withClient(database.adminUrl, (client) =>
      compareWithPool(client, schemaA),
    );
    assert.deepEqual(differences, []);
    const tables = await admin<{ relname: string; forced: boolean; policies: number }>(
      `select c.relname, c.relrowsecurity and c.relforcerowsecurity as forced,
              (select count(*)::int from pg_policy p where p.polrelid = c.oid) as policies
         from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = $1 and c.relkind in ('r', 'p')`,
      [schemaA],
    );
    assert.ok(tables.length >= 19, `only ${tables.length} tables`);
    for (const table of tables) {
      assert.ok(table.forced, `${table.relname} has no forced RLS`);
      assert.equal(table.policies, 2, `${table.relname} policies`);
    }
    const [tenant] = await admin<{ placement: string }>(
      'select placement from tenantry.tenants where id = $1',
      [a.tenantId],
    );
    assert.equal(tenant?.placement, 'schema');
    const listed = await listPlacements({ connectionString: database.adminUrl });
    assert.deepEqual(
      listed.map((placement) => [
        placement.tenantId,
        placement.schema,
        placement.appliedMigrations,
      ]),
      [
        [
          a.tenantId,
          schemaA,
          (await readdir(appSources[0]?.directory ?? ''))
            .filter(Boolean)
            .filter((f) => f.endsWith('.sql')).length,
        ],
      ],
    );
  });

  test('the doctor audits dedicated schemas: clean by default, and a hole there is found', async () => {
    const clean = await runDoctor({ connectionString: database.adminUrl });
    assert.deepEqual(
      clean.findings.filter((finding) => finding.object.startsWith(`${schemaA}.`)),
      [],
    );
    assert.ok(clean.tenantTables.includes(`${schemaA}.contacts`), 'the schema was audited');
    await admin(`alter table ${schemaA}.tags no force row level security`);
    try {
      const holed = await runDoctor({ connectionString: database.adminUrl });
      assert.ok(
        holed.findings.some(
          (finding) => finding.kind === 'rls_not_forced' && finding.object === `${schemaA}.tags`,
        ),
        JSON.stringify(holed.findings),
      );
      const poolOnly = await runDoctor({
        connectionString: database.adminUrl,
        placementSchemas: false,
      });
      assert.ok(!poolOnly.findings.some((finding) => finding.object.startsWith(`${schemaA}.`)));
    } finally {
      await admin(`alter table ${schemaA}.tags force row level security`);
    }
  });

  test('shared objects are not duplicated in the schema', async () => {
    const rows = await admin<{ n: number }>(
      `select count(*)::int as n from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = $1 and c.relname in ('users', 'refresh_tokens', 'plans')`,
      [schemaA],
    );
    assert.equal(rows[0]?.n, 0);
  });

  test('a tenant with rows in the pool, a placed tenant and a taken schema are refused', async () => {
    await assert.rejects(
      placeTenantInSchema({
        connectionString: database.adminUrl,
        tenantId: b.tenantId,
        sources: appSources,
      }),
      (error) =>
        isTenantryError(error, 'TENANTRY_ERR_TENANT_STATE_CONFLICT') &&
        /memberships/.test(error.message),
    );
    await assert.rejects(
      placeTenantInSchema({
        connectionString: database.adminUrl,
        tenantId: a.tenantId,
        schema: 'another_one',
        sources: appSources,
      }),
      (error) => isTenantryError(error, 'TENANTRY_ERR_TENANT_STATE_CONFLICT'),
    );
    const fresh = randomUUID();
    await admin(`insert into tenantry.tenants (id, slug, name) values ($1, 'fresh-c', 'c')`, [
      fresh,
    ]);
    await assert.rejects(
      placeTenantInSchema({
        connectionString: database.adminUrl,
        tenantId: fresh,
        schema: schemaA,
        sources: appSources,
      }),
      (error) => isTenantryError(error, 'TENANTRY_ERR_TENANT_STATE_CONFLICT'),
    );
    const [row] = await admin<{ placement: string }>(
      'select placement from tenantry.tenants where id = $1',
      [b.tenantId],
    );
    assert.equal(row?.placement, 'pool');
  });

  test('placement and the placement row cannot disagree', async () => {
    await assert.rejects(
      admin(`update tenantry.tenants set placement = 'schema' where id = $1`, [b.tenantId]),
      /has placement schema but/,
    );
    await assert.rejects(
      admin('delete from tenantry.tenant_placements where tenant_id = $1', [a.tenantId]),
      /has placement schema but/,
    );
  });
});

describe('the reference app for a tenant in its own schema', () => {
  let contactA: string;
  let contactB: string;

  before(async () => {
    const createdA = await call(a, 'POST', '/v1/contacts', { name: 'Ada', phone: '+15550001' });
    assert.equal(createdA.statusCode, 201, createdA.body);
    contactA = JSON.parse(createdA.body).id;
    const createdB = await call(b, 'POST', '/v1/contacts', { name: 'Bob', phone: '+15550002' });
    assert.equal(createdB.statusCode, 201, createdB.body);
    contactB = JSON.parse(createdB.body).id;
  });

  test("A's contacts land in A's schema, B's in the pool", async () => {
    const inSchema = await admin<{ id: string; tenant_id: string }>(
      `select id, tenant_id from ${schemaA}.contacts`,
    );
    assert.deepEqual(inSchema, [{ id: contactA, tenant_id: a.tenantId }]);
    const inPool = await admin<{ id: string }>(
      'select id from public.contacts where tenant_id = any($1::uuid[])',
      [[a.tenantId, b.tenantId]],
    );
    assert.deepEqual(inPool, [{ id: contactB }]);
    const terms = await admin<{ n: number }>(
      `select count(*)::int as n from ${schemaA}.contact_search_terms`,
    );
    assert.ok((terms[0]?.n ?? 0) > 0, "the search trigger wrote A's terms in A's schema");
    const [counter] = await admin<{ used: number }>(
      `select used::int from tenantry.usage_counters where tenant_id = $1 and metric = 'contacts'`,
      [a.tenantId],
    );
    assert.equal(counter?.used, 1, "the quota trigger counts A's contacts");
  });

  test('each tenant lists and reads only its own contacts', async () => {
    const listA = JSON.parse((await call(a, 'GET', '/v1/contacts')).body);
    const listB = JSON.parse((await call(b, 'GET', '/v1/contacts')).body);
    assert.deepEqual(
      listA.items.map((item: { id: string }) => item.id),
      [contactA],
    );
    assert.deepEqual(
      listB.items.map((item: { id: string }) => item.id),
      [contactB],
    );
    assert.equal((await call(a, 'GET', `/v1/contacts/${contactB}`)).statusCode, 404);
    assert.equal((await call(b, 'GET', `/v1/contacts/${contactA}`)).statusCode, 404);
    assert.equal((await call(a, 'GET', `/v1/contacts/${contactA}`)).statusCode, 200);
    const search = JSON.parse((await call(a, 'GET', '/v1/contacts?phone=%2B15550001')).body);
    assert.deepEqual(
      search.items.map((item: { id: string }) => item.id),
      [contactA],
    );
  });

  test("B cannot reach A's schema even by naming it: RLS stays the second wall", async () => {
    const seen = await tenantry.withTenant(b.tenantId, async (db) => {
      const { rows } = await sql<{ n: number }>`select count(*)::int as n from ${sql.id(
        schemaA,
        'contacts',
      )}`.execute(db);
      return rows[0]?.n;
    });
    assert.equal(seen, 0);
    await assert.rejects(
      tenantry.withTenant(b.tenantId, (db) =>
        sql`insert into ${sql.id(schemaA, 'contacts')} (tenant_id, name) values (${a.tenantId}, 'x')`.execute(
          db,
        ),
      ),
    );
    const [count] = await admin<{ n: number }>(
      `select count(*)::int as n from ${schemaA}.contacts`,
    );
    assert.equal(count?.n, 1);
  });

  test('without the router, A sees nothing of its own: routing is what serves it', async () => {
    const unrouted = await createTenantry<AppDatabase>({ connectionString: database.appUrl });
    try {
      const rows = await unrouted.withTenant(a.tenantId, (db) =>
        db.selectFrom('contacts').select('id').execute(),
      );
      assert.deepEqual(rows, []);
    } finally {
      await unrouted.close();
    }
  });

  test("a job for A runs in A's schema", async () => {
    const tagJob = defineJob<{ name: string }, AppDatabase>('placement.tag', {
      async run(payload, context) {
        await context.db.insertInto('tags').values({ name: payload.name }).execute();
      },
    });
    const worker = await createJobWorker({
      tenantry,
      connectionString: database.adminUrl,
      jobs: [tagJob],
      pollIntervalMs: 50,
    });
    try {
      await tenantry.withTenant(a.tenantId, (db) => enqueueJob(db, tagJob, { name: 'from-job' }));
      await waitFor(async () => {
        const rows = await admin(`select 1 from ${schemaA}.tags where name = 'from-job'`);
        return rows.length === 1;
      }, "the job's tag");
      const inPool = await admin('select 1 from public.tags where tenant_id = $1', [a.tenantId]);
      assert.equal(inPool.length, 0);
    } finally {
      await worker.stop();
    }
  });
});

describe('no search path left on pooled connections', () => {
  test('with one connection, units alternate between the schema and the pool', async () => {
    const single = await createTenantry<AppDatabase>({
      connectionString: database.appUrl,
      maxConnections: 1,
      tenantSchema: router.schemaFor,
    });
    try {
      const ids = (tenantId: string) =>
        single.withTenant(tenantId, (db) => db.selectFrom('contacts').select('id').execute());
      const path = () =>
        single.withTenant(b.tenantId, async (db) => {
          const { rows } = await sql<{
            path: string;
          }>`select current_setting('search_path') as path`.execute(db);
          return rows[0]?.path;
        });
      const idsA = (await ids(a.tenantId)).map((row) => row.id);
      const idsB = (await ids(b.tenantId)).map((row) => row.id);
      assert.equal(await path(), '"$user", public');
      // A unit that wrote, one that failed, a one-shot and a stream, each followed by the pool.
      await single.withTenant(a.tenantId, (db) =>
        db.insertInto('tags').values({ name: 'written' }).execute(),
      );
      assert.deepEqual(
        (await ids(b.tenantId)).map((row) => row.id),
        idsB,
      );
      await assert.rejects(
        single.withTenant(a.tenantId, async (db) => {
          await db.insertInto('tags').values({ name: 'rolled-back' }).execute();
          throw new Error('on purpose');
        }),
        /on purpose/,
      );
      assert.equal(await path(), '"$user", public');
      const oneShot = await single.oneShot(a.tenantId, (db) =>
        db.selectFrom('contacts').select('id').execute(),
      );
      assert.deepEqual(
        oneShot.map((row) => row.id),
        idsA,
      );
      assert.deepEqual(
        (await ids(b.tenantId)).map((row) => row.id),
        idsB,
      );
      await single.withTenant(a.tenantId, async (db) => {
        for await (const row of db.selectFrom('contacts').select('id').stream(10)) {
          assert.equal(row.id, idsA[0]);
        }
      });
      assert.deepEqual(
        (await ids(b.tenantId)).map((row) => row.id),
        idsB,
      );
      const outside = await sql<{
        path: string;
      }>`select current_setting('search_path') as path`.execute(single.db);
      assert.equal(outside.rows[0]?.path, '"$user", public');
      const unit = single.beginUnit(a.tenantId);
      assert.deepEqual(
        (await unit.db.selectFrom('contacts').select('id').execute()).map((row) => row.id),
        idsA,
      );
      await unit.commit();
      assert.equal(await path(), '"$user", public');
    } finally {
      await single.close();
    }
  });
});

describe('the router', () => {
  test('a placement made after the pool answer was cached is seen at once', async () => {
    const tenantId = randomUUID();
    await admin(`insert into tenantry.tenants (id, slug, name) values ($1, 'late-d', 'd')`, [
      tenantId,
    ]);
    assert.equal(await router.schemaFor(tenantId as never), undefined);
    assert.equal(router.schemaFor(tenantId as never), undefined, 'answered from the cache');
    const placed = await placeTenantInSchema({
      connectionString: database.adminUrl,
      tenantId,
      sources: appSources,
    });
    await waitFor(
      async () => (await router.schemaFor(tenantId as never)) === placed.schema,
      'the router to drop its cached answer',
    );
  });

  test('an invalid schema name from the hook fails the unit instead of running it', async () => {
    const broken = await createTenantry<AppDatabase>({
      connectionString: database.appUrl,
      tenantSchema: () => 'Robert"; drop table contacts; --',
    });
    try {
      await assert.rejects(
        broken.withTenant(b.tenantId, (db) => db.selectFrom('contacts').select('id').execute()),
        (error) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
      );
    } finally {
      await broken.close();
    }
  });
});
