import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { type Kysely, sql } from 'kysely';
import { createTenantry, isTenantryError, type Tenantry, type TenantryErrorCode } from 'tenantry';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { type ReferenceDatabase, type SeededTenant, seedTenant, withClient } from './fixtures.ts';

const hasCode = (code: TenantryErrorCode) => (error: unknown) => isTenantryError(error, code);

let database: TestDatabase;
let tenantry: Tenantry<ReferenceDatabase>;
let a: SeededTenant;
let b: SeededTenant;

before(async () => {
  database = await createTestDatabase();
  tenantry = await createTenantry<ReferenceDatabase>({
    connectionString: database.appUrl,
    maxConnections: 4,
  });
  a = await seedTenant(database.adminUrl, tenantry, 'alpha');
  b = await seedTenant(database.adminUrl, tenantry, 'bravo');
});

after(async () => {
  await tenantry.close();
  await database.drop();
});

async function countAsSuperuser(table: string, tenantId: string): Promise<number> {
  return withClient(database.adminUrl, async (client) => {
    const result = await client.query(
      `select count(*)::int as n from ${table} where tenant_id = $1`,
      [tenantId],
    );
    return result.rows[0].n as number;
  });
}

describe('withTenant', () => {
  test('discovers the tenant tables from the catalog', () => {
    for (const table of [
      'contacts',
      'tags',
      'contact_tags',
      'conversations',
      'messages',
      'public.contacts',
    ]) {
      assert.ok(tenantry.tenantTables.has(table), table);
    }
    assert.ok(!tenantry.tenantTables.has('tenants'));
  });

  test('commits when fn resolves', async () => {
    const id = await tenantry.withTenant(a.tenantId, async (db) => {
      const row = await db
        .insertInto('tags')
        .values({ name: 'committed' })
        .returning('id')
        .executeTakeFirstOrThrow();
      return row.id;
    });
    const seen = await tenantry.withTenant(a.tenantId, (db) =>
      db.selectFrom('tags').select('name').where('id', '=', id).executeTakeFirst(),
    );
    assert.equal(seen?.name, 'committed');
  });

  test('rolls back when fn throws, and rethrows the error', async () => {
    const before = await countAsSuperuser('tags', a.tenantId);
    const failure = new Error('boom');
    await assert.rejects(
      tenantry.withTenant(a.tenantId, async (db) => {
        await db.insertInto('tags').values({ name: 'rolled back' }).execute();
        throw failure;
      }),
      (error) => error === failure,
    );
    assert.equal(await countAsSuperuser('tags', a.tenantId), before);
  });

  test('a failed statement whose error fn swallowed still rolls the whole unit back', async () => {
    const before = await countAsSuperuser('tags', a.tenantId);
    await assert.rejects(
      tenantry.withTenant(a.tenantId, async (db) => {
        await db.insertInto('tags').values({ name: 'first' }).execute();
        await db
          .insertInto('tags')
          .values({ name: 'first' })
          .execute()
          .catch(() => undefined);
        return 'ignored the conflict';
      }),
      hasCode('TENANTRY_ERR_DB_CONFLICT'),
    );
    assert.equal(await countAsSuperuser('tags', a.tenantId), before);
  });

  test('maps a unique violation to TENANTRY_ERR_DB_CONFLICT with the SQLSTATE and no server text', async () => {
    await assert.rejects(
      tenantry.withTenant(a.tenantId, (db) =>
        db.insertInto('tags').values({ name: 'alpha tag' }).execute(),
      ),
      (error) => {
        assert.ok(isTenantryError(error, 'TENANTRY_ERR_DB_CONFLICT'));
        assert.equal(error.status, 409);
        assert.equal(error.details?.sqlState, '23505');
        assert.doesNotMatch(error.message, /tags_tenant_id_name_key|alpha tag/);
        return true;
      },
    );
  });

  test('nested calls for the same tenant join the open transaction on the same connection', async () => {
    const single = await createTenantry<ReferenceDatabase>({
      connectionString: database.appUrl,
      maxConnections: 1,
    });
    try {
      const pids = await single.withTenant(a.tenantId, async (db) => {
        const outer = await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(db);
        const inner = await single.withTenant(a.tenantId, async (nested) => {
          await nested.insertInto('tags').values({ name: 'nested' }).execute();
          return sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(nested);
        });
        const sameTransaction = await db
          .selectFrom('tags')
          .select('id')
          .where('name', '=', 'nested')
          .execute();
        assert.equal(sameTransaction.length, 1);
        return [outer.rows[0]?.pid, inner.rows[0]?.pid];
      });
      assert.equal(pids[0], pids[1]);
    } finally {
      await single.close();
    }
  });

  test('a nested call for another tenant is refused', async () => {
    await assert.rejects(
      tenantry.withTenant(a.tenantId, () => tenantry.withTenant(b.tenantId, async () => 'never')),
      hasCode('TENANTRY_ERR_CONTEXT_MISMATCH'),
    );
  });

  test('a nested call naming only the tenant joins a unit with a user; another user is refused', async () => {
    const userId = randomUUID();
    const joined = await tenantry.withTenant({ tenantId: a.tenantId, userId }, async () =>
      tenantry.withTenant(a.tenantId, (db) =>
        sql<{ user_id: string }>`select tenantry.current_user_id() as user_id`.execute(db),
      ),
    );
    assert.equal(joined.rows[0]?.user_id, userId);
    await assert.rejects(
      tenantry.withTenant({ tenantId: a.tenantId, userId }, () =>
        tenantry.withTenant({ tenantId: a.tenantId, userId: randomUUID() }, async () => 'never'),
      ),
      hasCode('TENANTRY_ERR_CONTEXT_MISMATCH'),
    );
  });

  test('an exhausted pool fails with DB_UNAVAILABLE after acquireTimeoutMs instead of hanging', async () => {
    const small = await createTenantry<ReferenceDatabase>({
      connectionString: database.appUrl,
      maxConnections: 1,
      acquireTimeoutMs: 200,
    });
    try {
      let release = () => {};
      const held = new Promise<void>((resolve) => {
        release = resolve;
      });
      let holding = () => {};
      const isHolding = new Promise<void>((resolve) => {
        holding = resolve;
      });
      const holder = small.withTenant(a.tenantId, async (db) => {
        await db.insertInto('tags').values({ name: 'holds-the-connection' }).execute();
        holding();
        await held;
      });
      await isHolding;
      await assert.rejects(
        small.withTenant(b.tenantId, (other) => other.selectFrom('tags').selectAll().execute()),
        hasCode('TENANTRY_ERR_DB_UNAVAILABLE'),
      );
      release();
      await holder;
    } finally {
      await small.close();
    }
  });

  test('sets the user id when one is given', async () => {
    const userId = randomUUID();
    const settings = await tenantry.withTenant({ tenantId: a.tenantId, userId }, async (db) => {
      const result = await sql<{ tenant: string; user: string }>`
        select current_setting('tenantry.tenant_id') as tenant, current_setting('tenantry.user_id') as user`.execute(
        db,
      );
      return result.rows[0];
    });
    assert.deepEqual(settings, { tenant: a.tenantId, user: userId });
  });

  test('Kysely transactions inside a unit of work become savepoints', async () => {
    const names = await tenantry.withTenant(a.tenantId, async (db) => {
      await db.insertInto('tags').values({ name: 'outer kept' }).execute();
      await db
        .transaction()
        .execute(async (trx) => {
          await trx.insertInto('tags').values({ name: 'inner undone' }).execute();
          throw new Error('undo inner');
        })
        .catch(() => undefined);
      return db
        .selectFrom('tags')
        .select('name')
        .where('name', 'in', ['outer kept', 'inner undone'])
        .execute();
    });
    assert.deepEqual(
      names.map((row) => row.name),
      ['outer kept'],
    );
  });
});

