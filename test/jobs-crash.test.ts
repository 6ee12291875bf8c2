import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createTenantry, type Tenantry } from 'tenantry';
import { defineJob, enqueueJob, type JobWorker } from 'tenantry/jobs';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import type { ReferenceDatabase } from './fixtures.ts';
import {
  type AdminPool,
  crashEffectTag,
  crashJobName,
  createAdminPool,
  createTenant,
  gate,
  jobRows,
  startWorker,
  waitFor,
} from './jobs-fixtures/helpers.ts';

const crashWorkerScript = fileURLToPath(
  new URL('./jobs-fixtures/crash-worker.ts', import.meta.url),
);

let database: TestDatabase;
let tenantry: Tenantry<ReferenceDatabase>;
let admin: AdminPool;
const workers: JobWorker[] = [];
const children: ChildProcess[] = [];

before(async () => {
  database = await createTestDatabase();
  tenantry = await createTenantry<ReferenceDatabase>({ connectionString: database.appUrl });
  admin = createAdminPool(database.adminUrl);
});

after(async () => {
  for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  await Promise.all(workers.map((worker) => worker.stop()));
  await admin.close();
  await tenantry.close();
  await database.drop();
});

async function worker(options: Parameters<typeof startWorker>[2]): Promise<JobWorker> {
  const started = await startWorker(tenantry, database.adminUrl, options);
  workers.push(started);
  return started;
}

async function tagCount(tenantId: string, name: string): Promise<number> {
  const [row] = await admin.query<{ n: number }>(
    'select count(*)::int as n from tags where tenant_id = $1 and name = $2',
    [tenantId, name],
  );
  return row?.n ?? -1;
}

test('a job whose worker process is killed mid-job runs again elsewhere, its effect landing once', async () => {
  const tenantId = await createTenant(admin, 'crash');
  const runs: { tenantId: string; attempt: number; jobId: string }[] = [];
  const crashJob = defineJob<Record<string, never>, ReferenceDatabase>(crashJobName, {
    async run(_payload, ctx) {
      runs.push({ tenantId: ctx.tenantId, attempt: ctx.attempt, jobId: ctx.jobId });
      await ctx.db.insertInto('tags').values({ name: crashEffectTag }).execute();
    },
  });
  const id = await tenantry.withTenant(tenantId, (db) => enqueueJob(db, crashJob, {}));

  const child = spawn(
    process.execPath,
    [
      '--conditions=development',
      crashWorkerScript,
      JSON.stringify({ appUrl: database.appUrl, adminUrl: database.adminUrl }),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  children.push(child);
  const lines: string[] = [];
  createInterface({ input: child.stdout as NonNullable<typeof child.stdout> }).on('line', (line) =>
    lines.push(line),
  );
  const running = await waitFor('the child to report its running job', () => {
    if (child.exitCode !== null) throw new Error(`the child exited early (${child.exitCode})`);
    return lines.find((line) => line.startsWith('running '));
  });
  assert.equal(running, `running ${id} 1`);
  const childWorkerId = lines.find((line) => line.startsWith('worker '))?.slice('worker '.length);
  assert.ok(childWorkerId);
  const [locked] = await jobRows(admin, crashJobName);
  assert.equal(locked?.locked_by, childWorkerId);
  assert.equal(await tagCount(tenantId, crashEffectTag), 0, 'the uncommitted row is not visible');

  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;

  await worker({ jobs: [crashJob] });
  await waitFor('the job to run again and be removed', async () => {
    return (await jobRows(admin, crashJobName)).length === 0;
  });
  assert.deepEqual(runs, [{ tenantId, attempt: 2, jobId: id }]);
  assert.equal(await tagCount(tenantId, crashEffectTag), 1);
  const completions = await admin.query(
    'select tenant_id::text from tenantry.job_completions where job_id = $1',
    [id],
  );
  assert.deepEqual(completions, [{ tenant_id: tenantId }]);
  const heartbeats = await admin.query('select 1 from tenantry.job_workers where worker_id = $1', [
    childWorkerId,
  ]);
  assert.equal(heartbeats.length, 0, "the dead worker's heartbeat row is swept");
});

test('a job whose completion is already recorded is not run again, and is removed', async () => {
  const tenantId = await createTenant(admin, 'completed');
  const ran: string[] = [];
  const job = defineJob<{ name: string }, ReferenceDatabase>('crash.completed', {
    async run({ name }, ctx) {
      ran.push(name);
      await ctx.db.insertInto('tags').values({ name }).execute();
    },
  });
  const done = await tenantry.withTenant(tenantId, (db) => enqueueJob(db, job, { name: 'done' }));
  await tenantry.withTenant(tenantId, (db) => enqueueJob(db, job, { name: 'fresh' }));
  await admin.query(
    'insert into tenantry.job_completions (tenant_id, job_id, task) values ($1, $2, $3)',
    [tenantId, done, job.name],
  );
  const running = await worker({ jobs: [job] });
  await waitFor(
    'both jobs to be removed',
    async () => (await jobRows(admin, job.name)).length === 0,
  );
  await running.stop();
  assert.deepEqual(ran, ['fresh']);
  assert.equal(await tagCount(tenantId, 'done'), 0);
  assert.equal(await tagCount(tenantId, 'fresh'), 1);
});

test('jobs locked by a worker that never recorded a heartbeat are released once stale', async () => {
  const tenantId = await createTenant(admin, 'orphan');
  const ran: number[] = [];
  const job = defineJob<Record<string, never>, ReferenceDatabase>('crash.orphan', {
    async run(_payload, ctx) {
      ran.push(ctx.attempt);
    },
  });
  const id = await tenantry.withTenant(tenantId, (db) => enqueueJob(db, job, {}));
  await admin.query(
    `update graphile_worker._private_jobs
        set locked_by = 'worker-that-died-starting', locked_at = now() - interval '1 hour', attempts = 1
      where id = $1`,
    [id],
  );
  const running = await worker({ jobs: [job] });
  await waitFor(
    'the orphaned job to run',
    async () => (await jobRows(admin, job.name)).length === 0,
  );
  await running.stop();
  assert.deepEqual(ran, [2]);
});

test("a live worker's long job is not taken by another worker", async () => {
  const tenantId = await createTenant(admin, 'live');
  const started = gate();
  const release = gate();
  let runs = 0;
  const job = defineJob<Record<string, never>, ReferenceDatabase>('crash.long', {
    async run() {
      runs++;
      started.open();
      await release.promise;
    },
  });
  await tenantry.withTenant(tenantId, (db) => enqueueJob(db, job, {}));
  // Seven missed heartbeats before a worker counts as dead: a loaded test machine is not a crash.
  const timing = { heartbeatIntervalMs: 200, staleWorkerAfterMs: 1500 };
  const first = await worker({ jobs: [job], ...timing });
  await started.promise;
  const startedAt = Date.now();
  const second = await worker({ jobs: [job], ...timing });
  // A heartbeat of the second worker after two stale windows had the chance to release the job.
  await waitFor('the second worker to heartbeat past two stale windows', () => {
    const at = second.health().lastHeartbeatAt?.getTime() ?? 0;
    return at > startedAt + 2 * timing.staleWorkerAfterMs;
  });
  const [row] = await jobRows(admin, job.name);
  assert.equal(row?.locked_by, first.workerId);
  assert.equal(runs, 1);
  release.open();
  await waitFor(
    'the long job to finish',
    async () => (await jobRows(admin, job.name)).length === 0,
  );
  await Promise.all([first.stop(), second.stop()]);
  assert.equal(runs, 1);
});
