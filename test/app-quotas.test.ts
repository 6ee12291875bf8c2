import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { createJobWorker } from 'tenantry/jobs';
import { signWebhookPayload } from '../app/webhooks/webhook-signature.ts';
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

before(async () => {
  testApp = await createTestApp();
});

after(async () => {
  await testApp.close();
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
    ...(body === undefined ? {} : { payload: body as Record<string, unknown> }),
  });
}

function assertQuotaProblem(response: LightMyRequestResponse, metric: string, limit: number) {
  assert.equal(response.statusCode, 402, response.body);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
  const problem = bodyOf(response);
  assert.equal(problem.code, 'TENANTRY_ERR_QUOTA_EXCEEDED');
  assert.equal(problem.metric, metric);
  assert.equal(problem.limit, limit);
  assert.equal(typeof problem.used, 'number');
  assert.doesNotMatch(response.body, /TQ001|apply_usage|usage_counters/);
}

async function setLimit(workspace: TestWorkspace, metric: string, limit: number | null) {
  await queryAsAdmin(
    testApp,
    `insert into tenantry.tenant_limit_overrides (tenant_id, metric, limit_value) values ($1, $2, $3)
     on conflict (tenant_id, metric) do update set limit_value = excluded.limit_value`,
    [workspace.tenantId, metric, limit],
  );
}

async function scalar(text: string, values: unknown[]): Promise<number> {
  const [row] = await queryAsAdmin<{ n: string }>(testApp, text, values);
  return Number(row?.n);
}

const counter = (workspace: TestWorkspace, metric: string) =>
  scalar(
    `select coalesce(sum(used), 0)::text as n from tenantry.usage_counters
      where tenant_id = $1 and metric = $2`,
    [workspace.tenantId, metric],
  );

async function openConversation(as: TestWorkspace): Promise<string> {
  const contact = await call(as, 'POST', '/v1/contacts', {
    name: `Contact ${randomUUID()}`,
    phone: `+1555${String(Math.floor(Math.random() * 1e7)).padStart(7, '0')}`,
  });
  assert.equal(contact.statusCode, 201, contact.body);
  const conversation = await call(as, 'POST', '/v1/conversations', {
    contactId: bodyOf(contact).id,
  });
  assert.equal(conversation.statusCode, 201, conversation.body);
  return bodyOf(conversation).id;
}

