import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type pg from 'pg';
import { createTenantry } from 'tenantry';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import {
  listTenantTables,
  type ReferenceDatabase,
  referenceTenantTables,
  type SeededTenant,
  seedTenant,
  sqlState,
  withClient,
} from './fixtures.ts';

interface ForeignKey {
  readonly parent: string;
  /** The referencing columns (tenant_id aside) and the parent columns they point at, in order. */
  readonly columns: readonly string[];
  readonly parent_columns: readonly string[];
}

interface Scenario {
  readonly database: TestDatabase;
  readonly a: SeededTenant;
  readonly b: SeededTenant;
  readonly tables: readonly string[];
}

async function createScenario(): Promise<{ scenario: Scenario; close: () => Promise<void> }> {
  const database = await createTestDatabase();
  const tenantry = await createTenantry<ReferenceDatabase>({ connectionString: database.appUrl });
  const a = await seedTenant(database.adminUrl, tenantry, 'alpha');
  const b = await seedTenant(database.adminUrl, tenantry, 'bravo');
  await tenantry.close();
  const tables = await listTenantTables(database.adminUrl);
  return { scenario: { database, a, b, tables }, close: () => database.drop() };
}

/** Runs `fn` in a transaction with the given raw context statement, always rolled back. */
async function inTransaction<T>(
  client: pg.Client,
  contextSql: string | undefined,
  fn: () => Promise<T>,
): Promise<T> {
  await client.query('begin');
  try {
    if (contextSql !== undefined) await client.query(contextSql);
    return await fn();
  } finally {
    await client.query('rollback');
  }
}

function asTenant(tenantId: string): string {
  return `set local tenantry.tenant_id = '${tenantId}'`;
}

async function foreignKeysOf(adminUrl: string, table: string): Promise<ForeignKey[]> {
  return withClient(adminUrl, async (client) => {
    const result = await client.query<ForeignKey>(
      `select c.confrelid::regclass::text as parent,
              array_agg(la.attname::text order by k.n) as columns,
              array_agg(ra.attname::text order by k.n) as parent_columns
       from pg_constraint c
       join unnest(c.conkey, c.confkey) with ordinality as k(attnum, fattnum, n) on true
       join pg_attribute la on la.attrelid = c.conrelid and la.attnum = k.attnum
       join pg_attribute ra on ra.attrelid = c.confrelid and ra.attnum = k.fattnum
       where c.contype = 'f' and c.conrelid = $1::regclass and c.conparentid = 0 and la.attname <> 'tenant_id'
         and exists (select 1 from pg_attribute ta
                     where ta.attrelid = c.confrelid and ta.attname = 'tenant_id')
       group by c.oid, c.confrelid`,
      [table],
    );
    return result.rows;
  });
}

/**
 * Tries every cross-tenant operation on one table as tenant A's context and returns each one
 * that succeeded (an empty list means the table is isolated).
 */
async function isolationViolations(scenario: Scenario, table: string): Promise<string[]> {
  const { database, a, b } = scenario;
  const violations: string[] = [];
  const rowOf = async (tenantId: string) =>
    withClient(database.adminUrl, async (admin) => {
      const result = await admin.query<{ row: Record<string, unknown> }>(
        `select to_jsonb(t) as row from ${table} t where tenant_id = $1 limit 1`,
        [tenantId],
      );
      return result.rows[0]?.row;
    });
  const bRow = await rowOf(b.tenantId);
  const aRow = await rowOf(a.tenantId);
  if (bRow === undefined || aRow === undefined)
    return [`fixtures have no ${table} row for both tenants`];
  const fresh = (row: Record<string, unknown>) =>
    'id' in row ? { ...row, id: randomUUID() } : row;
  const columns = await withClient(database.adminUrl, async (admin) => {
    const result = await admin.query<{ name: string }>(
      `select quote_ident(attname) as name from pg_attribute
       where attrelid = $1::regclass and attnum > 0 and not attisdropped and attgenerated = ''
       order by attnum`,
      [table],
    );
    return result.rows.map((row) => row.name).join(', ');
  });
  const insertSql = `insert into ${table} (${columns}) select ${columns} from jsonb_populate_record(null::${table}, $1)`;
  const bCount = async () =>
    withClient(database.adminUrl, async (admin) => {
      const result = await admin.query(
        `select count(*)::int as n from ${table} where tenant_id = $1`,
        [b.tenantId],
      );
      return result.rows[0].n as number;
    });
  const bBefore = await bCount();

  await withClient(database.appUrl, async (app) => {
    await inTransaction(app, asTenant(a.tenantId), async () => {
      const seen = await app.query(`select tenant_id from ${table}`);
      if (seen.rows.some((row) => row.tenant_id !== a.tenantId))
        violations.push('select returned another tenant');
      if (seen.rowCount === 0) violations.push('select returned none of the own rows');
      const filtered = await app.query(`select 1 from ${table} where tenant_id = $1`, [b.tenantId]);
      if (filtered.rowCount !== 0) violations.push("select by B's tenant_id returned rows");
    });
    for (const [verb, sql] of [
      ['update', `update ${table} set tenant_id = tenant_id where tenant_id = $1`],
      ['delete', `delete from ${table} where tenant_id = $1`],
    ] as const) {
      await inTransaction(app, asTenant(a.tenantId), async () => {
        // A statement that fails touched B's rows too (a foreign key refused to let it go on).
        const reached = await app.query(sql, [b.tenantId]).then(
          (result) => result.rowCount !== 0,
          () => true,
        );
        if (reached) violations.push(`${verb} reached B's rows`);
      });
    }
    await inTransaction(app, asTenant(a.tenantId), async () => {
      // 42501: refused by the policy's WITH CHECK, not by some unrelated constraint.
      const state = await sqlState(app.query(insertSql, [fresh(bRow)]));
      if (state !== '42501') violations.push("insert with B's tenant_id");
    });
    await inTransaction(app, asTenant(a.tenantId), async () => {
      const moved = await sqlState(
        app.query(`update ${table} set tenant_id = $1 where tenant_id = $2`, [
          b.tenantId,
          a.tenantId,
        ]),
      );
      if (moved !== '42501') violations.push('update moved a row to B');
    });
    for (const foreignKey of await foreignKeysOf(database.adminUrl, table)) {
      const parentOfB = await withClient(database.adminUrl, async (admin) => {
        const result = await admin.query<{ row: Record<string, unknown> }>(
          `select to_jsonb(p) as row from ${foreignKey.parent} p where tenant_id = $1 limit 1`,
          [b.tenantId],
        );
        return result.rows[0]?.row ?? {};
      });
      const reference = Object.fromEntries(
        foreignKey.columns.map((column, index) => [
          column,
          parentOfB[foreignKey.parent_columns[index] ?? ''],
        ]),
      );
      await inTransaction(app, asTenant(a.tenantId), async () => {
        const child = { ...fresh(aRow), ...reference };
        if ((await sqlState(app.query(insertSql, [child]))) !== '23503') {
          violations.push(
            `child row referenced B's ${foreignKey.parent} through ${foreignKey.columns.join(', ')}`,
          );
        }
      });
    }
    for (const [label, contextSql] of [
      ['no context', undefined],
      ['empty context', "set local tenantry.tenant_id = ''"],
    ] as const) {
      await inTransaction(app, contextSql, async () => {
        const seen = await app.query(`select 1 from ${table}`);
        if (seen.rowCount !== 0) violations.push(`${label}: select returned rows`);
        const changed = await app.query(`update ${table} set tenant_id = tenant_id`);
        if (changed.rowCount !== 0) violations.push(`${label}: update reached rows`);
      });
      await inTransaction(app, contextSql, async () => {
        if ((await sqlState(app.query(insertSql, [fresh(aRow)]))) !== '42501')
          violations.push(`${label}: insert not refused by the policy`);
      });
    }
    const autocommit = await app.query(`select 1 from ${table}`);
    if (autocommit.rowCount !== 0) violations.push('outside any transaction: select returned rows');
  });
  if ((await bCount()) !== bBefore) violations.push("B's rows changed");
  return violations;
}