describe('pool hygiene', () => {
  let single: Tenantry<ReferenceDatabase>;
  before(async () => {
    single = await createTenantry<ReferenceDatabase>({
      connectionString: database.appUrl,
      maxConnections: 1,
    });
  });
  after(() => single.close());

  const backendPid = async () =>
    (await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(single.db)).rows[0]?.pid;
  const visibleContacts = async () =>
    (await sql<{ n: number }>`select count(*)::int as n from contacts`.execute(single.db)).rows[0]
      ?.n;
  const tenantSetting = async () =>
    (
      await sql<{
        value: string | null;
      }>`select current_setting('tenantry.tenant_id', true) as value`.execute(single.db)
    ).rows[0]?.value;

  test("after tenant A's unit of work, code without context on the same connection sees nothing", async () => {
    const pidInside = await single.withTenant(a.tenantId, async (db) => {
      assert.equal((await db.selectFrom('contacts').select('id').execute()).length, 1);
      return (await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(db)).rows[0]?.pid;
    });
    assert.equal(await backendPid(), pidInside);
    assert.equal(await visibleContacts(), 0);
    assert.equal(await tenantSetting(), '');
  });

  test('an exception after the context is set leaves the next checkout clean', async () => {
    await assert.rejects(
      single.withTenant(a.tenantId, async (db) => {
        await db.selectFrom('contacts').select('id').execute();
        throw new Error('handler failed');
      }),
    );
    assert.equal(await visibleContacts(), 0);
    assert.equal(await tenantSetting(), '');
  });

  test('a failed statement leaves the next checkout clean and usable', async () => {
    await assert.rejects(
      single.withTenant(a.tenantId, (db) => sql`select 1/0`.execute(db)),
      hasCode('TENANTRY_ERR_DB_INVALID_VALUE'),
    );
    assert.equal(await visibleContacts(), 0);
    const next = await single.withTenant(b.tenantId, (db) =>
      db.selectFrom('contacts').select('tenant_id').execute(),
    );
    assert.deepEqual(next, [{ tenant_id: b.tenantId }]);
  });

  test('a callback that outlives its unit of work cannot reach tenant tables', async () => {
    let leaked: Promise<unknown> | undefined;
    const { promise: unitEnded, resolve: endUnit } = Promise.withResolvers<void>();
    await single.withTenant(a.tenantId, async (db) => {
      leaked = (async () => {
        await unitEnded;
        return db.selectFrom('contacts').selectAll().execute();
      })().then(
        (rows) => rows,
        (error: unknown) => error,
      );
    });
    endUnit();
    const outcome = await leaked;
    assert.ok(isTenantryError(outcome, 'TENANTRY_ERR_CONTEXT_MISSING'), String(outcome));
  });

  test('10,000 interleaved units of work across 50 tenants at concurrency 20 see only their own rows', async () => {
    const pool = await createTenantry<ReferenceDatabase>({
      connectionString: database.appUrl,
      maxConnections: 5,
    });
    try {
      const tenants: string[] = [];
      for (let i = 0; i < 50; i++) {
        const tenantId = randomUUID();
        tenants.push(tenantId);
        await pool.withTenant(tenantId, (db) =>
          db
            .insertInto('contacts')
            .values(Array.from({ length: 1 + (i % 3) }, (_, n) => ({ name: `t${i}-${n}` })))
            .execute(),
        );
      }
      let next = 0;
      const wrong: string[] = [];
      const worker = async () => {
        while (next < 10_000) {
          const index = next++;
          const tenantIndex = (index * 7) % 50;
          const tenantId = tenants[tenantIndex] as string;
          const run = index % 2 === 0 ? pool.withTenant.bind(pool) : pool.oneShot.bind(pool);
          const rows = await run(tenantId, (db) =>
            sql<{ tenant_id: string }>`select tenant_id from contacts`.execute(db),
          );
          if (
            rows.rows.length !== 1 + (tenantIndex % 3) ||
            rows.rows.some((row) => row.tenant_id !== tenantId)
          ) {
            wrong.push(`${index}: ${tenantId}`);
          }
        }
      };
      await Promise.all(Array.from({ length: 20 }, worker));
      assert.deepEqual(wrong, []);
    } finally {
      await pool.close();
    }
  });
});

