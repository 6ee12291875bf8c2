import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { sql } from 'kysely';
import {
  createTenantDirectory,
  createTenantry,
  isTenantryError,
  runDoctor,
  type TenantDirectory,
  type Tenantry,
} from 'tenantry';
import { defineJob, enqueueJob } from 'tenantry/jobs';
import {
  type AdminLifecycle,
  type AdminServer,
  type Analytics,
  createAdminServer,
  createAnalytics,
  createRequestMetrics,
  type RequestMetrics,
} from 'tenantry/platform';
import { loadAdminConfig, observeRequests, startAdminListener } from '../app/admin.ts';
import { buildApp } from '../app/app.ts';
import type { AppDatabase } from '../app/database.ts';
import type { AppInstance } from '../app/http/types.ts';
import {
  bodyOf,
  createTestApp,
  createWorkspace,
  queryAsAdmin,
  type TestApp,
  type TestWorkspace,
} from './app-fixtures.ts';
import { referenceTenantTables, withClient } from './fixtures.ts';

const token = randomBytes(32).toString('base64url');
const bearer = { authorization: `Bearer ${token}` };

let testApp: TestApp;
let analytics: Analytics;
let requestMetrics: RequestMetrics;
let admin: AdminServer;
let a: TestWorkspace;
let b: TestWorkspace;
let c: TestWorkspace;
/** Roles of every connection to the test database once the public app had served requests. */
let publicRoles: string[];

// A second reference app on its own pools, fed into the request recorder (hooks must be added
// before the app is ready, which createTestApp() already made it).
let observed: { app: AppInstance; tenantry: Tenantry<AppDatabase>; directory: TenantDirectory };

const adminRoutes = [
  ['GET', '/tenants'],
  ['GET', '/tenants/:id'],
  ['GET', '/tenants/:id/stats'],
  ['GET', '/metrics/platform'],
  ['GET', '/metrics/noisy-neighbours'],
  ['GET', '/metrics/requests'],
  ['POST', '/tenants'],
  ['POST', '/tenants/:id/suspend'],
  ['POST', '/tenants/:id/resume'],
] as const;

const lifecycleCalls: string[] = [];

/** Lifecycle actions as the owner would take them (the admin server only routes to them). */
function ownerLifecycle(adminUrl: string): AdminLifecycle {
  const setStatus = (tenantId: string, status: string) =>
    withClient(adminUrl, async (client) => {
      await client.query('update tenantry.tenants set status = $2 where id = $1', [
        tenantId,
        status,
      ]);
    });
  return {
    async create(input) {
      lifecycleCalls.push(`create ${input.slug}`);
      return withClient(adminUrl, async (client) => {
        const result = await client.query<{ id: string }>(
          'select tenantry.create_tenant($1, $2) as id',
          [input.slug, input.name],
        );
        return { id: result.rows[0]?.id };
      });
    },
    async suspend(tenantId, options) {
      lifecycleCalls.push(`suspend ${tenantId} ${options?.reason ?? ''}`);
      await setStatus(tenantId, 'suspended');
      return { tenant: { id: tenantId }, changed: true };
    },
    async resume(tenantId) {
      lifecycleCalls.push(`resume ${tenantId}`);
      await setStatus(tenantId, 'active');
      return { tenant: { id: tenantId }, changed: true, jobsResumed: 0 };
    },
  };
}

/** Contacts, one conversation and messages `daysAgo` days old, written as the superuser. */
async function populate(
  workspace: TestWorkspace,
  contacts: number,
  messagesDaysAgo: readonly number[],
): Promise<void> {
  await withClient(testApp.database.adminUrl, async (client) => {
    await client.query(
      `insert into contacts (tenant_id, name, phone)
       select $1, 'Contact ' || n, '+5511' || (900000000 + n)::text from generate_series(1, $2) n`,
      [workspace.tenantId, contacts],
    );
    const conversation = randomUUID();
    await client.query(
      `insert into conversations (tenant_id, id, contact_id)
       select $1, $2, id from contacts where tenant_id = $1 limit 1`,
      [workspace.tenantId, conversation],
    );
    for (const daysAgo of messagesDaysAgo) {
      await client.query(
        `insert into messages (tenant_id, conversation_id, direction, body, created_at)
         values ($1, $2, 'inbound', 'hello', now() - make_interval(days => $3))`,
        [workspace.tenantId, conversation, daysAgo],
      );
    }
  });
}

