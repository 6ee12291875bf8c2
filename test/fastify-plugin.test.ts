import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { SignJWT } from 'jose';
import { sql } from 'kysely';
import {
  createApiKey,
  createTenantDirectory,
  createTenantry,
  isTenantryError,
  type TenantDirectory,
  type Tenantry,
  TenantryError,
} from 'tenantry';
import {
  createApiKeyStrategy,
  createJwtStrategy,
  createPathStrategy,
  type IdentificationStrategy,
  requireTenant,
  type TenantryFastifyOptions,
  tenantryFastify,
  toProblemDetails,
} from 'tenantry/fastify';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { type ReferenceDatabase, withClient } from './fixtures.ts';

const jwtSecret = randomBytes(32).toString('base64url');
const problemType = 'application/problem+json; charset=utf-8';

let database: TestDatabase;
let tenantry: Tenantry<ReferenceDatabase>;
let directory: TenantDirectory;
const tenants: Record<string, string> = {};
const userA = randomUUID();
const cleanups: (() => Promise<unknown>)[] = [];

async function admin(text: string, values: unknown[] = []): Promise<Record<string, unknown>[]> {
  return withClient(database.adminUrl, async (client) => (await client.query(text, values)).rows);
}

async function insertTenant(slug: string, status = 'active'): Promise<string> {
  const id = randomUUID();
  await admin('insert into tenantry.tenants (id, slug, name, status) values ($1, $2, $2, $3)', [
    id,
    slug,
    status,
  ]);
  tenants[slug] = id;
  return id;
}

async function sign(claims: { tenantId?: string; userId?: string; role?: string }) {
  return new SignJWT({
    ...(claims.tenantId === undefined ? {} : { tenant_id: claims.tenantId }),
    ...(claims.role === undefined ? {} : { role: claims.role }),
  })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(claims.userId ?? userA)
    .setExpirationTime('10m')
    .sign(new TextEncoder().encode(jwtSecret));
}

/** Authorization headers for `userA` in `tenantId`; `role` null signs a token without a role. */
async function bearer(tenantId: string, role: string | null = 'owner') {
  return {
    authorization: `Bearer ${await sign({ tenantId, ...(role === null ? {} : { role }) })}`,
  };
}

async function countRows(table: string, where: string, values: unknown[]): Promise<number> {
  const rows = await admin(`select count(*)::int as n from ${table} where ${where}`, values);
  return rows[0]?.n as number;
}

