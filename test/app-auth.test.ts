import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { type CryptoKey, decodeJwt, exportJWK, generateKeyPair, SignJWT } from 'jose';
import { createMigrationCheck, createTenantDirectory, createTenantry } from 'tenantry';
import { createTestDatabase } from 'tenantry/testing';
import { buildApp } from '../app/app.ts';
import type { AppDatabase } from '../app/database.ts';
import { seedDemo } from '../app/seed.ts';
import {
  addMember,
  bodyOf,
  createTestApp,
  createWorkspace,
  queryAsAdmin,
  signAccessToken,
  type TestApp,
} from './app-fixtures.ts';

let testApp: TestApp;
let counter = 0;

before(async () => {
  testApp = await createTestApp();
});
after(async () => {
  await testApp.close();
});

const unique = () => `${process.pid.toString(36)}${(counter++).toString(36)}`;

function signupBody(overrides: Record<string, unknown> = {}) {
  const id = unique();
  return {
    email: `user-${id}@example.com`,
    password: 'a long enough password',
    name: `User ${id}`,
    workspaceName: `Workspace ${id}`,
    workspaceSlug: `ws-${id}`,
    ...overrides,
  };
}

async function post(url: string, payload: unknown, headers: Record<string, string> = {}) {
  return testApp.app.inject({ method: 'POST', url, payload: payload as object, headers });
}

async function signUp(overrides: Record<string, unknown> = {}) {
  const body = signupBody(overrides);
  const response = await post('/auth/signup', body);
  assert.equal(response.statusCode, 201, response.body);
  return { input: body, session: bodyOf(response) };
}

async function count(table: string): Promise<number> {
  const [row] = await queryAsAdmin<{ n: string }>(testApp, `select count(*) as n from ${table}`);
  return Number(row?.n);
}

function bearer(token: string) {
  return { authorization: `Bearer ${token}` };
}

function assertProblem(response: LightMyRequestResponse, status: number, code: string) {
  assert.equal(response.statusCode, status, response.body);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
  assert.equal(bodyOf(response).code, code);
}