async function addUploadedFile(workspace: TestWorkspace, sizeBytes: number): Promise<void> {
  const id = randomUUID();
  await withClient(testApp.database.adminUrl, async (client) => {
    await client.query(
      `insert into tenantry.files (tenant_id, id, object_key, file_name, size_bytes, content_type,
                                   status, driver, uploaded_at, expires_at)
       values ($1::uuid, $2::uuid, 'tenants/' || $1::text || '/' || $2::text, 'report.txt', $3, 'text/plain',
               'uploaded', 'local', now(), now() + interval '1 day')`,
      [workspace.tenantId, id, sizeBytes],
    );
  });
}

const noteJob = defineJob<{ note: string }, AppDatabase>('admin-test.note', { async run() {} });

async function enqueueNotes(workspace: TestWorkspace, count: number): Promise<void> {
  for (let index = 0; index < count; index++) {
    await testApp.tenantry.withTenant(workspace.tenantId, (db) =>
      enqueueJob(db, noteJob, { note: `note ${index}` }),
    );
  }
}

/** Exact rows per tenant table as the superuser sees them, from its own catalog query. */
async function superuserCounts(tenantId: string): Promise<Map<string, number>> {
  return withClient(testApp.database.adminUrl, async (client) => {
    const tables = await client.query<{ qualified: string }>(
      `select format('%s.%s', n.nspname, c.relname) as qualified,
              format('%I.%I', n.nspname, c.relname) as quoted
         from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('r', 'p') and not c.relispartition
          and exists (select 1 from pg_attribute a
                       where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped)
          and n.nspname not in ('pg_catalog', 'information_schema')
          and format('%s.%s', n.nspname, c.relname)
              not in ('tenantry.outbox_events', 'tenantry.tenant_erasures')`,
    );
    const counts = new Map<string, number>();
    for (const row of tables.rows as { qualified: string; quoted: string }[]) {
      const result = await client.query<{ n: number }>(
        `select count(*)::int as n from ${row.quoted} where tenant_id = $1`,
        [tenantId],
      );
      counts.set(row.qualified, result.rows[0]?.n ?? -1);
    }
    return counts;
  });
}

before(async () => {
  testApp = await createTestApp();
  a = await createWorkspace(testApp, 'admin-a');
  b = await createWorkspace(testApp, 'admin-b');
  c = await createWorkspace(testApp, 'admin-c');
  // Rows: c > b > a. Storage: b > c > a. Messages: today, yesterday, 2 and 40 days ago.
  await populate(a, 1, [0]);
  await populate(b, 3, [0, 0, 1, 1]);
  await populate(c, 6, [0, 0, 0, 2, 2, 2, 2, 40, 40, 40, 40, 40]);
  await addUploadedFile(a, 100);
  await addUploadedFile(b, 5000);
  await addUploadedFile(c, 200);
  await addUploadedFile(c, 100);
  await enqueueNotes(b, 2);
  await enqueueNotes(c, 1);

  // Every public pool in use (tenant requests, the directory's LISTEN, plan limits), then look
  // at who is connected before any analytics pool exists.
  for (const workspace of [a, b, c]) {
    const response = await testApp.app.inject({
      method: 'GET',
      url: '/v1/contacts',
      headers: workspace.headers,
    });
    assert.equal(response.statusCode, 200, response.body);
  }
  publicRoles = (
    await queryAsAdmin<{ usename: string }>(
      testApp,
      `select distinct usename from pg_stat_activity
        where datname = current_database() and pid <> pg_backend_pid() and usename is not null`,
    )
  ).map((row) => row.usename);

  requestMetrics = createRequestMetrics();
  analytics = await createAnalytics({
    connectionString: testApp.database.analyticsUrl,
    series: [{ name: 'messages', table: 'messages', timestampColumn: 'created_at' }],
    requestMetrics,
  });
  admin = await createAdminServer({
    analytics,
    token,
    port: 0,
    requestMetrics,
    lifecycle: ownerLifecycle(testApp.database.adminUrl),
  });
  await admin.app.ready();

  const tenantry = await createTenantry<AppDatabase>({
    connectionString: testApp.database.appUrl,
  });
  const directory = await createTenantDirectory({ connectionString: testApp.database.appUrl });
  const app = await buildApp({
    tenantry,
    directory,
    auth: testApp.auth,
    pendingMigrations: async () => [],
  });
  observeRequests(app, requestMetrics);
  await app.ready();
  observed = { app, tenantry, directory };
});

after(async () => {
  await observed?.app.close();
  await observed?.directory.close();
  await admin?.close();
  await analytics?.close();
  await testApp?.close();
});