describe('oneShot', () => {
  test('runs one query as a unit of work', async () => {
    const row = await tenantry.oneShot(b.tenantId, (db) =>
      db
        .selectFrom('contacts')
        .select(['id', 'tenant_id'])
        .where('id', '=', b.contactId)
        .executeTakeFirst(),
    );
    assert.deepEqual(row, { id: b.contactId, tenant_id: b.tenantId });
  });

  test("cannot see another tenant's row by id", async () => {
    const row = await tenantry.oneShot(a.tenantId, (db) =>
      db.selectFrom('contacts').selectAll().where('id', '=', b.contactId).executeTakeFirst(),
    );
    assert.equal(row, undefined);
  });

  test('commits a write, and a failing write commits nothing', async () => {
    await tenantry.oneShot(a.tenantId, (db) =>
      db.insertInto('tags').values({ name: 'one-shot' }).execute(),
    );
    const before = await countAsSuperuser('tags', a.tenantId);
    await assert.rejects(
      tenantry.oneShot(a.tenantId, (db) =>
        db.insertInto('tags').values({ name: 'one-shot' }).execute(),
      ),
      hasCode('TENANTRY_ERR_DB_CONFLICT'),
    );
    assert.equal(await countAsSuperuser('tags', a.tenantId), before);
  });

  test('refuses a second query', async () => {
    await assert.rejects(
      tenantry.oneShot(a.tenantId, async (db) => {
        await db.selectFrom('tags').select('id').execute();
        await db.selectFrom('tags').select('id').execute();
      }),
      hasCode('TENANTRY_ERR_ONE_SHOT_SECOND_QUERY'),
    );
  });
});