async function waitFor(what: string, condition: () => Promise<boolean>, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

function strategiesFor(target: TenantryFastifyOptions['tenantry']): IdentificationStrategy[] {
  return [
    createJwtStrategy({ secret: jwtSecret }),
    createApiKeyStrategy({ db: target.db }),
    createPathStrategy({ prefix: '/t' }),
  ];
}

interface Harness {
  readonly app: FastifyInstance;
  readonly calls: Map<string, number>;
}

/**
 * A small app on the plugin: the tenant routes are registered at `/v1` and `/t/:workspace/v1`.
 */
async function buildTestApp(
  options: Partial<TenantryFastifyOptions> = {},
  server: FastifyServerOptions = {},
  beforePlugin: (app: FastifyInstance) => void = () => undefined,
): Promise<Harness> {
  const target = (options.tenantry ?? tenantry) as Tenantry<ReferenceDatabase>;
  const app = Fastify(server);
  beforePlugin(app);
  const calls = new Map<string, number>();
  const count = (name: string) => calls.set(name, (calls.get(name) ?? 0) + 1);
  await app.register(tenantryFastify, {
    tenantry: target,
    directory,
    strategies: strategiesFor(target),
    closeResources: false,
    ...options,
  });
  const routes = async (scope: FastifyInstance) => {
    scope.get('/ping', async (request) => {
      count('ping');
      request.log.info('pong');
      return { tenantId: requireTenant(request).id };
    });
    scope.get('/me', async (request) => {
      const tenant = requireTenant(request);
      const row = await sql<{ user_id: string | null; tenant_id: string }>`
        select tenantry.current_user_id() as user_id, tenantry.current_tenant_id() as tenant_id`
        .execute(tenant.db)
        .then((result) => result.rows[0]);
      return {
        id: tenant.id,
        slug: tenant.slug,
        userId: tenant.userId ?? null,
        role: tenant.role ?? null,
        dbUserId: row?.user_id ?? null,
        dbTenantId: row?.tenant_id,
      };
    });
    scope.get('/hook', { config: { tenant: 'public' } }, async (request) => {
      count('hook');
      return { slug: requireTenant(request).slug, userId: request.tenant?.userId ?? null };
    });
    scope.get('/owners', { config: { roles: ['owner'] } }, async () => {
      count('owners');
      return { ok: true };
    });
    scope.post<{ Body: { name: string } }>(
      '/tags',
      {
        schema: {
          body: {
            type: 'object',
            required: ['name'],
            additionalProperties: false,
            properties: { name: { type: 'string', minLength: 1, maxLength: 60 } },
          },
        },
      },
      async (request, reply) => {
        const row = await requireTenant(request)
          .db.insertInto('tags')
          .values({ name: request.body.name })
          .returning('id')
          .executeTakeFirstOrThrow();
        return reply.code(201).send(row);
      },
    );
    scope.post<{ Body: { name: string } }>('/tags/throw', async (request) => {
      await requireTenant(request)
        .db.insertInto('tags')
        .values({ name: request.body.name })
        .execute();
      throw new Error('secret internals');
    });
    scope.post<{ Body: { name: string; status: number } }>(
      '/tags/status',
      async (request, reply) => {
        await requireTenant(request)
          .db.insertInto('tags')
          .values({ name: request.body.name })
          .execute();
        return reply.code(request.body.status).send({ status: request.body.status });
      },
    );
    scope.post<{ Body: { name: string } }>('/tags/via-service', async (request) => {
      const tenant = requireTenant(request);
      const selector =
        tenant.userId === undefined ? tenant.id : { tenantId: tenant.id, userId: tenant.userId };
      await target.withTenant(selector, (db) =>
        db.insertInto('tags').values({ name: request.body.name }).execute(),
      );
      throw new Error('after the service wrote');
    });
    scope.post<{ Body: { name: string } }>('/scratch', async (request, reply) => {
      const db = requireTenant(request).db;
      await sql`insert into scratch_items (name) values (${request.body.name})`.execute(db);
      await sql`insert into scratch_items (name) values (${request.body.name})`.execute(db);
      return reply.code(201).send({ inserted: 2 });
    });
    scope.get('/txids', async (request) => {
      const tenant = requireTenant(request);
      const txid = sql<{ txid: string }>`select txid_current()::text as txid`;
      const first = (await txid.execute(tenant.db)).rows[0]?.txid;
      const second = (await txid.execute(tenant.db)).rows[0]?.txid;
      const selector =
        tenant.userId === undefined ? tenant.id : { tenantId: tenant.id, userId: tenant.userId };
      const service = await target.withTenant(
        selector,
        async (db) => (await txid.execute(db)).rows[0]?.txid,
      );
      const shared = (await txid.execute(target.db)).rows[0]?.txid;
      return { first, second, service, shared };
    });
  };
  await app.register(routes, { prefix: '/v1' });
  await app.register(routes, { prefix: '/t/:workspace/v1' });
  app.get('/health', { config: { tenant: 'none' } }, async (request) => {
    count('health');
    return { tenant: request.tenant };
  });
  app.post(
    '/echo',
    {
      config: { tenant: 'none' },
      bodyLimit: 64,
      schema: {
        body: {
          type: 'object',
          required: ['name'],
          additionalProperties: false,
          properties: { name: { type: 'string', minLength: 1 }, age: { type: 'integer' } },
        },
      },
    },
    async (request) => request.body,
  );
  app.get('/boom', { config: { tenant: 'none' } }, async () => {
    throw new Error('secret internals');
  });
  cleanups.push(() => app.close());
  return { app, calls };
}

before(async () => {
  database = await createTestDatabase();
  await admin(`
    create table scratch_items (
      tenant_id uuid not null,
      id uuid not null default gen_random_uuid(),
      name text not null,
      primary key (tenant_id, id),
      constraint scratch_items_name_key unique (tenant_id, name) deferrable initially deferred
    );
    select tenantry.enable_tenant_isolation('scratch_items');`);
  tenantry = await createTenantry<ReferenceDatabase>({
    connectionString: database.appUrl,
    maxConnections: 4,
  });
  directory = await createTenantDirectory({ connectionString: database.appUrl });
  await insertTenant('alpha');
  await insertTenant('bravo');
  await insertTenant('frozen', 'suspended');
  await insertTenant('gone', 'deleted');
  await insertTenant('moving-out', 'moving');
});

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  await directory.close();
  await tenantry.close();
  await database.drop();
});

