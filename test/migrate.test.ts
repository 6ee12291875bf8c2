import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { isTenantryError, type TenantryErrorCode } from 'tenantry';
import { billingMigrationSource, billingMigrationsDirectory } from 'tenantry/billing';
import { jobsMigrationSource, jobsMigrationsDirectory } from 'tenantry/jobs';
import { platformMigrationSource, platformMigrationsDirectory } from 'tenantry/platform';
import { storageMigrationSource, storageMigrationsDirectory } from 'tenantry/storage';
import { readTestCluster } from 'tenantry/testing';
import { quoteIdentifier } from '../src/config.ts';
import { withDatabase } from '../src/database/bootstrap.ts';
import {
  coreMigrationsDirectory,
  type MigrationSource,
  migrate,
  substituteVariables,
} from '../src/migrations/migrate.ts';

import { withClient } from './fixtures.ts';

const appMigrationsDirectory = fileURLToPath(new URL('../app/migrations/', import.meta.url));
const scratchDatabases: string[] = [];
const scratchFolders: string[] = [];

/** An empty database owned by the owner role, as `tenantry setup` leaves it; dropped after the file. */
async function createEmptyDatabase(): Promise<string> {
  const name = `migrate_test_${randomBytes(6).toString('hex')}`;
  const { adminUrl } = readTestCluster();
  await withClient(adminUrl, (client) =>
    client.query(`create database ${quoteIdentifier(name)} owner tenantry_owner`),
  );
  scratchDatabases.push(name);
  return withDatabase(adminUrl, name);
}

/** Writes migration files into a fresh temporary folder. */
async function migrationFolder(files: Record<string, string>): Promise<string> {
  const directory = await mkdtemp(join(tmpdir(), 'tenantry-migrate-test-'));
  scratchFolders.push(directory);
  await writeMigrations(directory, files);
  return directory;
}

async function writeMigrations(directory: string, files: Record<string, string>): Promise<void> {
  for (const [name, sql] of Object.entries(files)) await writeFile(join(directory, name), sql);
}

async function sqlFiles(directory: string): Promise<string[]> {
  return (await readdir(directory)).filter((entry) => entry.endsWith('.sql')).sort();
}

async function recorded(url: string, schema = 'tenantry') {
  return await withClient(url, async (client) => {
    const result = await client.query<{ source: string; version: number; checksum: string }>(
      `select source, version, checksum from ${quoteIdentifier(schema)}.migrations
       order by applied_at, source, version`,
    );
    return result.rows;
  });
}

async function relationExists(url: string, name: string): Promise<boolean> {
  return await withClient(url, async (client) => {
    const result = await client.query<{ found: boolean }>(
      'select to_regclass($1) is not null as found',
      [name],
    );
    return result.rows[0]?.found === true;
  });
}

function rejectsWith(code: TenantryErrorCode, check: (error: Error) => void = () => {}) {
  return (error: unknown) => {
    assert.ok(isTenantryError(error, code), `expected ${code}, got ${String(error)}`);
    check(error);
    return true;
  };
}

