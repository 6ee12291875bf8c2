import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { createTenantry, silentLogger, type Tenantry } from 'tenantry';
import { createJobWorker } from 'tenantry/jobs';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import type { AppDatabase } from '../app/database.ts';
import { setupJobs } from '../app/jobs.ts';
import { withClient } from './fixtures.ts';
import { waitFor } from './jobs-fixtures/helpers.ts';

let database: TestDatabase;
let tenantry: Tenantry<AppDatabase>;

async function admin(text: string, values: unknown[] = []): Promise<Record<string, unknown>[]> {
  return withClient(database.adminUrl, async (client) => (await client.query(text, values)).rows);
}

before(async () => {
  database = await createTestDatabase();
  tenantry = await createTenantry<AppDatabase>({
    connectionString: database.appUrl,
    maxConnections: 4,
  });
});
after(async () => {
  await tenantry.close();
  await database.drop();
});

test('the hourly schedule expires each workspace’s idempotency keys older than 24 hours, and only those', async () => {
  const tenants = [randomUUID(), randomUUID()];
  for (const [index, id] of tenants.entries()) {
    await admin(`insert into tenantry.tenants (id, slug, name) values ($1, $2, $2)`, [
      id,
      `expiry-${index}`,
    ]);
    for (const [key, age] of [
      ['old', '25 hours'],
      ['fresh', '23 hours'],
    ]) {
      await admin(
        `insert into idempotency_keys (tenant_id, key, request_hash, created_at)
         values ($1, $2, '\\x00', now() - $3::interval)`,
        [id, key, age],
      );
    }
  }
  const suspended = randomUUID();
  await admin(
    `insert into tenantry.tenants (id, slug, name, status) values ($1, 'expiry-off', 'x', 'suspended')`,
    [suspended],
  );
  await admin(
    `insert into idempotency_keys (tenant_id, key, request_hash, created_at)
     values ($1, 'old', '\\x00', now() - interval '25 hours')`,
    [suspended],
  );

  const jobs = await setupJobs({
    tenantry,
    appConnectionString: database.appUrl,
    logger: silentLogger,
  });
  const worker = await createJobWorker({
    tenantry,
    connectionString: database.adminUrl,
    jobs: jobs.jobs,
    schedules: jobs.schedules,
    pollIntervalMs: 50,
    heartbeatIntervalMs: 200,
    staleWorkerAfterMs: 1000,
  });
  try {
    const fanOut = await worker.runSchedule('idempotency-expiry', new Date('2026-11-23T10:17:00Z'));
    assert.equal(fanOut.enqueued, 2);
    await waitFor('the expiry jobs to finish', async () => {
      const [row] = await admin(
        `select count(*)::int as n from graphile_worker._private_jobs j
           join graphile_worker._private_tasks t on t.id = j.task_id
          where t.identifier = 'idempotency.expire'`,
      );
      return row?.n === 0;
    });
  } finally {
    await worker.stop();
    await jobs.close();
  }
  const keys = await admin(
    'select tenant_id::text, key from idempotency_keys order by tenant_id, key',
  );
  assert.deepEqual(
    keys,
    [
      ...tenants.map((tenant_id) => ({ tenant_id, key: 'fresh' })),
      { tenant_id: suspended, key: 'old' },
    ].sort((a, b) => (a.tenant_id + a.key < b.tenant_id + b.key ? -1 : 1)),
  );
});
