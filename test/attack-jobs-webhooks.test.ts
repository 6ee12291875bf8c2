// Job and webhook attacks against the reference app that the feature suites do not already
// make. Covered elsewhere (see docs/reference/attack-coverage.md): a job of B naming A's rows
// through raw SQL (test/jobs.test.ts), a send-batch job of B naming A's broadcast
// (test/app-broadcasts.test.ts), job keys per tenant, complete_job and the runner tables closed to
// the app role (test/jobs.test.ts), a killed worker (test/jobs-crash.test.ts); inbound webhooks
// with a wrong or another workspace's secret, stale or future timestamps, tampered bodies and
// redeliveries (test/app-webhooks.test.ts); outbound webhook signing, secrets and the platform
// tables closed to tenants (test/billing-webhooks.test.ts, test/billing-attacks.test.ts).
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { isTenantryError } from 'tenantry';
import { createJobAdmin, createJobWorker, enqueueJob, type JobAdmin } from 'tenantry/jobs';
import { signWebhookPayload } from '../app/webhooks/webhook-signature.ts';
import {
  bodyOf,
  createTestApp,
  createWorkspace,
  queryAsAdmin,
  type TestApp,
  type TestWorkspace,
} from './app-fixtures.ts';

let testApp: TestApp;
let jobAdmin: JobAdmin;
let counter = 0;

const unique = () => `${process.pid.toString(36)}${(counter++).toString(36)}`;

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
  body?: unknown,
): Promise<LightMyRequestResponse> {
  return testApp.app.inject({
    method,
    url,
    headers: as.headers,
    ...(body === undefined ? {} : { payload: body as object }),
  });
}

function created(response: LightMyRequestResponse, status = 201) {
  assert.equal(response.statusCode, status, response.body);
  return bodyOf(response);
}

