import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type pg from 'pg';
import { createTenantry } from 'tenantry';
import { placeTenantInSchema } from 'tenantry/placement';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import {
  appMigrationSource,
  bodyOf,
  createTestApp,
  createWorkspace,
  queryAsAdmin,
  type TestApp,
} from './app-fixtures.ts';
import {
  type ReferenceDatabase,
  referenceTenantTables,
  type SeededTenant,
  seedTenant,
  sqlState,
  withClient,
} from './fixtures.ts';

let counter = 0;
const unique = () => `${process.pid.toString(36)}p${(counter++).toString(36)}`;

describe('sign-in lists a user’s workspaces in every placement', () => {
  let testApp: TestApp;

  before(async () => {
    testApp = await createTestApp({ placement: 'schema' });
  });
  after(() => testApp.close());

  async function post(url: string, payload: object, token?: string) {
    return testApp.app.inject({
      method: 'POST',
      url,
      payload,
      headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
    });
  }

  /** A user signed up through the API (their first workspace is pooled), with a password. */
  async function signUp() {
    const id = unique();
    const input = {
      email: `user-${id}@example.com`,
      password: 'a long enough password',
      name: `User ${id}`,
      workspaceName: `Zulu ${id}`,
      workspaceSlug: `zulu-${id}`,
    };
    const response = await post('/auth/signup', input);
    assert.equal(response.statusCode, 201, response.body);
    return { input, session: bodyOf(response) };
  }

  async function login(input: { email: string; password: string }, workspace?: string) {
    return post('/auth/login', {
      email: input.email,
      password: input.password,
      ...(workspace === undefined ? {} : { workspace }),
    });
  }

  test('workspaces placed in dedicated schemas are listed, switched to and served', async () => {
    const { input, session } = await signUp();
    const placed = await createWorkspace(testApp, `alpha-${unique()}`);
    const notJoined = await createWorkspace(testApp, `beta-${unique()}`);
    assert.ok(testApp.schemas.has(placed.tenantId), 'the workspace has a schema of its own');
    await queryAsAdmin(
      testApp,
      `insert into memberships (tenant_id, user_id, role) values ($1, $2, 'member')`,
      [placed.tenantId, session.user.id],
    );
    const inPool = await withClient(testApp.database.adminUrl, async (client) => {
      const result = await client.query('select 1 from public.memberships where tenant_id = $1', [
        placed.tenantId,
      ]);
      return result.rowCount;
    });
    assert.equal(inPool, 0, 'the membership is stored in the schema, not the pool');

    const first = await login(input);
    assert.equal(first.statusCode, 200, first.body);
    assert.deepEqual(
      bodyOf(first).workspaces.map((workspace: { slug: string }) => workspace.slug),
      [placed.slug, input.workspaceSlug],
      'alpha-… (schema) sorts before Zulu (pool); beta-… is not the user’s',
    );
    assert.equal(bodyOf(first).workspace.slug, placed.slug);
    assert.equal(bodyOf(first).workspace.role, 'member');

    const switched = await post('/auth/switch', { workspace: placed.slug }, session.accessToken);
    assert.equal(switched.statusCode, 200, switched.body);
    assert.equal(bodyOf(switched).workspace.id, placed.tenantId);
    const me = await testApp.app.inject({
      method: 'GET',
      url: '/v1/workspace',
      headers: { authorization: `Bearer ${bodyOf(switched).accessToken}` },
    });
    assert.equal(me.statusCode, 200, me.body);
    assert.equal(bodyOf(me).id, placed.tenantId);

    const refused = await post('/auth/switch', { workspace: notJoined.slug }, session.accessToken);
    assert.equal(refused.statusCode, 403, refused.body);
    assert.equal(bodyOf(refused).code, 'APP_ERR_AUTH_NOT_A_MEMBER');
  });

  test('a role change and a removal in the schema reach the listing', async () => {
    const { input, session } = await signUp();
    const placed = await createWorkspace(testApp, `gamma-${unique()}`);
    await queryAsAdmin(
      testApp,
      `insert into memberships (tenant_id, user_id, role) values ($1, $2, 'member')`,
      [placed.tenantId, session.user.id],
    );
    await queryAsAdmin(
      testApp,
      `update memberships set role = 'admin' where tenant_id = $1 and user_id = $2`,
      [placed.tenantId, session.user.id],
    );
    const promoted = await login(input, placed.slug);
    assert.equal(promoted.statusCode, 200, promoted.body);
    assert.equal(bodyOf(promoted).workspace.role, 'admin');

    await queryAsAdmin(testApp, 'delete from memberships where tenant_id = $1 and user_id = $2', [
      placed.tenantId,
      session.user.id,
    ]);
    const after = await login(input);
    assert.equal(after.statusCode, 200, after.body);
    assert.deepEqual(
      bodyOf(after).workspaces.map((workspace: { slug: string }) => workspace.slug),
      [input.workspaceSlug],
    );
    const named = await login(input, placed.slug);
    assert.equal(named.statusCode, 403, named.body);
    assert.equal(bodyOf(named).code, 'APP_ERR_AUTH_NOT_A_MEMBER');
  });

  test('the membership index is not readable or writable by the app role', async () => {
    await withClient(testApp.database.appUrl, async (client) => {
      assert.equal(
        await sqlState(client.query('select * from auth.workspace_memberships')),
        '42501',
      );
      assert.equal(
        await sqlState(
          client.query(
            `insert into auth.workspace_memberships (workspace_id, user_id, role)
             values ($1, $2, 'owner')`,
            [randomUUID(), randomUUID()],
          ),
        ),
        '42501',
      );
    });
  });

  test('without the index trigger in a schema, its workspace is not listed (negative control)', async () => {
    const { input, session } = await signUp();
    const placed = await createWorkspace(testApp, `delta-${unique()}`);
    const schema = testApp.schemas.get(placed.tenantId);
    await queryAsAdmin(
      testApp,
      `alter table "${schema}".memberships disable trigger memberships_workspace_index`,
    );
    await queryAsAdmin(
      testApp,
      `insert into memberships (tenant_id, user_id, role) values ($1, $2, 'member')`,
      [placed.tenantId, session.user.id],
    );
    const response = await login(input);
    assert.equal(response.statusCode, 200, response.body);
    assert.deepEqual(
      bodyOf(response).workspaces.map((workspace: { slug: string }) => workspace.slug),
      [input.workspaceSlug],
    );
  });
});

