import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type pg from 'pg';
import { isTenantryError, type RoleNames } from 'tenantry';
import { readTestCluster } from 'tenantry/testing';
import { quoteIdentifier } from '../src/config.ts';
import { bootstrapDatabase, withCredentials, withDatabase } from '../src/database/bootstrap.ts';
import { withClient } from './fixtures.ts';

// Roles are cluster-wide and other test files share the cluster: every role and database here
// is a throwaway with a unique name, never one of the real Tenantry roles.
const prefix = `bt_${randomBytes(5).toString('hex')}`;
const roles: RoleNames = {
  owner: `${prefix}_owner`,
  app: `${prefix}_app`,
  analytics: `${prefix}_analytics`,
};
const database = `${prefix}_db`;
const passwords = {
  owner: randomBytes(12).toString('hex'),
  app: randomBytes(12).toString('hex'),
  analytics: randomBytes(12).toString('hex'),
};
const scratchRoles: string[] = [...Object.values(roles)];
const scratchDatabases: string[] = [database];

const expectedRoles = [
  {
    rolname: roles.owner,
    rolsuper: false,
    rolbypassrls: true,
    rolinherit: true,
    rolcanlogin: true,
    rolcreatedb: false,
    rolcreaterole: false,
    rolreplication: false,
    rolconfig: null,
  },
  {
    rolname: roles.app,
    rolsuper: false,
    rolbypassrls: false,
    rolinherit: false,
    rolcanlogin: true,
    rolcreatedb: false,
    rolcreaterole: false,
    rolreplication: false,
    rolconfig: null,
  },
  {
    rolname: roles.analytics,
    rolsuper: false,
    rolbypassrls: true,
    rolinherit: false,
    rolcanlogin: true,
    rolcreatedb: false,
    rolcreaterole: false,
    rolreplication: false,
    rolconfig: ['default_transaction_read_only=on'],
  },
];

function adminUrl(): string {
  return readTestCluster().adminUrl;
}

function urlAs(role: keyof RoleNames, password = passwords[role]): string {
  return withCredentials(withDatabase(adminUrl(), database), roles[role], password);
}

async function admin<T extends pg.QueryResultRow>(sql: string, values: unknown[] = []) {
  return await withClient(adminUrl(), async (client) => (await client.query<T>(sql, values)).rows);
}

async function roleRows(names: readonly string[] = Object.values(roles)) {
  return await admin(
    `select rolname, rolsuper, rolbypassrls, rolinherit, rolcanlogin, rolcreatedb, rolcreaterole,
            rolreplication, rolconfig
     from pg_roles where rolname = any ($1) order by array_position($1, rolname)`,
    [names],
  );
}

/** Everything bootstrap decides: role attributes and passwords, the database and its grants. */
async function snapshot() {
  const roleState = await admin(
    `select a.rolname, a.rolsuper, a.rolbypassrls, a.rolinherit, a.rolcanlogin, a.rolpassword,
            r.rolconfig
     from pg_authid a join pg_roles r on r.oid = a.oid
     where a.rolname = any ($1) order by a.rolname`,
    [Object.values(roles)],
  );
  const databaseState = await admin(
    `select pg_get_userbyid(datdba) as owner, datacl::text[] as acl
     from pg_database where datname = $1`,
    [database],
  );
  const objectState = await withClient(withDatabase(adminUrl(), database), async (client) => {
    const namespaces = await client.query(
      `select nspname, pg_get_userbyid(nspowner) as owner, nspacl::text[] as acl
       from pg_namespace where nspname not like 'pg\\_%' and nspname <> 'information_schema'
       order by nspname`,
    );
    const defaults = await client.query(
      `select pg_get_userbyid(defaclrole) as role, defaclnamespace::regnamespace::text as schema,
              defaclobjtype, defaclacl::text[] as acl
       from pg_default_acl order by 1, 2, 3`,
    );
    return { namespaces: namespaces.rows, defaults: defaults.rows };
  });
  return { roleState, databaseState, objectState };
}

function sqlState(code: string) {
  return (error: unknown) => {
    assert.equal((error as { code?: string }).code, code, String(error));
    return true;
  };
}

before(async () => {
  await bootstrapDatabase({ adminConnectionString: adminUrl(), database, roles, passwords });
});

after(async () => {
  for (const name of scratchDatabases) {
    await admin(`drop database if exists ${quoteIdentifier(name)} with (force)`);
  }
  for (const name of scratchRoles) await admin(`drop role if exists ${quoteIdentifier(name)}`);
});