describe('unit of work lifecycle', () => {
  test('is lazy: a route that never queries takes no connection', async () => {
    const unreachable = await createTenantry<ReferenceDatabase>({
      connectionString: 'postgres://tenantry_app:x@127.0.0.1:1/nowhere',
      tenantTables: ['tags'],
    });
    cleanups.push(() => unreachable.close());
    const { app } = await buildTestApp({ tenantry: unreachable });
    const headers = await bearer(tenants.alpha as string);
    const ping = await app.inject({ url: '/v1/ping', headers });
    assert.equal(ping.statusCode, 200);
    assert.deepEqual(ping.json(), { tenantId: tenants.alpha });
    const write = await app.inject({
      method: 'POST',
      url: '/v1/tags',
      headers,
      payload: { name: 'never' },
    });
    assert.equal(write.statusCode, 503);
    assert.equal(write.headers['content-type'], problemType);
    assert.equal(write.headers['retry-after'], '2');
    assert.equal(write.json().code, 'TENANTRY_ERR_DB_UNAVAILABLE');
  });

  test('commits before the response is sent', async () => {
    const visibleWhenSent = Promise.withResolvers<number>();
    // Registered before the plugin, so the plugin's onResponse hooks wait for this one; and
    // onResponse runs after inject() resolves, hence the promise.
    const { app } = await buildTestApp({}, {}, (early) => {
      early.addHook('onResponse', async (request) => {
        const { name } = request.body as { name: string };
        visibleWhenSent.resolve(await countRows('tags', 'name = $1', [name]));
      });
    });
    const response = await app.inject({
      method: 'POST',
      url: '/v1/tags',
      headers: await bearer(tenants.alpha as string),
      payload: { name: 'committed-first' },
    });
    assert.equal(response.statusCode, 201);
    const { id } = response.json() as { id: string };
    assert.equal(
      await countRows('tags', 'tenant_id = $1 and id = $2', [tenants.alpha, id]),
      1,
      'visible to another connection as soon as the 201 arrives',
    );
    assert.equal(await visibleWhenSent.promise, 1, 'committed before the response was finished');
  });

  test('rolls back when the handler throws after writing', async () => {
    const { app } = await buildTestApp();
    const response = await app.inject({
      method: 'POST',
      url: '/v1/tags/throw',
      headers: await bearer(tenants.alpha as string),
      payload: { name: 'thrown-away' },
    });
    assert.equal(response.statusCode, 500);
    assert.equal(response.headers['content-type'], problemType);
    assert.equal(response.json().code, 'TENANTRY_ERR_HTTP_INTERNAL');
    assert.equal(await countRows('tags', 'name = $1', ['thrown-away']), 0);
  });

  test('rolls back on any error status the handler sets, commits on 2xx/3xx', async () => {
    const { app } = await buildTestApp();
    const headers = await bearer(tenants.alpha as string);
    for (const status of [500, 422, 409, 400, 404]) {
      const name = `status-${status}`;
      const response = await app.inject({
        method: 'POST',
        url: '/v1/tags/status',
        headers,
        payload: { name, status },
      });
      assert.equal(response.statusCode, status);
      assert.equal(await countRows('tags', 'name = $1', [name]), 0, `rolled back on ${status}`);
    }
    for (const status of [200, 202, 303]) {
      const name = `status-${status}`;
      const response = await app.inject({
        method: 'POST',
        url: '/v1/tags/status',
        headers,
        payload: { name, status },
      });
      assert.equal(response.statusCode, status);
      assert.equal(await countRows('tags', 'name = $1', [name]), 1, `committed on ${status}`);
    }
  });

  test('a failed commit is never answered with a 2xx', async () => {
    const { app } = await buildTestApp();
    const response = await app.inject({
      method: 'POST',
      url: '/v1/scratch',
      headers: await bearer(tenants.alpha as string),
      payload: { name: 'deferred-duplicate' },
    });
    assert.equal(response.statusCode, 409);
    assert.equal(response.headers['content-type'], problemType);
    const body = response.json();
    assert.equal(body.code, 'TENANTRY_ERR_DB_CONFLICT');
    assert.ok(!response.body.includes('scratch_items_name_key'));
    assert.ok(!response.body.includes('deferred-duplicate'));
    assert.equal(await countRows('scratch_items', 'tenant_id = $1', [tenants.alpha]), 0);
    const after = await app.inject({
      url: '/v1/ping',
      headers: await bearer(tenants.alpha as string),
    });
    assert.equal(after.statusCode, 200);
  });

  test('queries, services and tenantry.db share the request transaction', async () => {
    const { app } = await buildTestApp();
    const apiKey = await tenantry.withTenant(tenants.alpha as string, (db) =>
      createApiKey(db, { name: 'txids' }),
    );
    for (const headers of [await bearer(tenants.alpha as string), { 'x-api-key': apiKey.key }]) {
      const response = await app.inject({ url: '/v1/txids', headers });
      assert.equal(response.statusCode, 200, response.body);
      const { first, second, service, shared } = response.json();
      assert.ok(first);
      assert.equal(second, first);
      assert.equal(service, first);
      assert.equal(shared, first);
    }
    const viaService = await app.inject({
      method: 'POST',
      url: '/v1/tags/via-service',
      headers: { 'x-api-key': apiKey.key },
      payload: { name: 'service-write' },
    });
    assert.equal(viaService.statusCode, 500);
    assert.equal(
      await countRows('tags', 'name = $1', ['service-write']),
      0,
      'the service joined the request unit, so its write rolled back with it',
    );
  });

  test('pool hygiene: every connection is idle after many mixed requests', async () => {
    const hygieneUrl = new URL(database.appUrl);
    hygieneUrl.searchParams.set('application_name', 'plugin-hygiene');
    const small = await createTenantry<ReferenceDatabase>({
      connectionString: hygieneUrl.toString(),
      maxConnections: 2,
    });
    cleanups.push(() => small.close());
    const { app } = await buildTestApp({ tenantry: small });
    const headers = {
      alpha: await bearer(tenants.alpha as string),
      bravo: await bearer(tenants.bravo as string),
    };
    const responses = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        i % 5 !== 0 && i % 7 === 0
          ? app.inject({ url: '/v1/me', headers: i % 2 === 0 ? headers.alpha : headers.bravo })
          : app.inject({
              method: 'POST',
              url: i % 5 === 0 ? '/v1/tags/throw' : '/v1/tags',
              headers: i % 2 === 0 ? headers.alpha : headers.bravo,
              payload: { name: `hygiene-${i}` },
            }),
      ),
    );
    const statuses = responses.map((response) => response.statusCode);
    assert.equal(statuses.filter((status) => status === 500).length, 40);
    assert.equal(statuses.filter((status) => status === 201).length, 200 - 40 - 23);
    assert.equal(statuses.filter((status) => status === 200).length, 23, 'GET /me');
    assert.equal(
      await countRows('tags', `name like 'hygiene-%'`, []),
      137,
      'only the successful writes were committed',
    );
    const activity = await admin(
      `select state from pg_stat_activity
        where datname = current_database() and application_name = 'plugin-hygiene'`,
    );
    assert.ok(activity.length >= 1 && activity.length <= 2, `${activity.length} connections`);
    assert.deepEqual(
      activity.filter((row) => row.state !== 'idle'),
      [],
      'no connection is left in a transaction',
    );
    const final = await app.inject({
      method: 'POST',
      url: '/v1/tags',
      headers: headers.bravo,
      payload: { name: 'hygiene-final' },
    });
    assert.equal(final.statusCode, 201);
  });
});