describe('sign-up', () => {
  test('creates the user, the workspace and an owner membership, and signs in', async () => {
    const { input, session } = await signUp();
    assert.equal(session.tokenType, 'Bearer');
    assert.equal(session.expiresIn, testApp.auth.accessTokenTtlSec);
    assert.equal(session.workspace.slug, input.workspaceSlug);
    assert.equal(session.workspace.role, 'owner');
    assert.deepEqual(session.workspaces, [session.workspace]);
    assert.equal(session.user.email, input.email);

    const [user] = await queryAsAdmin<{ password_hash: string }>(
      testApp,
      'select password_hash from auth.users where id = $1',
      [session.user.id],
    );
    assert.match(user?.password_hash ?? '', /^scrypt\$32768\$8\$1\$[\w-]{22}\$[\w-]{43}$/);
    assert.ok(!user?.password_hash.includes(input.password));
    const memberships = await queryAsAdmin(
      testApp,
      'select tenant_id, role from memberships where user_id = $1',
      [session.user.id],
    );
    assert.deepEqual(memberships, [{ tenant_id: session.workspace.id, role: 'owner' }]);

    const workspace = await testApp.app.inject({
      method: 'GET',
      url: '/v1/workspace',
      headers: bearer(session.accessToken),
    });
    assert.equal(workspace.statusCode, 200, workspace.body);
    assert.equal(bodyOf(workspace).slug, input.workspaceSlug);
    assert.equal(bodyOf(workspace).role, 'owner');
  });

  test('issues an HS256 access token with the claims the JWT strategy reads', async () => {
    const { session } = await signUp();
    const claims = decodeJwt(session.accessToken);
    assert.equal(claims.sub, session.user.id);
    assert.equal(claims.tenant_id, session.workspace.id);
    assert.equal(claims.role, 'owner');
    assert.equal(claims.iss, testApp.auth.issuer);
    assert.equal(claims.aud, testApp.auth.audience);
    assert.equal((claims.exp ?? 0) - (claims.iat ?? 0), testApp.auth.accessTokenTtlSec);
    const [stored] = await queryAsAdmin<{ n: string }>(
      testApp,
      'select count(*) as n from auth.refresh_tokens where user_id = $1 and token_hash = sha256($2::bytea)',
      [session.user.id, Buffer.from(session.refreshToken)],
    );
    assert.equal(Number(stored?.n), 1, 'the refresh token is stored only as its SHA-256');
  });

  test('a taken email answers 409 and creates no workspace', async () => {
    const { input } = await signUp();
    const tenantsBefore = await count('tenantry.tenants');
    const usersBefore = await count('auth.users');
    const response = await post(
      '/auth/signup',
      signupBody({ email: input.email.toUpperCase(), workspaceSlug: `other-${unique()}` }),
    );
    assertProblem(response, 409, 'APP_ERR_EMAIL_TAKEN');
    assert.equal(await count('tenantry.tenants'), tenantsBefore);
    assert.equal(await count('auth.users'), usersBefore);
  });

  test('an invalid or taken slug answers 400/409 and leaves no user behind', async () => {
    const { input } = await signUp();
    const usersBefore = await count('auth.users');
    const tenantsBefore = await count('tenantry.tenants');
    const invalid = signupBody({ workspaceSlug: 'Not_A_Slug' });
    assertProblem(await post('/auth/signup', invalid), 400, 'TENANTRY_ERR_TENANT_SLUG_INVALID');
    const taken = signupBody({ workspaceSlug: input.workspaceSlug });
    assertProblem(await post('/auth/signup', taken), 409, 'TENANTRY_ERR_TENANT_SLUG_TAKEN');
    assert.equal(await count('auth.users'), usersBefore);
    assert.equal(await count('tenantry.tenants'), tenantsBefore);
    const leftovers = await queryAsAdmin(
      testApp,
      'select 1 from auth.users where email in ($1, $2)',
      [invalid.email, taken.email],
    );
    assert.deepEqual(leftovers, []);
  });

  test('invalid bodies are problem+json validation errors and store nothing', async () => {
    const usersBefore = await count('auth.users');
    const tenantsBefore = await count('tenantry.tenants');
    const cases = [
      signupBody({ password: 'short' }),
      signupBody({ email: 'not-an-email' }),
      signupBody({ name: '' }),
      signupBody({ tenant_id: '00000000-0000-4000-8000-000000000000' }),
      { email: 'x@example.com' },
    ];
    for (const payload of cases) {
      const response = await post('/auth/signup', payload);
      assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
      assert.ok(Array.isArray(bodyOf(response).errors));
    }
    assert.equal(await count('auth.users'), usersBefore);
    assert.equal(await count('tenantry.tenants'), tenantsBefore);
  });
});

