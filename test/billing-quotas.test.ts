import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { type Generated, type Kysely, sql } from 'kysely';
import {
  createTenantry,
  isTenantryError,
  parseTenantId,
  type Tenantry,
  type TenantryErrorCode,
} from 'tenantry';
import {
  type BillingAdmin,
  createBillingAdmin,
  createPlanLimitCache,
  createQuotas,
  planJobLimits,
  type Quotas,
} from 'tenantry/billing';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { withClient } from './fixtures.ts';

// A scratch tenant table counted under test metrics, so nothing here depends on the app's plans.
interface ItemsDatabase {
  quota_items: { tenant_id: Generated<string>; id: string; size: number; live: boolean };
}

let database: TestDatabase;
let tenantry: Tenantry<ItemsDatabase>;
let admin: BillingAdmin;
const quotas: Quotas = createQuotas();

async function asAdmin<T = Record<string, unknown>>(text: string, values: unknown[] = []) {
  return withClient(
    database.adminUrl,
    async (client) => (await client.query(text, values)).rows as T[],
  );
}

async function createTenant(plan = 'free'): Promise<string> {
  const id = randomUUID();
  await asAdmin('insert into tenantry.tenants (id, slug, name, plan) values ($1, $2, $2, $3)', [
    id,
    `quota-${randomBytes(4).toString('hex')}`,
    plan,
  ]);
  return id;
}

function code(expected: TenantryErrorCode): (error: unknown) => boolean {
  return (error) => {
    assert.ok(isTenantryError(error, expected), `expected ${expected}, got ${String(error)}`);
    return true;
  };
}

async function counter(tenantId: string, metric: string): Promise<number> {
  const rows = await asAdmin<{ used: string }>(
    `select coalesce(sum(used), 0)::text as used from tenantry.usage_counters
      where tenant_id = $1 and metric = $2`,
    [tenantId, metric],
  );
  return Number(rows[0]?.used ?? 0);
}

async function itemCount(tenantId: string): Promise<number> {
  const rows = await asAdmin<{ n: string }>(
    'select count(*)::text as n from quota_items where tenant_id = $1',
    [tenantId],
  );
  return Number(rows[0]?.n);
}

async function events(tenantId: string, type: string) {
  return asAdmin<{ id: string; data: Record<string, unknown> }>(
    'select id, data from tenantry.outbox_events where tenant_id = $1 and type = $2 order by created_at',
    [tenantId, type],
  );
}

function insertItems(tenantId: string, count: number, size = 1) {
  return tenantry.withTenant(tenantId, (db) =>
    db
      .insertInto('quota_items')
      .values(Array.from({ length: count }, () => ({ id: randomUUID(), size, live: true })))
      .execute(),
  );
}

before(async () => {
  database = await createTestDatabase();
  await asAdmin(`
    insert into tenantry.metrics (name, kind, unit) values
      ('test_items', 'count', 'item'), ('test_bytes', 'count', 'byte'), ('test_calls', 'period', 'call'),
      ('test_tokens', 'count', 'token');
    create table quota_items (
      tenant_id uuid not null, id uuid not null, size integer not null default 1,
      live boolean not null default true, primary key (tenant_id, id));
    select tenantry.enable_tenant_isolation('quota_items');
    select tenantry.attach_quota('quota_items', 'test_items');
    select tenantry.attach_quota('quota_items', 'test_bytes', 'n.size', 'n.live');
    -- Items of size 7 also count as calls (a period metric counted from rows).
    select tenantry.attach_quota('quota_items', 'test_calls', '1', 'n.size = 7', $$'item:' || n.id$$);
  `);
  admin = createBillingAdmin({ connectionString: database.adminUrl });
  await admin.definePlan({
    id: 'test-small',
    name: 'Small',
    limits: { test_items: 1000, test_bytes: 100_000, test_calls: 50, test_tokens: 3 },
  });
  await admin.definePlan({ id: 'test-big', name: 'Big', limits: { test_items: 5000 } });
  tenantry = await createTenantry<ItemsDatabase>({
    connectionString: database.appUrl,
    maxConnections: 20,
    tenantTables: ['quota_items'],
  });
});