describe('no public route reaches the analytics pool', () => {
  test('the public app has none of the admin routes', () => {
    for (const [method, url] of adminRoutes) {
      assert.equal(testApp.app.hasRoute({ method, url }), false, `${method} ${url}`);
    }
  });

  test('admin paths on the public app answer 4xx without data, whatever the credentials', async () => {
    const credentials = [{}, bearer, a.headers];
    const others = [b.tenantId, b.slug, c.tenantId, c.slug];
    for (const [method, route] of adminRoutes) {
      const url = route.replace(':id', b.tenantId);
      for (const headers of credentials) {
        const response = await testApp.app.inject({
          method,
          url,
          headers,
          ...(method === 'POST' ? { payload: { slug: 'sneaky', name: 'Sneaky' } } : {}),
        });
        assert.ok(
          [401, 404, 405].includes(response.statusCode),
          `${method} ${url}: ${response.statusCode} ${response.body}`,
        );
        const body = response.body;
        for (const secret of others) {
          // The path itself carries b's id; the answer must not add anything about b or c.
          if (secret === b.tenantId) continue;
          assert.ok(!body.includes(secret), `${method} ${url} leaked ${secret}`);
        }
        assert.ok(
          !/activeTenants|totalRows|noisy|"tenants"/.test(body),
          `${method} ${url}: ${body}`,
        );
      }
    }
    const suspended = await queryAsAdmin<{ n: number }>(
      testApp,
      "select count(*)::int as n from tenantry.tenants where slug = 'sneaky'",
    );
    assert.equal(suspended[0]?.n, 0);
  });

  test("the public app's pools log in as the app role; the admin listener's as the analytics role", async () => {
    assert.deepEqual(publicRoles, ['tenantry_app']);
    const role = await testApp.tenantry.withTenant(a.tenantId, async (db) => {
      const result = await sql<{ role: string }>`select current_user as role`.execute(db);
      return result.rows[0]?.role;
    });
    assert.equal(role, 'tenantry_app');
    assert.equal(analytics.role, 'tenantry_analytics');
    assert.notEqual(analytics.role, role);
  });

  test('the app role cannot read the job view the analytics role reads, nor the runner schema', async () => {
    await withClient(testApp.database.appUrl, async (client) => {
      await assert.rejects(client.query('select * from tenantry.job_states'), /permission denied/);
    });
    await withClient(testApp.database.analyticsUrl, async (client) => {
      await assert.rejects(
        client.query('select * from graphile_worker._private_jobs'),
        /permission denied/,
      );
      const columns = await client.query('select * from tenantry.job_states limit 0');
      assert.deepEqual(
        columns.fields.map((field) => field.name),
        ['id', 'task', 'tenant_id', 'state', 'attempts', 'max_attempts', 'run_at', 'created_at'],
      );
      await assert.rejects(
        client.query("update tenantry.tenants set status = 'suspended'"),
        /read-only transaction/,
      );
    });
  });
});

test('the analytics role reads API keys but never their secret hashes', async () => {
  await withClient(testApp.database.analyticsUrl, async (client) => {
    await assert.rejects(
      client.query('select secret_hash from tenantry.api_keys'),
      /permission denied/,
    );
    await assert.rejects(client.query('select * from tenantry.api_keys'), /permission denied/);
    const counted = await client.query<{ n: number }>(
      'select count(*)::int as n from tenantry.api_keys',
    );
    assert.equal(typeof counted.rows[0]?.n, 'number');
    await client.query('select tenant_id, prefix, name, revoked_at from tenantry.api_keys limit 1');
  });
});

test('the doctor has nothing to say about the analytics job view', async () => {
  const report = await runDoctor({
    connectionString: testApp.database.adminUrl,
    schemas: ['public', 'tenantry'],
  });
  assert.deepEqual(
    report.findings.filter((finding) => /job_states/.test(`${finding.object} ${finding.message}`)),
    [],
  );
});

