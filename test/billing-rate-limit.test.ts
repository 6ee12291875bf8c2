import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import Fastify, { type FastifyInstance, type LightMyRequestResponse } from 'fastify';
import {
  createTenantDirectory,
  createTenantry,
  isTenantryError,
  type TenantDirectory,
  type Tenantry,
  type TenantryErrorCode,
} from 'tenantry';
import {
  createMemoryRateLimitStore,
  createPlanLimitCache,
  createPostgresRateLimitStore,
  type RateLimitStore,
} from 'tenantry/billing';
import {
  createTrustedHeaderStrategy,
  type IdentificationStrategy,
  type TenantRateLimitOptions,
  tenantRateLimit,
  tenantryFastify,
} from 'tenantry/fastify';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { withClient } from './fixtures.ts';

const secret = randomBytes(24).toString('hex');
const minute = 60_000;
const problemType = 'application/problem+json; charset=utf-8';
const t0 = Date.UTC(2030, 0, 1);

let database: TestDatabase;
// biome-ignore lint/suspicious/noExplicitAny: these routes run no tenant-table queries
let tenantry: Tenantry<any>;
let directory: TenantDirectory;
const cleanups: (() => Promise<unknown>)[] = [];

async function admin<T = Record<string, unknown>>(text: string, values: unknown[] = []) {
  return withClient(
    database.adminUrl,
    async (client) => (await client.query(text, values)).rows as T[],
  );
}

async function createTenant(plan: string): Promise<string> {
  const id = randomUUID();
  await admin('insert into tenantry.tenants (id, slug, name, plan) values ($1, $2, $2, $3)', [
    id,
    `rl-${randomBytes(4).toString('hex')}`,
    plan,
  ]);
  return id;
}

function rejectsWith(expected: TenantryErrorCode): (error: unknown) => boolean {
  return (error) => {
    assert.ok(isTenantryError(error, expected), `expected ${expected}, got ${String(error)}`);
    return true;
  };
}

async function waitFor(what: string, condition: () => Promise<boolean>, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** A settable clock. */
function createClock(start = t0) {
  let current = start;
  return {
    now: () => current,
    advance(milliseconds: number) {
      current += milliseconds;
    },
  };
}

interface Harness {
  readonly app: FastifyInstance;
  /** Handler runs per tenant id. */
  readonly calls: Map<string, number>;
  get(tenantId: string, headers?: Record<string, string>): Promise<LightMyRequestResponse>;
}

async function buildApp(options: TenantRateLimitOptions): Promise<Harness> {
  const app = Fastify();
  const strategies: IdentificationStrategy[] = [
    createTrustedHeaderStrategy({ enabled: true, secret }),
  ];
  await app.register(tenantryFastify, { tenantry, directory, strategies, closeResources: false });
  await app.register(tenantRateLimit, options);
  const calls = new Map<string, number>();
  app.get('/ping', async (request) => {
    const id = request.tenant?.id as string;
    calls.set(id, (calls.get(id) ?? 0) + 1);
    return { ok: true };
  });
  app.get('/health', { config: { tenant: 'none' } }, async () => ({ ok: true }));
  cleanups.push(() => app.close());
  return {
    app,
    calls,
    get: (tenantId, headers = {}) =>
      app.inject({
        method: 'GET',
        url: '/ping',
        headers: { 'x-tenant-id': tenantId, 'x-internal-secret': secret, ...headers },
      }),
  };
}

before(async () => {
  database = await createTestDatabase();
  await admin(`
    insert into tenantry.plans (id, name) values ('rl-small', 'Small'), ('rl-big', 'Big'), ('rl-none', 'No API'),
      ('rl-unlimited', 'Unlimited');
    insert into tenantry.plan_limits (plan_id, metric, limit_value) values
      ('rl-small', 'api_requests_per_minute', 5),
      ('rl-big', 'api_requests_per_minute', 100),
      ('rl-none', 'api_requests_per_minute', 0);`);
  tenantry = await createTenantry({ connectionString: database.appUrl, maxConnections: 4 });
  directory = await createTenantDirectory({ connectionString: database.appUrl });
});

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  await directory?.close();
  await tenantry?.close();
  await database?.drop();
});

