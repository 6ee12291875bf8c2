import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
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
let aMember: TestWorkspace;
let b: TestWorkspace;
let aContact: string;
let bContact: string;
let bConversation: string;

before(async () => {
  testApp = await createTestApp();
  a = await createWorkspace(testApp, 'conv-a');
  aMember = await addMember(testApp, a, 'member');
  b = await createWorkspace(testApp, 'conv-b');
  aContact = await insertContact(a, 'Ana Alpha');
  bContact = await insertContact(b, 'Bruno Beta');
  bConversation = await insertConversation(b, bContact, 'B secret subject');
  await queryAsAdmin(
    testApp,
    `insert into messages (tenant_id, conversation_id, direction, body) values ($1, $2, 'inbound', 'B secret body')`,
    [b.tenantId, bConversation],
  );
});

after(async () => {
  await testApp.close();
});

async function insertContact(workspace: TestWorkspace, name: string): Promise<string> {
  const [row] = await queryAsAdmin<{ id: string }>(
    testApp,
    'insert into contacts (tenant_id, name) values ($1, $2) returning id',
    [workspace.tenantId, name],
  );
  assert.ok(row !== undefined);
  return row.id;
}

async function insertConversation(
  workspace: TestWorkspace,
  contactId: string,
  subject: string,
): Promise<string> {
  const [row] = await queryAsAdmin<{ id: string }>(
    testApp,
    'insert into conversations (tenant_id, contact_id, subject) values ($1, $2, $3) returning id',
    [workspace.tenantId, contactId, subject],
  );
  assert.ok(row !== undefined);
  return row.id;
}

async function insertTemplate(workspace: TestWorkspace, name: string, body: string) {
  const [row] = await queryAsAdmin<{ id: string }>(
    testApp,
    'insert into message_templates (tenant_id, name, body) values ($1, $2, $3) returning id',
    [workspace.tenantId, name, body],
  );
  assert.ok(row !== undefined);
  return row.id;
}

async function countRows(table: 'conversations' | 'messages', tenantId: string) {
  const [row] = await queryAsAdmin<{ n: number }>(
    testApp,
    `select count(*)::int as n from ${table} where tenant_id = $1`,
    [tenantId],
  );
  assert.ok(row !== undefined);
  return row.n;
}

interface StoredConversation extends Record<string, unknown> {
  tenant_id: string;
  contact_id: string;
  subject: string | null;
  status: string;
  assignee_id: string | null;
  version: number;
  updated_at: Date;
  last_message_at: Date | null;
}

async function conversationInDb(id: string) {
  const [row] = await queryAsAdmin<StoredConversation>(
    testApp,
    `select tenant_id, contact_id, subject, status, assignee_id, version, updated_at, last_message_at
       from conversations where id = $1`,
    [id],
  );
  return row;
}

function inject(
  workspace: TestWorkspace,
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE',
  url: string,
  options: { body?: unknown; headers?: Record<string, string> } = {},
) {
  return testApp.app.inject({
    method,
    url: `/v1${url}`,
    headers: { ...workspace.headers, ...options.headers },
    ...(options.body === undefined ? {} : { payload: options.body as object }),
  });
}

async function createConversation(
  workspace: TestWorkspace,
  body: Record<string, unknown>,
): Promise<{ id: string; etag: string; version: number }> {
  const response = await inject(workspace, 'POST', '/conversations', { body });
  assert.equal(response.statusCode, 201, response.body);
  const created = bodyOf(response);
  return { id: created.id, etag: String(response.headers.etag), version: created.version };
}

function assertProblem(
  response: Awaited<ReturnType<typeof inject>>,
  status: number,
  code: string,
): Record<string, unknown> {
  assert.equal(response.statusCode, status, response.body);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
  const body = bodyOf(response);
  assert.equal(body.code, code);
  return body;
}

/** The problem body without per-request fields, to compare two 404s. */
function comparable(response: Awaited<ReturnType<typeof inject>>) {
  return { status: response.statusCode, body: response.body };
}

