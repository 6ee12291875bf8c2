import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { type Kysely, sql } from 'kysely';
import type pg from 'pg';
import { createTenantry, isTenantryError, type Tenantry, type TenantryErrorCode } from 'tenantry';
import { createPostgresRateLimitStore, createQuotas, type Quotas } from 'tenantry/billing';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { withClient } from './fixtures.ts';

// Adversarial tests of the billing schema: what a tenant can do with the app role's privileges
// (a buggy handler running SQL it should not), racing transactions and broken connections. Each
// test fails if the attack it names works.

interface AttackDatabase {
  attack_items: { tenant_id?: string; id?: string; size?: number; live?: boolean };
  attack_parted: { tenant_id?: string; id?: string };
}

let database: TestDatabase;
let tenantry: Tenantry<AttackDatabase>;
const quotas: Quotas = createQuotas();
const itemLimit = 10;

async function asAdmin<T = Record<string, unknown>>(text: string, values: unknown[] = []) {
  return withClient(
    database.adminUrl,
    async (client) => (await client.query(text, values)).rows as T[],
  );
}

async function createTenant(plan = 'atk'): Promise<string> {
  const id = randomUUID();
  await asAdmin('insert into tenantry.tenants (id, slug, name, plan) values ($1, $2, $2, $3)', [
    id,
    `atk-${randomBytes(4).toString('hex')}`,
    plan,
  ]);
  return id;
}

/** Runs `fn` as the app role in one transaction whose context is `tenantId` (none when null). */
async function asApp<T>(tenantId: string | null, fn: (client: pg.Client) => Promise<T>) {
  return withClient(database.appUrl, async (client) => {
    await client.query('begin');
    if (tenantId !== null) {
      await client.query(`select set_config('tenantry.tenant_id', $1, true)`, [tenantId]);
    }
    try {
      const result = await fn(client);
      await client.query('commit');
      return result;
    } catch (error) {
      await client.query('rollback').catch(() => undefined);
      throw error;
    }
  });
}

/** The SQLSTATE each statement fails with as the app role ('ok' when it succeeds), each alone. */
async function sqlStates(tenantId: string | null, statements: readonly string[]) {
  const states: string[] = [];
  for (const statement of statements) {
    states.push(
      await asApp(tenantId, (client) => client.query(statement)).then(
        () => 'ok',
        (error: { code?: string }) => error.code ?? String(error),
      ),
    );
  }
  return states;
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

async function rowCount(table: string, tenantId: string): Promise<number> {
  const rows = await asAdmin<{ n: string }>(
    `select count(*)::text as n from ${table} where tenant_id = $1`,
    [tenantId],
  );
  return Number(rows[0]?.n);
}

async function liveBytes(tenantId: string): Promise<number> {
  const rows = await asAdmin<{ n: string }>(
    'select coalesce(sum(size) filter (where live), 0)::text as n from attack_items where tenant_id = $1',
    [tenantId],
  );
  return Number(rows[0]?.n);
}

/** Both counters of attack_items equal what its rows say. */
async function assertCountersExact(tenantId: string): Promise<void> {
  assert.equal(await counter(tenantId, 'atk_items'), await rowCount('attack_items', tenantId));
  assert.equal(await counter(tenantId, 'atk_bytes'), await liveBytes(tenantId));
}

async function outbox(tenantId: string, type: string) {
  return asAdmin<{ id: string; data: Record<string, unknown> }>(
    'select id, data from tenantry.outbox_events where tenant_id = $1 and type = $2 order by created_at',
    [tenantId, type],
  );
}

function insertItems(tenantId: string, count: number, size = 1, live = true) {
  return tenantry.withTenant(tenantId, (db) =>
    db
      .insertInto('attack_items')
      .values(Array.from({ length: count }, () => ({ id: randomUUID(), size, live })))
      .execute(),
  );
}

function outcomeOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => 'ok',
    (error: unknown) => error,
  );
}

before(async () => {
  database = await createTestDatabase();
  await asAdmin(`
    insert into tenantry.metrics (name, kind, unit) values
      ('atk_items', 'count', 'item'), ('atk_bytes', 'count', 'byte'),
      ('atk_calls', 'period', 'call'), ('atk_parted', 'count', 'item'),
      ('atk_seats', 'count', 'seat');
    create table attack_items (
      tenant_id uuid not null, id uuid not null default gen_random_uuid(),
      size integer not null default 1, live boolean not null default true,
      primary key (tenant_id, id));
    select tenantry.enable_tenant_isolation('attack_items');
    select tenantry.attach_quota('attack_items', 'atk_items');
    select tenantry.attach_quota('attack_items', 'atk_bytes', 'n.size', 'n.live');
    create table attack_parted (
      tenant_id uuid not null, id uuid not null default gen_random_uuid(),
      primary key (tenant_id, id)) partition by hash (id);
    create table attack_parted_0 partition of attack_parted for values with (modulus 2, remainder 0);
    create table attack_parted_1 partition of attack_parted for values with (modulus 2, remainder 1);
    select tenantry.enable_tenant_isolation('attack_parted');
    select tenantry.attach_quota('attack_parted', 'atk_parted');
    insert into tenantry.plans (id, name) values ('atk', 'Attack');
    insert into tenantry.plan_limits (plan_id, metric, limit_value) values
      ('atk', 'atk_items', ${itemLimit}), ('atk', 'atk_bytes', 100), ('atk', 'atk_calls', 5),
      ('atk', 'atk_parted', 3), ('atk', 'contacts', 1000), ('atk', 'messages', 2000),
      ('atk', 'storage_bytes', 1000), ('atk', 'atk_seats', 5);
  `);
  tenantry = await createTenantry<AttackDatabase>({
    connectionString: database.appUrl,
    maxConnections: 20,
    tenantTables: ['attack_items', 'attack_parted', 'contacts', 'conversations', 'messages'],
  });
});