describe('application guard', () => {
  test('queries on tenant tables outside a tenant context throw before reaching the database', async () => {
    const attempts = [
      () => tenantry.db.selectFrom('contacts').selectAll().execute(),
      () => tenantry.db.insertInto('tags').values({ name: 'x' }).execute(),
      () => tenantry.db.updateTable('messages').set({ body: 'x' }).execute(),
      () => tenantry.db.deleteFrom('conversations').execute(),
      () =>
        tenantry.db
          .selectFrom('tenantry.tenants' as never)
          .innerJoin('contacts', 'contacts.tenant_id' as never, 'tenantry.tenants.id' as never)
          .selectAll()
          .execute(),
    ];
    for (const attempt of attempts)
      await assert.rejects(attempt(), hasCode('TENANTRY_ERR_CONTEXT_MISSING'));
  });

  test('non-tenant tables stay reachable outside a tenant context', async () => {
    const rows = await sql<{
      slug: string;
    }>`select slug from tenantry.tenants order by slug`.execute(tenantry.db);
    assert.ok(rows.rows.some((row) => row.slug === 'alpha'));
  });

  test('adds tenant_id = current to reads, in ON for joined tables', async () => {
    const compiled = await tenantry.withTenant(a.tenantId, async (db) =>
      db
        .selectFrom('contacts as c')
        .leftJoin('conversations', 'conversations.contact_id', 'c.id')
        .select(['c.id'])
        .where('c.name', '=', 'x')
        .compile(),
    );
    assert.match(
      compiled.sql,
      /left join "conversations" on \("conversations"\."contact_id" = "c"\."id"\) and "conversations"\."tenant_id" = \$1/,
    );
    assert.match(compiled.sql, /where \("c"\."name" = \$2\) and "c"\."tenant_id" = \$3/);
    assert.deepEqual(compiled.parameters, [a.tenantId, 'x', a.tenantId]);
  });

  test('an outer join keeps rows without a match', async () => {
    const contact = await tenantry.withTenant(a.tenantId, async (db) => {
      const created = await db
        .insertInto('contacts')
        .values({ name: 'lonely' })
        .returning('id')
        .executeTakeFirstOrThrow();
      return db
        .selectFrom('contacts')
        .leftJoin('conversations', 'conversations.contact_id', 'contacts.id')
        .select(['contacts.name', 'conversations.id as conversation'])
        .where('contacts.id', '=', created.id)
        .executeTakeFirst();
    });
    assert.deepEqual(contact, { name: 'lonely', conversation: null });
  });

  test('fills tenant_id on insert', async () => {
    const row = await tenantry.withTenant(b.tenantId, (db) =>
      db
        .insertInto('tags')
        .values({ name: 'filled' })
        .returning('tenant_id')
        .executeTakeFirstOrThrow(),
    );
    assert.equal(row.tenant_id, b.tenantId);
  });

  test('refuses writes that name another tenant, and nothing is written', async () => {
    const before = await countAsSuperuser('tags', b.tenantId);
    await assert.rejects(
      tenantry.withTenant(a.tenantId, (db) =>
        db.insertInto('tags').values({ name: 'smuggled', tenant_id: b.tenantId }).execute(),
      ),
      hasCode('TENANTRY_ERR_GUARD_TENANT_MISMATCH'),
    );
    await assert.rejects(
      tenantry.withTenant(a.tenantId, (db) =>
        db.updateTable('tags').set({ tenant_id: b.tenantId }).where('id', '=', a.tagId).execute(),
      ),
      hasCode('TENANTRY_ERR_GUARD_TENANT_MISMATCH'),
    );
    assert.equal(await countAsSuperuser('tags', b.tenantId), before);
  });

  test("an update by another tenant's id changes nothing", async () => {
    const result = await tenantry.withTenant(a.tenantId, (db) =>
      db
        .updateTable('contacts')
        .set({ name: 'hijacked' })
        .where('id', '=', b.contactId)
        .executeTakeFirst(),
    );
    assert.equal(result.numUpdatedRows, 0n);
    const name = await withClient(database.adminUrl, async (client) => {
      const row = await client.query('select name from contacts where id = $1', [b.contactId]);
      return row.rows[0].name as string;
    });
    assert.equal(name, 'bravo contact');
  });

  test('with the guard off, RLS alone still hides every row outside a context', async () => {
    const unguarded = await createTenantry<ReferenceDatabase>({
      connectionString: database.appUrl,
      guard: 'off',
    });
    try {
      assert.deepEqual(await unguarded.db.selectFrom('contacts').selectAll().execute(), []);
      await assert.rejects(
        unguarded.db
          .insertInto('tags')
          .values({ name: 'no tenant', tenant_id: a.tenantId })
          .execute(),
        hasCode('TENANTRY_ERR_DB_FORBIDDEN'),
      );
    } finally {
      await unguarded.close();
    }
  });
});