describe('POST /conversations', () => {
  test('opens a conversation with a contact of the workspace, with an ETag and no tenant_id', async () => {
    const response = await inject(a, 'POST', '/conversations', {
      body: { contactId: aContact, subject: 'Order 42', assigneeId: aMember.userId },
    });
    assert.equal(response.statusCode, 201, response.body);
    const body = bodyOf(response);
    assert.equal(body.contactId, aContact);
    assert.equal(body.contactName, 'Ana Alpha');
    assert.equal(body.subject, 'Order 42');
    assert.equal(body.status, 'open');
    assert.equal(body.assigneeId, aMember.userId);
    assert.equal(body.version, 1);
    assert.equal(body.lastMessageAt, null);
    assert.equal(response.headers.etag, `W/"${body.id}.1"`);
    assert.equal('tenant_id' in body || 'tenantId' in body, false);
    const stored = await conversationInDb(body.id);
    assert.equal(stored?.tenant_id, a.tenantId);
    assert.equal(stored?.assignee_id, aMember.userId);
  });

  test('is served at /t/<workspace>/v1 too', async () => {
    const response = await testApp.app.inject({
      method: 'POST',
      url: `/t/${a.slug}/v1/conversations`,
      headers: a.headers,
      payload: { contactId: aContact },
    });
    assert.equal(response.statusCode, 201, response.body);
    assert.equal((await conversationInDb(bodyOf(response).id))?.tenant_id, a.tenantId);
  });

  test('an Idempotency-Key replays the first response and stores one conversation', async () => {
    const key = `conv-${randomUUID()}`;
    const before = await countRows('conversations', a.tenantId);
    const first = await inject(a, 'POST', '/conversations', {
      body: { contactId: aContact, subject: 'Once' },
      headers: { 'idempotency-key': key },
    });
    const second = await inject(a, 'POST', '/conversations', {
      body: { contactId: aContact, subject: 'Once' },
      headers: { 'idempotency-key': key },
    });
    assert.equal(first.statusCode, 201);
    assert.equal(second.statusCode, 201);
    assert.equal(second.headers['idempotent-replayed'], 'true');
    assert.equal(bodyOf(second).id, bodyOf(first).id);
    assert.equal(await countRows('conversations', a.tenantId), before + 1);
    const reused = await inject(a, 'POST', '/conversations', {
      body: { contactId: aContact, subject: 'Other' },
      headers: { 'idempotency-key': key },
    });
    assertProblem(reused, 422, 'TENANTRY_ERR_HTTP_IDEMPOTENCY_KEY_REUSED');
    assert.equal(await countRows('conversations', a.tenantId), before + 1);
  });

  test('invalid bodies are 400 problem+json and store nothing', async () => {
    const before = await countRows('conversations', a.tenantId);
    for (const body of [
      {},
      { contactId: 'not-a-uuid' },
      { contactId: aContact, subject: '' },
      { contactId: aContact, subject: 'x'.repeat(201) },
      { contactId: aContact, assigneeId: 'me' },
      { contactId: aContact, status: 'closed' },
    ]) {
      const response = await inject(a, 'POST', '/conversations', { body });
      assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    }
    assert.equal(await countRows('conversations', a.tenantId), before);
  });

  test('tenant_id in the body is rejected (no mass assignment into another workspace)', async () => {
    const beforeA = await countRows('conversations', a.tenantId);
    const beforeB = await countRows('conversations', b.tenantId);
    const response = await inject(a, 'POST', '/conversations', {
      body: { contactId: aContact, tenant_id: b.tenantId },
    });
    const problem = assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    assert.match(JSON.stringify(problem.errors), /tenant_id|additional/);
    assert.equal(await countRows('conversations', a.tenantId), beforeA);
    assert.equal(await countRows('conversations', b.tenantId), beforeB);
  });

  test("another workspace's contact is answered like an unknown one and never linked", async () => {
    const beforeA = await countRows('conversations', a.tenantId);
    const beforeB = await countRows('conversations', b.tenantId);
    const foreign = await inject(a, 'POST', '/conversations', { body: { contactId: bContact } });
    const unknown = await inject(a, 'POST', '/conversations', {
      body: { contactId: randomUUID() },
    });
    assertProblem(foreign, 422, 'TENANTRY_ERR_DB_INVALID_REFERENCE');
    assert.deepEqual(comparable(foreign), comparable(unknown));
    assert.equal(await countRows('conversations', a.tenantId), beforeA);
    assert.equal(await countRows('conversations', b.tenantId), beforeB);
  });

  test('the assignee must be a member of this workspace', async () => {
    const before = await countRows('conversations', a.tenantId);
    for (const assigneeId of [b.userId, randomUUID()]) {
      const response = await inject(a, 'POST', '/conversations', {
        body: { contactId: aContact, assigneeId },
      });
      assertProblem(response, 422, 'APP_ERR_ASSIGNEE_NOT_A_MEMBER');
    }
    assert.equal(await countRows('conversations', a.tenantId), before);
  });

  test('needs a credential', async () => {
    const response = await testApp.app.inject({
      method: 'POST',
      url: '/v1/conversations',
      payload: { contactId: aContact },
    });
    assertProblem(response, 401, 'TENANTRY_ERR_AUTH_REQUIRED');
  });
});