after(async () => {
  await tenantry?.close();
  await database?.drop();
});

describe('cross-tenant', () => {
  test("tenant A's context neither sees nor changes B's counters, events, notices or overrides", async () => {
    const [a, b] = [await createTenant(), await createTenant()];
    await insertItems(b, 9);
    await tenantry.withTenant(b, (db) =>
      quotas.recordUsage(db, { metric: 'atk_calls', idempotencyKey: 'b-call' }),
    );
    await asAdmin(
      `insert into tenantry.tenant_limit_overrides (tenant_id, metric, limit_value) values ($1, 'atk_items', 50)`,
      [b],
    );
    const tables = [
      'tenantry.usage_counters',
      'tenantry.usage_events',
      'tenantry.usage_notices',
      'tenantry.tenant_limit_overrides',
    ];
    const visible = await asApp(a, async (client) => {
      const counts: number[] = [];
      for (const table of tables) {
        const result = await client.query(
          `select count(*)::int as n from ${table} where tenant_id = $1`,
          [b],
        );
        counts.push(result.rows[0].n);
      }
      return counts;
    });
    assert.deepEqual(visible, [0, 0, 0, 0]);
    const writes = tables.flatMap((table) => [
      `insert into ${table} (tenant_id, metric) select '${b}', 'atk_items'`,
      `update ${table} set tenant_id = tenant_id where tenant_id = '${b}'`,
      `delete from ${table} where tenant_id = '${b}'`,
      `truncate ${table}`,
    ]);
    const states = await sqlStates(a, writes);
    assert.deepEqual(
      states,
      writes.map(() => '42501'),
      'every write to a billing table is refused to the app role',
    );
    assert.equal(await counter(b, 'atk_items'), 9);
    assert.equal(await counter(b, 'atk_calls'), 1);
    assert.equal(await rowCount('tenantry.tenant_limit_overrides', b), 1);
  });

  test('platform tables (outbox, webhooks, rate limits) are closed to the app role', async () => {
    const a = await createTenant();
    const updatable: Record<string, string> = {
      'tenantry.outbox_events': 'data',
      'tenantry.webhook_endpoints': 'secret',
      'tenantry.webhook_deliveries': 'status',
      'tenantry.webhook_attempts': 'error',
      'tenantry.rate_limits': 'tat',
    };
    const statements = [
      'tenantry.outbox_events',
      'tenantry.webhook_endpoints',
      'tenantry.webhook_deliveries',
      'tenantry.webhook_attempts',
      'tenantry.rate_limits',
    ].flatMap((table) => [
      `select * from ${table} limit 1`,
      `delete from ${table}`,
      `update ${table} set ${updatable[table]} = ${updatable[table]}`,
      `truncate ${table}`,
    ]);
    statements.push(
      `insert into tenantry.outbox_events (tenant_id, type, data) values ('${a}', 'invoice.paid', '{}')`,
      `insert into tenantry.webhook_endpoints (url, secret) values ('http://127.0.0.1/', 'whsec_${'A'.repeat(43)}=')`,
      `insert into tenantry.rate_limits (key, tat, interval_ms) values ('api:x', 0, 1)`,
    );
    assert.deepEqual(
      await sqlStates(a, statements),
      statements.map(() => '42501'),
    );
  });

  test('owner-only functions cannot be called by the app role, with any tenant', async () => {
    const [a, b] = [await createTenant(), await createTenant()];
    const statements = [
      `select * from tenantry.apply_usage('${b}', 'atk_items', '-infinity', -5, 'force')`,
      `select * from tenantry.apply_usage('${a}', 'atk_items', '-infinity', -5, 'force')`,
      `select tenantry.emit_outbox_event('${b}', 'quota.exceeded', '{}')`,
      `select tenantry.attach_quota('attack_items', 'atk_items', '0')`,
      `select tenantry.metric_kind('atk_items')`,
      `select tenantry.require_context_tenant()`,
      `select tenantry.tenant_period_start('${b}', now())`,
      `select tenantry.rate_limit_paid_back_at(0, 1, 0, 1, 1)`,
      'select tenantry.meter_rows()',
      'select tenantry.create_webhook_deliveries()',
      'select tenantry.refuse_usage_event_update()',
      'select tenantry.notify_plan_change()',
    ];
    assert.deepEqual(
      await sqlStates(a, statements),
      statements.map(() => '42501'),
    );
  });

  test("SECURITY DEFINER functions act on the context's tenant only, and need one", async () => {
    const [a, b] = [await createTenant(), await createTenant()];
    await insertItems(b, 4);
    assert.deepEqual(
      await sqlStates(a, [
        `select tenantry.effective_limit('${b}', 'atk_items')`,
        `select tenantry.effective_limit(null, 'atk_items')`,
      ]),
      ['42501', '42501'],
    );
    const withoutContext = [
      `select * from tenantry.consume_quota('atk_items', 1)`,
      `select * from tenantry.record_usage('atk_calls', 1, 'k')`,
      'select * from tenantry.entitlements()',
      'select tenantry.close_billing_period()',
      `select tenantry.note_quota_exceeded('atk_items', 1)`,
      `select tenantry.emit_event('invoice.paid', '{}')`,
      `select tenantry.effective_limit('${b}', 'atk_items')`,
    ];
    assert.deepEqual(
      await sqlStates(null, withoutContext),
      withoutContext.map(() => '42501'),
    );
    await asApp(a, async (client) => {
      await client.query(`select * from tenantry.consume_quota('atk_seats', 2)`);
      await client.query(`select * from tenantry.record_usage('atk_calls', 1, 'same-key')`);
      await client.query(`select tenantry.note_quota_exceeded('atk_items', 1)`);
      const entitlements = await client.query(
        `select used::int from tenantry.entitlements() where metric = 'atk_seats'`,
      );
      assert.equal(entitlements.rows[0].used, 2, "A's entitlements are A's");
    });
    assert.equal(await counter(b, 'atk_items'), 4);
    assert.equal(await counter(b, 'atk_calls'), 0);
    assert.equal((await outbox(b, 'quota.exceeded')).length, 0);
  });

  test('idempotency keys are per tenant: a key A used first does not block B', async () => {
    const [a, b] = [await createTenant(), await createTenant()];
    const key = `shared-${randomUUID()}`;
    const first = await tenantry.withTenant(a, (db) =>
      quotas.recordUsage(db, { metric: 'atk_calls', idempotencyKey: key }),
    );
    const second = await tenantry.withTenant(b, (db) =>
      quotas.recordUsage(db, { metric: 'atk_calls', idempotencyKey: key }),
    );
    assert.equal(first.recorded, true);
    assert.equal(second.recorded, true);
    assert.equal(await counter(a, 'atk_calls'), 1);
    assert.equal(await counter(b, 'atk_calls'), 1);
  });

  test('reserved event types cannot be emitted, and the tenant of an event is the context', async () => {
    const [a, b] = [await createTenant(), await createTenant()];
    const reserved = [
      'usage.threshold_reached',
      'quota.exceeded',
      'period.closed',
      'tenant.plan_changed',
      'tenantry.anything',
      'USAGE.threshold_reached',
      'usage',
    ];
    const states = await sqlStates(
      a,
      reserved.map((type) => `select tenantry.emit_event('${type}', '{}')`),
    );
    assert.ok(
      states.every((state) => state === '22023' || state === '23514'),
      `refused: ${states.join(', ')}`,
    );
    await asApp(a, (client) =>
      client.query(`select tenantry.emit_event('invoice.paid', $1)`, [
        JSON.stringify({ tenantId: b }),
      ]),
    );
    assert.equal((await outbox(a, 'invoice.paid')).length, 1);
    assert.equal((await outbox(b, 'invoice.paid')).length, 0);
  });

  test("a row written for B from A's context is refused by RLS, so B's counter never moves", async () => {
    const [a, b] = [await createTenant(), await createTenant()];
    const states = await sqlStates(a, [
      `insert into attack_items (tenant_id) values ('${b}')`,
      `insert into attack_items (tenant_id) select '${b}' from generate_series(1, 3)`,
    ]);
    assert.deepEqual(states, ['42501', '42501']);
    assert.equal(await counter(b, 'atk_items'), 0);
    assert.equal(await rowCount('attack_items', b), 0);
  });

  test('switching tenantry.tenant_id between statements keeps each counter equal to its rows', async () => {
    const [a, b] = [await createTenant(), await createTenant()];
    await asApp(a, async (client) => {
      await client.query('insert into attack_items (size) select 2 from generate_series(1, 3)');
      await client.query(`select set_config('tenantry.tenant_id', $1, true)`, [b]);
      await client.query('insert into attack_items (size) select 5 from generate_series(1, 4)');
      const deleted = await client.query('delete from attack_items');
      assert.equal(deleted.rowCount, 4, "only B's rows are visible once the context is B");
      await client.query('insert into attack_items (size) values (7)');
    });
    await assertCountersExact(a);
    await assertCountersExact(b);
    assert.equal(await counter(a, 'atk_items'), 3);
    assert.equal(await counter(b, 'atk_bytes'), 7);
  });

  test('a statement that switches the tenant while it runs cannot write two tenants', async () => {
    const [a, b] = [await createTenant(), await createTenant()];
    const state = await sqlStates(a, [
      `insert into attack_items (tenant_id)
         select s.t from (
           select '${a}'::uuid as t, set_config('tenantry.tenant_id', '${a}', true) as c
           union all
           select '${b}'::uuid, set_config('tenantry.tenant_id', '${b}', true)) s`,
    ]);
    assert.ok(state[0] === 'ok' || state[0] === '42501', state[0]);
    for (const tenant of [a, b]) await assertCountersExact(tenant);
  });
});

