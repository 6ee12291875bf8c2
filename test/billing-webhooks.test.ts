import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, afterEach, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { Webhook, WebhookVerificationError } from 'standardwebhooks';
import { isTenantryError, type TenantryErrorCode } from 'tenantry';
import {
  type AddWebhookEndpointOptions,
  createWebhookAdmin,
  createWebhookDispatcher,
  generateWebhookSecret,
  parseWebhookSecret,
  signWebhook,
  type WebhookAdmin,
  type WebhookDispatcher,
  type WebhookDispatcherOptions,
} from 'tenantry/billing';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';

const dispatcherModule = new URL('../src/billing/webhook-dispatcher.ts', import.meta.url).href;

let database: TestDatabase;
let superuser: pg.Pool;
let admin: WebhookAdmin;
const dispatchers: WebhookDispatcher[] = [];
const receivers: Receiver[] = [];
const children: ChildProcess[] = [];
let endpointsOfTest: string[] = [];

before(async () => {
  database = await createTestDatabase();
  superuser = new pg.Pool({ connectionString: database.adminUrl, max: 3 });
  superuser.on('error', () => {});
  admin = createWebhookAdmin({ connectionString: database.adminUrl });
});

// Every endpoint subscribes to new events until disabled: each test's endpoints stop with it.
afterEach(async () => {
  for (const id of endpointsOfTest) await admin.disableEndpoint(id);
  endpointsOfTest = [];
  await Promise.all(dispatchers.splice(0).map((dispatcher) => dispatcher.stop()));
});

after(async () => {
  for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  await Promise.all(dispatchers.map((dispatcher) => dispatcher.stop()));
  await Promise.all(receivers.map((receiver) => receiver.close()));
  await admin.close();
  await superuser.end();
  await database.drop();
});

/** What a receiver does with a request: answer with a status, or never answer. */
type Behaviour = number | 'hang';

interface ReceivedRequest {
  readonly headers: Record<string, string>;
  readonly body: string;
  /** The status answered, once answered. */
  answered: number | undefined;
}

interface Receiver {
  readonly url: string;
  readonly port: number;
  readonly requests: ReceivedRequest[];
  /** Requests received and not answered yet, at most (over the receiver's life). */
  readonly maxOpen: number;
  behaviour: Behaviour | ((request: ReceivedRequest) => Behaviour);
  /** Answers every hanging request with `status`. */
  release(status: number): void;
  close(): Promise<void>;
}

/** A real HTTP receiver on 127.0.0.1 that records every request. */
async function startReceiver(behaviour: Receiver['behaviour'] = 200, port = 0): Promise<Receiver> {
  const requests: ReceivedRequest[] = [];
  const hanging: { request: ReceivedRequest; response: ServerResponse }[] = [];
  let open = 0;
  let maxOpen = 0;
  const answer = (request: ReceivedRequest, response: ServerResponse, status: number) => {
    request.answered = status;
    open -= 1;
    response.writeHead(status, { 'content-type': 'text/plain' }).end(`answered ${status}`);
  };
  const server: Server = createServer((incoming: IncomingMessage, response) => {
    const chunks: Buffer[] = [];
    incoming.on('data', (chunk: Buffer) => chunks.push(chunk));
    incoming.on('end', () => {
      const headers: Record<string, string> = {};
      for (const [name, value] of Object.entries(incoming.headers)) {
        if (typeof value === 'string') headers[name] = value;
      }
      const request: ReceivedRequest = {
        headers,
        body: Buffer.concat(chunks).toString('utf8'),
        answered: undefined,
      };
      requests.push(request);
      open += 1;
      maxOpen = Math.max(maxOpen, open);
      const chosen =
        typeof receiver.behaviour === 'function' ? receiver.behaviour(request) : receiver.behaviour;
      if (chosen === 'hang') {
        hanging.push({ request, response });
        // A request the client gave up on is no longer open.
        response.on('close', () => {
          if (request.answered === undefined) {
            request.answered = 0;
            open -= 1;
          }
        });
      } else answer(request, response, chosen);
    });
  });
  await new Promise<void>((resolveListen) => server.listen(port, '127.0.0.1', resolveListen));
  const address = server.address() as AddressInfo;
  const receiver: Receiver = {
    url: `http://127.0.0.1:${address.port}/hooks`,
    port: address.port,
    requests,
    get maxOpen() {
      return maxOpen;
    },
    behaviour,
    release(status) {
      for (const { request, response } of hanging.splice(0)) {
        if (request.answered === undefined) answer(request, response, status);
      }
    },
    close: () =>
      new Promise<void>((resolveClose) => {
        receiver.release(503);
        server.close(() => resolveClose());
        server.closeAllConnections();
      }),
  };
  receivers.push(receiver);
  return receiver;
}

