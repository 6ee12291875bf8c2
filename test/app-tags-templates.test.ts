import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
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
let a: TestWorkspace;
let b: TestWorkspace;
let memberA: TestWorkspace;
let adminA: TestWorkspace;

before(async () => {
  testApp = await createTestApp();
  a = await createWorkspace(testApp, 'tt-a');
  b = await createWorkspace(testApp, 'tt-b');
  memberA = await addMember(testApp, a, 'member');
  adminA = await addMember(testApp, a, 'admin');
});

after(async () => {
  await testApp?.close();
});

type Method = 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE';

interface Problem {
  readonly code: string;
  readonly detail: string;
  readonly errors?: readonly { readonly pointer: string; readonly message: string }[];
}

interface Item {
  readonly id: string;
  readonly name: string;
  readonly [field: string]: unknown;
}

function call(
  as: TestWorkspace,
  method: Method,
  url: string,
  options: { readonly body?: unknown; readonly headers?: Record<string, string> } = {},
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

async function rowOf(table: string, id: string): Promise<Record<string, unknown> | undefined> {
  const rows = await queryAsAdmin(testApp, `select * from ${table} where id = $1`, [id]);
  return rows[0];
}

function assertProblem(response: LightMyRequestResponse, status: number, code: string): Problem {
  assert.equal(response.statusCode, status, response.body);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
  const body = bodyOf<Problem>(response);
  assert.equal(body.code, code);
  return body;
}

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

async function createTag(as: TestWorkspace, name: string): Promise<Item> {
  const response = await call(as, 'POST', '/v1/tags', { body: { name } });
  assert.equal(response.statusCode, 201, response.body);
  return bodyOf(response);
}

let templateCounter = 0;
async function createTemplate(
  as: TestWorkspace,
  fields: Record<string, unknown> = {},
): Promise<{ body: Item; etag: string }> {
  templateCounter += 1;
  const response = await call(as, 'POST', '/v1/templates', {
    body: {
      name: `template_${templateCounter}`,
      language: 'en',
      category: 'utility',
      body: 'Hello {{1}}',
      ...fields,
    },
  });
  assert.equal(response.statusCode, 201, response.body);
  return { body: bodyOf(response), etag: response.headers.etag as string };
}

describe('tags', () => {
  test('create, read, rename and list tags; responses carry id and name only', async () => {
    const created = await call(memberA, 'POST', '/v1/tags', { body: { name: 'lead' } });
    assert.equal(created.statusCode, 201, created.body);
    const tag = bodyOf(created);
    assert.deepEqual(Object.keys(tag).sort(), ['id', 'name']);
    assert.equal(tag.name, 'lead');
    assert.equal((await rowOf('tags', tag.id))?.tenant_id, a.tenantId);

    assert.deepEqual(bodyOf(await call(memberA, 'GET', `/v1/tags/${tag.id}`)), tag);
    const renamed = await call(memberA, 'PATCH', `/v1/tags/${tag.id}`, {
      body: { name: 'qualified lead' },
    });
    assert.equal(renamed.statusCode, 200, renamed.body);
    assert.deepEqual(bodyOf(renamed), { id: tag.id, name: 'qualified lead' });
    assert.equal((await rowOf('tags', tag.id))?.name, 'qualified lead');
  });

  test('a name the workspace already uses is 409 on create and rename; another workspace may use it', async () => {
    await createTag(a, 'duplicate');
    const other = await createTag(a, 'other');
    const before = await count('tags', a);
    const again = await call(a, 'POST', '/v1/tags', { body: { name: 'duplicate' } });
    const problem = assertProblem(again, 409, 'TENANTRY_ERR_DB_CONFLICT');
    assert.deepEqual(problem.errors, [
      { pointer: '/body/name', message: 'is already used by another tag' },
    ]);
    assert.equal(await count('tags', a), before);
    const rename = await call(a, 'PATCH', `/v1/tags/${other.id}`, { body: { name: 'duplicate' } });
    assertProblem(rename, 409, 'TENANTRY_ERR_DB_CONFLICT');
    assert.equal((await rowOf('tags', other.id))?.name, 'other');
    await createTag(b, 'duplicate');
  });

  test('invalid tag bodies are 400 validation errors and store nothing', async () => {
    const before = await count('tags', a);
    const tag = await createTag(a, 'unchanged');
    const rowBefore = await rowOf('tags', tag.id);
    for (const body of [
      {},
      { name: '' },
      { name: 'x'.repeat(61) },
      { name: 42, extra: true },
      { name: 'ok', tenant_id: b.tenantId },
      { name: 'ok', id: randomUUID() },
    ]) {
      const created = await call(a, 'POST', '/v1/tags', { body });
      assertProblem(created, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
      const renamed = await call(a, 'PATCH', `/v1/tags/${tag.id}`, { body });
      assertProblem(renamed, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    }
    assert.equal(await count('tags', a), before + 1);
    assert.deepEqual(await rowOf('tags', tag.id), rowBefore);
    for (const method of ['GET', 'PATCH', 'DELETE'] as const) {
      const response = await call(a, method, '/v1/tags/not-a-uuid', {
        body: method === 'PATCH' ? { name: 'x' } : undefined,
      });
      assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    }
  });

  test('A cannot read, rename or delete B’s tag: the 404 equals a random id’s and B’s row is unchanged', async () => {
    const tagOfB = await createTag(b, 'b-private');
    const rowBefore = await rowOf('tags', tagOfB.id);
    const randomId = randomUUID();
    for (const method of ['GET', 'PATCH', 'DELETE'] as const) {
      const send = (id: string) =>
        call(a, method, `/v1/tags/${id}`, {
          body: method === 'PATCH' ? { name: 'pwned' } : undefined,
        });
      const foreign = await send(tagOfB.id);
      const missing = await send(randomId);
      assertProblem(foreign, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
      assert.deepEqual(bodyOf(foreign), bodyOf(missing), method);
    }
    assert.deepEqual(await rowOf('tags', tagOfB.id), rowBefore);
    const listed = await walk(a, '/v1/tags?limit=100');
    assert.ok(!listed.some((tag) => tag.id === tagOfB.id));
  });

  test('a member may not delete a tag (403); an admin may, and the tag leaves every contact', async () => {
    const tag = await createTag(a, 'doomed');
    const contact = await call(a, 'POST', '/v1/contacts', {
      body: { name: 'Tagged', tagIds: [tag.id] },
    });
    assert.equal(contact.statusCode, 201, contact.body);
    const refused = await call(memberA, 'DELETE', `/v1/tags/${tag.id}`);
    assertProblem(refused, 403, 'TENANTRY_ERR_AUTH_FORBIDDEN');
    assert.ok(await rowOf('tags', tag.id));

    const deleted = await call(adminA, 'DELETE', `/v1/tags/${tag.id}`);
    assert.equal(deleted.statusCode, 204);
    assert.equal(await rowOf('tags', tag.id), undefined);
    const links = await queryAsAdmin(testApp, 'select 1 from contact_tags where tag_id = $1', [
      tag.id,
    ]);
    assert.equal(links.length, 0);
    assert.deepEqual(bodyOf(await call(a, 'GET', `/v1/contacts/${bodyOf(contact).id}`)).tags, []);
  });

  test('tag pages walk every tag once in name order; a garbage cursor is 400', async () => {
    const c = await createWorkspace(testApp, 'tt-tags');
    for (let i = 0; i < 23; i++) await createTag(c, `tag ${String(i).padStart(2, '0')}`);
    const expected = (
      await queryAsAdmin<{ id: string }>(
        testApp,
        'select id from tags where tenant_id = $1 order by name',
        [c.tenantId],
      )
    ).map((row) => row.id);
    for (const limit of [1, 4, 23, 100]) {
      const ids = (await walk(c, `/v1/tags?limit=${limit}`)).map((tag) => tag.id);
      assert.deepEqual(ids, expected, `limit=${limit}`);
    }
    const forged = Buffer.from(JSON.stringify([5])).toString('base64url');
    for (const query of ['cursor=garbage', `cursor=${forged}`, 'limit=0', 'limit=101', 'x=1']) {
      assertProblem(await call(c, 'GET', `/v1/tags?${query}`), 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    }
  });

  test('tag creation honours Idempotency-Key, per workspace', async () => {
    const headers = { 'idempotency-key': `tag-${randomUUID()}` };
    const before = await count('tags', a);
    const first = await call(a, 'POST', '/v1/tags', { body: { name: 'idem tag' }, headers });
    const replay = await call(a, 'POST', '/v1/tags', { body: { name: 'idem tag' }, headers });
    assert.equal(first.statusCode, 201);
    assert.equal(replay.statusCode, 201);
    assert.equal(replay.headers['idempotent-replayed'], 'true');
    assert.deepEqual(bodyOf(replay), bodyOf(first));
    assert.equal(await count('tags', a), before + 1);
    const reused = await call(a, 'POST', '/v1/tags', { body: { name: 'other tag' }, headers });
    assertProblem(reused, 422, 'TENANTRY_ERR_HTTP_IDEMPOTENCY_KEY_REUSED');
    const inB = await call(b, 'POST', '/v1/tags', { body: { name: 'idem tag' }, headers });
    assert.equal(inB.statusCode, 201);
    assert.equal(inB.headers['idempotent-replayed'], undefined);
    assert.equal((await rowOf('tags', bodyOf(inB).id))?.tenant_id, b.tenantId);
  });

  test('the /t/<slug>/v1 prefix serves tags with a matching token and refuses another workspace’s', async () => {
    const tag = await createTag(a, 'path tag');
    assert.equal((await call(a, 'GET', `/t/${a.slug}/v1/tags/${tag.id}`)).statusCode, 200);
    const before = await count('tags', a);
    assertProblem(
      await call(b, 'GET', `/t/${a.slug}/v1/tags/${tag.id}`),
      403,
      'TENANTRY_ERR_TENANT_MISMATCH',
    );
    assertProblem(
      await call(b, 'POST', `/t/${a.slug}/v1/tags`, { body: { name: 'intruder' } }),
      403,
      'TENANTRY_ERR_TENANT_MISMATCH',
    );
    assert.equal(await count('tags', a), before);
  });
});

describe('message templates', () => {
  test('creates a template (201 + ETag) that GET and the list return identically', async () => {
    const response = await call(memberA, 'POST', '/v1/templates', {
      body: {
        name: 'order_shipped',
        language: 'pt_BR',
        category: 'utility',
        body: 'Olá {{1}}, seu pedido {{2}} foi enviado. {{1}}, obrigado!',
      },
    });
    assert.equal(response.statusCode, 201, response.body);
    const template = bodyOf(response);
    assert.deepEqual(Object.keys(template).sort(), [
      'body',
      'category',
      'createdAt',
      'id',
      'language',
      'name',
      'updatedAt',
      'version',
    ]);
    assert.equal(template.version, 1);
    assert.equal(response.headers.etag, `W/"${template.id}.1"`);
    const read = await call(memberA, 'GET', `/v1/templates/${template.id}`);
    assert.deepEqual(bodyOf(read), template);
    assert.equal(read.headers.etag, response.headers.etag);
    const listed = await walk(memberA, '/v1/templates?language=pt_BR');
    assert.deepEqual(listed, [template]);
    assert.equal((await rowOf('message_templates', template.id))?.tenant_id, a.tenantId);
  });

  test('invalid template bodies are 400 validation errors and store nothing', async () => {
    const valid = { name: 'valid_name', language: 'en', category: 'marketing', body: 'Hi {{1}}' };
    const cases: Record<string, unknown>[] = [
      { ...valid, name: 'Upper' },
      { ...valid, name: 'with-dash' },
      { ...valid, name: 'x'.repeat(65) },
      { ...valid, language: 'EN' },
      { ...valid, language: 'pt-BR' },
      { ...valid, language: 'english' },
      { ...valid, category: 'promotion' },
      { ...valid, body: '' },
      { ...valid, body: 'x'.repeat(1025) },
      { ...valid, body: 'Hi {{name}}' },
      { ...valid, body: 'Hi {{2}}' },
      { ...valid, body: 'Hi {{1}} and {{3}}' },
      { ...valid, body: 'Hi {{0}}' },
      { name: 'valid_name', language: 'en', body: 'No category' },
      { ...valid, tenant_id: b.tenantId },
      { ...valid, id: randomUUID() },
      { ...valid, version: 3 },
    ];
    const before = await count('message_templates', a);
    for (const body of cases) {
      const response = await call(a, 'POST', '/v1/templates', { body });
      const problem = assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
      assert.ok((problem.errors ?? []).length > 0, JSON.stringify(body));
    }
    assert.equal(await count('message_templates', a), before);
  });

  test('name and language are unique together: 409; another language or workspace may reuse the name', async () => {
    await createTemplate(a, { name: 'welcome', language: 'en' });
    const before = await count('message_templates', a);
    const duplicate = await call(a, 'POST', '/v1/templates', {
      body: { name: 'welcome', language: 'en', category: 'marketing', body: 'Hey' },
    });
    assertProblem(duplicate, 409, 'TENANTRY_ERR_DB_CONFLICT');
    assert.equal(await count('message_templates', a), before);
    await createTemplate(a, { name: 'welcome', language: 'es' });
    await createTemplate(b, { name: 'welcome', language: 'en' });
  });

  test('PATCH: 428 without If-Match, 412 when stale; success increments the version and returns the new ETag', async () => {
    const { body: template, etag } = await createTemplate(a);
    const url = `/v1/templates/${template.id}`;
    assertProblem(
      await call(a, 'PATCH', url, { body: { body: 'Hey {{1}}' } }),
      428,
      'TENANTRY_ERR_HTTP_PRECONDITION_REQUIRED',
    );
    const ok = await call(a, 'PATCH', url, {
      body: { body: 'Hey {{1}}', category: 'marketing' },
      headers: { 'if-match': etag },
    });
    assert.equal(ok.statusCode, 200, ok.body);
    assert.equal(bodyOf(ok).version, 2);
    assert.equal(bodyOf(ok).category, 'marketing');
    assert.equal(ok.headers.etag, `W/"${template.id}.2"`);
    const stale = await call(a, 'PATCH', url, {
      body: { body: 'Stale {{1}}' },
      headers: { 'if-match': etag },
    });
    assertProblem(stale, 412, 'TENANTRY_ERR_HTTP_PRECONDITION_FAILED');
    const row = await rowOf('message_templates', template.id);
    assert.equal(row?.body, 'Hey {{1}}');
    assert.equal(row?.version, 2);

    for (const body of [
      { version: 9 },
      { tenant_id: b.tenantId },
      { id: randomUUID() },
      {},
      { body: 'Bad {{2}}' },
    ]) {
      const response = await call(a, 'PATCH', url, {
        body,
        headers: { 'if-match': ok.headers.etag as string },
      });
      assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    }
    assert.deepEqual(await rowOf('message_templates', template.id), row);
  });

  test('A cannot read, update or delete B’s template: the 404 equals a random id’s and B’s row is unchanged', async () => {
    const { body: templateOfB, etag: etagOfB } = await createTemplate(b, { body: 'B secret' });
    const rowBefore = await rowOf('message_templates', templateOfB.id);
    const randomId = randomUUID();
    for (const method of ['GET', 'PATCH', 'DELETE'] as const) {
      const send = (id: string) =>
        call(a, method, `/v1/templates/${id}`, {
          body: method === 'PATCH' ? { body: 'pwned' } : undefined,
          headers:
            method === 'PATCH'
              ? { 'if-match': id === templateOfB.id ? etagOfB : `W/"${id}.1"` }
              : {},
        });
      const foreign = await send(templateOfB.id);
      const missing = await send(randomId);
      assertProblem(foreign, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
      assert.deepEqual(bodyOf(foreign), bodyOf(missing), method);
    }
    assert.deepEqual(await rowOf('message_templates', templateOfB.id), rowBefore);
    const listed = await walk(a, '/v1/templates?limit=100');
    assert.ok(!listed.some((template) => template.id === templateOfB.id));
    for (const method of ['GET', 'PATCH', 'DELETE'] as const) {
      const response = await call(a, method, '/v1/templates/not-a-uuid', {
        body: method === 'PATCH' ? { body: 'x' } : undefined,
        headers: method === 'PATCH' ? { 'if-match': etagOfB } : {},
      });
      assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    }
  });

  test('a member may not delete a template (403); an admin may (204)', async () => {
    const { body: template } = await createTemplate(a);
    assertProblem(
      await call(memberA, 'DELETE', `/v1/templates/${template.id}`),
      403,
      'TENANTRY_ERR_AUTH_FORBIDDEN',
    );
    assert.ok(await rowOf('message_templates', template.id));
    const deleted = await call(adminA, 'DELETE', `/v1/templates/${template.id}`);
    assert.equal(deleted.statusCode, 204);
    assert.equal(await rowOf('message_templates', template.id), undefined);
    assertProblem(
      await call(adminA, 'GET', `/v1/templates/${template.id}`),
      404,
      'TENANTRY_ERR_HTTP_NOT_FOUND',
    );
  });

  test('idempotent creation: replay, reused key, concurrent requests and keys per workspace', async () => {
    const body = { name: 'idem_tpl', language: 'en', category: 'utility', body: 'Hi {{1}}' };
    const headers = { 'idempotency-key': `tpl-${randomUUID()}` };
    const before = await count('message_templates', a);
    const [first, second] = await Promise.all([
      call(a, 'POST', '/v1/templates', { body, headers }),
      call(a, 'POST', '/v1/templates', { body, headers }),
    ]);
    assert.ok(first && second);
    assert.deepEqual([first.statusCode, second.statusCode], [201, 201], first.body + second.body);
    assert.deepEqual(bodyOf(first), bodyOf(second));
    assert.deepEqual(
      [first, second].map((response) => response.headers['idempotent-replayed'] ?? 'no').sort(),
      ['no', 'true'],
    );
    assert.equal(await count('message_templates', a), before + 1);

    const replay = await call(a, 'POST', '/v1/templates', { body, headers });
    assert.equal(replay.statusCode, 201);
    assert.equal(replay.headers['idempotent-replayed'], 'true');
    assert.equal(replay.headers.etag, first.headers.etag);
    assert.deepEqual(bodyOf(replay), bodyOf(first));

    const reused = await call(a, 'POST', '/v1/templates', {
      body: { ...body, name: 'idem_other' },
      headers,
    });
    assertProblem(reused, 422, 'TENANTRY_ERR_HTTP_IDEMPOTENCY_KEY_REUSED');
    assert.equal(await count('message_templates', a), before + 1);

    const beforeB = await count('message_templates', b);
    const inB = await call(b, 'POST', '/v1/templates', { body, headers });
    assert.equal(inB.statusCode, 201, inB.body);
    assert.equal(inB.headers['idempotent-replayed'], undefined);
    assert.notEqual(bodyOf(inB).id, bodyOf(first).id);
    assert.equal(await count('message_templates', b), beforeB + 1);
  });

  test('template pages walk every template once, filtered by category and language; bad parameters are 400', async () => {
    const c = await createWorkspace(testApp, 'tt-templates');
    const categories = ['marketing', 'utility', 'authentication'] as const;
    for (let i = 0; i < 23; i++) {
      await createTemplate(c, {
        name: `tpl_${i % 8}`,
        language: ['en', 'es', 'pt_BR'][Math.floor(i / 8)],
        category: categories[i % 3],
      });
    }
    const cases: [string, string, unknown[]][] = [
      ['', '', []],
      ['category=marketing', 'and category = $2', ['marketing']],
      ['language=pt_BR', 'and language = $2', ['pt_BR']],
      ['category=utility&language=en', 'and category = $2 and language = $3', ['utility', 'en']],
    ];
    for (const [query, where, values] of cases) {
      const expected = (
        await queryAsAdmin<{ id: string }>(
          testApp,
          `select id from message_templates where tenant_id = $1 ${where} order by name, language`,
          [c.tenantId, ...values],
        )
      ).map((row) => row.id);
      assert.ok(expected.length > 0);
      for (const limit of [1, 3, 100]) {
        const ids = (await walk(c, `/v1/templates?limit=${limit}&${query}`)).map((t) => t.id);
        assert.deepEqual(ids, expected, `${query} limit=${limit}`);
      }
    }
    const forged = Buffer.from(JSON.stringify(['tpl_1', 7])).toString('base64url');
    for (const query of [
      'cursor=garbage',
      `cursor=${forged}`,
      'category=promo',
      'language=English',
      'limit=0',
      'tenant_id=x',
    ]) {
      assertProblem(
        await call(c, 'GET', `/v1/templates?${query}`),
        400,
        'TENANTRY_ERR_HTTP_VALIDATION',
      );
    }
  });

  test('the /t/<slug>/v1 prefix serves templates with a matching token and refuses another workspace’s', async () => {
    const { body: template } = await createTemplate(a);
    const ok = await call(a, 'GET', `/t/${a.slug}/v1/templates/${template.id}`);
    assert.equal(ok.statusCode, 200);
    const before = await count('message_templates', a);
    assertProblem(
      await call(b, 'GET', `/t/${a.slug}/v1/templates/${template.id}`),
      403,
      'TENANTRY_ERR_TENANT_MISMATCH',
    );
    assertProblem(
      await call(b, 'POST', `/t/${a.slug}/v1/templates`, {
        body: { name: 'intruder', language: 'en', category: 'utility', body: 'x' },
      }),
      403,
      'TENANTRY_ERR_TENANT_MISMATCH',
    );
    assertProblem(
      await call(b, 'DELETE', `/t/${a.slug}/v1/templates/${template.id}`),
      403,
      'TENANTRY_ERR_TENANT_MISMATCH',
    );
    assert.equal(await count('message_templates', a), before);
    assert.ok(await rowOf('message_templates', template.id));
  });
});
