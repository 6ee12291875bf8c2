import assert from 'node:assert/strict';
import { createHash, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import {
  authenticateApiKey,
  type CreateApiKeyOptions,
  type CreatedApiKey,
  createApiKey,
  createTenantDirectory,
  createTenantry,
  isTenantryError,
  listApiKeys,
  revokeApiKey,
  type Tenantry,
  type TenantryErrorCode,
} from 'tenantry';
import { createApiKeyStrategy, createPathStrategy, tenantryFastify } from 'tenantry/fastify';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { type ReferenceDatabase, withClient } from './fixtures.ts';

const keyFormat = /^tk_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$/;
const hasCode = (code: TenantryErrorCode) => (error: unknown) => isTenantryError(error, code);

let database: TestDatabase;
let tenantry: Tenantry<ReferenceDatabase>;
let tenantA: string;
let tenantB: string;

async function admin(text: string, values: unknown[] = []): Promise<Record<string, unknown>[]> {
  return withClient(database.adminUrl, async (client) => (await client.query(text, values)).rows);
}

async function insertTenant(slug: string): Promise<string> {
  const id = randomUUID();
  await admin('insert into tenantry.tenants (id, slug, name) values ($1, $2, $2)', [id, slug]);
  return id;
}

function createKey(tenantId: string, options: Partial<CreateApiKeyOptions> = {}) {
  return tenantry.withTenant(tenantId, (db) => createApiKey(db, { name: 'test key', ...options }));
}

function secretOf(key: CreatedApiKey): string {
  return keyFormat.exec(key.key)?.[2] as string;
}

before(async () => {
  database = await createTestDatabase();
  tenantry = await createTenantry<ReferenceDatabase>({
    connectionString: database.appUrl,
    maxConnections: 4,
  });
  tenantA = await insertTenant('keys-alpha');
  tenantB = await insertTenant('keys-bravo');
});

after(async () => {
  await tenantry.close();
  await database.drop();
});

describe('createApiKey', () => {
  test('returns tk_<prefix>_<secret> once and stores only the SHA-256 of the secret', async () => {
    const userId = randomUUID();
    const created = await createKey(tenantA, {
      name: 'CI',
      scopes: ['contacts:read', 'contacts:read', 'tags:write'],
      createdBy: userId,
    });
    const match = keyFormat.exec(created.key);
    assert.ok(match, created.key);
    assert.equal(created.prefix, match[1]);
    assert.deepEqual(created.scopes, ['contacts:read', 'tags:write']);
    assert.equal(created.createdBy, userId);
    const secret = secretOf(created);
    const rows = await admin(
      `select tenant_id, secret_hash, row_to_json(k)::text as json from tenantry.api_keys k where id = $1`,
      [created.id],
    );
    const row = rows[0] as { tenant_id: string; secret_hash: Buffer; json: string };
    assert.equal(row.tenant_id, tenantA);
    assert.equal(row.secret_hash.length, 32);
    assert.deepEqual(row.secret_hash, createHash('sha256').update(secret).digest());
    assert.ok(!row.json.includes(secret), 'the secret is nowhere in the row');
    assert.ok(!row.json.includes(Buffer.from(secret).toString('hex')));
  });

  test('generates distinct keys', async () => {
    const keys = await Promise.all([1, 2, 3, 4, 5].map(() => createKey(tenantA)));
    assert.equal(new Set(keys.map((key) => key.key)).size, 5);
    assert.equal(new Set(keys.map((key) => key.prefix)).size, 5);
  });

  test('refuses bad names and scopes, and a call outside a tenant', async () => {
    await assert.rejects(createKey(tenantA, { name: '' }), hasCode('TENANTRY_ERR_HTTP_VALIDATION'));
    await assert.rejects(
      createKey(tenantA, { scopes: ['Bad Scope'] }),
      hasCode('TENANTRY_ERR_HTTP_VALIDATION'),
    );
    await assert.rejects(createApiKey(tenantry.db, { name: 'orphan' }));
    const orphans = await admin(
      `select count(*)::int as n from tenantry.api_keys where name = 'orphan'`,
    );
    assert.equal(orphans[0]?.n, 0);
  });
});

describe('listApiKeys', () => {
  test('lists only the own tenant keys, never secrets or hashes', async () => {
    const a1 = await createKey(tenantA, { name: 'list-a1' });
    const b1 = await createKey(tenantB, { name: 'list-b1' });
    const listedA = await tenantry.withTenant(tenantA, (db) => listApiKeys(db));
    const listedB = await tenantry.withTenant(tenantB, (db) => listApiKeys(db));
    assert.ok(listedA.some((key) => key.id === a1.id));
    assert.ok(!listedA.some((key) => key.id === b1.id));
    assert.deepEqual(
      listedB.map((key) => key.id),
      [b1.id],
    );
    const expectedCount = await admin(
      'select count(*)::int as n from tenantry.api_keys where tenant_id = $1',
      [tenantA],
    );
    assert.equal(listedA.length, expectedCount[0]?.n);
    for (const key of [...listedA, ...listedB]) {
      assert.deepEqual(Object.keys(key).sort(), [
        'createdAt',
        'createdBy',
        'expiresAt',
        'id',
        'lastUsedAt',
        'name',
        'prefix',
        'revokedAt',
        'scopes',
      ]);
    }
    const json = JSON.stringify(listedA);
    assert.ok(!json.includes(secretOf(a1)));
    assert.ok(!json.includes(a1.key));
  });
});

describe('authenticateApiKey', () => {
  test('resolves the tenant, key and scopes', async () => {
    const created = await createKey(tenantB, { scopes: ['tags:read'] });
    const found = await authenticateApiKey(tenantry.db, created.key);
    assert.deepEqual(
      { ...found, scopes: [...(found.scopes ?? [])] },
      {
        tenantId: tenantB,
        keyId: created.id,
        scopes: ['tags:read'],
      },
    );
    const unlimited = await createKey(tenantA);
    assert.equal((await authenticateApiKey(tenantry.db, unlimited.key)).scopes, null);
  });

  test('refuses a wrong secret with a right prefix, an unknown prefix and malformed keys', async () => {
    const created = await createKey(tenantA);
    const secret = secretOf(created);
    const wrongSecret = `tk_${created.prefix}_${secret.slice(0, -1)}${secret.endsWith('A') ? 'B' : 'A'}`;
    await assert.rejects(
      authenticateApiKey(tenantry.db, wrongSecret),
      hasCode('TENANTRY_ERR_AUTH_API_KEY_INVALID'),
    );
    await assert.rejects(
      authenticateApiKey(tenantry.db, `tk_zzzzzzzzzzzz_${secret}`),
      hasCode('TENANTRY_ERR_AUTH_API_KEY_INVALID'),
    );
    for (const malformed of [
      undefined,
      42,
      '',
      created.key.slice(0, -1),
      `${created.key}x`,
      created.key.toUpperCase(),
      `Bearer ${created.key}`,
      `tk_${created.prefix}_${secret.slice(0, 40)}'--`,
    ]) {
      await assert.rejects(
        authenticateApiKey(tenantry.db, malformed),
        hasCode('TENANTRY_ERR_AUTH_API_KEY_INVALID'),
        String(malformed),
      );
    }
  });

  test('refuses revoked and expired keys', async () => {
    const revoked = await createKey(tenantA);
    assert.equal(await tenantry.withTenant(tenantA, (db) => revokeApiKey(db, revoked.id)), true);
    await assert.rejects(
      authenticateApiKey(tenantry.db, revoked.key),
      hasCode('TENANTRY_ERR_AUTH_API_KEY_REVOKED'),
    );
    assert.equal(
      await tenantry.withTenant(tenantA, (db) => revokeApiKey(db, revoked.id)),
      false,
      'already revoked',
    );
    const expired = await createKey(tenantA, { expiresAt: new Date(Date.now() - 1000) });
    await assert.rejects(
      authenticateApiKey(tenantry.db, expired.key),
      hasCode('TENANTRY_ERR_AUTH_API_KEY_REVOKED'),
    );
    const future = await createKey(tenantA, { expiresAt: new Date(Date.now() + 3_600_000) });
    assert.equal((await authenticateApiKey(tenantry.db, future.key)).tenantId, tenantA);
  });

  test('records use at most once a minute', async () => {
    const created = await createKey(tenantA);
    const lastUsed = async () =>
      (await admin('select last_used_at from tenantry.api_keys where id = $1', [created.id]))[0]
        ?.last_used_at as Date | null;
    assert.equal(await lastUsed(), null);
    await authenticateApiKey(tenantry.db, created.key);
    const first = await lastUsed();
    assert.ok(first instanceof Date);
    await admin('select pg_sleep(0.01)');
    await authenticateApiKey(tenantry.db, created.key);
    assert.deepEqual(await lastUsed(), first, 'not written again within a minute');
    await admin(
      `update tenantry.api_keys set last_used_at = now() - interval '61 seconds' where id = $1`,
      [created.id],
    );
    const aged = await lastUsed();
    await authenticateApiKey(tenantry.db, created.key);
    const later = await lastUsed();
    assert.ok(later !== null && aged !== null && later > aged);
  });
});

describe('revokeApiKey', () => {
  test("another tenant cannot revoke a tenant's key", async () => {
    const created = await createKey(tenantA);
    assert.equal(await tenantry.withTenant(tenantB, (db) => revokeApiKey(db, created.id)), false);
    assert.equal(await tenantry.withTenant(tenantB, (db) => revokeApiKey(db, 'nope')), false);
    const rows = await admin('select revoked_at from tenantry.api_keys where id = $1', [
      created.id,
    ]);
    assert.equal(rows[0]?.revoked_at, null);
    assert.equal((await authenticateApiKey(tenantry.db, created.key)).tenantId, tenantA);
    assert.equal(
      await tenantry.withTenant(tenantA, (db) => revokeApiKey(db, created.id.toUpperCase())),
      true,
    );
  });
});

describe('the app role and the keys table', () => {
  test('RLS hides other tenants rows, even when named explicitly', async () => {
    const created = await createKey(tenantA);
    await withClient(database.appUrl, async (client) => {
      const none = await client.query('select count(*)::int as n from tenantry.api_keys');
      assert.equal(none.rows[0].n, 0, 'no tenant context: no rows');
      await client.query('begin');
      await client.query(`select set_config('tenantry.tenant_id', $1, true)`, [tenantB]);
      const asB = await client.query(
        'select id, prefix from tenantry.api_keys where tenant_id = $1 or id = $2',
        [tenantA, created.id],
      );
      assert.equal(asB.rowCount, 0);
      const update = await client.query(
        'update tenantry.api_keys set revoked_at = now() where id = $1',
        [created.id],
      );
      assert.equal(update.rowCount, 0);
      await client.query('rollback');
    });
    const rows = await admin('select revoked_at from tenantry.api_keys where id = $1', [
      created.id,
    ]);
    assert.equal(rows[0]?.revoked_at, null);
  });

  test('authenticate_api_key never hands out hashes', async () => {
    const created = await createKey(tenantA);
    await withClient(database.appUrl, async (client) => {
      const signature = await client.query(
        `select pg_get_function_result('tenantry.authenticate_api_key(text, bytea)'::regprocedure) as result`,
      );
      assert.doesNotMatch(signature.rows[0].result, /hash|secret|prefix/);
      const probe = await client.query('select * from tenantry.authenticate_api_key($1, $2)', [
        created.prefix,
        Buffer.alloc(32),
      ]);
      assert.equal(probe.rowCount, 0, 'a prefix alone reveals nothing');
      const nullHash = await client.query('select * from tenantry.authenticate_api_key($1, null)', [
        created.prefix,
      ]);
      assert.equal(nullHash.rowCount, 0);
    });
  });

  test('in its own tenant the app role reads no hash, changes no secret or scope, and cannot un-revoke', async () => {
    const created = await createKey(tenantA);
    const denied = async (text: string, values: unknown[]) =>
      withClient(database.appUrl, async (client) => {
        await client.query('begin');
        try {
          await client.query(`select set_config('tenantry.tenant_id', $1, true)`, [tenantA]);
          await client.query(text, values);
          return 'allowed';
        } catch (error) {
          return String((error as { code?: unknown }).code);
        } finally {
          await client.query('rollback');
        }
      });
    assert.equal(await denied('select secret_hash from tenantry.api_keys', []), '42501');
    assert.equal(
      await denied('update tenantry.api_keys set secret_hash = $1 where id = $2', [
        Buffer.alloc(32),
        created.id,
      ]),
      '42501',
    );
    assert.equal(
      await denied('update tenantry.api_keys set scopes = null where id = $1', [created.id]),
      '42501',
    );
    assert.equal(await tenantry.withTenant(tenantA, (db) => revokeApiKey(db, created.id)), true);
    assert.equal(
      await denied('update tenantry.api_keys set revoked_at = null where id = $1', [created.id]),
      '42501',
    );
    const rows = await admin('select revoked_at from tenantry.api_keys where id = $1', [
      created.id,
    ]);
    assert.notEqual(rows[0]?.revoked_at, null);
  });
});

describe('API keys through the Fastify plugin', () => {
  let app: FastifyInstance;
  let keyA: CreatedApiKey;

  before(async () => {
    app = Fastify();
    await app.register(tenantryFastify, {
      tenantry,
      directory: await createTenantDirectory({ connectionString: database.appUrl }),
      strategies: [createApiKeyStrategy({ db: tenantry.db }), createPathStrategy({ prefix: '/t' })],
      closeResources: false,
    });
    const whoami = async (request: { tenant: unknown }) => {
      const tenant = request.tenant as { id: string; slug: string; scopes?: readonly string[] };
      return { id: tenant.id, slug: tenant.slug, scopes: tenant.scopes ?? null };
    };
    app.get('/whoami', whoami);
    app.get('/t/:slug/whoami', whoami);
    app.get('/tags', { config: { scope: 'tags:read' } }, async (request) =>
      (request.tenant?.db ?? assert.fail()).selectFrom('tags').select('name').execute(),
    );
    keyA = await createKey(tenantA);
  });

  after(async () => {
    await app.tenantry.directory.close();
    await app.close();
  });

  test('X-API-Key identifies the tenant', async () => {
    const response = await app.inject({ url: '/whoami', headers: { 'x-api-key': keyA.key } });
    assert.equal(response.statusCode, 200);
    assert.deepEqual(response.json(), { id: tenantA, slug: 'keys-alpha', scopes: null });
    const onPath = await app.inject({
      url: '/t/keys-alpha/whoami',
      headers: { 'x-api-key': keyA.key },
    });
    assert.equal(onPath.statusCode, 200);
  });

  test("a key of A on B's path is a mismatch", async () => {
    const response = await app.inject({
      url: '/t/keys-bravo/whoami',
      headers: { 'x-api-key': keyA.key },
    });
    assert.equal(response.statusCode, 403);
    assert.equal(response.json().code, 'TENANTRY_ERR_TENANT_MISMATCH');
  });

  test('a malformed, unknown or revoked key is 401', async () => {
    for (const value of ['nope', `${keyA.key}x`, `tk_${'0'.repeat(12)}_${secretOf(keyA)}`]) {
      const response = await app.inject({ url: '/whoami', headers: { 'x-api-key': value } });
      assert.equal(response.statusCode, 401, value);
      assert.equal(response.headers['content-type'], 'application/problem+json; charset=utf-8');
      assert.equal(response.json().code, 'TENANTRY_ERR_AUTH_API_KEY_INVALID');
    }
    const revoked = await createKey(tenantA);
    assert.equal(
      (await app.inject({ url: '/whoami', headers: { 'x-api-key': revoked.key } })).statusCode,
      200,
    );
    await tenantry.withTenant(tenantA, (db) => revokeApiKey(db, revoked.id));
    const response = await app.inject({ url: '/whoami', headers: { 'x-api-key': revoked.key } });
    assert.equal(response.statusCode, 401);
    assert.equal(response.json().code, 'TENANTRY_ERR_AUTH_API_KEY_REVOKED');
  });

  test('route scopes: a key without the scope is refused, one with it accepted', async () => {
    const narrow = await createKey(tenantA, { scopes: ['contacts:read'] });
    const refused = await app.inject({ url: '/tags', headers: { 'x-api-key': narrow.key } });
    assert.equal(refused.statusCode, 403);
    assert.equal(refused.json().code, 'TENANTRY_ERR_AUTH_INSUFFICIENT_SCOPE');
    const scoped = await createKey(tenantA, { scopes: ['tags:read'] });
    const accepted = await app.inject({ url: '/tags', headers: { 'x-api-key': scoped.key } });
    assert.equal(accepted.statusCode, 200);
    assert.deepEqual(accepted.json(), []);
    const unlimited = await app.inject({ url: '/tags', headers: { 'x-api-key': keyA.key } });
    assert.equal(unlimited.statusCode, 200);
  });
});
