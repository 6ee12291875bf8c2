import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { createApiKey } from 'tenantry';
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
let a: TestWorkspace;
let b: TestWorkspace;
let memberA: TestWorkspace;
let adminA: TestWorkspace;

before(async () => {
  testApp = await createTestApp();
  a = await createWorkspace(testApp, 'crm-a');
  b = await createWorkspace(testApp, 'crm-b');
  memberA = await addMember(testApp, a, 'member');
  adminA = await addMember(testApp, a, 'admin');
});

after(async () => {
  await testApp?.close();
});

interface Call {
  readonly body?: unknown;
  readonly headers?: Record<string, string>;
}

function call(
  as: TestWorkspace,
  method: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE',
  url: string,
  options: Call = {},
): Promise<LightMyRequestResponse> {
  return testApp.app.inject({
    method,
    url,
    headers: { ...as.headers, ...options.headers },
    ...(options.body === undefined ? {} : { payload: options.body as object }),
  });
}

async function count(table: string, workspace: TestWorkspace): Promise<number> {
  const rows = await queryAsAdmin<{ n: number }>(
    testApp,
    `select count(*)::int as n from ${table} where tenant_id = $1`,
    [workspace.tenantId],
  );
  return rows[0]?.n ?? -1;
}

async function contactRow(id: string): Promise<Record<string, unknown> | undefined> {
  const rows = await queryAsAdmin(testApp, 'select * from contacts where id = $1', [id]);
  return rows[0];
}

async function linkedTags(contactId: string): Promise<string[]> {
  const rows = await queryAsAdmin<{ tag_id: string }>(
    testApp,
    'select tag_id from contact_tags where contact_id = $1 order by tag_id',
    [contactId],
  );
  return rows.map((row) => row.tag_id);
}

let phoneCounter = 0;
function newPhone(): string {
  phoneCounter += 1;
  return `+5511${String(900000000 + phoneCounter)}`;
}

async function createContact(as: TestWorkspace, body: Record<string, unknown> = {}) {
  const response = await call(as, 'POST', '/v1/contacts', {
    body: { name: 'Someone', phone: newPhone(), ...body },
  });
  assert.equal(response.statusCode, 201, response.body);
  return { body: bodyOf(response), etag: response.headers.etag as string };
}

async function createTag(as: TestWorkspace, name: string): Promise<string> {
  const response = await call(as, 'POST', '/v1/tags', { body: { name } });
  assert.equal(response.statusCode, 201, response.body);
  return bodyOf(response).id;
}

interface Problem {
  readonly code: string;
  readonly detail: string;
  readonly field?: string;
  readonly errors?: readonly { readonly pointer: string; readonly message: string }[];
}

interface Item {
  readonly id: string;
  readonly [field: string]: unknown;
}

function assertProblem(response: LightMyRequestResponse, status: number, code: string): Problem {
  assert.equal(response.statusCode, status, response.body);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
  const body = bodyOf<Problem>(response);
  assert.equal(body.code, code);
  return body;
}

