// A property test of tenant isolation under concurrency: fast-check generates random programs of
// 2 to 5 workspaces calling the contacts, tags, conversations and messages routes (creates, lists,
// reads, updates, and probes with another workspace's ids), run concurrently against reference
// apps whose Tenantry pools hold 1 to 4 connections. Every response is checked by
// `findForeignData()`: no id or marker of another workspace, no unknown id, no `tenantId` but the
// requester's. Probes must answer exactly like a missing id. Every row written lands in its
// requester's workspace. TENANTRY_LONG=1 runs many more programs.
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import type { LightMyRequestResponse } from 'fastify';
import { createTenantDirectory, createTenantry } from 'tenantry';
import { buildApp } from '../app/app.ts';
import type { AppDatabase } from '../app/database.ts';
import type { AppInstance } from '../app/http/types.ts';
import {
  bodyOf,
  createTestApp,
  createWorkspace,
  queryAsAdmin,
  type TestApp,
  type TestWorkspace,
} from './app-fixtures.ts';

const long = process.env.TENANTRY_LONG === '1';
const numRuns = long ? 400 : 40;
const poolSizes = [1, 2, 3, 4] as const;
const maxWorkspaces = 5;

let testApp: TestApp;
/** One app per pool size, all on the same database. */
const apps: AppInstance[] = [];
const workspaces: TestWorkspace[] = [];

type Kind = 'contact' | 'tag' | 'conversation' | 'message';
const kinds: readonly Kind[] = ['contact', 'tag', 'conversation', 'message'];

/** Which workspace (index into `workspaces`) each id or marker belongs to. */
const owners = new Map<string, number>();
/** The ids each workspace created, by kind. */
const created: Record<Kind, string[]>[] = [];

before(async () => {
  testApp = await createTestApp();
  for (let index = 0; index < maxWorkspaces; index++) {
    const workspace = await createWorkspace(testApp, `prop-${index}-${process.pid.toString(36)}`);
    workspaces.push(workspace);
    owners.set(workspace.tenantId, index);
    owners.set(workspace.userId, index);
    created.push({ contact: [], tag: [], conversation: [], message: [] });
  }
  // Every workspace starts with a row of each kind, so probes have targets from the first step.
  for (const [index, workspace] of workspaces.entries()) {
    await seedRows(index, workspace);
  }
  for (const maxConnections of poolSizes) {
    const app = await buildApp({
      tenantry: await createTenantry<AppDatabase>({
        connectionString: testApp.database.appUrl,
        maxConnections,
        ...(testApp.tenantSchema === undefined ? {} : { tenantSchema: testApp.tenantSchema }),
      }),
      directory: await createTenantDirectory({ connectionString: testApp.database.appUrl }),
      auth: testApp.auth,
      pendingMigrations: async () => [],
    });
    await app.ready();
    apps.push(app);
  }
});

async function seedRows(index: number, workspace: TestWorkspace): Promise<void> {
  const post = async (kind: Kind, url: string, body: unknown) => {
    const response = await testApp.app.inject({
      method: 'POST',
      url,
      headers: workspace.headers,
      payload: body as object,
    });
    assert.equal(response.statusCode, 201, response.body);
    const id = bodyOf(response).id as string;
    owners.set(id, index);
    created[index]?.[kind].push(id);
    return id;
  };
  const tag = await post('tag', '/v1/tags', { name: newMarker(index) });
  const contact = await post('contact', '/v1/contacts', { name: newMarker(index), tagIds: [tag] });
  const conversation = await post('conversation', '/v1/conversations', {
    contactId: contact,
    subject: newMarker(index),
  });
  await post('message', `/v1/conversations/${conversation}/messages`, { body: newMarker(index) });
}

after(async () => {
  for (const app of apps) await app.close();
  await testApp?.close();
});

/** A response as the checker sees it: who asked, what they sent, what came back. */
interface ObservedResponse {
  /** Index of the requesting workspace. */
  readonly requester: number;
  readonly request: string;
  readonly status: number;
  readonly body: string;
  readonly headers: Readonly<Record<string, unknown>>;
}

const uuidPattern = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi;
/** Names, subjects and texts the programs write carry a marker: `mk<16 hex>`. */
const markerPattern = /mk[0-9a-f]{16}/g;
const tenantKeys = new Set(['tenantId', 'tenant_id', 'workspaceId', 'workspace_id']);