describe('identification', () => {
  let app: FastifyInstance;
  let calls: Map<string, number>;

  before(async () => {
    ({ app, calls } = await buildTestApp());
  });

  test('no credentials: 401 and the handler never runs', async () => {
    const before = calls.get('ping') ?? 0;
    const response = await app.inject({ url: '/v1/ping' });
    assert.equal(response.statusCode, 401);
    assert.equal(response.headers['content-type'], problemType);
    assert.equal(response.json().code, 'TENANTRY_ERR_AUTH_REQUIRED');
    assert.equal(calls.get('ping') ?? 0, before);
  });

  test("a token for A on B's path: 403 mismatch, handler never runs", async () => {
    const before = calls.get('ping') ?? 0;
    const response = await app.inject({
      url: '/t/bravo/v1/ping',
      headers: await bearer(tenants.alpha as string),
    });
    assert.equal(response.statusCode, 403);
    assert.equal(response.json().code, 'TENANTRY_ERR_TENANT_MISMATCH');
    assert.equal(calls.get('ping') ?? 0, before);
    const agreeing = await app.inject({
      url: '/t/alpha/v1/ping',
      headers: await bearer(tenants.alpha as string),
    });
    assert.equal(agreeing.statusCode, 200);
    assert.equal(calls.get('ping'), before + 1);
  });

  test('a path alone does not satisfy an authenticated route', async () => {
    const before = calls.get('ping') ?? 0;
    const response = await app.inject({ url: '/t/alpha/v1/ping' });
    assert.equal(response.statusCode, 401);
    assert.equal(response.json().code, 'TENANTRY_ERR_AUTH_REQUIRED');
    assert.equal(calls.get('ping') ?? 0, before);
  });

  test('a public route accepts a path alone and has request.tenant', async () => {
    const response = await app.inject({ url: '/t/alpha/v1/hook' });
    assert.equal(response.statusCode, 200);
    assert.deepEqual(response.json(), { slug: 'alpha', userId: null });
    const unnamed = await app.inject({ url: '/v1/hook' });
    assert.equal(unnamed.statusCode, 400);
    assert.equal(unnamed.json().code, 'TENANTRY_ERR_TENANT_UNIDENTIFIED');
  });

  test("a 'none' route has no tenant and runs no strategy", async () => {
    for (const headers of [{}, { authorization: 'Bearer garbage' }, { 'x-api-key': 'garbage' }]) {
      const response = await app.inject({ url: '/health', headers });
      assert.equal(response.statusCode, 200);
      assert.deepEqual(response.json(), { tenant: null });
    }
    const tenantRoute = await app.inject({
      url: '/v1/ping',
      headers: { authorization: 'Bearer garbage' },
    });
    assert.equal(tenantRoute.statusCode, 401);
    assert.equal(tenantRoute.json().code, 'TENANTRY_ERR_AUTH_TOKEN_INVALID');
  });

  test('unknown tenants are 404', async () => {
    const slug = await app.inject({ url: '/t/nobody-here/v1/hook' });
    assert.equal(slug.statusCode, 404);
    assert.equal(slug.json().code, 'TENANTRY_ERR_TENANT_NOT_FOUND');
    const id = await app.inject({ url: '/v1/ping', headers: await bearer(randomUUID()) });
    assert.equal(id.statusCode, 404);
    assert.equal(id.json().code, 'TENANTRY_ERR_TENANT_NOT_FOUND');
  });

  test('tenant status is enforced', async () => {
    const suspended = await app.inject({
      url: '/v1/ping',
      headers: await bearer(tenants.frozen as string),
    });
    assert.equal(suspended.statusCode, 403);
    assert.equal(suspended.json().code, 'TENANTRY_ERR_TENANT_SUSPENDED');
    const deleted = await app.inject({ url: '/t/gone/v1/hook' });
    assert.equal(deleted.statusCode, 410);
    assert.equal(deleted.json().code, 'TENANTRY_ERR_TENANT_DELETED');
    const moving = await app.inject({
      url: '/v1/ping',
      headers: await bearer(tenants['moving-out'] as string),
    });
    assert.equal(moving.statusCode, 503);
    assert.equal(moving.headers['retry-after'], '5');
    assert.equal(moving.json().code, 'TENANTRY_ERR_TENANT_MOVING');
  });

  test('a status change is seen once the catalog notification arrives', async () => {
    const id = await insertTenant('flipping');
    const headers = await bearer(id);
    assert.equal((await app.inject({ url: '/v1/ping', headers })).statusCode, 200);
    await withClient(database.adminUrl, async (client) => {
      await client.query('set session_replication_role = replica');
      await client.query(`update tenantry.tenants set status = 'suspended' where id = $1`, [id]);
    });
    assert.equal(
      (await app.inject({ url: '/v1/ping', headers })).statusCode,
      200,
      'an unannounced change is not seen: the directory cache answers',
    );
    await admin(`update tenantry.tenants set status = 'suspended' where id = $1`, [id]);
    await waitFor('the suspension to be enforced', async () => {
      const response = await app.inject({ url: '/v1/ping', headers });
      return response.statusCode === 403;
    });
    const response = await app.inject({ url: '/v1/ping', headers });
    assert.equal(response.json().code, 'TENANTRY_ERR_TENANT_SUSPENDED');
    await admin(`update tenantry.tenants set status = 'active' where id = $1`, [id]);
    await waitFor('the reactivation to be seen', async () => {
      return (await app.inject({ url: '/v1/ping', headers })).statusCode === 200;
    });
  });

  test('config.roles refuses tokens without an allowed role', async () => {
    const before = calls.get('owners') ?? 0;
    for (const role of ['member', null]) {
      const response = await app.inject({
        url: '/v1/owners',
        headers: await bearer(tenants.alpha as string, role),
      });
      assert.equal(response.statusCode, 403, String(role));
      assert.equal(response.json().code, 'TENANTRY_ERR_AUTH_FORBIDDEN');
    }
    assert.equal(calls.get('owners') ?? 0, before);
    const owner = await app.inject({
      url: '/v1/owners',
      headers: await bearer(tenants.alpha as string, 'owner'),
    });
    assert.equal(owner.statusCode, 200);
  });

  test('request.tenant carries the identity, and the user id reaches the database', async () => {
    const response = await app.inject({
      url: '/t/alpha/v1/me',
      headers: await bearer(tenants.alpha as string, 'admin'),
    });
    assert.equal(response.statusCode, 200);
    assert.deepEqual(response.json(), {
      id: tenants.alpha,
      slug: 'alpha',
      userId: userA,
      role: 'admin',
      dbUserId: userA,
      dbTenantId: tenants.alpha,
    });
  });
});