interface Scenario {
  readonly database: TestDatabase;
  readonly a: SeededTenant;
  readonly b: SeededTenant;
  readonly schemaA: string;
  readonly schemaB: string;
}

/**
 * Two workspaces seeded in every table, each placed in its own schema when its first unit of work
 * asks where it lives (after {@link seedTenant} created it in the catalog, before any row).
 */
async function createScenario(): Promise<{ scenario: Scenario; close: () => Promise<void> }> {
  const database = await createTestDatabase();
  const placed = new Map<string, Promise<string>>();
  const tenantry = await createTenantry<ReferenceDatabase>({
    connectionString: database.appUrl,
    tenantSchema: (tenantId) => {
      let schema = placed.get(tenantId);
      if (schema === undefined) {
        schema = placeTenantInSchema({
          connectionString: database.adminUrl,
          tenantId,
          sources: [appMigrationSource],
        }).then((placement) => placement.schema);
        placed.set(tenantId, schema);
      }
      return schema;
    },
  });
  try {
    const a = await seedTenant(database.adminUrl, tenantry, 'alpha');
    const b = await seedTenant(database.adminUrl, tenantry, 'bravo');
    const schemaA = await (placed.get(a.tenantId) as Promise<string>);
    const schemaB = await (placed.get(b.tenantId) as Promise<string>);
    return { scenario: { database, a, b, schemaA, schemaB }, close: () => database.drop() };
  } catch (error) {
    await database.drop();
    throw error;
  } finally {
    await tenantry.close();
  }
}

async function inTransaction<T>(
  client: pg.Client,
  statements: readonly string[],
  fn: () => Promise<T>,
): Promise<T> {
  await client.query('begin');
  try {
    for (const statement of statements) await client.query(statement);
    return await fn();
  } finally {
    await client.query('rollback');
  }
}

/**
 * Tries, as tenant A in its own schema, to reach tenant B's rows of `table` in B's schema, and
 * returns every attempt that succeeded (an empty list means B's schema is walled off by RLS even
 * though the app role may use it).
 */