function newMarker(owner: number): string {
  const marker = `mk${randomBytes(8).toString('hex')}`;
  owners.set(marker, owner);
  return marker;
}

/**
 * Everything in a response that does not belong to its requester: ids and markers of other
 * workspaces (in the body or any header), ids the test never saw created (in the body), and
 * tenant fields naming another workspace. An empty list means the response is clean.
 */
function findForeignData(
  response: ObservedResponse,
  ownerOf: ReadonlyMap<string, number>,
  tenantIds: readonly string[],
): string[] {
  const found: string[] = [];
  const report = (token: string, where: string) => {
    const owner = ownerOf.get(token);
    if (owner === undefined) {
      if (where === 'body' && token.startsWith('mk') === false) {
        found.push(`unknown id ${token} in the body`);
      }
      return;
    }
    if (owner !== response.requester) {
      found.push(`${token} of workspace ${owner} in the ${where}`);
    }
  };
  for (const token of response.body.match(uuidPattern) ?? []) {
    report(token.toLowerCase(), 'body');
  }
  for (const token of response.body.match(markerPattern) ?? []) report(token, 'body');
  const headers = Object.entries(response.headers)
    .map(([name, value]) => `${name}: ${String(value)}`)
    .join('\n');
  for (const token of headers.match(uuidPattern) ?? []) {
    const owner = ownerOf.get(token.toLowerCase());
    if (owner !== undefined && owner !== response.requester) {
      found.push(`${token} of workspace ${owner} in the headers`);
    }
  }
  const walk = (value: unknown): void => {
    if (Array.isArray(value)) {
      for (const item of value) walk(item);
    } else if (typeof value === 'object' && value !== null) {
      for (const [key, item] of Object.entries(value)) {
        if (tenantKeys.has(key) && item !== tenantIds[response.requester]) {
          found.push(`${key} ${JSON.stringify(item)} is not the requester's workspace`);
        }
        walk(item);
      }
    }
  };
  if (response.body.length > 0) {
    try {
      walk(JSON.parse(response.body));
    } catch {
      found.push('the body is not JSON');
    }
  }
  return found;
}

/** One generated step: which workspace, which operation, and seeds for the ids it uses. */
interface Step {
  readonly actor: number;
  readonly op: Op;
  readonly pick: number;
  readonly foreign: number;
  readonly pool: number;
}

type Op =
  | 'contact.create'
  | 'contact.list'
  | 'contact.get'
  | 'contact.update'
  | 'contact.tag'
  | 'tag.create'
  | 'tag.list'
  | 'tag.get'
  | 'tag.update'
  | 'conversation.create'
  | 'conversation.list'
  | 'conversation.get'
  | 'conversation.update'
  | 'message.create'
  | 'message.list'
  | 'probe.read'
  | 'probe.update'
  | 'probe.reference';

const ops: readonly Op[] = [
  'contact.create',
  'contact.list',
  'contact.get',
  'contact.update',
  'contact.tag',
  'tag.create',
  'tag.list',
  'tag.get',
  'tag.update',
  'conversation.create',
  'conversation.list',
  'conversation.get',
  'conversation.update',
  'message.create',
  'message.list',
  'probe.read',
  'probe.update',
  'probe.reference',
];

interface Program {
  /** The workspaces taking part (indexes into `workspaces`), 2 to 5. */
  readonly tenants: readonly number[];
  /** Indexes into `apps` the steps spread over (pool sizes 1 to 4). */
  readonly pools: readonly number[];
  /** Steps in flight at once. */
  readonly concurrency: number;
  readonly steps: readonly Step[];
}

const programArbitrary: fc.Arbitrary<Program> = fc
  .record({
    tenants: fc.shuffledSubarray([0, 1, 2, 3, 4], { minLength: 2, maxLength: maxWorkspaces }),
    pools: fc.shuffledSubarray([0, 1, 2, 3], { minLength: 1, maxLength: poolSizes.length }),
    concurrency: fc.integer({ min: 1, max: 8 }),
    steps: fc.array(
      fc.record({
        actor: fc.nat(),
        // Probes with another workspace's ids are drawn as often as all the creates together.
        op: fc.constantFrom(...ops, 'probe.read', 'probe.update', 'probe.reference'),
        pick: fc.nat(),
        foreign: fc.nat(),
        pool: fc.nat(),
      }),
      { minLength: 10, maxLength: 40, size: 'max' },
    ),
  })
  .map((program) => ({
    ...program,
    steps: program.steps.map((step) => ({
      ...step,
      actor: program.tenants[step.actor % program.tenants.length] as number,
    })),
  }));