async function waitFor(what: string, condition: () => Promise<boolean>, deadlineMs = 10_000) {
  const deadline = Date.now() + deadlineMs;
  while (!(await condition())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

after(async () => {
  const { adminUrl } = readTestCluster();
  await withClient(adminUrl, async (client) => {
    for (const name of scratchDatabases) {
      await client.query(`drop database if exists ${quoteIdentifier(name)} with (force)`);
    }
  });
  for (const directory of scratchFolders) await rm(directory, { recursive: true, force: true });
});

describe('migrate', () => {
  test('applies the core and app migrations to an empty database and records their checksums', async () => {
    const url = await createEmptyDatabase();
    // The app's attachments reference the file registry, so the storage source comes first; the
    // platform source's job view reads the job queue, so the jobs source comes before it.
    const sources: MigrationSource[] = [
      jobsMigrationSource(),
      storageMigrationSource(),
      billingMigrationSource(),
      platformMigrationSource(),
      { name: 'app', directory: appMigrationsDirectory },
    ];
    const expected: { source: string; version: number; checksum: string }[] = [];
    for (const [source, directory] of [
      ['tenantry', coreMigrationsDirectory],
      ['tenantry_jobs', jobsMigrationsDirectory],
      ['tenantry_storage', storageMigrationsDirectory],
      ['tenantry_billing', billingMigrationsDirectory],
      ['tenantry_platform', platformMigrationsDirectory],
      ['app', appMigrationsDirectory],
    ] as const) {
      for (const file of await sqlFiles(directory)) {
        const sql = await readFile(join(directory, file), 'utf8');
        expected.push({
          source,
          version: Number.parseInt(file, 10),
          checksum: createHash('sha256').update(sql).digest('hex'),
        });
      }
    }

    const summary = await migrate({ connectionString: url, sources });

    assert.deepEqual(
      summary.applied.map(({ source, version }) => ({ source, version })),
      expected.map(({ source, version }) => ({ source, version })),
    );
    assert.equal(summary.upToDate, 0);
    assert.deepEqual(await recorded(url), expected);
    assert.equal(await relationExists(url, 'tenantry.tenants'), true);
    assert.equal(await relationExists(url, 'public.contacts'), true);

    const again = await migrate({ connectionString: url, sources });
    assert.deepEqual(again.applied, []);
    assert.equal(again.upToDate, expected.length);
    assert.deepEqual(await recorded(url), expected);
  });

  test('refuses a changed applied file and applies nothing else', async () => {
    const url = await createEmptyDatabase();
    const first = await migrationFolder({ '1-first.sql': 'create table first_one (id int);' });
    const second = await migrationFolder({ '1-second.sql': 'create table second_one (id int);' });
    const sources = [
      { name: 'first', directory: first },
      { name: 'second', directory: second },
    ];
    await migrate({ connectionString: url, sources });
    const before = await recorded(url);

    // A pending file in an earlier source must not run when a later source has a changed file.
    await writeMigrations(first, { '2-first.sql': 'create table first_two (id int);' });
    await writeMigrations(second, {
      '1-second.sql': 'create table second_one (id int, extra text);',
      '2-second.sql': 'create table second_two (id int);',
    });
    await assert.rejects(
      migrate({ connectionString: url, sources }),
      rejectsWith('TENANTRY_ERR_MIGRATION_CHANGED', (error) => {
        assert.match(error.message, /second\/1-second/);
      }),
    );

    assert.deepEqual(await recorded(url), before);
    assert.equal(await relationExists(url, 'public.first_two'), false);
    assert.equal(await relationExists(url, 'public.second_two'), false);
  });

  test('rolls back a failing migration, stops there, and resumes once it is fixed', async () => {
    const url = await createEmptyDatabase();
    const directory = await migrationFolder({
      '1-one.sql': 'create table step_one (id int);',
      '2-two.sql': 'create table step_two (id int);\nselect * from no_such_table;',
      '3-three.sql': 'create table step_three (id int);',
    });
    const sources = [{ name: 'app', directory }];

    await assert.rejects(
      migrate({ connectionString: url, sources }),
      rejectsWith('TENANTRY_ERR_MIGRATION_FAILED', (error) => {
        assert.match(error.message, /app\/2-two/);
        assert.equal((error.cause as { code?: string } | undefined)?.code, '42P01');
      }),
    );
    const app = (await recorded(url)).filter((row) => row.source === 'app');
    assert.deepEqual(
      app.map((row) => row.version),
      [1],
    );
    assert.equal(await relationExists(url, 'public.step_one'), true);
    assert.equal(await relationExists(url, 'public.step_two'), false);
    assert.equal(await relationExists(url, 'public.step_three'), false);

    await writeMigrations(directory, { '2-two.sql': 'create table step_two (id int);' });
    const summary = await migrate({ connectionString: url, sources });
    assert.deepEqual(
      summary.applied.map(({ source, version }) => `${source}/${version}`),
      ['app/2', 'app/3'],
    );
    assert.equal(summary.upToDate, (await sqlFiles(coreMigrationsDirectory)).length + 1);
    assert.equal(await relationExists(url, 'public.step_two'), true);
    assert.equal(await relationExists(url, 'public.step_three'), true);
  });

  for (const [title, files] of [
    ['an uppercase name', { '1-Create.sql': 'select 1;' }],
    ['a name without a number', { 'create.sql': 'select 1;' }],
    ['a number without a name', { '1.sql': 'select 1;' }],
    ['two files sharing a version', { '1-one.sql': 'select 1;', '001-also-one.sql': 'select 1;' }],
  ] as const) {
    test(`rejects ${title} before touching the database`, async () => {
      const url = await createEmptyDatabase();
      const directory = await migrationFolder(files);
      await assert.rejects(
        migrate({ connectionString: url, sources: [{ name: 'app', directory }] }),
        rejectsWith('TENANTRY_ERR_MIGRATION_INVALID_FILE'),
      );
      assert.equal(await relationExists(url, 'tenantry.migrations'), false);
    });
  }

  test('rejects a missing migration folder', async () => {
    const url = await createEmptyDatabase();
    await assert.rejects(
      migrate({
        connectionString: url,
        sources: [
          { name: 'app', directory: join(tmpdir(), `missing-${randomBytes(6).toString('hex')}`) },
        ],
      }),
      rejectsWith('TENANTRY_ERR_MIGRATION_INVALID_FILE'),
    );
  });

  test('objects created through a superuser connection are owned by the owner role', async () => {
    const url = await createEmptyDatabase();
    const directory = await migrationFolder({
      '1-widgets.sql': `create table widgets (id int);
        create view widget_ids as select id from widgets;
        create function widget_count() returns bigint language sql as $$ select count(*) from widgets $$;
        create schema reporting;
        create sequence reporting.numbers;`,
    });
    const superuser = await withClient(url, async (client) => {
      const result = await client.query<{ rolsuper: boolean }>(
        'select rolsuper from pg_roles where rolname = current_user',
      );
      return result.rows[0]?.rolsuper;
    });
    assert.equal(superuser, true, 'the test must connect as a superuser to mean anything');

    await migrate({ connectionString: url, sources: [{ name: 'app', directory }] });

    const owners = await withClient(url, async (client) => {
      const result = await client.query<{ object: string; owner: string }>(`
        select c.oid::regclass::text as object, pg_get_userbyid(c.relowner) as owner
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
          where n.nspname in ('public', 'tenantry', 'reporting') and c.relkind in ('r', 'v', 'S', 'p')
        union all
        select p.oid::regprocedure::text, pg_get_userbyid(p.proowner)
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
          where n.nspname in ('public', 'tenantry')
        union all
        select nspname, pg_get_userbyid(nspowner)
          from pg_namespace where nspname in ('tenantry', 'reporting')
        order by 1`);
      return result.rows;
    });
    const objects = owners.map((row) => row.object);
    for (const object of [
      'widgets',
      'widget_ids',
      'widget_count()',
      'reporting',
      'reporting.numbers',
      'tenantry',
      'tenantry.migrations',
      'tenantry.tenants',
      'tenantry.current_tenant_id()',
    ]) {
      assert.ok(objects.includes(object), `${object} was created`);
    }
    assert.deepEqual(
      owners.filter((row) => row.owner !== 'tenantry_owner'),
      [],
    );
  });

  test('reports a database the owner role cannot create objects in as a failed migration', async () => {
    const url = await createEmptyDatabase();
    const database = new URL(url).pathname.slice(1);
    await withClient(url, (client) =>
      client.query(`alter database ${quoteIdentifier(database)} owner to current_user`),
    );
    await assert.rejects(
      migrate({ connectionString: url }),
      rejectsWith('TENANTRY_ERR_MIGRATION_FAILED', (error) => {
        assert.equal((error.cause as { code?: string } | undefined)?.code, '42501');
      }),
    );
    assert.equal(await relationExists(url, 'tenantry.migrations'), false);
  });

  test('concurrent migrators wait for each other and apply each file exactly once', async () => {
    const url = await createEmptyDatabase();
    const directory = await migrationFolder({
      '1-counters.sql': 'create table counters (name text primary key, hits int not null);',
      '2-seed.sql': "insert into counters values ('applied', 1);",
      '3-bump.sql': "update counters set hits = hits + 1 where name = 'applied';",
    });
    const sources = [{ name: 'app', directory }];
    const database = new URL(url).pathname.slice(1);
    const holder = new pg.Client({ connectionString: url });
    await holder.connect();
    try {
      // Hold the migrators' lock so both calls are provably in flight before either can proceed.
      await holder.query(
        "select pg_advisory_lock(hashtextextended('tenantry:migrate:tenantry', 0))",
      );
      const runs = [
        migrate({ connectionString: url, sources }),
        migrate({ connectionString: url, sources }),
      ];
      for (const run of runs) run.catch(() => undefined);
      await waitFor('both migrators to wait on the advisory lock', async () => {
        const waiting = await holder.query<{ count: number }>(
          `select count(*)::int as count from pg_locks l join pg_database d on d.oid = l.database
           where l.locktype = 'advisory' and not l.granted and d.datname = $1`,
          [database],
        );
        return waiting.rows[0]?.count === 2;
      });
      await holder.query(
        "select pg_advisory_unlock(hashtextextended('tenantry:migrate:tenantry', 0))",
      );
      const summaries = await Promise.all(runs);

      const total = (await sqlFiles(coreMigrationsDirectory)).length + 3;
      const byCount = (a: number, b: number) => a - b;
      assert.deepEqual(summaries.map((summary) => summary.applied.length).sort(byCount), [
        0,
        total,
      ]);
      assert.deepEqual(summaries.map((summary) => summary.upToDate).sort(byCount), [0, total]);
      const rows = await recorded(url);
      assert.equal(rows.length, total);
      assert.equal(new Set(rows.map((row) => `${row.source}/${row.version}`)).size, total);
      const hits = await holder.query<{ hits: number }>('select hits from counters');
      assert.deepEqual(hits.rows, [{ hits: 2 }]);
    } finally {
      await holder.end();
    }
  });

  test('substitutes the schema and role variables in migration files', async () => {
    const url = await createEmptyDatabase();
    const schema = `tenantry_${randomBytes(4).toString('hex')}`;
    const directory = await migrationFolder({
      '1-probe.sql': `create table :"tenantry_schema".probe as
        select :'tenantry_schema'::text as schema_name, :'app_role'::text as app_role,
               '6f1c1e6e-2b1d-4c1a-9d3e-1f2a3b4c5d6e'::uuid as id;`,
    });

    await migrate({ connectionString: url, schema, sources: [{ name: 'app', directory }] });

    const rows = await withClient(url, async (client) => {
      const result = await client.query(
        `select schema_name, app_role, id from ${quoteIdentifier(schema)}.probe`,
      );
      return result.rows;
    });
    assert.deepEqual(rows, [
      {
        schema_name: schema,
        app_role: 'tenantry_app',
        id: '6f1c1e6e-2b1d-4c1a-9d3e-1f2a3b4c5d6e',
      },
    ]);
    assert.equal(await relationExists(url, `${schema}.tenants`), true);
    assert.equal(await relationExists(url, 'tenantry.tenants'), false);
    assert.equal(
      (await recorded(url, schema)).length,
      (await sqlFiles(coreMigrationsDirectory)).length + 1,
    );
  });
});

describe('substituteVariables', () => {
  const variables = { tenantry_schema: 'tenantry', app_role: 'tenantry_app', odd: `it's "odd"` };

  test('quotes identifiers and literals', () => {
    assert.equal(
      substituteVariables('grant usage on schema :"tenantry_schema" to :"app_role";', variables),
      'grant usage on schema "tenantry" to "tenantry_app";',
    );
    assert.equal(
      substituteVariables("select format('%I', :'app_role');", variables),
      "select format('%I', 'tenantry_app');",
    );
    assert.equal(
      substituteVariables(`select :'odd', :"odd";`, variables),
      `select 'it''s "odd"', "it's ""odd""";`,
    );
  });

  test('leaves casts, parameters and unknown variables alone', () => {
    for (const sql of [
      "select '6f1c1e6e-2b1d-4c1a-9d3e-1f2a3b4c5d6e'::uuid",
      'select $1::uuid, x::text[] from t',
      `select :"unknown", :'unknown'`,
      "select nullif(current_setting('tenantry.tenant_id', true), '')::uuid",
    ]) {
      assert.equal(substituteVariables(sql, variables), sql);
    }
  });
});
