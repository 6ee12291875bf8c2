import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import type { LightMyRequestResponse } from 'fastify';
import { createJobWorker, type JobWorker } from 'tenantry/jobs';
import {
  bodyOf,
  createWorkspace,
  queryAsAdmin,
  type TestApp,
  type TestWorkspace,
} from './app-fixtures.ts';
import { createFaultApp } from './fault-fixtures/fault-app.ts';
import { type PrivateCluster, startPrivateCluster } from './fault-fixtures/private-cluster.ts';

/**
 * PostgreSQL stopped and crashed under write load, then started again on the same data directory
 * and port, while the reference app keeps running: requests during the outage get 503 problem+json
 * (never 500), the app recovers without a restart, and a client-side ledger of every 2xx is
 * compared with what the database holds afterwards. `TENANTRY_LONG=1` runs more writers, more
 * acknowledged writes per phase and several outages per mode.
 */
const long = process.env.TENANTRY_LONG === '1';
const writersPerWorkspace = long ? 4 : 2;
const ackedPerPhase = long ? 200 : 20;
const refusedDuringOutage = long ? 50 : 5;
const outagesPerMode = long ? 3 : 1;

let cluster: PrivateCluster;
let testApp: TestApp;
let worker: JobWorker;
const workspaces: TestWorkspace[] = [];

before(async () => {
  cluster = await startPrivateCluster();
  testApp = await createFaultApp({ database: cluster.database });
  for (const slug of ['fault-a', 'fault-b', 'fault-c']) {
    workspaces.push(await createWorkspace(testApp, slug));
  }
  // Runs through every outage: its jobs must resume once the server is back.
  worker = await createJobWorker({
    tenantry: testApp.tenantry,
    connectionString: testApp.database.adminUrl,
    jobs: testApp.jobs.jobs,
    pollIntervalMs: 50,
    retry: { baseDelayMs: 10, maxDelayMs: 200 },
    heartbeatIntervalMs: 200,
    staleWorkerAfterMs: 5000,
  });
});

after(async () => {
  await worker?.stop();
  await testApp?.close();
  await cluster?.remove();
});

/** One answer the ledger did not expect: anything but 201, or 503 with the DB_UNAVAILABLE code. */
interface Unexpected {
  readonly status: number;
  readonly body: string;
  readonly serverRunning: boolean;
}

/** What the clients saw, kept on their side. */
interface Ledger {
  /** Idempotent writes acknowledged with 201: key -> contact id. */
  readonly idempotentAcks: Map<string, { tenantId: string; id: string; replayed: boolean }>;
  /** Plain writes acknowledged with 201: phone -> contact id. */
  readonly plainAcks: Map<string, { tenantId: string; id: string }>;
  /** Plain writes answered 503: committed or not, the client cannot know. */
  readonly plainUnknown: Set<string>;
  /** 503 answers given while the server was down. */
  refusedWhileDown: number;
  refused: number;
  readonly unexpected: Unexpected[];
}

function newLedger(): Ledger {
  return {
    idempotentAcks: new Map(),
    plainAcks: new Map(),
    plainUnknown: new Set(),
    refusedWhileDown: 0,
    refused: 0,
    unexpected: [],
  };
}

function acked(ledger: Ledger): number {
  return ledger.idempotentAcks.size + ledger.plainAcks.size;
}

let phoneCounter = 0;
function uniquePhone(): string {
  phoneCounter += 1;
  return `+1${String(2_000_000_000 + phoneCounter * 7 + Math.floor(Math.random() * 7))}`;
}

function isUnavailable(response: LightMyRequestResponse): boolean {
  if (response.statusCode !== 503) return false;
  if (!String(response.headers['content-type']).startsWith('application/problem+json')) {
    return false;
  }
  return bodyOf(response).code === 'TENANTRY_ERR_DB_UNAVAILABLE';
}

function record(ledger: Ledger, response: LightMyRequestResponse, serverRunning: boolean): void {
  if (isUnavailable(response)) {
    ledger.refused += 1;
    if (!serverRunning) ledger.refusedWhileDown += 1;
    return;
  }
  ledger.unexpected.push({ status: response.statusCode, body: response.body, serverRunning });
}

/**
 * A client that retries each write with the same `Idempotency-Key` until it gets a 201: a write
 * whose COMMIT was lost with the connection is replayed, one that rolled back runs again. Its
 * contacts have no phone, so only the key (an attribute) could reveal a write applied twice.
 */