describe('creating and reading contacts', () => {
  test('creates a contact with attributes and tags, answers camelCase with an ETag, and GET returns the same', async () => {
    const vip = await createTag(a, 'vip');
    const phone = newPhone();
    const response = await call(a, 'POST', '/v1/contacts', {
      body: {
        name: 'Ada Lovelace',
        phone,
        email: 'Ada@Example.com',
        attributes: { plan: 'gold', seats: 10, trial: false, code: '10', flag: 'true' },
        tagIds: [vip],
      },
    });
    assert.equal(response.statusCode, 201, response.body);
    const contact = bodyOf(response);
    assert.deepEqual(Object.keys(contact).sort(), [
      'attributes',
      'createdAt',
      'email',
      'id',
      'name',
      'phone',
      'tags',
      'updatedAt',
      'version',
    ]);
    assert.equal(contact.name, 'Ada Lovelace');
    assert.equal(contact.phone, phone);
    assert.equal(contact.email, 'Ada@Example.com');
    assert.deepEqual(contact.attributes, {
      plan: 'gold',
      seats: 10,
      trial: false,
      code: '10',
      flag: 'true',
    });
    assert.deepEqual(contact.tags, [{ id: vip, name: 'vip' }]);
    assert.equal(contact.version, 1);
    assert.equal(response.headers.etag, `W/"${contact.id}.1"`);

    const read = await call(a, 'GET', `/v1/contacts/${contact.id}`);
    assert.equal(read.statusCode, 200);
    assert.deepEqual(bodyOf(read), contact);
    assert.equal(read.headers.etag, response.headers.etag);

    const stored = await contactRow(contact.id);
    assert.equal(stored?.tenant_id, a.tenantId);
    assert.deepEqual(await linkedTags(contact.id), [vip]);
  });

  test('a member may create, read and update contacts', async () => {
    const { body, etag } = await createContact(memberA, { name: 'By member' });
    const read = await call(memberA, 'GET', `/v1/contacts/${body.id}`);
    assert.equal(read.statusCode, 200);
    const patched = await call(memberA, 'PATCH', `/v1/contacts/${body.id}`, {
      body: { name: 'Renamed by member' },
      headers: { 'if-match': etag },
    });
    assert.equal(patched.statusCode, 200, patched.body);
  });

  test('invalid bodies are 400 problem+json TENANTRY_ERR_HTTP_VALIDATION and store nothing', async () => {
    const tooMany = Object.fromEntries(Array.from({ length: 51 }, (_, i) => [`k${i}`, i]));
    const cases: [string, unknown][] = [
      ['missing name', { phone: newPhone() }],
      ['empty name', { name: '' }],
      ['name too long', { name: 'x'.repeat(201) }],
      ['phone without +', { name: 'X', phone: '5511999990000' }],
      ['phone too short', { name: 'X', phone: '+12345' }],
      ['phone starting with 0', { name: 'X', phone: '+0551199999000' }],
      ['email malformed', { name: 'X', email: 'not-an-email' }],
      ['attributes key with a dash', { name: 'X', attributes: { 'bad-key': 1 } }],
      ['attributes key too long', { name: 'X', attributes: { ['k'.repeat(65)]: 1 } }],
      ['attributes nested object', { name: 'X', attributes: { nested: { a: 1 } } }],
      ['attributes with 51 keys', { name: 'X', attributes: tooMany }],
      ['attributes not an object', { name: 'X', attributes: 'plan=gold' }],
      ['attributes null value', { name: 'X', attributes: { plan: null } }],
      ['attributes array value', { name: 'X', attributes: { plan: ['gold'] } }],
      ['attributes value too long', { name: 'X', attributes: { note: 'x'.repeat(1001) } }],
      ['tagIds not uuids', { name: 'X', tagIds: ['vip'] }],
      [
        'tagIds repeated',
        { name: 'X', tagIds: [randomUUID(), randomUUID()].flatMap((id) => [id, id]) },
      ],
      ['mass assignment: tenant_id', { name: 'X', tenant_id: b.tenantId }],
      ['mass assignment: tenantId', { name: 'X', tenantId: b.tenantId }],
      ['mass assignment: id', { name: 'X', id: randomUUID() }],
      ['mass assignment: version', { name: 'X', version: 7 }],
      ['mass assignment: createdAt', { name: 'X', createdAt: '2020-01-01T00:00:00Z' }],
    ];
    const before = await count('contacts', a);
    const beforeB = await count('contacts', b);
    for (const [label, body] of cases) {
      const response = await call(a, 'POST', '/v1/contacts', { body });
      const problem = assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
      assert.ok(Array.isArray(problem.errors) && problem.errors.length > 0, label);
    }
    assert.equal(await count('contacts', a), before);
    assert.equal(await count('contacts', b), beforeB);
  });

  test('a phone or email already used in the workspace is 409 naming the field; another workspace may reuse them', async () => {
    const phone = newPhone();
    await createContact(a, { phone, email: 'dup@example.com' });
    const before = await count('contacts', a);

    const samePhone = await call(a, 'POST', '/v1/contacts', { body: { name: 'Twin', phone } });
    const phoneProblem = assertProblem(samePhone, 409, 'TENANTRY_ERR_DB_CONFLICT');
    assert.equal(phoneProblem.field, 'phone');
    assert.deepEqual(phoneProblem.errors, [
      { pointer: '/body/phone', message: 'is already used by another contact' },
    ]);

    const sameEmail = await call(a, 'POST', '/v1/contacts', {
      body: { name: 'Twin', email: 'DUP@example.COM' },
    });
    assert.equal(assertProblem(sameEmail, 409, 'TENANTRY_ERR_DB_CONFLICT').field, 'email');
    assert.equal(await count('contacts', a), before);

    await createContact(b, { phone, email: 'dup@example.com' });
  });

  test('tagIds naming another workspace’s tag or an unknown tag are refused and nothing is stored', async () => {
    const tagOfB = await createTag(b, 'b-only');
    const mine = await createTag(a, 'mine-for-refusal');
    const before = await count('contacts', a);
    const linksBefore = await count('contact_tags', a);
    for (const foreign of [tagOfB, randomUUID()]) {
      const response = await call(a, 'POST', '/v1/contacts', {
        body: { name: 'Sneaky', phone: newPhone(), tagIds: [mine, foreign] },
      });
      const problem = assertProblem(response, 422, 'TENANTRY_ERR_DB_INVALID_REFERENCE');
      assert.deepEqual(problem.errors, [
        { pointer: '/body/tagIds/1', message: 'is not a tag of this workspace' },
      ]);
    }
    assert.equal(await count('contacts', a), before);
    assert.equal(await count('contact_tags', a), linksBefore);
    const linkedToB = await queryAsAdmin(testApp, 'select 1 from contact_tags where tag_id = $1', [
      tagOfB,
    ]);
    assert.equal(linkedToB.length, 0);
  });

  test('a malformed id in the path is a 400 validation error on every contact route', async () => {
    const tag = await createTag(a, 'for-malformed');
    const contact = (await createContact(a)).body;
    const requests: [string, 'GET' | 'PATCH' | 'DELETE' | 'PUT', string][] = [
      ['read', 'GET', '/v1/contacts/not-a-uuid'],
      ['update', 'PATCH', '/v1/contacts/not-a-uuid'],
      ['delete', 'DELETE', '/v1/contacts/not-a-uuid'],
      ['tag', 'PUT', `/v1/contacts/not-a-uuid/tags/${tag}`],
      ['tag with bad tag id', 'PUT', `/v1/contacts/${contact.id}/tags/nope`],
      ['untag', 'DELETE', `/v1/contacts/${contact.id}/tags/nope`],
    ];
    for (const [label, method, url] of requests) {
      const response = await call(a, method, url, {
        body: method === 'PATCH' ? { name: 'x' } : undefined,
        headers: method === 'PATCH' ? { 'if-match': 'W/"x.1"' } : {},
      });
      assert.equal(response.statusCode, 400, `${label}: ${response.body}`);
      assert.equal(bodyOf(response).code, 'TENANTRY_ERR_HTTP_VALIDATION', label);
    }
  });
});

