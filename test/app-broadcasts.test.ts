import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { createTenantry, silentLogger } from 'tenantry';
import {
  createJobAdmin,
  createJobWorker,
  enqueueJob,
  type JobAdmin,
  type JobWorker,
} from 'tenantry/jobs';
import type { Recipient } from '../app/broadcasts/broadcasts.service.ts';
import {
  type ChannelMessage,
  type ChannelProvider,
  createDatabaseChannelProvider,
} from '../app/channels/channel-provider.ts';
import type { AppDatabase } from '../app/database.ts';
import { conversationDigestJob } from '../app/digests/digest.jobs.ts';
import { type AppJobs, type AppJobsConfig, setupJobs } from '../app/jobs.ts';
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
let jobAdmin: JobAdmin;

before(async () => {
  testApp = await createTestApp();
  jobAdmin = createJobAdmin({ connectionString: testApp.database.adminUrl });
});

after(async () => {
  await jobAdmin?.close();
  await testApp?.close();
});

function call(
  as: TestWorkspace,
  method: 'GET' | 'POST',
  url: string,
  options: { body?: unknown; headers?: Record<string, string> } = {},
): Promise<LightMyRequestResponse> {
  return testApp.app.inject({
    method,
    url,
    headers: { ...as.headers, ...options.headers },
    ...(options.body === undefined ? {} : { payload: options.body as object }),
  });
}

function assertProblem(response: LightMyRequestResponse, status: number, code: string) {
  assert.equal(response.statusCode, status, response.body);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
  const body = bodyOf(response);
  assert.equal(body.code, code);
  return body as { code: string; errors?: { pointer: string; message: string }[] };
}

let phoneCounter = 0;
function newPhone(): string {
  phoneCounter += 1;
  return `+5521${String(900000000 + phoneCounter)}`;
}

async function createTag(as: TestWorkspace, name: string): Promise<string> {
  const response = await call(as, 'POST', '/v1/tags', { body: { name } });
  assert.equal(response.statusCode, 201, response.body);
  return bodyOf(response).id;
}

async function createContact(
  as: TestWorkspace,
  name: string,
  tagIds: string[],
  fields: { phone?: string | null; email?: string } = {},
): Promise<{ id: string; name: string; phone: string | null }> {
  const response = await call(as, 'POST', '/v1/contacts', {
    body: {
      name,
      phone: fields.phone === undefined ? newPhone() : fields.phone,
      tagIds,
      ...(fields.email === undefined ? {} : { email: fields.email }),
    },
  });
  assert.equal(response.statusCode, 201, response.body);
  return bodyOf(response);
}

async function createTemplate(as: TestWorkspace, name: string, body: string): Promise<string> {
  const response = await call(as, 'POST', '/v1/templates', {
    body: { name, language: 'en', category: 'marketing', body },
  });
  assert.equal(response.statusCode, 201, response.body);
  return bodyOf(response).id;
}

async function postBroadcast(as: TestWorkspace, body: Record<string, unknown>, headers = {}) {
  return call(as, 'POST', '/v1/broadcasts', { body, headers });
}

async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Runs a worker on `jobs` (fast polling and retries) while `fn` runs, then stops it. */
async function withWorker<T>(jobs: AppJobs, fn: (worker: JobWorker) => Promise<T>): Promise<T> {
  const worker = await createJobWorker({
    tenantry: testApp.tenantry,
    connectionString: testApp.database.adminUrl,
    jobs: jobs.jobs,
    schedules: jobs.schedules,
    pollIntervalMs: 50,
    retry: { baseDelayMs: 10, maxDelayMs: 50 },
    heartbeatIntervalMs: 200,
    staleWorkerAfterMs: 1000,
  });
  try {
    return await fn(worker);
  } finally {
    await worker.stop();
  }
}

async function settledBroadcast(as: TestWorkspace, id: string) {
  return waitFor(`broadcast ${id} to finish`, async () => {
    const response = await call(as, 'GET', `/v1/broadcasts/${id}`);
    assert.equal(response.statusCode, 200, response.body);
    const broadcast = bodyOf(response);
    return broadcast.status === 'completed' || broadcast.status === 'failed'
      ? broadcast
      : undefined;
  });
}

