import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, describe, test } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import {
  base64url,
  type CryptoKey,
  exportJWK,
  exportSPKI,
  generateKeyPair,
  type JSONWebKeySet,
  type JWK,
  type JWTPayload,
  SignJWT,
} from 'jose';
import { errorCodes, isTenantryError, type TenantryErrorCode } from 'tenantry';
import type { IdentificationStrategy } from '../src/fastify/identity.ts';
import { createJwtStrategy, type JwtStrategyOptions } from '../src/fastify/jwt-strategy.ts';

const tenantId = '0b5c6a3e-6a8e-4f7e-9a51-2f7c1c9d2e10';
const userId = '5d0f8c7e-1d2a-4c1b-8e7f-0a1b2c3d4e5f';
const secret = randomBytes(32).toString('base64url');
const secretKey = new TextEncoder().encode(secret);

interface ProbeResult {
  readonly status: number;
  readonly body: {
    readonly identity?: Record<string, unknown> | null;
    readonly code?: string;
    readonly message?: string;
    readonly details?: Record<string, unknown> | null;
    readonly cause?: string | null;
  };
}

const apps: FastifyInstance[] = [];
const closers: (() => Promise<void>)[] = [];

after(async () => {
  await Promise.all(apps.map((app) => app.close()));
  await Promise.all(closers.map((close) => close()));
});

function buildApp(strategy: IdentificationStrategy): FastifyInstance {
  const app = Fastify();
  app.get('/*', async (request, reply) => {
    try {
      const identity = await strategy.identify(request);
      return { identity: identity ?? null };
    } catch (error) {
      if (!isTenantryError(error)) throw error;
      const cause = error.cause as { code?: unknown } | undefined;
      return reply.code(error.status).send({
        code: error.code,
        message: error.message,
        details: error.details ?? null,
        cause: typeof cause?.code === 'string' ? cause.code : null,
      });
    }
  });
  apps.push(app);
  return app;
}

function probe(options: JwtStrategyOptions) {
  const app = buildApp(createJwtStrategy(options));
  return async (authorization?: string): Promise<ProbeResult> => {
    const response = await app.inject({
      method: 'GET',
      url: '/',
      headers: authorization === undefined ? {} : { authorization },
    });
    return { status: response.statusCode, body: response.json() };
  };
}

const bearer = (token: string) => `Bearer ${token}`;
const now = () => Math.floor(Date.now() / 1000);

function claims(overrides: Record<string, unknown> = {}): JWTPayload {
  const base: Record<string, unknown> = {
    tenant_id: tenantId,
    sub: userId,
    role: 'admin',
    exp: now() + 300,
  };
  for (const [name, value] of Object.entries(overrides)) {
    if (value === undefined) delete base[name];
    else base[name] = value;
  }
  return base;
}

function sign(
  payload: JWTPayload,
  key: CryptoKey | Uint8Array = secretKey,
  header: { alg: string; kid?: string } = { alg: 'HS256' },
): Promise<string> {
  return new SignJWT(payload).setProtectedHeader({ typ: 'JWT', ...header }).sign(key);
}

function assertAccepted(result: ProbeResult): Record<string, unknown> {
  assert.equal(result.status, 200, JSON.stringify(result.body));
  assert.ok(result.body.identity, 'an identity');
  return result.body.identity;
}

function assertRefused(result: ProbeResult, code: TenantryErrorCode, cause?: string): void {
  assert.equal(result.body.code, code, JSON.stringify(result.body));
  assert.equal(result.status, errorCodes[code].status);
  if (cause !== undefined) assert.equal(result.body.cause, cause);
}

const configInvalid = (error: unknown) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID');

interface KeyPair {
  readonly alg: string;
  readonly kid: string;
  readonly privateKey: CryptoKey;
  readonly publicKey: CryptoKey;
  readonly jwk: JWK;
}

let keyCounter = 0;

async function makeKey(alg: string, kid: string | null = `key-${++keyCounter}`): Promise<KeyPair> {
  const { privateKey, publicKey } = await generateKeyPair(alg);
  const jwk = { ...(await exportJWK(publicKey)), alg, use: 'sig' };
  if (kid !== null) jwk.kid = kid;
  return { alg, kid: kid ?? '', privateKey, publicKey, jwk };
}

