import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { withClient } from './fixtures.ts';

// A SECURITY DEFINER function runs as its owner. PostgreSQL searches the caller's temporary
// schema first for types and relations unless pg_temp is named in the function's search_path, so
// a caller with TEMPORARY could plant `pg_temp.uuid` and run code as the owner (BYPASSRLS).

let database: TestDatabase;
const tenantId = randomUUID();

async function admin(text: string, values: unknown[] = []): Promise<Record<string, unknown>[]> {
  return withClient(database.adminUrl, async (client) => (await client.query(text, values)).rows);
}

before(async () => {
  database = await createTestDatabase();
  await admin(`insert into tenantry.tenants (id, slug, name) values ($1, 'definer', 'definer')`, [
    tenantId,
  ]);
});
after(() => database.drop());

describe('SECURITY DEFINER functions and the caller’s temporary schema', () => {
  test('the app role has no temporary schema', async () => {
    await withClient(database.appUrl, async (client) => {
      await assert.rejects(client.query('create temporary table planted (x int)'), {
        code: '42501',
      });
    });
  });

  test('every SECURITY DEFINER function of the Tenantry schema names pg_temp last', async () => {
    const rows = await admin(
      `select p.proname, array_to_string(p.proconfig, ',') as config
         from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname = 'tenantry' and p.prosecdef order by 1`,
    );
    assert.ok(rows.length >= 5, 'the definer functions exist');
    for (const row of rows) {
      assert.equal(row.config, 'search_path=pg_catalog, pg_temp', String(row.proname));
    }
  });

  test('types planted in pg_temp are not used inside the definer functions', async () => {
    // Give the app role a temporary schema on purpose, as a misconfigured database would.
    await admin(`grant temporary on database ${database.name} to tenantry_app`);
    try {
      await withClient(database.appUrl, async (client) => {
        await client.query(`
          create function pg_temp.planted(value anyelement) returns boolean language plpgsql as $$
          begin
            raise exception 'planted code ran as %', current_user;
          end $$`);
        for (const type of ['uuid', 'text', 'json', 'jsonb', 'int4', 'int8', 'timestamptz']) {
          await client.query(
            `create domain pg_temp.${type} as pg_catalog.${type} check (pg_temp.planted(value))`,
          );
        }
        await client.query('begin');
        await client.query(`set local tenantry.tenant_id = '${tenantId}'`);
        const one = await client.query(
          `select tenantry.enqueue_job('planted.one', '{}')::pg_catalog.text as id`,
        );
        assert.match(String(one.rows[0]?.id), /^\d+$/);
        const many = await client.query(
          `select tenantry.enqueue_jobs('planted.many', array['{}'::pg_catalog.jsonb])::pg_catalog.text as ids`,
        );
        assert.match(String(many.rows[0]?.ids), /^\{\d+\}$/);
        await assert.rejects(
          client.query(`select tenantry.complete_job(1, 'w', pg_catalog.now())`),
          (error: { code?: string; message?: string }) =>
            error.code === '55000' && !String(error.message).includes('planted'),
        );
        await client.query('rollback');
        const created = await client.query(
          `select tenantry.create_tenant('planted-tenant', 'Planted')::pg_catalog.text as id`,
        );
        assert.ok(created.rows[0]?.id);
        const key = await client.query(
          `select count(*)::pg_catalog.int4 as n from tenantry.authenticate_api_key('aaaaaaaaaaaa', '\\x00'::pg_catalog.bytea)`,
        );
        assert.equal(key.rows[0]?.n, 0);
      });
    } finally {
      await admin(`revoke temporary on database ${database.name} from tenantry_app`);
    }
  });
});