async function allRecipients(as: TestWorkspace, id: string, status?: string) {
  const items: Recipient[] = [];
  let cursor: string | null = null;
  do {
    const query = new URLSearchParams({ limit: '4' });
    if (status !== undefined) query.set('status', status);
    if (cursor !== null) query.set('cursor', cursor);
    const response = await call(as, 'GET', `/v1/broadcasts/${id}/recipients?${query}`);
    assert.equal(response.statusCode, 200, response.body);
    const page = bodyOf(response);
    items.push(...page.items);
    cursor = page.nextCursor;
  } while (cursor !== null);
  return items;
}

async function deliveriesOf(tenantId: string, broadcastId: string) {
  return queryAsAdmin<{
    contact_id: string;
    id: string;
    to_address: string;
    body: string;
    n: number;
  }>(
    testApp,
    `select contact_id, min(id::text) as id, min(to_address) as to_address, min(body) as body,
            count(*)::int as n
       from channel_deliveries
      where tenant_id = $1 and idempotency_key like $2
      group by contact_id`,
    [tenantId, `broadcast:${broadcastId}:%`],
  );
}

async function countRows(table: string, tenantId: string): Promise<number> {
  const rows = await queryAsAdmin<{ n: number }>(
    testApp,
    `select count(*)::int as n from ${table} where tenant_id = $1`,
    [tenantId],
  );
  return rows[0]?.n ?? -1;
}

/**
 * A provider that counts send() calls per key and lets the database provider fail every third
 * new delivery (a fixed sequence at failureRate 0.3: retries happen on every run).
 */
async function countingProvider(): Promise<{
  provider: ChannelProvider;
  calls: Map<string, number>;
  close: () => Promise<void>;
}> {
  const deliveries = await createTenantry<Pick<AppDatabase, 'channel_deliveries'>>({
    connectionString: testApp.database.appUrl,
    maxConnections: 4,
    tenantTables: ['channel_deliveries'],
    ...(testApp.tenantSchema === undefined ? {} : { tenantSchema: testApp.tenantSchema }),
  });
  let draws = 0;
  const inner = createDatabaseChannelProvider({
    tenantry: deliveries,
    failureRate: 0.3,
    random: () => (draws++ % 3 === 0 ? 0 : 0.99),
  });
  const calls = new Map<string, number>();
  return {
    calls,
    provider: {
      send(message: ChannelMessage) {
        calls.set(message.idempotencyKey, (calls.get(message.idempotencyKey) ?? 0) + 1);
        return inner.send(message);
      },
    },
    close: () => deliveries.close(),
  };
}

async function jobsSetup(config: AppJobsConfig): Promise<AppJobs> {
  return setupJobs({
    tenantry: testApp.tenantry,
    appConnectionString: testApp.database.appUrl,
    logger: silentLogger,
    config,
  });
}

