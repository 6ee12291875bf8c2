import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createInterface } from 'node:readline';
import { after, before, describe, type TestContext, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import type { LightMyRequestResponse } from 'fastify';
import pg from 'pg';
import { Webhook } from 'standardwebhooks';
import {
  createWebhookAdmin,
  createWebhookDispatcher,
  type WebhookAdmin,
  type WebhookDispatcher,
} from 'tenantry/billing';
import type { JobWorker, JobWorkerOptions } from 'tenantry/jobs';
import { createTestDatabase } from 'tenantry/testing';
import type { AppDatabase } from '../app/database.ts';
import {
  bodyOf,
  createWorkspace,
  queryAsAdmin,
  type TestApp,
  type TestWorkspace,
} from './app-fixtures.ts';
import { createFaultApp } from './fault-fixtures/fault-app.ts';
import { startTcpSwitch, type TcpSwitch } from './fault-fixtures/tcp-switch.ts';
import {
  type AdminPool,
  createAdminPool,
  jobRows,
  startWorker,
  waitFor,
} from './jobs-fixtures/helpers.ts';
import { startTestS3Server, type TestS3Server } from './storage-fixtures/s3rver.ts';

/**
 * Faults outside PostgreSQL, against the reference app with the S3 driver: a job worker process
 * killed in the middle of a broadcast batch, a webhook dispatcher killed after the receiver
 * answered but before it recorded the delivery, and the object store going down while files are
 * confirmed and exports written. Work resumes; nothing is lost or done twice.
 *
 * Already covered elsewhere, not repeated here: a generic job's worker killed mid-job and a
 * worker taken for dead (test/jobs-crash.test.ts); a webhook receiver refusing then answering 500,
 * and a dispatcher killed while its request hangs (test/billing-webhooks.test.ts).
 */
const broadcastWorkerScript = fileURLToPath(
  new URL('./fault-fixtures/broadcast-worker.ts', import.meta.url),
);
const dispatcherScript = fileURLToPath(
  new URL('./fault-fixtures/webhook-dispatcher.ts', import.meta.url),
);

let s3: TestS3Server;
/** The app's S3 endpoint: a forwarder to s3rver that the tests take down and bring back. */
let objectStore: TcpSwitch;
let testApp: TestApp;
let admin: AdminPool;
let webhookAdmin: WebhookAdmin;
const children: ChildProcess[] = [];
const dispatchers: WebhookDispatcher[] = [];
const servers: Server[] = [];

before(async () => {
  s3 = await startTestS3Server();
  objectStore = await startTcpSwitch(s3.endpoint);
  testApp = await createFaultApp({
    database: await createTestDatabase(),
    storage: {
      driver: 's3',
      bucket: s3.bucket,
      region: s3.region,
      endpoint: objectStore.url,
      forcePathStyle: true,
      credentials: { ...s3.credentials },
    },
  });
  admin = createAdminPool(testApp.database.adminUrl);
  webhookAdmin = createWebhookAdmin({ connectionString: testApp.database.adminUrl });
});

after(async () => {
  for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  await Promise.all(dispatchers.map((dispatcher) => dispatcher.stop()));
  for (const server of servers) {
    server.closeAllConnections();
    server.close();
  }
  await webhookAdmin?.close();
  await admin?.close();
  await testApp?.close();
  await objectStore?.close();
  await s3?.stop();
});

function call(
  as: TestWorkspace,
  method: 'GET' | 'POST' | 'DELETE',
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

function assertProblem(response: LightMyRequestResponse, status: number, code: string): void {
  assert.equal(response.statusCode, status, response.body);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
  assert.equal(bodyOf(response).code, code, response.body);
}

/** A worker of the app's jobs (fast polling and retries unless overridden), stopped after `t`. */
async function worker(
  t: TestContext,
  options: Pick<JobWorkerOptions<AppDatabase>, 'retry'> = {},
): Promise<JobWorker> {
  const started = await startWorker(testApp.tenantry, testApp.database.adminUrl, {
    jobs: testApp.jobs.jobs,
    ...options,
  });
  t.after(() => started.stop());
  return started;
}

/** Spawns a fixture script under `node --conditions=development`; its stdout lines are collected. */
function spawnFixture(script: string, argument: unknown): { child: ChildProcess; lines: string[] } {
  const child = spawn(
    process.execPath,
    ['--conditions=development', script, JSON.stringify(argument)],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  children.push(child);
  const lines: string[] = [];
  createInterface({ input: child.stdout as NonNullable<typeof child.stdout> }).on('line', (line) =>
    lines.push(line),
  );
  return { child, lines };
}

async function kill(child: ChildProcess): Promise<void> {
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
}

describe('a job worker killed mid-job', () => {
  test('a broadcast whose worker is SIGKILLed mid-batch reaches every recipient exactly once, each message counted once', async (t) => {
    const workspace = await createWorkspace(testApp, 'fault-broadcast');
    const tagId = created(await call(workspace, 'POST', '/v1/tags', { name: 'vip' })).id;
    const phones = new Map<string, string>();
    for (let n = 0; n < 12; n++) {
      const phone = `+4930${String(5_550_000 + n)}`;
      const contact = created(
        await call(workspace, 'POST', '/v1/contacts', {
          name: `Recipient ${n}`,
          phone,
          tagIds: [tagId],
        }),
      );
      phones.set(contact.id, phone);
    }
    const templateId = created(
      await call(workspace, 'POST', '/v1/templates', {
        name: 'crash_sale',
        language: 'en',
        category: 'marketing',
        body: 'Hi {{1}}',
      }),
    ).id;
    const broadcast = created(
      await call(workspace, 'POST', '/v1/broadcasts', {
        name: 'Crash sale',
        templateId,
        tagIds: [tagId],
        variables: [{ contact: 'name' }],
      }),
      202,
    );
    const deliveries = () =>
      admin.query<{ id: string; contact_id: string; to_address: string; body: string }>(
        `select id, contact_id, to_address, body from channel_deliveries
          where tenant_id = $1 and idempotency_key like $2 order by created_at, id`,
        [workspace.tenantId, `broadcast:${broadcast.id}:%`],
      );
    const sentRecipients = async () =>
      (
        await admin.query<{ n: number }>(
          `select count(*)::int as n from broadcast_recipients
            where tenant_id = $1 and broadcast_id = $2 and status = 'sent'`,
          [workspace.tenantId, broadcast.id],
        )
      )[0]?.n;

    // Batches of 5, 5 and 2 in any order: the 9th send is always inside a batch that already sent
    // at least one message.
    const { child, lines } = spawnFixture(broadcastWorkerScript, {
      appUrl: testApp.database.appUrl,
      adminUrl: testApp.database.adminUrl,
      blockAfterSends: 8,
      batchSize: 5,
    });
    await waitFor('the child worker to block on its 9th send', () => {
      if (child.exitCode !== null) throw new Error(`the child exited early (${child.exitCode})`);
      return lines.includes('blocked 8');
    });
    const childWorkerId = lines.find((line) => line.startsWith('worker '))?.slice('worker '.length);
    assert.ok(childWorkerId);
    const before = await deliveries();
    assert.equal(before.length, 8, 'the channel accepted 8 messages');
    const settledBefore = (await sentRecipients()) ?? -1;
    assert.ok(
      settledBefore < 8,
      `the channel delivered messages the job had not recorded yet (${settledBefore} recorded)`,
    );
    const [running] = (await jobRows(admin, 'broadcast.send-batch')).filter(
      (job) => job.locked_by !== null,
    );
    assert.equal(running?.locked_by, childWorkerId);

    await kill(child);
    await worker(t);
    const done = await waitFor('the broadcast to complete after the crash', async () => {
      const body = bodyOf(await call(workspace, 'GET', `/v1/broadcasts/${broadcast.id}`));
      return body.status === 'completed' ? body : undefined;
    });

    assert.deepEqual(done.counts, { total: 12, pending: 0, sent: 12, failed: 0 });
    const after = await deliveries();
    assert.equal(after.length, 12, 'one message per recipient');
    assert.deepEqual(
      after.map((row) => row.contact_id).sort(),
      [...phones.keys()].sort(),
      'every recipient got a message',
    );
    assert.deepEqual(
      after.slice(0, 8).map((row) => row.id),
      before.map((row) => row.id),
      'the messages sent before the crash were not sent again',
    );
    for (const row of after) assert.equal(row.to_address, phones.get(row.contact_id));
    const recipients = await admin.query<{
      contact_id: string;
      provider_message_id: string;
      attempts: number;
    }>(
      `select contact_id, provider_message_id, attempts from broadcast_recipients
        where tenant_id = $1 and broadcast_id = $2`,
      [workspace.tenantId, broadcast.id],
    );
    const deliveryOf = new Map(after.map((row) => [row.contact_id, row.id]));
    for (const recipient of recipients) {
      assert.equal(recipient.provider_message_id, deliveryOf.get(recipient.contact_id));
    }
    const resent = recipients.filter((recipient) => recipient.attempts === 2);
    assert.ok(resent.length > 0, 'the interrupted batch ran a second time');
    const usage = await admin.query<{ n: number }>(
      `select count(*)::int as n from tenantry.usage_events
        where tenant_id = $1 and metric = 'messages' and idempotency_key like $2`,
      [workspace.tenantId, `broadcast:${broadcast.id}:%`],
    );
    assert.equal(usage[0]?.n, 12, 'each message counted once against the plan');
    assert.deepEqual(await jobRows(admin, 'broadcast.send-batch'), [], 'every batch completed');
    assert.deepEqual(await jobRows(admin, 'broadcast.dispatch'), []);
    await waitFor('the dead worker’s heartbeat row to be swept', async () => {
      const rows = await admin.query('select 1 from tenantry.job_workers where worker_id = $1', [
        childWorkerId,
      ]);
      return rows.length === 0;
    });
  });
});

interface Received {
  readonly headers: Record<string, string>;
  readonly body: string;
  answered: number | undefined;
}

/** An HTTP receiver that holds every request until `release()`, then answers 200 (and after). */
async function startHoldingReceiver(): Promise<{
  url: string;
  requests: Received[];
  release(): void;
}> {
  const requests: Received[] = [];
  const held: { request: Received; response: ServerResponse }[] = [];
  let holding = true;
  const answer = (request: Received, response: ServerResponse) => {
    // Counted once the answer has left for the client, not when it was merely written.
    response.writeHead(200, { 'content-type': 'text/plain' }).end('ok', () => {
      request.answered = 200;
    });
  };
  const server = createServer((incoming: IncomingMessage, response) => {
    const chunks: Buffer[] = [];
    incoming.on('data', (chunk: Buffer) => chunks.push(chunk));
    incoming.on('end', () => {
      const headers: Record<string, string> = {};
      for (const [name, value] of Object.entries(incoming.headers)) {
        if (typeof value === 'string') headers[name] = value;
      }
      const request: Received = {
        headers,
        body: Buffer.concat(chunks).toString('utf8'),
        answered: undefined,
      };
      requests.push(request);
      if (holding) held.push({ request, response });
      else answer(request, response);
    });
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/hooks`,
    requests,
    release() {
      holding = false;
      for (const { request, response } of held.splice(0)) answer(request, response);
    },
  };
}

describe('a webhook dispatcher killed mid-delivery', () => {
  test('killed after the receiver answered 2xx but before recording it: each event is sent again under its own webhook-id, nothing else is duplicated', async () => {
    const receiver = await startHoldingReceiver();
    const endpoint = await webhookAdmin.addEndpoint({
      url: receiver.url,
      eventTypes: ['fault.delivered'],
    });
    const eventIds: string[] = [];
    for (let n = 0; n < 3; n++) {
      const [row] = await admin.query<{ id: string }>(
        'select tenantry.emit_outbox_event(null, $1, $2) as id',
        ['fault.delivered', JSON.stringify({ n })],
      );
      eventIds.push(row?.id as string);
    }
    const leaseMs = 5500;
    const { child, lines } = spawnFixture(dispatcherScript, {
      adminUrl: testApp.database.adminUrl,
      requestTimeoutMs: 5000,
      leaseMs,
    });
    await waitFor('the child dispatcher to send every event', () => {
      if (child.exitCode !== null) throw new Error(`the child exited early (${child.exitCode})`);
      return lines.includes('started') && receiver.requests.length === 3;
    });

    // Hold the delivery rows so the child cannot record its outcome, then let the receiver
    // answer: the child has its 2xx answers and is stuck before writing them down.
    const locker = new pg.Client({ connectionString: testApp.database.adminUrl });
    await locker.connect();
    try {
      await locker.query('begin');
      await locker.query(
        'select 1 from tenantry.webhook_deliveries where endpoint_id = $1 for update',
        [endpoint.id],
      );
      receiver.release();
      const blocked = await waitFor(
        'the child to wait on the held rows with 3 answers',
        async () => {
          const rows = await admin.query<{ pid: number }>(
            `select pid from pg_stat_activity
            where datname = current_database() and wait_event_type = 'Lock'
              and query like '%webhook_attempts%'`,
          );
          return rows.length === 3 && receiver.requests.every((r) => r.answered === 200)
            ? rows
            : undefined;
        },
      );
      await kill(child);
      // The host is gone with what it had in flight: its pending statements never commit.
      for (const { pid } of blocked) {
        await admin.query('select pg_terminate_backend($1)', [pid]);
      }
      await waitFor('the terminated sessions to end', async () => {
        const rows = await admin.query('select 1 from pg_stat_activity where pid = any($1)', [
          blocked.map((row) => row.pid),
        ]);
        return rows.length === 0;
      });
    } finally {
      await locker.query('rollback');
      await locker.end();
    }
    const leased = await admin.query<{ status: string; attempts: number }>(
      'select status, attempts from tenantry.webhook_deliveries where endpoint_id = $1',
      [endpoint.id],
    );
    assert.deepEqual(
      leased.map((row) => [row.status, row.attempts]),
      eventIds.map(() => ['delivering', 1]),
      'the answered deliveries were never recorded',
    );

    const survivor = createWebhookDispatcher({
      connectionString: testApp.database.adminUrl,
      pollIntervalMs: 20,
      requestTimeoutMs: 5000,
      leaseMs,
      retry: { baseDelayMs: 10, maxDelayMs: 50 },
    });
    dispatchers.push(survivor);
    await survivor.start();
    await waitFor('every delivery to succeed after the lease ran out', async () => {
      const rows = await admin.query<{ status: string }>(
        'select status from tenantry.webhook_deliveries where endpoint_id = $1',
        [endpoint.id],
      );
      return rows.length === 3 && rows.every((row) => row.status === 'succeeded');
    });

    assert.equal(receiver.requests.length, 6, 'each event sent twice: once lost, once recorded');
    const byId = new Map<string, Received[]>();
    for (const request of receiver.requests) {
      const id = request.headers['webhook-id'] as string;
      byId.set(id, [...(byId.get(id) ?? []), request]);
      assert.equal(request.answered, 200);
      new Webhook(endpoint.secret).verify(request.body, request.headers);
    }
    assert.deepEqual([...byId.keys()].sort(), [...eventIds].sort(), 'no id but the events’ own');
    for (const [id, copies] of byId) {
      assert.equal(copies.length, 2);
      assert.equal(copies[0]?.body, copies[1]?.body, `both copies of ${id} carry the same payload`);
    }
    for (const eventId of eventIds) {
      const attempts = await webhookAdmin.listAttempts(eventId, endpoint.id);
      assert.deepEqual(
        attempts.map((attempt) => [attempt.attempt, attempt.statusCode]),
        [[2, 200]],
      );
    }
  });
});

describe('the object store down', () => {
  const s3Client = () =>
    new S3Client({
      region: s3.region,
      endpoint: s3.endpoint,
      forcePathStyle: true,
      // A copy: the SDK writes bookkeeping onto the credentials object it is given.
      credentials: { ...s3.credentials },
    });

  async function objectKeys(tenantId: string): Promise<string[]> {
    const client = s3Client();
    try {
      const listed = await client.send(
        new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: `tenants/${tenantId}/` }),
      );
      return (listed.Contents ?? []).map((object) => object.Key as string).sort();
    } finally {
      client.destroy();
    }
  }

  async function fileRows(tenantId: string) {
    return queryAsAdmin<{ id: string; status: string; object_key: string }>(
      testApp,
      'select id, status, object_key from tenantry.files where tenant_id = $1 order by created_at',
      [tenantId],
    );
  }

  async function requestUpload(as: TestWorkspace, bytes: Buffer) {
    return created(
      await call(as, 'POST', '/v1/files', {
        fileName: 'notes.txt',
        size: bytes.byteLength,
        contentType: 'text/plain',
        sha256: createHash('sha256').update(bytes).digest('hex'),
      }),
    ) as {
      fileId: string;
      upload: { url: string; method: string; headers: Record<string, string> };
    };
  }

  test('confirming an upload answers 503 STORAGE_UNAVAILABLE and registers nothing; once S3 is back the same confirm succeeds', async (t) => {
    const workspace = await createWorkspace(testApp, 'fault-s3-confirm');
    const bytes = Buffer.from('uploaded before the outage\n');
    const first = await requestUpload(workspace, bytes);
    const put = await fetch(first.upload.url, {
      method: 'PUT',
      headers: first.upload.headers,
      body: bytes,
    });
    assert.equal(put.status, 200);

    await objectStore.down();
    t.after(() => objectStore.up());
    // Signing needs no call to S3: an upload URL is still handed out, and the upload fails at
    // the client.
    const second = await requestUpload(workspace, bytes);
    await assert.rejects(
      fetch(second.upload.url, { method: 'PUT', headers: second.upload.headers, body: bytes }),
    );
    const refused = await call(workspace, 'POST', `/v1/files/${first.fileId}/confirm`);
    assertProblem(refused, 503, 'TENANTRY_ERR_STORAGE_UNAVAILABLE');
    assert.equal(refused.headers['retry-after'], '5', 'clients are told when to come back');
    assert.deepEqual(
      (await fileRows(workspace.tenantId)).map((row) => row.status),
      ['pending', 'pending'],
      'nothing registered as uploaded',
    );
    assert.deepEqual(bodyOf(await call(workspace, 'GET', '/v1/files/usage')), {
      files: 0,
      bytes: 0,
    });

    await objectStore.up();
    const confirmed = created(
      await call(workspace, 'POST', `/v1/files/${first.fileId}/confirm`),
      200,
    );
    assert.equal(confirmed.status, 'uploaded');
    assertProblem(
      await call(workspace, 'POST', `/v1/files/${second.fileId}/confirm`),
      409,
      'TENANTRY_ERR_STORAGE_UPLOAD_MISSING',
    );
    assert.deepEqual(bodyOf(await call(workspace, 'GET', '/v1/files/usage')), {
      files: 1,
      bytes: bytes.byteLength,
    });
  });

  async function seedContacts(workspace: TestWorkspace, count: number): Promise<void> {
    for (let n = 0; n < count; n++) {
      created(await call(workspace, 'POST', '/v1/contacts', { name: `Exported ${n}` }));
    }
  }

  async function exportOf(workspace: TestWorkspace, exportId: string) {
    return created(await call(workspace, 'GET', `/v1/exports/${exportId}`), 200);
  }

  async function exportJob(exportId: string) {
    return (await jobRows(admin, 'contacts.export')).find(
      (job) => job.payload.data.exportId === exportId,
    );
  }

  test('an export whose job fails while S3 is down stays queued, and its retry once S3 is back writes exactly one file', async (t) => {
    const workspace = await createWorkspace(testApp, 'fault-s3-export');
    await seedContacts(workspace, 3);
    await objectStore.down();
    t.after(() => objectStore.up());
    const { exportId } = created(await call(workspace, 'POST', '/v1/exports/contacts'), 202);

    // Retries far apart, so no second attempt runs before this worker is stopped.
    const running = await worker(t, { retry: { baseDelayMs: 600_000, maxDelayMs: 600_000 } });
    const failed = await waitFor('the export job to fail its first attempt', async () => {
      const job = await exportJob(exportId);
      return job !== undefined && job.attempts >= 1 && job.locked_by === null ? job : undefined;
    });
    await running.stop();
    assert.ok(failed.last_error !== null);
    assert.equal((await exportOf(workspace, exportId)).status, 'queued');
    assert.deepEqual(await fileRows(workspace.tenantId), [], 'no file row left behind');

    await objectStore.up();
    // "Later": the retry is made due now instead of waiting out its backoff.
    await admin.query('update graphile_worker._private_jobs set run_at = now() where id = $1', [
      failed.id,
    ]);
    await worker(t);
    const ready = await waitFor('the retried export to be ready', async () => {
      const body = await exportOf(workspace, exportId);
      return body.status === 'queued' ? undefined : body;
    });
    assert.equal(ready.status, 'ready', JSON.stringify(ready));
    assert.equal(ready.rowCount, 3);
    const files = await fileRows(workspace.tenantId);
    assert.deepEqual(
      files.map((file) => [file.id, file.status]),
      [[ready.fileId, 'uploaded']],
    );
    assert.deepEqual(await objectKeys(workspace.tenantId), [files[0]?.object_key]);
    const client = s3Client();
    try {
      const object = await client.send(
        new GetObjectCommand({ Bucket: s3.bucket, Key: files[0]?.object_key }),
      );
      const csv = await object.Body?.transformToString();
      assert.equal(csv?.trim().split('\r\n').length, 4, 'a header and 3 contacts');
    } finally {
      client.destroy();
    }
  });

  test('an outage longer than every attempt fails the export cleanly: no file, a client-safe error; a new export afterwards writes one file', async (t) => {
    const workspace = await createWorkspace(testApp, 'fault-s3-failed');
    await seedContacts(workspace, 2);
    await objectStore.down();
    t.after(() => objectStore.up());
    const { exportId } = created(await call(workspace, 'POST', '/v1/exports/contacts'), 202);
    await worker(t);
    const failed = await waitFor('the export to fail for good', async () => {
      const body = await exportOf(workspace, exportId);
      return body.status === 'queued' ? undefined : body;
    });
    assert.equal(failed.status, 'failed');
    assert.equal(failed.fileId, null);
    assert.equal(failed.download, null);
    assert.doesNotMatch(
      failed.error ?? '',
      /127\.0\.0\.1|ECONNREFUSED|:\d{2,5}\b/,
      'the error shown to the workspace names no internal address',
    );
    assert.deepEqual(await fileRows(workspace.tenantId), []);
    assert.deepEqual(await exportJob(exportId), undefined, 'the job is done: no retry left over');

    await objectStore.up();
    const again = created(await call(workspace, 'POST', '/v1/exports/contacts'), 202);
    const ready = await waitFor('the new export to be ready', async () => {
      const body = await exportOf(workspace, again.exportId);
      return body.status === 'queued' ? undefined : body;
    });
    assert.equal(ready.status, 'ready');
    assert.equal(ready.rowCount, 2);
    assert.deepEqual(
      (await fileRows(workspace.tenantId)).map((file) => file.status),
      ['uploaded'],
    );
    assert.equal((await objectKeys(workspace.tenantId)).length, 1);
  });
});