interface Call {
  readonly method: 'GET' | 'POST' | 'PATCH' | 'PUT';
  readonly url: string;
  readonly body?: unknown;
  readonly headers?: Record<string, string>;
}

/** Runs one step and returns what it observed; throws when a status is not one it allows. */
async function runStep(program: Program, step: Step, observed: ObservedResponse[]): Promise<void> {
  const app = apps[program.pools[step.pool % program.pools.length] as number] as AppInstance;
  const self = step.actor;
  const workspace = workspaces[self] as TestWorkspace;
  const mine = created[self] as Record<Kind, string[]>;
  const own = (kind: Kind): string | undefined => {
    const ids = mine[kind];
    return ids.length === 0 ? undefined : ids[step.pick % ids.length];
  };
  const foreignOf = (kind: Kind): string | undefined => {
    const others = program.tenants.filter((index) => index !== self);
    const other = others[step.foreign % others.length] as number;
    const ids = (created[other] as Record<Kind, string[]>)[kind];
    return ids.length === 0 ? undefined : ids[step.pick % ids.length];
  };
  const send = async (call: Call, allowed: readonly number[]) => {
    const response: LightMyRequestResponse = await app.inject({
      method: call.method,
      url: call.url,
      headers: { ...workspace.headers, ...call.headers },
      ...(call.body === undefined ? {} : { payload: call.body as object }),
    });
    const request = `${call.method} ${call.url} ${JSON.stringify(call.body ?? null)} (workspace ${self})`;
    observed.push({
      requester: self,
      request,
      status: response.statusCode,
      body: response.body,
      headers: response.headers,
    });
    assert.ok(
      allowed.includes(response.statusCode),
      `${request} answered ${response.statusCode}, expected ${allowed.join('/')}: ${response.body}`,
    );
    return response;
  };
  const register = (kind: Kind, response: LightMyRequestResponse) => {
    if (response.statusCode >= 300) return;
    const id = bodyOf(response).id as string;
    owners.set(id, self);
    mine[kind].push(id);
  };
  const list = (kind: Kind) => {
    const conversation = own('conversation');
    if (kind === 'message' && conversation !== undefined) {
      return send({ method: 'GET', url: `/v1/conversations/${conversation}/messages` }, [200]);
    }
    const path = kind === 'tag' ? 'tags' : kind === 'conversation' ? 'conversations' : 'contacts';
    return send({ method: 'GET', url: `/v1/${path}?limit=100` }, [200]);
  };
  /** A probe must answer exactly as the same request with an id nobody has. */
  const probe = async (make: (id: string) => Call, foreignId: string) => {
    const call = make(foreignId);
    const attempt = await send(call, [200, 404, 412, 422]);
    const missingId = randomUUID();
    const missing = await send(make(missingId), [200, 404, 412, 422]);
    assert.equal(attempt.statusCode, missing.statusCode, `${call.method} ${call.url}`);
    assert.equal(
      attempt.body.replaceAll(foreignId, '<id>'),
      missing.body.replaceAll(missingId, '<id>'),
      'another workspace’s id is answered exactly like a missing one',
    );
  };

  switch (step.op) {
    case 'contact.create': {
      const tag = own('tag');
      register(
        'contact',
        await send(
          {
            method: 'POST',
            url: '/v1/contacts',
            body: { name: newMarker(self), ...(tag === undefined ? {} : { tagIds: [tag] }) },
          },
          [201],
        ),
      );
      return;
    }
    case 'tag.create':
      register(
        'tag',
        await send({ method: 'POST', url: '/v1/tags', body: { name: newMarker(self) } }, [201]),
      );
      return;
    case 'conversation.create': {
      const contact = own('contact');
      if (contact === undefined) {
        await list('contact');
        return;
      }
      register(
        'conversation',
        await send(
          {
            method: 'POST',
            url: '/v1/conversations',
            body: { contactId: contact, subject: newMarker(self) },
          },
          [201],
        ),
      );
      return;
    }
    case 'message.create': {
      const conversation = own('conversation');
      if (conversation === undefined) {
        await list('conversation');
        return;
      }
      register(
        'message',
        await send(
          {
            method: 'POST',
            url: `/v1/conversations/${conversation}/messages`,
            body: { body: newMarker(self) },
          },
          [201],
        ),
      );
      return;
    }
    case 'contact.list':
      await list('contact');
      return;
    case 'tag.list':
      await list('tag');
      return;
    case 'conversation.list':
      await list('conversation');
      return;
    case 'message.list':
      await list('message');
      return;
    case 'contact.get':
    case 'tag.get':
    case 'conversation.get': {
      const kind = step.op.slice(0, step.op.indexOf('.')) as Kind;
      const id = own(kind);
      if (id === undefined) {
        await list(kind);
        return;
      }
      await send({ method: 'GET', url: `/v1/${kind}s/${id}` }, [200]);
      return;
    }
    case 'contact.update':
    case 'conversation.update': {
      const kind = step.op.slice(0, step.op.indexOf('.')) as Kind;
      const id = own(kind);
      if (id === undefined) {
        await list(kind);
        return;
      }
      const read = await send({ method: 'GET', url: `/v1/${kind}s/${id}` }, [200]);
      const body =
        kind === 'contact'
          ? { name: newMarker(self) }
          : { subject: newMarker(self), status: step.pick % 2 === 0 ? 'open' : 'closed' };
      // Another step may update the same row in between: 412 is the answer then.
      await send(
        {
          method: 'PATCH',
          url: `/v1/${kind}s/${id}`,
          body,
          headers: { 'if-match': String(read.headers.etag) },
        },
        [200, 412],
      );
      return;
    }
    case 'tag.update': {
      const id = own('tag');
      if (id === undefined) {
        await list('tag');
        return;
      }
      await send(
        { method: 'PATCH', url: `/v1/tags/${id}`, body: { name: newMarker(self) } },
        [200],
      );
      return;
    }
    case 'contact.tag': {
      const contact = own('contact');
      const tag = own('tag');
      if (contact === undefined || tag === undefined) {
        await list('tag');
        return;
      }
      await send({ method: 'PUT', url: `/v1/contacts/${contact}/tags/${tag}` }, [204]);
      return;
    }
    case 'probe.read': {
      const kind = kinds[step.pick % 3] as Kind;
      const id = foreignOf(kind);
      if (id === undefined) {
        await list(kind);
        return;
      }
      await probe((target) => ({ method: 'GET', url: `/v1/${kind}s/${target}` }), id);
      if (kind === 'conversation') {
        await probe(
          (target) => ({ method: 'GET', url: `/v1/conversations/${target}/messages` }),
          id,
        );
      }
      return;
    }
    case 'probe.update': {
      const kind = kinds[step.pick % 3] as Kind;
      const id = foreignOf(kind);
      if (id === undefined) {
        await list(kind);
        return;
      }
      const body =
        kind === 'contact'
          ? { name: newMarker(self) }
          : kind === 'tag'
            ? { name: newMarker(self) }
            : { subject: newMarker(self) };
      await probe(
        (target) => ({
          method: 'PATCH',
          url: `/v1/${kind}s/${target}`,
          body,
          headers: { 'if-match': `"${target}.1"` },
        }),
        id,
      );
      return;
    }
    case 'probe.reference': {
      const which = step.pick % 5;
      if (which === 0 || which === 1) {
        const contact = foreignOf('contact');
        if (contact === undefined) break;
        if (which === 0) {
          await probe(
            (target) => ({ method: 'POST', url: '/v1/conversations', body: { contactId: target } }),
            contact,
          );
        } else {
          await probe(
            (target) => ({ method: 'GET', url: `/v1/conversations?contactId=${target}` }),
            contact,
          );
        }
        return;
      }
      const tag = foreignOf('tag');
      if (tag === undefined) break;
      if (which === 2) {
        await probe(
          (target) => ({
            method: 'POST',
            url: '/v1/contacts',
            body: { name: newMarker(self), tagIds: [target] },
          }),
          tag,
        );
      } else if (which === 3) {
        await probe((target) => ({ method: 'GET', url: `/v1/contacts?tagId=${target}` }), tag);
      } else {
        const contact = own('contact');
        if (contact === undefined) break;
        await probe(
          (target) => ({ method: 'PUT', url: `/v1/contacts/${contact}/tags/${target}` }),
          tag,
        );
      }
      return;
    }
  }
  await list('contact');
}