describe('limit bypass', () => {
  test('bulk INSERT ... SELECT past the limit is refused as a whole', async () => {
    const tenant = await createTenant();
    await insertItems(tenant, 5);
    const [state] = await sqlStates(tenant, [
      'insert into attack_items (size) select 1 from generate_series(1, 6)',
    ]);
    assert.equal(state, 'TQ001');
    assert.equal(await rowCount('attack_items', tenant), 5);
    await assertCountersExact(tenant);
  });

  test('COPY FROM STDIN cannot bypass the row triggers: the app role cannot COPY into RLS tables', async () => {
    const tenant = await createTenant();
    await insertItems(tenant, 8);
    const refused = await outcomeOf(
      asApp(tenant, (client) =>
        copyFrom(client, 'copy attack_items (id, size) from stdin', copyRows(3)),
      ),
    );
    assert.equal((refused as { code?: string }).code, '0A000', String(refused));
    assert.equal(await rowCount('attack_items', tenant), 8);
    await assertCountersExact(tenant);
  });

  test('a data-modifying CTE (delete + insert) never passes the limit and keeps counters exact', async () => {
    const tenant = await createTenant();
    await insertItems(tenant, itemLimit);
    const [over] = await sqlStates(tenant, [
      `with gone as (delete from attack_items where id = (select id from attack_items limit 1) returning 1)
       insert into attack_items (size) select 1 from generate_series(1, 2)`,
    ]);
    assert.equal(over, 'TQ001');
    const [swap] = await sqlStates(tenant, [
      `with gone as (delete from attack_items where id = (select id from attack_items limit 1) returning 1)
       insert into attack_items (size) values (1)`,
    ]);
    assert.ok(swap === 'ok' || swap === 'TQ001', swap);
    assert.equal(await rowCount('attack_items', tenant), itemLimit);
    await assertCountersExact(tenant);
  });

  test('INSERT ... ON CONFLICT DO UPDATE counts inserted rows and follows updated amounts', async () => {
    const tenant = await createTenant();
    const id = randomUUID();
    await asApp(tenant, async (client) => {
      await client.query('insert into attack_items (id, size) values ($1, 10)', [id]);
      await client.query(
        `insert into attack_items (id, size) values ($1, 60), (gen_random_uuid(), 5)
           on conflict (tenant_id, id) do update set size = excluded.size`,
        [id],
      );
    });
    await assertCountersExact(tenant);
    assert.equal(await counter(tenant, 'atk_bytes'), 65);
    const [state] = await sqlStates(tenant, [
      `insert into attack_items (id, size) values ('${id}', 200)
         on conflict (tenant_id, id) do update set size = excluded.size`,
    ]);
    assert.equal(state, 'TQ001', 'an upsert raising an amount past the limit is refused');
    await assertCountersExact(tenant);
  });

  test('UPDATE moving rows into the counted state, and MERGE, are limited too', async () => {
    const tenant = await createTenant();
    await insertItems(tenant, 3, 40, false);
    const [update] = await sqlStates(tenant, ['update attack_items set live = true']);
    assert.equal(update, 'TQ001');
    const [merge] = await sqlStates(tenant, [
      `merge into attack_items t
         using (select gen_random_uuid() as id from generate_series(1, ${itemLimit})) s on t.id = s.id
         when not matched then insert (id, size) values (s.id, 1)`,
    ]);
    assert.equal(merge, 'TQ001');
    await asApp(tenant, (client) =>
      client.query(`merge into attack_items t using (select 1) s on t.id is not null
                      when matched then update set live = true, size = 20`),
    );
    assert.equal(await counter(tenant, 'atk_bytes'), 60);
    await assertCountersExact(tenant);
  });

  test('trigger-disabling and table-level escapes are refused to the app role', async () => {
    const tenant = await createTenant();
    // attach_quota() names its triggers tq_<metric>_<md5 prefix>_<event> (000007).
    const quotaTrigger = `tq_atk_items_${createHash('md5').update('atk_items').digest('hex').slice(0, 8)}_insert`;
    const [exists] = await asAdmin<{ n: number }>(
      'select count(*)::int as n from pg_trigger where tgname = $1',
      [quotaTrigger],
    );
    assert.equal(exists?.n, 1, 'the quota trigger under test exists');
    const statements = [
      'truncate attack_items',
      `set session_replication_role = replica`,
      `set local session_replication_role = replica`,
      'alter table attack_items disable trigger all',
      `alter table attack_items disable trigger ${quotaTrigger}`,
      `drop trigger ${quotaTrigger} on attack_items`,
      `create trigger t after insert on attack_items for each statement execute function tenantry.meter_rows('atk_items', '-1', 'true', '')`,
      'create temp table scratch (a int)',
      'create table public.scratch (a int)',
      'insert into attack_parted_0 (id) values (gen_random_uuid())',
      'insert into attack_parted_1 (id) values (gen_random_uuid())',
      'delete from attack_parted_0',
      `select tenantry.attach_quota('attack_items', 'atk_items', '0')`,
    ];
    assert.deepEqual(
      await sqlStates(tenant, statements),
      statements.map(() => '42501'),
    );
  });

  test('a partitioned table counts inserts through its parent, across partitions', async () => {
    const tenant = await createTenant();
    await tenantry.withTenant(tenant, (db) =>
      db
        .insertInto('attack_parted')
        .values([{ id: randomUUID() }, { id: randomUUID() }, { id: randomUUID() }])
        .execute(),
    );
    const outcome = await outcomeOf(
      tenantry.withTenant(tenant, (db) =>
        db.insertInto('attack_parted').values({ id: randomUUID() }).execute(),
      ),
    );
    assert.ok(isTenantryError(outcome, 'TENANTRY_ERR_QUOTA_EXCEEDED'), String(outcome));
    assert.equal(await counter(tenant, 'atk_parted'), 3);
    assert.equal(await rowCount('attack_parted', tenant), 3);
  });

  test('a rolled-back savepoint gives back what it consumed, the unit keeps the rest', async () => {
    const tenant = await createTenant();
    await tenantry.withTenant(tenant, async (db) => {
      await db.insertInto('attack_items').values({ id: randomUUID(), size: 3 }).execute();
      await outcomeOf(
        db.transaction().execute(async (savepoint) => {
          await savepoint
            .insertInto('attack_items')
            .values(Array.from({ length: 6 }, () => ({ id: randomUUID(), size: 10 })))
            .execute();
          throw new Error('give it back');
        }),
      );
      const refused = await outcomeOf(
        db.transaction().execute((savepoint) => quotas.consume(savepoint, 'atk_seats', 6)),
      );
      assert.ok(isTenantryError(refused, 'TENANTRY_ERR_QUOTA_EXCEEDED'), String(refused));
      await db.insertInto('attack_items').values({ id: randomUUID(), size: 4 }).execute();
    });
    assert.equal(await counter(tenant, 'atk_items'), 2);
    assert.equal(await counter(tenant, 'atk_bytes'), 7);
    await assertCountersExact(tenant);
  });

  test('a confirmed file cannot go back to pending to free its bytes for another upload', async () => {
    const tenant = await createTenant();
    const [first, second] = [randomUUID(), randomUUID()];
    const register = (id: string) =>
      `insert into tenantry.files (id, object_key, file_name, size_bytes, content_type, driver, expires_at)
         values ('${id}', 'tenants/${tenant}/${id}', 'f.bin', 1000, 'application/octet-stream', 'local',
                 now() + interval '1 hour')`;
    const confirm = (id: string) =>
      `update tenantry.files set status = 'uploaded', uploaded_at = now() where id = '${id}'`;
    await asApp(tenant, async (client) => {
      await client.query(register(first));
      await client.query(register(second));
      await client.query(confirm(first));
    });
    assert.equal(await counter(tenant, 'storage_bytes'), 1000);
    const states = await sqlStates(tenant, [
      `update tenantry.files set status = 'pending', uploaded_at = null where id = '${first}'`,
      confirm(second),
    ]);
    const stored = await asAdmin<{ n: string }>(
      `select count(*)::text as n from tenantry.files where tenant_id = $1 and status <> 'deleted'
         and (status = 'uploaded' or uploaded_at is not null or id = $2)`,
      [tenant, first],
    );
    assert.ok(
      states[0] !== 'ok' || states[1] !== 'ok',
      `both confirmed objects exist (${stored[0]?.n} files) while 1,000 bytes are counted: ${states.join(', ')}`,
    );
  });

  test('releasing a row-counted metric by hand cannot lift its limit', async () => {
    const tenant = await createTenant();
    await insertItems(tenant, itemLimit);
    // A handler that "releases" rows it never deleted, through the service or the SQL function.
    await outcomeOf(tenantry.withTenant(tenant, (db) => quotas.release(db, 'atk_items', 5)));
    await outcomeOf(
      asApp(tenant, (client) =>
        client.query(`select * from tenantry.consume_quota('atk_items', -5)`),
      ),
    );
    const outcome = await outcomeOf(insertItems(tenant, 5));
    assert.ok(
      isTenantryError(outcome, 'TENANTRY_ERR_QUOTA_EXCEEDED'),
      `inserting past the limit after a manual release: ${String(outcome)}`,
    );
    assert.equal(await rowCount('attack_items', tenant), itemLimit);
    await assertCountersExact(tenant);
  });
});

