import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import pg from 'pg';
import {
  type AttackFinding,
  type AttackFindingKind,
  type AttackTenant,
  assertNoFindings,
  createFetchRequester,
  createInjectRequester,
  runTenantAttackSuite,
  type TenantAttackReport,
} from 'tenantry/testing';
import {
  addMember,
  bodyOf,
  createTestApp,
  createWorkspace,
  queryAsAdmin,
  type TestApp,
  type TestWorkspace,
} from './app-fixtures.ts';

/**
 * A's rows in every table with a `tenant_id` column (every schema), A's tenant row and A's
 * owner, as a row count and an md5 per table, read on one superuser connection.
 */
async function openTenantSnapshot(
  testApp: TestApp,
  tenantId: string,
  userId: string,
): Promise<{ read(): Promise<Record<string, string>>; close(): Promise<void> }> {
  const tables = await queryAsAdmin<{ schema: string; name: string }>(
    testApp,
    `select n.nspname as schema, c.relname as name from pg_class c
       join pg_namespace n on n.oid = c.relnamespace
      where c.relkind in ('r', 'p') and not c.relispartition
        and n.nspname not in ('pg_catalog', 'information_schema', 'test_all_tenants')
        and n.nspname not like 'pg\\_%' and n.nspname <> all($1::text[])
        and exists (select 1 from pg_attribute a where a.attrelid = c.oid
                     and a.attname = 'tenant_id' and not a.attisdropped)
      order by 1, 2`,
    // Dedicated workspace schemas are read through search_path instead (below).
    [[...testApp.schemas.values()]],
  );
  assert.ok(tables.length >= 20, `expected the app's tenant tables, found ${tables.length}`);
  const digest = (label: string, from: string, where: string) =>
    `select '${label}' as name, count(*)::int as rows, md5(coalesce(string_agg(t::text, '|' order by t::text), '')) as md5 from ${from} t where ${where}`;
  const text = [
    ...tables.map(({ schema, name }) =>
      // Unqualified public tables resolve to the workspace's own schema when it is placed in one.
      digest(
        `${schema}.${name}`,
        schema === 'public' ? `"${name}"` : `"${schema}"."${name}"`,
        't.tenant_id = $1',
      ),
    ),
    digest('tenantry.tenants', 'tenantry.tenants', 't.id = $1'),
    digest('auth.users', 'auth.users', 't.id = $2'),
  ].join(' union all ');
  const client = new pg.Client({ connectionString: testApp.database.adminUrl });
  await client.connect();
  const schema = testApp.schemas.get(tenantId);
  await client.query(`select set_config('search_path', $1, false)`, [
    schema === undefined ? 'public' : `"${schema}", public`,
  ]);
  return {
    async read() {
      const { rows } = await client.query<{ name: string; rows: number; md5: string }>(text, [
        tenantId,
        userId,
      ]);
      return Object.fromEntries(rows.map((row) => [row.name, `${row.rows}:${row.md5}`]));
    },
    close: () => client.end(),
  };
}