function signWith(key: KeyPair, payload: JWTPayload = claims()): Promise<string> {
  return sign(
    payload,
    key.privateKey,
    key.kid === '' ? { alg: key.alg } : { alg: key.alg, kid: key.kid },
  );
}

interface TestIdp {
  readonly jwksUrl: string;
  readonly fetches: () => number;
  publish(keys: readonly KeyPair[]): void;
  fail(status: number | 'garbage' | 'hang'): void;
  recover(): void;
}

async function startIdp(keys: readonly KeyPair[]): Promise<TestIdp> {
  let body = JSON.stringify({ keys: keys.map((key) => key.jwk) });
  let failure: number | 'garbage' | 'hang' | undefined;
  let fetches = 0;
  const server = createServer((request: IncomingMessage, response: ServerResponse) => {
    if (request.url !== '/.well-known/jwks.json') {
      response.writeHead(404).end();
      return;
    }
    fetches += 1;
    if (failure === 'hang') return;
    if (failure === 'garbage') {
      response.writeHead(200, { 'content-type': 'application/json' }).end('{"keys": [');
      return;
    }
    if (failure !== undefined) {
      response.writeHead(failure).end();
      return;
    }
    response.writeHead(200, { 'content-type': 'application/jwk-set+json' }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  closers.push(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return {
    jwksUrl: `http://127.0.0.1:${port}/.well-known/jwks.json`,
    fetches: () => fetches,
    publish(next) {
      body = JSON.stringify({ keys: next.map((key) => key.jwk) });
    },
    fail(status) {
      failure = status;
    },
    recover() {
      failure = undefined;
    },
  };
}

describe('jwt strategy: bearer token parsing', () => {
  const identify = probe({ secret });

  test('a request without an Authorization header yields no identity', async () => {
    const result = await identify();
    assert.equal(result.status, 200);
    assert.equal(result.body.identity, null);
  });

  test('another scheme (Basic) yields no identity', async () => {
    const result = await identify(`Basic ${Buffer.from('user:pass').toString('base64')}`);
    assert.equal(result.status, 200);
    assert.equal(result.body.identity, null);
  });

  test('a Bearer value that is not a JWT is refused', async () => {
    assertRefused(await identify('Bearer not-a-jwt'), 'TENANTRY_ERR_AUTH_TOKEN_INVALID');
    assertRefused(await identify('Bearer'), 'TENANTRY_ERR_AUTH_TOKEN_INVALID');
    assertRefused(await identify('Bearer a.b.c.d'), 'TENANTRY_ERR_AUTH_TOKEN_INVALID');
    assertRefused(await identify('Bearer e30.e30.'), 'TENANTRY_ERR_AUTH_TOKEN_INVALID');
  });

  test('the scheme is case-insensitive', async () => {
    const identity = assertAccepted(await identify(`bearer ${await sign(claims())}`));
    assert.equal(identity.tenantId, tenantId);
  });
});

describe('jwt strategy: HS256 shared secret', () => {
  const identify = probe({ secret });

  test('a valid token yields an authenticated identity with tenant, user, role and claims', async () => {
    const identity = assertAccepted(await identify(bearer(await sign(claims()))));
    assert.equal(identity.strategy, 'jwt');
    assert.equal(identity.authenticated, true);
    assert.equal(identity.tenantId, tenantId);
    assert.equal(identity.userId, userId);
    assert.equal(identity.role, 'admin');
    assert.equal((identity.claims as Record<string, unknown>).tenant_id, tenantId);
    assert.equal(identity.tenantSlug, undefined);
  });

  test('ids are returned in canonical lowercase form', async () => {
    const token = await sign(
      claims({ tenant_id: tenantId.toUpperCase(), sub: userId.toUpperCase() }),
    );
    const identity = assertAccepted(await identify(bearer(token)));
    assert.equal(identity.tenantId, tenantId);
    assert.equal(identity.userId, userId);
  });

  test('a Uint8Array secret works like the string one', async () => {
    const fromBytes = probe({ secret: new Uint8Array(secretKey) });
    assertAccepted(await fromBytes(bearer(await sign(claims()))));
  });

  test('alg "none" (unsigned token) is refused', async () => {
    const header = base64url.encode(JSON.stringify({ alg: 'none', typ: 'JWT' }));
    const payload = base64url.encode(JSON.stringify(claims()));
    assertRefused(
      await identify(bearer(`${header}.${payload}.`)),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JOSE_ALG_NOT_ALLOWED',
    );
    const signature = base64url.encode(randomBytes(32));
    assertRefused(
      await identify(bearer(`${header}.${payload}.${signature}`)),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JOSE_ALG_NOT_ALLOWED',
    );
  });

  test('a token signed with another key is refused', async () => {
    const token = await sign(claims(), randomBytes(32));
    assertRefused(
      await identify(bearer(token)),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JWS_SIGNATURE_VERIFICATION_FAILED',
    );
  });

  test('a token whose payload was altered after signing is refused', async () => {
    const [header, , signature] = (await sign(claims())).split('.');
    const otherTenant = '7c9e6679-7425-40de-944b-e07fc1f90ae7';
    const payload = base64url.encode(JSON.stringify(claims({ tenant_id: otherTenant })));
    assertRefused(
      await identify(bearer(`${header}.${payload}.${signature}`)),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JWS_SIGNATURE_VERIFICATION_FAILED',
    );
  });

  test('algorithms are pinned: HS512 is refused when only HS256 is allowed', async () => {
    const token = await sign(claims(), randomBytes(64), { alg: 'HS512' });
    assertRefused(
      await identify(bearer(token)),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JOSE_ALG_NOT_ALLOWED',
    );
  });

  test('an RS256 token is refused by a secret-configured strategy', async () => {
    const rsa = await makeKey('RS256');
    assertRefused(
      await identify(bearer(await signWith(rsa))),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JOSE_ALG_NOT_ALLOWED',
    );
  });

  test('an expired token is refused as expired', async () => {
    const token = await sign(claims({ exp: now() - 60 }));
    assertRefused(
      await identify(bearer(token)),
      'TENANTRY_ERR_AUTH_TOKEN_EXPIRED',
      'ERR_JWT_EXPIRED',
    );
  });

  test('a token whose nbf is in the future is refused as not yet valid', async () => {
    const token = await sign(claims({ nbf: now() + 60 }));
    assertRefused(
      await identify(bearer(token)),
      'TENANTRY_ERR_AUTH_TOKEN_EXPIRED',
      'ERR_JWT_CLAIM_VALIDATION_FAILED',
    );
  });

  test('a token whose nbf has passed is accepted', async () => {
    assertAccepted(await identify(bearer(await sign(claims({ nbf: now() - 60 })))));
  });

  test('exp within the clock tolerance is accepted, beyond it refused', async () => {
    const justExpired = await sign(claims({ exp: now() - 2 }));
    assertAccepted(await identify(bearer(justExpired)));
    const strict = probe({ secret, clockToleranceSec: 0 });
    assertRefused(await strict(bearer(justExpired)), 'TENANTRY_ERR_AUTH_TOKEN_EXPIRED');
    const longExpired = await sign(claims({ exp: now() - 20 }));
    assertRefused(await identify(bearer(longExpired)), 'TENANTRY_ERR_AUTH_TOKEN_EXPIRED');
    const lenient = probe({ secret, clockToleranceSec: 60 });
    assertAccepted(await lenient(bearer(longExpired)));
  });

  test('nbf within the clock tolerance is accepted', async () => {
    assertAccepted(await identify(bearer(await sign(claims({ nbf: now() + 2 })))));
  });

  test('a token without exp is refused', async () => {
    const token = await sign(claims({ exp: undefined }));
    assertRefused(
      await identify(bearer(token)),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JWT_CLAIM_VALIDATION_FAILED',
    );
  });

  test('a token whose exp is not a number is refused', async () => {
    const token = await sign(claims({ exp: 'tomorrow' }));
    assertRefused(await identify(bearer(token)), 'TENANTRY_ERR_AUTH_TOKEN_INVALID');
  });

  test('error messages do not echo token contents', async () => {
    const marker = 'marker-7f3a9c';
    const results = [
      await identify(bearer(await sign(claims({ tenant_id: marker })))),
      await identify(bearer(await sign(claims({ sub: marker })))),
      await identify(bearer(await sign(claims({ exp: now() - 60, jti: marker })))),
      await identify(bearer(await sign(claims({ jti: marker }), randomBytes(32)))),
    ];
    for (const result of results) {
      assert.ok(result.body.code, 'refused');
      assert.ok(!JSON.stringify(result.body).includes(marker), JSON.stringify(result.body));
    }
  });
});

describe('jwt strategy: issuer, audience and token age', () => {
  const issuer = 'https://idp.example.test/';
  const audience = 'https://api.example.test';

  test('a token from another issuer is refused; the configured one is accepted', async () => {
    const identify = probe({ secret, issuer });
    assertAccepted(await identify(bearer(await sign(claims({ iss: issuer })))));
    assertRefused(
      await identify(bearer(await sign(claims({ iss: 'https://evil.example.test/' })))),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JWT_CLAIM_VALIDATION_FAILED',
    );
    assertRefused(
      await identify(bearer(await sign(claims()))),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JWT_CLAIM_VALIDATION_FAILED',
    );
  });

  test('an issuer list accepts any of its members', async () => {
    const identify = probe({ secret, issuer: ['https://other.example.test/', issuer] });
    assertAccepted(await identify(bearer(await sign(claims({ iss: issuer })))));
  });

  test('a token for another audience is refused; the configured one is accepted', async () => {
    const identify = probe({ secret, audience });
    assertAccepted(await identify(bearer(await sign(claims({ aud: audience })))));
    assertAccepted(
      await identify(bearer(await sign(claims({ aud: ['https://other.example.test', audience] })))),
    );
    assertRefused(
      await identify(bearer(await sign(claims({ aud: 'https://other.example.test' })))),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JWT_CLAIM_VALIDATION_FAILED',
    );
    assertRefused(
      await identify(bearer(await sign(claims()))),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JWT_CLAIM_VALIDATION_FAILED',
    );
  });

  test('maxTokenAgeSec refuses old tokens and tokens without iat', async () => {
    const identify = probe({ secret, maxTokenAgeSec: 60 });
    assertAccepted(await identify(bearer(await sign(claims({ iat: now() })))));
    assertRefused(
      await identify(bearer(await sign(claims({ iat: now() - 3600 })))),
      'TENANTRY_ERR_AUTH_TOKEN_EXPIRED',
    );
    assertRefused(
      await identify(bearer(await sign(claims()))),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JWT_CLAIM_VALIDATION_FAILED',
    );
  });
});

describe('jwt strategy: tenant, user and role claims', () => {
  const identify = probe({ secret });

  test('a token without the tenant claim is refused', async () => {
    assertRefused(
      await identify(bearer(await sign(claims({ tenant_id: undefined })))),
      'TENANTRY_ERR_AUTH_CLAIM_INVALID',
    );
  });

  for (const [label, value] of [
    ['not a UUID', 'acme'],
    ['a number', 42],
    ['the nil UUID', '00000000-0000-0000-0000-000000000000'],
    ['a UUID with trailing SQL', `${tenantId}'; select 1; --`],
    ['an array', [tenantId]],
  ] as const) {
    test(`a tenant claim that is ${label} is refused`, async () => {
      assertRefused(
        await identify(bearer(await sign(claims({ tenant_id: value })))),
        'TENANTRY_ERR_AUTH_CLAIM_INVALID',
      );
    });
  }

  test('tenantClaimFormat "slug" yields a tenant slug and refuses malformed slugs', async () => {
    const bySlug = probe({ secret, tenantClaimFormat: 'slug', tenantClaim: 'org' });
    const identity = assertAccepted(await bySlug(bearer(await sign(claims({ org: 'acme-co' })))));
    assert.equal(identity.tenantSlug, 'acme-co');
    assert.equal(identity.tenantId, undefined);
    for (const bad of ['Acme', '-acme', 'acme-', 'ac_me', 'a'.repeat(64), '', 7]) {
      assertRefused(
        await bySlug(bearer(await sign(claims({ org: bad })))),
        'TENANTRY_ERR_AUTH_CLAIM_INVALID',
      );
    }
    assertRefused(await bySlug(bearer(await sign(claims()))), 'TENANTRY_ERR_AUTH_CLAIM_INVALID');
  });

  test('a malformed user claim is refused', async () => {
    for (const bad of ['auth0|12345', 42, `${userId} `]) {
      assertRefused(
        await identify(bearer(await sign(claims({ sub: bad })))),
        'TENANTRY_ERR_AUTH_CLAIM_INVALID',
      );
    }
  });

  test('a missing user claim is refused unless requireUser is false', async () => {
    const token = await sign(claims({ sub: undefined }));
    assertRefused(await identify(bearer(token)), 'TENANTRY_ERR_AUTH_CLAIM_INVALID');
    const optional = probe({ secret, requireUser: false });
    const identity = assertAccepted(await optional(bearer(token)));
    assert.equal(identity.userId, undefined);
    assert.equal(identity.tenantId, tenantId);
    assertRefused(
      await optional(bearer(await sign(claims({ sub: 'not-a-uuid' })))),
      'TENANTRY_ERR_AUTH_CLAIM_INVALID',
    );
  });

  test('claim names are configurable and read literally', async () => {
    const custom = probe({
      secret,
      tenantClaim: 'https://example.test/tenant_id',
      userClaim: 'uid',
      roleClaim: 'https://example.test/role',
    });
    const token = await sign({
      'https://example.test/tenant_id': tenantId,
      uid: userId,
      'https://example.test/role': 'viewer',
      sub: 'auth0|12345',
      exp: now() + 300,
    });
    const identity = assertAccepted(await custom(bearer(token)));
    assert.equal(identity.tenantId, tenantId);
    assert.equal(identity.userId, userId);
    assert.equal(identity.role, 'viewer');
  });

  test('a role claim that is not a string is left out', async () => {
    const identity = assertAccepted(
      await identify(bearer(await sign(claims({ role: ['admin', 'owner'] })))),
    );
    assert.equal(identity.role, undefined);
    assert.equal(identity.tenantId, tenantId);
  });
});

describe('jwt strategy: local JSON Web Key Set', () => {
  test('accepts a token signed by a key of the set', async () => {
    const rsa = await makeKey('RS256');
    const identify = probe({ jwks: { keys: [rsa.jwk] } });
    assertAccepted(await identify(bearer(await signWith(rsa))));
  });

  test('refuses an HS256 token signed with the RSA public key (algorithm confusion)', async () => {
    const rsa = await makeKey('RS256');
    const identify = probe({ jwks: { keys: [rsa.jwk] } });
    const encoder = new TextEncoder();
    const publicKeyForms = [await exportSPKI(rsa.publicKey), JSON.stringify(rsa.jwk)];
    for (const form of publicKeyForms) {
      const token = await sign(claims(), encoder.encode(form), { alg: 'HS256', kid: rsa.kid });
      assertRefused(
        await identify(bearer(token)),
        'TENANTRY_ERR_AUTH_TOKEN_INVALID',
        'ERR_JOSE_ALG_NOT_ALLOWED',
      );
    }
  });

  test('with several matching keys (no kid), each is tried', async () => {
    const first = await makeKey('RS256', null);
    const second = await makeKey('RS256', null);
    const identify = probe({ jwks: { keys: [first.jwk, second.jwk] } });
    assertAccepted(await identify(bearer(await signWith(second))));
    const stranger = await makeKey('RS256', null);
    assertRefused(
      await identify(bearer(await signWith(stranger))),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JWS_SIGNATURE_VERIFICATION_FAILED',
    );
  });
});

describe('jwt strategy: remote JWKS from a loopback identity provider', () => {
  for (const alg of ['RS256', 'ES256', 'EdDSA']) {
    test(`accepts a ${alg} token signed by a published key`, async () => {
      const key = await makeKey(alg);
      const idp = await startIdp([key]);
      const identify = probe({ jwksUrl: idp.jwksUrl });
      const identity = assertAccepted(await identify(bearer(await signWith(key))));
      assert.equal(identity.tenantId, tenantId);
      assert.equal(identity.userId, userId);
    });
  }

  test('refuses an HS256 token signed with the published RSA key (algorithm confusion)', async () => {
    const key = await makeKey('RS256');
    const idp = await startIdp([key]);
    const identify = probe({ jwksUrl: idp.jwksUrl });
    const token = await sign(claims(), new TextEncoder().encode(JSON.stringify(key.jwk)), {
      alg: 'HS256',
      kid: key.kid,
    });
    assertRefused(
      await identify(bearer(token)),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JOSE_ALG_NOT_ALLOWED',
    );
  });

  test('refuses a token whose kid is not published', async () => {
    const published = await makeKey('ES256');
    const idp = await startIdp([published]);
    const identify = probe({ jwksUrl: idp.jwksUrl });
    const unknown = await makeKey('ES256');
    const result = await identify(bearer(await signWith(unknown)));
    assertRefused(result, 'TENANTRY_ERR_AUTH_TOKEN_INVALID', 'ERR_JWKS_NO_MATCHING_KEY');
    assert.equal(result.body.details, null, 'an unknown kid is not a key set outage');
  });

  test('refuses a token signed by another key under a published kid', async () => {
    const published = await makeKey('ES256', 'shared-kid');
    const impostor = await makeKey('ES256', 'shared-kid');
    const idp = await startIdp([published]);
    const identify = probe({ jwksUrl: idp.jwksUrl });
    assertRefused(
      await identify(bearer(await signWith(impostor))),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JWS_SIGNATURE_VERIFICATION_FAILED',
    );
  });

  test('key rotation: a new kid is fetched and accepted, the removed key refused', async () => {
    const oldKey = await makeKey('RS256');
    const newKey = await makeKey('RS256');
    const idp = await startIdp([oldKey]);
    const identify = probe({ jwksUrl: idp.jwksUrl, jwksCooldownMs: 0 });
    const oldToken = await signWith(oldKey);
    assertAccepted(await identify(bearer(oldToken)));
    assert.equal(idp.fetches(), 1);

    idp.publish([newKey]);
    assertAccepted(await identify(bearer(await signWith(newKey))));
    assert.equal(idp.fetches(), 2);
    const result = await identify(bearer(oldToken));
    assertRefused(result, 'TENANTRY_ERR_AUTH_TOKEN_INVALID', 'ERR_JWKS_NO_MATCHING_KEY');
    assert.equal(result.body.details, null);
    assert.equal(idp.fetches(), 3);
  });

  test('malformed tokens are refused without contacting the identity provider', async () => {
    const key = await makeKey('RS256');
    const idp = await startIdp([key]);
    const identify = probe({ jwksUrl: idp.jwksUrl });
    const header = base64url.encode(JSON.stringify({ alg: 'RS256', kid: key.kid }));
    for (const token of [`${header}.!!!.###`, `${header}.e30`, `${header}..`, 'garbage']) {
      assertRefused(await identify(bearer(token)), 'TENANTRY_ERR_AUTH_TOKEN_INVALID');
    }
    assert.equal(idp.fetches(), 0);
  });

  test('unknown kids do not refetch the key set during the default cooldown', async () => {
    const key = await makeKey('ES256');
    const idp = await startIdp([key]);
    const identify = probe({ jwksUrl: idp.jwksUrl });
    assertAccepted(await identify(bearer(await signWith(key))));
    for (let attempt = 0; attempt < 5; attempt += 1) {
      const stranger = await makeKey('ES256');
      assertRefused(
        await identify(bearer(await signWith(stranger))),
        'TENANTRY_ERR_AUTH_TOKEN_INVALID',
        'ERR_JWKS_NO_MATCHING_KEY',
      );
    }
    assert.equal(idp.fetches(), 1);
  });

  test('jwksCacheMaxAgeMs bounds how long a replaced key under the same kid is trusted', async () => {
    const before = await makeKey('ES256', 'signing');
    const replacement = await makeKey('ES256', 'signing');
    const idp = await startIdp([before]);
    const identify = probe({ jwksUrl: idp.jwksUrl, jwksCacheMaxAgeMs: 0, jwksCooldownMs: 60_000 });
    const oldToken = await signWith(before);
    assertAccepted(await identify(bearer(oldToken)));
    idp.publish([replacement]);
    assertAccepted(await identify(bearer(await signWith(replacement))));
    assertRefused(
      await identify(bearer(oldToken)),
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'ERR_JWS_SIGNATURE_VERIFICATION_FAILED',
    );
  });

  test('a failing JWKS endpoint refuses tokens with reason jwks_unavailable', async () => {
    const key = await makeKey('RS256');
    const idp = await startIdp([key]);
    idp.fail(503);
    const identify = probe({ jwksUrl: idp.jwksUrl });
    const result = await identify(bearer(await signWith(key)));
    assertRefused(result, 'TENANTRY_ERR_AUTH_KEYS_UNAVAILABLE', 'ERR_JOSE_GENERIC');
    assert.deepEqual(result.body.details, { reason: 'jwks_unavailable' });
  });

  test('a JWKS endpoint answering garbage refuses tokens with reason jwks_unavailable', async () => {
    const key = await makeKey('RS256');
    const idp = await startIdp([key]);
    idp.fail('garbage');
    const identify = probe({ jwksUrl: idp.jwksUrl });
    const result = await identify(bearer(await signWith(key)));
    assertRefused(result, 'TENANTRY_ERR_AUTH_KEYS_UNAVAILABLE');
    assert.deepEqual(result.body.details, { reason: 'jwks_unavailable' });
  });

  test('an unreachable JWKS endpoint refuses tokens with reason jwks_unavailable', async () => {
    const key = await makeKey('RS256');
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const identify = probe({ jwksUrl: `http://127.0.0.1:${port}/.well-known/jwks.json` });
    const result = await identify(bearer(await signWith(key)));
    assertRefused(result, 'TENANTRY_ERR_AUTH_KEYS_UNAVAILABLE');
    assert.deepEqual(result.body.details, { reason: 'jwks_unavailable' });
  });

  test('a JWKS endpoint that does not answer in jwksTimeoutMs refuses tokens', {
    timeout: 2_000,
  }, async () => {
    const key = await makeKey('RS256');
    const idp = await startIdp([key]);
    idp.fail('hang');
    const identify = probe({ jwksUrl: idp.jwksUrl, jwksTimeoutMs: 100 });
    const result = await identify(bearer(await signWith(key)));
    assertRefused(result, 'TENANTRY_ERR_AUTH_KEYS_UNAVAILABLE', 'ERR_JWKS_TIMEOUT');
    assert.deepEqual(result.body.details, { reason: 'jwks_unavailable' });
  });

  test('the key set recovers once the endpoint is back', async () => {
    const key = await makeKey('RS256');
    const idp = await startIdp([key]);
    idp.fail(500);
    const identify = probe({ jwksUrl: idp.jwksUrl });
    const token = await signWith(key);
    assertRefused(await identify(bearer(token)), 'TENANTRY_ERR_AUTH_KEYS_UNAVAILABLE');
    idp.recover();
    assertAccepted(await identify(bearer(token)));
  });
});

describe('jwt strategy: configuration is validated at construction', () => {
  const refuses = (options: unknown) =>
    assert.throws(() => createJwtStrategy(options as JwtStrategyOptions), configInvalid);

  test('exactly one source of key material is required', () => {
    refuses({});
    refuses({ secret, jwks: { keys: [] } });
    refuses({ secret, jwksUrl: 'https://idp.example.test/jwks.json' });
  });

  test('short secrets are refused', () => {
    refuses({ secret: 'x'.repeat(31) });
    refuses({ secret: new Uint8Array(16) });
    refuses({ secret: 'x'.repeat(32), algorithms: ['HS512'] });
    refuses({ secret: 42 });
    createJwtStrategy({ secret: 'x'.repeat(32) });
    createJwtStrategy({ secret: 'x'.repeat(64), algorithms: ['HS256', 'HS512'] });
  });

  test('"none", unknown algorithms and mixed key kinds are refused', async () => {
    const rsa = await makeKey('RS256');
    refuses({ secret, algorithms: ['none'] });
    refuses({ secret, algorithms: ['HS256', 'NONE'] });
    refuses({ secret, algorithms: ['RS256'] });
    refuses({ secret, algorithms: ['HS256', 'ES256'] });
    refuses({ secret, algorithms: ['XS256'] });
    refuses({ secret, algorithms: [] });
    refuses({ jwks: { keys: [rsa.jwk] }, algorithms: ['HS256'] });
    refuses({ jwks: { keys: [rsa.jwk] }, algorithms: ['RS256', 'HS256'] });
    refuses({ jwksUrl: 'https://idp.example.test/jwks.json', algorithms: ['HS256'] });
    refuses({ jwksUrl: 'https://idp.example.test/jwks.json', algorithms: ['none'] });
  });

  test('clock tolerance must be between 0 and 300 seconds', () => {
    refuses({ secret, clockToleranceSec: 301 });
    refuses({ secret, clockToleranceSec: -1 });
    refuses({ secret, clockToleranceSec: Number.NaN });
    refuses({ secret, clockToleranceSec: '5' });
    createJwtStrategy({ secret, clockToleranceSec: 0 });
    createJwtStrategy({ secret, clockToleranceSec: 300 });
  });

  test('jwksUrl must be https unless on a loopback host', () => {
    refuses({ jwksUrl: 'http://idp.example.test/jwks.json' });
    refuses({ jwksUrl: 'not a url' });
    refuses({ jwksUrl: 'ftp://idp.example.test/jwks.json' });
    createJwtStrategy({ jwksUrl: 'https://idp.example.test/jwks.json' });
    createJwtStrategy({ jwksUrl: new URL('http://127.0.0.1:9/jwks.json') });
  });

  test('a local key set must hold public keys only', async () => {
    const { privateKey } = await generateKeyPair('ES256', { extractable: true });
    refuses({ jwks: { keys: [{ ...(await exportJWK(privateKey)), alg: 'ES256' }] } });
    refuses({ jwks: { keys: [{ kty: 'oct', k: base64url.encode(randomBytes(32)) }] } });
    refuses({ jwks: { keys: [] } });
    refuses({ jwks: { keys: 'nope' } as unknown as JSONWebKeySet });
  });

  test('remote key set options apply only to jwksUrl and must be non-negative', async () => {
    refuses({ secret, jwksCooldownMs: 0 });
    refuses({ jwks: { keys: [(await makeKey('ES256')).jwk] }, jwksCacheMaxAgeMs: 0 });
    refuses({ jwksUrl: 'https://idp.example.test/jwks.json', jwksCooldownMs: -1 });
    refuses({ jwksUrl: 'https://idp.example.test/jwks.json', jwksCacheMaxAgeMs: Number.NaN });
    refuses({ jwksUrl: 'https://idp.example.test/jwks.json', jwksTimeoutMs: 0 });
    refuses({ jwksUrl: 'https://idp.example.test/jwks.json', jwksTimeoutMs: 1.5 });
  });

  test('claim options are checked', () => {
    refuses({ secret, tenantClaimFormat: 'name' });
    refuses({ secret, tenantClaim: '' });
    refuses({ secret, userClaim: 7 });
    refuses({ secret, requireUser: 'no' });
    refuses({ secret, issuer: '' });
    refuses({ secret, audience: [] });
    refuses({ secret, maxTokenAgeSec: 0 });
  });
});

describe('jwt strategy: verified-token cache (shared secret)', () => {
  const tenant = '11111111-1111-4111-8111-111111111111';
  const user = '22222222-2222-4222-8222-222222222222';
  const request = (token: string) =>
    ({ headers: { authorization: `Bearer ${token}` } }) as unknown as Parameters<
      IdentificationStrategy['identify']
    >[0];
  const tokenExpiringIn = (seconds: number) =>
    new SignJWT({ tenant_id: tenant })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject(user)
      .setExpirationTime(Math.floor(Date.now() / 1000) + seconds)
      .sign(secretKey);

  test('a cached token is still refused once it expires', async (t) => {
    t.mock.timers.enable({ apis: ['Date'], now: Date.now() });
    const strategy = createJwtStrategy({ secret, clockToleranceSec: 0 });
    const token = await tokenExpiringIn(30);
    assert.equal((await strategy.identify(request(token)))?.tenantId, tenant);
    assert.equal((await strategy.identify(request(token)))?.tenantId, tenant);
    t.mock.timers.tick(31_000);
    await assert.rejects(
      async () => strategy.identify(request(token)),
      (error: unknown) => isTenantryError(error, 'TENANTRY_ERR_AUTH_TOKEN_EXPIRED'),
    );
  });

  test('a token with a changed signature is never served from the cache', async () => {
    const strategy = createJwtStrategy({ secret });
    const token = await tokenExpiringIn(600);
    await strategy.identify(request(token));
    const [header, payload, signature] = token.split('.') as [string, string, string];
    const flipped = `${header}.${payload}.${signature.slice(0, -2)}${signature.endsWith('AA') ? 'BB' : 'AA'}`;
    await assert.rejects(
      async () => strategy.identify(request(flipped)),
      (error: unknown) => isTenantryError(error, 'TENANTRY_ERR_AUTH_TOKEN_INVALID'),
    );
  });

  test('a negative cache size is refused', () => {
    assert.throws(
      () => createJwtStrategy({ secret, verifiedTokenCacheSize: -1 }),
      (error: unknown) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
    );
  });
});