/** A port nothing listens on (until a test starts a receiver there). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolveListen) => server.listen(0, '127.0.0.1', resolveListen));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolveClose) => server.close(() => resolveClose()));
  return port;
}

async function addEndpoint(options: AddWebhookEndpointOptions) {
  const endpoint = await admin.addEndpoint(options);
  endpointsOfTest.push(endpoint.id);
  return endpoint;
}

function dispatcher(options: Partial<WebhookDispatcherOptions> = {}): WebhookDispatcher {
  const created = createWebhookDispatcher({
    connectionString: database.adminUrl,
    pollIntervalMs: 20,
    requestTimeoutMs: 10_000,
    retry: { baseDelayMs: 10, maxDelayMs: 50 },
    ...options,
  });
  dispatchers.push(created);
  return created;
}

/** Writes an outbox event as the owner would (the platform's internal emitter). */
async function emit(
  type: string,
  data: Record<string, unknown> = {},
  tenantId: string | null = null,
): Promise<string> {
  const result = await superuser.query<{ id: string }>(
    'select tenantry.emit_outbox_event($1, $2, $3) as id',
    [tenantId, type, JSON.stringify(data)],
  );
  return result.rows[0]?.id as string;
}

async function createTenant(slug: string): Promise<string> {
  const id = randomUUID();
  await superuser.query('insert into tenantry.tenants (id, slug, name) values ($1, $2, $2)', [
    id,
    `${slug}-${id.slice(0, 8)}`,
  ]);
  return id;
}

async function deliveryRows(endpointId: string) {
  const result = await superuser.query<{
    event_id: string;
    status: string;
    attempts: number;
    last_error: string | null;
  }>(
    `select event_id, status, attempts, last_error from tenantry.webhook_deliveries
      where endpoint_id = $1 order by created_at, event_id`,
    [endpointId],
  );
  return result.rows;
}

/** Polls `condition` until it returns something other than `undefined` / `false`, or fails at the deadline. */
async function waitFor<T>(
  description: string,
  condition: () => T | Promise<T>,
  timeoutMs = 30_000,
): Promise<Exclude<T, false | undefined>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value !== undefined && value !== false) return value as Exclude<T, false | undefined>;
    if (Date.now() > deadline) throw new Error(`Timed out waiting for: ${description}`);
    await delay(10);
  }
}

/** The payload of a request that verifies with `secret`, per the standardwebhooks library. */
function verified(request: ReceivedRequest, secret: string): unknown {
  return new Webhook(secret).verify(request.body, request.headers);
}

function rejectsVerification(request: ReceivedRequest, secret: string): void {
  assert.throws(() => verified(request, secret), WebhookVerificationError);
}

function code(expected: TenantryErrorCode): (error: unknown) => boolean {
  return (error) => {
    assert.ok(isTenantryError(error, expected), `expected ${expected}, got ${String(error)}`);
    return true;
  };
}