describe('the attack suite against the reference app', () => {
  let testApp: TestApp;
  let a: TestWorkspace;
  let b: TestWorkspace;
  let report: TenantAttackReport;
  let openapi: { paths: Record<string, Record<string, unknown>> };
  let snapshots = 0;
  let snapshot: Awaited<ReturnType<typeof openTenantSnapshot>>;
  const digestMarker = '987654321';

  before(async () => {
    testApp = await createTestApp();
    const suffix = randomBytes(3).toString('hex');
    a = await createWorkspace(testApp, `attack-a-${suffix}`);
    b = await createWorkspace(testApp, `attack-b-${suffix}`);
    // A second member gives A's member list a second page (a cursor to steal).
    await addMember(testApp, a, 'member');
    for (const workspace of [a, b]) {
      // The suite sends several hundred requests per minute: no plan limit may answer 429.
      await queryAsAdmin(
        testApp,
        `insert into tenantry.tenant_limit_overrides (tenant_id, metric, limit_value)
         values ($1, 'api_requests_per_minute', null)`,
        [workspace.tenantId],
      );
    }
    // Digests are written by a nightly job; two days each, and a count only A's digest has, so a
    // digest of A in B's responses shows.
    for (const [workspace, month, messagesIn] of [
      [a, '01', Number(digestMarker)],
      [b, '02', 2],
    ] as const) {
      await queryAsAdmin(
        testApp,
        `insert into conversation_digests
           (tenant_id, day, conversations_opened, conversations_active, messages_in, messages_out)
         select $1, ('2025-' || $2 || '-0' || n)::date, 1, 1, $3, 1 from generate_series(1, 2) n`,
        [workspace.tenantId, month, messagesIn],
      );
    }
    const constraints = await queryAsAdmin<{ name: string }>(
      testApp,
      `select distinct conname as name from pg_constraint c
         join pg_namespace n on n.oid = c.connamespace
        where n.nspname in ('public', 'auth', 'tenantry') and length(conname) >= 8`,
    );
    snapshot = await openTenantSnapshot(testApp, a.tenantId, a.userId);
    openapi = bodyOf(await testApp.app.inject({ method: 'GET', url: '/openapi.json' }));
    const tenant = (workspace: TestWorkspace, values: string[]): AttackTenant => ({
      headers: workspace.headers,
      tenantId: workspace.tenantId,
      pathParameters: { workspace: workspace.slug },
      values: [workspace.email, workspace.userId, ...values],
    });
    report = await runTenantAttackSuite({
      openapi,
      request: createInjectRequester(testApp.app),
      tenants: { a: tenant(a, [digestMarker]), b: tenant(b, []) },
      pathPrefixes: ['/v1', '/t/{workspace}/v1'],
      references: { assigneeId: 'user', assignee: 'user', attachmentIds: 'file' },
      routes: {
        // A file is created in three steps: ask for an upload URL, PUT the bytes there, confirm
        // (the suite runs POST /files/{id}/confirm itself, as a child route of /files).
        'POST /files': {
          body: (context) => ({
            fileName: `${context.unique()}.txt`,
            size: 5,
            contentType: 'text/plain',
          }),
          async afterCreate(created) {
            const { upload } = created as {
              upload: { url: string; headers: Record<string, string> };
            };
            const url = new URL(upload.url);
            const response = await testApp.app.inject({
              method: 'PUT',
              url: url.pathname + url.search,
              headers: upload.headers,
              payload: 'hello',
            });
            assert.equal(response.statusCode, 204, response.body);
          },
        },
      },
      forbiddenPatterns: constraints.map(({ name }) => name),
      snapshot: () => {
        snapshots += 1;
        return snapshot.read();
      },
    });
  });
  after(async () => {
    await snapshot?.close();
    await testApp?.close();
  });

  test('finds no leak, accepted write, changed row, server error or unhygienic response', () => {
    assertNoFindings(report);
    assert.ok(report.attempts >= 300, `only ${report.attempts} attacks`);
    assert.ok(report.tenantAValues >= 40, `only ${report.tenantAValues} values of A searched for`);
  });

  test('attacks every /v1 operation, under both prefixes, or says why not', () => {
    const isWorkspaceRoute = (path: string) =>
      path.startsWith('/v1/') || path.startsWith('/t/{workspace}/v1/');
    const documented = Object.entries(openapi.paths)
      .filter(([path]) => isWorkspaceRoute(path))
      .flatMap(([path, item]) =>
        Object.keys(item)
          .filter((method) => method !== 'parameters')
          .map((method) => `${method.toUpperCase()} ${path}`),
      );
    const workspaceRoutes = report.operations.filter((operation) =>
      isWorkspaceRoute(operation.path),
    );
    assert.deepEqual(
      workspaceRoutes.map((operation) => operation.operation).sort(),
      documented.sort(),
    );
    assert.ok(documented.length >= 90, `only ${documented.length} workspace operations`);
    const uncovered = workspaceRoutes.filter((operation) =>
      operation.status === 'attacked'
        ? operation.attempts.length === 0
        : (operation.reason ?? '') === '',
    );
    assert.deepEqual(
      uncovered.map((operation) => operation.operation),
      [],
    );
    // Nothing under /v1 needs skipping; the routes left out are the ones without credentials.
    const skipped = report.operations.filter((operation) => operation.status === 'skipped');
    assert.deepEqual(skipped.map((operation) => operation.operation).sort(), [
      'POST /auth/invitations/accept',
      'POST /auth/login',
      'POST /auth/logout',
      'POST /auth/refresh',
      'POST /auth/signup',
      'POST /t/{workspace}/webhooks/inbound',
    ]);
    for (const operation of workspaceRoutes.filter((entry) => entry.path.startsWith('/t/'))) {
      assert.ok(
        operation.attempts.some((attempt) => attempt.kind === 'tenant-address'),
        `${operation.operation} was not tried with A's workspace in the path`,
      );
    }
  });

  test('creates objects of A through every creating route, children included', () => {
    const created = new Map(
      report.setup.filter((step) => step.tenant === 'a').map((step) => [step.operation, step]),
    );
    for (const operation of [
      'POST /v1/tags',
      'POST /v1/contacts',
      'POST /v1/conversations',
      'POST /v1/conversations/{id}/messages',
      'POST /v1/templates',
      'POST /v1/broadcasts',
      'POST /v1/files',
      'POST /v1/files/{id}/confirm',
      'POST /v1/exports/contacts',
      'POST /v1/invitations',
      'POST /v1/api-keys',
      'POST /v1/workspace/webhook-secret',
    ]) {
      const step = created.get(operation);
      assert.ok((step?.created ?? 0) >= 2, `${operation}: ${JSON.stringify(step)}`);
    }
  });

  test("every control (B's own ids) succeeds, so the refusals come from the tenant boundary", () => {
    const failed = report.operations.flatMap((operation) =>
      operation.controls
        .filter((control) => control.status < 200 || control.status >= 300)
        .map((control) => `${operation.operation} ${control.target} -> ${control.status}`),
    );
    assert.deepEqual(failed, []);
    const controlled = report.operations.filter((operation) => operation.controls.length > 0);
    assert.ok(controlled.length >= 40, `only ${controlled.length} operations with a control`);
  });

  test('runs every kind of attack where it applies', () => {
    const kinds = (operation: string) =>
      new Set(
        report.operations
          .find((entry) => entry.operation === operation)
          ?.attempts.map((attempt) => `${attempt.kind} ${attempt.target}`),
      );
    const expectations: [string, string][] = [
      ['GET /v1/contacts/{id}', 'path-id path {id}'],
      ['PATCH /v1/contacts/{id}', 'path-id path {id}'],
      ['DELETE /v1/contacts/{id}', 'path-id path {id}'],
      ['PUT /v1/contacts/{id}/tags/{tagId}', 'path-id path {tagId}'],
      ['PUT /v1/contacts/{id}/tags/{tagId}', 'path-id path (every id of A)'],
      ['DELETE /v1/members/{userId}', 'path-id path {userId}'],
      ['GET /v1/digests/{day}', 'path-id path {day}'],
      ['GET /v1/contacts', 'query-id query tagId'],
      ['GET /v1/contacts', 'query-id query phone'],
      ['GET /v1/contacts', 'query-id query email'],
      ['GET /v1/conversations', 'query-id query contactId'],
      ['GET /v1/conversations', 'query-id query assignee'],
      ['GET /v1/conversations', 'query-id query q'],
      ['GET /v1/contacts', "cursor query cursor (A's cursor)"],
      ['GET /v1/members', "cursor query cursor (A's cursor)"],
      ['GET /v1/digests', "cursor query cursor (A's cursor)"],
      ['GET /v1/conversations/{id}/messages', "cursor query cursor (A's cursor)"],
      ['GET /v1/broadcasts/{id}/recipients', "cursor query cursor (A's cursor)"],
      ['POST /v1/conversations/{id}/messages', 'path-id path {id}'],
      ['POST /v1/conversations/{id}/messages', "body-id body /attachmentIds (B's and A's)"],
      ['POST /v1/conversations/{id}/messages', 'body-id body /templateId'],
      ['POST /v1/broadcasts', "body-id body /tagIds (B's and A's)"],
      ['POST /v1/broadcasts', 'body-id body /templateId'],
      ['POST /v1/contacts', "body-id body /tagIds (B's and A's)"],
      ['POST /v1/conversations', 'body-id body /contactId'],
      ['PATCH /v1/conversations/{id}', 'body-id body /assigneeId'],
      ['POST /v1/files/{id}/confirm', 'path-id path {id}'],
      ['POST /v1/contacts', 'body-tenant body /tenant_id'],
      ['PATCH /v1/tags/{id}', 'body-tenant body /tenantId'],
      ['POST /auth/switch', 'body-address body /workspace of A'],
      ['GET /t/{workspace}/v1/contacts/{id}', 'tenant-address path {workspace} and ids of A'],
    ];
    const missing = expectations.filter(([operation, attack]) => !kinds(operation).has(attack));
    assert.deepEqual(missing, []);
  });

  test("reads A's rows after set-up and after every attacked operation", () => {
    const attacked = report.operations.filter((operation) => operation.status === 'attacked');
    assert.equal(snapshots, attacked.length + 1);
  });

  test("the snapshot sees a change to any of A's rows and none to B's", async () => {
    const change = async (workspace: TestWorkspace) => {
      await queryAsAdmin(testApp, `update tags set name = name || '-x' where tenant_id = $1`, [
        workspace.tenantId,
      ]);
      await queryAsAdmin(
        testApp,
        `update messages set body = body || ' (edited)' where tenant_id = $1`,
        [workspace.tenantId],
      );
      await queryAsAdmin(
        testApp,
        `update tenantry.files set file_name = file_name || '-x' where tenant_id = $1`,
        [workspace.tenantId],
      );
    };
    const initial = await snapshot.read();
    await change(b);
    assert.deepEqual(await snapshot.read(), initial);
    await change(a);
    const changed = await snapshot.read();
    assert.deepEqual(
      Object.keys(initial).filter((table) => initial[table] !== changed[table]),
      ['public.messages', 'public.tags', 'tenantry.files'],
    );
  });
});

