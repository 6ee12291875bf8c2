import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { migrate } from 'tenantry';
// Until package.json exports "./placement", the tests reach the module by path.
import {
  type MigrateTargetsProgress,
  migrateTargets,
  placeTenantInSchema,
  splitMigrationStatements,
} from 'tenantry/placement';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { withClient } from './fixtures.ts';

const targetCount = 200;
let database: TestDatabase;
let directory: string;
let source: { readonly name: string; readonly directory: string };
let schemas: string[];

async function admin<R extends Record<string, unknown>>(
  text: string,
  values: unknown[] = [],
): Promise<R[]> {
  return withClient(
    database.adminUrl,
    async (client) => (await client.query<R>(text, values)).rows,
  );
}

async function appliedVersions(schema: string): Promise<number[]> {
  const rows = await admin<{ version: number }>(
    `select version from tenantry.placement_migrations
      where schema_name = $1 and source = 'tenant_test' order by version`,
    [schema],
  );
  return rows.map((row) => row.version);
}

async function migratePool(): Promise<void> {
  await migrate({ connectionString: database.adminUrl, sources: [source] });
}

before(async () => {
  database = await createTestDatabase();
  directory = await mkdtemp(join(tmpdir(), 'tenantry-placement-migrations-'));
  source = { name: 'tenant_test', directory };
  await writeFile(
    join(directory, '0001-notes.sql'),
    `-- Shared: runs in the pool only.
insert into tenantry.plans (id, name) values ('placement-test', 'Placement test')
  on conflict (id) do nothing;
create table notes (
  tenant_id uuid not null,
  id uuid not null default gen_random_uuid(),
  body text not null,
  primary key (tenant_id, id)
);
select tenantry.enable_tenant_isolation('notes');
`,
  );
  await migratePool();
  const ids = Array.from({ length: targetCount }, () => randomUUID());
  await admin(
    `insert into tenantry.tenants (id, slug, name)
     select id, 'many-' || n, 'Many ' || n from unnest($1::uuid[]) with ordinality as t(id, n)`,
    [ids],
  );
  // The pool holds the reference app's tables too; these schemas get only the test source.
  let next = 0;
  const placed: string[] = [];
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < ids.length) {
        const tenantId = ids[next++] as string;
        const result = await placeTenantInSchema({
          connectionString: database.adminUrl,
          tenantId,
          sources: [source],
          verify: false,
        });
        placed.push(result.schema);
      }
    }),
  );
  schemas = placed.sort();
});

after(async () => {
  await database?.drop();
  if (directory !== undefined) await rm(directory, { recursive: true, force: true });
});