describe('login', () => {
  test('signs in to the first workspace by name, or to the one named', async () => {
    const { input, session } = await signUp({ workspaceName: 'Zulu' });
    const other = await createWorkspace(testApp, `alpha-${unique()}`);
    await queryAsAdmin(
      testApp,
      `insert into memberships (tenant_id, user_id, role) values ($1, $2, 'member')`,
      [other.tenantId, session.user.id],
    );
    const first = await post('/auth/login', { email: input.email, password: input.password });
    assert.equal(first.statusCode, 200, first.body);
    assert.equal(bodyOf(first).workspace.slug, other.slug, 'Workspace alpha-… sorts before Zulu');
    assert.equal(bodyOf(first).workspace.role, 'member');
    assert.deepEqual(
      bodyOf(first).workspaces.map((w: { slug: string }) => w.slug),
      [other.slug, input.workspaceSlug],
    );
    const named = await post('/auth/login', {
      email: input.email.toUpperCase(),
      password: input.password,
      workspace: input.workspaceSlug,
    });
    assert.equal(named.statusCode, 200, named.body);
    assert.equal(bodyOf(named).workspace.slug, input.workspaceSlug);
    assert.equal(decodeJwt(bodyOf(named).accessToken).role, 'owner');
  });

  test('a wrong password and an unknown email get identical answers', async () => {
    const { input } = await signUp();
    const wrong = await post('/auth/login', { email: input.email, password: 'wrong password!' });
    const unknown = await post('/auth/login', {
      email: `nobody-${unique()}@example.com`,
      password: input.password,
    });
    assertProblem(wrong, 401, 'APP_ERR_AUTH_CREDENTIALS_INVALID');
    assert.equal(unknown.statusCode, wrong.statusCode);
    assert.equal(unknown.body, wrong.body);
    assert.equal(unknown.headers['content-type'], wrong.headers['content-type']);
  });

  test('a workspace the user does not belong to is refused', async () => {
    const { input } = await signUp();
    const stranger = await createWorkspace(testApp, `stranger-${unique()}`);
    const response = await post('/auth/login', {
      email: input.email,
      password: input.password,
      workspace: stranger.slug,
    });
    assertProblem(response, 403, 'APP_ERR_AUTH_NOT_A_MEMBER');
  });

  test('a user in no workspace is refused', async () => {
    const { input, session } = await signUp();
    await queryAsAdmin(testApp, 'delete from memberships where user_id = $1', [session.user.id]);
    const response = await post('/auth/login', { email: input.email, password: input.password });
    assertProblem(response, 403, 'APP_ERR_AUTH_NOT_A_MEMBER');
  });
});

describe('refresh tokens', () => {
  test('rotate: a refresh returns a new pair in the same family', async () => {
    const { session } = await signUp();
    const response = await post('/auth/refresh', { refreshToken: session.refreshToken });
    assert.equal(response.statusCode, 200, response.body);
    const next = bodyOf(response);
    assert.notEqual(next.refreshToken, session.refreshToken);
    assert.equal(next.workspace.id, session.workspace.id);
    const rows = await queryAsAdmin<{ family: number; used: number }>(
      testApp,
      `select count(distinct family_id)::int as family, count(used_at)::int as used
         from auth.refresh_tokens where user_id = $1`,
      [session.user.id],
    );
    assert.deepEqual(rows, [{ family: 1, used: 1 }]);
    const me = await testApp.app.inject({
      method: 'GET',
      url: '/v1/me',
      headers: bearer(next.accessToken),
    });
    assert.equal(me.statusCode, 200, me.body);
  });

  test('reusing a used refresh token revokes the whole family', async () => {
    const { session } = await signUp();
    const rotated = bodyOf(await post('/auth/refresh', { refreshToken: session.refreshToken }));
    const reuse = await post('/auth/refresh', { refreshToken: session.refreshToken });
    assertProblem(reuse, 401, 'APP_ERR_AUTH_REFRESH_TOKEN_INVALID');
    const latest = await post('/auth/refresh', { refreshToken: rotated.refreshToken });
    assertProblem(latest, 401, 'APP_ERR_AUTH_REFRESH_TOKEN_INVALID');
    const live = await queryAsAdmin(
      testApp,
      'select id from auth.refresh_tokens where user_id = $1 and revoked_at is null',
      [session.user.id],
    );
    assert.deepEqual(live, []);
  });

  test('an unknown or expired refresh token is refused', async () => {
    const { session } = await signUp();
    assertProblem(
      await post('/auth/refresh', { refreshToken: 'x'.repeat(43) }),
      401,
      'APP_ERR_AUTH_REFRESH_TOKEN_INVALID',
    );
    await queryAsAdmin(
      testApp,
      `update auth.refresh_tokens set expires_at = now() - interval '1 second' where user_id = $1`,
      [session.user.id],
    );
    assertProblem(
      await post('/auth/refresh', { refreshToken: session.refreshToken }),
      401,
      'APP_ERR_AUTH_REFRESH_TOKEN_INVALID',
    );
  });

  test('logout revokes the family', async () => {
    const { session } = await signUp();
    const rotated = bodyOf(await post('/auth/refresh', { refreshToken: session.refreshToken }));
    const logout = await post('/auth/logout', { refreshToken: rotated.refreshToken });
    assert.equal(logout.statusCode, 204, logout.body);
    assertProblem(
      await post('/auth/refresh', { refreshToken: rotated.refreshToken }),
      401,
      'APP_ERR_AUTH_REFRESH_TOKEN_INVALID',
    );
    const unknown = await post('/auth/logout', { refreshToken: 'y'.repeat(43) });
    assert.equal(unknown.statusCode, 204);
  });
});