after(async () => {
  await tenantry.close();
  await admin.close();
  await database.drop();
});

describe('atomic quotas', () => {
  test('200 concurrent creates with 900 of 1,000 used: exactly 100 succeed, counter equals rows', async () => {
    const tenantId = await createTenant('test-small');
    await insertItems(tenantId, 900);
    assert.equal(await counter(tenantId, 'test_items'), 900);
    const outcomes = await Promise.allSettled(
      Array.from({ length: 200 }, () => insertItems(tenantId, 1)),
    );
    const succeeded = outcomes.filter((outcome) => outcome.status === 'fulfilled').length;
    const refused = outcomes.flatMap((outcome) =>
      outcome.status === 'rejected' ? [outcome.reason] : [],
    );
    assert.equal(succeeded, 100);
    assert.equal(refused.length, 100);
    for (const error of refused) {
      assert.ok(isTenantryError(error, 'TENANTRY_ERR_QUOTA_EXCEEDED'), String(error));
      assert.equal(error.details?.metric, 'test_items');
      assert.equal(error.details?.limit, 1000);
      assert.equal(error.details?.requested, 1);
    }
    assert.equal(await itemCount(tenantId), 1000);
    assert.equal(await counter(tenantId, 'test_items'), 1000);
  });

  test('the monthly (period) limit holds under concurrency through recordUsage', async () => {
    const tenantId = await createTenant('test-small');
    for (let index = 0; index < 45; index++) {
      await tenantry.withTenant(tenantId, (db) =>
        quotas.recordUsage(db, { metric: 'test_calls', idempotencyKey: `seed-${index}` }),
      );
    }
    const outcomes = await Promise.allSettled(
      Array.from({ length: 30 }, (_, index) =>
        tenantry.withTenant(tenantId, (db) =>
          quotas.recordUsage(db, { metric: 'test_calls', idempotencyKey: `race-${index}` }),
        ),
      ),
    );
    assert.equal(outcomes.filter((outcome) => outcome.status === 'fulfilled').length, 5);
    for (const outcome of outcomes) {
      if (outcome.status === 'rejected') {
        assert.ok(isTenantryError(outcome.reason, 'TENANTRY_ERR_QUOTA_EXCEEDED'));
      }
    }
    const [ledger] = await asAdmin<{ n: string }>(
      `select sum(quantity)::text as n from tenantry.usage_events
        where tenant_id = $1 and metric = 'test_calls'`,
      [tenantId],
    );
    assert.equal(Number(ledger?.n), 50);
    assert.equal(await counter(tenantId, 'test_calls'), 50);
  });

  test('a rolled-back transaction releases what it consumed', async () => {
    const tenantId = await createTenant('test-small');
    await insertItems(tenantId, 10);
    await assert.rejects(
      tenantry.withTenant(tenantId, async (db) => {
        await db
          .insertInto('quota_items')
          .values({ id: randomUUID(), size: 5, live: true })
          .execute();
        await quotas.consume(db, 'test_tokens', 2);
        throw new Error('the request failed later');
      }),
      /failed later/,
    );
    assert.equal(await counter(tenantId, 'test_items'), 10);
    assert.equal(await counter(tenantId, 'test_bytes'), 10);
    assert.equal(await counter(tenantId, 'test_tokens'), 0);
  });

  test('a code path that skips the service layer still cannot pass the limit', async () => {
    const tenantId = await createTenant('test-small');
    await insertItems(tenantId, 995);
    // One statement of ten rows with five left: the whole statement is refused.
    await assert.rejects(insertItems(tenantId, 10), code('TENANTRY_ERR_QUOTA_EXCEEDED'));
    assert.equal(await itemCount(tenantId), 995);
    await insertItems(tenantId, 5);
    await assert.rejects(insertItems(tenantId, 1), code('TENANTRY_ERR_QUOTA_EXCEEDED'));
    // Deleting releases, so the next create fits again.
    await tenantry.withTenant(tenantId, (db) =>
      db
        .deleteFrom('quota_items')
        .where('id', 'in', db.selectFrom('quota_items').select('id').limit(3))
        .execute(),
    );
    assert.equal(await counter(tenantId, 'test_items'), 997);
    await insertItems(tenantId, 3);
    assert.equal(await itemCount(tenantId), 1000);
  });

  test('amounts and conditions follow updates (bytes counted only while live)', async () => {
    const tenantId = await createTenant('test-small');
    await admin.setLimitOverride(tenantId, 'test_bytes', 100);
    await insertItems(tenantId, 4, 20);
    assert.equal(await counter(tenantId, 'test_bytes'), 80);
    await tenantry.withTenant(tenantId, (db) =>
      db.updateTable('quota_items').set({ live: false }).where('size', '=', 20).execute(),
    );
    assert.equal(await counter(tenantId, 'test_bytes'), 0);
    // Growing past the limit by an update is refused like an insert.
    await assert.rejects(
      tenantry.withTenant(tenantId, (db) =>
        db.updateTable('quota_items').set({ live: true, size: 30 }).execute(),
      ),
      code('TENANTRY_ERR_QUOTA_EXCEEDED'),
    );
    assert.equal(await counter(tenantId, 'test_bytes'), 0);
  });

  test('the service API: consume, release, check and entitlements', async () => {
    const tenantId = await createTenant('test-small');
    await tenantry.withTenant(tenantId, async (db) => {
      assert.deepEqual(
        { ...(await quotas.consume(db, 'test_tokens', 2)) },
        {
          metric: 'test_tokens',
          limit: 3,
          used: 2,
        },
      );
      const check = await quotas.check(db, 'test_tokens', 2);
      assert.equal(check.allowed, false);
      assert.equal(check.limit, 3);
      assert.equal(check.used, 2);
      assert.equal(check.remaining, 1);
      assert.equal((await quotas.check(db, 'test_tokens', 1)).allowed, true);
    });
    // A refused statement fails its unit of work, so the refusal runs in one of its own.
    await assert.rejects(
      tenantry.withTenant(tenantId, (db) => quotas.consume(db, 'test_tokens', 2)),
      (error: unknown) => {
        assert.ok(isTenantryError(error, 'TENANTRY_ERR_QUOTA_EXCEEDED'));
        assert.deepEqual(
          { ...error.details, sqlState: undefined },
          { sqlState: undefined, metric: 'test_tokens', limit: 3, used: 2, requested: 2 },
        );
        return true;
      },
    );
    assert.equal(await counter(tenantId, 'test_tokens'), 2);
    await tenantry.withTenant(tenantId, async (db) => {
      assert.equal((await quotas.release(db, 'test_tokens', 1)).used, 1);
      assert.equal((await quotas.release(db, 'test_tokens', 5)).used, 0);
      const all = await quotas.entitlements(db);
      const tokens = all.find((entry) => entry.metric === 'test_tokens');
      assert.equal(tokens?.limit, 3);
      assert.equal(tokens?.used, 0);
      const contacts = all.find((entry) => entry.metric === 'contacts');
      assert.equal(contacts?.limit, null, 'a metric the plan leaves out is unlimited');
      assert.equal(all.find((entry) => entry.metric === 'api_requests_per_minute')?.used, null);
      assert.ok(tokens !== undefined && tokens.periodStart < tokens.periodEnd);
    });
  });

  test('bad input is refused before anything is written', async () => {
    const tenantId = await createTenant('test-small');
    const calls: ((db: Kysely<ItemsDatabase>) => Promise<unknown>)[] = [
      (db) => quotas.consume(db, 'no_such_metric'),
      (db) => quotas.consume(db, 'Seats'),
      (db) => quotas.consume(db, 'test_tokens', 0),
      (db) => quotas.consume(db, 'test_tokens', 1.5),
      (db) => quotas.consume(db, 'test_calls'),
      // Counted from quota_items' rows: consuming or releasing it by hand is refused.
      (db) => quotas.consume(db, 'test_items'),
      (db) => quotas.release(db, 'test_items', 5),
      (db) => quotas.recordUsage(db, { metric: 'test_tokens', idempotencyKey: 'k' }),
      (db) => quotas.recordUsage(db, { metric: 'test_calls', idempotencyKey: '' }),
      (db) =>
        quotas.recordUsage(db, {
          metric: 'test_calls',
          idempotencyKey: 'old',
          occurredAt: new Date('2001-01-01T00:00:00Z'),
        }),
    ];
    for (const call of calls) {
      await assert.rejects(tenantry.withTenant(tenantId, call), code('TENANTRY_ERR_USAGE_INVALID'));
    }
    assert.equal(await counter(tenantId, 'test_tokens'), 0);
    await assert.rejects(
      quotas.consume(tenantry.db, 'test_tokens'),
      code('TENANTRY_ERR_CONTEXT_MISSING'),
    );
  });
});

