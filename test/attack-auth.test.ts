// Authentication attacks against the reference app, each tried on real workspace routes (a list,
// a read by id and a create) through `app.inject()`: every refusal must carry its status and
// problem+json code, reveal nothing of either workspace, and write nothing. The JWT strategy's
// own verification (algorithms, keys, clock, claim formats) is unit-tested in
// test/fastify-jwt.test.ts; this file proves the app wires it so that none of those tokens
// reaches a workspace.
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { SignJWT } from 'jose';
import { createTenantDirectory, createTenantry } from 'tenantry';
import { buildApp } from '../app/app.ts';
import type { AppDatabase } from '../app/database.ts';
import type { AppInstance } from '../app/http/types.ts';
import {
  bodyOf,
  createTestApp,
  createWorkspace,
  queryAsAdmin,
  signAccessToken,
  type TestApp,
  type TestWorkspace,
} from './app-fixtures.ts';

const baseDomain = 'attack.test';
const internalSecret = randomBytes(32).toString('hex');

let testApp: TestApp;
/** The same app and database with the trusted-header strategy on (`internalSecret`). */
let headerApp: AppInstance;
let a: TestWorkspace;
let b: TestWorkspace;
/** Contact ids, names and emails of each workspace: none may appear in a refused answer. */
const secretsOf = new Map<string, string[]>();
let counter = 0;

const unique = () => `${process.pid.toString(36)}${(counter++).toString(36)}`;

async function seedContact(workspace: TestWorkspace): Promise<void> {
  const marker = `secret-${workspace.slug}-${randomBytes(6).toString('hex')}`;
  const response = await testApp.app.inject({
    method: 'POST',
    url: '/v1/contacts',
    headers: workspace.headers,
    payload: { name: marker, email: `${marker}@example.com` },
  });
  assert.equal(response.statusCode, 201, response.body);
  secretsOf.set(workspace.tenantId, [bodyOf(response).id, marker, workspace.userId]);
}

before(async () => {
  testApp = await createTestApp({ baseDomain });
  a = await createWorkspace(testApp, `auth-a-${unique()}`);
  b = await createWorkspace(testApp, `auth-b-${unique()}`);
  await seedContact(a);
  await seedContact(b);
  headerApp = await buildApp({
    tenantry: await createTenantry<AppDatabase>({
      connectionString: testApp.database.appUrl,
      maxConnections: 2,
      ...(testApp.tenantSchema === undefined ? {} : { tenantSchema: testApp.tenantSchema }),
    }),
    directory: await createTenantDirectory({ connectionString: testApp.database.appUrl }),
    auth: testApp.auth,
    pendingMigrations: async () => [],
    internalSecret,
  });
  await headerApp.ready();
});

after(async () => {
  await headerApp?.close();
  await testApp?.close();
});