async function schemaIsolationViolations(scenario: Scenario, table: string): Promise<string[]> {
  const { database, a, b, schemaA, schemaB } = scenario;
  const violations: string[] = [];
  const own = `"${schemaA}".${table}`;
  const other = `"${schemaB}".${table}`;
  const asA = [
    `set local tenantry.tenant_id = '${a.tenantId}'`,
    `set local search_path = "${schemaA}", public`,
  ];
  const rowOf = (qualified: string) =>
    withClient(database.adminUrl, async (admin) => {
      const result = await admin.query<{ row: Record<string, unknown> }>(
        `select to_jsonb(t) as row from ${qualified} t limit 1`,
      );
      return result.rows[0]?.row;
    });
  const aRow = await rowOf(own);
  const bRow = await rowOf(other);
  if (aRow === undefined || bRow === undefined) return [`no ${table} row in both schemas`];
  const columns = await withClient(database.adminUrl, async (admin) => {
    const result = await admin.query<{ name: string }>(
      `select quote_ident(attname) as name from pg_attribute
        where attrelid = $1::regclass and attnum > 0 and not attisdropped and attgenerated = ''
        order by attnum`,
      [own],
    );
    return result.rows.map((row) => row.name).join(', ');
  });
  const insertInto = (qualified: string) =>
    `insert into ${qualified} (${columns}) select ${columns} from jsonb_populate_record(null::${qualified}, $1)`;
  const fresh = (row: Record<string, unknown>) =>
    'id' in row ? { ...row, id: randomUUID() } : row;
  const countB = () =>
    withClient(database.adminUrl, async (admin) => {
      const result = await admin.query<{ n: number }>(`select count(*)::int as n from ${other}`);
      return result.rows[0]?.n ?? -1;
    });
  const bBefore = await countB();

  await withClient(database.appUrl, async (app) => {
    await inTransaction(app, asA, async () => {
      const seen = await app.query(`select tenant_id from ${table}`);
      if (seen.rowCount === 0) violations.push('the unqualified name found none of the own rows');
      if (seen.rows.some((row) => row.tenant_id !== a.tenantId))
        violations.push('the unqualified name returned another tenant');
      if ((await app.query(`select 1 from ${other}`)).rowCount !== 0)
        violations.push("select from B's schema returned rows");
      if ((await app.query(`select 1 from public.${table}`)).rowCount !== 0)
        violations.push('select from the pool returned rows');
    });
    for (const [verb, statement] of [
      ['update', `update ${other} set tenant_id = tenant_id`],
      ['delete', `delete from ${other}`],
    ] as const) {
      await inTransaction(app, asA, async () => {
        const reached = await app.query(statement).then(
          (result) => result.rowCount !== 0,
          () => true,
        );
        if (reached) violations.push(`${verb} reached B's schema`);
      });
    }
    await inTransaction(app, asA, async () => {
      if ((await sqlState(app.query(insertInto(other), [fresh(bRow)]))) !== '42501')
        violations.push("insert of B's row into B's schema");
    });
    await inTransaction(app, asA, async () => {
      if ((await sqlState(app.query(insertInto(own), [fresh(bRow)]))) !== '42501')
        violations.push("insert with B's tenant_id into A's schema");
    });
    await inTransaction(app, asA, async () => {
      const moved = await sqlState(app.query(`update ${table} set tenant_id = $1`, [b.tenantId]));
      if (moved !== '42501') violations.push('update moved a row to B');
    });
    await inTransaction(app, [`set local search_path = "${schemaA}", public`], async () => {
      if ((await app.query(`select 1 from ${table}`)).rowCount !== 0)
        violations.push('no context: select returned rows');
      if ((await sqlState(app.query(insertInto(own), [fresh(aRow)]))) !== '42501')
        violations.push('no context: insert not refused by the policy');
    });
  });
  if ((await countB()) !== bBefore) violations.push("B's rows changed");
  return violations;
}

describe('SQL-level isolation with workspaces in dedicated schemas', () => {
  let scenario: Scenario;
  let close: () => Promise<void>;

  before(async () => {
    ({ scenario, close } = await createScenario());
  });
  after(() => close());

  test('each schema holds every tenant table and the seeds landed there, not in the pool', async () => {
    await withClient(scenario.database.adminUrl, async (admin) => {
      for (const table of referenceTenantTables) {
        const counts = await admin.query<{ own: number; pool: number }>(
          `select (select count(*)::int from "${scenario.schemaA}".${table}) as own,
                  (select count(*)::int from public.${table}) as pool`,
        );
        assert.ok((counts.rows[0]?.own ?? 0) > 0, `${scenario.schemaA}.${table} has A's rows`);
        assert.equal(counts.rows[0]?.pool, 0, `public.${table} stays empty`);
      }
    });
  });

  for (const table of referenceTenantTables) {
    test(`${table}: tenant A cannot read, change, move or create rows in tenant B's schema`, async () => {
      assert.deepEqual(await schemaIsolationViolations(scenario, table), []);
    });
  }
});

describe('negative control: the schema matrix notices a broken table', () => {
  let scenario: Scenario;
  let close: () => Promise<void>;

  before(async () => {
    ({ scenario, close } = await createScenario());
  });
  after(() => close());

  test("RLS disabled on contacts in B's schema is reported", async () => {
    await withClient(scenario.database.adminUrl, (admin) =>
      admin.query(`alter table "${scenario.schemaB}".contacts disable row level security`),
    );
    const violations = await schemaIsolationViolations(scenario, 'contacts');
    assert.ok(violations.includes("select from B's schema returned rows"), violations.join('; '));
    assert.ok(violations.includes("insert of B's row into B's schema"), violations.join('; '));
  });
});
