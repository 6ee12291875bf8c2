import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { sql } from 'kysely';
import { createPlatformDatabase, createTenantry, isTenantryError, type Tenantry } from 'tenantry';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import {
  type ReferenceDatabase,
  type SeededTenant,
  seedTenant,
  sqlState,
  withClient,
} from './fixtures.ts';

describe('platform database (the cross-tenant escape hatch)', () => {
  let database: TestDatabase;
  let tenantry: Tenantry<ReferenceDatabase>;
  let a: SeededTenant;
  let b: SeededTenant;

  before(async () => {
    database = await createTestDatabase();
    tenantry = await createTenantry<ReferenceDatabase>({ connectionString: database.appUrl });
    a = await seedTenant(database.adminUrl, tenantry, 'alpha');
    b = await seedTenant(database.adminUrl, tenantry, 'bravo');
  });
  after(async () => {
    await tenantry.close();
    await database.drop();
  });

  test('the analytics role reads every tenant and cannot write', async () => {
    const platform = await createPlatformDatabase<ReferenceDatabase>({
      connectionString: database.analyticsUrl,
    });
    try {
      assert.equal(platform.role, 'tenantry_analytics');
      const rows = await platform.db
        .selectFrom('contacts')
        .select('tenant_id')
        .orderBy('tenant_id')
        .execute();
      assert.deepEqual(rows.map((row) => row.tenant_id).sort(), [a.tenantId, b.tenantId].sort());
      await assert.rejects(
        platform.db
          .insertInto('tags')
          .values({ tenant_id: a.tenantId, name: 'from analytics' })
          .execute(),
        (error) => (error as { code?: string }).code === '25006',
      );
    } finally {
      await platform.close();
    }
  });

  test('the app role is refused: it cannot be turned into a cross-tenant handle', async () => {
    await assert.rejects(
      createPlatformDatabase({ connectionString: database.appUrl }),
      (error) =>
        isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID') && /BYPASSRLS/.test(error.message),
    );
  });

  test('the app role cannot assume the analytics or owner role, nor disable RLS', async () => {
    await withClient(database.appUrl, async (app) => {
      assert.equal(await sqlState(app.query('set role tenantry_analytics')), '42501');
      assert.equal(await sqlState(app.query('set role tenantry_owner')), '42501');
      assert.equal(
        await sqlState(app.query('alter table contacts disable row level security')),
        '42501',
      );
      assert.equal(await sqlState(app.query('set session authorization tenantry_owner')), '42501');
      assert.equal((await app.query('select count(*)::int as n from contacts')).rows[0].n, 0);
    });
  });

  test('the guarded app database still refuses cross-tenant reads outside a context', async () => {
    const total = await sql<{ n: number }>`select count(*)::int as n from contacts`.execute(
      tenantry.db,
    );
    assert.equal(total.rows[0]?.n, 0);
  });
});