describe('concurrency', () => {
  test('racing crossings, some rolled back, emit exactly one 80 % and one 100 % event', async () => {
    const tenant = await createTenant();
    const outcomes = await Promise.allSettled(
      Array.from({ length: 40 }, (_, index) =>
        tenantry.withTenant(tenant, async (db) => {
          await db.insertInto('attack_items').values({ id: randomUUID() }).execute();
          if (index % 2 === 1) throw new Error('rolled back after consuming');
        }),
      ),
    );
    assert.equal(outcomes.filter((outcome) => outcome.status === 'fulfilled').length, itemLimit);
    await assertCountersExact(tenant);
    const thresholds = (await outbox(tenant, 'usage.threshold_reached'))
      .filter((event) => event.data.metric === 'atk_items')
      .map((event) => [Number(event.data.threshold), Number(event.data.used)])
      .sort(([left], [right]) => (left ?? 0) - (right ?? 0));
    assert.deepEqual(thresholds, [
      [80, 8],
      [100, 10],
    ]);
  });

  test('releases racing consumes keep the counter equal to the rows and never negative', async () => {
    const tenant = await createTenant();
    await asAdmin(
      `update tenantry.plan_limits set limit_value = 60 where plan_id = 'atk' and metric = 'atk_items'`,
    );
    try {
      await insertItems(tenant, 40);
      const ids = await asAdmin<{ id: string }>(
        'select id from attack_items where tenant_id = $1',
        [tenant],
      );
      const tasks = ids.flatMap(({ id }, index) => [
        tenantry.withTenant(tenant, (db) =>
          db.deleteFrom('attack_items').where('id', '=', id).execute(),
        ),
        tenantry.withTenant(tenant, async (db) => {
          await db.insertInto('attack_items').values({ id: randomUUID(), size: 2 }).execute();
          if (index % 3 === 0) throw new Error('rolled back');
        }),
      ]);
      await Promise.allSettled(tasks);
      const used = await counter(tenant, 'atk_items');
      assert.ok(used >= 0);
      await assertCountersExact(tenant);
    } finally {
      await asAdmin(
        `update tenantry.plan_limits set limit_value = ${itemLimit} where plan_id = 'atk' and metric = 'atk_items'`,
      );
    }
  });

  test('contacts and messages consumed in opposite orders: a deadlock is retried, counters stay exact', async () => {
    const tenant = await createTenant();
    const { conversationId } = await tenantry.withTenant(tenant, async (db) => {
      const contact = await sql<{ id: string }>`
        insert into contacts (name) values ('seed') returning id`.execute(db);
      const conversation = await sql<{ id: string }>`
        insert into conversations (contact_id) values (${contact.rows[0]?.id}) returning id`.execute(
        db,
      );
      await sql`insert into messages (conversation_id, direction, body)
        values (${conversation.rows[0]?.id}, 'inbound', 'seed')`.execute(db);
      return { conversationId: conversation.rows[0]?.id as string };
    });
    const deadlocksBefore = await deadlockCount();
    const barrier = twoPartyBarrier();
    // biome-ignore lint/suspicious/noExplicitAny: raw SQL on the app's tables
    const contact = (db: Kysely<any>) =>
      sql`insert into contacts (name) values ('racer')`.execute(db);
    // biome-ignore lint/suspicious/noExplicitAny: raw SQL on the app's tables
    const message = (db: Kysely<any>) =>
      sql`insert into messages (conversation_id, direction, body)
            values (${conversationId}, 'inbound', 'racer')`.execute(db);
    const [first, second] = await Promise.allSettled([
      tenantry.withTenant(tenant, async (db) => {
        await contact(db);
        await barrier.arrive(0);
        await message(db);
      }),
      tenantry.withTenant(tenant, async (db) => {
        await message(db);
        await barrier.arrive(1);
        await contact(db);
      }),
    ]);
    assert.equal(first.status, 'fulfilled', String((first as PromiseRejectedResult).reason));
    assert.equal(second.status, 'fulfilled', String((second as PromiseRejectedResult).reason));
    assert.equal(await deadlockCount(), deadlocksBefore + 1, 'the two units deadlocked once');
    assert.equal(await counter(tenant, 'contacts'), await rowCount('contacts', tenant));
    assert.equal(await counter(tenant, 'contacts'), 3);
    assert.equal(await counter(tenant, 'messages'), 3);
    assert.equal(await rowCount('messages', tenant), 3);
  });
});