test('a refresh carries a changed role into the next access token', async () => {
  const owner = await signUp();
  const other = await signUp();
  await queryAsAdmin(
    testApp,
    `insert into memberships (tenant_id, user_id, role) values ($1, $2, 'member')`,
    [owner.session.workspace.id, other.session.user.id],
  );
  const login = bodyOf(
    await post('/auth/login', {
      email: other.input.email,
      password: other.input.password,
      workspace: owner.input.workspaceSlug,
    }),
  );
  assert.equal(decodeJwt(login.accessToken).role, 'member');
  const promoted = await testApp.app.inject({
    method: 'PATCH',
    url: `/v1/members/${other.session.user.id}`,
    headers: bearer(owner.session.accessToken),
    payload: { role: 'admin' },
  });
  assert.equal(promoted.statusCode, 200, promoted.body);
  const refreshed = bodyOf(await post('/auth/refresh', { refreshToken: login.refreshToken }));
  assert.equal(decodeJwt(refreshed.accessToken).role, 'admin');
  assert.equal(refreshed.workspace.role, 'admin');
});

describe('switching workspaces', () => {
  test('a member gets tokens for the other workspace', async () => {
    const { session } = await signUp();
    const other = await createWorkspace(testApp, `switch-${unique()}`);
    await queryAsAdmin(
      testApp,
      `insert into memberships (tenant_id, user_id, role) values ($1, $2, 'admin')`,
      [other.tenantId, session.user.id],
    );
    const response = await post(
      '/auth/switch',
      { workspace: other.slug },
      bearer(session.accessToken),
    );
    assert.equal(response.statusCode, 200, response.body);
    const switched = bodyOf(response);
    assert.equal(switched.workspace.id, other.tenantId);
    assert.equal(switched.workspace.role, 'admin');
    const workspace = await testApp.app.inject({
      method: 'GET',
      url: '/v1/workspace',
      headers: bearer(switched.accessToken),
    });
    assert.equal(bodyOf(workspace).id, other.tenantId);
    const refreshed = await post('/auth/refresh', { refreshToken: switched.refreshToken });
    assert.equal(bodyOf(refreshed).workspace.id, other.tenantId);
  });

  test('a non-member and a nonexistent slug get the same 403', async () => {
    const { session } = await signUp();
    const other = await createWorkspace(testApp, `closed-${unique()}`);
    const refused = await post(
      '/auth/switch',
      { workspace: other.slug },
      bearer(session.accessToken),
    );
    const missing = await post(
      '/auth/switch',
      { workspace: `missing-${unique()}` },
      bearer(session.accessToken),
    );
    assertProblem(refused, 403, 'APP_ERR_AUTH_NOT_A_MEMBER');
    assert.equal(missing.body, refused.body);
    assert.equal(missing.statusCode, 403);
    const stored = await queryAsAdmin(
      testApp,
      'select 1 from auth.refresh_tokens where workspace_id = $1',
      [other.tenantId],
    );
    assert.deepEqual(stored, []);
  });

  test('switching needs an access token', async () => {
    const response = await post('/auth/switch', { workspace: 'anything' });
    assertProblem(response, 401, 'TENANTRY_ERR_AUTH_REQUIRED');
  });
});