async function runConcurrently(
  tasks: readonly (() => Promise<void>)[],
  limit: number,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, tasks.length) }, async () => {
      while (next < tasks.length) {
        const task = tasks[next++] as () => Promise<void>;
        await task();
      }
    }),
  );
}

const tables: Record<Kind, string> = {
  contact: 'contacts',
  tag: 'tags',
  conversation: 'conversations',
  message: 'messages',
};

/** Every id a workspace created is stored under that workspace, and nowhere else. */
async function assertRowsWhereTheyBelong(): Promise<void> {
  for (const kind of kinds) {
    const ids = created.flatMap((byKind) => byKind[kind]);
    if (ids.length === 0) continue;
    const rows = await queryAsAdmin<{ id: string; tenant_id: string }>(
      testApp,
      `select id::text, tenant_id::text from ${tables[kind]} where id = any($1::uuid[])`,
      [ids],
    );
    assert.equal(rows.length, ids.length, `every created ${kind} is stored once`);
    for (const row of rows) {
      const owner = owners.get(row.id);
      assert.equal(row.tenant_id, workspaces[owner ?? -1]?.tenantId, `${kind} ${row.id}`);
    }
  }
}

test('random concurrent programs of 2-5 workspaces on pools of 1-4 connections only ever see their own rows', {
  timeout: long ? 30 * 60_000 : 120_000,
}, async () => {
  const tenantIds = workspaces.map((workspace) => workspace.tenantId);
  let responses = 0;
  await fc.assert(
    fc.asyncProperty(programArbitrary, async (program) => {
      const observed: ObservedResponse[] = [];
      await runConcurrently(
        program.steps.map((step) => () => runStep(program, step, observed)),
        program.concurrency,
      );
      for (const response of observed) {
        const foreign = findForeignData(response, owners, tenantIds);
        assert.deepEqual(foreign, [], `${response.request} -> ${response.status}`);
      }
      responses += observed.length;
    }),
    { numRuns, endOnFailure: true },
  );
  assert.ok(responses >= numRuns * 4, `${responses} responses checked`);
  await assertRowsWhereTheyBelong();
});