function base64url(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

interface TokenOptions {
  readonly claims?: Record<string, unknown>;
  readonly subject?: string | undefined;
  readonly secret?: string;
  readonly alg?: 'HS256' | 'HS384' | 'HS512';
  readonly issuer?: string;
  readonly audience?: string;
  readonly expiresAt?: number;
  readonly notBefore?: number;
}

/** Signs a token like the app's, with any part of it replaced. */
async function token(as: TestWorkspace, options: TokenOptions = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const jwt = new SignJWT(options.claims ?? { tenant_id: as.tenantId, role: as.role })
    .setProtectedHeader({ alg: options.alg ?? 'HS256', typ: 'JWT' })
    .setIssuer(options.issuer ?? testApp.auth.issuer)
    .setAudience(options.audience ?? testApp.auth.audience)
    .setIssuedAt(now - 60)
    .setExpirationTime(options.expiresAt ?? now + 600);
  if (!('subject' in options) || options.subject !== undefined) {
    jwt.setSubject(options.subject ?? as.userId);
  }
  if (options.notBefore !== undefined) jwt.setNotBefore(options.notBefore);
  return jwt.sign(new TextEncoder().encode(options.secret ?? testApp.auth.jwtSecret));
}

function bearer(value: string): Record<string, string> {
  return { authorization: `Bearer ${value}` };
}

interface Attempt {
  /** `/v1` or `/t/<slug>/v1`. */
  readonly prefix?: string;
  readonly headers: Record<string, string>;
  readonly app?: AppInstance;
}

async function contactRows(): Promise<{ tenant_id: string; n: number }[]> {
  return queryAsAdmin<{ tenant_id: string; n: number }>(
    testApp,
    'select tenant_id::text, count(*)::int as n from contacts group by tenant_id order by 1',
  );
}

function assertRefused(
  response: LightMyRequestResponse,
  status: number,
  code: string,
  what: string,
): void {
  assert.equal(response.statusCode, status, `${what}: ${response.body}`);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/, what);
  assert.equal(bodyOf(response).code, code, what);
  for (const [tenantId, secrets] of secretsOf) {
    for (const secret of [tenantId, ...secrets]) {
      assert.ok(!response.body.includes(secret), `${what} reveals ${secret}: ${response.body}`);
    }
  }
}

/**
 * Tries the attack on `GET <prefix>/contacts`, `GET <prefix>/contacts/<B's contact>` and
 * `POST <prefix>/contacts`, and checks each is refused with `status`/`code` and that no contact
 * was written anywhere.
 */
async function assertAttackRefused(attempt: Attempt, status: number, code: string): Promise<void> {
  const app = attempt.app ?? testApp.app;
  const prefix = attempt.prefix ?? '/v1';
  const before = await contactRows();
  const marker = `attack-${randomBytes(6).toString('hex')}`;
  const [contactOfB] = secretsOf.get(b.tenantId) ?? [];
  const requests = [
    { method: 'GET' as const, url: `${prefix}/contacts` },
    { method: 'GET' as const, url: `${prefix}/contacts/${contactOfB}` },
    { method: 'POST' as const, url: `${prefix}/contacts`, payload: { name: marker } },
  ];
  for (const request of requests) {
    const response = await app.inject({ ...request, headers: attempt.headers });
    assertRefused(response, status, code, `${request.method} ${request.url}`);
  }
  assert.deepEqual(await contactRows(), before, 'nothing was written');
  const written = await queryAsAdmin(testApp, 'select 1 from contacts where name = $1', [marker]);
  assert.deepEqual(written, []);
}

/** The contacts a request lists, as ids (for attacks where the app must ignore a header). */
async function listedContactIds(
  app: AppInstance,
  headers: Record<string, string>,
): Promise<string[]> {
  const response = await app.inject({ method: 'GET', url: '/v1/contacts', headers });
  assert.equal(response.statusCode, 200, response.body);
  return bodyOf(response).items.map((item: { id: string }) => item.id);
}

test('a genuine token reads its own workspace (the control every attack below departs from)', async () => {
  assert.deepEqual(await listedContactIds(testApp.app, bearer(await token(a))), [
    secretsOf.get(a.tenantId)?.[0],
  ]);
  assert.deepEqual(await listedContactIds(headerApp, a.headers), [secretsOf.get(a.tenantId)?.[0]]);
});