describe('a revoked membership', () => {
  test('stops refresh and switch at once; the access token lasts until it expires', async () => {
    const owner = await signUp();
    const invited = await signUp();
    await queryAsAdmin(
      testApp,
      `insert into memberships (tenant_id, user_id, role) values ($1, $2, 'member')`,
      [owner.session.workspace.id, invited.session.user.id],
    );
    const login = bodyOf(
      await post('/auth/login', {
        email: invited.input.email,
        password: invited.input.password,
        workspace: owner.input.workspaceSlug,
      }),
    );
    assert.equal(login.workspace.id, owner.session.workspace.id);

    const removed = await testApp.app.inject({
      method: 'DELETE',
      url: `/v1/members/${invited.session.user.id}`,
      headers: bearer(owner.session.accessToken),
    });
    assert.equal(removed.statusCode, 204, removed.body);

    assertProblem(
      await post('/auth/refresh', { refreshToken: login.refreshToken }),
      401,
      'APP_ERR_AUTH_REFRESH_TOKEN_INVALID',
    );
    assertProblem(
      await post(
        '/auth/switch',
        { workspace: owner.input.workspaceSlug },
        bearer(invited.session.accessToken),
      ),
      403,
      'APP_ERR_AUTH_NOT_A_MEMBER',
    );
    const stillValid = await testApp.app.inject({
      method: 'GET',
      url: '/v1/workspace',
      headers: bearer(login.accessToken),
    });
    assert.equal(stillValid.statusCode, 200, 'an issued access token stays valid until exp');
    const expired = await signAccessToken(
      testApp.auth,
      { tenantId: owner.session.workspace.id, userId: invited.session.user.id, role: 'member' },
      -10,
    );
    assertProblem(
      await testApp.app.inject({ method: 'GET', url: '/v1/workspace', headers: bearer(expired) }),
      401,
      'TENANTRY_ERR_AUTH_TOKEN_EXPIRED',
    );
  });

  test('a refresh token of a removed member is refused even if never revoked', async () => {
    const { session } = await signUp();
    const other = await createWorkspace(testApp, `gone-${unique()}`);
    await queryAsAdmin(
      testApp,
      `insert into memberships (tenant_id, user_id, role) values ($1, $2, 'member')`,
      [other.tenantId, session.user.id],
    );
    const switched = bodyOf(
      await post('/auth/switch', { workspace: other.slug }, bearer(session.accessToken)),
    );
    await queryAsAdmin(testApp, 'delete from memberships where tenant_id = $1 and user_id = $2', [
      other.tenantId,
      session.user.id,
    ]);
    assertProblem(
      await post('/auth/refresh', { refreshToken: switched.refreshToken }),
      403,
      'APP_ERR_AUTH_NOT_A_MEMBER',
    );
    const live = await queryAsAdmin(
      testApp,
      'select 1 from auth.refresh_tokens where workspace_id = $1 and revoked_at is null',
      [other.tenantId],
    );
    assert.deepEqual(live, [], 'the family is revoked');
  });
});

test('the OpenAPI document lists the auth and workspace routes', async () => {
  const response = await testApp.app.inject({ method: 'GET', url: '/openapi.json' });
  assert.equal(response.statusCode, 200, response.body);
  const paths = Object.keys(bodyOf(response).paths);
  for (const path of [
    '/auth/signup',
    '/auth/login',
    '/auth/refresh',
    '/v1/me',
    '/v1/members/{userId}',
    '/t/{workspace}/v1/api-keys',
  ]) {
    assert.ok(paths.includes(path), path);
  }
});

describe('/v1/me', () => {
  test('returns the profile, the current workspace and all workspaces', async () => {
    const { input, session } = await signUp();
    const response = await testApp.app.inject({
      method: 'GET',
      url: '/v1/me',
      headers: bearer(session.accessToken),
    });
    assert.equal(response.statusCode, 200, response.body);
    assert.deepEqual(bodyOf(response), {
      user: { id: session.user.id, email: input.email, name: input.name },
      workspace: {
        id: session.workspace.id,
        slug: input.workspaceSlug,
        name: input.workspaceName,
        role: 'owner',
      },
      workspaces: [session.workspace],
    });
  });

  test('needs a credential', async () => {
    assertProblem(
      await testApp.app.inject({ method: 'GET', url: '/v1/me' }),
      401,
      'TENANTRY_ERR_AUTH_REQUIRED',
    );
  });
});