describe('the admin listener requires the operator token', () => {
  const refused = async (headers: Record<string, string>, url = '/tenants') => {
    const response = await admin.app.inject({ method: 'GET', url, headers });
    assert.equal(response.statusCode, 401, `${url} ${JSON.stringify(headers)}: ${response.body}`);
    assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
    assert.match(String(response.headers['www-authenticate']), /^Bearer realm="tenantry-admin"/);
    assert.ok(!response.body.includes(a.slug), response.body);
    return bodyOf(response) as { code: string };
  };

  test('missing, malformed, wrong, short and long tokens are refused with 401', async () => {
    assert.equal((await refused({})).code, 'TENANTRY_ERR_AUTH_REQUIRED');
    assert.equal((await refused({ authorization: token })).code, 'TENANTRY_ERR_AUTH_REQUIRED');
    assert.equal(
      (await refused({ authorization: `Basic ${Buffer.from(`op:${token}`).toString('base64')}` }))
        .code,
      'TENANTRY_ERR_AUTH_REQUIRED',
    );
    const wrong = `${token.slice(0, -1)}${token.endsWith('A') ? 'B' : 'A'}`;
    for (const presented of [wrong, token.slice(0, 8), `${token}x`, token.toUpperCase()]) {
      if (presented === token) continue;
      assert.equal(
        (await refused({ authorization: `Bearer ${presented}` })).code,
        'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      );
    }
    // A workspace's access token is not an operator token.
    assert.equal((await refused(a.headers)).code, 'TENANTRY_ERR_AUTH_TOKEN_INVALID');
  });

  test('unknown routes are refused before routing, and 404 only with the token', async () => {
    await refused({}, '/no-such-route');
    await refused({}, `/tenants/${a.tenantId}/export`);
    const found = await admin.app.inject({ method: 'GET', url: '/no-such-route', headers: bearer });
    assert.equal(found.statusCode, 404);
    assert.equal(bodyOf(found).code, 'TENANTRY_ERR_HTTP_NOT_FOUND');
  });

  test('every admin route refuses a request without the token', async () => {
    for (const [method, route] of adminRoutes) {
      const response = await admin.app.inject({
        method,
        url: route.replace(':id', a.tenantId),
        ...(method === 'POST' ? { payload: { slug: 'nope', name: 'Nope' } } : {}),
      });
      assert.equal(response.statusCode, 401, `${method} ${route}`);
    }
    assert.deepEqual(lifecycleCalls, []);
  });

  test('the correct token is accepted, in either case of the scheme', async () => {
    for (const scheme of ['Bearer', 'bearer']) {
      const response = await admin.app.inject({
        method: 'GET',
        url: '/tenants',
        headers: { authorization: `${scheme} ${token}` },
      });
      assert.equal(response.statusCode, 200, response.body);
      assert.equal(response.headers['cache-control'], 'no-store');
    }
  });

  test('a token under 32 bytes is refused at construction', async () => {
    for (const weak of ['', 'x'.repeat(31), `${'x'.repeat(31)} `]) {
      await assert.rejects(createAdminServer({ analytics, token: weak, port: 0 }), (error) =>
        isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
      );
    }
  });

  test('it listens on 127.0.0.1 by default', async () => {
    const server = await createAdminServer({ analytics, token, port: 0 });
    try {
      const url = await server.listen();
      const address = server.app.server.address() as AddressInfo;
      assert.equal(address.address, '127.0.0.1');
      assert.equal(url, `http://127.0.0.1:${address.port}`);
      const unauthorized = await fetch(`${url}/tenants`);
      assert.equal(unauthorized.status, 401);
      const authorized = await fetch(`${url}/tenants`, { headers: bearer });
      assert.equal(authorized.status, 200);
    } finally {
      await server.close();
    }
  });
});

describe('analytics see every tenant; the tenant API never does', () => {
  test('listTenants finds all workspaces, by search, id and page', async () => {
    const all = await analytics.listTenants();
    assert.deepEqual(
      all.tenants.map((tenant) => tenant.slug),
      ['admin-a', 'admin-b', 'admin-c'],
    );
    assert.equal(all.nextCursor, null);
    const found = all.tenants.find((tenant) => tenant.id === c.tenantId);
    assert.equal(found?.plan, 'free');
    assert.equal(found?.status, 'active');
    assert.equal(found?.placement, 'pool');
    assert.equal(found?.usage.contacts, 6);
    assert.equal(found?.usage.messages, 12);
    assert.equal(found?.usage.storage_bytes, 300);

    assert.deepEqual(
      (await analytics.listTenants({ search: 'MIN-B' })).tenants.map((tenant) => tenant.id),
      [b.tenantId],
    );
    assert.deepEqual(
      (await analytics.listTenants({ search: c.tenantId.toUpperCase() })).tenants.map(
        (tenant) => tenant.slug,
      ),
      ['admin-c'],
    );
    assert.deepEqual((await analytics.listTenants({ search: 'admin_' })).tenants, []);
    assert.deepEqual((await analytics.listTenants({ search: '%' })).tenants, []);
    assert.equal((await analytics.listTenants({ plan: 'pro' })).tenants.length, 0);

    const paged: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await analytics.listTenants({ limit: 1, ...(cursor ? { cursor } : {}) });
      paged.push(...page.tenants.map((tenant) => tenant.slug));
      cursor = page.nextCursor ?? undefined;
    } while (cursor !== undefined);
    assert.deepEqual(paged, ['admin-a', 'admin-b', 'admin-c']);
    await assert.rejects(analytics.listTenants({ cursor: "'; select 1 --" }), (error) =>
      isTenantryError(error, 'TENANTRY_ERR_HTTP_VALIDATION'),
    );
  });

  test('GET /tenants and /tenants/:id on the admin listener', async () => {
    const list = await admin.app.inject({
      method: 'GET',
      url: '/tenants?status=active&limit=2',
      headers: bearer,
    });
    assert.equal(list.statusCode, 200, list.body);
    const page = bodyOf(list);
    assert.deepEqual(
      page.tenants.map((tenant: { slug: string }) => tenant.slug),
      ['admin-a', 'admin-b'],
    );
    assert.equal(typeof page.nextCursor, 'string');
    const next = await admin.app.inject({
      method: 'GET',
      url: `/tenants?status=active&limit=2&cursor=${page.nextCursor}`,
      headers: bearer,
    });
    assert.deepEqual(
      bodyOf(next).tenants.map((tenant: { slug: string }) => tenant.slug),
      ['admin-c'],
    );

    const one = await admin.app.inject({
      method: 'GET',
      url: `/tenants/${b.tenantId}`,
      headers: bearer,
    });
    assert.equal(one.statusCode, 200);
    assert.equal(bodyOf(one).slug, 'admin-b');

    const unknown = await admin.app.inject({
      method: 'GET',
      url: `/tenants/${randomUUID()}`,
      headers: bearer,
    });
    assert.equal(unknown.statusCode, 404);
    assert.equal(bodyOf(unknown).code, 'TENANTRY_ERR_TENANT_NOT_FOUND');
    const malformed = await admin.app.inject({
      method: 'GET',
      url: '/tenants/not-a-uuid/stats',
      headers: bearer,
    });
    assert.equal(malformed.statusCode, 400);
    assert.equal(bodyOf(malformed).code, 'TENANTRY_ERR_TENANT_ID_INVALID');
    const badStatus = await admin.app.inject({
      method: 'GET',
      url: '/tenants?status=gone',
      headers: bearer,
    });
    assert.equal(badStatus.statusCode, 400);
    assert.equal(bodyOf(badStatus).code, 'TENANTRY_ERR_HTTP_VALIDATION');
  });

  test('the tenant API shows a workspace its own rows only', async () => {
    for (const [workspace, contacts] of [
      [a, 1],
      [b, 3],
      [c, 6],
    ] as const) {
      const response = await testApp.app.inject({
        method: 'GET',
        url: '/v1/contacts?limit=100',
        headers: workspace.headers,
      });
      assert.equal(response.statusCode, 200, response.body);
      const body = bodyOf(response);
      const items: { id: string }[] = body.items ?? body.data ?? body;
      assert.equal(items.length, contacts);
      const owners = await queryAsAdmin<{ tenant_id: string }>(
        testApp,
        'select distinct tenant_id from contacts where id = any($1::uuid[])',
        [items.map((item) => item.id)],
      );
      assert.deepEqual(
        owners.map((row) => row.tenant_id),
        [workspace.tenantId],
      );
    }
  });
});