describe('sending a broadcast', () => {
  let a: TestWorkspace;
  let vip: string;
  let trial: string;
  let other: string;
  let template: string;
  const expected = new Map<string, { name: string; phone: string | null }>();

  before(async () => {
    a = await createWorkspace(testApp, 'bc-send');
    vip = await createTag(a, 'vip');
    trial = await createTag(a, 'trial');
    other = await createTag(a, 'other');
    for (let i = 0; i < 4; i++) {
      const contact = await createContact(a, `Vip ${i}`, [vip]);
      expected.set(contact.id, contact);
    }
    for (let i = 0; i < 3; i++) {
      const contact = await createContact(a, `Trial ${i}`, [trial]);
      expected.set(contact.id, contact);
    }
    for (let i = 0; i < 2; i++) {
      const contact = await createContact(a, `Both ${i}`, [vip, trial]);
      expected.set(contact.id, contact);
    }
    await createContact(a, 'Other', [other]);
    await createContact(a, 'Untagged', []);
    template = await createTemplate(a, 'spring_sale', 'Hi {{1}}, {{2}}');
  });

  test('every contact with any of the tags gets the message exactly once, though the channel fails and batches are retried', async () => {
    const noPhone = await createContact(a, 'No Phone', [vip], {
      phone: null,
      email: 'nophone@bc-send.test',
    });
    const response = await postBroadcast(a, {
      name: 'Spring sale',
      templateId: template,
      tagIds: [vip, trial],
      variables: [{ contact: 'name' }, 'spring sale today'],
    });
    assert.equal(response.statusCode, 202, response.body);
    const created = bodyOf(response);
    assert.equal(created.status, 'queued');
    assert.deepEqual(created.counts, { total: 10, pending: 10, sent: 0, failed: 0 });
    assert.equal(created.createdBy, a.userId);
    assert.equal(created.body, 'Hi {{1}}, {{2}}');
    const queued = await jobAdmin.listJobs({ tenantId: a.tenantId, task: 'broadcast.dispatch' });
    assert.equal(queued.length, 1);
    assert.equal(queued[0]?.key, `broadcast:${created.id}`);

    const counting = await countingProvider();
    const jobs = await jobsSetup({
      channelProvider: counting.provider,
      broadcastBatchSize: 3,
      broadcastSendAttempts: 30,
    });
    let retried = 0;
    const broadcast = await withWorker(jobs, async (worker) => {
      const done = await settledBroadcast(a, created.id);
      retried = worker.health().retried;
      return done;
    });
    await jobs.close();
    await counting.close();

    assert.equal(broadcast.status, 'completed');
    assert.deepEqual(broadcast.counts, { total: 10, pending: 0, sent: 9, failed: 1 });
    assert.ok(broadcast.startedAt !== null && broadcast.completedAt !== null);
    assert.ok(retried > 0, 'the channel failures made batches retry');
    assert.ok(
      [...counting.calls.values()].some((n) => n > 1),
      'some messages were sent again after a retry',
    );

    const recipients = await allRecipients(a, created.id);
    assert.equal(recipients.length, 10);
    const deliveries = await deliveriesOf(a.tenantId, created.id);
    assert.equal(deliveries.length, 9);
    const byContact = new Map(deliveries.map((row) => [row.contact_id, row]));
    for (const recipient of recipients) {
      if (recipient.contactId === noPhone.id) {
        assert.equal(recipient.status, 'failed');
        assert.match(recipient.lastError ?? '', /no phone number/);
        assert.equal(byContact.has(noPhone.id), false);
        continue;
      }
      const contact = expected.get(recipient.contactId);
      assert.ok(contact, `${recipient.contactId} is one of the tagged contacts`);
      assert.equal(recipient.status, 'sent');
      assert.equal(recipient.lastError, null);
      const delivery = byContact.get(recipient.contactId);
      assert.equal(delivery?.n, 1, `${contact.name} got exactly one message`);
      assert.equal(recipient.providerMessageId, delivery?.id);
      assert.equal(delivery?.to_address, contact.phone);
      assert.equal(delivery?.body, `Hi ${contact.name}, spring sale today`);
    }
    assert.ok(recipients.some((recipient) => recipient.attempts > 1));
    assert.deepEqual(
      (await allRecipients(a, created.id, 'failed')).map((r) => r.contactId),
      [noPhone.id],
    );
    assert.equal((await allRecipients(a, created.id, 'pending')).length, 0);
    const left = await jobAdmin.countJobs(a.tenantId);
    assert.deepEqual(left, { waiting: 0, running: 0, dead: 0, parked: 0 });
  });

  test('when the channel refuses every message, the last attempt marks the recipients failed with the error', async () => {
    const response = await postBroadcast(a, {
      name: 'Doomed',
      templateId: template,
      tagIds: [trial],
      variables: ['friend', 'hello'],
    });
    assert.equal(response.statusCode, 202, response.body);
    const created = bodyOf(response);
    const jobs = await jobsSetup({ channelFailureRate: 1, broadcastSendAttempts: 2 });
    const broadcast = await withWorker(jobs, () => settledBroadcast(a, created.id));
    await jobs.close();

    assert.equal(broadcast.status, 'failed');
    assert.deepEqual(broadcast.counts, { total: 5, pending: 0, sent: 0, failed: 5 });
    const recipients = await allRecipients(a, created.id);
    assert.equal(recipients.length, 5);
    for (const recipient of recipients) {
      assert.equal(recipient.status, 'failed');
      assert.equal(recipient.attempts, 2);
      assert.equal(recipient.providerMessageId, null);
      assert.match(recipient.lastError ?? '', /ChannelUnavailableError: .*simulated failure/);
    }
    assert.deepEqual(await deliveriesOf(a.tenantId, created.id), []);
    const left = await jobAdmin.countJobs(a.tenantId);
    assert.equal(left.dead, 0, 'the batch settled its recipients instead of dying');
  });

  test('a retried POST with the same Idempotency-Key creates one broadcast and one job', async () => {
    const body = { name: 'Once', templateId: template, tagIds: [other], variables: ['x', 'y'] };
    const headers = { 'idempotency-key': `broadcast-${randomUUID()}` };
    const first = await postBroadcast(a, body, headers);
    assert.equal(first.statusCode, 202, first.body);
    const again = await postBroadcast(a, body, headers);
    assert.equal(again.statusCode, 202, again.body);
    assert.equal(again.headers['idempotent-replayed'], 'true');
    assert.equal(bodyOf(again).id, bodyOf(first).id);
    const dispatches = await jobAdmin.listJobs({
      tenantId: a.tenantId,
      task: 'broadcast.dispatch',
      state: 'waiting',
    });
    assert.deepEqual(
      dispatches.map((job) => job.key),
      [`broadcast:${bodyOf(first).id}`],
    );
  });
});

