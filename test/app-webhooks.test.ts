import assert from 'node:assert/strict';
import { createHmac, randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { signWebhookPayload } from '../app/webhooks/webhook-signature.ts';
import {
  bodyOf,
  createTestApp,
  createWorkspace,
  queryAsAdmin,
  type TestApp,
  type TestWorkspace,
} from './app-fixtures.ts';

const toleranceSec = 300;

let testApp: TestApp;
let a: TestWorkspace;
let b: TestWorkspace;
let noSecret: TestWorkspace;
const secrets = new Map<string, string>();

before(async () => {
  testApp = await createTestApp({ webhookToleranceSec: toleranceSec });
  a = await createWorkspace(testApp, 'hook-a');
  b = await createWorkspace(testApp, 'hook-b');
  noSecret = await createWorkspace(testApp, 'hook-none');
  for (const workspace of [a, b]) {
    const secret = randomBytes(32).toString('hex');
    secrets.set(workspace.tenantId, secret);
    await queryAsAdmin(
      testApp,
      'insert into workspace_settings (tenant_id, inbound_webhook_secret) values ($1, $2)',
      [workspace.tenantId, secret],
    );
  }
});

after(async () => {
  await testApp.close();
});

function secretOf(workspace: TestWorkspace): string {
  const secret = secrets.get(workspace.tenantId);
  assert.ok(secret !== undefined);
  return secret;
}

function nowSec(): number {
  return Math.floor(Date.now() / 1000);
}

function payload(overrides: Record<string, unknown> = {}) {
  return {
    messageId: `wamid.${randomUUID()}`,
    from: `+1555${String(Math.floor(Math.random() * 1e7)).padStart(7, '0')}`,
    name: 'Pat Sender',
    text: 'Hello from WhatsApp',
    timestamp: nowSec() - 5,
    ...overrides,
  };
}

async function deliver(
  slug: string,
  body: unknown,
  options: {
    secret?: string;
    timestampSec?: number;
    signature?: string | null;
    signedBody?: string;
    headers?: Record<string, string>;
  } = {},
) {
  const raw = typeof body === 'string' ? body : JSON.stringify(body);
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (options.signature !== null) {
    headers['x-tenantry-signature'] =
      options.signature ??
      signWebhookPayload(
        options.secret ?? '',
        Buffer.from(options.signedBody ?? raw),
        options.timestampSec ?? nowSec(),
      );
  }
  return testApp.app.inject({
    method: 'POST',
    url: `/t/${slug}/webhooks/inbound`,
    headers: { ...headers, ...options.headers },
    payload: raw,
  });
}

interface Counts {
  contacts: number;
  conversations: number;
  messages: number;
}

async function counts(workspace: TestWorkspace): Promise<Counts> {
  const [row] = await queryAsAdmin<{ contacts: number; conversations: number; messages: number }>(
    testApp,
    `select (select count(*)::int from contacts where tenant_id = $1) as contacts,
            (select count(*)::int from conversations where tenant_id = $1) as conversations,
            (select count(*)::int from messages where tenant_id = $1) as messages`,
    [workspace.tenantId],
  );
  assert.ok(row !== undefined);
  return row;
}

async function allCounts() {
  return Promise.all([a, b, noSecret].map(counts));
}

function assertProblem(
  response: Awaited<ReturnType<typeof deliver>>,
  status: number,
  code: string,
) {
  assert.equal(response.statusCode, status, response.body);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
  assert.equal(bodyOf(response).code, code);
}

describe('POST /t/:workspace/webhooks/inbound', () => {
  test('a signed delivery stores one contact, conversation and message, in that workspace only', async () => {
    const beforeB = await counts(b);
    const message = payload({ timestamp: 1_767_225_600 + 37 });
    const response = await deliver(a.slug, message, {
      secret: secretOf(a),
    });
    assert.equal(response.statusCode, 200, response.body);
    const result = bodyOf(response);
    assert.equal(result.status, 'accepted');
    const rows = await queryAsAdmin(
      testApp,
      `select m.id, m.tenant_id, m.direction, m.status, m.body, m.provider_message_id, m.created_at,
              m.sender_id, c.status as conversation_status, c.last_message_at, k.name, k.phone
         from messages m
         join conversations c on c.tenant_id = m.tenant_id and c.id = m.conversation_id
         join contacts k on k.tenant_id = c.tenant_id and k.id = c.contact_id
        where m.provider_message_id = $1`,
      [message.messageId],
    );
    assert.equal(rows.length, 1);
    assert.deepEqual(rows[0], {
      id: result.messageId,
      tenant_id: a.tenantId,
      direction: 'inbound',
      status: 'received',
      body: message.text,
      provider_message_id: message.messageId,
      created_at: new Date(message.timestamp * 1000),
      sender_id: null,
      conversation_status: 'open',
      last_message_at: new Date(message.timestamp * 1000),
      name: 'Pat Sender',
      phone: message.from,
    });
    assert.deepEqual(await counts(b), beforeB);
  });

  test('the new conversation is visible through the API with the message', async () => {
    const message = payload({ name: undefined });
    const response = await deliver(a.slug, message, { secret: secretOf(a) });
    assert.equal(response.statusCode, 200, response.body);
    const [row] = await queryAsAdmin<{ conversation_id: string }>(
      testApp,
      'select conversation_id from messages where id = $1',
      [bodyOf(response).messageId],
    );
    const conversation = await testApp.app.inject({
      method: 'GET',
      url: `/v1/conversations/${row?.conversation_id}`,
      headers: a.headers,
    });
    assert.equal(conversation.statusCode, 200);
    assert.equal(bodyOf(conversation).contactName, message.from);
    const messages = await testApp.app.inject({
      method: 'GET',
      url: `/v1/conversations/${row?.conversation_id}/messages`,
      headers: a.headers,
    });
    assert.deepEqual(
      bodyOf(messages).items.map((item: { body: string }) => item.body),
      [message.text],
    );
  });

  test('a redelivery is answered duplicate and stores nothing more', async () => {
    const message = payload();
    const first = await deliver(a.slug, message, { secret: secretOf(a) });
    assert.equal(first.statusCode, 200, first.body);
    const before = await allCounts();
    const again = await deliver(a.slug, message, {
      secret: secretOf(a),
      timestampSec: nowSec() + 1,
    });
    assert.equal(again.statusCode, 200, again.body);
    assert.deepEqual(bodyOf(again), { status: 'duplicate', messageId: bodyOf(first).messageId });
    assert.deepEqual(await allCounts(), before);
    const [row] = await queryAsAdmin<{ n: number }>(
      testApp,
      'select count(*)::int as n from messages where provider_message_id = $1',
      [message.messageId],
    );
    assert.equal(row?.n, 1);
  });

  test('concurrent deliveries of one message store it once', async () => {
    const message = payload();
    const responses = await Promise.all(
      Array.from({ length: 4 }, () => deliver(a.slug, message, { secret: secretOf(a) })),
    );
    for (const response of responses) assert.equal(response.statusCode, 200, response.body);
    const statuses = responses.map((response) => bodyOf(response).status).sort();
    assert.deepEqual(statuses, ['accepted', 'duplicate', 'duplicate', 'duplicate']);
    const [row] = await queryAsAdmin<{ messages: number; contacts: number; conversations: number }>(
      testApp,
      `select (select count(*)::int from messages where provider_message_id = $1) as messages,
              (select count(*)::int from contacts where phone = $2) as contacts,
              (select count(*)::int from conversations c join contacts k
                  on k.tenant_id = c.tenant_id and k.id = c.contact_id where k.phone = $2) as conversations`,
      [message.messageId, message.from],
    );
    assert.deepEqual(row, { messages: 1, contacts: 1, conversations: 1 });
  });

  test('concurrent deliveries of one message id claiming other senders and times store it once', async () => {
    const messageId = `wamid.${randomUUID()}`;
    const responses = await Promise.all(
      Array.from({ length: 4 }, (_, index) =>
        deliver(a.slug, payload({ messageId, timestamp: nowSec() - 5 - index }), {
          secret: secretOf(a),
        }),
      ),
    );
    for (const response of responses) assert.equal(response.statusCode, 200, response.body);
    const statuses = responses.map((response) => bodyOf(response).status).sort();
    assert.deepEqual(statuses, ['accepted', 'duplicate', 'duplicate', 'duplicate']);
    const [row] = await queryAsAdmin<{ messages: number }>(
      testApp,
      'select count(*)::int as messages from messages where provider_message_id = $1',
      [messageId],
    );
    assert.equal(row?.messages, 1);
  });

  test("reuses the sender's contact and open conversation; a closed one is not reopened", async () => {
    const from = payload().from;
    const first = await deliver(a.slug, payload({ from }), { secret: secretOf(a) });
    const second = await deliver(
      a.slug,
      payload({ from, timestamp: new Date().toISOString(), name: 'Other Name' }),
      { secret: secretOf(a) },
    );
    assert.equal(first.statusCode, 200, first.body);
    assert.equal(second.statusCode, 200, second.body);
    const conversationOf = async (messageId: string) => {
      const [row] = await queryAsAdmin<{ conversation_id: string }>(
        testApp,
        'select conversation_id from messages where id = $1',
        [messageId],
      );
      return row?.conversation_id;
    };
    const conversation = await conversationOf(bodyOf(first).messageId);
    assert.equal(await conversationOf(bodyOf(second).messageId), conversation);
    await queryAsAdmin(testApp, `update conversations set status = 'closed' where id = $1`, [
      conversation,
    ]);
    const third = await deliver(a.slug, payload({ from }), { secret: secretOf(a) });
    assert.equal(third.statusCode, 200, third.body);
    assert.notEqual(await conversationOf(bodyOf(third).messageId), conversation);
    const contacts = await queryAsAdmin<{ name: string }>(
      testApp,
      'select name from contacts where tenant_id = $1 and phone = $2',
      [a.tenantId, from],
    );
    assert.deepEqual(contacts, [{ name: 'Pat Sender' }]);
  });

  describe('refuses deliveries it cannot authenticate, storing nothing anywhere', () => {
    const cases: [string, () => Promise<Awaited<ReturnType<typeof deliver>>>][] = [
      ['a wrong secret', () => deliver(a.slug, payload(), { secret: 'not-the-secret' })],
      [
        "another workspace's secret (A's valid signature posted to B)",
        () => deliver(b.slug, payload(), { secret: secretOf(a) }),
      ],
      [
        'a stale timestamp',
        () =>
          deliver(a.slug, payload(), {
            secret: secretOf(a),
            timestampSec: nowSec() - toleranceSec - 5,
          }),
      ],
      [
        'a timestamp from the future',
        () =>
          deliver(a.slug, payload(), {
            secret: secretOf(a),
            timestampSec: nowSec() + toleranceSec + 5,
          }),
      ],
      ['no signature header', () => deliver(a.slug, payload(), { signature: null })],
      ['a malformed header', () => deliver(a.slug, payload(), { signature: 'sha256=abc' })],
      [
        'a tampered body',
        () => {
          const signed = payload();
          return deliver(
            a.slug,
            { ...signed, text: 'tampered' },
            {
              secret: secretOf(a),
              signedBody: JSON.stringify(signed),
            },
          );
        },
      ],
      [
        'an HMAC over the body alone, not bound to the timestamp',
        () => {
          const body = JSON.stringify(payload());
          const hmac = createHmac('sha256', secretOf(a)).update(body).digest('hex');
          return deliver(a.slug, body, { signature: `t=${nowSec()},v1=${hmac}` });
        },
      ],
      [
        'a workspace without a configured secret',
        () => deliver(noSecret.slug, payload(), { secret: '' }),
      ],
      [
        "a user's access token instead of a signature",
        () => deliver(a.slug, payload(), { signature: null, headers: a.headers }),
      ],
    ];
    for (const [name, send] of cases) {
      test(name, async () => {
        const before = await allCounts();
        const response = await send();
        assertProblem(response, 401, 'TENANTRY_ERR_WEBHOOK_SIGNATURE_INVALID');
        assert.deepEqual(await allCounts(), before);
      });
    }
  });

  test('malformed JSON under a valid signature is 400 and stores nothing', async () => {
    const before = await allCounts();
    const response = await deliver(a.slug, '{"messageId": "x",', { secret: secretOf(a) });
    assertProblem(response, 400, 'TENANTRY_ERR_HTTP_BAD_REQUEST');
    assert.deepEqual(await allCounts(), before);
  });

  test('invalid payloads under a valid signature are 400 validation errors and store nothing', async () => {
    const before = await allCounts();
    for (const body of [
      payload({ from: '5550100' }),
      payload({ from: '+0123456789' }),
      payload({ text: '' }),
      payload({ text: 'x'.repeat(4097) }),
      payload({ messageId: '' }),
      payload({ messageId: 'x'.repeat(129) }),
      payload({ timestamp: 'yesterday' }),
      payload({ tenant_id: b.tenantId }),
      { from: '+15550100', text: 'no id', timestamp: nowSec() },
      [],
    ]) {
      const response = await deliver(a.slug, body, { secret: secretOf(a) });
      assertProblem(response, 400, 'TENANTRY_ERR_HTTP_VALIDATION');
    }
    assert.deepEqual(await allCounts(), before);
  });

  test('a body that is not JSON is 415', async () => {
    const response = await testApp.app.inject({
      method: 'POST',
      url: `/t/${a.slug}/webhooks/inbound`,
      headers: { 'content-type': 'text/plain' },
      payload: 'hello',
    });
    assertProblem(response, 415, 'TENANTRY_ERR_HTTP_UNSUPPORTED_MEDIA_TYPE');
  });

  test('an unknown workspace is 404 TENANTRY_ERR_TENANT_NOT_FOUND', async () => {
    const response = await deliver('hook-nobody', payload(), { secret: secretOf(a) });
    assertProblem(response, 404, 'TENANTRY_ERR_TENANT_NOT_FOUND');
  });

  test('the raw-body parser stays inside the webhook plugin', async () => {
    const [contact] = await queryAsAdmin<{ id: string }>(
      testApp,
      `insert into contacts (tenant_id, name) values ($1, 'Json Check') returning id`,
      [a.tenantId],
    );
    const response = await testApp.app.inject({
      method: 'POST',
      url: '/v1/conversations',
      headers: a.headers,
      payload: { contactId: contact?.id },
    });
    assert.equal(response.statusCode, 201, response.body);
  });

  test('a suspended workspace is 403 TENANTRY_ERR_TENANT_SUSPENDED and stores nothing', async () => {
    const suspended = await createWorkspace(testApp, 'hook-suspended');
    const secret = randomBytes(32).toString('hex');
    await queryAsAdmin(
      testApp,
      'insert into workspace_settings (tenant_id, inbound_webhook_secret) values ($1, $2)',
      [suspended.tenantId, secret],
    );
    const accepted = await deliver(suspended.slug, payload(), { secret });
    assert.equal(accepted.statusCode, 200, accepted.body);
    await queryAsAdmin(testApp, `update tenantry.tenants set status = 'suspended' where id = $1`, [
      suspended.tenantId,
    ]);
    const before = await counts(suspended);
    const deadline = Date.now() + 10_000;
    let response = await deliver(suspended.slug, payload(), { secret });
    while (response.statusCode !== 403 && Date.now() < deadline) {
      await new Promise((resolve) => setImmediate(resolve));
      response = await deliver(suspended.slug, payload(), { secret });
    }
    assertProblem(response, 403, 'TENANTRY_ERR_TENANT_SUSPENDED');
    // Deliveries accepted before the suspension was seen count too; none after it.
    const settled = await counts(suspended);
    const again = await deliver(suspended.slug, payload(), { secret });
    assertProblem(again, 403, 'TENANTRY_ERR_TENANT_SUSPENDED');
    assert.deepEqual(await counts(suspended), settled);
    assert.ok(settled.messages >= before.messages);
  });
});