describe('problem details', () => {
  let app: FastifyInstance;

  before(async () => {
    ({ app } = await buildTestApp());
  });

  function assertProblem(
    response: Awaited<ReturnType<FastifyInstance['inject']>>,
    status: number,
    code: string,
  ) {
    assert.equal(response.statusCode, status, response.body);
    assert.equal(response.headers['content-type'], problemType);
    const body = response.json();
    assert.equal(body.status, status);
    assert.equal(body.code, code);
    assert.equal(body.type, `urn:tenantry:error:${code}`);
    assert.equal(typeof body.title, 'string');
    assert.equal(typeof body.detail, 'string');
    return body;
  }

  test('schema validation failures are 400 with pointers', async () => {
    const response = await app.inject({ method: 'POST', url: '/echo', payload: { name: '' } });
    const body = assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    assert.ok(Array.isArray(body.errors) && body.errors.length >= 1);
    assert.ok(
      body.errors.some((issue: { pointer: string }) => issue.pointer === '/body/name'),
      JSON.stringify(body.errors),
    );
    const typed = await app.inject({
      method: 'POST',
      url: '/echo',
      payload: { name: 'x', age: 'old' },
    });
    const typedBody = assertProblem(typed, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    assert.deepEqual(
      typedBody.errors.map((issue: { pointer: string }) => issue.pointer),
      ['/body/age'],
    );
    const tenantRoute = await app.inject({
      method: 'POST',
      url: '/v1/tags',
      headers: await bearer(tenants.alpha as string),
      payload: { name: '' },
    });
    assertProblem(tenantRoute, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
  });

  test('malformed JSON is 400, a wrong content type 415, a large body 413', async () => {
    const malformed = await app.inject({
      method: 'POST',
      url: '/echo',
      headers: { 'content-type': 'application/json' },
      payload: '{"name": ',
    });
    assertProblem(malformed, 400, 'TENANTRY_ERR_HTTP_BAD_REQUEST');
    const xml = await app.inject({
      method: 'POST',
      url: '/echo',
      headers: { 'content-type': 'application/xml' },
      payload: '<name>x</name>',
    });
    assertProblem(xml, 415, 'TENANTRY_ERR_HTTP_UNSUPPORTED_MEDIA_TYPE');
    const large = await app.inject({
      method: 'POST',
      url: '/echo',
      payload: { name: 'x'.repeat(200) },
    });
    assertProblem(large, 413, 'TENANTRY_ERR_HTTP_PAYLOAD_TOO_LARGE');
  });

  test('unknown routes are a 404 problem, without credentials', async () => {
    const response = await app.inject({ url: '/no/such/route' });
    assertProblem(response, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
    const underTenant = await app.inject({ url: '/t/alpha/v1/nothing' });
    assertProblem(underTenant, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
  });

  test('unexpected errors are a 500 that says nothing of the cause', async () => {
    const response = await app.inject({ url: '/boom' });
    assertProblem(response, 500, 'TENANTRY_ERR_HTTP_INTERNAL');
    assert.ok(!response.body.includes('secret internals'));
    assert.ok(!response.body.includes('stack'));
  });

  test('a unique violation is a 409 without constraint names or values', async () => {
    const headers = await bearer(tenants.bravo as string);
    const first = await app.inject({
      method: 'POST',
      url: '/v1/tags',
      headers,
      payload: { name: 'dupe-value' },
    });
    assert.equal(first.statusCode, 201);
    const second = await app.inject({
      method: 'POST',
      url: '/v1/tags',
      headers,
      payload: { name: 'dupe-value' },
    });
    const body = assertProblem(second, 409, 'TENANTRY_ERR_DB_CONFLICT');
    assert.ok(!second.body.includes('dupe-value'));
    assert.ok(!second.body.includes('tags_tenant_id_name_key'));
    assert.ok(!second.body.includes('23505'));
    assert.equal(body.sqlState, undefined);
    assert.equal(await countRows('tags', 'name = $1', ['dupe-value']), 1);
  });
});

describe('plugin contract', () => {
  test('registering twice with the same Tenantry is a no-op', async () => {
    const { app } = await buildTestApp();
    await app.register(tenantryFastify, {
      tenantry,
      directory,
      strategies: strategiesFor(tenantry),
      closeResources: false,
    });
    await app.ready();
    const response = await app.inject({
      url: '/v1/ping',
      headers: await bearer(tenants.alpha as string),
    });
    assert.equal(response.statusCode, 200);
  });

  test('registering again with another Tenantry throws', async () => {
    const other = await createTenantry({ connectionString: database.appUrl });
    cleanups.push(() => other.close());
    const app = Fastify();
    cleanups.push(() => app.close());
    await app.register(tenantryFastify, {
      tenantry,
      directory,
      strategies: strategiesFor(tenantry),
      closeResources: false,
    });
    await assert.rejects(
      async () => {
        await app.register(tenantryFastify, {
          tenantry: other,
          directory,
          strategies: strategiesFor(other),
          closeResources: false,
        });
      },
      (error: unknown) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
    );
  });

  test('a route with a mistyped requirement, scope or roles is refused at start-up', async () => {
    for (const config of [
      { tenant: 'optional' },
      { tenant: 'Public' },
      { scope: ['contacts:read'] },
      { roles: 'owner' },
    ]) {
      const app = Fastify();
      cleanups.push(() => app.close());
      await app.register(tenantryFastify, {
        tenantry,
        directory,
        strategies: strategiesFor(tenantry),
        closeResources: false,
      });
      assert.throws(
        () => app.get('/typo', { config: config as never }, async () => 'reached'),
        (error: unknown) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
        JSON.stringify(config),
      );
    }
  });

  test('bad options are refused', async () => {
    const bad: Partial<TenantryFastifyOptions>[] = [
      { strategies: [] },
      { strategies: undefined as unknown as [] },
      { defaultRequirement: 'optional' as 'none' },
      { tenantry: undefined as unknown as Tenantry<unknown> },
      { directory: {} as TenantDirectory },
    ];
    for (const options of bad) {
      const app = Fastify();
      cleanups.push(() => app.close());
      await assert.rejects(
        async () => {
          await app.register(tenantryFastify, {
            tenantry,
            directory,
            strategies: strategiesFor(tenantry),
            closeResources: false,
            ...options,
          });
        },
        (error: unknown) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
        JSON.stringify(Object.keys(options)),
      );
    }
  });

  test('app.close() closes Tenantry and the directory', async () => {
    const ownTenantry = await createTenantry<ReferenceDatabase>({
      connectionString: database.appUrl,
    });
    const ownDirectory = await createTenantDirectory({ connectionString: database.appUrl });
    const { app } = await buildTestApp({
      tenantry: ownTenantry,
      directory: ownDirectory,
      closeResources: true,
    });
    const headers = await bearer(tenants.alpha as string);
    assert.equal((await app.inject({ url: '/v1/me', headers })).statusCode, 200);
    assert.equal(ownDirectory.isListening, true);
    await app.close();
    await assert.rejects(
      ownTenantry.withTenant(tenants.alpha as string, (db) =>
        db.selectFrom('tags').select('id').execute(),
      ),
    );
    assert.equal(ownDirectory.isListening, false);
    await assert.rejects(ownDirectory.byId(tenants.alpha as string));
  });

  test('with closeResources: false they stay open', async () => {
    const ownTenantry = await createTenantry<ReferenceDatabase>({
      connectionString: database.appUrl,
    });
    const ownDirectory = await createTenantDirectory({ connectionString: database.appUrl });
    cleanups.push(
      () => ownTenantry.close(),
      () => ownDirectory.close(),
    );
    const { app } = await buildTestApp({
      tenantry: ownTenantry,
      directory: ownDirectory,
      closeResources: false,
    });
    await app.close();
    const rows = await ownTenantry.withTenant(tenants.alpha as string, (db) =>
      db.selectFrom('tags').select('id').execute(),
    );
    assert.ok(Array.isArray(rows));
    assert.equal(ownDirectory.isListening, true);
    assert.equal((await ownDirectory.byId(tenants.alpha as string))?.slug, 'alpha');
  });

  test('every log line of a tenant request carries reqId and tenantId', async () => {
    const lines: Record<string, unknown>[] = [];
    const stream = new Writable({
      write(chunk, _encoding, callback) {
        for (const line of String(chunk).split('\n')) if (line !== '') lines.push(JSON.parse(line));
        callback();
      },
    });
    const { app } = await buildTestApp({}, { logger: { level: 'info', stream } });
    const ok = await app.inject({
      url: '/v1/ping',
      headers: await bearer(tenants.alpha as string),
    });
    assert.equal(ok.statusCode, 200);
    const failed = await app.inject({
      method: 'POST',
      url: '/v1/tags/throw',
      headers: await bearer(tenants.bravo as string),
      payload: { name: 'logged-failure' },
    });
    assert.equal(failed.statusCode, 500);
    const byRequest = Map.groupBy(
      lines.filter((line) => line.reqId !== undefined),
      (line) => line.reqId,
    );
    assert.equal(byRequest.size, 2);
    const expected = [tenants.alpha, tenants.bravo];
    for (const [index, requestLines] of [...byRequest.values()].entries()) {
      const messages = requestLines.map((line) => line.msg);
      assert.ok(messages.includes('request completed'), JSON.stringify(messages));
      // "incoming request" is logged by Fastify before any hook runs, so before identification.
      for (const line of requestLines.filter((entry) => entry.msg !== 'incoming request')) {
        assert.equal(line.tenantId, expected[index], `${line.msg}`);
      }
    }
    const handlerLine = lines.find((line) => line.msg === 'pong');
    assert.equal(handlerLine?.tenantId, tenants.alpha);
    const errorLine = lines.find((line) => line.level === 50);
    assert.equal(errorLine?.tenantId, tenants.bravo);
  });
});

describe('problem details members', () => {
  test('details never replace the standard members, and a 5xx carries no details', () => {
    const spoofed = toProblemDetails(
      new TenantryError('TENANTRY_ERR_TENANT_NOT_FOUND', 'No such workspace.', {
        details: { status: 200, code: 'OK', type: 'x', extra: 'kept' },
      }),
    );
    assert.equal(spoofed.status, 404);
    assert.equal(spoofed.code, 'TENANTRY_ERR_TENANT_NOT_FOUND');
    assert.equal(spoofed.type, 'urn:tenantry:error:TENANTRY_ERR_TENANT_NOT_FOUND');
    assert.equal(spoofed.extra, 'kept');
    const internal = toProblemDetails(
      new TenantryError('TENANTRY_ERR_CONTEXT_MISSING', 'No tenant context.', {
        details: { table: 'contacts' },
      }),
    );
    assert.equal(internal.status, 500);
    assert.equal(internal.table, undefined);
  });
});