/** A deliberately broken API, one hole per switch, with an OpenAPI document written by hand. */
type Hole =
  | 'read'
  | 'write'
  | 'delete'
  | 'child'
  | 'reference'
  | 'filter'
  | 'cursor'
  | 'mass-assignment'
  | 'address'
  | 'sql'
  | 'stack'
  | 'constraint';

interface Item {
  id: string;
  tenantId: string;
  name: string;
  email: string;
  kind: string;
  dueAt: string;
  code: string;
  secret: string;
}
interface Note {
  id: string;
  tenantId: string;
  itemId: string;
  text: string;
}

const itemBody = {
  type: 'object',
  required: ['name', 'email', 'kind', 'dueAt', 'code'],
  properties: {
    name: { type: 'string', minLength: 3, maxLength: 60 },
    email: { type: 'string', format: 'email' },
    kind: { type: 'string', enum: ['plain', 'fancy'] },
    dueAt: { type: 'string', format: 'date-time' },
    code: { type: 'string', pattern: '^[A-Z]{3}-[0-9]{4}$' },
  },
} as const;
const uuidParameter = (name: string, where: 'path' | 'query') => ({
  name,
  in: where,
  required: where === 'path',
  schema: { type: 'string', format: 'uuid' },
});
const json = (schema: object) => ({
  required: true,
  content: { 'application/json': { schema } },
});