/** The contract both stores keep; `key` is fresh per test. */
function storeContract(name: string, open: () => Promise<RateLimitStore>) {
  describe(`${name} store (GCRA)`, () => {
    const key = () => `test:${randomUUID()}`;

    test('a full budget is spent at once, then one request per interval comes back', async () => {
      const store = await open();
      const k = key();
      const seen = [];
      for (let i = 0; i < 6; i++) seen.push(await store.hit(k, 5, minute, t0));
      assert.deepEqual(
        seen.map((result) => [result.allowed, result.remaining, result.limit]),
        [
          [true, 4, 5],
          [true, 3, 5],
          [true, 2, 5],
          [true, 1, 5],
          [true, 0, 5],
          [false, 0, 5],
        ],
      );
      assert.equal(seen[4]?.resetMs, minute, 'the whole budget is back one window after the burst');
      assert.equal(seen[5]?.retryAfterMs, 12_000, 'one request comes back every 60 s / 5');
      assert.equal((await store.hit(k, 5, minute, t0 + 11_999)).allowed, false);
      const next = await store.hit(k, 5, minute, t0 + 12_000);
      assert.deepEqual([next.allowed, next.remaining], [true, 0]);
      assert.equal((await store.hit(k, 5, minute, t0 + 12_000)).allowed, false);
      const later = await store.hit(k, 5, minute, t0 + 12_000 + minute);
      assert.deepEqual([later.allowed, later.remaining], [true, 4], 'a window later: full budget');
    });

    test('refused requests spend nothing, so hammering does not push the retry further', async () => {
      const store = await open();
      const k = key();
      for (let i = 0; i < 5; i++) await store.hit(k, 5, minute, t0);
      for (let i = 0; i < 50; i++) {
        const refused = await store.hit(k, 5, minute, t0 + i * 100);
        assert.equal(refused.allowed, false);
      }
      assert.equal((await store.hit(k, 5, minute, t0 + 12_000)).allowed, true);
    });

    test('a budget spent under another limit counts as as many requests, at most a window', async () => {
      const store = await open();
      const [upgraded, downgraded] = [key(), key()];
      for (let i = 0; i < 5; i++) await store.hit(upgraded, 5, minute, t0);
      const up = await store.hit(upgraded, 100, minute, t0);
      assert.deepEqual([up.allowed, up.remaining], [true, 94], '5 spent, this one, 94 left');
      for (let i = 0; i < 50; i++) await store.hit(downgraded, 100, minute, t0);
      const down = await store.hit(downgraded, 5, minute, t0);
      assert.deepEqual([down.allowed, down.retryAfterMs], [false, 12_000], 'spent, for one window');
    });

    test('keys are independent', async () => {
      const store = await open();
      const [a, b] = [key(), key()];
      for (let i = 0; i < 5; i++) await store.hit(a, 5, minute, t0);
      assert.equal((await store.hit(a, 5, minute, t0)).allowed, false);
      const other = await store.hit(b, 5, minute, t0);
      assert.deepEqual([other.allowed, other.remaining], [true, 4]);
    });

    test('limits whose interval is not a whole number of milliseconds keep their full burst', async () => {
      const store = await open();
      const k = key();
      const results = [];
      for (let i = 0; i < 8; i++) results.push((await store.hit(k, 7, minute, t0)).allowed);
      assert.deepEqual(results, [true, true, true, true, true, true, true, false]);
    });

    test('a limit of 0 refuses everything; bad arguments are refused', async () => {
      const store = await open();
      const refused = await store.hit(key(), 0, minute, t0);
      assert.deepEqual(
        [refused.allowed, refused.remaining, refused.retryAfterMs],
        [false, 0, minute],
      );
      await assert.rejects(
        store.hit('', 5, minute, t0),
        rejectsWith('TENANTRY_ERR_CONFIG_INVALID'),
      );
      await assert.rejects(
        store.hit(key(), 1.5, minute, t0),
        rejectsWith('TENANTRY_ERR_CONFIG_INVALID'),
      );
      await assert.rejects(store.hit(key(), 5, 0, t0), rejectsWith('TENANTRY_ERR_CONFIG_INVALID'));
      await assert.rejects(
        store.hit(key(), 5, minute, Number.NaN),
        rejectsWith('TENANTRY_ERR_CONFIG_INVALID'),
      );
    });
  });
}