describe('forged, altered and out-of-date tokens', () => {
  test('alg "none" (an unsigned token naming B) is 401 TENANTRY_ERR_AUTH_TOKEN_INVALID', async () => {
    const now = Math.floor(Date.now() / 1000);
    const payload = {
      sub: b.userId,
      tenant_id: b.tenantId,
      role: 'owner',
      iss: testApp.auth.issuer,
      aud: testApp.auth.audience,
      iat: now,
      exp: now + 600,
    };
    for (const unsigned of [
      `${base64url({ alg: 'none', typ: 'JWT' })}.${base64url(payload)}.`,
      `${base64url({ alg: 'none' })}.${base64url(payload)}.${Buffer.from('x').toString('base64url')}`,
      `${base64url({ alg: 'NONE', typ: 'JWT' })}.${base64url(payload)}.`,
    ]) {
      await assertAttackRefused(
        { headers: bearer(unsigned) },
        401,
        'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      );
    }
  });

  test('a token signed with another key is 401 TENANTRY_ERR_AUTH_TOKEN_INVALID', async () => {
    const forged = await token(b, { secret: randomBytes(32).toString('hex') });
    await assertAttackRefused({ headers: bearer(forged) }, 401, 'TENANTRY_ERR_AUTH_TOKEN_INVALID');
  });

  test('a token signed with the right key under an algorithm the app does not pin (HS512) is 401', async () => {
    const other = await token(b, { alg: 'HS512' });
    await assertAttackRefused({ headers: bearer(other) }, 401, 'TENANTRY_ERR_AUTH_TOKEN_INVALID');
  });

  test("A's genuine token with its tenant_id rewritten to B (signature kept) is 401", async () => {
    const [header, , signature] = a.token.split('.');
    const payload = JSON.parse(
      Buffer.from(a.token.split('.')[1] ?? '', 'base64url').toString('utf8'),
    );
    const altered = `${header}.${base64url({ ...payload, tenant_id: b.tenantId })}.${signature}`;
    await assertAttackRefused({ headers: bearer(altered) }, 401, 'TENANTRY_ERR_AUTH_TOKEN_INVALID');
  });

  test('an expired token is 401 TENANTRY_ERR_AUTH_TOKEN_EXPIRED', async () => {
    const expired = await token(a, { expiresAt: Math.floor(Date.now() / 1000) - 60 });
    await assertAttackRefused({ headers: bearer(expired) }, 401, 'TENANTRY_ERR_AUTH_TOKEN_EXPIRED');
  });

  test('a token not valid yet (nbf in the future) is 401 TENANTRY_ERR_AUTH_TOKEN_EXPIRED', async () => {
    const early = await token(a, { notBefore: Math.floor(Date.now() / 1000) + 600 });
    await assertAttackRefused({ headers: bearer(early) }, 401, 'TENANTRY_ERR_AUTH_TOKEN_EXPIRED');
  });

  test('a token from another issuer is 401 TENANTRY_ERR_AUTH_TOKEN_INVALID', async () => {
    const foreign = await token(a, { issuer: 'https://attacker.example' });
    await assertAttackRefused({ headers: bearer(foreign) }, 401, 'TENANTRY_ERR_AUTH_TOKEN_INVALID');
  });

  test('a token for another audience is 401 TENANTRY_ERR_AUTH_TOKEN_INVALID', async () => {
    const foreign = await token(a, { audience: 'another-api' });
    await assertAttackRefused({ headers: bearer(foreign) }, 401, 'TENANTRY_ERR_AUTH_TOKEN_INVALID');
  });
});

describe('tenant claims that do not name one workspace', () => {
  const claimCases: [string, Record<string, unknown>][] = [
    ['missing', { role: 'owner' }],
    ['empty', { tenant_id: '', role: 'owner' }],
    ['the wildcard "*"', { tenant_id: '*', role: 'owner' }],
    ['the LIKE wildcard "%"', { tenant_id: '%', role: 'owner' }],
    [
      'a UUID-shaped LIKE pattern',
      { tenant_id: '%%%%%%%%-%%%%-%%%%-%%%%-%%%%%%%%%%%%', role: 'owner' },
    ],
    ['a slug instead of an id', { tenant_id: 'SLUG', role: 'owner' }],
    ['SQL text', { tenant_id: "' or true --", role: 'owner' }],
    ['the nil UUID', { tenant_id: '00000000-0000-0000-0000-000000000000', role: 'owner' }],
    ['a list of two workspaces', { tenant_id: ['A', 'B'], role: 'owner' }],
    ['an object', { tenant_id: { id: 'A' }, role: 'owner' }],
    ['null', { tenant_id: null, role: 'owner' }],
  ];
  for (const [name, template] of claimCases) {
    test(`a tenant claim that is ${name} is 401 TENANTRY_ERR_AUTH_CLAIM_INVALID`, async () => {
      const claims = JSON.parse(
        JSON.stringify(template)
          .replaceAll('"A"', JSON.stringify(a.tenantId))
          .replaceAll('"B"', JSON.stringify(b.tenantId))
          .replaceAll('SLUG', b.slug),
      );
      const forged = await token(a, { claims });
      await assertAttackRefused(
        { headers: bearer(forged) },
        401,
        'TENANTRY_ERR_AUTH_CLAIM_INVALID',
      );
    });
  }

  test('a non-UUID user claim is 401 TENANTRY_ERR_AUTH_CLAIM_INVALID', async () => {
    const forged = await token(a, { subject: '*' });
    await assertAttackRefused({ headers: bearer(forged) }, 401, 'TENANTRY_ERR_AUTH_CLAIM_INVALID');
  });

  test('a well-formed id of no workspace is 404 TENANTRY_ERR_TENANT_NOT_FOUND', async () => {
    const forged = await token(a, { claims: { tenant_id: randomUUID(), role: 'owner' } });
    await assertAttackRefused({ headers: bearer(forged) }, 404, 'TENANTRY_ERR_TENANT_NOT_FOUND');
  });
});

describe('a credential of A aimed at B through the address', () => {
  test("A's token at /t/<B>/v1 is 403 TENANTRY_ERR_TENANT_MISMATCH", async () => {
    await assertAttackRefused(
      { prefix: `/t/${b.slug}/v1`, headers: a.headers },
      403,
      'TENANTRY_ERR_TENANT_MISMATCH',
    );
  });

  test("A's token on B's subdomain is 403 TENANTRY_ERR_TENANT_MISMATCH", async () => {
    await assertAttackRefused(
      { headers: { ...a.headers, host: `${b.slug}.${baseDomain}` } },
      403,
      'TENANTRY_ERR_TENANT_MISMATCH',
    );
    await assertAttackRefused(
      { prefix: `/t/${a.slug}/v1`, headers: { ...a.headers, host: `${b.slug}.${baseDomain}` } },
      403,
      'TENANTRY_ERR_TENANT_MISMATCH',
    );
  });

  test("B's subdomain or path alone (no credential) is 401 TENANTRY_ERR_AUTH_REQUIRED", async () => {
    await assertAttackRefused(
      { headers: { host: `${b.slug}.${baseDomain}` } },
      401,
      'TENANTRY_ERR_AUTH_REQUIRED',
    );
    await assertAttackRefused(
      { prefix: `/t/${b.slug}/v1`, headers: {} },
      401,
      'TENANTRY_ERR_AUTH_REQUIRED',
    );
  });

  test("A's API key at /t/<B>/v1 is 403 TENANTRY_ERR_TENANT_MISMATCH", async () => {
    const created = await testApp.app.inject({
      method: 'POST',
      url: '/v1/api-keys',
      headers: a.headers,
      payload: { name: 'attack', scopes: ['contacts:read', 'contacts:write'] },
    });
    assert.equal(created.statusCode, 201, created.body);
    const key = bodyOf(created).key as string;
    assert.deepEqual(await listedContactIds(testApp.app, { 'x-api-key': key }), [
      secretsOf.get(a.tenantId)?.[0],
    ]);
    await assertAttackRefused(
      { prefix: `/t/${b.slug}/v1`, headers: { 'x-api-key': key } },
      403,
      'TENANTRY_ERR_TENANT_MISMATCH',
    );
    await assertAttackRefused(
      { headers: { 'x-api-key': key, host: `${b.slug}.${baseDomain}` } },
      403,
      'TENANTRY_ERR_TENANT_MISMATCH',
    );
    // Two credentials naming two workspaces: neither wins.
    await assertAttackRefused(
      { headers: { 'x-api-key': key, ...b.headers } },
      403,
      'TENANTRY_ERR_TENANT_MISMATCH',
    );
  });
});

describe('a workspace header', () => {
  test('without an internal secret configured the app ignores x-tenant-id: it never selects B', async () => {
    const idsOfA = [secretsOf.get(a.tenantId)?.[0]];
    const forged = {
      'x-tenant-id': b.tenantId,
      'x-user-id': b.userId,
      'x-internal-secret': internalSecret,
    };
    assert.deepEqual(await listedContactIds(testApp.app, { ...a.headers, ...forged }), idsOfA);
    await assertAttackRefused({ headers: forged }, 401, 'TENANTRY_ERR_AUTH_REQUIRED');
  });

  test('with the header strategy on, x-tenant-id of B beside A’s token is refused', async () => {
    await assertAttackRefused(
      { app: headerApp, headers: { ...a.headers, 'x-tenant-id': b.tenantId } },
      401,
      'TENANTRY_ERR_AUTH_HEADER_UNTRUSTED',
    );
    await assertAttackRefused(
      {
        app: headerApp,
        headers: {
          ...a.headers,
          'x-tenant-id': b.tenantId,
          'x-internal-secret': randomBytes(32).toString('hex'),
        },
      },
      401,
      'TENANTRY_ERR_AUTH_HEADER_UNTRUSTED',
    );
    await assertAttackRefused(
      {
        app: headerApp,
        headers: { ...a.headers, 'x-tenant-id': b.tenantId, 'x-internal-secret': internalSecret },
      },
      403,
      'TENANTRY_ERR_TENANT_MISMATCH',
    );
    await assertAttackRefused(
      {
        app: headerApp,
        headers: {
          ...a.headers,
          'x-tenant-id': a.tenantId,
          'x-user-id': b.userId,
          'x-internal-secret': internalSecret,
        },
      },
      403,
      'TENANTRY_ERR_TENANT_MISMATCH',
    );
    const agreeing = {
      ...a.headers,
      'x-tenant-id': a.tenantId,
      'x-internal-secret': internalSecret,
    };
    assert.deepEqual(await listedContactIds(headerApp, agreeing), [secretsOf.get(a.tenantId)?.[0]]);
  });
});

describe('getting a token for a workspace without membership', () => {
  interface SignedUp {
    readonly email: string;
    readonly password: string;
    readonly session: { readonly accessToken: string; readonly user: { readonly id: string } };
  }

  async function signUp(): Promise<SignedUp> {
    const id = unique();
    const input = {
      email: `attacker-${id}@example.com`,
      password: 'a long enough password',
      name: `Attacker ${id}`,
      workspaceName: `Attacker ${id}`,
      workspaceSlug: `attacker-${id}`,
    };
    const response = await testApp.app.inject({
      method: 'POST',
      url: '/auth/signup',
      payload: input,
    });
    assert.equal(response.statusCode, 201, response.body);
    return { email: input.email, password: input.password, session: bodyOf(response) };
  }

  async function sessionsFor(tenantId: string): Promise<number> {
    const [row] = await queryAsAdmin<{ n: number }>(
      testApp,
      'select count(*)::int as n from auth.refresh_tokens where workspace_id = $1',
      [tenantId],
    );
    return row?.n ?? -1;
  }

  test('POST /auth/switch and /auth/login to B are 403 APP_ERR_AUTH_NOT_A_MEMBER and issue nothing', async () => {
    const attacker = await signUp();
    const sessionsBefore = await sessionsFor(b.tenantId);
    const attempts = [
      b.slug,
      b.tenantId,
      `${b.slug} `,
      b.slug.toUpperCase(),
      '*',
      '%',
      `${b.slug.slice(0, 4)}%`,
      `${b.slug.slice(0, 4)}_*`,
    ];
    for (const workspace of attempts) {
      const switched = await testApp.app.inject({
        method: 'POST',
        url: '/auth/switch',
        headers: bearer(attacker.session.accessToken),
        payload: { workspace },
      });
      assertRefused(
        switched,
        403,
        'APP_ERR_AUTH_NOT_A_MEMBER',
        `switch to ${JSON.stringify(workspace)}`,
      );
    }
    const login = await testApp.app.inject({
      method: 'POST',
      url: '/auth/login',
      payload: { email: attacker.email, password: attacker.password, workspace: b.slug },
    });
    assertRefused(login, 403, 'APP_ERR_AUTH_NOT_A_MEMBER', 'login to B');
    // A switch from a token addressed at B's path is still a mismatch, not a way in.
    const viaPath = await testApp.app.inject({
      method: 'POST',
      url: '/auth/switch',
      headers: { ...bearer(attacker.session.accessToken), host: `${b.slug}.${baseDomain}` },
      payload: { workspace: b.slug },
    });
    assertRefused(viaPath, 403, 'TENANTRY_ERR_TENANT_MISMATCH', 'switch on B’s subdomain');
    assert.equal(await sessionsFor(b.tenantId), sessionsBefore, 'no session was issued for B');
  });

  test('a removed member: refresh, switch and login stop at once; the issued access token works until it expires, as documented', async () => {
    const member = await signUp();
    await queryAsAdmin(
      testApp,
      `insert into memberships (tenant_id, user_id, role) values ($1, $2, 'member')`,
      [a.tenantId, member.session.user.id],
    );
    const login = await testApp.app.inject({
      method: 'POST',
      url: '/auth/login',
      payload: { email: member.email, password: member.password, workspace: a.slug },
    });
    assert.equal(login.statusCode, 200, login.body);
    const inA = bodyOf(login);
    assert.equal(inA.workspace.id, a.tenantId);
    assert.deepEqual(await listedContactIds(testApp.app, bearer(inA.accessToken)), [
      secretsOf.get(a.tenantId)?.[0],
    ]);

    const removed = await testApp.app.inject({
      method: 'DELETE',
      url: `/v1/members/${member.session.user.id}`,
      headers: a.headers,
    });
    assert.equal(removed.statusCode, 204, removed.body);

    const refreshed = await testApp.app.inject({
      method: 'POST',
      url: '/auth/refresh',
      payload: { refreshToken: inA.refreshToken },
    });
    assertRefused(refreshed, 401, 'APP_ERR_AUTH_REFRESH_TOKEN_INVALID', 'refresh');
    const switched = await testApp.app.inject({
      method: 'POST',
      url: '/auth/switch',
      headers: bearer(member.session.accessToken),
      payload: { workspace: a.slug },
    });
    assertRefused(switched, 403, 'APP_ERR_AUTH_NOT_A_MEMBER', 'switch back');
    const again = await testApp.app.inject({
      method: 'POST',
      url: '/auth/login',
      payload: { email: member.email, password: member.password, workspace: a.slug },
    });
    assertRefused(again, 403, 'APP_ERR_AUTH_NOT_A_MEMBER', 'login again');

    // docs/reference/reference-app.md, "Sessions and membership changes": an access token
    // already issued stays valid until its exp (ACCESS_TOKEN_TTL_SEC bounds the window).
    const window = await testApp.app.inject({
      method: 'GET',
      url: '/v1/contacts',
      headers: bearer(inA.accessToken),
    });
    assert.equal(window.statusCode, 200, window.body);
    // Past exp, the same claims get nothing and write nothing.
    const expired = await signAccessToken(
      testApp.auth,
      { tenantId: a.tenantId, userId: member.session.user.id, role: 'member' },
      -60,
    );
    await assertAttackRefused({ headers: bearer(expired) }, 401, 'TENANTRY_ERR_AUTH_TOKEN_EXPIRED');
  });
});