describe('tenant isolation of contacts', () => {
  test('A cannot read, update, delete or (un)tag B’s contact: the 404 equals a random id’s and B’s row is unchanged', async () => {
    const tagOfB = await createTag(b, 'b-vip');
    const { body: contactOfB, etag: etagOfB } = await createContact(b, {
      name: 'B secret',
      email: 'secret@b.test',
      tagIds: [tagOfB],
    });
    const tagOfA = await createTag(a, 'a-tag-for-isolation');
    const rowBefore = await contactRow(contactOfB.id);
    const linksBefore = await linkedTags(contactOfB.id);
    const randomId = randomUUID();

    const attempts: [string, 'GET' | 'PATCH' | 'DELETE' | 'PUT', (id: string) => string][] = [
      ['read', 'GET', (id) => `/v1/contacts/${id}`],
      ['update', 'PATCH', (id) => `/v1/contacts/${id}`],
      ['delete', 'DELETE', (id) => `/v1/contacts/${id}`],
      ['tag', 'PUT', (id) => `/v1/contacts/${id}/tags/${tagOfA}`],
      ['untag', 'DELETE', (id) => `/v1/contacts/${id}/tags/${tagOfA}`],
      ['untag B’s own tag', 'DELETE', (id) => `/v1/contacts/${id}/tags/${tagOfB}`],
    ];
    for (const [label, method, url] of attempts) {
      const send = (id: string) =>
        call(a, method, url(id), {
          body: method === 'PATCH' ? { name: 'Pwned', email: 'pwned@a.test' } : undefined,
          headers:
            method === 'PATCH'
              ? { 'if-match': id === contactOfB.id ? etagOfB : `W/"${id}.1"` }
              : {},
        });
      const foreign = await send(contactOfB.id);
      const missing = await send(randomId);
      assertProblem(foreign, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
      assert.deepEqual(bodyOf(foreign), bodyOf(missing), label);
      assert.equal(foreign.headers.etag, undefined, label);
    }
    assert.deepEqual(await contactRow(contactOfB.id), rowBefore);
    assert.deepEqual(await linkedTags(contactOfB.id), linksBefore);

    const asB = await call(b, 'GET', `/v1/contacts/${contactOfB.id}`);
    assert.equal(asB.statusCode, 200);
  });

  test('A cannot put B’s tag on its own contact: 404 like an unknown tag, nothing linked', async () => {
    const tagOfB = await createTag(b, 'b-tag-for-link');
    const { body: contact } = await createContact(a);
    for (const method of ['PUT', 'DELETE'] as const) {
      const foreign = await call(a, method, `/v1/contacts/${contact.id}/tags/${tagOfB}`);
      const unknown = await call(a, method, `/v1/contacts/${contact.id}/tags/${randomUUID()}`);
      assert.deepEqual(bodyOf(foreign), bodyOf(unknown));
      assert.equal(
        assertProblem(foreign, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND').detail,
        'Tag not found.',
      );
    }
    assert.deepEqual(await linkedTags(contact.id), []);
    const anyLink = await queryAsAdmin(testApp, 'select 1 from contact_tags where tag_id = $1', [
      tagOfB,
    ]);
    assert.equal(anyLink.length, 0);
  });

  test('lists never show another workspace’s contacts, even filtered by its tag, phone or email', async () => {
    const tagOfB = await createTag(b, 'b-list-tag');
    const phone = newPhone();
    const { body: contactOfB } = await createContact(b, {
      phone,
      email: 'listed@b.test',
      tagIds: [tagOfB],
    });
    const all = await walk(a, '/v1/contacts?limit=100');
    assert.ok(!all.some((contact) => contact.id === contactOfB.id));
    for (const filter of [
      `tagId=${tagOfB}`,
      `phone=${encodeURIComponent(phone)}`,
      'email=listed@b.test',
    ]) {
      const response = await call(a, 'GET', `/v1/contacts?${filter}`);
      assert.equal(response.statusCode, 200);
      assert.deepEqual(bodyOf(response).items, [], filter);
    }
  });

  test('the /t/<slug>/v1 prefix serves a matching token and refuses another workspace’s token', async () => {
    const { body: contact } = await createContact(a, { name: 'Via path' });
    const ok = await call(a, 'GET', `/t/${a.slug}/v1/contacts/${contact.id}`);
    assert.equal(ok.statusCode, 200);
    assert.equal(bodyOf(ok).id, contact.id);

    const created = await call(a, 'POST', `/t/${a.slug}/v1/contacts`, {
      body: { name: 'Created via path', phone: newPhone() },
    });
    assert.equal(created.statusCode, 201, created.body);
    assert.equal((await contactRow(bodyOf(created).id))?.tenant_id, a.tenantId);

    const mismatch = await call(b, 'GET', `/t/${a.slug}/v1/contacts/${contact.id}`);
    assertProblem(mismatch, 403, 'TENANTRY_ERR_TENANT_MISMATCH');

    const beforeA = await count('contacts', a);
    const beforeB = await count('contacts', b);
    const write = await call(b, 'POST', `/t/${a.slug}/v1/contacts`, {
      body: { name: 'Wrong door', phone: newPhone() },
    });
    assertProblem(write, 403, 'TENANTRY_ERR_TENANT_MISMATCH');
    const erase = await call(b, 'DELETE', `/t/${a.slug}/v1/contacts/${contact.id}`);
    assertProblem(erase, 403, 'TENANTRY_ERR_TENANT_MISMATCH');
    assert.equal(await count('contacts', a), beforeA);
    assert.equal(await count('contacts', b), beforeB);
  });
});

describe('API key scopes', () => {
  test('a key limited to contacts:read lists contacts but may not write them or read templates', async () => {
    const { body: contact } = await createContact(a, { name: 'Scoped read' });
    const created = await testApp.tenantry.withTenant(a.tenantId, (db) =>
      createApiKey(db, { name: 'read only', scopes: ['contacts:read'] }),
    );
    const send = (method: 'GET' | 'POST' | 'DELETE', url: string, body?: object) =>
      testApp.app.inject({
        method,
        url,
        headers: { 'x-api-key': created.key },
        ...(body === undefined ? {} : { payload: body }),
      });
    const read = await send('GET', `/v1/contacts/${contact.id}`);
    assert.equal(read.statusCode, 200, read.body);
    const before = await count('contacts', a);
    const write = await send('POST', '/v1/contacts', { name: 'Scoped write' });
    assertProblem(write, 403, 'TENANTRY_ERR_AUTH_INSUFFICIENT_SCOPE');
    assert.equal(await count('contacts', a), before);
    assertProblem(await send('GET', '/v1/templates'), 403, 'TENANTRY_ERR_AUTH_INSUFFICIENT_SCOPE');
    assertProblem(
      await send('DELETE', `/v1/contacts/${contact.id}`),
      403,
      'TENANTRY_ERR_AUTH_INSUFFICIENT_SCOPE',
    );
    assert.ok(await contactRow(contact.id));
  });
});

describe('updating contacts with If-Match', () => {
  test('428 without If-Match, 412 when stale or naming another row; success increments the version and returns the new ETag', async () => {
    const { body: contact, etag } = await createContact(a, { name: 'Versioned' });
    const url = `/v1/contacts/${contact.id}`;

    const missing = await call(a, 'PATCH', url, { body: { name: 'No header' } });
    assertProblem(missing, 428, 'TENANTRY_ERR_HTTP_PRECONDITION_REQUIRED');

    const other = (await createContact(a)).etag;
    const wrongRow = await call(a, 'PATCH', url, {
      body: { name: 'Other row' },
      headers: { 'if-match': other },
    });
    assertProblem(wrongRow, 412, 'TENANTRY_ERR_HTTP_PRECONDITION_FAILED');

    const ok = await call(a, 'PATCH', url, {
      body: { name: 'Versioned 2', attributes: { tier: 'b' }, email: 'v2@example.com' },
      headers: { 'if-match': etag },
    });
    assert.equal(ok.statusCode, 200, ok.body);
    const updated = bodyOf(ok);
    assert.equal(updated.version, 2);
    assert.equal(updated.name, 'Versioned 2');
    assert.deepEqual(updated.attributes, { tier: 'b' });
    assert.equal(ok.headers.etag, `W/"${contact.id}.2"`);
    assert.ok(Date.parse(updated.updatedAt) >= Date.parse(contact.updatedAt));

    const stale = await call(a, 'PATCH', url, {
      body: { name: 'Stale write' },
      headers: { 'if-match': etag },
    });
    assertProblem(stale, 412, 'TENANTRY_ERR_HTTP_PRECONDITION_FAILED');
    const row = await contactRow(contact.id);
    assert.equal(row?.name, 'Versioned 2');
    assert.equal(row?.version, 2);

    const cleared = await call(a, 'PATCH', url, {
      body: { phone: null, email: null },
      headers: { 'if-match': ok.headers.etag as string },
    });
    assert.equal(cleared.statusCode, 200, cleared.body);
    assert.equal(bodyOf(cleared).phone, null);
    assert.equal(bodyOf(cleared).email, null);
    assert.equal(bodyOf(cleared).version, 3);
  });

  test('PATCH refuses mass assignment and empty bodies with 400, leaving the row unchanged', async () => {
    const { body: contact, etag } = await createContact(a);
    const before = await contactRow(contact.id);
    for (const body of [
      { tenant_id: b.tenantId },
      { id: randomUUID() },
      { version: 99 },
      { name: 'ok', version: 99 },
      { updatedAt: '2020-01-01T00:00:00Z' },
      { tagIds: [] },
      {},
    ]) {
      const response = await call(a, 'PATCH', `/v1/contacts/${contact.id}`, {
        body,
        headers: { 'if-match': etag },
      });
      assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    }
    assert.deepEqual(await contactRow(contact.id), before);
  });

  test('PATCH to a phone another contact has is 409 naming the field, and nothing changes', async () => {
    const phone = newPhone();
    await createContact(a, { phone });
    const { body: contact, etag } = await createContact(a);
    const before = await contactRow(contact.id);
    const response = await call(a, 'PATCH', `/v1/contacts/${contact.id}`, {
      body: { phone },
      headers: { 'if-match': etag },
    });
    assert.equal(assertProblem(response, 409, 'TENANTRY_ERR_DB_CONFLICT').field, 'phone');
    assert.deepEqual(await contactRow(contact.id), before);
  });
});

describe('deleting contacts and tag links', () => {
  test('a member is refused (403); an admin deletes (204) and the tag links go with the contact', async () => {
    const tag = await createTag(a, 'to-cascade');
    const { body: contact } = await createContact(a, { tagIds: [tag] });
    const refused = await call(memberA, 'DELETE', `/v1/contacts/${contact.id}`);
    assertProblem(refused, 403, 'TENANTRY_ERR_AUTH_FORBIDDEN');
    assert.ok(await contactRow(contact.id));

    const deleted = await call(adminA, 'DELETE', `/v1/contacts/${contact.id}`);
    assert.equal(deleted.statusCode, 204);
    assert.equal(deleted.body, '');
    assert.equal(await contactRow(contact.id), undefined);
    assert.deepEqual(await linkedTags(contact.id), []);

    const again = await call(adminA, 'DELETE', `/v1/contacts/${contact.id}`);
    assertProblem(again, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
  });

  test('a contact with conversations is not deleted: 409 APP_ERR_CONTACT_HAS_CONVERSATIONS', async () => {
    const { body: contact } = await createContact(a);
    await queryAsAdmin(
      testApp,
      'insert into conversations (tenant_id, contact_id) values ($1, $2)',
      [a.tenantId, contact.id],
    );
    const response = await call(a, 'DELETE', `/v1/contacts/${contact.id}`);
    const problem = assertProblem(response, 409, 'APP_ERR_CONTACT_HAS_CONVERSATIONS');
    assert.match(problem.detail, /conversations/);
    assert.ok(await contactRow(contact.id));
  });

  test('PUT links a tag once and DELETE unlinks it; both answer 204 and GET shows the tags', async () => {
    const red = await createTag(a, 'red');
    const blue = await createTag(a, 'blue');
    const { body: contact } = await createContact(a);
    for (let i = 0; i < 2; i++) {
      const put = await call(a, 'PUT', `/v1/contacts/${contact.id}/tags/${red}`);
      assert.equal(put.statusCode, 204, put.body);
    }
    assert.equal((await call(a, 'PUT', `/v1/contacts/${contact.id}/tags/${blue}`)).statusCode, 204);
    assert.deepEqual(bodyOf(await call(a, 'GET', `/v1/contacts/${contact.id}`)).tags, [
      { id: blue, name: 'blue' },
      { id: red, name: 'red' },
    ]);
    const removed = await call(memberA, 'DELETE', `/v1/contacts/${contact.id}/tags/${red}`);
    assert.equal(removed.statusCode, 204);
    const removedAgain = await call(a, 'DELETE', `/v1/contacts/${contact.id}/tags/${red}`);
    assert.equal(removedAgain.statusCode, 204);
    assert.deepEqual(await linkedTags(contact.id), [blue]);
  });
});

describe('idempotent contact creation', () => {
  test('the same key and body replays the response (idempotent-replayed: true) and stores one row', async () => {
    const body = { name: 'Once', phone: newPhone() };
    const headers = { 'idempotency-key': `create-once-${randomUUID()}` };
    const before = await count('contacts', a);
    const first = await call(a, 'POST', '/v1/contacts', { body, headers });
    assert.equal(first.statusCode, 201, first.body);
    assert.equal(first.headers['idempotent-replayed'], undefined);
    const second = await call(a, 'POST', '/v1/contacts', { body, headers });
    assert.equal(second.statusCode, 201, second.body);
    assert.equal(second.headers['idempotent-replayed'], 'true');
    assert.deepEqual(bodyOf(second), bodyOf(first));
    assert.equal(second.headers.etag, first.headers.etag);
    assert.equal(await count('contacts', a), before + 1);
  });

  test('the same key with another body is 422 TENANTRY_ERR_HTTP_IDEMPOTENCY_KEY_REUSED and stores nothing more', async () => {
    const headers = { 'idempotency-key': `reuse-${randomUUID()}` };
    const first = await call(a, 'POST', '/v1/contacts', {
      body: { name: 'First', phone: newPhone() },
      headers,
    });
    assert.equal(first.statusCode, 201);
    const before = await count('contacts', a);
    const second = await call(a, 'POST', '/v1/contacts', {
      body: { name: 'Second', phone: newPhone() },
      headers,
    });
    assertProblem(second, 422, 'TENANTRY_ERR_HTTP_IDEMPOTENCY_KEY_REUSED');
    assert.equal(await count('contacts', a), before);
  });

  test('two concurrent requests with one key create one contact and both answer with it', async () => {
    const body = { name: 'Concurrent', phone: newPhone() };
    const headers = { 'idempotency-key': `concurrent-${randomUUID()}` };
    const before = await count('contacts', a);
    const responses = await Promise.all([
      call(a, 'POST', '/v1/contacts', { body, headers }),
      call(a, 'POST', '/v1/contacts', { body, headers }),
    ]);
    assert.deepEqual(
      responses.map((response) => response.statusCode),
      [201, 201],
      responses.map((response) => response.body).join('\n'),
    );
    assert.equal(
      bodyOf(responses[0] as LightMyRequestResponse).id,
      bodyOf(responses[1] as LightMyRequestResponse).id,
    );
    assert.deepEqual(
      responses.map((response) => response.headers['idempotent-replayed'] ?? 'no').sort(),
      ['no', 'true'],
    );
    assert.equal(await count('contacts', a), before + 1);
  });

  test('the same key in two workspaces creates a contact in each', async () => {
    const phone = newPhone();
    const headers = { 'idempotency-key': `shared-${randomUUID()}` };
    const inA = await call(a, 'POST', '/v1/contacts', { body: { name: 'Shared', phone }, headers });
    const inB = await call(b, 'POST', '/v1/contacts', { body: { name: 'Shared', phone }, headers });
    assert.equal(inA.statusCode, 201);
    assert.equal(inB.statusCode, 201);
    assert.equal(inB.headers['idempotent-replayed'], undefined);
    assert.notEqual(bodyOf(inA).id, bodyOf(inB).id);
    assert.equal((await contactRow(bodyOf(inB).id))?.tenant_id, b.tenantId);
  });

  test('a malformed Idempotency-Key is a 400 and stores nothing', async () => {
    const before = await count('contacts', a);
    const response = await call(a, 'POST', '/v1/contacts', {
      body: { name: 'Bad key' },
      headers: { 'idempotency-key': 'x'.repeat(256) },
    });
    assertProblem(response, 400, 'TENANTRY_ERR_HTTP_IDEMPOTENCY_KEY_INVALID');
    assert.equal(await count('contacts', a), before);
  });
});

async function walk(as: TestWorkspace, url: string): Promise<Item[]> {
  const items: Item[] = [];
  let cursor: string | null = null;
  for (let page = 0; page < 200; page++) {
    const separator = url.includes('?') ? '&' : '?';
    const response = await call(
      as,
      'GET',
      cursor === null ? url : `${url}${separator}cursor=${encodeURIComponent(cursor)}`,
    );
    assert.equal(response.statusCode, 200, response.body);
    const body = bodyOf(response);
    items.push(...body.items);
    cursor = body.nextCursor;
    if (cursor === null) return items;
  }
  assert.fail('pagination did not end');
}

describe('listing contacts', () => {
  let c: TestWorkspace;
  const sorts = {
    created_at: 'created_at, id',
    '-created_at': 'created_at desc, id desc',
    name: 'name, id',
    '-name': 'name desc, id desc',
  } as const;

  before(async () => {
    c = await createWorkspace(testApp, 'crm-c');
    for (let i = 0; i < 12; i++) await createContact(c, { name: `Person ${i % 4}` });
    // Eleven rows in one statement share created_at, so ties on the sort column are exercised.
    await queryAsAdmin(
      testApp,
      `insert into contacts (tenant_id, name, phone)
       select $1, 'Person ' || (n % 3), '+4930' || (1000000 + n) from generate_series(1, 11) n`,
      [c.tenantId],
    );
  });

  test('every sort order walks all 23 contacts exactly once, in the database’s order, for several page sizes', async () => {
    for (const [sort, orderBy] of Object.entries(sorts)) {
      const expected = (
        await queryAsAdmin<{ id: string }>(
          testApp,
          `select id from contacts where tenant_id = $1 order by ${orderBy}`,
          [c.tenantId],
        )
      ).map((row) => row.id);
      assert.equal(expected.length, 23);
      for (const limit of [1, 5, 23, 100]) {
        const ids = (await walk(c, `/v1/contacts?sort=${sort}&limit=${limit}`)).map(
          (item) => item.id,
        );
        assert.deepEqual(ids, expected, `sort=${sort} limit=${limit}`);
      }
    }
  });

  test('filters by tag, exact phone, email in any case and attribute values as text', async () => {
    const tag = await createTag(c, 'filtered');
    const phone = newPhone();
    const { body: target } = await createContact(c, {
      name: 'Target',
      phone,
      email: 'Target@Example.com',
      attributes: { plan: 'gold', seats: 10, vip: true, note: 'a:b' },
      tagIds: [tag],
    });
    await createContact(c, { name: 'Decoy', attributes: { plan: 'silver', seats: 11 } });
    const filters = [
      `tagId=${tag}`,
      `phone=${encodeURIComponent(phone)}`,
      'email=target@example.COM',
      'attribute=plan:gold',
      'attribute=seats:10',
      'attribute=vip:true',
      'attribute=note:a:b',
      'attribute=plan:gold&attribute=seats:10',
      `attribute=plan:gold&tagId=${tag}&sort=-name`,
    ];
    for (const filter of filters) {
      const items = await walk(c, `/v1/contacts?${filter}&limit=2`);
      assert.deepEqual(
        items.map((item) => item.id),
        [target.id],
        filter,
      );
    }
    for (const filter of ['attribute=plan:platinum', 'attribute=plan:gold&attribute=seats:11']) {
      assert.deepEqual(await walk(c, `/v1/contacts?${filter}`), [], filter);
    }
  });

  test('bad list parameters are 400 validation errors: limit, sort, unknown parameters, attribute form', async () => {
    for (const query of [
      'limit=0',
      'limit=101',
      'limit=abc',
      'sort=phone',
      'sort=updated_at',
      'tagId=nope',
      'attribute=nocolon',
      'attribute=bad-key:1',
      'tenant_id=x',
      'attr.plan=gold',
    ]) {
      const response = await call(c, 'GET', `/v1/contacts?${query}`);
      assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    }
  });

  test('a garbage cursor, or one made for another sort order, is a 400 validation error', async () => {
    const page = bodyOf(await call(c, 'GET', '/v1/contacts?sort=name&limit=2'));
    assert.equal(typeof page.nextCursor, 'string');
    const forged = (values: unknown) => Buffer.from(JSON.stringify(values)).toString('base64url');
    const cases = [
      ['garbage', 'sort=name'],
      [page.nextCursor, 'sort=-created_at'],
      [page.nextCursor, 'sort=-name'],
      [forged(['name', 'Person 1', 'not-a-uuid']), 'sort=name'],
      [forged(['created_at', 'yesterday', randomUUID()]), 'sort=created_at'],
      [forged(['created_at', '2024-13-45T99:99:99.000000Z', randomUUID()]), 'sort=created_at'],
      [forged(['name', 7, randomUUID()]), 'sort=name'],
      [forged({ sort: 'name' }), 'sort=name'],
      ['x'.repeat(600), 'sort=name'],
    ];
    for (const [cursor, query] of cases) {
      const response = await call(
        c,
        'GET',
        `/v1/contacts?${query}&cursor=${encodeURIComponent(String(cursor))}`,
      );
      assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    }
    const continued = await call(
      c,
      'GET',
      `/v1/contacts?sort=name&limit=2&cursor=${encodeURIComponent(page.nextCursor)}`,
    );
    assert.equal(continued.statusCode, 200);
  });
});