describe('statistics are exact', () => {
  test('rows per tenant table match count(*) as the superuser, for every tenant', async () => {
    for (const workspace of [a, b, c]) {
      const stats = await analytics.tenantStats(workspace.tenantId);
      const expected = await superuserCounts(workspace.tenantId);
      assert.deepEqual(stats.unreadableTables, []);
      assert.deepEqual(
        new Map(stats.tables.map((entry) => [entry.table, entry.rows])),
        expected,
        workspace.slug,
      );
      assert.equal(
        stats.totalRows,
        [...expected.values()].reduce((sum, n) => sum + n, 0),
      );
      assert.equal(stats.tenant.id, workspace.tenantId);
    }
    const discovered = new Set((await analytics.tenantTables()).map((table) => table.name));
    for (const table of referenceTenantTables) assert.ok(discovered.has(`public.${table}`), table);
    for (const table of ['tenantry.files', 'tenantry.usage_counters', 'tenantry.usage_events']) {
      assert.ok(discovered.has(table), table);
    }
  });

  test('storage, usage and jobs per tenant', async () => {
    const stats = await analytics.tenantStats(c.tenantId);
    assert.deepEqual(stats.storage, { files: 2, bytes: 300 });
    assert.equal(stats.tables.find((entry) => entry.table === 'public.contacts')?.rows, 6);
    assert.equal(stats.tables.find((entry) => entry.table === 'public.messages')?.rows, 12);
    assert.equal(stats.tenant.usage.contacts, 6);
    assert.deepEqual(stats.jobs, { waiting: 1, running: 0, dead: 0, parked: 0 });
    assert.deepEqual((await analytics.tenantStats(b.tenantId)).jobs, {
      waiting: 2,
      running: 0,
      dead: 0,
      parked: 0,
    });
    assert.deepEqual((await analytics.tenantStats(a.tenantId)).jobs, {
      waiting: 0,
      running: 0,
      dead: 0,
      parked: 0,
    });
  });

  test('platform metrics: messages per day, active tenants, storage, backlog', async () => {
    const metrics = await analytics.platformMetrics({ days: 7 });
    assert.equal(metrics.days.length, 7);
    const today = metrics.days.at(-1);
    const dayOf = (daysAgo: number) => metrics.days[metrics.days.length - 1 - daysAgo];
    // Messages written "now() - N days" land on the UTC day N days back, unless the test runs
    // within seconds of midnight; the day totals are checked against the database either way.
    const perDay = await queryAsAdmin<{ day: string; n: number }>(
      testApp,
      `select to_char((created_at at time zone 'UTC')::date, 'YYYY-MM-DD') as day, count(*)::int as n
         from messages group by 1`,
    );
    const expectedByDay = new Map(perDay.map((row) => [row.day, row.n]));
    for (const day of metrics.days) {
      assert.equal(day.counts.messages, expectedByDay.get(day.day) ?? 0, day.day);
    }
    assert.equal(metrics.totals.messages, 1 + 4 + 7);
    assert.equal(today?.counts.messages, expectedByDay.get(today?.day ?? '') ?? 0);
    assert.ok((dayOf(0)?.activeTenants ?? 0) >= 1);
    assert.equal(metrics.activeTenants, 3);
    const month = await analytics.platformMetrics({ days: 60 });
    assert.equal(month.totals.messages, 17);
    assert.equal(month.days.length, 60);
    assert.deepEqual(metrics.storage, { files: 4, bytes: 5400 });
    assert.deepEqual(metrics.jobs, { waiting: 3, running: 0, dead: 0, parked: 0 });
    assert.equal(metrics.tenants.total, 3);
    assert.equal(metrics.tenants.active, 3);

    const http = await admin.app.inject({
      method: 'GET',
      url: '/metrics/platform?days=7',
      headers: bearer,
    });
    assert.equal(http.statusCode, 200, http.body);
    assert.equal(bodyOf(http).totals.messages, 12);
    for (const days of ['0', '367', 'x']) {
      const refused = await admin.app.inject({
        method: 'GET',
        url: `/metrics/platform?days=${days}`,
        headers: bearer,
      });
      assert.equal(refused.statusCode, 400, days);
      assert.equal(bodyOf(refused).code, 'TENANTRY_ERR_HTTP_VALIDATION');
    }
  });
});

