import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, describe, test } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import { errorCodes, isTenantryError, type TenantryErrorCode } from 'tenantry';
import {
  createTrustedHeaderStrategy,
  type TrustedHeaderStrategyOptions,
} from '../src/fastify/header-strategy.ts';
import type { IdentificationStrategy } from '../src/fastify/identity.ts';
import { createPathStrategy, type PathStrategyOptions } from '../src/fastify/path-strategy.ts';
import {
  createSubdomainStrategy,
  type SubdomainStrategyOptions,
} from '../src/fastify/subdomain-strategy.ts';

const tenantId = '0b5c6a3e-6a8e-4f7e-9a51-2f7c1c9d2e10';
const userId = '5d0f8c7e-1d2a-4c1b-8e7f-0a1b2c3d4e5f';

interface ProbeResult {
  readonly status: number;
  readonly body: {
    readonly identity?: Record<string, unknown> | null;
    readonly code?: string;
    readonly message?: string;
  };
}

const apps: FastifyInstance[] = [];

after(async () => {
  await Promise.all(apps.map((app) => app.close()));
});

function buildApp(strategy: IdentificationStrategy): FastifyInstance {
  const app = Fastify();
  app.get('/*', async (request, reply) => {
    try {
      const identity = await strategy.identify(request);
      return { identity: identity ?? null };
    } catch (error) {
      if (!isTenantryError(error)) throw error;
      return reply.code(error.status).send({ code: error.code, message: error.message });
    }
  });
  apps.push(app);
  return app;
}

function probe(strategy: IdentificationStrategy) {
  const app = buildApp(strategy);
  return async (url: string, headers: Record<string, string> = {}): Promise<ProbeResult> => {
    const response = await app.inject({ method: 'GET', url, headers });
    return { status: response.statusCode, body: response.json() };
  };
}

/** Sends the request line exactly as written, over a real socket (no URL normalisation). */
async function rawProbe(strategy: IdentificationStrategy) {
  const app = buildApp(strategy);
  await app.listen({ port: 0, host: '127.0.0.1' });
  const { port } = app.server.address() as AddressInfo;
  return (path: string): Promise<ProbeResult> =>
    new Promise((resolve, reject) => {
      const outgoing = httpRequest({ host: '127.0.0.1', port, path, method: 'GET' }, (response) => {
        let text = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => {
          text += chunk;
        });
        response.on('end', () =>
          resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) }),
        );
      });
      outgoing.on('error', reject);
      outgoing.end();
    });
}

function assertIdentity(result: ProbeResult): Record<string, unknown> {
  assert.equal(result.status, 200, JSON.stringify(result.body));
  assert.ok(result.body.identity, `an identity, got ${JSON.stringify(result.body)}`);
  return result.body.identity;
}

function assertNoIdentity(result: ProbeResult): void {
  assert.equal(result.status, 200, JSON.stringify(result.body));
  assert.equal(result.body.identity, null);
}

function assertRefused(result: ProbeResult, code: TenantryErrorCode): void {
  assert.equal(result.body.code, code, JSON.stringify(result.body));
  assert.equal(result.status, errorCodes[code].status);
}

const configInvalid = (error: unknown) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID');