describe('seedDemo', () => {
  test('seeds once and is idempotent', async () => {
    const first = await seedDemo(testApp.tenantry, testApp.auth);
    const counts = async () =>
      queryAsAdmin(
        testApp,
        `select (select count(*)::int from contacts) as contacts,
                (select count(*)::int from tags) as tags,
                (select count(*)::int from conversations) as conversations,
                (select count(*)::int from messages) as messages,
                (select count(*)::int from message_templates) as templates,
                (select count(*)::int from auth.users where email = 'demo@tenantry.dev') as users,
                (select count(*)::int from tenantry.tenants where slug = 'demo') as workspaces`,
      );
    const before = await counts();
    assert.equal(before[0]?.workspaces, 1);
    assert.equal(before[0]?.users, 1);
    assert.ok(Number(before[0]?.contacts) >= 3);
    assert.ok(Number(before[0]?.messages) >= 3);
    assert.equal(before[0]?.templates, 1);
    const second = await seedDemo(testApp.tenantry, testApp.auth);
    assert.deepEqual(second, first);
    assert.deepEqual(await counts(), before);
    const login = await post('/auth/login', { email: first.email, password: first.password });
    assert.equal(login.statusCode, 200, login.body);
    assert.equal(bodyOf(login).workspace.slug, first.workspaceSlug);
  });
});