describe('noisy neighbours', () => {
  test('by rows: exact totals, largest first', async () => {
    const ranking = await analytics.noisyNeighbours({ by: 'rows', limit: 10 });
    assert.deepEqual(
      ranking.map((entry) => entry.slug),
      ['admin-c', 'admin-b', 'admin-a'],
    );
    for (const entry of ranking) {
      assert.equal(entry.value, (await analytics.tenantStats(entry.tenantId)).totalRows);
      assert.equal(entry.unit, 'rows');
    }
    const shares = ranking.reduce((sum, entry) => sum + (entry.share ?? 0), 0);
    assert.ok(Math.abs(shares - 1) < 1e-9, String(shares));
    assert.deepEqual(
      (await analytics.noisyNeighbours({ by: 'rows', limit: 1 })).map((entry) => entry.slug),
      ['admin-c'],
    );
  });

  test('by storage', async () => {
    const ranking = await analytics.noisyNeighbours({ by: 'storage', limit: 10 });
    assert.deepEqual(
      ranking.map((entry) => [entry.slug, entry.value]),
      [
        ['admin-b', 5000],
        ['admin-c', 300],
        ['admin-a', 100],
      ],
    );
    assert.equal(ranking[0]?.share, 5000 / 5400);
  });

  test('by requests and latency, from the public app through the recorder', async () => {
    const requests = [
      [a, 5],
      [c, 3],
      [b, 1],
    ] as const;
    for (const [workspace, times] of requests) {
      for (let index = 0; index < times; index++) {
        const response = await observed.app.inject({
          method: 'GET',
          url: '/v1/contacts',
          headers: workspace.headers,
        });
        assert.equal(response.statusCode, 200, response.body);
      }
    }
    // Requests without a workspace are not attributed to anyone.
    await observed.app.inject({ method: 'GET', url: '/healthz' });
    await observed.app.inject({ method: 'GET', url: '/v1/contacts' });
    const byRequests = await analytics.noisyNeighbours({ by: 'requests', limit: 10 });
    assert.deepEqual(
      byRequests.map((entry) => [entry.slug, entry.value]),
      [
        ['admin-a', 5],
        ['admin-c', 3],
        ['admin-b', 1],
      ],
    );
    const stats = await analytics.tenantStats(a.tenantId);
    assert.equal(stats.requests?.requests, 5);
    assert.ok((stats.requests?.p95Ms ?? 0) > 0);

    // Slow requests of b: its p95 is now the highest.
    for (let index = 0; index < 20; index++) requestMetrics.record(b.tenantId, 900, 200);
    const byLatency = await analytics.noisyNeighbours({ by: 'latency', limit: 10 });
    assert.equal(byLatency[0]?.slug, 'admin-b');
    assert.ok((byLatency[0]?.value ?? 0) > 500);
    assert.equal(byLatency[0]?.unit, 'ms');

    const http = await admin.app.inject({
      method: 'GET',
      url: '/metrics/noisy-neighbours?by=requests&limit=2',
      headers: bearer,
    });
    assert.equal(http.statusCode, 200, http.body);
    assert.deepEqual(
      bodyOf(http).tenants.map((entry: { slug: string }) => entry.slug),
      ['admin-b', 'admin-a'],
    );
    const exported = await admin.app.inject({
      method: 'GET',
      url: '/metrics/requests',
      headers: bearer,
    });
    assert.equal(exported.statusCode, 200);
    assert.equal(bodyOf(exported).tenants.length, 3);
    const bogus = await admin.app.inject({
      method: 'GET',
      url: '/metrics/noisy-neighbours?by=bogus',
      headers: bearer,
    });
    assert.equal(bogus.statusCode, 400);
  });

  test('without a recorder, ranking by requests is refused', async () => {
    const plain = await createAnalytics({ connectionString: testApp.database.analyticsUrl });
    try {
      await assert.rejects(plain.noisyNeighbours({ by: 'requests' }), (error) =>
        isTenantryError(error, 'TENANTRY_ERR_HTTP_VALIDATION'),
      );
      assert.equal((await plain.tenantStats(a.tenantId)).requests, null);
      assert.equal((await plain.platformMetrics({ days: 1 })).activeTenants, null);
    } finally {
      await plain.close();
    }
  });
});