describe('subdomain strategy', () => {
  const identify = probe(createSubdomainStrategy({ baseDomain: 'example.com' }));
  const at = (host: string) => identify('/', { host });

  test('<slug>.<baseDomain> names the tenant, unauthenticated', async () => {
    const identity = assertIdentity(await at('acme.example.com'));
    assert.deepEqual(identity, { strategy: 'subdomain', authenticated: false, tenantSlug: 'acme' });
  });

  test('the host is lowercased and its port dropped', async () => {
    assert.equal(assertIdentity(await at('ACME.Example.COM')).tenantSlug, 'acme');
    assert.equal(assertIdentity(await at('acme.example.com:8443')).tenantSlug, 'acme');
    assert.equal(assertIdentity(await at('Acme-Co.EXAMPLE.com:80')).tenantSlug, 'acme-co');
  });

  test('a fully qualified host (trailing dot) is the same host', async () => {
    assert.equal(assertIdentity(await at('acme.example.com.')).tenantSlug, 'acme');
  });

  test('the apex domain yields no identity', async () => {
    assertNoIdentity(await at('example.com'));
    assertNoIdentity(await at('EXAMPLE.COM:443'));
  });

  test('hosts outside the base domain yield no identity', async () => {
    for (const host of [
      'acme.example.org',
      'evilexample.com',
      'acme.evilexample.com',
      'example.com.evil.test',
      'acme.example.com.evil.test',
      'localhost',
      '127.0.0.1:3000',
      '[::1]:3000',
    ]) {
      assertNoIdentity(await at(host));
    }
  });

  test('hosts more than one level below the base domain yield no identity', async () => {
    assertNoIdentity(await at('a.b.example.com'));
    assertNoIdentity(await at('acme.www.example.com'));
  });

  test('the ignored labels (www, api, app by default) yield no identity', async () => {
    for (const label of ['www', 'api', 'app', 'WWW']) {
      assertNoIdentity(await at(`${label}.example.com`));
    }
  });

  test('a custom ignore list replaces the default', async () => {
    const custom = probe(createSubdomainStrategy({ baseDomain: 'example.com', ignore: ['Docs'] }));
    assertNoIdentity(await custom('/', { host: 'docs.example.com' }));
    assert.equal(assertIdentity(await custom('/', { host: 'www.example.com' })).tenantSlug, 'www');
  });

  test('a label that is not a valid slug is refused', async () => {
    for (const label of ['-acme', 'acme-', 'ac_me', 'x'.repeat(64)]) {
      assertRefused(await at(`${label}.example.com`), 'TENANTRY_ERR_TENANT_SLUG_INVALID');
    }
  });

  test('the base domain is normalised to lowercase', async () => {
    const upper = probe(createSubdomainStrategy({ baseDomain: 'Example.COM' }));
    assert.equal(assertIdentity(await upper('/', { host: 'acme.example.com' })).tenantSlug, 'acme');
  });

  test('a bad base domain or ignore list is refused at construction', () => {
    for (const baseDomain of [
      '',
      'https://example.com',
      '.example.com',
      'example.com.',
      'example.com:443',
      'exa mple.com',
      'example..com',
      '*.example.com',
      42,
      undefined,
    ]) {
      assert.throws(
        () => createSubdomainStrategy({ baseDomain } as unknown as SubdomainStrategyOptions),
        configInvalid,
        String(baseDomain),
      );
    }
    assert.throws(
      () =>
        createSubdomainStrategy({
          baseDomain: 'example.com',
          ignore: 'www',
        } as unknown as SubdomainStrategyOptions),
      configInvalid,
    );
    assert.throws(
      () => createSubdomainStrategy({ baseDomain: 'example.com', ignore: [''] }),
      configInvalid,
    );
  });
});

