import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { sql } from 'kysely';
import { createTenantry, type Tenantry } from 'tenantry';
import { createJobAdmin, createJobWorker, defineJob, enqueueJob } from 'tenantry/jobs';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { type ReferenceDatabase, withClient } from './fixtures.ts';

let database: TestDatabase;
let tenantry: Tenantry<ReferenceDatabase>;

async function admin(text: string, values: unknown[] = []): Promise<Record<string, unknown>[]> {
  return withClient(database.adminUrl, async (client) => (await client.query(text, values)).rows);
}

before(async () => {
  database = await createTestDatabase();
  tenantry = await createTenantry<ReferenceDatabase>({ connectionString: database.appUrl, maxConnections: 6 });
});
after(async () => {
  await tenantry.close();
  await database.drop();
});

test('a committed job runs once in its tenant', async () => {
  const tenantId = randomUUID();
  await admin(`insert into tenantry.tenants (id, slug, name) values ($1, 'smoke', 'smoke')`, [tenantId]);
  const seen: string[] = [];
  const tagJob = defineJob<{ name: string }, ReferenceDatabase>('smoke.tag', {
    async run({ name }, { db, tenantId: jobTenant }) {
      seen.push(jobTenant);
      await db.insertInto('tags').values({ name }).execute();
    },
  });
  await assert.rejects(
    tenantry.withTenant(tenantId, async (db) => {
      await enqueueJob(db, tagJob, { name: 'rolled-back' });
      throw new Error('rollback');
    }),
  );
  await tenantry.withTenant(tenantId, (db) => enqueueJob(db, tagJob, { name: 'committed' }));
  const worker = await createJobWorker({
    tenantry,
    connectionString: database.adminUrl,
    jobs: [tagJob],
    pollIntervalMs: 100,
    heartbeatIntervalMs: 200,
    staleWorkerAfterMs: 1000,
  });
  try {
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && seen.length === 0) await new Promise((r) => setTimeout(r, 50));
    const admin2 = createJobAdmin({ connectionString: database.adminUrl });
    const deadline2 = Date.now() + 5000;
    while (Date.now() < deadline2 && (await admin2.countJobs()).waiting + (await admin2.countJobs()).running > 0) await new Promise((r) => setTimeout(r, 50));
    await admin2.close();
  } finally {
    await worker.stop();
  }
  assert.deepEqual(seen, [tenantId]);
  const tags = await tenantry.withTenant(tenantId, (db) => db.selectFrom('tags').select('name').execute());
  assert.deepEqual(tags.map((t) => t.name), ['committed']);
  const rows = await admin('select count(*)::int as n from graphile_worker._private_jobs');
  assert.equal(rows[0]?.n, 0);
  void sql;
});