describe('tenant id validation happens before any SQL', () => {
  test('hostile ids are rejected without touching the database', async () => {
    const unreachable = await createTenantry<ReferenceDatabase>({
      connectionString: 'postgres://tenantry_app:x@127.0.0.1:1/none',
      tenantTables: ['contacts'],
    });
    try {
      for (const hostile of [
        `${a.tenantId}'; set local tenantry.tenant_id = '${b.tenantId}`,
        `${a.tenantId};`,
        ` ${a.tenantId}`,
        `{${a.tenantId}}`,
        "'' or true",
      ]) {
        await assert.rejects(
          unreachable.withTenant(hostile, async () => 'never'),
          hasCode('TENANTRY_ERR_TENANT_ID_INVALID'),
        );
        await assert.rejects(
          unreachable.oneShot({ tenantId: a.tenantId, userId: hostile }, async () => 'never'),
          hasCode('TENANTRY_ERR_USER_ID_INVALID'),
        );
      }
      await assert.rejects(
        unreachable.withTenant(a.tenantId, (db) => db.selectFrom('contacts').selectAll().execute()),
        hasCode('TENANTRY_ERR_DB_UNAVAILABLE'),
      );
    } finally {
      await unreachable.close();
    }
  });

  test('an uppercase id is canonicalised and selects the same tenant', async () => {
    const rows = await tenantry.withTenant(a.tenantId.toUpperCase(), (db) =>
      db.selectFrom('contacts').select('tenant_id').where('id', '=', a.contactId).execute(),
    );
    assert.deepEqual(rows, [{ tenant_id: a.tenantId }]);
  });
});

describe('prepared statements', () => {
  let single: Tenantry<ReferenceDatabase>;
  before(async () => {
    single = await createTenantry<ReferenceDatabase>({
      connectionString: database.appUrl,
      maxConnections: 1,
    });
  });
  after(() => single.close());

  const preparedTenantryStatements = (db: Parameters<Parameters<typeof single.withTenant>[1]>[0]) =>
    sql<{
      statement: string;
    }>`select statement from pg_prepared_statements where name like 'tenantry_%'`.execute(db);

  test('a query is prepared once per connection and serves every tenant', async () => {
    const lookup = (tenantId: string, id: string) =>
      single.oneShot(tenantId, (db) =>
        db.selectFrom('contacts').select('name').where('id', '=', id).executeTakeFirst(),
      );
    assert.equal((await lookup(a.tenantId, a.contactId))?.name, 'alpha contact');
    assert.equal((await lookup(b.tenantId, b.contactId))?.name, 'bravo contact');
    assert.equal(await lookup(a.tenantId, b.contactId), undefined);
    const prepared = await single.withTenant(a.tenantId, preparedTenantryStatements);
    const lookups = prepared.rows.filter((row) =>
      row.statement.startsWith('select "name" from "contacts"'),
    );
    assert.equal(lookups.length, 1);
  });

  test('a statement that fails to parse is not cached and does not poison the connection', async () => {
    for (let i = 0; i < 2; i++) {
      await assert.rejects(
        single.oneShot(a.tenantId, (db) => sql`select nonsense from`.execute(db)),
        (error) => isTenantryError(error) && error.details?.sqlState === '42601',
      );
    }
    const rows = await single.oneShot(a.tenantId, (db) =>
      db.selectFrom('tags').select('tenant_id').execute(),
    );
    assert.ok(rows.length > 0 && rows.every((row) => row.tenant_id === a.tenantId));
  });

  test('a schema change that alters a cached result type is absorbed by one re-run', async () => {
    const read = () =>
      single.oneShot(b.tenantId, (db) => db.selectFrom('tags').selectAll().execute());
    assert.equal((await read()).length > 0, true);
    await withClient(database.adminUrl, (client) =>
      client.query(
        "set role tenantry_owner; alter table tags add column colour text not null default 'grey'",
      ),
    );
    try {
      const rows = (await read()) as unknown as { colour: string }[];
      assert.ok(rows.every((row) => row.colour === 'grey'));
    } finally {
      await withClient(database.adminUrl, (client) =>
        client.query('set role tenantry_owner; alter table tags drop column colour'),
      );
    }
  });

  test('with preparedStatements off, nothing is prepared', async () => {
    const unprepared = await createTenantry<ReferenceDatabase>({
      connectionString: database.appUrl,
      maxConnections: 1,
      preparedStatements: false,
    });
    try {
      await unprepared.oneShot(a.tenantId, (db) =>
        db.selectFrom('contacts').select('id').execute(),
      );
      const prepared = await unprepared.withTenant(a.tenantId, preparedTenantryStatements);
      assert.deepEqual(prepared.rows, []);
    } finally {
      await unprepared.close();
    }
  });
});