storeContract('memory', async () => createMemoryRateLimitStore());
storeContract('PostgreSQL', async () => {
  const store = createPostgresRateLimitStore({
    connectionString: database.appUrl,
    pruneIntervalMs: 0,
  });
  cleanups.push(() => store.close());
  return store;
});

describe('memory store bounds', () => {
  test('beyond maxKeys, replenished keys go first, then the least recently used', async () => {
    const store = createMemoryRateLimitStore({ maxKeys: 2 });
    for (let i = 0; i < 5; i++) await store.hit('busy', 5, minute, t0);
    await store.hit('idle', 5, minute, t0);
    // At t0 + 20 s 'idle' is replenished and 'busy' is not: adding a key drops 'idle' only.
    await store.hit('new', 5, minute, t0 + 20_000);
    assert.equal((await store.hit('busy', 5, minute, t0 + 20_000)).remaining, 0, 'busy remembered');
    // Now all keys are live: the least recently used ('new') is forgotten, and comes back full.
    await store.hit('newer', 5, minute, t0 + 20_000);
    assert.equal((await store.hit('new', 5, minute, t0 + 20_000)).remaining, 4);
  });
});

describe('PostgreSQL store', () => {
  test('instances share budgets, and racing hits never admit more than the limit', async () => {
    const first = createPostgresRateLimitStore({
      connectionString: database.appUrl,
      pruneIntervalMs: 0,
    });
    const second = createPostgresRateLimitStore({
      connectionString: database.appUrl,
      pruneIntervalMs: 0,
    });
    cleanups.push(
      () => first.close(),
      () => second.close(),
    );
    const key = `test:${randomUUID()}`;
    const results = await Promise.all(
      Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? first : second).hit(key, 7, minute, t0)),
    );
    assert.equal(results.filter((result) => result.allowed).length, 7);
    assert.equal((await second.hit(key, 7, minute, t0)).allowed, false);
  });

  test('prune deletes replenished rows only and changes no decision', async () => {
    const store = createPostgresRateLimitStore({
      connectionString: database.appUrl,
      pruneIntervalMs: 0,
    });
    cleanups.push(() => store.close());
    const [spent, rested] = [`test:${randomUUID()}`, `test:${randomUUID()}`];
    await store.hit(rested, 5, minute, t0 - 2 * minute);
    for (let i = 0; i < 5; i++) await store.hit(spent, 5, minute, t0);
    assert.ok((await store.prune(t0)) >= 1);
    const rows = await admin<{ key: string }>(
      'select key from tenantry.rate_limits where key = any($1) order by key',
      [[spent, rested]],
    );
    assert.deepEqual(
      rows.map((row) => row.key),
      [spent],
    );
    assert.equal((await store.hit(spent, 5, minute, t0)).allowed, false);
  });

  test('the app role cannot touch the table itself, only spend through the function', async () => {
    const denied = await withClient(database.appUrl, async (client) => {
      const states = [];
      for (const statement of [
        'select * from tenantry.rate_limits',
        `insert into tenantry.rate_limits (key, tat) values ('x', 0)`,
        'delete from tenantry.rate_limits',
      ]) {
        states.push(
          await client.query(statement).then(
            () => 'ok',
            (error) => error.code,
          ),
        );
      }
      return states;
    });
    assert.deepEqual(denied, ['42501', '42501', '42501']);
    const persistence = await admin<{ relpersistence: string }>(
      `select relpersistence from pg_class where oid = 'tenantry.rate_limits'::regclass`,
    );
    assert.equal(persistence[0]?.relpersistence, 'u', 'the table is UNLOGGED');
  });
});