describe('signing', () => {
  test('signWebhook matches the standardwebhooks library, and its verifier accepts it', () => {
    const secret = generateWebhookSecret();
    const id = randomUUID();
    const timestamp = new Date();
    const body = JSON.stringify({ type: 'quota.exceeded', data: { used: 5 } });
    const headers = signWebhook({ id, timestamp, body, secrets: [secret] });
    assert.equal(headers['webhook-id'], id);
    assert.equal(headers['webhook-timestamp'], String(Math.floor(timestamp.getTime() / 1000)));
    assert.equal(headers['webhook-signature'], new Webhook(secret).sign(id, timestamp, body));
    assert.deepEqual(new Webhook(secret).verify(body, { ...headers }), {
      type: 'quota.exceeded',
      data: { used: 5 },
    });
  });

  test('a wrong secret, a changed body, id or timestamp fail verification', () => {
    const secret = generateWebhookSecret();
    const body = '{"type":"quota.exceeded","data":{}}';
    const headers = {
      ...signWebhook({ id: randomUUID(), timestamp: new Date(), body, secrets: [secret] }),
    };
    const verifier = new Webhook(secret);
    assert.throws(
      () => new Webhook(generateWebhookSecret()).verify(body, headers),
      WebhookVerificationError,
    );
    assert.throws(
      () => verifier.verify(body.replace('{}', '{"x":1}'), headers),
      WebhookVerificationError,
    );
    assert.throws(
      () => verifier.verify(body, { ...headers, 'webhook-id': randomUUID() }),
      WebhookVerificationError,
    );
    assert.throws(
      () =>
        verifier.verify(body, {
          ...headers,
          'webhook-timestamp': String(Number(headers['webhook-timestamp']) - 1),
        }),
      WebhookVerificationError,
    );
  });

  test('several secrets give one v1 signature each, each verifying on its own', () => {
    const [first, second] = [generateWebhookSecret(), generateWebhookSecret()];
    const body = '{}';
    const headers = signWebhook({
      id: 'msg_1',
      timestamp: 1_700_000_000,
      body,
      secrets: [first, second],
    });
    const signatures = headers['webhook-signature'].split(' ');
    assert.equal(signatures.length, 2);
    assert.ok(signatures.every((signature) => signature.startsWith('v1,')));
    assert.equal(
      signatures[0],
      new Webhook(first).sign('msg_1', new Date(1_700_000_000_000), body),
    );
    assert.equal(
      signatures[1],
      new Webhook(second).sign('msg_1', new Date(1_700_000_000_000), body),
    );
  });

  test('generated secrets are whsec_ and 32 random bytes; malformed secrets are refused without echo', () => {
    const secret = generateWebhookSecret();
    assert.match(secret, /^whsec_[A-Za-z0-9+/]{43}=$/);
    assert.equal(parseWebhookSecret(secret).length, 32);
    assert.notEqual(generateWebhookSecret(), secret);
    const base64 = (bytes: number) => randomBytes(bytes).toString('base64');
    const bad = [
      base64(32),
      `whsec ${base64(32)}`,
      `whsec_${base64(23)}`,
      `whsec_${base64(65)}`,
      `whsec_${base64(32).replace(/=+$/, '')}`,
      `whsec_${base64(32).slice(0, 10)}!${base64(32).slice(10)}`,
      `whsec_${base64(32)}\n`,
      'whsec_',
    ];
    for (const candidate of bad) {
      assert.throws(
        () => parseWebhookSecret(candidate),
        (error: unknown) => {
          assert.ok(isTenantryError(error, 'TENANTRY_ERR_WEBHOOK_INVALID'), String(error));
          const fragment = candidate.slice(6, 20);
          assert.ok(fragment === '' || !(error as Error).message.includes(fragment), 'echoed');
          return true;
        },
        JSON.stringify(candidate),
      );
    }
    assert.throws(() => signWebhook({ id: 'a b', timestamp: 1, body: '', secrets: [secret] }));
    assert.throws(() => signWebhook({ id: 'a', timestamp: 1.5, body: '', secrets: [secret] }));
    assert.throws(() => signWebhook({ id: 'a', timestamp: 1, body: '', secrets: [] }));
  });
});