describe('unit of work edge cases', () => {
  test('a failed statement undone by a savepoint rollback lets the unit commit', async () => {
    const names = await tenantry.withTenant(a.tenantId, async (db) => {
      await db.insertInto('tags').values({ name: 'before savepoint' }).execute();
      await db
        .transaction()
        .execute((trx) => trx.insertInto('tags').values({ name: 'alpha tag' }).execute())
        .catch(() => undefined);
      return db.selectFrom('tags').select('name').where('name', '=', 'before savepoint').execute();
    });
    assert.equal(names.length, 1);
    assert.equal(
      await withClient(database.adminUrl, async (client) => {
        const result = await client.query(
          "select count(*)::int as n from tags where name = 'before savepoint'",
        );
        return result.rows[0].n as number;
      }),
      1,
    );
  });

  test('errors thrown by fn pass through unchanged, even with a string code', async () => {
    const own = Object.assign(new Error('file missing'), { code: 'ENOENT' });
    await assert.rejects(
      tenantry.withTenant(a.tenantId, async (db) => {
        await db.selectFrom('tags').select('id').execute();
        throw own;
      }),
      (error) => error === own,
    );
  });

  test('close() ends the pool even when no query ran through Kysely', async () => {
    const url = new URL(database.appUrl);
    url.searchParams.set('application_name', 'tenantry_close_test');
    const idle = await createTenantry<ReferenceDatabase>({ connectionString: url.toString() });
    const count = () =>
      withClient(database.adminUrl, async (client) => {
        const result = await client.query(
          "select count(*)::int as n from pg_stat_activity where application_name = 'tenantry_close_test'",
        );
        return result.rows[0].n as number;
      });
    assert.equal(await count(), 1);
    await idle.close();
    const deadline = Date.now() + 5000;
    while ((await count()) !== 0 && Date.now() < deadline)
      await new Promise((resolve) => setImmediate(resolve));
    assert.equal(await count(), 0);
  });
});

describe('streaming', () => {
  let tenantId: string;
  before(async () => {
    tenantId = randomUUID();
    await tenantry.withTenant(tenantId, (db) =>
      db
        .insertInto('contacts')
        .values(Array.from({ length: 1050 }, (_, n) => ({ name: `streamed ${n}` })))
        .execute(),
    );
  });

  test('a stream reads every row of the tenant through a cursor, in chunks, and the unit commits', async () => {
    const seen = await tenantry.withTenant(tenantId, async (db) => {
      const tenants = new Set<string>();
      let count = 0;
      for await (const row of db.selectFrom('contacts').select(['tenant_id', 'name']).stream(100)) {
        tenants.add(row.tenant_id);
        count++;
      }
      await db.insertInto('tags').values({ name: 'after stream' }).execute();
      return { count, tenants: [...tenants] };
    });
    assert.deepEqual(seen, { count: 1050, tenants: [tenantId] });
    const tag = await tenantry.oneShot(tenantId, (db) =>
      db.selectFrom('tags').select('name').where('name', '=', 'after stream').executeTakeFirst(),
    );
    assert.equal(tag?.name, 'after stream');
  });

  test("a stream as another tenant sees none of this tenant's rows", async () => {
    const names = await tenantry.withTenant(a.tenantId, async (db) => {
      const found: string[] = [];
      for await (const row of db.selectFrom('contacts').select('name').stream(50))
        found.push(row.name);
      return found;
    });
    assert.ok(!names.some((name) => name.startsWith('streamed ')));
  });

  test('a query while the stream is open is refused instead of hanging', async () => {
    await assert.rejects(
      tenantry.withTenant(tenantId, async (db) => {
        for await (const _row of db.selectFrom('contacts').select('id').stream(10)) {
          await db.selectFrom('tags').select('id').execute();
        }
      }),
      hasCode('TENANTRY_ERR_STREAM_OPEN'),
    );
  });

  test('breaking out of a stream closes the cursor and the unit goes on', async () => {
    const after = await tenantry.withTenant(tenantId, async (db) => {
      for await (const _row of db.selectFrom('contacts').select('id').stream(10)) break;
      return db.selectFrom('contacts').select('id').limit(1).execute();
    });
    assert.equal(after.length, 1);
  });

  test('oneShot refuses to stream', async () => {
    await assert.rejects(
      tenantry.oneShot(tenantId, async (db) => {
        for await (const _row of db.selectFrom('contacts').select('id').stream()) break;
      }),
      hasCode('TENANTRY_ERR_STREAMING_UNSUPPORTED'),
    );
  });
});

