import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { isTenantryError } from 'tenantry';
import { defineJob, enqueueJob } from 'tenantry/jobs';
import { createTenantLifecycle, type TenantLifecycle } from 'tenantry/platform';
import {
  bodyOf,
  createTestApp,
  createWorkspace,
  queryAsAdmin,
  type TestApp,
  type TestWorkspace,
} from './app-fixtures.ts';

let testApp: TestApp;
let lifecycle: TenantLifecycle;
const signingKey = randomBytes(32).toString('base64');

before(async () => {
  testApp = await createTestApp();
  lifecycle = createTenantLifecycle({ connectionString: testApp.database.adminUrl });
});

after(async () => {
  await lifecycle?.close();
  await testApp?.close();
});

async function eventTypes(tenantId: string): Promise<string[]> {
  const rows = await queryAsAdmin<{ type: string }>(
    testApp,
    'select type from tenantry.outbox_events where tenant_id = $1 order by created_at, id',
    [tenantId],
  );
  return rows.map((row) => row.type);
}

async function rejectsWith(promise: Promise<unknown>, code: string, message?: RegExp) {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isTenantryError(error), `expected a TenantryError, got ${String(error)}`);
    assert.equal(error.code, code);
    if (message !== undefined) assert.match(error.message, message);
    return true;
  });
}

/** Polls the API until `predicate` holds for a response (the directory learns by NOTIFY). */
async function untilResponse(workspace: TestWorkspace, predicate: (status: number) => boolean) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const response = await testApp.app.inject({
      method: 'GET',
      url: '/v1/contacts',
      headers: workspace.headers,
    });
    if (predicate(response.statusCode)) return response;
    if (Date.now() > deadline) {
      assert.fail(`the API still answers ${response.statusCode}: ${response.body}`);
    }
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe('create', () => {
  test('creates an active tenant on the default plan and emits tenant.created once', async () => {
    const tenant = await lifecycle.create({ slug: 'lc-create', name: 'Create Inc.' });
    assert.equal(tenant.status, 'active');
    assert.equal(tenant.plan, 'free');
    assert.equal(tenant.slug, 'lc-create');
    assert.deepEqual(await eventTypes(tenant.id), ['tenant.created']);
    const stored = await lifecycle.get(tenant.id);
    assert.deepEqual(stored, tenant);
  });

  test('bad input is refused with a clear code and creates nothing', async () => {
    const before = await queryAsAdmin<{ n: number }>(
      testApp,
      'select count(*)::int as n from tenantry.tenants',
    );
    await lifecycle.create({ slug: 'lc-taken', name: 'Taken' });
    await rejectsWith(
      lifecycle.create({ slug: 'lc-taken', name: 'Again' }),
      'TENANTRY_ERR_TENANT_SLUG_TAKEN',
    );
    await rejectsWith(
      lifecycle.create({ slug: 'Bad Slug', name: 'x' }),
      'TENANTRY_ERR_TENANT_SLUG_INVALID',
    );
    await rejectsWith(
      lifecycle.create({ slug: '-x', name: 'x' }),
      'TENANTRY_ERR_TENANT_SLUG_INVALID',
    );
    await rejectsWith(
      lifecycle.create({ slug: 'lc-blank', name: '   ' }),
      'TENANTRY_ERR_TENANT_INVALID',
    );
    await rejectsWith(
      lifecycle.create({ slug: 'lc-long', name: 'x'.repeat(201) }),
      'TENANTRY_ERR_TENANT_INVALID',
    );
    await rejectsWith(
      lifecycle.create({ slug: 'lc-plan', name: 'x', plan: 'no-such-plan' }),
      'TENANTRY_ERR_PLAN_NOT_FOUND',
    );
    const afterCount = await queryAsAdmin<{ n: number }>(
      testApp,
      'select count(*)::int as n from tenantry.tenants',
    );
    assert.equal(afterCount[0]?.n, (before[0]?.n ?? 0) + 1);
  });

  test('unknown and malformed tenant ids', async () => {
    await rejectsWith(lifecycle.get(randomUUID()), 'TENANTRY_ERR_TENANT_NOT_FOUND');
    await rejectsWith(lifecycle.suspend(randomUUID()), 'TENANTRY_ERR_TENANT_NOT_FOUND');
    await rejectsWith(lifecycle.resume(randomUUID()), 'TENANTRY_ERR_TENANT_NOT_FOUND');
    await rejectsWith(
      lifecycle.eraseTenant({ tenantId: randomUUID(), signingKey }),
      'TENANTRY_ERR_TENANT_NOT_FOUND',
    );
    await rejectsWith(
      lifecycle.suspend("x'; drop table tenants; --"),
      'TENANTRY_ERR_TENANT_ID_INVALID',
    );
  });
});