describe('path strategy', () => {
  const identify = probe(createPathStrategy());

  test('/t/<slug> and /t/<slug>/... name the tenant, unauthenticated', async () => {
    const identity = assertIdentity(await identify('/t/acme'));
    assert.deepEqual(identity, { strategy: 'path', authenticated: false, tenantSlug: 'acme' });
    assert.equal(assertIdentity(await identify('/t/acme/')).tenantSlug, 'acme');
    assert.equal(assertIdentity(await identify('/t/acme-co/contacts/42')).tenantSlug, 'acme-co');
  });

  test('the query string is ignored', async () => {
    assert.equal(assertIdentity(await identify('/t/acme?page=2')).tenantSlug, 'acme');
    assert.equal(assertIdentity(await identify('/t/acme?next=/t/evil')).tenantSlug, 'acme');
    assertNoIdentity(await identify('/contacts?next=/t/acme'));
    assertNoIdentity(await identify('/t?slug=acme'));
  });

  test('other paths yield no identity', async () => {
    for (const url of ['/', '/contacts', '/t', '/tx/acme', '/api/t/acme', '/T/acme']) {
      assertNoIdentity(await identify(url));
    }
  });

  test('a segment that is not a valid slug is refused', async () => {
    for (const url of ['/t/ACME', '/t/Acme/contacts', '/t/-acme', '/t/ac_me', '/t/', '/t//acme']) {
      assertRefused(await identify(url), 'TENANTRY_ERR_TENANT_SLUG_INVALID');
    }
  });

  test('percent-encoded slashes, dots or letters in the slug are refused', async () => {
    const raw = await rawProbe(createPathStrategy());
    for (const path of [
      '/t/acme%2Fother/contacts',
      '/t/acme%2fother',
      '/t/%2e%2e/admin',
      '/t/%2E%2E%2Fadmin',
      '/t/..%2Fadmin',
      '/t/%61cme/contacts',
      '/t/acme%00',
      '/t/../admin',
    ]) {
      assertRefused(await raw(path), 'TENANTRY_ERR_TENANT_SLUG_INVALID');
    }
    assert.equal(assertIdentity(await raw('/t/acme/files/a%2Fb')).tenantSlug, 'acme');
  });

  test('a custom prefix is honoured, segment by segment', async () => {
    const custom = probe(createPathStrategy({ prefix: '/api/tenants' }));
    assert.equal(assertIdentity(await custom('/api/tenants/acme/contacts')).tenantSlug, 'acme');
    assertNoIdentity(await custom('/t/acme'));
    assertNoIdentity(await custom('/api/tenantsx/acme'));
  });

  test('a bad prefix is refused at construction', () => {
    for (const prefix of ['t', '/t/', '/', '', '/t/../x', '/./t', '/%74', '/t x', 42]) {
      assert.throws(
        () => createPathStrategy({ prefix } as unknown as PathStrategyOptions),
        configInvalid,
        String(prefix),
      );
    }
  });
});