describe('plan limit cache', () => {
  test('reads each tenant’s limit (override, else plan; null unlimited) with the app or owner URL', async () => {
    const [small, free, overridden] = [
      await createTenant('rl-small'),
      await createTenant('rl-unlimited'),
      await createTenant('rl-small'),
    ];
    await admin(
      `insert into tenantry.tenant_limit_overrides (tenant_id, metric, limit_value)
       values ($1, 'api_requests_per_minute', 42)`,
      [overridden],
    );
    for (const connectionString of [database.appUrl, database.adminUrl]) {
      const limits = await createPlanLimitCache({ connectionString });
      cleanups.push(() => limits.close());
      assert.equal(await limits.get(small), 5);
      assert.equal(await limits.get(free), null);
      assert.equal(await limits.get(overridden), 42);
    }
  });

  test('a plan change reaches a listening cache at once; without the listener only the TTL would', async () => {
    const tenantId = await createTenant('rl-small');
    const listening = await createPlanLimitCache({
      connectionString: database.appUrl,
      ttlMs: 3_600_000,
    });
    const deaf = await createPlanLimitCache({
      connectionString: database.appUrl,
      ttlMs: 3_600_000,
      listen: false,
    });
    cleanups.push(
      () => listening.close(),
      () => deaf.close(),
    );
    assert.equal(listening.isListening, true);
    assert.equal(await listening.get(tenantId), 5);
    assert.equal(await deaf.get(tenantId), 5);
    await admin(`update tenantry.tenants set plan = 'rl-big' where id = $1`, [tenantId]);
    await waitFor(
      'the plan change to reach the cache',
      async () => (await listening.get(tenantId)) === 100,
    );
    assert.equal(await deaf.get(tenantId), 5, 'nothing but the notification refreshed it');
    // A plan's own limits changing ('*') drops every tenant on it.
    await admin(`update tenantry.plan_limits set limit_value = 101 where plan_id = 'rl-big'`);
    await waitFor(
      'the plan limits change to reach the cache',
      async () => (await listening.get(tenantId)) === 101,
    );
    await admin(`update tenantry.plan_limits set limit_value = 100 where plan_id = 'rl-big'`);
  });

  test('the TTL bounds staleness without notifications; lookups of one key share a query', async () => {
    const tenantId = await createTenant('rl-small');
    const clock = createClock();
    const limits = await createPlanLimitCache({
      connectionString: database.appUrl,
      ttlMs: 30_000,
      listen: false,
      now: clock.now,
    });
    cleanups.push(() => limits.close());
    assert.equal(await limits.get(tenantId), 5);
    await admin(`update tenantry.tenants set plan = 'rl-big' where id = $1`, [tenantId]);
    clock.advance(29_999);
    assert.equal(await limits.get(tenantId), 5);
    clock.advance(1);
    limits.invalidate();
    const lookups = [limits.get(tenantId), limits.get(tenantId)];
    assert.deepEqual(await Promise.all(lookups), [100, 100]);
    assert.equal(await limits.get(tenantId), 100);
    await assert.rejects(limits.get('not-a-uuid'), rejectsWith('TENANTRY_ERR_TENANT_ID_INVALID'));
    await assert.rejects(limits.get(tenantId, 'seats'), rejectsWith('TENANTRY_ERR_CONFIG_INVALID'));
  });

  test('when the database fails: the last value read is served; with none, 503', async () => {
    const known = await createTenant('rl-small');
    const unknown = await createTenant('rl-small');
    const clock = createClock();
    const limits = await createPlanLimitCache({
      connectionString: database.appUrl,
      listen: false,
      now: clock.now,
    });
    cleanups.push(() => limits.close());
    assert.equal(await limits.get(known), 5);
    await admin(
      'revoke execute on function tenantry.effective_limit(uuid, text) from tenantry_app',
    );
    try {
      clock.advance(3_600_000);
      assert.equal(await limits.get(known), 5, 'stale but known: served');
      await assert.rejects(limits.get(unknown), rejectsWith('TENANTRY_ERR_DB_UNAVAILABLE'));
    } finally {
      await admin('grant execute on function tenantry.effective_limit(uuid, text) to tenantry_app');
    }
    clock.advance(1_000);
    assert.equal(await limits.get(unknown), 5, 'recovers once the database answers');
  });
});