function holeyOpenapi(): Record<string, unknown> {
  return {
    openapi: '3.1.0',
    info: { title: 'holey', version: '1' },
    components: { schemas: { ItemBody: itemBody } },
    paths: {
      '/items': {
        post: { requestBody: json({ $ref: '#/components/schemas/ItemBody' }) },
        get: {
          parameters: [
            { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1 } },
            { name: 'cursor', in: 'query', schema: { type: 'string' } },
          ],
        },
      },
      '/items/{id}': {
        parameters: [uuidParameter('id', 'path')],
        get: {},
        patch: {
          requestBody: json({
            type: 'object',
            properties: { name: { type: 'string', minLength: 3 } },
            minProperties: 1,
          }),
        },
        delete: {},
      },
      '/items/{id}/notes': {
        post: {
          parameters: [uuidParameter('id', 'path')],
          requestBody: json({
            type: 'object',
            required: ['text'],
            properties: { text: { type: 'string', minLength: 1 } },
          }),
        },
      },
      '/notes': {
        post: {
          requestBody: json({
            type: 'object',
            required: ['itemId', 'text'],
            properties: {
              itemId: { type: 'string', format: 'uuid' },
              text: { type: 'string', minLength: 1 },
            },
          }),
        },
        get: { parameters: [uuidParameter('itemId', 'query')] },
      },
      '/t/{tenant}/items': {
        get: {
          parameters: [{ name: 'tenant', in: 'path', required: true, schema: { type: 'string' } }],
        },
      },
      '/search': {
        get: { parameters: [{ name: 'q', in: 'query', schema: { type: 'string' } }] },
      },
      '/status': { get: {} },
      '/limits': { get: {} },
      '/login': { post: { security: [], requestBody: json({ type: 'object' }) } },
    },
  };
}