describe('refused broadcasts store nothing and enqueue nothing', () => {
  let a: TestWorkspace;
  let b: TestWorkspace;
  let memberA: TestWorkspace;
  let tagA: string;
  let templateA: string;
  let tagB: string;
  let templateB: string;

  before(async () => {
    a = await createWorkspace(testApp, 'bc-refuse-a');
    b = await createWorkspace(testApp, 'bc-refuse-b');
    memberA = await addMember(testApp, a, 'member');
    tagA = await createTag(a, 'customers');
    templateA = await createTemplate(a, 'news', 'News for {{1}}');
    await createContact(a, 'Ana', [tagA]);
    tagB = await createTag(b, 'customers');
    templateB = await createTemplate(b, 'news', 'B news {{1}}');
    await createContact(b, 'Bea', [tagB]);
  });

  async function assertNothingStored(): Promise<void> {
    assert.equal(await countRows('broadcasts', a.tenantId), 0);
    assert.equal(await countRows('broadcast_recipients', a.tenantId), 0);
    assert.deepEqual(await jobAdmin.listJobs({ tenantId: a.tenantId }), []);
  }

  const valid = () => ({ name: 'News', templateId: templateA, tagIds: [tagA], variables: ['you'] });

  test('an unknown template or another workspace’s template: 422 naming templateId', async () => {
    for (const templateId of [randomUUID(), templateB]) {
      const problem = assertProblem(
        await postBroadcast(a, { ...valid(), templateId }),
        422,
        'TENANTRY_ERR_DB_INVALID_REFERENCE',
      );
      assert.deepEqual(
        problem.errors?.map((error) => error.pointer),
        ['/body/templateId'],
      );
    }
    await assertNothingStored();
  });

  test('a tag of another workspace: 422 naming the tag', async () => {
    const problem = assertProblem(
      await postBroadcast(a, { ...valid(), tagIds: [tagA, tagB] }),
      422,
      'TENANTRY_ERR_DB_INVALID_REFERENCE',
    );
    assert.deepEqual(
      problem.errors?.map((error) => error.pointer),
      ['/body/tagIds/1'],
    );
    await assertNothingStored();
  });

  test('tags no contact has: 422 APP_ERR_BROADCAST_NO_RECIPIENTS', async () => {
    const lonely = await createTag(a, 'lonely');
    assertProblem(
      await postBroadcast(a, { ...valid(), tagIds: [lonely] }),
      422,
      'APP_ERR_BROADCAST_NO_RECIPIENTS',
    );
    await assertNothingStored();
  });

  test('variables that do not fit the template: 422 APP_ERR_TEMPLATE_VARIABLES_INVALID', async () => {
    assertProblem(
      await postBroadcast(a, { ...valid(), variables: [] }),
      422,
      'APP_ERR_TEMPLATE_VARIABLES_INVALID',
    );
    assertProblem(
      await postBroadcast(a, { ...valid(), variables: ['one', 'two'] }),
      422,
      'APP_ERR_TEMPLATE_VARIABLES_INVALID',
    );
    await assertNothingStored();
  });

  test('malformed bodies: 400 (no tags, unknown contact field, tenant_id, status)', async () => {
    for (const body of [
      { ...valid(), tagIds: [] },
      { ...valid(), variables: [{ contact: 'password' }] },
      { ...valid(), tenant_id: b.tenantId },
      { ...valid(), status: 'completed' },
    ]) {
      assertProblem(await postBroadcast(a, body), 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    }
    await assertNothingStored();
  });

  test('a member cannot broadcast (owners and admins only)', async () => {
    assertProblem(await postBroadcast(memberA, valid()), 403, 'TENANTRY_ERR_AUTH_FORBIDDEN');
    await assertNothingStored();
  });
});

describe('workspaces cannot see or send each other’s broadcasts', () => {
  let a: TestWorkspace;
  let b: TestWorkspace;
  let broadcastA: string;
  let recipientA: string;

  before(async () => {
    a = await createWorkspace(testApp, 'bc-iso-a');
    b = await createWorkspace(testApp, 'bc-iso-b');
    const tag = await createTag(a, 'all');
    recipientA = (await createContact(a, 'Secret Customer', [tag])).id;
    const template = await createTemplate(a, 'hello', 'Hello {{1}}');
    const response = await postBroadcast(a, {
      name: 'A only',
      templateId: template,
      tagIds: [tag],
      variables: [{ contact: 'name' }],
    });
    assert.equal(response.statusCode, 202, response.body);
    broadcastA = bodyOf(response).id;
  });

  test("B gets 404 for A's broadcast and its recipients, exactly like a missing one, and does not list it", async () => {
    const missing = await call(b, 'GET', `/v1/broadcasts/${randomUUID()}`);
    assertProblem(missing, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
    const foreign = await call(b, 'GET', `/v1/broadcasts/${broadcastA}`);
    assertProblem(foreign, 404, 'TENANTRY_ERR_HTTP_NOT_FOUND');
    assert.equal(bodyOf(foreign).detail, bodyOf(missing).detail);
    assertProblem(
      await call(b, 'GET', `/v1/broadcasts/${broadcastA}/recipients`),
      404,
      'TENANTRY_ERR_HTTP_NOT_FOUND',
    );
    const list = await call(b, 'GET', '/v1/broadcasts');
    assert.equal(list.statusCode, 200);
    assert.deepEqual(bodyOf(list).items, []);
    const own = await call(a, 'GET', '/v1/broadcasts');
    assert.deepEqual(
      bodyOf(own).items.map((item: { id: string }) => item.id),
      [broadcastA],
    );
  });

  test("a job of B naming A's broadcast and contact sends nothing and changes nothing", async () => {
    await testApp.tenantry.withTenant(b.tenantId, (db) =>
      enqueueJob(db, testApp.jobs.broadcasts.sendBatch, {
        broadcastId: broadcastA,
        contactIds: [recipientA],
      }),
    );
    // A's broadcast is made ready to send without running A's own jobs: only tenant
    // isolation now keeps B's job from sending it.
    await jobAdmin.removeTenantJobs(a.tenantId);
    await queryAsAdmin(testApp, `update broadcasts set status = 'sending' where id = $1`, [
      broadcastA,
    ]);
    const jobs = await jobsSetup({});
    await withWorker(jobs, () =>
      waitFor('B’s job to finish', async () => {
        const counts = await jobAdmin.countJobs(b.tenantId);
        return counts.waiting + counts.running === 0 ? counts : undefined;
      }),
    );
    await jobs.close();
    assert.deepEqual(await jobAdmin.countJobs(b.tenantId), {
      waiting: 0,
      running: 0,
      dead: 0,
      parked: 0,
    });
    const recipients = await queryAsAdmin<{ status: string }>(
      testApp,
      'select status from broadcast_recipients where broadcast_id = $1',
      [broadcastA],
    );
    assert.deepEqual(recipients, [{ status: 'pending' }]);
    assert.equal(await countRows('channel_deliveries', a.tenantId), 0);
    assert.equal(await countRows('channel_deliveries', b.tenantId), 0);
  });
});

describe('the nightly conversation digest', () => {
  let a: TestWorkspace;
  let b: TestWorkspace;
  const period = new Date('2026-03-15T03:00:00.000Z');
  const day = '2026-03-14';

  async function seedTraffic(
    workspace: TestWorkspace,
    plan: { opened: string[]; messages: [string, 'inbound' | 'outbound'][] },
  ): Promise<void> {
    const contact = randomUUID();
    await queryAsAdmin(
      testApp,
      'insert into contacts (tenant_id, id, name, phone) values ($1, $2, $3, $4)',
      [workspace.tenantId, contact, 'Digest contact', newPhone()],
    );
    const conversations: string[] = [];
    for (const createdAt of plan.opened) {
      const id = randomUUID();
      conversations.push(id);
      await queryAsAdmin(
        testApp,
        'insert into conversations (tenant_id, id, contact_id, created_at) values ($1, $2, $3, $4)',
        [workspace.tenantId, id, contact, createdAt],
      );
    }
    for (const [index, [createdAt, direction]] of plan.messages.entries()) {
      await queryAsAdmin(
        testApp,
        `insert into messages (tenant_id, conversation_id, direction, body, created_at)
         values ($1, $2, $3, 'hi', $4)`,
        [workspace.tenantId, conversations[index % conversations.length], direction, createdAt],
      );
    }
  }

  async function digestRows(workspace: TestWorkspace) {
    return queryAsAdmin<Record<string, unknown>>(
      testApp,
      `select day::text as day, conversations_opened, conversations_active, messages_in, messages_out
         from conversation_digests where tenant_id = $1 order by day`,
      [workspace.tenantId],
    );
  }

  before(async () => {
    a = await createWorkspace(testApp, 'bc-digest-a');
    b = await createWorkspace(testApp, 'bc-digest-b');
    await seedTraffic(a, {
      // The first conversation opened the day before and had messages on the day.
      opened: ['2026-03-13T22:00:00Z', '2026-03-14T00:00:00Z', '2026-03-14T23:59:59.999Z'],
      messages: [
        ['2026-03-14T08:00:00Z', 'inbound'],
        ['2026-03-14T09:00:00Z', 'inbound'],
        ['2026-03-14T10:00:00Z', 'outbound'],
        ['2026-03-14T11:00:00Z', 'inbound'],
        ['2026-03-13T23:59:59.999Z', 'inbound'],
        ['2026-03-15T00:00:00Z', 'outbound'],
      ],
    });
    await seedTraffic(b, {
      opened: ['2026-03-14T12:00:00Z'],
      messages: [['2026-03-14T12:30:00Z', 'outbound']],
    });
  });

  test('the schedule summarises the UTC day before its period for each workspace, once per period', async () => {
    const jobs = await jobsSetup({});
    const first = await withWorker(jobs, async (worker) => {
      const fanOut = await worker.runSchedule('conversation-digest', period);
      await waitFor('both digests', async () =>
        (await digestRows(a)).length > 0 && (await digestRows(b)).length > 0 ? true : undefined,
      );
      const again = await worker.runSchedule('conversation-digest', period);
      return { fanOut, again };
    });
    await jobs.close();
    assert.ok(first.fanOut.enqueued >= 2);
    assert.equal(first.again.enqueued, 0);
    assert.equal(first.again.skipped, first.fanOut.enqueued);

    assert.deepEqual(await digestRows(a), [
      {
        day,
        conversations_opened: 2,
        conversations_active: 3,
        messages_in: 3,
        messages_out: 1,
      },
    ]);
    assert.deepEqual(await digestRows(b), [
      { day, conversations_opened: 1, conversations_active: 1, messages_in: 0, messages_out: 1 },
    ]);

    const read = await call(a, 'GET', `/v1/digests/${day}`);
    assert.equal(read.statusCode, 200, read.body);
    const { computedAt, ...digest } = bodyOf<Record<string, unknown>>(read);
    assert.ok(!Number.isNaN(Date.parse(String(computedAt))));
    assert.deepEqual(digest, {
      day,
      conversationsOpened: 2,
      conversationsActive: 3,
      messagesIn: 3,
      messagesOut: 1,
    });
    const list = await call(b, 'GET', '/v1/digests');
    assert.deepEqual(
      bodyOf(list).items.map((item: { day: string; messagesOut: number }) => [
        item.day,
        item.messagesOut,
      ]),
      [[day, 1]],
    );
    assertProblem(
      await call(a, 'GET', '/v1/digests/2026-03-13'),
      404,
      'TENANTRY_ERR_HTTP_NOT_FOUND',
    );
    assertProblem(
      await call(a, 'GET', '/v1/digests/2026-02-30'),
      400,
      'TENANTRY_ERR_HTTP_VALIDATION',
    );
  });

  test('running the digest job again for the same day replaces the row', async () => {
    await seedTraffic(a, {
      opened: ['2026-03-14T15:00:00Z'],
      messages: [['2026-03-14T15:05:00Z', 'outbound']],
    });
    await testApp.tenantry.withTenant(a.tenantId, (db) =>
      enqueueJob(db, conversationDigestJob, { period: period.toISOString() }),
    );
    const jobs = await jobsSetup({});
    await withWorker(jobs, () =>
      waitFor('the recomputed digest', async () => {
        const rows = await digestRows(a);
        return rows[0]?.messages_out === 2 ? rows : undefined;
      }),
    );
    await jobs.close();
    assert.deepEqual(await digestRows(a), [
      {
        day,
        conversations_opened: 3,
        conversations_active: 4,
        messages_in: 3,
        messages_out: 2,
      },
    ]);
  });
});