describe('external identity provider mode', () => {
  let server: Server;
  let external: Awaited<ReturnType<typeof buildApp>>;
  let database: Awaited<ReturnType<typeof createTestDatabase>>;
  let privateKey: CryptoKey;
  const issuer = 'https://idp.test/';
  const audience = 'tenantry-external-api';

  before(async () => {
    const pair = await generateKeyPair('RS256');
    privateKey = pair.privateKey;
    const jwk = { ...(await exportJWK(pair.publicKey)), kid: 'test-key', alg: 'RS256', use: 'sig' };
    server = createServer((_request, response) => {
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    database = await createTestDatabase();
    const tenantry = await createTenantry<AppDatabase>({ connectionString: database.appUrl });
    const directory = await createTenantDirectory({ connectionString: database.appUrl });
    external = await buildApp({
      tenantry,
      directory,
      auth: Object.freeze({
        mode: 'external' as const,
        jwksUrl: `http://127.0.0.1:${port}/jwks.json`,
        issuer,
        audience,
        tenantClaim: 'tenant_id',
        userClaim: 'sub',
        roleClaim: 'role',
        algorithms: ['RS256'],
      }),
      pendingMigrations: await createMigrationCheck({
        sources: [
          { name: 'app', directory: new URL('../app/migrations/', import.meta.url).pathname },
        ],
      }),
    });
    await external.ready();
  });

  after(async () => {
    await external.close();
    await database.drop();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  async function externalToken(claims: Record<string, unknown>, subject: string) {
    return new SignJWT(claims)
      .setProtectedHeader({ alg: 'RS256', kid: 'test-key' })
      .setSubject(subject)
      .setIssuer(issuer)
      .setAudience(audience)
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(privateKey);
  }

  test('tokens of the identity provider reach /v1/me and workspace routes', async () => {
    const workspace = await createWorkspace(
      { ...testApp, app: external, database } as TestApp,
      `idp-${unique()}`,
    );
    const token = await externalToken(
      { tenant_id: workspace.tenantId, role: 'admin', email: 'ignored@idp.test' },
      workspace.userId,
    );
    const me = await external.inject({ method: 'GET', url: '/v1/me', headers: bearer(token) });
    assert.equal(me.statusCode, 200, me.body);
    assert.equal(bodyOf(me).user.id, workspace.userId);
    assert.equal(bodyOf(me).user.email, workspace.email);
    assert.equal(bodyOf(me).workspace.id, workspace.tenantId);
    assert.equal(bodyOf(me).workspace.role, 'admin');
    const current = await external.inject({
      method: 'GET',
      url: `/t/${workspace.slug}/v1/workspace`,
      headers: bearer(token),
    });
    assert.equal(current.statusCode, 200, current.body);
    assert.equal(bodyOf(current).slug, workspace.slug);
    const members = await external.inject({
      method: 'GET',
      url: '/v1/members',
      headers: bearer(token),
    });
    assert.equal(members.statusCode, 200, members.body);
  });

  test('a user unknown to the database gets the profile from the claims', async () => {
    const workspace = await createWorkspace(
      { ...testApp, app: external, database } as TestApp,
      `idp-${unique()}`,
    );
    const subject = crypto.randomUUID();
    const token = await externalToken(
      { tenant_id: workspace.tenantId, role: 'member', email: 'new@idp.test', name: 'New Person' },
      subject,
    );
    const me = await external.inject({ method: 'GET', url: '/v1/me', headers: bearer(token) });
    assert.equal(me.statusCode, 200, me.body);
    assert.deepEqual(bodyOf(me).user, { id: subject, email: 'new@idp.test', name: 'New Person' });
    assert.deepEqual(bodyOf(me).workspaces, []);
  });

  test('a token signed with the local HMAC kind is refused', async () => {
    const workspace = await createWorkspace(
      { ...testApp, app: external, database } as TestApp,
      `idp-${unique()}`,
    );
    const forged = await signAccessToken(testApp.auth, {
      tenantId: workspace.tenantId,
      userId: workspace.userId,
      role: 'owner',
    });
    const response = await external.inject({
      method: 'GET',
      url: '/v1/me',
      headers: bearer(forged),
    });
    assert.equal(response.statusCode, 401, response.body);
  });

  test('local sign-in routes answer 404 APP_ERR_AUTH_EXTERNAL_MODE', async () => {
    const usersBefore = await queryAsAdmin<{ n: number }>(
      { ...testApp, database } as TestApp,
      'select count(*)::int as n from auth.users',
    );
    for (const [url, payload] of [
      ['/auth/login', { email: 'a@example.com', password: 'whatever password' }],
      ['/auth/signup', signupBody()],
      ['/auth/refresh', { refreshToken: 'x' }],
      ['/auth/logout', { refreshToken: 'x' }],
      ['/auth/invitations/accept', { nothing: true }],
      ['/auth/switch', { workspace: 'x' }],
    ] as const) {
      const response = await external.inject({ method: 'POST', url, payload });
      if (url === '/auth/switch') {
        assertProblem(response, 401, 'TENANTRY_ERR_AUTH_REQUIRED');
      } else {
        assertProblem(response, 404, 'APP_ERR_AUTH_EXTERNAL_MODE');
      }
    }
    const usersAfter = await queryAsAdmin<{ n: number }>(
      { ...testApp, database } as TestApp,
      'select count(*)::int as n from auth.users',
    );
    assert.deepEqual(usersAfter, usersBefore);
  });

  test('switch with a valid provider token also answers 404', async () => {
    const workspace = await createWorkspace(
      { ...testApp, app: external, database } as TestApp,
      `idp-${unique()}`,
    );
    const token = await externalToken(
      { tenant_id: workspace.tenantId, role: 'owner' },
      workspace.userId,
    );
    const response = await external.inject({
      method: 'POST',
      url: '/auth/switch',
      payload: { workspace: workspace.slug },
      headers: bearer(token),
    });
    assertProblem(response, 404, 'APP_ERR_AUTH_EXTERNAL_MODE');
  });
});

test('an account whose stored hash is not a scrypt hash never signs in', async () => {
  const workspace = await createWorkspace(testApp, `fx-${unique()}`);
  const member = await addMember(testApp, workspace, 'member');
  const refused = await post('/auth/login', { email: member.email, password: 'unusable' });
  assertProblem(refused, 401, 'APP_ERR_AUTH_CREDENTIALS_INVALID');
});