describe('migrating every dedicated schema', () => {
  test('200 schemas get the new files; one failing schema stops only itself', async () => {
    assert.equal(schemas.length, targetCount);
    await writeFile(
      join(directory, '0002-labels.sql'),
      `create table labels (
  tenant_id uuid not null,
  id uuid not null default gen_random_uuid(),
  name text not null,
  primary key (tenant_id, id)
);
select tenantry.enable_tenant_isolation('labels');
`,
    );
    await writeFile(
      join(directory, '0003-pinned.sql'),
      'alter table notes add column pinned boolean not null default false;\n',
    );
    await migratePool();
    const victim = schemas[37] as string;
    // Something made by hand in one schema collides with the next file there, and only there.
    await admin(`create table ${victim}.labels (x integer)`);

    const progress: MigrateTargetsProgress[] = [];
    const first = await migrateTargets({
      connectionString: database.adminUrl,
      sources: [source],
      concurrency: 8,
      onProgress: (event) => progress.push(event),
    });
    assert.equal(first.total, targetCount);
    assert.equal(first.migrated, targetCount - 1);
    assert.equal(first.upToDate, 0);
    assert.deepEqual(
      first.failed.map((result) => [result.schema, result.error?.version, result.error?.code]),
      [[victim, 2, 'TENANTRY_ERR_MIGRATION_FAILED']],
    );
    assert.match(first.failed[0]?.error?.message ?? '', /labels/);
    assert.deepEqual(first.waitingForPool, []);
    assert.deepEqual(
      progress.map((event) => event.done),
      Array.from({ length: targetCount }, (_, index) => index + 1),
    );
    assert.ok(progress.every((event) => event.total === targetCount));

    assert.deepEqual(await appliedVersions(victim), [1]);
    const [pinned] = await admin<{ n: number }>(
      `select count(*)::int as n from information_schema.columns
        where table_schema = $1 and table_name = 'notes' and column_name = 'pinned'`,
      [victim],
    );
    assert.equal(pinned?.n, 0, 'the failed schema did not go past its failure');
    const complete = await admin<{ n: number }>(
      `select count(distinct schema_name)::int as n from tenantry.placement_migrations
        where source = 'tenant_test' and version = 3`,
    );
    assert.equal(complete[0]?.n, targetCount - 1);
    const forced = await admin<{ n: number }>(
      `select count(*)::int as n from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.relname = 'labels' and n.nspname = any($1::text[])
          and c.relrowsecurity and c.relforcerowsecurity`,
      [schemas],
    );
    assert.equal(forced[0]?.n, targetCount - 1);

    await admin(`drop table ${victim}.labels`);
    const second = await migrateTargets({
      connectionString: database.adminUrl,
      sources: [source],
      concurrency: 8,
    });
    assert.equal(second.migrated, 1);
    assert.equal(second.upToDate, targetCount - 1);
    assert.deepEqual(second.failed, []);
    const resumed = second.results.find((result) => result.schema === victim);
    assert.deepEqual(
      resumed?.applied.map((file) => file.version),
      [2, 3],
    );
    assert.deepEqual(await appliedVersions(victim), [1, 2, 3]);
  });

  test('a file the pool has not applied waits, and a schema being migrated is skipped', async () => {
    await writeFile(
      join(directory, '0004-archived.sql'),
      'alter table notes add column archived boolean not null default false;\n',
    );
    const held = schemas[0] as string;
    const summary = await withClient(database.adminUrl, async (client) => {
      await client.query('select pg_advisory_lock(hashtextextended($1, 0))', [
        `tenantry:placement:${held}`,
      ]);
      return migrateTargets({ connectionString: database.adminUrl, sources: [source] });
    });
    assert.deepEqual(summary.waitingForPool, [{ source: 'tenant_test', version: 4 }]);
    assert.deepEqual(
      summary.busy.map((result) => result.schema),
      [held],
    );
    assert.equal(summary.upToDate, targetCount - 1);
    const archived = await admin<{ n: number }>(
      `select count(*)::int as n from information_schema.columns
        where table_name = 'notes' and column_name = 'archived'`,
    );
    assert.equal(archived[0]?.n, 0);
  });

  test('a file changed after the pool applied it is refused before any schema runs it', async () => {
    await rm(join(directory, '0004-archived.sql'));
    await writeFile(
      join(directory, '0003-pinned.sql'),
      'alter table notes add column pinned boolean not null default true;\n',
    );
    await assert.rejects(
      migrateTargets({ connectionString: database.adminUrl, sources: [source] }),
      { code: 'TENANTRY_ERR_MIGRATION_CHANGED' },
    );
    await writeFile(
      join(directory, '0003-pinned.sql'),
      'alter table notes add column pinned boolean not null default false;\n',
    );
  });
});

describe('which statements a dedicated schema runs', () => {
  test('qualified objects, schemas and extensions are shared; bare names are tenant DDL', () => {
    const statements = splitMigrationStatements(`
create extension if not exists citext;
create schema auth;
grant usage on schema auth to app;
create table auth.users (id uuid primary key, note text default 'a;b');
create table memberships (tenant_id uuid not null, user_id uuid references auth.users (id));
create index on auth.users (note);
create index memberships_user_idx on memberships (user_id);
create function auth.f() returns int language sql as $$ select 1; $$;
create function g() returns int language sql as $body$ select 2; $body$;
insert into tenantry.plans (id, name) values ('x', 'y; z');
select tenantry.enable_tenant_isolation('memberships');
do $$ begin perform 1; end $$;
-- tenantry: shared
select 'only in the pool';
/* a ; comment */ alter table memberships add column role text;
`);
    assert.deepEqual(
      statements.map((statement) => statement.scope),
      [
        'shared',
        'shared',
        'shared',
        'shared',
        'tenant',
        'shared',
        'tenant',
        'shared',
        'tenant',
        'shared',
        'tenant',
        'tenant',
        'shared',
        'tenant',
      ],
    );
  });

  test('a tenant statement that moves the search path is refused', () => {
    assert.throws(
      () => splitMigrationStatements('set search_path = public; create table x (a int);'),
      {
        code: 'TENANTRY_ERR_MIGRATION_INVALID_FILE',
      },
    );
    assert.throws(() => splitMigrationStatements("select 'unterminated"), {
      code: 'TENANTRY_ERR_MIGRATION_INVALID_FILE',
    });
  });
});