describe('beginUnit', () => {
  test('takes no connection until the first query, then commits', async () => {
    const unreachable = await createTenantry<ReferenceDatabase>({
      connectionString: 'postgres://tenantry_app:x@127.0.0.1:1/none',
      tenantTables: ['tags'],
    });
    try {
      const idle = unreachable.beginUnit(a.tenantId);
      assert.equal(idle.isActive, false);
      await idle.commit();
      assert.equal(idle.isClosed, true);
      const touched = unreachable.beginUnit(a.tenantId);
      await assert.rejects(
        touched.db.selectFrom('tags').selectAll().execute(),
        hasCode('TENANTRY_ERR_DB_UNAVAILABLE'),
      );
      await touched.rollback();
    } finally {
      await unreachable.close();
    }

    const unit = tenantry.beginUnit(a.tenantId);
    await unit.db.insertInto('tags').values({ name: 'begun-commit' }).execute();
    assert.equal(unit.isActive, true);
    await unit.commit();
    const rows = await tenantry.withTenant(a.tenantId, (db) =>
      db.selectFrom('tags').select('name').where('name', '=', 'begun-commit').execute(),
    );
    assert.equal(rows.length, 1);
  });

  test('rollback discards, and the handle refuses queries once ended', async () => {
    const unit = tenantry.beginUnit(a.tenantId);
    await unit.db.insertInto('tags').values({ name: 'begun-rollback' }).execute();
    await unit.rollback();
    await unit.commit();
    await assert.rejects(
      unit.db.selectFrom('tags').selectAll().execute(),
      hasCode('TENANTRY_ERR_UNIT_OF_WORK_CLOSED'),
    );
    assert.equal(
      await withClient(database.adminUrl, async (client) => {
        const result = await client.query(
          "select count(*)::int as n from tags where name = 'begun-rollback'",
        );
        return result.rows[0].n as number;
      }),
      0,
    );
  });

  test("the bound handle is scoped to its tenant and cannot reach another's rows", async () => {
    const unit = tenantry.beginUnit(a.tenantId);
    try {
      const tenants = await unit.db.selectFrom('contacts').select('tenant_id').execute();
      assert.ok(tenants.length > 0);
      assert.ok(tenants.every((row) => row.tenant_id === a.tenantId));
      const filtered = await unit.db
        .selectFrom('contacts')
        .selectAll()
        .where('tenant_id', '=', b.tenantId)
        .execute();
      assert.deepEqual(filtered, []);
      await assert.rejects(
        unit.db.insertInto('tags').values({ name: 'smuggled', tenant_id: b.tenantId }).execute(),
        hasCode('TENANTRY_ERR_GUARD_TENANT_MISMATCH'),
      );
    } finally {
      await unit.rollback();
    }
  });

  test('run() makes tenantry.db and withTenant join the unit; another tenant is refused', async () => {
    const unit = tenantry.beginUnit({ tenantId: a.tenantId, userId: a.userId });
    await unit.run(async () => {
      await tenantry.db.insertInto('tags').values({ name: 'joined-through-run' }).execute();
      const context = await tenantry.withTenant({ tenantId: a.tenantId, userId: a.userId }, () =>
        Promise.resolve(tenantry.currentContext()),
      );
      assert.deepEqual(context, { tenantId: a.tenantId, userId: a.userId });
      await assert.rejects(
        tenantry.withTenant(b.tenantId, async () => 'never'),
        hasCode('TENANTRY_ERR_CONTEXT_MISMATCH'),
      );
    });
    await unit.rollback();
    assert.equal(
      await withClient(database.adminUrl, async (client) => {
        const result = await client.query(
          "select count(*)::int as n from tags where name = 'joined-through-run'",
        );
        return result.rows[0].n as number;
      }),
      0,
    );
  });

  test('a failed statement makes commit roll back and throw', async () => {
    const unit = tenantry.beginUnit(a.tenantId);
    await unit.db.insertInto('tags').values({ name: 'before-failure' }).execute();
    await assert.rejects(
      unit.db.insertInto('tags').values({ name: 'before-failure' }).execute(),
      hasCode('TENANTRY_ERR_DB_CONFLICT'),
    );
    await assert.rejects(unit.commit(), hasCode('TENANTRY_ERR_DB_CONFLICT'));
    assert.equal(
      await withClient(database.adminUrl, async (client) => {
        const result = await client.query(
          "select count(*)::int as n from tags where name = 'before-failure'",
        );
        return result.rows[0].n as number;
      }),
      0,
    );
  });

  test('every ended unit gives its connection back (pool of one, fifty units)', async () => {
    const small = await createTenantry<ReferenceDatabase>({
      connectionString: database.appUrl,
      maxConnections: 1,
    });
    try {
      for (let index = 0; index < 50; index++) {
        const unit = small.beginUnit(index % 2 === 0 ? a.tenantId : b.tenantId);
        await unit.db.selectFrom('tags').select('id').execute();
        if (index % 3 === 0) await unit.rollback();
        else await unit.commit();
      }
    } finally {
      await small.close();
    }
  });
});

describe('a unit whose connection never came', () => {
  test('cannot commit even when the caller swallowed the query error', async () => {
    const unreachable = await createTenantry<ReferenceDatabase>({
      connectionString: 'postgres://tenantry_app:x@127.0.0.1:1/none',
      tenantTables: ['tags'],
    });
    try {
      await assert.rejects(
        unreachable.withTenant(a.tenantId, async (db) => {
          await db
            .insertInto('tags')
            .values({ name: 'never' })
            .execute()
            .catch(() => undefined);
          return 'resolved anyway';
        }),
        hasCode('TENANTRY_ERR_DB_UNAVAILABLE'),
      );
      const unit = unreachable.beginUnit(a.tenantId);
      await unit.db
        .selectFrom('tags')
        .selectAll()
        .execute()
        .catch(() => undefined);
      await assert.rejects(unit.commit(), hasCode('TENANTRY_ERR_DB_UNAVAILABLE'));
    } finally {
      await unreachable.close();
    }
  });
});

