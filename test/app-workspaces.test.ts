import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import {
  addMember,
  bodyOf,
  createTestApp,
  createWorkspace,
  queryAsAdmin,
  type TestApp,
  type TestWorkspace,
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

function request(
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE',
  url: string,
  headers: Readonly<Record<string, string>>,
  payload?: unknown,
) {
  return testApp.app.inject({
    method,
    url,
    headers,
    ...(payload === undefined ? {} : { payload: payload as object }),
  });
}

function assertProblem(response: LightMyRequestResponse, status: number, code: string) {
  assert.equal(response.statusCode, status, response.body);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
  assert.equal(bodyOf(response).code, code);
}

async function roleOf(workspace: TestWorkspace, userId: string) {
  const rows = await queryAsAdmin<{ role: string }>(
    testApp,
    'select role from memberships where tenant_id = $1 and user_id = $2',
    [workspace.tenantId, userId],
  );
  return rows[0]?.role;
}

async function invite(workspace: TestWorkspace, email: string, role = 'member') {
  const response = await request('POST', '/v1/invitations', workspace.headers, { email, role });
  assert.equal(response.statusCode, 201, response.body);
  return bodyOf(response);
}

describe('the current workspace', () => {
  test('is served at /v1 and /t/<slug>/v1 with the caller role', async () => {
    const owner = await createWorkspace(testApp, `cur-${unique()}`);
    for (const url of ['/v1/workspace', `/t/${owner.slug}/v1/workspace`]) {
      const response = await request('GET', url, owner.headers);
      assert.equal(response.statusCode, 200, response.body);
      assert.deepEqual(bodyOf(response), {
        id: owner.tenantId,
        slug: owner.slug,
        name: `Workspace ${owner.slug}`,
        plan: 'free',
        role: 'owner',
      });
    }
  });

  test('another workspace address with this token is a tenant mismatch', async () => {
    const a = await createWorkspace(testApp, `mis-a-${unique()}`);
    const b = await createWorkspace(testApp, `mis-b-${unique()}`);
    assertProblem(
      await request('GET', `/t/${b.slug}/v1/workspace`, a.headers),
      403,
      'TENANTRY_ERR_TENANT_MISMATCH',
    );
  });
});

describe('members', () => {
  test('are listed with their profile, page by page', async () => {
    const owner = await createWorkspace(testApp, `list-${unique()}`);
    const admin = await addMember(testApp, owner, 'admin');
    const member = await addMember(testApp, owner, 'member');
    const first = await request('GET', '/v1/members?limit=2', member.headers);
    assert.equal(first.statusCode, 200, first.body);
    assert.equal(bodyOf(first).items.length, 2);
    assert.ok(bodyOf(first).nextCursor);
    const second = await request(
      'GET',
      `/v1/members?limit=2&cursor=${bodyOf(first).nextCursor}`,
      member.headers,
    );
    assert.equal(bodyOf(second).nextCursor, null);
    const all = [...bodyOf(first).items, ...bodyOf(second).items];
    assert.deepEqual(
      all.map((m: { userId: string }) => m.userId).sort(),
      [owner.userId, admin.userId, member.userId].sort(),
    );
    const self = all.find((m: { userId: string }) => m.userId === admin.userId);
    assert.equal(self.email, admin.email);
    assert.equal(self.role, 'admin');
    assertProblem(
      await request('GET', '/v1/members?cursor=bm90LWEtY3Vyc29y', member.headers),
      400,
      'TENANTRY_ERR_HTTP_VALIDATION',
    );
  });

  test('a member is refused on every admin route', async () => {
    const owner = await createWorkspace(testApp, `deny-${unique()}`);
    const member = await addMember(testApp, owner, 'member');
    const calls: [string, string, unknown][] = [
      ['PATCH', `/v1/members/${owner.userId}`, { role: 'member' }],
      ['DELETE', `/v1/members/${owner.userId}`, undefined],
      ['POST', '/v1/invitations', { email: 'x@example.com', role: 'member' }],
      ['GET', '/v1/invitations', undefined],
      ['DELETE', `/v1/invitations/${crypto.randomUUID()}`, undefined],
      ['POST', '/v1/api-keys', { name: 'ci' }],
      ['GET', '/v1/api-keys', undefined],
      ['DELETE', `/v1/api-keys/${crypto.randomUUID()}`, undefined],
      ['POST', '/v1/workspace/webhook-secret', undefined],
    ];
    for (const [method, url, payload] of calls) {
      assertProblem(
        await request(method as 'GET', url, member.headers, payload),
        403,
        'TENANTRY_ERR_AUTH_FORBIDDEN',
      );
    }
    assert.equal(await roleOf(owner, owner.userId), 'owner');
    const stored = await queryAsAdmin(
      testApp,
      `select 1 from invitations where tenant_id = $1
       union all select 1 from tenantry.api_keys where tenant_id = $1
       union all select 1 from workspace_settings where tenant_id = $1`,
      [owner.tenantId],
    );
    assert.deepEqual(stored, []);
  });

  test('an admin cannot make owners or change owners; an owner can', async () => {
    const owner = await createWorkspace(testApp, `roles-${unique()}`);
    const admin = await addMember(testApp, owner, 'admin');
    const member = await addMember(testApp, owner, 'member');
    assertProblem(
      await request('PATCH', `/v1/members/${member.userId}`, admin.headers, { role: 'owner' }),
      403,
      'TENANTRY_ERR_AUTH_FORBIDDEN',
    );
    assertProblem(
      await request('PATCH', `/v1/members/${admin.userId}`, admin.headers, { role: 'owner' }),
      403,
      'TENANTRY_ERR_AUTH_FORBIDDEN',
    );
    assertProblem(
      await request('PATCH', `/v1/members/${owner.userId}`, admin.headers, { role: 'member' }),
      403,
      'TENANTRY_ERR_AUTH_FORBIDDEN',
    );
    assertProblem(
      await request('DELETE', `/v1/members/${owner.userId}`, admin.headers),
      403,
      'TENANTRY_ERR_AUTH_FORBIDDEN',
    );
    assert.equal(await roleOf(owner, member.userId), 'member');
    assert.equal(await roleOf(owner, owner.userId), 'owner');

    const promoted = await request('PATCH', `/v1/members/${member.userId}`, admin.headers, {
      role: 'admin',
    });
    assert.equal(promoted.statusCode, 200, promoted.body);
    assert.equal(bodyOf(promoted).role, 'admin');
    assert.equal(await roleOf(owner, member.userId), 'admin');

    const made = await request('PATCH', `/v1/members/${member.userId}`, owner.headers, {
      role: 'owner',
    });
    assert.equal(made.statusCode, 200, made.body);
    assert.equal(await roleOf(owner, member.userId), 'owner');
  });

  test('the last owner can be neither demoted nor removed', async () => {
    const owner = await createWorkspace(testApp, `last-${unique()}`);
    const admin = await addMember(testApp, owner, 'admin');
    assertProblem(
      await request('PATCH', `/v1/members/${owner.userId}`, owner.headers, { role: 'admin' }),
      409,
      'APP_ERR_LAST_OWNER',
    );
    assertProblem(
      await request('DELETE', `/v1/members/${owner.userId}`, owner.headers),
      409,
      'APP_ERR_LAST_OWNER',
    );
    assert.equal(await roleOf(owner, owner.userId), 'owner');

    await request('PATCH', `/v1/members/${admin.userId}`, owner.headers, { role: 'owner' });
    const stepDown = await request('PATCH', `/v1/members/${owner.userId}`, owner.headers, {
      role: 'member',
    });
    assert.equal(stepDown.statusCode, 200, stepDown.body);
    assert.equal(await roleOf(owner, owner.userId), 'member');
    assert.equal(await roleOf(owner, admin.userId), 'owner');
  });

  test('removing a member deletes the membership and revokes their refresh tokens', async () => {
    const owner = await createWorkspace(testApp, `rm-${unique()}`);
    const member = await addMember(testApp, owner, 'member');
    await queryAsAdmin(
      testApp,
      `insert into auth.refresh_tokens (token_hash, family_id, user_id, workspace_id, expires_at)
       values (sha256($1::text::bytea), gen_random_uuid(), $1::uuid, $2::uuid, now() + interval '1 hour')`,
      [member.userId, owner.tenantId],
    );
    const removed = await request('DELETE', `/v1/members/${member.userId}`, owner.headers);
    assert.equal(removed.statusCode, 204, removed.body);
    assert.equal(await roleOf(owner, member.userId), undefined);
    const live = await queryAsAdmin(
      testApp,
      'select 1 from auth.refresh_tokens where user_id = $1 and revoked_at is null',
      [member.userId],
    );
    assert.deepEqual(live, []);
    assertProblem(
      await request('DELETE', `/v1/members/${member.userId}`, owner.headers),
      404,
      'TENANTRY_ERR_HTTP_NOT_FOUND',
    );
  });

  test("another workspace's members cannot be read or changed by id", async () => {
    const a = await createWorkspace(testApp, `xa-${unique()}`);
    const b = await createWorkspace(testApp, `xb-${unique()}`);
    const bMember = await addMember(testApp, b, 'member');
    const missing = await request('PATCH', `/v1/members/${crypto.randomUUID()}`, a.headers, {
      role: 'admin',
    });
    assertProblem(missing, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
    const patched = await request('PATCH', `/v1/members/${bMember.userId}`, a.headers, {
      role: 'admin',
    });
    assertProblem(patched, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
    assert.equal(patched.body, missing.body, 'same answer as for a user that does not exist');
    assertProblem(
      await request('DELETE', `/v1/members/${b.userId}`, a.headers),
      404,
      'TENANTRY_ERR_HTTP_NOT_FOUND',
    );
    const listed = await request('GET', '/v1/members', a.headers);
    assert.deepEqual(
      bodyOf(listed).items.map((m: { userId: string }) => m.userId),
      [a.userId],
    );
    assert.equal(await roleOf(b, bMember.userId), 'member');
    assert.equal(await roleOf(b, b.userId), 'owner');
  });

  test('a tenant_id in a body is rejected and nothing changes', async () => {
    const owner = await createWorkspace(testApp, `mass-${unique()}`);
    const other = await createWorkspace(testApp, `mass-o-${unique()}`);
    const member = await addMember(testApp, owner, 'member');
    assertProblem(
      await request('PATCH', `/v1/members/${member.userId}`, owner.headers, {
        role: 'admin',
        tenant_id: other.tenantId,
      }),
      400,
      'TENANTRY_ERR_HTTP_VALIDATION',
    );
    assert.equal(await roleOf(owner, member.userId), 'member');
    for (const [url, payload] of [
      ['/v1/invitations', { email: 'm@example.com', role: 'member', tenant_id: other.tenantId }],
      ['/v1/api-keys', { name: 'k', tenant_id: other.tenantId }],
    ] as const) {
      assertProblem(
        await request('POST', url, owner.headers, payload),
        400,
        'TENANTRY_ERR_HTTP_VALIDATION',
      );
    }
    const stored = await queryAsAdmin(
      testApp,
      `select 1 from invitations where tenant_id = any($1::uuid[])
       union all select 1 from tenantry.api_keys where tenant_id = any($1::uuid[])`,
      [[owner.tenantId, other.tenantId]],
    );
    assert.deepEqual(stored, []);
  });
});

describe('invitations', () => {
  test('a new user accepts, gets the invited role and a session; the token is single-use', async () => {
    const owner = await createWorkspace(testApp, `inv-${unique()}`);
    const email = `new-${unique()}@example.com`;
    const created = await invite(owner, email, 'admin');
    assert.equal(created.status, 'pending');
    assert.equal(created.role, 'admin');
    assert.match(created.token, /^[\w-]{43}$/);
    const [stored] = await queryAsAdmin<{ token_hash: Buffer }>(
      testApp,
      'select token_hash from invitations where id = $1',
      [created.id],
    );
    assert.equal(stored?.token_hash.length, 32);
    assert.ok(!stored?.token_hash.toString('latin1').includes(created.token));

    const listed = await request('GET', '/v1/invitations', owner.headers);
    assert.equal(listed.statusCode, 200, listed.body);
    assert.equal(bodyOf(listed).items.length, 1);
    assert.equal(bodyOf(listed).items[0].token, undefined);
    assert.ok(!listed.body.includes(created.token));

    const accept = {
      workspace: owner.slug,
      token: created.token,
      email: email.toUpperCase(),
      password: 'new user password',
      name: 'New Person',
    };
    const accepted = await request('POST', '/auth/invitations/accept', {}, accept);
    assert.equal(accepted.statusCode, 200, accepted.body);
    const session = bodyOf(accepted);
    assert.equal(session.workspace.id, owner.tenantId);
    assert.equal(session.workspace.role, 'admin');
    assert.equal(session.user.name, 'New Person');
    assert.equal(await roleOf(owner, session.user.id), 'admin');
    const me = await request('GET', '/v1/workspace', {
      authorization: `Bearer ${session.accessToken}`,
    });
    assert.equal(bodyOf(me).role, 'admin');
    const [row] = await queryAsAdmin<{ accepted_at: Date | null }>(
      testApp,
      'select accepted_at from invitations where id = $1',
      [created.id],
    );
    assert.ok(row?.accepted_at instanceof Date);

    const again = await request('POST', '/auth/invitations/accept', {}, accept);
    assertProblem(again, 404, 'APP_ERR_INVITATION_INVALID');
    const login = await request(
      'POST',
      '/auth/login',
      {},
      {
        email,
        password: 'new user password',
      },
    );
    assert.equal(login.statusCode, 200, login.body);
  });

  test('an existing user accepts with their password, not with a wrong one', async () => {
    const owner = await createWorkspace(testApp, `inv2-${unique()}`);
    const signup = await request(
      'POST',
      '/auth/signup',
      {},
      {
        email: `existing-${unique()}@example.com`,
        password: 'existing password',
        name: 'Existing',
        workspaceName: 'Theirs',
        workspaceSlug: `theirs-${unique()}`,
      },
    );
    const existing = bodyOf(signup);
    const created = await invite(owner, existing.user.email);
    const base = { workspace: owner.slug, token: created.token, email: existing.user.email };
    assertProblem(
      await request(
        'POST',
        '/auth/invitations/accept',
        {},
        { ...base, password: 'not my password' },
      ),
      401,
      'APP_ERR_AUTH_CREDENTIALS_INVALID',
    );
    assert.equal(await roleOf(owner, existing.user.id), undefined);
    const accepted = await request(
      'POST',
      '/auth/invitations/accept',
      {},
      {
        ...base,
        password: 'existing password',
      },
    );
    assert.equal(accepted.statusCode, 200, accepted.body);
    assert.equal(bodyOf(accepted).workspace.id, owner.tenantId);
    assert.equal(bodyOf(accepted).workspaces.length, 2);
    assert.equal(await roleOf(owner, existing.user.id), 'member');
    const [user] = await queryAsAdmin<{ name: string }>(
      testApp,
      'select name from auth.users where id = $1',
      [existing.user.id],
    );
    assert.equal(user?.name, 'Existing');
  });

  test('expired, withdrawn, misaddressed and other-workspace tokens are refused', async () => {
    const a = await createWorkspace(testApp, `inv-a-${unique()}`);
    const b = await createWorkspace(testApp, `inv-b-${unique()}`);
    const usersBefore = await queryAsAdmin(testApp, 'select count(*)::int as n from auth.users');
    const accept = (workspace: string, token: string, email: string) =>
      request(
        'POST',
        '/auth/invitations/accept',
        {},
        {
          workspace,
          token,
          email,
          password: 'some new password',
        },
      );

    const expiredEmail = `exp-${unique()}@example.com`;
    const expired = await invite(a, expiredEmail);
    await queryAsAdmin(
      testApp,
      `update invitations set expires_at = now() - interval '1 second' where id = $1`,
      [expired.id],
    );
    assertProblem(
      await accept(a.slug, expired.token, expiredEmail),
      404,
      'APP_ERR_INVITATION_INVALID',
    );

    const otherEmail = `other-${unique()}@example.com`;
    const forA = await invite(a, otherEmail);
    assertProblem(await accept(b.slug, forA.token, otherEmail), 404, 'APP_ERR_INVITATION_INVALID');
    assertProblem(
      await accept(a.slug, forA.token, `someone-else-${unique()}@example.com`),
      404,
      'APP_ERR_INVITATION_INVALID',
    );
    assertProblem(
      await accept(`missing-${unique()}`, forA.token, otherEmail),
      404,
      'APP_ERR_INVITATION_INVALID',
    );
    assertProblem(
      await accept(a.slug, 'z'.repeat(43), otherEmail),
      404,
      'APP_ERR_INVITATION_INVALID',
    );

    const withdrawn = await request('DELETE', `/v1/invitations/${forA.id}`, a.headers);
    assert.equal(withdrawn.statusCode, 204, withdrawn.body);
    assertProblem(await accept(a.slug, forA.token, otherEmail), 404, 'APP_ERR_INVITATION_INVALID');

    const usersAfter = await queryAsAdmin(testApp, 'select count(*)::int as n from auth.users');
    assert.deepEqual(usersAfter, usersBefore);
    const memberships = await queryAsAdmin(
      testApp,
      'select user_id from memberships where tenant_id = any($1::uuid[])',
      [[a.tenantId, b.tenantId]],
    );
    assert.equal(memberships.length, 2);
  });

  test("another workspace's invitations are neither listed nor deletable", async () => {
    const a = await createWorkspace(testApp, `inv-x-${unique()}`);
    const b = await createWorkspace(testApp, `inv-y-${unique()}`);
    const bInvitation = await invite(b, `b-${unique()}@example.com`);
    const listed = await request('GET', '/v1/invitations', a.headers);
    assert.deepEqual(bodyOf(listed).items, []);
    const missing = await request('DELETE', `/v1/invitations/${crypto.randomUUID()}`, a.headers);
    const foreign = await request('DELETE', `/v1/invitations/${bInvitation.id}`, a.headers);
    assertProblem(foreign, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
    assert.equal(foreign.body, missing.body);
    const still = await queryAsAdmin(testApp, 'select id from invitations where id = $1', [
      bInvitation.id,
    ]);
    assert.equal(still.length, 1);
  });

  test('a member cannot invite and an invitation cannot grant ownership', async () => {
    const owner = await createWorkspace(testApp, `inv-r-${unique()}`);
    assertProblem(
      await request('POST', '/v1/invitations', owner.headers, {
        email: 'o@example.com',
        role: 'owner',
      }),
      400,
      'TENANTRY_ERR_HTTP_VALIDATION',
    );
  });
});

describe('API keys', () => {
  test('create, use, list without secrets, revoke', async () => {
    const owner = await createWorkspace(testApp, `keys-${unique()}`);
    const created = await request('POST', '/v1/api-keys', owner.headers, {
      name: 'CI',
      scopes: ['contacts:read'],
    });
    assert.equal(created.statusCode, 201, created.body);
    const key = bodyOf(created);
    assert.match(key.key, /^tk_[a-z0-9]{12}_[\w-]{43}$/);
    assert.equal(key.createdBy, owner.userId);
    assert.deepEqual(key.scopes, ['contacts:read']);

    const used = await request('GET', '/v1/workspace', { 'x-api-key': key.key });
    assert.equal(used.statusCode, 200, used.body);
    assert.equal(bodyOf(used).id, owner.tenantId);
    assert.equal(bodyOf(used).role, null);

    const listed = await request('GET', '/v1/api-keys', owner.headers);
    assert.equal(listed.statusCode, 200, listed.body);
    assert.equal(bodyOf(listed).items.length, 1);
    assert.equal(bodyOf(listed).items[0].key, undefined);
    assert.ok(!listed.body.includes(key.key.slice('tk_'.length + 13)));

    assertProblem(
      await request('GET', '/v1/members', { 'x-api-key': key.key }),
      403,
      'TENANTRY_ERR_AUTH_INSUFFICIENT_SCOPE',
    );
    assertProblem(
      await request('POST', '/v1/api-keys', { 'x-api-key': key.key }, { name: 'escalate' }),
      403,
      'TENANTRY_ERR_AUTH_FORBIDDEN',
    );

    const revoked = await request('DELETE', `/v1/api-keys/${key.id}`, owner.headers);
    assert.equal(revoked.statusCode, 204, revoked.body);
    assertProblem(
      await request('GET', '/v1/workspace', { 'x-api-key': key.key }),
      401,
      'TENANTRY_ERR_AUTH_API_KEY_REVOKED',
    );
    assertProblem(
      await request('DELETE', `/v1/api-keys/${key.id}`, owner.headers),
      404,
      'TENANTRY_ERR_HTTP_NOT_FOUND',
    );
  });

  test('an expiry in the past is refused', async () => {
    const owner = await createWorkspace(testApp, `keys-e-${unique()}`);
    assertProblem(
      await request('POST', '/v1/api-keys', owner.headers, {
        name: 'old',
        expiresAt: '2001-01-01T00:00:00Z',
      }),
      400,
      'TENANTRY_ERR_HTTP_VALIDATION',
    );
  });

  test("a key of workspace A is refused at B's address", async () => {
    const a = await createWorkspace(testApp, `keys-a-${unique()}`);
    const b = await createWorkspace(testApp, `keys-b-${unique()}`);
    const key = bodyOf(await request('POST', '/v1/api-keys', a.headers, { name: 'a' }));
    assertProblem(
      await request('GET', `/t/${b.slug}/v1/workspace`, { 'x-api-key': key.key }),
      403,
      'TENANTRY_ERR_TENANT_MISMATCH',
    );
  });

  test("another workspace's keys are neither listed nor revocable", async () => {
    const a = await createWorkspace(testApp, `keys-x-${unique()}`);
    const b = await createWorkspace(testApp, `keys-y-${unique()}`);
    const bKey = bodyOf(await request('POST', '/v1/api-keys', b.headers, { name: 'b' }));
    assert.deepEqual(bodyOf(await request('GET', '/v1/api-keys', a.headers)).items, []);
    const foreign = await request('DELETE', `/v1/api-keys/${bKey.id}`, a.headers);
    const missing = await request('DELETE', `/v1/api-keys/${crypto.randomUUID()}`, a.headers);
    assertProblem(foreign, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
    assert.equal(foreign.body, missing.body);
    const [row] = await queryAsAdmin<{ revoked_at: Date | null }>(
      testApp,
      'select revoked_at from tenantry.api_keys where id = $1',
      [bKey.id],
    );
    assert.equal(row?.revoked_at, null);
    const works = await request('GET', '/v1/workspace', { 'x-api-key': bKey.key });
    assert.equal(works.statusCode, 200, works.body);
  });
});

describe('inbound webhook secret', () => {
  test('rotation stores a new secret and shows it once', async () => {
    const owner = await createWorkspace(testApp, `hook-${unique()}`);
    const admin = await addMember(testApp, owner, 'admin');
    const first = await request('POST', '/v1/workspace/webhook-secret', owner.headers);
    assert.equal(first.statusCode, 200, first.body);
    const secret = bodyOf(first).inboundWebhookSecret;
    assert.match(secret, /^[0-9a-f]{64}$/);
    const second = await request(
      'POST',
      `/t/${owner.slug}/v1/workspace/webhook-secret`,
      admin.headers,
    );
    const rotated = bodyOf(second).inboundWebhookSecret;
    assert.notEqual(rotated, secret);
    const rows = await queryAsAdmin(
      testApp,
      'select inbound_webhook_secret from workspace_settings where tenant_id = $1',
      [owner.tenantId],
    );
    assert.deepEqual(rows, [{ inbound_webhook_secret: rotated }]);
  });
});