describe('suspend and resume', () => {
  test('a suspended workspace is refused by the API, resume restores it, events once each', async () => {
    const workspace = await createWorkspace(testApp, 'lc-suspend');
    await untilResponse(workspace, (status) => status === 200);

    const suspended = await lifecycle.suspend(workspace.tenantId, { reason: 'unpaid invoice' });
    assert.equal(suspended.changed, true);
    assert.equal(suspended.tenant.status, 'suspended');
    assert.equal(suspended.tenant.statusReason, 'unpaid invoice');
    const refused = await untilResponse(workspace, (status) => status !== 200);
    assert.equal(refused.statusCode, 403);
    assert.equal(bodyOf(refused).code, 'TENANTRY_ERR_TENANT_SUSPENDED');

    // Suspending again changes nothing and emits nothing.
    const again = await lifecycle.suspend(workspace.tenantId);
    assert.equal(again.changed, false);
    assert.equal(again.tenant.statusReason, 'unpaid invoice');

    const resumed = await lifecycle.resume(workspace.tenantId);
    assert.equal(resumed.changed, true);
    assert.equal(resumed.tenant.status, 'active');
    assert.equal(resumed.tenant.statusReason, undefined);
    await untilResponse(workspace, (status) => status === 200);
    assert.equal((await lifecycle.resume(workspace.tenantId)).changed, false);

    assert.deepEqual(await eventTypes(workspace.tenantId), [
      'tenant.created',
      'tenant.suspended',
      'tenant.resumed',
    ]);
    const [event] = await queryAsAdmin<{ data: Record<string, unknown> }>(
      testApp,
      `select data from tenantry.outbox_events where tenant_id = $1 and type = 'tenant.suspended'`,
      [workspace.tenantId],
    );
    assert.equal(event?.data.reason, 'unpaid invoice');
    assert.equal(event?.data.previousStatus, 'active');
  });

  test('resume makes the parked jobs of the tenant runnable again, and only its own', async () => {
    const mine = await createWorkspace(testApp, 'lc-jobs-mine');
    const other = await createWorkspace(testApp, 'lc-jobs-other');
    const noop = defineJob<{ n: number }>('lifecycle.noop', { run: async () => {} });
    for (const workspace of [mine, other]) {
      await testApp.tenantry.withTenant(workspace.tenantId, (db) => enqueueJob(db, noop, { n: 1 }));
    }
    await lifecycle.suspend(mine.tenantId);
    await lifecycle.suspend(other.tenantId);
    // What the worker does to a suspended tenant's job (tested with the worker in jobs.test.ts).
    await queryAsAdmin(
      testApp,
      `update graphile_worker._private_jobs set run_at = 'infinity'
        where payload ->> 'tenantId' = any($1::text[])`,
      [[mine.tenantId, other.tenantId]],
    );
    const resumed = await lifecycle.resume(mine.tenantId);
    assert.equal(resumed.jobsResumed, 1);
    const rows = await queryAsAdmin<{ tenant: string; parked: boolean }>(
      testApp,
      `select payload ->> 'tenantId' as tenant, run_at = 'infinity' as parked
         from graphile_worker._private_jobs where payload ->> 'tenantId' = any($1::text[])`,
      [[mine.tenantId, other.tenantId]],
    );
    assert.deepEqual(
      rows.map((row) => [row.tenant === mine.tenantId ? 'mine' : 'other', row.parked]).sort(),
      [
        ['mine', false],
        ['other', true],
      ],
    );
  });

  test('wrong transitions are refused and change nothing', async () => {
    const workspace = await createWorkspace(testApp, 'lc-wrong');
    // Erasing an active tenant needs force.
    await rejectsWith(
      lifecycle.eraseTenant({ tenantId: workspace.tenantId, signingKey }),
      'TENANTRY_ERR_TENANT_STATE_CONFLICT',
      /suspend it first/,
    );
    assert.equal((await lifecycle.get(workspace.tenantId)).status, 'active');
    await queryAsAdmin(testApp, `update tenantry.tenants set status = 'moving' where id = $1`, [
      workspace.tenantId,
    ]);
    await rejectsWith(lifecycle.suspend(workspace.tenantId), 'TENANTRY_ERR_TENANT_STATE_CONFLICT');
    await rejectsWith(lifecycle.resume(workspace.tenantId), 'TENANTRY_ERR_TENANT_STATE_CONFLICT');
    await rejectsWith(
      lifecycle.eraseTenant({ tenantId: workspace.tenantId, signingKey, force: true }),
      'TENANTRY_ERR_TENANT_STATE_CONFLICT',
      /being moved/,
    );
    assert.equal((await lifecycle.get(workspace.tenantId)).status, 'moving');
    await rejectsWith(
      lifecycle.suspend(workspace.tenantId, { reason: ' ' }),
      'TENANTRY_ERR_TENANT_INVALID',
    );
    await rejectsWith(
      lifecycle.eraseTenant({ tenantId: workspace.tenantId, signingKey: 'short' }),
      'TENANTRY_ERR_CONFIG_INVALID',
    );
  });

  test('the full life: created, suspended, resumed, deleted — each event exactly once', async () => {
    const tenant = await lifecycle.create({ slug: 'lc-life', name: 'Life' });
    await lifecycle.suspend(tenant.id);
    await lifecycle.resume(tenant.id);
    await lifecycle.suspend(tenant.id);
    const first = await lifecycle.eraseTenant({ tenantId: tenant.id, signingKey });
    const second = await lifecycle.eraseTenant({ tenantId: tenant.id, signingKey });
    assert.equal(second.alreadyFinished, true);
    assert.deepEqual(second.report, first.report);
    // The erasure removes the tenant's earlier events and leaves its own tenant.deleted.
    assert.deepEqual(await eventTypes(tenant.id), ['tenant.deleted']);
    await rejectsWith(lifecycle.resume(tenant.id), 'TENANTRY_ERR_TENANT_STATE_CONFLICT');
    await rejectsWith(lifecycle.suspend(tenant.id), 'TENANTRY_ERR_TENANT_STATE_CONFLICT');
    const erased = await lifecycle.get(tenant.id);
    assert.equal(erased.status, 'deleted');
    assert.notEqual(erased.slug, 'lc-life');
    // The slug is free again; the id never comes back.
    const reused = await lifecycle.create({ slug: 'lc-life', name: 'Life again' });
    assert.notEqual(reused.id, tenant.id);
  });

  test('a tenant marked deleted outside an erasure still emits tenant.deleted (trigger)', async () => {
    const tenant = await lifecycle.create({ slug: 'lc-soft', name: 'Soft' });
    await queryAsAdmin(testApp, `update tenantry.tenants set status = 'deleted' where id = $1`, [
      tenant.id,
    ]);
    assert.deepEqual(await eventTypes(tenant.id), ['tenant.created', 'tenant.deleted']);
    const erased = await lifecycle.eraseTenant({ tenantId: tenant.id, signingKey });
    assert.equal(erased.report.previousStatus, 'deleted');
    const events = await queryAsAdmin<{ type: string; data: Record<string, unknown> }>(
      testApp,
      'select type, data from tenantry.outbox_events where tenant_id = $1',
      [tenant.id],
    );
    assert.equal(events.length, 1);
    assert.ok(
      events[0]?.data.erasure !== undefined,
      'the one left is the erasure’s, with its report',
    );
  });
});