describe('SQL-level isolation matrix', () => {
  let scenario: Scenario;
  let close: () => Promise<void>;

  before(async () => {
    ({ scenario, close } = await createScenario());
  });
  after(() => close());

  test('the matrix below covers every tenant table in the catalog', () => {
    assert.deepEqual([...scenario.tables].sort(), [...referenceTenantTables].sort());
  });

  for (const table of referenceTenantTables) {
    test(`${table}: tenant A cannot read, change, move, reference or create tenant B's rows`, async () => {
      assert.deepEqual(await isolationViolations(scenario, table), []);
    });
  }

  test('the empty string left after a committed context means no tenant', async () => {
    await withClient(scenario.database.appUrl, async (app) => {
      await app.query('begin');
      await app.query(asTenant(scenario.a.tenantId));
      assert.equal((await app.query('select 1 from contacts')).rowCount, 1);
      await app.query('commit');
      const setting = await app.query(
        "select current_setting('tenantry.tenant_id', true) as value",
      );
      assert.equal(setting.rows[0].value, '');
      assert.equal((await app.query('select 1 from contacts')).rowCount, 0);
    });
  });

  test('a malformed context value fails the statement instead of widening access', async () => {
    await withClient(scenario.database.appUrl, async (app) => {
      await inTransaction(app, "set local tenantry.tenant_id = 'not-a-uuid'", async () => {
        assert.equal(await sqlState(app.query('select 1 from contacts')), '22P02');
      });
    });
  });
});

describe('negative control: the matrix notices a broken table', () => {
  let scenario: Scenario;
  let close: () => Promise<void>;

  before(async () => {
    ({ scenario, close } = await createScenario());
  });
  after(() => close());

  test('RLS disabled on contacts is reported as violations', async () => {
    await withClient(scenario.database.adminUrl, (admin) =>
      admin.query('alter table contacts disable row level security'),
    );
    const violations = await isolationViolations(scenario, 'contacts');
    assert.ok(violations.includes('select returned another tenant'), violations.join('; '));
    assert.ok(violations.includes("insert with B's tenant_id"), violations.join('; '));
  });

  test('an extra permissive policy cannot widen access past the restrictive one', async () => {
    await withClient(scenario.database.adminUrl, (admin) =>
      admin.query(
        'create policy everyone on tags as permissive for all using (true) with check (true)',
      ),
    );
    assert.deepEqual(await isolationViolations(scenario, 'tags'), []);
  });

  test('dropping the restrictive policy alone still isolates, dropping both exposes nothing either', async () => {
    await withClient(scenario.database.adminUrl, (admin) =>
      admin.query(
        'drop policy tenantry_tenant_isolation on messages; drop policy tenantry_tenant_rows on messages',
      ),
    );
    const violations = await isolationViolations(scenario, 'messages');
    assert.ok(violations.includes('select returned none of the own rows'), violations.join('; '));
  });
});