describe('trusted header strategy', () => {
  const secret = 'internal-secret-0123456789abcdef-0123456789';
  const identify = probe(createTrustedHeaderStrategy({ enabled: true, secret }));

  test('no tenant header yields no identity, whatever else is sent', async () => {
    assertNoIdentity(await identify('/'));
    assertNoIdentity(await identify('/', { 'x-internal-secret': secret, 'x-user-id': userId }));
  });

  test('the tenant header with the right secret yields an authenticated identity', async () => {
    const identity = assertIdentity(
      await identify('/', { 'x-tenant-id': tenantId, 'x-internal-secret': secret }),
    );
    assert.deepEqual(identity, { strategy: 'header', authenticated: true, tenantId });
  });

  test('the user header is read and ids are canonicalised', async () => {
    const identity = assertIdentity(
      await identify('/', {
        'x-tenant-id': tenantId.toUpperCase(),
        'x-user-id': userId.toUpperCase(),
        'x-internal-secret': secret,
      }),
    );
    assert.equal(identity.tenantId, tenantId);
    assert.equal(identity.userId, userId);
  });

  test('the tenant header without the secret is refused as untrusted', async () => {
    assertRefused(
      await identify('/', { 'x-tenant-id': tenantId }),
      'TENANTRY_ERR_AUTH_HEADER_UNTRUSTED',
    );
  });

  test('a wrong secret is refused as untrusted, whatever its length', async () => {
    const sameLength = `${secret.slice(0, -1)}${secret.endsWith('x') ? 'y' : 'x'}`;
    for (const wrong of [
      sameLength,
      secret.slice(0, -1),
      `${secret}x`,
      'short',
      '',
      secret.toUpperCase(),
    ]) {
      assertRefused(
        await identify('/', { 'x-tenant-id': tenantId, 'x-internal-secret': wrong }),
        'TENANTRY_ERR_AUTH_HEADER_UNTRUSTED',
      );
    }
  });

  test('a duplicated secret header is refused as untrusted', async () => {
    const app = buildApp(createTrustedHeaderStrategy({ enabled: true, secret }));
    const response = await app.inject({
      method: 'GET',
      url: '/',
      headers: { 'x-tenant-id': tenantId, 'x-internal-secret': [secret, secret] },
    });
    assertRefused(
      { status: response.statusCode, body: response.json() },
      'TENANTRY_ERR_AUTH_HEADER_UNTRUSTED',
    );
  });

  test('the secret is checked before the ids, so untrusted callers learn nothing', async () => {
    assertRefused(
      await identify('/', { 'x-tenant-id': 'not-a-uuid', 'x-user-id': 'nope' }),
      'TENANTRY_ERR_AUTH_HEADER_UNTRUSTED',
    );
  });

  test('malformed tenant or user ids are refused', async () => {
    assertRefused(
      await identify('/', { 'x-tenant-id': 'acme', 'x-internal-secret': secret }),
      'TENANTRY_ERR_AUTH_CLAIM_INVALID',
    );
    assertRefused(
      await identify('/', { 'x-tenant-id': `${tenantId}'--`, 'x-internal-secret': secret }),
      'TENANTRY_ERR_AUTH_CLAIM_INVALID',
    );
    assertRefused(
      await identify('/', {
        'x-tenant-id': tenantId,
        'x-user-id': 'root',
        'x-internal-secret': secret,
      }),
      'TENANTRY_ERR_AUTH_CLAIM_INVALID',
    );
  });

  test('header names are configurable (case-insensitive)', async () => {
    const custom = probe(
      createTrustedHeaderStrategy({
        enabled: true,
        secret,
        tenantHeader: 'X-Org-Id',
        userHeader: 'x-actor',
        secretHeader: 'X-Gateway-Token',
      }),
    );
    const identity = assertIdentity(
      await custom('/', { 'x-org-id': tenantId, 'x-actor': userId, 'x-gateway-token': secret }),
    );
    assert.equal(identity.tenantId, tenantId);
    assert.equal(identity.userId, userId);
    assertNoIdentity(await custom('/', { 'x-tenant-id': tenantId, 'x-internal-secret': secret }));
    assertRefused(
      await custom('/', { 'x-org-id': tenantId, 'x-internal-secret': secret }),
      'TENANTRY_ERR_AUTH_HEADER_UNTRUSTED',
    );
  });

  test('construction is refused unless enabled is exactly true', () => {
    for (const enabled of [undefined, false, 'true', 1]) {
      assert.throws(
        () =>
          createTrustedHeaderStrategy({
            enabled,
            secret,
          } as unknown as TrustedHeaderStrategyOptions),
        configInvalid,
        String(enabled),
      );
    }
  });

  test('construction is refused without a header-safe secret of at least 32 characters', () => {
    assert.throws(
      () =>
        createTrustedHeaderStrategy({ enabled: true } as unknown as TrustedHeaderStrategyOptions),
      configInvalid,
    );
    assert.throws(
      () => createTrustedHeaderStrategy({ enabled: true, secret: 'x'.repeat(31) }),
      configInvalid,
    );
    assert.throws(
      () => createTrustedHeaderStrategy({ enabled: true, secret: `${'x'.repeat(32)} ü` }),
      configInvalid,
    );
    createTrustedHeaderStrategy({ enabled: true, secret: 'x'.repeat(32) });
  });

  test('header names must be valid and distinct', () => {
    for (const names of [
      { tenantHeader: 'x tenant' },
      { userHeader: '' },
      { secretHeader: 'x-tenant-id' },
      { tenantHeader: 'X-User-Id' },
    ]) {
      assert.throws(
        () => createTrustedHeaderStrategy({ enabled: true, secret, ...names }),
        configInvalid,
        JSON.stringify(names),
      );
    }
  });
});