describe('request recorder', () => {
  test('percentiles from the histogram', () => {
    const metrics = createRequestMetrics();
    const id = randomUUID();
    for (let ms = 1; ms <= 100; ms++) metrics.record(id, ms, ms === 100 ? 503 : 200);
    const stats = metrics.tenant(id);
    assert.equal(stats.requests, 100);
    assert.equal(stats.serverErrors, 1);
    assert.equal(stats.p50Ms, 50);
    assert.equal(stats.p95Ms, 95);
    assert.equal(stats.maxMs, 100);
    assert.equal(stats.meanMs, 50.5);
    assert.equal(metrics.tenant(randomUUID()).requests, 0);
  });

  test('memory stays bounded: tenants past maxTenants are only counted', () => {
    const metrics = createRequestMetrics({ maxTenants: 2 });
    for (let index = 0; index < 5; index++) metrics.record(randomUUID(), 1);
    const snapshot = metrics.snapshot();
    assert.equal(snapshot.tenants.length, 2);
    assert.equal(snapshot.untrackedRequests, 3);
    metrics.reset();
    assert.equal(metrics.snapshot().tenants.length, 0);
  });
});

describe('lifecycle routes', () => {
  test('suspend, resume and create go to the lifecycle object, and analytics see the result', async () => {
    const suspended = await admin.app.inject({
      method: 'POST',
      url: `/tenants/${b.tenantId}/suspend`,
      headers: bearer,
      payload: { reason: 'unpaid invoice' },
    });
    assert.equal(suspended.statusCode, 200, suspended.body);
    assert.equal(bodyOf(suspended).tenant.status, 'suspended');
    assert.equal(bodyOf(suspended).tenant.slug, 'admin-b');
    assert.equal(bodyOf(suspended).changed, true);
    assert.deepEqual(
      (await analytics.listTenants({ status: 'suspended' })).tenants.map((tenant) => tenant.slug),
      ['admin-b'],
    );
    const resumed = await admin.app.inject({
      method: 'POST',
      url: `/tenants/${b.tenantId}/resume`,
      headers: bearer,
    });
    assert.equal(resumed.statusCode, 200, resumed.body);
    assert.equal(bodyOf(resumed).tenant.status, 'active');
    assert.equal(bodyOf(resumed).jobsResumed, 0);

    const created = await admin.app.inject({
      method: 'POST',
      url: '/tenants',
      headers: bearer,
      payload: { slug: 'admin-d', name: 'Workspace D' },
    });
    assert.equal(created.statusCode, 201, created.body);
    assert.equal(bodyOf(created).slug, 'admin-d');
    const invalid = await admin.app.inject({
      method: 'POST',
      url: '/tenants',
      headers: bearer,
      payload: { slug: 'admin-e', name: 'E', owner: 'x' },
    });
    assert.equal(invalid.statusCode, 400);
    const bare = await admin.app.inject({
      method: 'POST',
      url: `/tenants/${a.tenantId}/suspend`,
      headers: bearer,
    });
    assert.equal(bare.statusCode, 200, bare.body);
    await admin.app.inject({
      method: 'POST',
      url: `/tenants/${a.tenantId}/resume`,
      headers: bearer,
    });
    assert.deepEqual(lifecycleCalls, [
      `suspend ${b.tenantId} unpaid invoice`,
      `resume ${b.tenantId}`,
      'create admin-d',
      `suspend ${a.tenantId} `,
      `resume ${a.tenantId}`,
    ]);
  });

  test('without a lifecycle object the listener is read-only', async () => {
    const readOnly = await createAdminServer({ analytics, token, port: 0 });
    try {
      const response = await readOnly.app.inject({
        method: 'POST',
        url: `/tenants/${a.tenantId}/suspend`,
        headers: bearer,
      });
      assert.equal(response.statusCode, 404);
      assert.equal((await analytics.getTenant(a.tenantId)).status, 'active');
    } finally {
      await readOnly.close();
    }
  });
});