describe('delivery', () => {
  test('an event arrives signed, with its id, type, time and server-written tenant', async () => {
    const receiver = await startReceiver(200);
    const endpoint = await addEndpoint({ url: receiver.url, eventTypes: ['quota.exceeded'] });
    assert.match(endpoint.secret, /^whsec_/);
    const tenantId = await createTenant('deliver');
    const eventId = await emit(
      'quota.exceeded',
      { metric: 'contacts', tenantId: 'forged' },
      tenantId,
    );
    const platformEventId = await emit('quota.exceeded', { metric: 'seats' });
    const created = await superuser.query<{ id: string; created_at: Date }>(
      'select id, created_at from tenantry.outbox_events where id = any($1)',
      [[eventId, platformEventId]],
    );

    const summary = await dispatcher().runOnce();
    assert.deepEqual(summary, { claimed: 2, succeeded: 2, retried: 0, failed: 0 });
    assert.equal(receiver.requests.length, 2);
    const byId = new Map(
      receiver.requests.map((request) => [request.headers['webhook-id'], request]),
    );
    const request = byId.get(eventId);
    assert.ok(request);
    assert.equal(request.headers['content-type'], 'application/json');
    assert.deepEqual(verified(request, endpoint.secret), {
      type: 'quota.exceeded',
      timestamp: created.rows.find((row) => row.id === eventId)?.created_at.toISOString(),
      data: { metric: 'contacts', tenantId },
    });
    const platform = byId.get(platformEventId);
    assert.ok(platform);
    assert.deepEqual((verified(platform, endpoint.secret) as { data: unknown }).data, {
      metric: 'seats',
      tenantId: null,
    });
    rejectsVerification(request, generateWebhookSecret());

    const [delivery] = await admin.listDeliveries({ endpointId: endpoint.id, tenantId });
    assert.equal(delivery?.eventId, eventId);
    assert.equal(delivery?.status, 'succeeded');
    assert.equal(delivery?.attempts, 1);
    assert.equal(delivery?.lastStatusCode, 200);
    assert.ok(delivery?.deliveredAt instanceof Date);
    const attempts = await admin.listAttempts(eventId, endpoint.id);
    assert.equal(attempts.length, 1);
    assert.equal(attempts[0]?.statusCode, 200);
    assert.equal(attempts[0]?.responseExcerpt, 'answered 200');

    assert.deepEqual(await dispatcher().runOnce(), {
      claimed: 0,
      succeeded: 0,
      retried: 0,
      failed: 0,
    });
    assert.equal(receiver.requests.length, 2, 'a succeeded delivery is not sent again');
  });

  test('during a rotation both secrets verify; once the previous one expires only the new one does', async () => {
    const receiver = await startReceiver(200);
    const endpoint = await addEndpoint({ url: receiver.url, eventTypes: ['rotation.tested'] });
    const first = endpoint.secret;
    const rotated = await admin.rotateSecret(endpoint.id, { previousValidForMs: 3_600_000 });
    const second = rotated.secret;
    assert.notEqual(second, first);
    assert.ok(rotated.previousSecretExpiresAt instanceof Date);

    await emit('rotation.tested');
    await dispatcher().runOnce();
    const during = receiver.requests.at(-1);
    assert.ok(during);
    assert.equal(during.headers['webhook-signature']?.split(' ').length, 2);
    verified(during, first);
    verified(during, second);
    rejectsVerification(during, generateWebhookSecret());

    const { secret: third } = await admin.rotateSecret(endpoint.id, { previousValidForMs: 1 });
    await waitFor('the previous secret to expire', async () => {
      const [listed] = (await admin.listEndpoints()).filter((e) => e.id === endpoint.id);
      return listed?.previousSecretExpiresAt === undefined;
    });
    await emit('rotation.tested');
    await dispatcher().runOnce();
    const afterExpiry = receiver.requests.at(-1);
    assert.ok(afterExpiry && afterExpiry !== during);
    assert.equal(afterExpiry.headers['webhook-signature']?.split(' ').length, 1);
    verified(afterExpiry, third);
    rejectsVerification(afterExpiry, second);
    rejectsVerification(afterExpiry, first);

    const { secret: fourth, previousSecretExpiresAt } = await admin.rotateSecret(endpoint.id, {
      previousValidForMs: 0,
    });
    assert.equal(previousSecretExpiresAt, undefined);
    await emit('rotation.tested');
    await dispatcher().runOnce();
    const immediate = receiver.requests.at(-1);
    assert.ok(immediate && immediate !== afterExpiry);
    verified(immediate, fourth);
    rejectsVerification(immediate, third);
  });

  test('a receiver down (refused, then 500) gets every event afterwards, each with its original id', async () => {
    const port = await closedPort();
    const endpoint = await addEndpoint({
      url: `http://127.0.0.1:${port}/hooks`,
      eventTypes: ['outage.tested'],
      maxAttempts: 100,
    });
    const eventIds: string[] = [];
    for (let n = 0; n < 5; n++) eventIds.push(await emit('outage.tested', { n }));
    await dispatcher().start();
    await waitFor('every delivery to be refused at least twice', async () => {
      const rows = await deliveryRows(endpoint.id);
      return (
        rows.length === 5 &&
        rows.every((row) => row.attempts >= 2 && row.status !== 'succeeded') &&
        rows.some((row) => row.last_error?.includes('ECONNREFUSED'))
      );
    });

    let errors = 0;
    const receiver = await startReceiver(() => (errors++ < 5 ? 500 : 200), port);
    await waitFor('every delivery to succeed', async () =>
      (await deliveryRows(endpoint.id)).every((row) => row.status === 'succeeded'),
    );
    const answered = receiver.requests.filter((request) => request.answered === 200);
    assert.deepEqual(
      answered.map((request) => request.headers['webhook-id']).sort(),
      [...eventIds].sort(),
      'each event arrived once with a 2xx, under its own id',
    );
    for (const request of receiver.requests) {
      const payload = verified(request, endpoint.secret) as { data: { n: number } };
      assert.equal(request.headers['webhook-id'], eventIds[payload.data.n]);
    }
    assert.ok(receiver.requests.some((request) => request.answered === 500));
    const log = (
      await Promise.all(eventIds.map((eventId) => admin.listAttempts(eventId, endpoint.id)))
    ).flat();
    assert.ok(log.some((attempt) => attempt.error?.includes('ECONNREFUSED')));
    assert.ok(log.some((attempt) => attempt.statusCode === 500));
  });

  test('an endpoint that hangs never holds up a healthy one, and holds at most its share of requests', async () => {
    const hanging = await startReceiver('hang');
    const healthy = await startReceiver(200);
    const stuck = await addEndpoint({ url: hanging.url, eventTypes: ['isolation.tested'] });
    const fine = await addEndpoint({ url: healthy.url, eventTypes: ['isolation.tested'] });
    const eventIds: string[] = [];
    for (let n = 0; n < 10; n++) eventIds.push(await emit('isolation.tested', { n }));
    await dispatcher({ concurrency: 4, endpointConcurrency: 2, requestTimeoutMs: 120_000 }).start();

    await waitFor(
      'the healthy endpoint to receive every event',
      () => healthy.requests.length >= 10,
    );
    assert.deepEqual(
      healthy.requests.map((request) => request.headers['webhook-id']).sort(),
      [...eventIds].sort(),
    );
    for (const request of healthy.requests) verified(request, fine.secret);
    // Every healthy delivery completed while the hanging endpoint had not answered anything.
    assert.ok(hanging.requests.length >= 1 && hanging.requests.length <= 2);
    assert.ok(hanging.requests.every((request) => request.answered === undefined));
    const stuckRows = await deliveryRows(stuck.id);
    assert.equal(
      stuckRows.filter((row) => row.status === 'delivering').length,
      hanging.requests.length,
    );
    assert.equal(stuckRows.filter((row) => row.status === 'succeeded').length, 0);

    hanging.behaviour = 200;
    hanging.release(200);
    await waitFor('the hanging endpoint to catch up', async () =>
      (await deliveryRows(stuck.id)).every((row) => row.status === 'succeeded'),
    );
    assert.ok(hanging.maxOpen <= 2, `at most 2 requests open at once, saw ${hanging.maxOpen}`);
    for (const request of hanging.requests) verified(request, stuck.secret);
  });

  test('stop() aborts requests past the grace period; they are due again, the attempt not counted', async () => {
    const hanging = await startReceiver('hang');
    const endpoint = await addEndpoint({ url: hanging.url, eventTypes: ['shutdown.tested'] });
    const eventId = await emit('shutdown.tested');
    const running = dispatcher({ shutdownGraceMs: 0, requestTimeoutMs: 120_000 });
    await running.start();
    await waitFor('the request to arrive', () => hanging.requests.length === 1);
    assert.equal(running.health().inFlight, 1);
    await running.stop();
    assert.equal(running.health().status, 'stopped');
    const [row] = await deliveryRows(endpoint.id);
    assert.equal(row?.status, 'pending');
    assert.equal(row?.attempts, 0);
    const [attempt] = await admin.listAttempts(eventId, endpoint.id);
    assert.match(attempt?.error ?? '', /aborted/);

    hanging.behaviour = 200;
    await dispatcher().runOnce();
    assert.equal((await deliveryRows(endpoint.id))[0]?.status, 'succeeded');
    assert.equal(hanging.requests.at(-1)?.headers['webhook-id'], eventId);
  });

  test('after maxAttempts a delivery is failed and listed; replay sends it again under the same id', async () => {
    const receiver = await startReceiver(500);
    const endpoint = await addEndpoint({
      url: receiver.url,
      eventTypes: ['failure.tested'],
      maxAttempts: 3,
    });
    const eventId = await emit('failure.tested', { important: true });
    const running = dispatcher();
    await waitFor('the delivery to fail for good', async () => {
      await running.runOnce();
      return (await deliveryRows(endpoint.id))[0]?.status === 'failed';
    });
    assert.equal(receiver.requests.length, 3);
    const [failed, ...others] = await admin.listDeliveries({
      status: 'failed',
      endpointId: endpoint.id,
    });
    assert.equal(others.length, 0);
    assert.equal(failed?.eventId, eventId);
    assert.equal(failed?.attempts, 3);
    assert.equal(failed?.maxAttempts, 3);
    assert.equal(failed?.lastStatusCode, 500);
    assert.equal(failed?.lastError, 'HTTP 500');
    const attempts = await admin.listAttempts(eventId, endpoint.id);
    assert.deepEqual(
      attempts.map((attempt) => [attempt.attempt, attempt.statusCode]),
      [
        [1, 500],
        [2, 500],
        [3, 500],
      ],
    );
    assert.deepEqual(await running.runOnce(), { claimed: 0, succeeded: 0, retried: 0, failed: 0 });
    assert.equal(receiver.requests.length, 3, 'a failed delivery is not retried by itself');

    receiver.behaviour = 200;
    const replayed = await admin.replay({ failed: true, endpointId: endpoint.id });
    assert.deepEqual(replayed, [{ eventId, endpointId: endpoint.id }]);
    await running.runOnce();
    const [delivered] = await admin.listDeliveries({ eventId, endpointId: endpoint.id });
    assert.equal(delivered?.status, 'succeeded');
    assert.equal(delivered?.attempts, 1);
    assert.equal(receiver.requests.length, 4);
    for (const request of receiver.requests) {
      assert.equal(request.headers['webhook-id'], eventId);
      verified(request, endpoint.secret);
    }

    // A succeeded delivery can be replayed by event id too: same id, the receiver dedupes.
    await admin.replay({ eventIds: [eventId] });
    await running.runOnce();
    assert.equal(receiver.requests.length, 5);
    assert.equal(receiver.requests.at(-1)?.headers['webhook-id'], eventId);

    await assert.rejects(admin.replay({}), code('TENANTRY_ERR_WEBHOOK_INVALID'));
    await assert.rejects(
      admin.replay({ eventIds: [randomUUID()] }),
      code('TENANTRY_ERR_WEBHOOK_NOT_FOUND'),
    );
    await assert.rejects(
      admin.replay({ eventIds: ['1 or 1=1'] }),
      code('TENANTRY_ERR_WEBHOOK_INVALID'),
    );
  });

  test("a crashed dispatcher's delivery is sent again once its lease expires", async () => {
    let first = true;
    const receiver = await startReceiver(() => {
      if (!first) return 200;
      first = false;
      return 'hang';
    });
    const endpoint = await addEndpoint({ url: receiver.url, eventTypes: ['crash.tested'] });
    const eventId = await emit('crash.tested');
    const script = `
      const { createWebhookDispatcher } = await import(${JSON.stringify(dispatcherModule)});
      const dispatcher = createWebhookDispatcher({
        connectionString: ${JSON.stringify(database.adminUrl)},
        requestTimeoutMs: 1400, leaseMs: 1500,
      });
      await dispatcher.runOnce();`;
    const child = spawn(
      process.execPath,
      ['--conditions=development', '--input-type=module', '-e', script],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    );
    children.push(child);
    await waitFor('the child to send the request', () => {
      if (child.exitCode !== null) throw new Error(`the child exited early (${child.exitCode})`);
      return receiver.requests.length === 1;
    });
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
    const leased = await superuser.query<{ status: string; attempts: number; lease_end: Date }>(
      `select status, attempts, next_attempt_at as lease_end from tenantry.webhook_deliveries
        where endpoint_id = $1`,
      [endpoint.id],
    );
    assert.equal(leased.rows[0]?.status, 'delivering');
    assert.equal(leased.rows[0]?.attempts, 1);

    const survivor = dispatcher();
    const early = await survivor.runOnce();
    const clock = await superuser.query<{ now: Date }>('select now()');
    if ((clock.rows[0]?.now as Date) < (leased.rows[0]?.lease_end as Date)) {
      assert.equal(early.claimed, 0, 'a live lease keeps the delivery from other dispatchers');
    }
    await survivor.start();
    await waitFor(
      'the delivery to be sent again after the lease',
      async () => (await deliveryRows(endpoint.id))[0]?.status === 'succeeded',
    );
    const [row] = await deliveryRows(endpoint.id);
    assert.equal(row?.status, 'succeeded');
    assert.equal(row?.attempts, 2);
    assert.equal(receiver.requests.length, 2);
    assert.ok(receiver.requests.every((request) => request.headers['webhook-id'] === eventId));
    verified(receiver.requests[1] as ReceivedRequest, endpoint.secret);
    const attempts = await admin.listAttempts(eventId, endpoint.id);
    assert.deepEqual(
      attempts.map((attempt) => [attempt.attempt, attempt.statusCode]),
      [[2, 200]],
    );
  });
});