interface HoleyApp {
  readonly app: FastifyInstance;
  readonly tenants: { readonly a: AttackTenant; readonly b: AttackTenant };
  snapshotOfA(): Record<string, unknown>;
}

async function buildHoleyApp(holes: ReadonlySet<Hole>): Promise<HoleyApp> {
  const app = Fastify({ logger: false });
  const tenantIds = { a: randomUUID(), b: randomUUID() };
  const tokens = new Map([
    [randomBytes(16).toString('hex'), tenantIds.a],
    [randomBytes(16).toString('hex'), tenantIds.b],
  ]);
  const tokenOf = (tenantId: string) =>
    [...tokens].find(([, owner]) => owner === tenantId)?.[0] as string;
  const items: Item[] = [];
  const notes: Note[] = [];
  const tenantOf = (request: FastifyRequest, reply: FastifyReply): string | undefined => {
    const token = /^Bearer (\w+)$/.exec(request.headers.authorization ?? '')?.[1];
    const tenantId = token === undefined ? undefined : tokens.get(token);
    if (tenantId === undefined) void reply.code(401).send({ error: 'unauthenticated' });
    return tenantId;
  };
  const notFound = (reply: FastifyReply) => reply.code(404).send({ error: 'not found' });
  const visible = (tenantId: string, hole: Hole) => (item: { tenantId: string }) =>
    holes.has(hole) || item.tenantId === tenantId;

  app.post(
    '/items',
    {
      schema: {
        body: holes.has('mass-assignment')
          ? { ...itemBody, properties: { ...itemBody.properties, tenantId: { type: 'string' } } }
          : { ...itemBody, additionalProperties: false },
      },
    },
    async (request, reply) => {
      const tenantId = tenantOf(request, reply);
      if (tenantId === undefined) return reply;
      const body = request.body as Omit<Item, 'id' | 'tenantId' | 'secret'> & { tenantId?: string };
      const item: Item = {
        ...body,
        id: randomUUID(),
        tenantId: body.tenantId ?? tenantId,
        secret: `secret-${randomBytes(12).toString('hex')}`,
      };
      items.push(item);
      return reply.code(201).send(item);
    },
  );
  app.get('/items', async (request, reply) => {
    const tenantId = tenantOf(request, reply);
    if (tenantId === undefined) return reply;
    const query = request.query as { limit?: string; cursor?: string };
    const limit = Number(query.limit ?? 100);
    const sorted = [...items].sort((left, right) => left.id.localeCompare(right.id));
    const after =
      query.cursor === undefined ? undefined : Buffer.from(query.cursor, 'base64url').toString();
    const page = sorted
      .filter((item) =>
        after !== undefined && holes.has('cursor') ? true : item.tenantId === tenantId,
      )
      .filter((item) => after === undefined || item.id > after);
    const shown = page.slice(0, limit);
    const last = shown.at(-1);
    return {
      items: shown,
      nextCursor:
        page.length > limit && last !== undefined
          ? Buffer.from(last.id).toString('base64url')
          : null,
    };
  });
  app.get('/items/:id', async (request, reply) => {
    const tenantId = tenantOf(request, reply);
    if (tenantId === undefined) return reply;
    const { id } = request.params as { id: string };
    const item = items.filter(visible(tenantId, 'read')).find((entry) => entry.id === id);
    return item ?? notFound(reply);
  });
  app.patch('/items/:id', async (request, reply) => {
    const tenantId = tenantOf(request, reply);
    if (tenantId === undefined) return reply;
    const { id } = request.params as { id: string };
    const item = items.filter(visible(tenantId, 'write')).find((entry) => entry.id === id);
    if (item === undefined) return notFound(reply);
    const { name } = request.body as { name?: string };
    if (name !== undefined) item.name = name;
    return item;
  });
  app.delete('/items/:id', async (request, reply) => {
    const tenantId = tenantOf(request, reply);
    if (tenantId === undefined) return reply;
    const { id } = request.params as { id: string };
    const index = items.findIndex((entry) => entry.id === id && visible(tenantId, 'delete')(entry));
    if (index === -1) return notFound(reply);
    items.splice(index, 1);
    return reply.code(204).send();
  });
  const addNote = (
    tenantId: string,
    itemId: string,
    text: string,
    hole: Hole,
    reply: FastifyReply,
  ) => {
    const parent = items.filter(visible(tenantId, hole)).find((entry) => entry.id === itemId);
    if (parent === undefined) return notFound(reply);
    const note: Note = { id: randomUUID(), tenantId: parent.tenantId, itemId, text };
    if (hole === 'reference') note.tenantId = tenantId;
    notes.push(note);
    return reply.code(201).send(note);
  };
  app.post('/items/:id/notes', async (request, reply) => {
    const tenantId = tenantOf(request, reply);
    if (tenantId === undefined) return reply;
    const { id } = request.params as { id: string };
    return addNote(tenantId, id, (request.body as { text: string }).text, 'child', reply);
  });
  app.post('/notes', async (request, reply) => {
    const tenantId = tenantOf(request, reply);
    if (tenantId === undefined) return reply;
    const body = request.body as { itemId: string; text: string };
    return addNote(tenantId, body.itemId, body.text, 'reference', reply);
  });
  app.get('/notes', async (request, reply) => {
    const tenantId = tenantOf(request, reply);
    if (tenantId === undefined) return reply;
    const { itemId } = request.query as { itemId?: string };
    return notes.filter(
      (note) =>
        (itemId === undefined || note.itemId === itemId) &&
        (note.tenantId === tenantId || (holes.has('filter') && itemId !== undefined)),
    );
  });
  app.get('/t/:tenant/items', async (request, reply) => {
    const tenantId = tenantOf(request, reply);
    if (tenantId === undefined) return reply;
    const { tenant } = request.params as { tenant: string };
    if (tenant !== tenantId && !holes.has('address')) {
      return reply.code(403).send({ error: 'not your tenant' });
    }
    return items.filter((item) => item.tenantId === tenant);
  });
  app.get('/search', async (request, reply) => {
    if (tenantOf(request, reply) === undefined) return reply;
    if (!holes.has('sql')) return { items: [] };
    return reply.code(400).send({
      message:
        'select id, name from items where name ilike $1: relation "items_search" does not exist',
      code: '42P01',
    });
  });
  app.get('/status', async (request, reply) => {
    if (tenantOf(request, reply) === undefined) return reply;
    if (!holes.has('stack')) return { ok: true };
    return reply.code(500).send({
      message: 'boom',
      trace:
        'Error: boom\n    at handler (/srv/app/routes.ts:42:11)\n    at node:internal/process/task_queues:95:5',
    });
  });
  app.get('/limits', async (request, reply) => {
    if (tenantOf(request, reply) === undefined) return reply;
    if (!holes.has('constraint')) return { limits: [] };
    return reply.code(409).send({ detail: 'conflict on items_tenant_id_name_key' });
  });
  await app.ready();
  const credentials = (tenantId: string): AttackTenant => ({
    headers: { authorization: `Bearer ${tokenOf(tenantId)}` },
    tenantId,
    pathParameters: { tenant: tenantId },
  });
  return {
    app,
    tenants: { a: credentials(tenantIds.a), b: credentials(tenantIds.b) },
    snapshotOfA: () => ({
      items: items.filter((item) => item.tenantId === tenantIds.a),
      notes: notes.filter((note) => note.tenantId === tenantIds.a),
    }),
  };
}