test('negative control: the checker reports another workspace’s ids, markers and tenant fields', async () => {
  const tenantIds = workspaces.map((workspace) => workspace.tenantId);
  const probeOwners = new Map(owners);
  const ownId = randomUUID();
  const foreignId = randomUUID();
  const foreignMarker = `mk${randomBytes(8).toString('hex')}`;
  probeOwners.set(ownId, 0);
  probeOwners.set(foreignId, 1);
  probeOwners.set(foreignMarker, 1);
  const response = (body: unknown, headers: Record<string, unknown> = {}): ObservedResponse => ({
    requester: 0,
    request: 'GET /v1/contacts',
    status: 200,
    body: JSON.stringify(body),
    headers,
  });
  const clean = response({ items: [{ id: ownId, name: 'mine' }], nextCursor: null });
  assert.deepEqual(findForeignData(clean, probeOwners, tenantIds), []);
  const cases: [string, ObservedResponse][] = [
    ['a foreign id in a list', response({ items: [{ id: ownId }, { id: foreignId }] })],
    ['a foreign id in upper case', response({ id: foreignId.toUpperCase() })],
    ['a foreign id inside text', response({ detail: `row ${foreignId} exists` })],
    ['a foreign marker', response({ id: ownId, name: `Hi ${foreignMarker}` })],
    ['an id nobody created', response({ id: randomUUID() })],
    ['a tenant field of another workspace', response({ id: ownId, tenantId: tenantIds[1] })],
    ['a snake_case tenant field', response({ items: [{ id: ownId, tenant_id: tenantIds[2] }] })],
    ['a foreign id in a header', response({ id: ownId }, { etag: `"${foreignId}.1"` })],
  ];
  for (const [name, observed] of cases) {
    assert.notDeepEqual(findForeignData(observed, probeOwners, tenantIds), [], name);
  }

  // A list read past RLS (as the superuser) holds every workspace's contacts: all but the
  // requester's are reported.
  const everyone = await queryAsAdmin<{ id: string; name: string; tenant_id: string }>(
    testApp,
    'select id::text, name, tenant_id::text from contacts',
  );
  const byOthers = everyone.filter((row) => row.tenant_id !== tenantIds[0]);
  assert.ok(byOthers.length > 0, 'the property test created contacts in other workspaces');
  const leaked = findForeignData(
    response({ items: everyone.map(({ id, name }) => ({ id, name })) }),
    owners,
    tenantIds,
  );
  assert.ok(leaked.length >= byOthers.length, leaked.join('\n'));
});