describe('subscriptions', () => {
  test('an endpoint only gets the event types it subscribed to (exact or family wildcard)', async () => {
    const quotaReceiver = await startReceiver(200);
    const usageReceiver = await startReceiver(200);
    const quota = await addEndpoint({ url: quotaReceiver.url, eventTypes: ['quota.exceeded'] });
    const usage = await addEndpoint({ url: usageReceiver.url, eventTypes: ['usage.*'] });
    const quotaEvent = await emit('quota.exceeded');
    const usageEvent = await emit('usage.threshold_reached');
    await emit('period.closed');
    await emit('usage_report.ready');

    assert.deepEqual(
      (await deliveryRows(quota.id)).map((row) => row.event_id),
      [quotaEvent],
    );
    assert.deepEqual(
      (await deliveryRows(usage.id)).map((row) => row.event_id),
      [usageEvent],
    );
    await dispatcher().runOnce();
    assert.deepEqual(
      quotaReceiver.requests.map((request) => request.headers['webhook-id']),
      [quotaEvent],
    );
    assert.deepEqual(
      usageReceiver.requests.map((request) => request.headers['webhook-id']),
      [usageEvent],
    );
  });

  test('a new endpoint does not receive older events; a disabled one neither gets nor sends', async () => {
    const receiver = await startReceiver(200);
    const old = await emit('late.joined');
    const endpoint = await addEndpoint({ url: receiver.url });
    const fresh = await emit('late.joined');
    assert.deepEqual(
      (await deliveryRows(endpoint.id)).map((row) => row.event_id),
      [fresh],
    );
    assert.ok(!(await deliveryRows(endpoint.id)).some((row) => row.event_id === old));

    await admin.disableEndpoint(endpoint.id);
    const whileDisabled = await emit('late.joined');
    assert.equal((await dispatcher().runOnce()).claimed, 0, 'a disabled endpoint is not sent to');
    await admin.enableEndpoint(endpoint.id);
    await dispatcher().runOnce();
    assert.deepEqual(
      receiver.requests.map((request) => request.headers['webhook-id']),
      [fresh],
    );
    assert.ok(!(await deliveryRows(endpoint.id)).some((row) => row.event_id === whileDisabled));
  });

  test('endpoint input is validated and unknown ids are not found', async () => {
    const invalid = code('TENANTRY_ERR_WEBHOOK_INVALID');
    for (const url of [
      'ftp://example.com/x',
      'javascript:alert(1)',
      'not a url',
      'http://x/#a',
      'https://user:pw@example.com/hooks',
    ]) {
      await assert.rejects(admin.addEndpoint({ url }), invalid, url);
    }
    for (const type of ['Quota.exceeded', '*', 'quota', 'a.*.b', 'a..b', 'quota.exceeded ']) {
      await assert.rejects(
        admin.addEndpoint({ url: 'https://example.com/hooks', eventTypes: [type] }),
        invalid,
        type,
      );
    }
    await assert.rejects(
      admin.addEndpoint({ url: 'https://example.com/hooks', maxAttempts: 0 }),
      invalid,
    );
    await assert.rejects(admin.disableEndpoint('nope'), invalid);
    await assert.rejects(
      admin.disableEndpoint(randomUUID()),
      code('TENANTRY_ERR_WEBHOOK_NOT_FOUND'),
    );
    await assert.rejects(admin.rotateSecret(randomUUID()), code('TENANTRY_ERR_WEBHOOK_NOT_FOUND'));
    await assert.rejects(admin.listDeliveries({ limit: 0 }), invalid);
    await assert.rejects(admin.listDeliveries({ status: 'done' as 'failed' }), invalid);
    assert.throws(
      () =>
        createWebhookDispatcher({
          connectionString: database.adminUrl,
          leaseMs: 10,
          requestTimeoutMs: 10,
        }),
      invalid,
    );
    assert.throws(
      () =>
        createWebhookDispatcher({
          connectionString: database.adminUrl,
          concurrency: 2,
          endpointConcurrency: 3,
        }),
      invalid,
    );
    const listed = await admin.listEndpoints();
    assert.ok(listed.length > 0);
    for (const endpoint of listed) assert.ok(!('secret' in endpoint), 'secrets are never listed');
  });
});