describe("the reference app's admin listener", () => {
  test('off without a token, and the banner says how to turn it on', async () => {
    const config = loadAdminConfig({});
    assert.deepEqual(config, { token: undefined, host: '127.0.0.1', port: 3001 });
    const listener = await startAdminListener({
      config,
      database: { analyticsUrl: testApp.database.analyticsUrl },
    });
    assert.equal(listener.url, undefined);
    assert.match(listener.banner, /TENANTRY_ADMIN_TOKEN/);
    await listener.close();
  });

  test('bad settings are refused', async () => {
    for (const env of [
      { TENANTRY_ADMIN_TOKEN: 'short' },
      { TENANTRY_ADMIN_TOKEN: token, TENANTRY_ADMIN_PORT: '70000' },
      { TENANTRY_ADMIN_TOKEN: token, TENANTRY_ADMIN_PORT: 'x' },
    ]) {
      assert.throws(
        () => loadAdminConfig(env),
        (error) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
      );
    }
    // An external database without the analytics connection: refused, not served as the owner.
    await assert.rejects(
      startAdminListener({
        config: loadAdminConfig({ TENANTRY_ADMIN_TOKEN: token, TENANTRY_ADMIN_PORT: '0' }),
        database: { analyticsUrl: undefined },
      }),
      (error) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
    );
    // The app role is not a platform role.
    await assert.rejects(
      startAdminListener({
        config: loadAdminConfig({ TENANTRY_ADMIN_TOKEN: token, TENANTRY_ADMIN_PORT: '0' }),
        database: { analyticsUrl: testApp.database.appUrl },
      }),
      (error) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
    );
  });

  test('with a token it serves analytics on 127.0.0.1 as the analytics role', async () => {
    const listener = await startAdminListener({
      config: loadAdminConfig({ TENANTRY_ADMIN_TOKEN: token, TENANTRY_ADMIN_PORT: '0' }),
      database: { analyticsUrl: testApp.database.analyticsUrl },
      requestMetrics,
    });
    try {
      assert.match(listener.url ?? '', /^http:\/\/127\.0\.0\.1:\d+$/);
      assert.equal(listener.analytics?.role, 'tenantry_analytics');
      const response = await fetch(`${listener.url}/metrics/platform?days=1`, { headers: bearer });
      assert.equal(response.status, 200);
      const body = (await response.json()) as { tenants: { total: number } };
      assert.ok(body.tenants.total >= 3);
      assert.equal((await fetch(`${listener.url}/metrics/platform`)).status, 401);
    } finally {
      await listener.close();
    }
  });
});