describe('GET /conversations/:id', () => {
  test('returns the conversation with its ETag', async () => {
    const created = await createConversation(a, { contactId: aContact, subject: 'Read me' });
    const response = await inject(a, 'GET', `/conversations/${created.id}`);
    assert.equal(response.statusCode, 200);
    assert.equal(response.headers.etag, created.etag);
    assert.equal(bodyOf(response).subject, 'Read me');
  });

  test("another workspace's conversation is a 404 identical to an unknown id", async () => {
    const foreign = await inject(a, 'GET', `/conversations/${bConversation}`);
    const unknown = await inject(a, 'GET', `/conversations/${randomUUID()}`);
    assertProblem(foreign, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
    assert.deepEqual(comparable(foreign), comparable(unknown));
    assert.doesNotMatch(foreign.body, /B secret/);
  });

  test('a malformed id is a 400', async () => {
    assertProblem(
      await inject(a, 'GET', '/conversations/nope'),
      400,
      'TENANTRY_ERR_HTTP_VALIDATION',
    );
  });
});

describe('PATCH /conversations/:id', () => {
  test('closes and reassigns with If-Match, incrementing the version', async () => {
    const created = await createConversation(a, { contactId: aContact, subject: 'Patch me' });
    const response = await inject(a, 'PATCH', `/conversations/${created.id}`, {
      body: { status: 'closed', assigneeId: aMember.userId, subject: 'Patched' },
      headers: { 'if-match': created.etag },
    });
    assert.equal(response.statusCode, 200, response.body);
    const body = bodyOf(response);
    assert.equal(body.version, 2);
    assert.equal(body.status, 'closed');
    assert.equal(body.subject, 'Patched');
    assert.equal(body.assigneeId, aMember.userId);
    assert.equal(response.headers.etag, `W/"${created.id}.2"`);
    const stored = await conversationInDb(created.id);
    assert.equal(stored?.version, 2);
    assert.equal(stored?.status, 'closed');

    const unassigned = await inject(a, 'PATCH', `/conversations/${created.id}`, {
      body: { assigneeId: null, subject: null },
      headers: { 'if-match': String(response.headers.etag) },
    });
    assert.equal(unassigned.statusCode, 200, unassigned.body);
    assert.equal(bodyOf(unassigned).assigneeId, null);
    assert.equal(bodyOf(unassigned).subject, null);
    assert.equal(bodyOf(unassigned).version, 3);
  });

  test('without If-Match is 428, with a stale or foreign ETag 412, and nothing changes', async () => {
    const created = await createConversation(a, { contactId: aContact, subject: 'Guarded' });
    const other = await createConversation(a, { contactId: aContact });
    assertProblem(
      await inject(a, 'PATCH', `/conversations/${created.id}`, { body: { status: 'closed' } }),
      428,
      'TENANTRY_ERR_HTTP_PRECONDITION_REQUIRED',
    );
    const first = await inject(a, 'PATCH', `/conversations/${created.id}`, {
      body: { subject: 'First' },
      headers: { 'if-match': created.etag },
    });
    assert.equal(first.statusCode, 200);
    assertProblem(
      await inject(a, 'PATCH', `/conversations/${created.id}`, {
        body: { status: 'closed' },
        headers: { 'if-match': created.etag },
      }),
      412,
      'TENANTRY_ERR_HTTP_PRECONDITION_FAILED',
    );
    assertProblem(
      await inject(a, 'PATCH', `/conversations/${created.id}`, {
        body: { status: 'closed' },
        headers: { 'if-match': other.etag },
      }),
      412,
      'TENANTRY_ERR_HTTP_PRECONDITION_FAILED',
    );
    const stored = await conversationInDb(created.id);
    assert.equal(stored?.status, 'open');
    assert.equal(stored?.subject, 'First');
    assert.equal(stored?.version, 2);
  });

  test('invalid patches and tenant_id are 400 and change nothing', async () => {
    const created = await createConversation(a, { contactId: aContact, subject: 'Stay' });
    for (const body of [
      {},
      { status: 'archived' },
      { tenant_id: b.tenantId },
      { version: 9 },
      { contactId: bContact },
    ]) {
      const response = await inject(a, 'PATCH', `/conversations/${created.id}`, {
        body,
        headers: { 'if-match': created.etag },
      });
      assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    }
    const stored = await conversationInDb(created.id);
    assert.equal(stored?.tenant_id, a.tenantId);
    assert.equal(stored?.contact_id, aContact);
    assert.equal(stored?.version, 1);
  });

  test('assigning a non-member is 422 and changes nothing', async () => {
    const created = await createConversation(a, { contactId: aContact });
    const response = await inject(a, 'PATCH', `/conversations/${created.id}`, {
      body: { assigneeId: b.userId },
      headers: { 'if-match': created.etag },
    });
    assertProblem(response, 422, 'APP_ERR_ASSIGNEE_NOT_A_MEMBER');
    assert.equal((await conversationInDb(created.id))?.assignee_id, null);
  });

  test("another workspace's conversation is a 404 identical to an unknown id, B unchanged", async () => {
    const beforeB = await conversationInDb(bConversation);
    const etag = `W/"${bConversation}.1"`;
    const foreign = await inject(a, 'PATCH', `/conversations/${bConversation}`, {
      body: { status: 'closed', subject: 'pwned' },
      headers: { 'if-match': etag },
    });
    const unknownId = randomUUID();
    const unknown = await inject(a, 'PATCH', `/conversations/${unknownId}`, {
      body: { status: 'closed', subject: 'pwned' },
      headers: { 'if-match': `W/"${unknownId}.1"` },
    });
    assertProblem(foreign, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
    assert.deepEqual(comparable(foreign), comparable(unknown));
    const withoutIfMatch = await inject(a, 'PATCH', `/conversations/${bConversation}`, {
      body: { status: 'closed' },
    });
    assertProblem(withoutIfMatch, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
    assert.deepEqual(await conversationInDb(bConversation), beforeB);
  });
});

describe('GET /conversations', () => {
  let workspace: TestWorkspace;
  let colleague: TestWorkspace;
  let contactOne: string;
  let contactTwo: string;
  const expectedOrder: string[] = [];

  before(async () => {
    workspace = await createWorkspace(testApp, 'conv-list');
    colleague = await addMember(testApp, workspace, 'member');
    contactOne = await insertContact(workspace, 'Carla One');
    contactTwo = await insertContact(workspace, 'Dario Two');
    const ids: string[] = [];
    for (let index = 0; index < 7; index += 1) {
      const created = await createConversation(workspace, {
        contactId: index % 2 === 0 ? contactOne : contactTwo,
        subject: `List ${index}`,
        ...(index < 3 ? { assigneeId: workspace.userId } : {}),
        ...(index === 3 ? { assigneeId: colleague.userId } : {}),
      });
      ids.push(created.id);
    }
    // Ties on updated_at (differing only in microseconds, or not at all) must page correctly.
    await queryAsAdmin(
      testApp,
      `update conversations set updated_at = case
          when id = any($1::uuid[]) then timestamptz '2030-01-01 00:00:00.123456+00'
          when id = any($2::uuid[]) then timestamptz '2030-01-01 00:00:00.123457+00'
          else updated_at end
        where tenant_id = $3`,
      [ids.slice(0, 3), ids.slice(3, 5), workspace.tenantId],
    );
    await queryAsAdmin(testApp, `update conversations set status = 'closed' where id = $1`, [
      ids[6],
    ]);
    const rows = await queryAsAdmin<{ id: string }>(
      testApp,
      'select id from conversations where tenant_id = $1 order by updated_at desc, id desc',
      [workspace.tenantId],
    );
    expectedOrder.push(...rows.map((row) => row.id));
  });

  async function listAll(url: string, limit: number, as: TestWorkspace = workspace) {
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const separator = url.includes('?') ? '&' : '?';
      const query = `${separator}limit=${limit}${cursor === null ? '' : `&cursor=${cursor}`}`;
      const response = await inject(as, 'GET', `${url}${query}`);
      assert.equal(response.statusCode, 200, response.body);
      const page = bodyOf(response);
      assert.ok(page.items.length <= limit);
      seen.push(...page.items.map((item: { id: string }) => item.id));
      cursor = page.nextCursor;
      pages += 1;
      assert.ok(pages < 20, 'pagination does not end');
    } while (cursor !== null);
    return seen;
  }

  test('pages through every conversation exactly once, newest-updated first', async () => {
    assert.deepEqual(await listAll('/conversations', 2), expectedOrder);
    assert.deepEqual(await listAll('/conversations', 3), expectedOrder);
    assert.deepEqual(await listAll('/conversations', 100), expectedOrder);
  });

  test('filters by status and contact', async () => {
    const open = await listAll('/conversations?status=open', 2);
    assert.equal(open.length, 6);
    const closed = await listAll('/conversations?status=closed', 2);
    assert.equal(closed.length, 1);
    const byContact = await listAll(`/conversations?contactId=${contactTwo}`, 2);
    const rows = await queryAsAdmin<{ id: string }>(
      testApp,
      'select id from conversations where contact_id = $1 order by updated_at desc, id desc',
      [contactTwo],
    );
    assert.deepEqual(
      byContact,
      rows.map((row) => row.id),
    );
  });

  test("assignee=me lists only the caller's assigned conversations", async () => {
    const mine = await listAll('/conversations?assignee=me', 2);
    const theirs = await listAll('/conversations?assignee=me', 2, colleague);
    const mineInDb = await queryAsAdmin<{ id: string }>(
      testApp,
      'select id from conversations where assignee_id = $1 order by updated_at desc, id desc',
      [workspace.userId],
    );
    assert.equal(mine.length, 3);
    assert.deepEqual(
      mine,
      mineInDb.map((row) => row.id),
    );
    assert.equal(theirs.length, 1);
    assert.equal(
      theirs.some((id) => mine.includes(id)),
      false,
    );
    const byId = await listAll(`/conversations?assignee=${colleague.userId}`, 5);
    assert.deepEqual(byId, theirs);
    const unassigned = await listAll('/conversations?assignee=none', 5);
    assert.equal(unassigned.length, 3);
  });

  test("never lists another workspace's conversations", async () => {
    const seen = await listAll('/conversations', 100, a);
    assert.equal(seen.includes(bConversation), false);
    assert.equal(
      seen.some((id) => expectedOrder.includes(id)),
      false,
    );
    const foreignFilter = await listAll(`/conversations?contactId=${bContact}`, 10, a);
    assert.deepEqual(foreignFilter, []);
  });

  test('a cursor that is not ours and bad filters are 400', async () => {
    for (const query of [
      'cursor=garbage',
      `cursor=${Buffer.from(JSON.stringify(['x', 'y'])).toString('base64url')}`,
      'status=pending',
      'assignee=someone',
      'limit=0',
      'limit=101',
      'tenant_id=x',
    ]) {
      const response = await inject(workspace, 'GET', `/conversations?${query}`);
      assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    }
  });

  test('API keys need the conversations scopes, and assignee=me needs a user', async () => {
    const key = async (scopes: string[]) =>
      (
        await testApp.tenantry.withTenant(workspace.tenantId, (db) =>
          createApiKey(db, { name: `conv ${scopes.join(' ')}`, scopes }),
        )
      ).key;
    const reader = { 'x-api-key': await key(['conversations:read']) };
    const other = { 'x-api-key': await key(['contacts:read']) };
    const get = (url: string, headers: Record<string, string>) =>
      testApp.app.inject({ method: 'GET', url: `/v1${url}`, headers });
    const listed = await get('/conversations?limit=100', reader);
    assert.equal(listed.statusCode, 200, listed.body);
    assert.deepEqual(
      bodyOf(listed).items.map((item: { id: string }) => item.id),
      expectedOrder,
    );
    assertProblem(
      await get('/conversations?assignee=me', reader),
      400,
      'TENANTRY_ERR_HTTP_VALIDATION',
    );
    assertProblem(await get('/conversations', other), 403, 'TENANTRY_ERR_AUTH_INSUFFICIENT_SCOPE');
    const write = await testApp.app.inject({
      method: 'POST',
      url: '/v1/conversations',
      headers: reader,
      payload: { contactId: contactOne },
    });
    assertProblem(write, 403, 'TENANTRY_ERR_AUTH_INSUFFICIENT_SCOPE');
    assert.equal(await countRows('conversations', workspace.tenantId), expectedOrder.length);
  });

  test('q finds conversations by subject and contact words, page by page, in this workspace only', async () => {
    const ofContact = await queryAsAdmin<{ id: string }>(
      testApp,
      'select id from conversations where contact_id = $1 order by updated_at desc, id desc',
      [contactOne],
    );
    assert.deepEqual(
      await listAll('/conversations?q=carl', 1),
      ofContact.map((row) => row.id),
    );
    assert.deepEqual(await listAll('/conversations?q=list', 2), expectedOrder);
    assert.equal((await listAll('/conversations?q=list&status=closed', 2)).length, 1);
    const mineOfCarla = await listAll('/conversations?q=carla&assignee=me', 1);
    assert.deepEqual(
      mineOfCarla,
      (await listAll('/conversations?assignee=me', 5)).filter((id) =>
        ofContact.some((row) => row.id === id),
      ),
    );
    assert.deepEqual(await listAll('/conversations?q=secret', 5), []);
    assert.deepEqual(await listAll('/conversations?q=bruno', 5), []);
    assert.deepEqual(await listAll('/conversations?q=bruno', 5, b), [bConversation]);
  });

  test('q cannot be combined with contactId or assignee=none', async () => {
    for (const query of [`q=hello&contactId=${contactOne}`, 'q=hello&assignee=none']) {
      assertProblem(
        await inject(workspace, 'GET', `/conversations?${query}`),
        400,
        'TENANTRY_ERR_HTTP_VALIDATION',
      );
    }
  });
});

describe('POST /conversations/:id/messages', () => {
  test('queues an outbound message from the caller and moves the conversation up', async () => {
    const created = await createConversation(a, { contactId: aContact, subject: 'Talk' });
    const before = await conversationInDb(created.id);
    const response = await inject(a, 'POST', `/conversations/${created.id}/messages`, {
      body: { body: 'Hello Ana' },
    });
    assert.equal(response.statusCode, 201, response.body);
    const message = bodyOf(response);
    assert.equal(message.conversationId, created.id);
    assert.equal(message.direction, 'outbound');
    assert.equal(message.status, 'queued');
    assert.equal(message.senderId, a.userId);
    assert.equal(message.body, 'Hello Ana');
    assert.equal('tenant_id' in message || 'tenantId' in message, false);
    const [stored] = await queryAsAdmin(
      testApp,
      'select tenant_id, sender_id, status, direction from messages where id = $1',
      [message.id],
    );
    assert.deepEqual(stored, {
      tenant_id: a.tenantId,
      sender_id: a.userId,
      status: 'queued',
      direction: 'outbound',
    });
    const afterRow = await conversationInDb(created.id);
    assert.ok(afterRow?.last_message_at instanceof Date);
    assert.equal(afterRow.last_message_at.toISOString(), message.createdAt);
    assert.ok(afterRow.updated_at.getTime() > (before?.updated_at.getTime() ?? Infinity));
    const read = bodyOf(await inject(a, 'GET', `/conversations/${created.id}`));
    assert.equal(read.lastMessageAt, message.createdAt);
  });

  test('an Idempotency-Key stores one message', async () => {
    const created = await createConversation(a, { contactId: aContact });
    const key = `msg-${randomUUID()}`;
    const send = () =>
      inject(a, 'POST', `/conversations/${created.id}/messages`, {
        body: { body: 'Only once' },
        headers: { 'idempotency-key': key },
      });
    const first = await send();
    const second = await send();
    assert.equal(first.statusCode, 201);
    assert.equal(second.statusCode, 201);
    assert.equal(second.headers['idempotent-replayed'], 'true');
    assert.equal(bodyOf(second).id, bodyOf(first).id);
    const [row] = await queryAsAdmin<{ n: number }>(
      testApp,
      'select count(*)::int as n from messages where conversation_id = $1',
      [created.id],
    );
    assert.equal(row?.n, 1);
  });

  test('renders a template with its variables', async () => {
    const created = await createConversation(a, { contactId: aContact });
    const templateId = await insertTemplate(a, 'order_shipped', 'Hi {{1}}, order {{2}} shipped.');
    const response = await inject(a, 'POST', `/conversations/${created.id}/messages`, {
      body: { templateId, variables: ['Ana', '42'] },
    });
    assert.equal(response.statusCode, 201, response.body);
    assert.equal(bodyOf(response).body, 'Hi Ana, order 42 shipped.');
    const mismatch = await inject(a, 'POST', `/conversations/${created.id}/messages`, {
      body: { templateId, variables: ['Ana'] },
    });
    assertProblem(mismatch, 422, 'APP_ERR_TEMPLATE_VARIABLES_INVALID');
  });

  test("another workspace's template is answered like an unknown one", async () => {
    const created = await createConversation(a, { contactId: aContact });
    const bTemplate = await insertTemplate(b, 'b_secret', 'B secret template {{1}}');
    const foreign = await inject(a, 'POST', `/conversations/${created.id}/messages`, {
      body: { templateId: bTemplate, variables: ['x'] },
    });
    const unknown = await inject(a, 'POST', `/conversations/${created.id}/messages`, {
      body: { templateId: randomUUID(), variables: ['x'] },
    });
    assertProblem(foreign, 422, 'TENANTRY_ERR_DB_INVALID_REFERENCE');
    assert.deepEqual(comparable(foreign), comparable(unknown));
    assert.doesNotMatch(foreign.body, /B secret/);
    const [row] = await queryAsAdmin<{ n: number }>(
      testApp,
      'select count(*)::int as n from messages where conversation_id = $1',
      [created.id],
    );
    assert.equal(row?.n, 0);
  });

  test('invalid messages are 400 problem+json and store nothing', async () => {
    const created = await createConversation(a, { contactId: aContact });
    const templateId = await insertTemplate(a, 'plain_hello', 'Hello');
    for (const body of [
      {},
      { body: '' },
      { body: 'x'.repeat(4097) },
      { body: ['a', 'b'] },
      { body: 'hi', templateId },
      { body: 'hi', variables: ['x'] },
      { body: 'hi', tenant_id: b.tenantId },
      { body: 'hi', conversationId: bConversation },
      { body: 'hi', direction: 'inbound' },
    ]) {
      const response = await inject(a, 'POST', `/conversations/${created.id}/messages`, { body });
      assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    }
    const [row] = await queryAsAdmin<{ n: number }>(
      testApp,
      'select count(*)::int as n from messages where conversation_id = $1',
      [created.id],
    );
    assert.equal(row?.n, 0);
    assert.equal((await conversationInDb(created.id))?.last_message_at, null);
  });

  test("posting into another workspace's conversation is a 404 identical to an unknown id", async () => {
    const beforeB = await countRows('messages', b.tenantId);
    const beforeA = await countRows('messages', a.tenantId);
    const beforeConversation = await conversationInDb(bConversation);
    const foreign = await inject(a, 'POST', `/conversations/${bConversation}/messages`, {
      body: { body: 'injected' },
    });
    const unknown = await inject(a, 'POST', `/conversations/${randomUUID()}/messages`, {
      body: { body: 'injected' },
    });
    assertProblem(foreign, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
    assert.deepEqual(comparable(foreign), comparable(unknown));
    assert.equal(await countRows('messages', b.tenantId), beforeB);
    assert.equal(await countRows('messages', a.tenantId), beforeA);
    assert.deepEqual(await conversationInDb(bConversation), beforeConversation);
  });
});

describe('GET /conversations/:id/messages', () => {
  let conversationId: string;
  let newestFirst: string[];

  before(async () => {
    conversationId = (await createConversation(a, { contactId: aContact, subject: 'History' })).id;
    for (let index = 0; index < 5; index += 1) {
      const response = await inject(a, 'POST', `/conversations/${conversationId}/messages`, {
        body: { body: `Message ${index}` },
      });
      assert.equal(response.statusCode, 201);
    }
    // Two messages at the same instant: the id breaks the tie.
    await queryAsAdmin(
      testApp,
      `insert into messages (tenant_id, conversation_id, direction, body, created_at)
         values ($1, $2, 'inbound', 'Tie 1', timestamptz '2020-01-01 00:00:00.000001+00'),
                ($1, $2, 'inbound', 'Tie 2', timestamptz '2020-01-01 00:00:00.000001+00'),
                ($1, $2, 'inbound', 'Tie 3', timestamptz '2020-01-01 00:00:00.000002+00')`,
      [a.tenantId, conversationId],
    );
    const rows = await queryAsAdmin<{ id: string }>(
      testApp,
      'select id from messages where conversation_id = $1 order by created_at desc, id desc',
      [conversationId],
    );
    newestFirst = rows.map((row) => row.id);
  });

  async function listAll(order: '' | 'asc' | 'desc', limit: number) {
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const params = new URLSearchParams({ limit: String(limit) });
      if (order !== '') params.set('order', order);
      if (cursor !== null) params.set('cursor', cursor);
      const response = await inject(
        a,
        'GET',
        `/conversations/${conversationId}/messages?${params}`,
      );
      assert.equal(response.statusCode, 200, response.body);
      const page = bodyOf(response);
      seen.push(...page.items.map((item: { id: string }) => item.id));
      cursor = page.nextCursor;
      assert.ok(seen.length <= newestFirst.length, 'pagination repeats rows');
    } while (cursor !== null);
    return seen;
  }

  test('pages newest first by default, oldest first with order=asc, each row once', async () => {
    assert.equal(newestFirst.length, 8);
    assert.deepEqual(await listAll('', 3), newestFirst);
    assert.deepEqual(await listAll('desc', 1), newestFirst);
    assert.deepEqual(await listAll('asc', 3), [...newestFirst].reverse());
  });

  test('a cursor is only valid for the order it was made with', async () => {
    const first = bodyOf(
      await inject(a, 'GET', `/conversations/${conversationId}/messages?limit=2`),
    );
    assert.equal(typeof first.nextCursor, 'string');
    const response = await inject(
      a,
      'GET',
      `/conversations/${conversationId}/messages?order=asc&cursor=${first.nextCursor}`,
    );
    assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
  });

  test("another workspace's messages are a 404 identical to an unknown conversation", async () => {
    const foreign = await inject(a, 'GET', `/conversations/${bConversation}/messages`);
    const unknown = await inject(a, 'GET', `/conversations/${randomUUID()}/messages`);
    assertProblem(foreign, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
    assert.deepEqual(comparable(foreign), comparable(unknown));
    assert.doesNotMatch(foreign.body, /B secret/);
  });
});