describe('access', () => {
  test('the webhook tables belong to the owner alone: the app and analytics roles cannot read them', async () => {
    for (const url of [database.appUrl, database.analyticsUrl]) {
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      try {
        for (const table of ['webhook_endpoints', 'webhook_deliveries', 'webhook_attempts']) {
          await assert.rejects(
            client.query(`select * from tenantry.${table} limit 1`),
            (error: unknown) => (error as { code?: string }).code === '42501',
            table,
          );
        }
        if (url !== database.appUrl) continue;
        await assert.rejects(
          client.query(
            "insert into tenantry.webhook_endpoints (url, secret) values ('http://x', 'whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=')",
          ),
          (error: unknown) => (error as { code?: string }).code === '42501',
        );
      } finally {
        await client.end();
      }
    }
    const grants = await superuser.query(
      `select table_name, grantee, privilege_type from information_schema.role_table_grants
        where table_schema = 'tenantry' and table_name like 'webhook\\_%'
          and grantee <> 'tenantry_owner'`,
    );
    assert.deepEqual(grants.rows, []);
  });

  test('a dispatcher refuses to start without the webhook tables', async () => {
    const missing = createWebhookDispatcher({
      connectionString: database.adminUrl,
      schema: 'nowhere',
    });
    await assert.rejects(missing.start(), code('TENANTRY_ERR_CONFIG_INVALID'));
    await missing.stop();
  });
});