describe('SQLSTATE mapping', () => {
  test('a delete blocked by a restrict foreign key is TENANTRY_ERR_DB_STILL_REFERENCED (409)', async () => {
    await assert.rejects(
      tenantry.withTenant(a.tenantId, (db) =>
        db.deleteFrom('contacts').where('id', '=', a.contactId).execute(),
      ),
      (error: unknown) =>
        isTenantryError(error, 'TENANTRY_ERR_DB_STILL_REFERENCED') && error.status === 409,
    );
    assert.equal((await countAsSuperuser('contacts', a.tenantId)) > 0, true);
  });
});

describe('reads before the first write (autocommitReads)', () => {
  const openTransactions = () =>
    withClient(database.adminUrl, async (client) => {
      const result = await client.query<{ n: number }>(
        `select count(*)::int as n from pg_stat_activity
         where usename = 'tenantry_app' and datname = current_database()
           and state = 'idle in transaction'`,
      );
      return result.rows[0]?.n;
    });

  test('a read leaves no transaction open; the first write opens one', async () => {
    const small = await createTenantry<ReferenceDatabase>({
      connectionString: database.appUrl,
      maxConnections: 1,
    });
    try {
      await small
        .withTenant(a.tenantId, async (db) => {
          const rows = await db.selectFrom('tags').select('tenant_id').execute();
          assert.ok(rows.every((row) => row.tenant_id === a.tenantId));
          assert.equal(await openTransactions(), 0);
          await db.insertInto('tags').values({ name: 'opens-transaction' }).execute();
          assert.equal(await openTransactions(), 1);
          throw new Error('roll back');
        })
        .catch((error: unknown) => {
          if (!(error instanceof Error) || error.message !== 'roll back') throw error;
        });
      assert.equal(
        await withClient(database.adminUrl, async (client) => {
          const result = await client.query(
            "select count(*)::int as n from tags where name = 'opens-transaction'",
          );
          return result.rows[0].n as number;
        }),
        0,
      );
    } finally {
      await small.close();
    }
  });

  test('with autocommitReads: false a read opens the transaction', async () => {
    const small = await createTenantry<ReferenceDatabase>({
      connectionString: database.appUrl,
      maxConnections: 1,
      autocommitReads: false,
    });
    try {
      await small.withTenant(a.tenantId, async (db) => {
        await db.selectFrom('tags').select('id').execute();
        assert.equal(await openTransactions(), 1);
      });
    } finally {
      await small.close();
    }
  });

  test('a SELECT that writes runs again inside the transaction, once, and rolls back with it', async () => {
    await withClient(database.adminUrl, (client) =>
      client.query(`create or replace function public.bench_touch_tag(tag_name text) returns int
        language sql as $$ insert into public.tags (name) values (tag_name) returning 1 $$`),
    );
    const count = (name: string) =>
      withClient(database.adminUrl, async (client) => {
        const result = await client.query('select count(*)::int as n from tags where name = $1', [
          name,
        ]);
        return result.rows[0].n as number;
      });
    const touch = (db: Kysely<ReferenceDatabase>, name: string) =>
      db
        .selectFrom('contacts')
        .select(sql<number>`public.bench_touch_tag(${name})`.as('touched'))
        .where('id', '=', a.contactId)
        .execute();
    await tenantry.withTenant(a.tenantId, (db) => touch(db, 'written-by-select'));
    assert.equal(await count('written-by-select'), 1);
    await assert.rejects(
      tenantry.withTenant(a.tenantId, async (db) => {
        await touch(db, 'rolled-back-select');
        throw new Error('roll back');
      }),
      /roll back/,
    );
    assert.equal(await count('rolled-back-select'), 0);
  });

  test('a repeatable read unit reads one snapshot', async () => {
    const seen = await tenantry.withTenant(
      a.tenantId,
      async (db) => {
        const before = await db.selectFrom('tags').select('id').execute();
        await withClient(database.adminUrl, (client) =>
          client.query('insert into tags (tenant_id, name) values ($1, $2)', [
            a.tenantId,
            'appeared-meanwhile',
          ]),
        );
        const after = await db.selectFrom('tags').select('id').execute();
        return [before.length, after.length];
      },
      { isolationLevel: 'repeatable read' },
    );
    assert.equal(seen[0], seen[1]);
  });
});