describe('metering', () => {
  test('usage events with a repeated idempotency key count once', async () => {
    const tenantId = await createTenant('test-small');
    const first = await tenantry.withTenant(tenantId, (db) =>
      quotas.recordUsage(db, { metric: 'test_calls', quantity: 3, idempotencyKey: 'call-1' }),
    );
    assert.deepEqual({ ...first }, { recorded: true, allowed: true, limit: 50, used: 3 });
    const again = await tenantry.withTenant(tenantId, (db) =>
      quotas.recordUsage(db, { metric: 'test_calls', quantity: 3, idempotencyKey: 'call-1' }),
    );
    assert.deepEqual({ ...again }, { recorded: false, allowed: true, limit: 50, used: 3 });
    const usage = await tenantry.withTenant(tenantId, (db) => quotas.periodUsage(db));
    assert.deepEqual(
      usage.metrics.find((row) => row.metric === 'test_calls'),
      { metric: 'test_calls', quantity: 3, events: 1 },
    );
    // Rows counted by a trigger record one event per matching row, keyed by the row.
    await insertItems(tenantId, 2, 7);
    await insertItems(tenantId, 4, 1);
    assert.equal(await counter(tenantId, 'test_calls'), 5);
  });

  test('metering without enforcement records past the limit and says so', async () => {
    const tenantId = await createTenant('test-small');
    await asAdmin(
      `insert into tenantry.tenant_limit_overrides (tenant_id, metric, limit_value) values ($1, 'test_calls', 2)`,
      [tenantId],
    );
    const results = [];
    for (const key of ['a', 'b', 'c']) {
      results.push(
        await tenantry.withTenant(tenantId, (db) =>
          quotas.recordUsage(db, { metric: 'test_calls', idempotencyKey: key, enforce: false }),
        ),
      );
    }
    assert.deepEqual(
      results.map((result) => [result.allowed, result.used]),
      [
        [true, 1],
        [true, 2],
        [false, 3],
      ],
    );
  });

  test('usage events are append-only for the app role and invisible across tenants', async () => {
    const tenantA = await createTenant('test-small');
    const tenantB = await createTenant('test-small');
    await tenantry.withTenant(tenantA, (db) =>
      quotas.recordUsage(db, { metric: 'test_calls', idempotencyKey: 'secret-a' }),
    );
    const seenByB = await tenantry.withTenant(tenantB, (db) =>
      sql<{ n: number }>`select count(*)::int as n from tenantry.usage_events`.execute(db),
    );
    assert.equal(seenByB.rows[0]?.n, 0);
    for (const statement of [
      sql`update tenantry.usage_events set quantity = 1000`,
      sql`delete from tenantry.usage_events`,
      sql`insert into tenantry.usage_events (metric, quantity, occurred_at, period_start, idempotency_key)
          values ('test_calls', 1, now(), now(), 'forged')`,
      sql`update tenantry.usage_counters set used = 0`,
      sql`insert into tenantry.usage_counters (metric, period_start, used) values ('test_items', '-infinity', 0)`,
      sql`select * from tenantry.apply_usage(${tenantB}::uuid, 'test_items', '-infinity', -100, 'force')`,
      sql`insert into tenantry.tenant_limit_overrides (metric, limit_value) values ('test_items', null)`,
      sql`update tenantry.plan_limits set limit_value = null`,
      sql`update tenantry.tenants set plan = 'test-big'`,
      sql`select tenantry.effective_limit(${tenantB}::uuid, 'test_items')`,
      sql`select tenantry.emit_event('usage.threshold_reached', '{}')`,
      sql`select tenantry.emit_outbox_event(${tenantA}::uuid, 'period.closed', '{}')`,
    ]) {
      await assert.rejects(
        tenantry.withTenant(tenantA, (db) => statement.execute(db)),
        (error: unknown) => isTenantryError(error),
        statement.compile(tenantry.db).sql,
      );
    }
    assert.equal(await counter(tenantA, 'test_calls'), 1);
    assert.equal(
      (
        await asAdmin('select 1 from tenantry.tenants where id = $1 and plan = $2', [
          tenantA,
          'test-small',
        ])
      ).length,
      1,
    );
  });
});