describe('tenantRateLimit plugin', () => {
  test('a tenant over its plan gets 429 with headers; other tenants are unaffected', async () => {
    const clock = createClock();
    const limits = await createPlanLimitCache({
      connectionString: database.appUrl,
      ttlMs: 3_600_000,
    });
    cleanups.push(() => limits.close());
    const { get, calls } = await buildApp({ limits, now: clock.now });
    const [a, unlimited, big] = [
      await createTenant('rl-small'),
      await createTenant('rl-unlimited'),
      await createTenant('rl-big'),
    ];

    for (let i = 0; i < 5; i++) {
      const response = await get(a);
      assert.equal(response.statusCode, 200);
      assert.equal(response.headers['ratelimit-policy'], '"tenant";q=5;w=60');
      assert.equal(response.headers.ratelimit, `"tenant";r=${4 - i};t=${12 * (i + 1)}`);
    }
    const refused = await get(a);
    assert.equal(refused.statusCode, 429);
    assert.equal(refused.headers['content-type'], problemType);
    assert.equal(refused.headers['retry-after'], '12');
    assert.equal(refused.headers['ratelimit-policy'], '"tenant";q=5;w=60');
    assert.equal(refused.headers.ratelimit, '"tenant";r=0;t=60');
    const body = refused.json();
    assert.equal(body.code, 'TENANTRY_ERR_RATE_LIMITED');
    assert.equal(body.status, 429);
    assert.deepEqual([body.limit, body.windowSeconds, body.retryAfterSeconds], [5, 60, 12]);
    assert.equal(calls.get(a), 5, 'the handler of the refused request did not run');

    for (let i = 0; i < 20; i++) {
      const response = await get(unlimited);
      assert.equal(response.statusCode, 200);
      assert.equal(response.headers.ratelimit, undefined, 'unlimited: no headers');
      assert.equal(response.headers['ratelimit-policy'], undefined);
    }
    const other = await get(big);
    assert.equal(other.statusCode, 200);
    assert.equal(other.headers.ratelimit, '"tenant";r=99;t=1', 'its budget did not move with A’s');
    assert.equal((await get(a)).statusCode, 429, 'A is still refused');
  });

  test('the budget comes back with time (injected clock)', async () => {
    const clock = createClock();
    const limits = await createPlanLimitCache({ connectionString: database.appUrl });
    cleanups.push(() => limits.close());
    const { get } = await buildApp({ limits, now: clock.now });
    const a = await createTenant('rl-small');
    for (let i = 0; i < 5; i++) assert.equal((await get(a)).statusCode, 200);
    assert.equal((await get(a)).statusCode, 429);
    clock.advance(12_000);
    assert.equal((await get(a)).statusCode, 200);
    assert.equal((await get(a)).statusCode, 429);
    clock.advance(minute);
    const statuses = [];
    for (let i = 0; i < 6; i++) statuses.push((await get(a)).statusCode);
    assert.deepEqual(statuses, [200, 200, 200, 200, 200, 429]);
  });

  test('a plan change or an override applies on the next request, without waiting for the TTL', async () => {
    const limits = await createPlanLimitCache({
      connectionString: database.appUrl,
      ttlMs: 3_600_000,
    });
    cleanups.push(() => limits.close());
    const { get } = await buildApp({ limits, now: createClock().now });
    const upgraded = await createTenant('rl-small');
    for (let i = 0; i < 5; i++) await get(upgraded);
    assert.equal((await get(upgraded)).statusCode, 429);
    await admin(`update tenantry.tenants set plan = 'rl-big' where id = $1`, [upgraded]);
    await waitFor(
      'the upgrade to reach the cache',
      async () => (await limits.get(upgraded)) === 100,
    );
    const after = await get(upgraded);
    assert.equal(after.statusCode, 200);
    assert.equal(after.headers['ratelimit-policy'], '"tenant";q=100;w=60');

    const capped = await createTenant('rl-big');
    assert.equal((await get(capped)).statusCode, 200);
    await admin(
      `insert into tenantry.tenant_limit_overrides (tenant_id, metric, limit_value)
       values ($1, 'api_requests_per_minute', 1)`,
      [capped],
    );
    await waitFor('the override to reach the cache', async () => (await limits.get(capped)) === 1);
    assert.equal((await get(capped)).statusCode, 429);
  });

  test('the PostgreSQL store shares a tenant’s budget across two app instances', async () => {
    const tenantId = await createTenant('rl-small');
    const instances = [];
    for (let i = 0; i < 2; i++) {
      const limits = await createPlanLimitCache({ connectionString: database.appUrl });
      const store = createPostgresRateLimitStore({
        connectionString: database.appUrl,
        pruneIntervalMs: 0,
      });
      cleanups.push(
        () => limits.close(),
        () => store.close(),
      );
      instances.push(await buildApp({ limits, store, now: createClock().now }));
    }
    const [first, second] = instances as [Harness, Harness];
    const statuses = [];
    for (let i = 0; i < 6; i++)
      statuses.push((await (i % 2 === 0 ? first : second).get(tenantId)).statusCode);
    assert.deepEqual(statuses, [200, 200, 200, 200, 200, 429]);
    assert.equal((await first.get(tenantId)).statusCode, 429);

    // Memory stores, by contrast, count per instance: the same traffic passes.
    const local = await createTenant('rl-small');
    const memoryInstances = [];
    for (let i = 0; i < 2; i++) {
      const limits = await createPlanLimitCache({ connectionString: database.appUrl });
      cleanups.push(() => limits.close());
      memoryInstances.push(await buildApp({ limits, now: createClock().now }));
    }
    const memoryStatuses = [];
    for (let i = 0; i < 6; i++) {
      memoryStatuses.push((await (memoryInstances[i % 2] as Harness).get(local)).statusCode);
    }
    assert.deepEqual(memoryStatuses, [200, 200, 200, 200, 200, 200]);
  });

  test('requests without a tenant, refused before identification or skipped are not counted', async () => {
    const limits = await createPlanLimitCache({ connectionString: database.appUrl });
    cleanups.push(() => limits.close());
    const { app, get } = await buildApp({
      limits,
      now: createClock().now,
      skip: (request) => request.headers['x-skip-limit'] === 'yes',
    });
    const tenantId = await createTenant('rl-small');
    for (let i = 0; i < 10; i++) {
      assert.equal((await get(tenantId, { 'x-internal-secret': 'wrong' })).statusCode, 401);
      assert.equal((await get(tenantId, { 'x-skip-limit': 'yes' })).statusCode, 200);
      const health = await app.inject({
        method: 'GET',
        url: '/health',
        headers: { 'x-tenant-id': tenantId },
      });
      assert.equal(health.statusCode, 200);
      assert.equal(health.headers.ratelimit, undefined);
      assert.equal((await app.inject({ method: 'GET', url: '/nowhere' })).statusCode, 404);
    }
    const first = await get(tenantId);
    assert.equal(first.headers.ratelimit, '"tenant";r=4;t=12', 'the tenant’s budget is untouched');
  });

  test('a plan with a limit of 0 refuses every request', async () => {
    const limits = await createPlanLimitCache({ connectionString: database.appUrl });
    cleanups.push(() => limits.close());
    const { get, calls } = await buildApp({ limits, now: createClock().now });
    const tenantId = await createTenant('rl-none');
    const response = await get(tenantId);
    assert.equal(response.statusCode, 429);
    assert.equal(response.headers['retry-after'], '60');
    assert.equal(calls.get(tenantId), undefined);
  });

  test('failing limits refuse with 503 by default, and let requests through with failOpen', async () => {
    const failing = async () => {
      throw new Error('limits are down');
    };
    const closed = await buildApp({ limits: failing });
    const tenantId = await createTenant('rl-small');
    const refused = await closed.get(tenantId);
    assert.equal(refused.statusCode, 503);
    assert.equal(refused.json().code, 'TENANTRY_ERR_DB_UNAVAILABLE');
    assert.equal(closed.calls.get(tenantId), undefined);
    const open = await buildApp({ limits: failing, failOpen: true });
    const passed = await open.get(tenantId);
    assert.equal(passed.statusCode, 200);
    assert.equal(passed.headers.ratelimit, undefined);
  });

  test('refuses bad options and registration without the Tenantry plugin', async () => {
    const limits = async () => 5;
    for (const options of [
      { limits: 'nope' },
      { limits, windowMs: 1500 },
      { limits, windowMs: 0 },
      { limits, skip: 'yes' },
    ]) {
      const app = Fastify();
      await app.register(tenantryFastify, {
        tenantry,
        directory,
        strategies: [createTrustedHeaderStrategy({ enabled: true, secret })],
        closeResources: false,
      });
      await assert.rejects(
        (async () => {
          await app.register(tenantRateLimit, options as unknown as TenantRateLimitOptions);
          await app.ready();
        })(),
        rejectsWith('TENANTRY_ERR_CONFIG_INVALID'),
      );
      await app.close();
    }
    const bare = Fastify();
    await assert.rejects(async () => {
      await bare.register(tenantRateLimit, { limits });
      await bare.ready();
    }, /tenantry/);
    await bare.close();
  });
});