async function attackHoleyApp(
  holes: ReadonlySet<Hole>,
  overrides: { readonly b?: AttackTenant; readonly overHttp?: boolean } = {},
): Promise<TenantAttackReport> {
  const holey = await buildHoleyApp(holes);
  try {
    let request = createInjectRequester(holey.app);
    if (overrides.overHttp === true) {
      await holey.app.listen({ host: '127.0.0.1', port: 0 });
      const { port } = holey.app.server.address() as AddressInfo;
      request = createFetchRequester(`http://127.0.0.1:${port}`);
    }
    return await runTenantAttackSuite({
      openapi: holeyOpenapi(),
      request,
      tenants: { a: holey.tenants.a, b: overrides.b ?? holey.tenants.b },
      forbiddenPatterns: ['items_tenant_id_name_key'],
      snapshot: async () => structuredClone(holey.snapshotOfA()),
    });
  } finally {
    await holey.app.close();
  }
}

describe('negative controls: the suite reports each hole of a deliberately broken API', () => {
  const expected: [Hole, string, AttackFindingKind][] = [
    ['read', 'GET /items/{id}', 'leak'],
    ['write', 'PATCH /items/{id}', 'accepted'],
    ['write', 'PATCH /items/{id}', 'snapshot-changed'],
    ['delete', 'DELETE /items/{id}', 'snapshot-changed'],
    ['child', 'POST /items/{id}/notes', 'accepted'],
    ['child', 'POST /items/{id}/notes', 'snapshot-changed'],
    ['reference', 'POST /notes', 'accepted'],
    ['filter', 'GET /notes', 'leak'],
    ['cursor', 'GET /items', 'leak'],
    ['mass-assignment', 'POST /items', 'snapshot-changed'],
    ['mass-assignment', 'POST /items', 'leak'],
    ['address', 'GET /t/{tenant}/items', 'leak'],
    ['sql', 'GET /search', 'hygiene'],
    ['stack', 'GET /status', 'hygiene'],
    ['stack', 'GET /status', 'server-error'],
    ['constraint', 'GET /limits', 'hygiene'],
  ];
  const holes = [...new Set(expected.map(([hole]) => hole))];

  test('the same API without its holes has no finding (over HTTP with fetch)', async () => {
    const report = await attackHoleyApp(new Set(), { overHttp: true });
    assertNoFindings(report);
    const attacked = report.operations.filter((operation) => operation.status === 'attacked');
    assert.equal(attacked.length, 12);
    assert.deepEqual(
      report.operations
        .filter((operation) => operation.status === 'skipped')
        .map((entry) => entry.operation),
      ['POST /login'],
    );
    assert.deepEqual(
      report.setup.map((step) => `${step.tenant} ${step.operation} ${step.created}`).sort(),
      [
        'a POST /items 2',
        'a POST /items/{id}/notes 4',
        'a POST /notes 2',
        'b POST /items 1',
        'b POST /items/{id}/notes 1',
        'b POST /notes 1',
      ],
    );
  });

  for (const hole of holes) {
    test(`hole "${hole}"`, async () => {
      const report = await attackHoleyApp(new Set([hole]));
      const found = (operation: string, kind: AttackFindingKind) =>
        report.findings.some(
          (finding: AttackFinding) => finding.operation === operation && finding.kind === kind,
        );
      for (const [, operation, kind] of expected.filter(([entry]) => entry === hole)) {
        assert.ok(
          found(operation, kind),
          `no ${kind} finding on ${operation}; findings: ${JSON.stringify(report.findings, null, 1)}`,
        );
      }
      assert.throws(() => assertNoFindings(report), /The tenant attack suite found \d+ problem/);
    });
  }

  test('wrong credentials for B make every attack inconclusive, not a pass', async () => {
    const holey = await buildHoleyApp(new Set());
    await holey.app.close();
    const report = await attackHoleyApp(new Set(), {
      b: { ...holey.tenants.b, headers: { authorization: 'Bearer wrong' } },
    });
    const kinds = new Set(report.findings.map((finding) => finding.kind));
    assert.deepEqual([...kinds], ['inconclusive']);
    assert.throws(
      () => assertNoFindings(report),
      (error: Error) => {
        assert.equal(error.name, 'AssertionError');
        assert.match(
          error.message,
          /\[inconclusive\] GET \/items\/\{id\} \(path-id\) GET \/items\//,
        );
        return true;
      },
    );
  });
});