describe('period metrics', () => {
  test('events in the future or a previous period are refused; a repeated key counts once', async () => {
    const tenant = await createTenant();
    const future = await outcomeOf(
      tenantry.withTenant(tenant, (db) =>
        quotas.recordUsage(db, {
          metric: 'atk_calls',
          idempotencyKey: 'future',
          occurredAt: new Date(Date.now() + 10 * 60_000),
        }),
      ),
    );
    assert.ok(isTenantryError(future, 'TENANTRY_ERR_USAGE_INVALID'), String(future));
    const past = await outcomeOf(
      tenantry.withTenant(tenant, (db) =>
        quotas.recordUsage(db, {
          metric: 'atk_calls',
          idempotencyKey: 'past',
          occurredAt: new Date(Date.now() - 40 * 24 * 3600_000),
        }),
      ),
    );
    assert.ok(isTenantryError(past, 'TENANTRY_ERR_USAGE_INVALID'), String(past));
    const results = await tenantry.withTenant(tenant, async (db) => [
      await quotas.recordUsage(db, { metric: 'atk_calls', idempotencyKey: 'once', quantity: 1 }),
      await quotas.recordUsage(db, { metric: 'atk_calls', idempotencyKey: 'once', quantity: 4 }),
    ]);
    assert.deepEqual(
      results.map((result) => [result.recorded, result.used]),
      [
        [true, 1],
        [false, 1],
      ],
    );
    const [state] = await sqlStates(tenant, [
      `select * from tenantry.record_usage('atk_calls', -3, 'negative')`,
    ]);
    assert.equal(state, '22023');
    assert.equal(await counter(tenant, 'atk_calls'), 1);
  });

  test('huge quantities fail cleanly and count nothing', async () => {
    const tenant = await createTenant();
    await tenantry.withTenant(tenant, (db) =>
      quotas.recordUsage(db, { metric: 'atk_calls', idempotencyKey: 'first' }),
    );
    for (const quantity of [2 ** 53, Number.POSITIVE_INFINITY, 1.5, 0]) {
      await assert.rejects(
        tenantry.withTenant(tenant, (db) =>
          quotas.recordUsage(db, {
            metric: 'atk_calls',
            idempotencyKey: `q-${quantity}`,
            quantity,
          }),
        ),
        code('TENANTRY_ERR_USAGE_INVALID'),
      );
    }
    await assert.rejects(
      tenantry.withTenant(tenant, (db) =>
        quotas.recordUsage(db, {
          metric: 'atk_calls',
          idempotencyKey: 'max-safe',
          quantity: Number.MAX_SAFE_INTEGER,
        }),
      ),
      code('TENANTRY_ERR_QUOTA_EXCEEDED'),
    );
    const maxBigint = '9223372036854775807';
    for (const statement of [
      `select * from tenantry.record_usage('atk_calls', ${maxBigint}, 'overflow-enforced')`,
      `select * from tenantry.record_usage('atk_calls', ${maxBigint}, 'overflow', null, null, false)`,
      `select * from tenantry.consume_quota('atk_seats', ${maxBigint})`,
    ]) {
      const error = await outcomeOf(
        tenantry.withTenant(tenant, (db) => sql.raw(statement).execute(db)),
      );
      assert.ok(
        isTenantryError(error, 'TENANTRY_ERR_QUOTA_EXCEEDED') ||
          isTenantryError(error, 'TENANTRY_ERR_DB_INVALID_VALUE'),
        `${statement}: ${String(error)}`,
      );
    }
    assert.equal(await counter(tenant, 'atk_calls'), 1);
    assert.equal(await counter(tenant, 'atk_seats'), 0);
  });
});

