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
  recordingLogger,
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

async function tagNames(tenantId: string): Promise<string[]> {
  const rows = await admin.query<{ name: string }>(
    'select name from tags where tenant_id = $1 order by name',
    [tenantId],
  );
  return rows.map((row) => row.name);
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
  const heartbeats = await admin.query('select 1 from tenantry.job_workers where worker_id = $1', [
    childWorkerId,
  ]);
  assert.equal(heartbeats.length, 0, "the dead worker's heartbeat row is swept");
});

/**
 * A worker taken for dead while its job still runs (a long pause, a partition): its job is
 * released and picked up by another worker; when the first one wakes up and tries to commit, the
 * commit is refused and its work rolled back, whether the new holder is still running or done.
 */
for (const holder of ['still running', 'done'] as const) {
  test(`a worker taken for dead cannot commit its run of a job another worker holds (holder ${holder})`, async () => {
    const tenantId = await createTenant(admin, 'zombie');
    const zombieStarted = gate();
    const zombieRelease = gate();
    const holderStarted = gate();
    const holderRelease = gate();
    if (holder === 'done') holderRelease.open();
    const runs: number[] = [];
    const job = defineJob<Record<string, never>, ReferenceDatabase>(
      holder === 'done' ? 'crash.zombie-late' : 'crash.zombie-early',
      {
        async run(_payload, ctx) {
          runs.push(ctx.attempt);
          await ctx.db
            .insertInto('tags')
            .values({ name: `zombie-${ctx.attempt}` })
            .execute();
          if (ctx.attempt === 1) {
            zombieStarted.open();
            await zombieRelease.promise;
          } else {
            holderStarted.open();
            await holderRelease.promise;
          }
        },
      },
    );
    const id = await tenantry.withTenant(tenantId, (db) => enqueueJob(db, job, {}));
    const zombieLog = recordingLogger();
    const lostJobs = () =>
      zombieLog.lines
        .filter((line) => line.message?.startsWith('job no longer held'))
        .map((line) => (line.fields as { jobId?: string }).jobId);
    const zombie = await worker({ jobs: [job], concurrency: 1, logger: zombieLog.logger });
    await waitFor('the first worker to start the job', () => zombieStarted.opened);
    assert.equal((await jobRows(admin, job.name))[0]?.locked_by, zombie.workerId);

    // What a live worker does to one whose heartbeats stopped.
    await admin.query('select graphile_worker.force_unlock_workers(array[$1::text])', [
      zombie.workerId,
    ]);
    const next = await worker({ jobs: [job] });
    await waitFor('the second worker to start the released job', () => holderStarted.opened);
    if (holder === 'done') {
      await waitFor(
        'the new holder to complete the job',
        async () => (await jobRows(admin, job.name)).length === 0,
      );
      assert.deepEqual(await tagNames(tenantId), ['zombie-2']);
    } else {
      const [row] = await jobRows(admin, job.name);
      assert.equal(row?.locked_by, next.workerId);
    }

    zombieRelease.open();
    await waitFor(
      "the first worker's unit of work to end",
      () => zombie.health().running === 0 && zombie.health().completed + lostJobs().length > 0,
    );
    assert.equal(zombie.health().completed, 0, 'the worker taken for dead committed its run');
    assert.deepEqual(lostJobs(), [id]);
    assert.ok(!(await tagNames(tenantId)).includes('zombie-1'), "the zombie's work rolled back");
    if (holder === 'still running') {
      const [row] = await jobRows(admin, job.name);
      assert.equal(row?.locked_by, next.workerId, 'the job stays with its new holder');
      holderRelease.open();
      await waitFor(
        'the new holder to complete the job',
        async () => (await jobRows(admin, job.name)).length === 0,
      );
    }
    await Promise.all([zombie.stop(), next.stop()]);
    assert.deepEqual(runs, [1, 2]);
    assert.deepEqual(await tagNames(tenantId), ['zombie-2']);
    assert.equal(next.health().completed, 1);
    assert.equal((await jobRows(admin, job.name)).length, 0);
  });
}

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