describe('billing events', () => {
  test('80 % and 100 % thresholds are emitted once per period, not by a rolled-back crossing', async () => {
    const tenantId = await createTenant('test-small');
    await asAdmin(
      `insert into tenantry.tenant_limit_overrides (tenant_id, metric, limit_value) values ($1, 'test_items', 10)`,
      [tenantId],
    );
    await insertItems(tenantId, 7);
    await assert.rejects(
      tenantry.withTenant(tenantId, async (db: Kysely<ItemsDatabase>) => {
        await db
          .insertInto('quota_items')
          .values({ id: randomUUID(), size: 1, live: true })
          .execute();
        throw new Error('rolled back');
      }),
    );
    assert.deepEqual(await events(tenantId, 'usage.threshold_reached'), []);
    await insertItems(tenantId, 1);
    await insertItems(tenantId, 2);
    // Going down and up again in the same period does not repeat them.
    await tenantry.withTenant(tenantId, (db) => db.deleteFrom('quota_items').execute());
    await insertItems(tenantId, 10);
    const thresholds = await events(tenantId, 'usage.threshold_reached');
    assert.deepEqual(
      thresholds.map((event) => [event.data.metric, event.data.threshold, event.data.used]),
      [
        ['test_items', 80, 8],
        ['test_items', 100, 10],
      ],
    );
  });

  test('quota.exceeded is emitted once per period although the refused transaction rolled back', async () => {
    const tenantId = await createTenant('test-small');
    await asAdmin(
      `insert into tenantry.tenant_limit_overrides (tenant_id, metric, limit_value) values ($1, 'test_items', 1)`,
      [tenantId],
    );
    await insertItems(tenantId, 1);
    await assert.rejects(insertItems(tenantId, 1), code('TENANTRY_ERR_QUOTA_EXCEEDED'));
    await assert.rejects(insertItems(tenantId, 2), code('TENANTRY_ERR_QUOTA_EXCEEDED'));
    const exceeded = await events(tenantId, 'quota.exceeded');
    assert.equal(exceeded.length, 1);
    assert.equal(exceeded[0]?.data.metric, 'test_items');
    assert.equal(exceeded[0]?.data.limit, 1);
    assert.equal(exceeded[0]?.data.used, 1);
    assert.equal(exceeded[0]?.data.requested, 1);
    assert.equal(await itemCount(tenantId), 1);
  });

  test('a plan change takes effect at once and emits tenant.plan_changed', async () => {
    const tenantId = await createTenant('test-small');
    await insertItems(tenantId, 1000);
    await assert.rejects(insertItems(tenantId, 1), code('TENANTRY_ERR_QUOTA_EXCEEDED'));
    await admin.setTenantPlan(tenantId, 'test-big');
    await insertItems(tenantId, 1);
    const changed = await events(tenantId, 'tenant.plan_changed');
    assert.deepEqual(
      changed.map((event) => event.data),
      [{ previousPlan: 'test-small', plan: 'test-big' }],
    );
    await admin.setLimitOverride(tenantId, 'test_items', 1001);
    await assert.rejects(insertItems(tenantId, 1), code('TENANTRY_ERR_QUOTA_EXCEEDED'));
    await admin.setLimitOverride(tenantId, 'test_items', null);
    await insertItems(tenantId, 1);
    assert.equal(await admin.clearLimitOverride(tenantId, 'test_items'), true);
    const report = await admin.usageReport({ tenantId, metric: 'test_items' });
    assert.deepEqual(
      report.map((row) => [row.plan, row.limit, row.used]),
      [['test-big', 5000, 1002]],
    );
    await assert.rejects(
      admin.setTenantPlan(tenantId, 'no-such-plan'),
      code('TENANTRY_ERR_PLAN_NOT_FOUND'),
    );
    await assert.rejects(
      admin.definePlan({ id: 'x', name: 'X', limits: { unknown_metric: 1 } }),
      code('TENANTRY_ERR_PLAN_INVALID'),
    );
    await assert.rejects(
      admin.definePlan({ id: 'Bad Id', name: 'X', limits: {} }),
      code('TENANTRY_ERR_PLAN_INVALID'),
    );
  });

  test('period.closed summarises the previous period once', async () => {
    const tenantId = await createTenant('test-small');
    // A period that ended: events dated last month, written by the owner as history.
    await asAdmin(
      `insert into tenantry.usage_events (tenant_id, metric, quantity, occurred_at, period_start, idempotency_key)
       select $1, 'test_calls', 2, p - interval '1 day', tenantry.billing_period_start(p - interval '1 day', 1), 'old-' || g
         from generate_series(1, 4) g, tenantry.billing_period_start(now(), 1) p`,
      [tenantId],
    );
    await insertItems(tenantId, 3);
    const first = await tenantry.withTenant(tenantId, (db) => quotas.closeBillingPeriod(db));
    assert.ok(first !== undefined);
    assert.equal(
      await tenantry.withTenant(tenantId, (db) => quotas.closeBillingPeriod(db)),
      undefined,
    );
    const [closed] = await events(tenantId, 'period.closed');
    const usage = closed?.data.usage as Record<string, { quantity: number; events: number | null }>;
    assert.equal(usage.test_calls?.quantity, 8);
    assert.equal(usage.test_calls?.events, 4);
    assert.equal(usage.test_items?.quantity, 3);
    assert.equal(closed?.data.plan, 'test-small');
  });

  test('billing periods follow the anchor day, clamped to short months', async () => {
    const rows = await asAdmin<{ start: Date; end: Date }>(
      `select tenantry.billing_period_start($1::timestamptz, $2) as start,
              tenantry.billing_period_end(tenantry.billing_period_start($1::timestamptz, $2), $2) as end`,
      ['2026-02-28T12:00:00Z', 31],
    );
    assert.equal(rows[0]?.start.toISOString(), '2026-02-28T00:00:00.000Z');
    assert.equal(rows[0]?.end.toISOString(), '2026-03-31T00:00:00.000Z');
    const before = await asAdmin<{ start: Date }>(
      'select tenantry.billing_period_start($1::timestamptz, $2) as start',
      ['2026-03-14T23:59:59Z', 15],
    );
    assert.equal(before[0]?.start.toISOString(), '2026-02-15T00:00:00.000Z');
    const calendar = await asAdmin<{ start: Date }>(
      'select tenantry.billing_period_start($1::timestamptz, 1) as start',
      ['2026-12-31T23:59:59Z'],
    );
    assert.equal(calendar[0]?.start.toISOString(), '2026-12-01T00:00:00.000Z');
  });
});

describe('plan job limits', () => {
  test("a tenant's concurrent jobs follow its plan and overrides, unlimited when the plan is silent", async () => {
    await admin.definePlan({ id: 'test-jobs', name: 'Jobs', limits: { concurrent_jobs: 3 } });
    const limited = parseTenantId(await createTenant('test-jobs'));
    const silent = parseTenantId(await createTenant('test-big'));
    const cache = await createPlanLimitCache({
      connectionString: database.appUrl,
      metrics: ['concurrent_jobs'],
    });
    try {
      const limits = planJobLimits(cache, { unlimited: 50 });
      assert.equal(await limits.concurrentJobs(limited), 3);
      assert.equal(await limits.concurrentJobs(silent), 50);
      await admin.setLimitOverride(limited, 'concurrent_jobs', 1);
      // The override notifies tenantry_plans; the cache drops the tenant.
      const deadline = Date.now() + 10_000;
      while ((await limits.concurrentJobs(limited)) !== 1) {
        assert.ok(Date.now() < deadline, 'the override never reached the cache');
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    } finally {
      await cache.close();
    }
  });
});