describe('plans on every path of the reference app', () => {
  test('200 concurrent contact creates with 900 of 1,000 used: exactly 100 are created', async () => {
    const workspace = await createWorkspace(
      testApp,
      `quota-contacts-${randomBytes(3).toString('hex')}`,
    );
    await setLimit(workspace, 'contacts', 1000);
    await queryAsAdmin(
      testApp,
      `insert into contacts (tenant_id, name) select $1, 'Seeded ' || n from generate_series(1, 900) n`,
      [workspace.tenantId],
    );
    const responses = await Promise.all(
      Array.from({ length: 200 }, (_, index) =>
        call(workspace, 'POST', '/v1/contacts', { name: `Racer ${index}` }),
      ),
    );
    const created = responses.filter((response) => response.statusCode === 201);
    const refused = responses.filter((response) => response.statusCode !== 201);
    assert.equal(created.length, 100);
    for (const response of refused) assertQuotaProblem(response, 'contacts', 1000);
    const rows = await scalar('select count(*)::text as n from contacts where tenant_id = $1', [
      workspace.tenantId,
    ]);
    assert.equal(rows, 1000);
    assert.equal(await counter(workspace, 'contacts'), 1000);
    // Deleting one frees a place for exactly one more.
    const first = bodyOf(created[0] as LightMyRequestResponse).id;
    assert.equal((await call(workspace, 'DELETE', `/v1/contacts/${first}`)).statusCode, 204);
    assert.equal((await call(workspace, 'POST', '/v1/contacts', { name: 'Next' })).statusCode, 201);
    assertQuotaProblem(
      await call(workspace, 'POST', '/v1/contacts', { name: 'One too many' }),
      'contacts',
      1000,
    );
  });

  test('the monthly message limit holds across the API, the broadcast job and inbound webhooks', async () => {
    const workspace = await createWorkspace(
      testApp,
      `quota-messages-${randomBytes(3).toString('hex')}`,
    );
    const secret = randomBytes(32).toString('hex');
    await queryAsAdmin(
      testApp,
      'insert into workspace_settings (tenant_id, inbound_webhook_secret) values ($1, $2)',
      [workspace.tenantId, secret],
    );
    await setLimit(workspace, 'messages', 6);
    const conversationId = await openConversation(workspace);
    // API: three outbound messages.
    for (let index = 0; index < 3; index++) {
      const sent = await call(workspace, 'POST', `/v1/conversations/${conversationId}/messages`, {
        body: `hello ${index}`,
      });
      assert.equal(sent.statusCode, 201, sent.body);
    }
    // Inbound webhook: one message.
    const inbound = (text: string) => {
      const raw = JSON.stringify({
        messageId: `wamid.${randomUUID()}`,
        from: '+15550001111',
        name: 'Pat',
        text,
        timestamp: Math.floor(Date.now() / 1000) - 5,
      });
      return testApp.app.inject({
        method: 'POST',
        url: `/t/${workspace.slug}/webhooks/inbound`,
        headers: {
          'content-type': 'application/json',
          'x-tenantry-signature': signWebhookPayload(
            secret,
            Buffer.from(raw),
            Math.floor(Date.now() / 1000),
          ),
        },
        payload: raw,
      });
    };
    const received = await inbound('hi there');
    assert.ok(received.statusCode < 300, received.body);
    assert.equal(await counter(workspace, 'messages'), 4);

    // A broadcast job to four contacts: two fit, two are refused for the plan, none retried.
    const tag = bodyOf(await call(workspace, 'POST', '/v1/tags', { name: 'all' })).id;
    for (let index = 0; index < 4; index++) {
      const contact = await call(workspace, 'POST', '/v1/contacts', {
        name: `Recipient ${index}`,
        phone: `+1666${String(index).padStart(7, '0')}`,
        tagIds: [tag],
      });
      assert.equal(contact.statusCode, 201, contact.body);
    }
    const template = await call(workspace, 'POST', '/v1/templates', {
      name: 'promo',
      language: 'en',
      category: 'marketing',
      body: 'Promo!',
    });
    assert.equal(template.statusCode, 201, template.body);
    const broadcast = await call(workspace, 'POST', '/v1/broadcasts', {
      name: 'Promo',
      templateId: bodyOf(template).id,
      tagIds: [tag],
    });
    assert.equal(broadcast.statusCode, 202, broadcast.body);
    const broadcastId = bodyOf(broadcast).id;
    const worker = await createJobWorker({
      tenantry: testApp.tenantry,
      connectionString: testApp.database.adminUrl,
      jobs: testApp.jobs.jobs,
      pollIntervalMs: 50,
      retry: { baseDelayMs: 10, maxDelayMs: 50 },
    });
    try {
      const deadline = Date.now() + 60_000;
      for (;;) {
        const state = bodyOf(await call(workspace, 'GET', `/v1/broadcasts/${broadcastId}`));
        if (state.status === 'completed' || state.status === 'failed') {
          assert.equal(state.sentCount ?? state.counts?.sent, 2, JSON.stringify(state));
          break;
        }
        assert.ok(Date.now() < deadline, 'the broadcast did not finish');
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    } finally {
      await worker.stop();
    }
    const failed = await queryAsAdmin<{ last_error: string }>(
      testApp,
      `select last_error from broadcast_recipients where tenant_id = $1 and status = 'failed'`,
      [workspace.tenantId],
    );
    assert.equal(failed.length, 2);
    for (const row of failed) assert.match(row.last_error, /messages limit/);
    assert.equal(await counter(workspace, 'messages'), 6);

    // Full: the API and the webhook are refused too, and nothing is stored.
    const before = await scalar('select count(*)::text as n from messages where tenant_id = $1', [
      workspace.tenantId,
    ]);
    assertQuotaProblem(
      await call(workspace, 'POST', `/v1/conversations/${conversationId}/messages`, {
        body: 'over',
      }),
      'messages',
      6,
    );
    assertQuotaProblem(await inbound('over'), 'messages', 6);
    assert.equal(
      await scalar('select count(*)::text as n from messages where tenant_id = $1', [
        workspace.tenantId,
      ]),
      before,
    );
    assert.equal(await counter(workspace, 'messages'), 6);
    const ledger = await scalar(
      `select sum(quantity)::text as n from tenantry.usage_events where tenant_id = $1 and metric = 'messages'`,
      [workspace.tenantId],
    );
    assert.equal(ledger, 6);
    // The refusals were announced once for the period.
    const exceeded = await queryAsAdmin(
      testApp,
      `select 1 from tenantry.outbox_events where tenant_id = $1 and type = 'quota.exceeded'`,
      [workspace.tenantId],
    );
    assert.equal(exceeded.length, 1);
  });

  test('seats and storage bytes are limited too', async () => {
    const workspace = await createWorkspace(
      testApp,
      `quota-seats-${randomBytes(3).toString('hex')}`,
    );
    await setLimit(workspace, 'seats', 2);
    await addMember(testApp, workspace, 'member');
    await assert.rejects(addMember(testApp, workspace, 'member'), /quota exceeded for seats/);
    assert.equal(await counter(workspace, 'seats'), 2);

    await setLimit(workspace, 'storage_bytes', 10);
    const bytes = Buffer.from('twelve bytes');
    const requested = await call(workspace, 'POST', '/v1/files', {
      fileName: 'a.txt',
      size: bytes.byteLength,
      contentType: 'text/plain',
    });
    assert.equal(requested.statusCode, 201, requested.body);
    const { fileId, upload } = bodyOf(requested);
    const put = await testApp.app.inject({
      method: 'PUT',
      url: new URL(upload.url).pathname + new URL(upload.url).search,
      headers: upload.headers,
      payload: bytes,
    });
    assert.equal(put.statusCode, 204, put.body);
    assertQuotaProblem(
      await call(workspace, 'POST', `/v1/files/${fileId}/confirm`),
      'storage_bytes',
      10,
    );
    assert.equal(await counter(workspace, 'storage_bytes'), 0);
    await setLimit(workspace, 'storage_bytes', 100);
    const confirmed = await call(workspace, 'POST', `/v1/files/${fileId}/confirm`);
    assert.equal(confirmed.statusCode, 200, confirmed.body);
    assert.equal(await counter(workspace, 'storage_bytes'), bytes.byteLength);
    assert.equal((await call(workspace, 'DELETE', `/v1/files/${fileId}`)).statusCode, 204);
    assert.equal(await counter(workspace, 'storage_bytes'), 0);
  });

  test('GET /v1/usage shows the workspace its own plan, limits and usage only', async () => {
    const a = await createWorkspace(testApp, `quota-usage-a-${randomBytes(3).toString('hex')}`);
    const b = await createWorkspace(testApp, `quota-usage-b-${randomBytes(3).toString('hex')}`);
    await call(a, 'POST', '/v1/contacts', { name: 'Only in A' });
    const usage = await call(a, 'GET', '/v1/usage');
    assert.equal(usage.statusCode, 200, usage.body);
    const body = bodyOf(usage);
    assert.equal(body.plan, 'free');
    const contacts = body.entitlements.find(
      (entry: { metric: string }) => entry.metric === 'contacts',
    );
    assert.deepEqual(contacts, {
      metric: 'contacts',
      kind: 'count',
      unit: 'contact',
      limit: 1000,
      used: 1,
      remaining: 999,
    });
    const ofB = bodyOf(await call(b, 'GET', '/v1/usage'));
    assert.equal(
      ofB.entitlements.find((entry: { metric: string }) => entry.metric === 'contacts').used,
      0,
    );
    assert.ok(Date.parse(body.periodStart) < Date.parse(body.periodEnd));
  });
});

describe('per-workspace rate limit from the plan', () => {
  test('a workspace past its requests per minute gets 429 with RateLimit headers; another does not', async () => {
    const noisy = await createWorkspace(testApp, `rate-noisy-${randomBytes(3).toString('hex')}`);
    const quiet = await createWorkspace(testApp, `rate-quiet-${randomBytes(3).toString('hex')}`);
    await setLimit(noisy, 'api_requests_per_minute', 5);
    // The override notifies tenantry_plans; the app's limit cache drops the workspace.
    const deadline = Date.now() + 10_000;
    let first: LightMyRequestResponse;
    for (;;) {
      first = await call(noisy, 'GET', '/v1/usage');
      if (String(first.headers['ratelimit-policy'] ?? '').includes('q=5')) break;
      assert.ok(Date.now() < deadline, 'the new limit never applied');
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    assert.equal(first.statusCode, 200);
    const statuses: number[] = [];
    let refused: LightMyRequestResponse | undefined;
    for (let index = 0; index < 10; index++) {
      const response = await call(noisy, 'GET', '/v1/usage');
      statuses.push(response.statusCode);
      if (response.statusCode === 429) refused ??= response;
    }
    assert.ok(refused !== undefined, `never refused: ${statuses.join(',')}`);
    assert.equal(bodyOf(refused).code, 'TENANTRY_ERR_RATE_LIMITED');
    assert.match(String(refused.headers['retry-after']), /^[1-9][0-9]*$/);
    assert.match(String(refused.headers.ratelimit), /^"tenant";r=0;t=[0-9]+$/);
    for (let index = 0; index < 10; index++) {
      const response = await call(quiet, 'GET', '/v1/usage');
      assert.equal(response.statusCode, 200, response.body);
      assert.match(String(response.headers['ratelimit-policy']), /q=1200/);
    }
  });
});