async function idempotentWriter(
  ledger: Ledger,
  workspace: TestWorkspace,
  run: string,
  stopping: () => boolean,
): Promise<void> {
  const deadline = Date.now() + 120_000;
  while (!stopping()) {
    const key = randomUUID();
    for (;;) {
      if (Date.now() > deadline) throw new Error('an idempotent write was never acknowledged');
      const serverRunning = cluster.running;
      const response = await testApp.app.inject({
        method: 'POST',
        url: '/v1/contacts',
        headers: { ...workspace.headers, 'idempotency-key': key },
        payload: { name: `${run} ${key}`, attributes: { run, write: key } },
      });
      if (response.statusCode === 201) {
        ledger.idempotentAcks.set(key, {
          tenantId: workspace.tenantId,
          id: bodyOf(response).id,
          replayed: response.headers['idempotent-replayed'] === 'true',
        });
        break;
      }
      record(ledger, response, serverRunning && cluster.running);
      if (!isUnavailable(response)) return;
      // Pacing, as a client honouring Retry-After would (shortened): not a synchronisation.
      await delay(20);
    }
  }
}

/** A client without idempotency keys: one attempt per phone; a 503 leaves the write unknown. */
async function plainWriter(
  ledger: Ledger,
  workspace: TestWorkspace,
  run: string,
  stopping: () => boolean,
): Promise<void> {
  while (!stopping()) {
    const phone = uniquePhone();
    const serverRunning = cluster.running;
    const response = await testApp.app.inject({
      method: 'POST',
      url: '/v1/contacts',
      headers: workspace.headers,
      payload: { name: `${run} ${phone}`, phone, attributes: { run } },
    });
    if (response.statusCode === 201) {
      const body = bodyOf(response);
      assert.equal(body.phone, phone);
      ledger.plainAcks.set(phone, { tenantId: workspace.tenantId, id: body.id });
      continue;
    }
    record(ledger, response, serverRunning && cluster.running);
    if (!isUnavailable(response)) return;
    ledger.plainUnknown.add(phone);
    await delay(20);
  }
}

async function waitFor<T>(
  description: string,
  condition: () => T | Promise<T>,
  timeoutMs = 60_000,
): Promise<Exclude<T, false | undefined>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value !== undefined && value !== false) return value as Exclude<T, false | undefined>;
    if (Date.now() > deadline) throw new Error(`Timed out waiting for: ${description}`);
    await delay(20);
  }
}

async function readyz(): Promise<LightMyRequestResponse> {
  return testApp.app.inject({ method: 'GET', url: '/readyz' });
}

/** Asks for a contacts export and waits for the worker to finish it; returns its row count. */
async function exportContacts(workspace: TestWorkspace): Promise<number> {
  const requested = await testApp.app.inject({
    method: 'POST',
    url: '/v1/exports/contacts',
    headers: workspace.headers,
  });
  assert.equal(requested.statusCode, 202, requested.body);
  const { exportId } = bodyOf(requested);
  const done = await waitFor(
    'the export job to run on the worker that lived through the outage',
    async () => {
      const response = await testApp.app.inject({
        method: 'GET',
        url: `/v1/exports/${exportId}`,
        headers: workspace.headers,
      });
      assert.equal(response.statusCode, 200, response.body);
      const body = bodyOf(response);
      return body.status === 'queued' ? undefined : body;
    },
  );
  assert.equal(done.status, 'ready', JSON.stringify(done));
  return done.rowCount;
}