describe('bootstrapDatabase', () => {
  test('creates the three roles with exactly the expected attributes', async () => {
    assert.deepEqual(await roleRows(), expectedRoles);
  });

  test('creates the database owned by the owner role, closed to PUBLIC', async () => {
    const [row] = await admin<{ owner: string; acl: string[] }>(
      'select pg_get_userbyid(datdba) as owner, datacl::text[] as acl from pg_database where datname = $1',
      [database],
    );
    assert.equal(row?.owner, roles.owner);
    assert.ok(
      row?.acl.every((entry) => !entry.startsWith('=')),
      `PUBLIC has no grant: ${row?.acl}`,
    );
  });

  test('each role logs in with its password, and only with it', async () => {
    for (const role of ['owner', 'app', 'analytics'] as const) {
      const [who] = await withClient(urlAs(role), async (client) => {
        return (await client.query<{ user: string }>('select current_user as user')).rows;
      });
      assert.deepEqual(who, { user: roles[role] });
    }
    await assert.rejects(
      withClient(urlAs('app', 'wrong-password'), async () => {}),
      (error) =>
        isTenantryError(error, 'TENANTRY_ERR_DB_UNAVAILABLE') &&
        error.details?.sqlState === '28P01',
    );
  });

  test('the app role cannot truncate, create tables or create schemas', async () => {
    await withClient(urlAs('owner'), (client) =>
      client.query(`create table public.probe (id int);
        insert into public.probe values (1);
        grant select, insert, update, delete on public.probe to ${quoteIdentifier(roles.app)};`),
    );
    await withClient(urlAs('app'), async (client) => {
      assert.deepEqual((await client.query('select id from public.probe')).rows, [{ id: 1 }]);
      await assert.rejects(client.query('truncate public.probe'), sqlState('42501'));
      await assert.rejects(client.query('create table public.mine (id int)'), sqlState('42501'));
      await assert.rejects(client.query('create schema mine'), sqlState('42501'));
    });
    assert.deepEqual(
      await withClient(
        urlAs('owner'),
        async (client) => (await client.query('select id from public.probe')).rows,
      ),
      [{ id: 1 }],
    );
  });

  test('the analytics role reads tables the owner creates but is read-only by default', async () => {
    await withClient(urlAs('owner'), (client) =>
      client.query(`create table public.report (id int); insert into public.report values (7);`),
    );
    await withClient(urlAs('analytics'), async (client) => {
      assert.deepEqual((await client.query('select id from public.report')).rows, [{ id: 7 }]);
      const setting = await client.query('show default_transaction_read_only');
      assert.deepEqual(setting.rows, [{ default_transaction_read_only: 'on' }]);
      await assert.rejects(client.query('insert into public.report values (8)'), sqlState('25006'));
    });
  });

  test('running again changes nothing, passwords included', async () => {
    const before = await snapshot();
    await bootstrapDatabase({ adminConnectionString: adminUrl(), database, roles });
    await bootstrapDatabase({ adminConnectionString: adminUrl(), database, roles });
    assert.deepEqual(await snapshot(), before);
    await withClient(urlAs('app'), (client) => client.query('select 1'));
  });

  test('corrects roles whose attributes were changed', async () => {
    await admin(`alter role ${quoteIdentifier(roles.app)} bypassrls inherit createdb`);
    await admin(`alter role ${quoteIdentifier(roles.owner)} nobypassrls nologin`);
    await admin(
      `alter role ${quoteIdentifier(roles.analytics)} reset default_transaction_read_only`,
    );
    assert.notDeepEqual(await roleRows(), expectedRoles);

    await bootstrapDatabase({ adminConnectionString: adminUrl(), database, roles });

    assert.deepEqual(await roleRows(), expectedRoles);
  });

  test('refuses a connection that is not a superuser and changes nothing', async () => {
    // Even a role that could create roles and databases is refused: only a superuser can vouch
    // for every attribute bootstrap sets.
    const creator = `${prefix}_creator`;
    const creatorPassword = randomBytes(12).toString('hex');
    scratchRoles.push(creator);
    await admin(
      `create role ${quoteIdentifier(creator)} login createrole createdb bypassrls password '${creatorPassword}'`,
    );
    const others: RoleNames = {
      owner: `${prefix}_other_owner`,
      app: `${prefix}_other_app`,
      analytics: `${prefix}_other_analytics`,
    };
    const otherDatabase = `${prefix}_other_db`;
    scratchRoles.push(...Object.values(others));
    scratchDatabases.push(otherDatabase);

    await assert.rejects(
      bootstrapDatabase({
        adminConnectionString: withCredentials(adminUrl(), creator, creatorPassword),
        database: otherDatabase,
        roles: others,
        passwords,
      }),
      (error) => {
        assert.ok(isTenantryError(error, 'TENANTRY_ERR_BOOTSTRAP_FAILED'), String(error));
        return true;
      },
    );
    assert.deepEqual(await roleRows(Object.values(others)), []);
    assert.deepEqual(
      await admin('select datname from pg_database where datname = $1', [otherDatabase]),
      [],
    );
  });
});