describe('tenantry webhooks CLI', () => {
  const cli = new URL('../src/cli/main.ts', import.meta.url).pathname;

  function runCli(
    args: readonly string[],
  ): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolveRun) => {
      const child = spawn(process.execPath, ['--conditions=development', cli, ...args], {
        cwd: new URL('..', import.meta.url).pathname,
        env: { PATH: process.env.PATH ?? '', DATABASE_URL: database.adminUrl, LOG_LEVEL: 'warn' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      children.push(child);
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (chunk: Buffer) => {
        stdout += chunk.toString();
      });
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      child.on('close', (exitCode) => resolveRun({ code: exitCode ?? -1, stdout, stderr }));
    });
  }

  test('add, list, rotate, disable, deliveries, replay and dispatch work end to end', async () => {
    const receiver = await startReceiver(500);
    const added = await runCli([
      'webhooks',
      'add',
      receiver.url,
      '--events',
      'cli.tested',
      '--max-attempts',
      '1',
      '--json',
    ]);
    assert.equal(added.code, 0, added.stderr);
    const endpoint = JSON.parse(added.stdout) as {
      id: string;
      secret: string;
      eventTypes: string[];
    };
    endpointsOfTest.push(endpoint.id);
    assert.deepEqual(endpoint.eventTypes, ['cli.tested']);
    parseWebhookSecret(endpoint.secret);

    const listed = await runCli(['webhooks', 'list', '--json']);
    assert.equal(listed.code, 0, listed.stderr);
    assert.ok(!listed.stdout.includes(endpoint.secret), 'list never prints a secret');
    assert.ok((JSON.parse(listed.stdout) as { id: string }[]).some((e) => e.id === endpoint.id));

    const rotated = await runCli([
      'webhooks',
      'rotate',
      endpoint.id,
      '--previous-valid-hours',
      '0',
    ]);
    assert.equal(rotated.code, 0, rotated.stderr);
    const secret = /new secret: (whsec_\S+)/.exec(rotated.stdout)?.[1];
    assert.ok(secret);

    const eventId = await emit('cli.tested', { via: 'cli' });
    await dispatcher().runOnce();
    const failed = await runCli([
      'webhooks',
      'deliveries',
      '--status',
      'failed',
      '--endpoint',
      endpoint.id,
      '--json',
    ]);
    assert.equal(failed.code, 0, failed.stderr);
    assert.deepEqual(
      (JSON.parse(failed.stdout) as { eventId: string; lastStatusCode: number }[]).map((d) => [
        d.eventId,
        d.lastStatusCode,
      ]),
      [[eventId, 500]],
    );
    const log = await runCli(['webhooks', 'attempts', eventId, endpoint.id]);
    assert.equal(log.code, 0, log.stderr);
    assert.match(log.stdout, /answered 500/);

    const refused = await runCli(['webhooks', 'replay']);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /--failed/);
    assert.equal((await runCli(['webhooks', 'disable', 'not-a-uuid'])).code, 2);

    receiver.behaviour = 200;
    const replayed = await runCli(['webhooks', 'replay', '--failed', '--endpoint', endpoint.id]);
    assert.equal(replayed.code, 0, replayed.stderr);
    assert.match(replayed.stdout, /replayed 1 deliveries/);

    const dispatching = spawn(
      process.execPath,
      ['--conditions=development', cli, 'webhooks', 'dispatch', '--poll-interval-ms', '20'],
      {
        cwd: new URL('..', import.meta.url).pathname,
        env: { PATH: process.env.PATH ?? '', DATABASE_URL: database.adminUrl, LOG_LEVEL: 'warn' },
        stdio: ['ignore', 'ignore', 'inherit'],
      },
    );
    children.push(dispatching);
    await waitFor('the dispatch command to deliver the replayed event', () =>
      receiver.requests.some((request) => request.answered === 200),
    );
    const exited = once(dispatching, 'exit');
    dispatching.kill('SIGTERM');
    const [exitCode] = await exited;
    assert.equal(exitCode, 0, 'SIGTERM stops the dispatcher gracefully');
    const delivered = receiver.requests.find((request) => request.answered === 200);
    assert.ok(delivered);
    assert.equal(delivered.headers['webhook-id'], eventId);
    verified(delivered, secret);
    rejectsVerification(delivered, endpoint.secret);

    const disabled = await runCli(['webhooks', 'disable', endpoint.id]);
    assert.equal(disabled.code, 0, disabled.stderr);
    assert.match(disabled.stdout, /disabled endpoint/);
  });
});