for (const mode of ['stop', 'crash'] as const) {
  const what =
    mode === 'stop'
      ? 'stopped (fast shutdown)'
      : 'crashed (immediate shutdown, WAL replay on start)';
  test(`PostgreSQL ${what} under write load: 503 while down, recovery without a restart, no acknowledged write lost or applied twice`, async (t) => {
    const run = `${mode}-${randomBytes(4).toString('hex')}`;
    const ledger = newLedger();
    let stopping = false;
    const writers = workspaces.flatMap((workspace) =>
      Array.from({ length: writersPerWorkspace }, (_, n) =>
        n % 2 === 0
          ? idempotentWriter(ledger, workspace, run, () => stopping)
          : plainWriter(ledger, workspace, run, () => stopping),
      ),
    );
    const finished = Promise.all(writers);
    try {
      assert.equal((await readyz()).statusCode, 200);
      for (let outage = 0; outage < outagesPerMode; outage++) {
        const before = acked(ledger);
        await waitFor('writes acknowledged before the outage', () => {
          assert.deepEqual(ledger.unexpected, []);
          return acked(ledger) >= before + ackedPerPhase;
        });
        if (mode === 'stop') await cluster.stop();
        else await cluster.crash();

        const refusedBefore = ledger.refusedWhileDown;
        await waitFor(
          'writes refused with 503 while the server is down',
          () => ledger.refusedWhileDown >= refusedBefore + refusedDuringOutage,
        );
        const down = await readyz();
        assert.equal(down.statusCode, 503);
        assert.deepEqual(bodyOf(down), { status: 'unavailable', reason: 'database unreachable' });
        const list = await testApp.app.inject({
          method: 'GET',
          url: '/v1/contacts',
          headers: workspaces[0]?.headers,
        });
        assert.ok(isUnavailable(list), `${list.statusCode} ${list.body}`);
        assert.equal(list.headers['retry-after'], '2');

        await cluster.start();
        const atRestart = acked(ledger);
        await waitFor('the app to acknowledge writes again by itself', () => {
          assert.deepEqual(ledger.unexpected, []);
          return acked(ledger) >= atRestart + ackedPerPhase;
        });
        await waitFor('/readyz to answer 200 again', async () => {
          const response = await readyz();
          return response.statusCode === 200 && bodyOf(response).status === 'ready';
        });
      }
    } finally {
      stopping = true;
      if (!cluster.running) await cluster.start();
      await finished;
    }

    assert.deepEqual(ledger.unexpected, [], 'only 201 and 503 DB_UNAVAILABLE were answered');
    assert.ok(ledger.refused >= refusedDuringOutage * outagesPerMode);

    const rows = await queryAsAdmin<{
      id: string;
      tenant_id: string;
      phone: string | null;
      write: string | null;
    }>(
      testApp,
      `select id, tenant_id, phone, attributes ->> 'write' as write from contacts
        where attributes ->> 'run' = $1`,
      [run],
    );
    const idempotentRows = rows.filter((row) => row.write !== null);
    const plainRows = rows.filter((row) => row.write === null);

    // Every idempotent write was acknowledged in the end, and is stored exactly once.
    assert.equal(idempotentRows.length, ledger.idempotentAcks.size, 'one row per idempotent write');
    for (const row of idempotentRows) {
      const ack = ledger.idempotentAcks.get(row.write as string);
      assert.ok(ack, `row ${row.id} belongs to no acknowledged write`);
      assert.equal(row.id, ack.id, 'the acknowledged id is the stored one');
      assert.equal(row.tenant_id, ack.tenantId);
    }

    // Every acknowledged plain write is stored; a stored one was acknowledged or answered 503.
    const plainByPhone = new Map(plainRows.map((row) => [row.phone as string, row]));
    assert.equal(plainByPhone.size, plainRows.length, 'no phone stored twice');
    for (const [phone, ack] of ledger.plainAcks) {
      const row = plainByPhone.get(phone);
      assert.ok(row, `acknowledged contact ${ack.id} (${phone}) is missing`);
      assert.equal(row.id, ack.id);
      assert.equal(row.tenant_id, ack.tenantId);
    }
    for (const row of plainRows) {
      assert.ok(
        ledger.plainAcks.has(row.phone as string) || ledger.plainUnknown.has(row.phone as string),
        `contact ${row.id} was stored for a request never made`,
      );
    }

    // The job worker lived through the outage and runs new jobs without a restart.
    const exported = workspaces[0] as TestWorkspace;
    const [count] = await queryAsAdmin<{ n: number }>(
      testApp,
      'select count(*)::int as n from contacts where tenant_id = $1',
      [exported.tenantId],
    );
    assert.equal(await exportContacts(exported), count?.n);

    const replays = [...ledger.idempotentAcks.values()].filter((ack) => ack.replayed).length;
    const committedUnknown = [...ledger.plainUnknown].filter((phone) =>
      plainByPhone.has(phone),
    ).length;
    t.diagnostic(
      `${mode}: ${acked(ledger)} acknowledged, ${ledger.refused} refused (${ledger.refusedWhileDown} while down), ${replays} replays, ${committedUnknown} of ${ledger.plainUnknown.size} unknown plain writes committed`,
    );
  });
}