describe('quota.exceeded', () => {
  test("a refusal in a rolled-back savepoint is noted once, for the unit's tenant only", async () => {
    const [a, b] = [await createTenant(), await createTenant()];
    await insertItems(a, itemLimit);
    for (let round = 0; round < 2; round++) {
      await tenantry.withTenant(a, async (db) => {
        const refused = await outcomeOf(
          db
            .transaction()
            .execute((savepoint) =>
              savepoint.insertInto('attack_items').values({ id: randomUUID() }).execute(),
            ),
        );
        assert.ok(isTenantryError(refused, 'TENANTRY_ERR_QUOTA_EXCEEDED'), String(refused));
      });
    }
    const notes = await outbox(a, 'quota.exceeded');
    assert.equal(notes.length, 1);
    assert.equal(notes[0]?.data.metric, 'atk_items');
    assert.equal(notes[0]?.data.used, itemLimit);
    assert.equal((await outbox(b, 'quota.exceeded')).length, 0);
  });

  test('a forged TQ001 or a direct call notes the numbers the server reads, for its own tenant', async () => {
    const [a, b] = [await createTenant(), await createTenant()];
    await insertItems(b, 3);
    const forged = await outcomeOf(
      tenantry.withTenant(a, (db) =>
        sql
          .raw(`do $$ begin raise exception 'x' using errcode = 'TQ001',
                  detail = '{"metric": "atk_items", "limit": 1, "used": 999, "requested": -7}'; end $$`)
          .execute(db),
      ),
    );
    assert.ok(isTenantryError(forged, 'TENANTRY_ERR_QUOTA_EXCEEDED'), String(forged));
    await asApp(a, (client) =>
      client.query(`select tenantry.note_quota_exceeded('atk_bytes', -50)`),
    );
    const notes = await outbox(a, 'quota.exceeded');
    assert.deepEqual(
      notes.map((note) => [note.data.metric, note.data.limit, note.data.used, note.data.requested]),
      [
        ['atk_items', itemLimit, null, 0],
        ['atk_bytes', 100, null, 0],
      ],
    );
    assert.equal((await outbox(b, 'quota.exceeded')).length, 0);
  });

  test('a connection broken after a refusal loses the note, never the pool or the tenant', async () => {
    const [a, b] = [await createTenant(), await createTenant()];
    await insertItems(a, itemLimit);
    const uncaught: unknown[] = [];
    const onUncaught = (error: unknown) => uncaught.push(error);
    process.on('uncaughtException', onUncaught);
    const outcome = await outcomeOf(
      tenantry.withTenant(a, async (db) => {
        await outcomeOf(
          db
            .transaction()
            .execute((savepoint) =>
              savepoint.insertInto('attack_items').values({ id: randomUUID() }).execute(),
            ),
        );
        const pid = await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(db);
        await asAdmin('select pg_terminate_backend($1)', [pid.rows[0]?.pid]);
        await sql`select 1`.execute(db);
      }),
    );
    process.off('uncaughtException', onUncaught);
    assert.ok(isTenantryError(outcome, 'TENANTRY_ERR_DB_UNAVAILABLE'), String(outcome));
    assert.deepEqual(uncaught.map(String), [], 'the lost connection is no uncaught exception');
    assert.equal((await outbox(a, 'quota.exceeded')).length, 0);
    await insertItems(b, 2);
    assert.equal(await counter(b, 'atk_items'), 2);
    const refused = await outcomeOf(insertItems(a, 1));
    assert.ok(isTenantryError(refused, 'TENANTRY_ERR_QUOTA_EXCEEDED'));
    assert.equal((await outbox(a, 'quota.exceeded')).length, 1, 'the next refusal notes it');
    assert.equal((await outbox(b, 'quota.exceeded')).length, 0);
  });
});