function assertProblem(response: LightMyRequestResponse, status: number, code: string) {
  assert.equal(response.statusCode, status, response.body);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
  assert.equal(bodyOf(response).code, code);
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

/** Runs a worker on the app's jobs (fast polling and retries) while `fn` runs, then stops it. */
async function withWorker<T>(fn: () => Promise<T>): Promise<T> {
  const worker = await createJobWorker({
    tenantry: testApp.tenantry,
    connectionString: testApp.database.adminUrl,
    jobs: testApp.jobs.jobs,
    pollIntervalMs: 50,
    retry: { baseDelayMs: 10, maxDelayMs: 50 },
    heartbeatIntervalMs: 200,
    staleWorkerAfterMs: 1000,
  });
  try {
    return await fn();
  } finally {
    await worker.stop();
  }
}

/** Waits until `tenantId` has no waiting or running job, and returns its counts. */
function drained(tenantId: string) {
  return waitFor(`the jobs of ${tenantId} to finish`, async () => {
    const counts = await jobAdmin.countJobs(tenantId);
    return counts.waiting + counts.running === 0 ? counts : undefined;
  });
}

async function countRows(table: string, tenantId: string): Promise<number> {
  const [row] = await queryAsAdmin<{ n: number }>(
    testApp,
    `select count(*)::int as n from ${table} where tenant_id = $1`,
    [tenantId],
  );
  return row?.n ?? -1;
}

let phoneCounter = 0;
function newPhone(): string {
  phoneCounter += 1;
  return `+4420${String(70000000 + phoneCounter)}`;
}

/** A workspace with two tagged contacts, a template and a queued broadcast to them. */
async function queuedBroadcast(workspace: TestWorkspace): Promise<{
  broadcastId: string;
  contactIds: string[];
}> {
  const tag = created(await call(workspace, 'POST', '/v1/tags', { name: `t-${unique()}` })).id;
  const contactIds: string[] = [];
  for (const name of ['First', 'Second']) {
    const contact = created(
      await call(workspace, 'POST', '/v1/contacts', { name, phone: newPhone(), tagIds: [tag] }),
    );
    contactIds.push(contact.id);
  }
  const template = created(
    await call(workspace, 'POST', '/v1/templates', {
      name: `tpl_${unique()}`,
      language: 'en',
      category: 'marketing',
      body: 'Hello {{1}}',
    }),
  ).id;
  const broadcast = created(
    await call(workspace, 'POST', '/v1/broadcasts', {
      name: 'Attack target',
      templateId: template,
      tagIds: [tag],
      variables: [{ contact: 'name' }],
    }),
    202,
  );
  return { broadcastId: broadcast.id, contactIds };
}

/** What a broadcast left behind: its status, recipients, deliveries and metered messages. */
async function broadcastState(tenantId: string, broadcastId: string) {
  const [broadcast] = await queryAsAdmin<{ status: string; sent: number; failed: number }>(
    testApp,
    'select status, sent_count as sent, failed_count as failed from broadcasts where tenant_id = $1 and id = $2',
    [tenantId, broadcastId],
  );
  const recipients = await queryAsAdmin<{ contact_id: string; status: string }>(
    testApp,
    `select contact_id::text, status from broadcast_recipients
      where tenant_id = $1 and broadcast_id = $2 order by contact_id`,
    [tenantId, broadcastId],
  );
  const deliveries = await queryAsAdmin<{ contact_id: string; n: number }>(
    testApp,
    `select contact_id::text, count(*)::int as n from channel_deliveries
      where tenant_id = $1 and idempotency_key like $2 group by contact_id order by contact_id`,
    [tenantId, `broadcast:${broadcastId}:%`],
  );
  const [usage] = await queryAsAdmin<{ n: number }>(
    testApp,
    `select count(*)::int as n from tenantry.usage_events
      where tenant_id = $1 and metric = 'messages' and idempotency_key like $2`,
    [tenantId, `broadcast:${broadcastId}:%`],
  );
  return { broadcast, recipients, deliveries, usage: usage?.n };
}

async function exportRow(tenantId: string, exportId: string) {
  const [row] = await queryAsAdmin<{ status: string; file_id: string | null }>(
    testApp,
    'select status, file_id::text from exports where tenant_id = $1 and id = $2',
    [tenantId, exportId],
  );
  return row;
}

describe('job attacks', () => {
  test("jobs of B naming A's export and broadcast change nothing of A's; A's own jobs then do", async () => {
    const a = await createWorkspace(testApp, `job-a-${unique()}`);
    const b = await createWorkspace(testApp, `job-b-${unique()}`);
    created(await call(a, 'POST', '/v1/contacts', { name: 'Only in A' }));
    const { exportId } = created(await call(a, 'POST', '/v1/exports/contacts'), 202);
    const { broadcastId, contactIds } = await queuedBroadcast(a);
    // Only tenant isolation now stands between B's jobs and A's rows: A's own jobs are gone.
    assert.equal(await jobAdmin.removeTenantJobs(a.tenantId), 2);
    const broadcastBefore = await broadcastState(a.tenantId, broadcastId);

    await testApp.tenantry.withTenant(b.tenantId, async (db) => {
      assert.ok(testApp.jobs.storage !== undefined);
      await enqueueJob(db, testApp.jobs.storage.contactsExport, { exportId });
      await enqueueJob(db, testApp.jobs.broadcasts.dispatch, { broadcastId });
      await enqueueJob(db, testApp.jobs.broadcasts.sendBatch, { broadcastId, contactIds });
    });
    const stored = await jobAdmin.listJobs({ tenantId: b.tenantId });
    assert.equal(stored.length, 3, 'the jobs carry the tenant that enqueued them');
    const counts = await withWorker(() => drained(b.tenantId));
    assert.deepEqual(counts, { waiting: 0, running: 0, dead: 0, parked: 0 });

    assert.deepEqual(await exportRow(a.tenantId, exportId), { status: 'queued', file_id: null });
    assert.deepEqual(await broadcastState(a.tenantId, broadcastId), broadcastBefore);
    assert.equal(broadcastBefore.broadcast?.status, 'queued');
    for (const tenantId of [a.tenantId, b.tenantId]) {
      assert.equal(await countRows('tenantry.files', tenantId), 0);
      assert.equal(await countRows('channel_deliveries', tenantId), 0);
    }
    assert.deepEqual(await jobAdmin.countJobs(a.tenantId), counts, 'B enqueued nothing for A');

    // The control: the same payloads enqueued by A do act, so the above was isolation at work.
    await testApp.tenantry.withTenant(a.tenantId, async (db) => {
      assert.ok(testApp.jobs.storage !== undefined);
      await enqueueJob(db, testApp.jobs.storage.contactsExport, { exportId });
      await enqueueJob(db, testApp.jobs.broadcasts.dispatch, { broadcastId });
    });
    await withWorker(() => drained(a.tenantId));
    assert.equal((await exportRow(a.tenantId, exportId))?.status, 'ready');
    const sent = await broadcastState(a.tenantId, broadcastId);
    assert.equal(sent.broadcast?.status, 'completed');
    assert.deepEqual(
      sent.deliveries,
      [...contactIds].sort().map((contact_id) => ({ contact_id, n: 1 })),
    );
  });

  test('a completed job is gone with its commit: replayJobs refuses it, a replayed payload writes nothing twice', async () => {
    const a = await createWorkspace(testApp, `job-replay-${unique()}`);
    created(await call(a, 'POST', '/v1/contacts', { name: 'Exported once' }));
    const { exportId } = created(await call(a, 'POST', '/v1/exports/contacts'), 202);
    const [job] = await jobAdmin.listJobs({ tenantId: a.tenantId, task: 'contacts.export' });
    assert.ok(job !== undefined);
    assert.equal(job.key, `export:${exportId}`);
    await withWorker(() => drained(a.tenantId));
    const done = await exportRow(a.tenantId, exportId);
    assert.equal(done?.status, 'ready');
    assert.deepEqual(await jobAdmin.listJobs({ tenantId: a.tenantId }), []);

    await assert.rejects(jobAdmin.replayJobs([job.id]), (error: unknown) => {
      assert.ok(isTenantryError(error, 'TENANTRY_ERR_JOB_NOT_FOUND'), String(error));
      return true;
    });

    // A producer replaying the message (same payload, same key) gets a new job, which finds the
    // export done: no second file, the export unchanged.
    await testApp.tenantry.withTenant(a.tenantId, async (db) => {
      assert.ok(testApp.jobs.storage !== undefined);
      await enqueueJob(
        db,
        testApp.jobs.storage.contactsExport,
        { exportId },
        {
          key: `export:${exportId}`,
        },
      );
    });
    const counts = await withWorker(() => drained(a.tenantId));
    assert.deepEqual(counts, { waiting: 0, running: 0, dead: 0, parked: 0 });
    assert.deepEqual(await exportRow(a.tenantId, exportId), done);
    assert.equal(await countRows('tenantry.files', a.tenantId), 1);
  });

  test('replayed broadcast jobs, after the broadcast completed and mid-send, send no message twice', async () => {
    const a = await createWorkspace(testApp, `job-bc-${unique()}`);
    const { broadcastId, contactIds } = await queuedBroadcast(a);
    await withWorker(() => drained(a.tenantId));
    const done = await broadcastState(a.tenantId, broadcastId);
    assert.equal(done.broadcast?.status, 'completed');
    assert.equal(done.deliveries.length, 2);
    assert.equal(done.usage, 2);

    const replay = () =>
      testApp.tenantry.withTenant(a.tenantId, async (db) => {
        await enqueueJob(db, testApp.jobs.broadcasts.dispatch, { broadcastId });
        await enqueueJob(db, testApp.jobs.broadcasts.sendBatch, { broadcastId, contactIds });
      });
    await replay();
    await withWorker(() => drained(a.tenantId));
    assert.deepEqual(await broadcastState(a.tenantId, broadcastId), done);

    // A batch replayed while its broadcast is still sending finds its recipients settled.
    await queryAsAdmin(testApp, `update broadcasts set status = 'sending' where id = $1`, [
      broadcastId,
    ]);
    await replay();
    const counts = await withWorker(() => drained(a.tenantId));
    assert.deepEqual(counts, { waiting: 0, running: 0, dead: 0, parked: 0 });
    const after = await broadcastState(a.tenantId, broadcastId);
    assert.deepEqual(after.recipients, done.recipients);
    assert.deepEqual(after.deliveries, done.deliveries);
    assert.equal(after.usage, done.usage);
    assert.deepEqual(
      { sent: after.broadcast?.sent, failed: after.broadcast?.failed },
      { sent: done.broadcast?.sent, failed: done.broadcast?.failed },
    );
  });

  test('a job enqueued outside a tenant context is refused; one added behind Tenantry is dead-lettered unrun', async () => {
    const a = await createWorkspace(testApp, `job-ctx-${unique()}`);
    const { exportId } = created(await call(a, 'POST', '/v1/exports/contacts'), 202);
    assert.equal(await jobAdmin.removeTenantJobs(a.tenantId), 1);
    assert.ok(testApp.jobs.storage !== undefined);
    const definition = testApp.jobs.storage.contactsExport;
    const jobsBefore = (await jobAdmin.countJobs()).waiting;
    await assert.rejects(enqueueJob(testApp.tenantry.db, definition, { exportId }), (error) => {
      assert.ok(isTenantryError(error, 'TENANTRY_ERR_CONTEXT_MISSING'), String(error));
      return true;
    });
    assert.equal((await jobAdmin.countJobs()).waiting, jobsBefore, 'no job was stored');

    // The owner role can write graphile-worker's table directly; a job without the tenant
    // enqueue_job writes is never run in any tenant.
    const [row] = await queryAsAdmin<{ id: string }>(
      testApp,
      `select (graphile_worker.add_job('contacts.export', json_build_object('exportId', $1::text))).id::text as id`,
      [exportId],
    );
    assert.ok(row !== undefined);
    const dead = await withWorker(() =>
      waitFor('the tenantless job to be dead-lettered', async () => {
        const [job] = await queryAsAdmin<{ attempts: number; max: number; error: string | null }>(
          testApp,
          `select attempts, max_attempts as max, last_error as error
             from graphile_worker._private_jobs where id = $1 and locked_by is null`,
          [row.id],
        );
        return job !== undefined && job.attempts >= job.max ? job : undefined;
      }),
    );
    assert.match(dead.error ?? '', /names no tenant/);
    assert.deepEqual(await exportRow(a.tenantId, exportId), { status: 'queued', file_id: null });
    assert.equal(await countRows('tenantry.files', a.tenantId), 0);
  });
});

describe('inbound webhook attacks', () => {
  let a: TestWorkspace;
  let b: TestWorkspace;
  const secrets = new Map<string, string>();

  before(async () => {
    a = await createWorkspace(testApp, `hook-a-${unique()}`);
    b = await createWorkspace(testApp, `hook-b-${unique()}`);
    for (const workspace of [a, b]) {
      const rotated = created(
        await call(workspace, 'POST', '/v1/workspace/webhook-secret'),
        200,
      ).inboundWebhookSecret;
      secrets.set(workspace.tenantId, rotated);
    }
  });

  function secretOf(workspace: TestWorkspace): string {
    const secret = secrets.get(workspace.tenantId);
    assert.ok(secret !== undefined);
    return secret;
  }

  function signed(secret: string, body: unknown, timestampSec = Math.floor(Date.now() / 1000)) {
    const raw = JSON.stringify(body);
    return {
      raw,
      headers: {
        'content-type': 'application/json',
        'x-tenantry-signature': signWebhookPayload(secret, Buffer.from(raw), timestampSec),
      },
    };
  }

  function post(workspace: TestWorkspace, delivery: ReturnType<typeof signed>) {
    return testApp.app.inject({
      method: 'POST',
      url: `/t/${workspace.slug}/webhooks/inbound`,
      headers: delivery.headers,
      payload: delivery.raw,
    });
  }

  function message(overrides: Record<string, unknown> = {}) {
    return {
      messageId: `wamid.${randomUUID()}`,
      from: newPhone(),
      name: 'Sender',
      text: 'Hello',
      timestamp: Math.floor(Date.now() / 1000) - 5,
      ...overrides,
    };
  }

  async function stored() {
    return queryAsAdmin<{ tenant_id: string; contacts: number; messages: number }>(
      testApp,
      `select t.id::text as tenant_id,
              (select count(*)::int from contacts c where c.tenant_id = t.id) as contacts,
              (select count(*)::int from messages m where m.tenant_id = t.id) as messages
         from tenantry.tenants t where t.id = any($1::uuid[]) order by 1`,
      [[a.tenantId, b.tenantId]],
    );
  }

  test("a captured delivery replayed verbatim is a no-op at A and refused at B's address", async () => {
    const delivery = signed(secretOf(a), message());
    const first = await post(a, delivery);
    assert.equal(first.statusCode, 200, first.body);
    assert.equal(bodyOf(first).status, 'accepted');
    const before = await stored();
    const again = await post(a, delivery);
    assert.equal(again.statusCode, 200, again.body);
    assert.deepEqual(bodyOf(again), { status: 'duplicate', messageId: bodyOf(first).messageId });
    assertProblem(await post(b, delivery), 401, 'TENANTRY_ERR_WEBHOOK_SIGNATURE_INVALID');
    assert.deepEqual(await stored(), before);
  });

  test("a provider message id A already has is B's own new message at B: no duplicate answer naming A's row", async () => {
    const shared = message();
    const inA = await post(a, signed(secretOf(a), shared));
    assert.equal(inA.statusCode, 200, inA.body);
    const inB = await post(b, signed(secretOf(b), shared));
    assert.equal(inB.statusCode, 200, inB.body);
    assert.equal(bodyOf(inB).status, 'accepted');
    assert.notEqual(bodyOf(inB).messageId, bodyOf(inA).messageId);
    assert.ok(!inB.body.includes(bodyOf(inA).messageId));
    const rows = await queryAsAdmin<{ tenant_id: string; id: string }>(
      testApp,
      `select tenant_id::text, id::text from messages where provider_message_id = $1 order by 1`,
      [shared.messageId],
    );
    assert.deepEqual(
      rows,
      [
        { tenant_id: a.tenantId, id: bodyOf(inA).messageId },
        { tenant_id: b.tenantId, id: bodyOf(inB).messageId },
      ].sort((x, y) => x.tenant_id.localeCompare(y.tenant_id)),
    );
  });

  test('a signed body naming another workspace is refused with 400 and stores nothing', async () => {
    const before = await stored();
    for (const extra of [
      { tenantId: a.tenantId },
      { tenant_id: a.tenantId },
      { workspace: a.slug },
      { conversationId: randomUUID() },
    ]) {
      const response = await post(b, signed(secretOf(b), message(extra)));
      assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
      assert.ok(!response.body.includes(a.tenantId));
    }
    assert.deepEqual(await stored(), before);
  });

  test('after a rotation the previous secret is refused, the new one accepted', async () => {
    const old = secretOf(b);
    const rotated = created(await call(b, 'POST', '/v1/workspace/webhook-secret'), 200)
      .inboundWebhookSecret as string;
    secrets.set(b.tenantId, rotated);
    const before = await stored();
    assertProblem(
      await post(b, signed(old, message())),
      401,
      'TENANTRY_ERR_WEBHOOK_SIGNATURE_INVALID',
    );
    assert.deepEqual(await stored(), before);
    const accepted = await post(b, signed(rotated, message()));
    assert.equal(accepted.statusCode, 200, accepted.body);
  });
});