describe('rate limits through SQL', () => {
  const window = 60_000;
  const hit = (
    client: pg.Client,
    key: string,
    now: number | string,
    interval: number | string,
    windowMs: number | string = window,
  ) =>
    client
      .query<{ tat: number | null }>('select tat from tenantry.hit_rate_limit($1, $2, $3, $4)', [
        key,
        now,
        interval,
        windowMs,
      ])
      .then((result) => result.rows[0]?.tat ?? null);

  test('non-finite clocks, intervals or windows are refused without poisoning the key', async () => {
    const tenant = await createTenant();
    const t0 = Date.UTC(2030, 0, 1);
    const poisons: [string, number | string, number | string, number | string][] = [
      [`atk:${randomUUID()}`, 'NaN', 1000, window],
      [`atk:${randomUUID()}`, 'Infinity', 1000, window],
      [`atk:${randomUUID()}`, t0, 'Infinity', 'Infinity'],
      [`atk:${randomUUID()}`, t0, 1000, 'NaN'],
    ];
    const outcomes = await asApp(tenant, async (client) => {
      const results: [boolean, boolean][] = [];
      for (const [key, now, interval, windowMs] of poisons) {
        const poisoned = await hit(client, key, now, interval, windowMs).then(
          (tat) => tat !== null,
          () => false,
        );
        const after = await hit(client, key, t0 + 1, 1000);
        results.push([poisoned, after !== null]);
      }
      return results;
    });
    assert.deepEqual(
      outcomes,
      poisons.map(() => [false, true]),
      'each bad call is refused, and a normal hit on the key afterwards is admitted',
    );
  });

  test('the store refuses bad limits, windows and clocks before any SQL', async () => {
    const store = createPostgresRateLimitStore({
      connectionString: database.appUrl,
      pruneIntervalMs: 0,
    });
    try {
      const key = `atk:${randomUUID()}`;
      for (const [limit, windowMs, now] of [
        [-1, window, 0],
        [Number.NaN, window, 0],
        [1.5, window, 0],
        [5, 0, 0],
        [5, Number.POSITIVE_INFINITY, 0],
        [5, window, Number.NaN],
        [5, window, Number.POSITIVE_INFINITY],
      ] as const) {
        await assert.rejects(
          store.hit(key, limit, windowMs, now),
          code('TENANTRY_ERR_CONFIG_INVALID'),
        );
      }
      await assert.rejects(
        store.hit('api key with spaces', 5, window, 0),
        code('TENANTRY_ERR_CONFIG_INVALID'),
      );
      assert.equal((await store.hit(key, 0, window, 0)).allowed, false, 'a limit of 0 refuses');
      const huge = await store.hit(key, Number.MAX_SAFE_INTEGER, window, 0);
      assert.equal(huge.allowed, true);
    } finally {
      await store.close();
    }
  });
});

async function deadlockCount(): Promise<number> {
  const rows = await asAdmin<{ n: string }>(
    'select deadlocks::text as n from pg_stat_database where datname = current_database()',
  );
  return Number(rows[0]?.n);
}

/** Each of two parties waits at `arrive` until the other arrived too (a retry passes at once). */
function twoPartyBarrier() {
  const arrived: (() => void)[] = [];
  const gates = [0, 1].map(() => new Promise<void>((resolve) => arrived.push(resolve)));
  return {
    async arrive(party: 0 | 1) {
      arrived[party]?.();
      await gates[1 - party];
    },
  };
}

function copyRows(count: number): string {
  return Array.from({ length: count }, () => `${randomUUID()}\t1\n`).join('');
}

/**
 * Runs `COPY ... FROM STDIN` with `data` on a pg client, through the driver's submittable
 * protocol (what pg-copy-streams does), so no extra dependency is needed.
 */
function copyFrom(client: pg.Client, text: string, data: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const submittable = {
      submit(connection: { query(text: string): void }) {
        connection.query(text);
      },
      handleCopyInResponse(connection: {
        sendCopyFromChunk(chunk: Buffer): void;
        endCopyFrom(): void;
      }) {
        connection.sendCopyFromChunk(Buffer.from(data));
        connection.endCopyFrom();
      },
      handleCommandComplete() {},
      // The client forgets the active query on an error: ReadyForQuery never reaches it then.
      handleError(error: unknown) {
        reject(error);
      },
      handleReadyForQuery() {
        resolve();
      },
    };
    (client as unknown as { query(submittable: unknown): void }).query(submittable);
  });
}
