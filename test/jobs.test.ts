import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { type Kysely, sql } from 'kysely';
import { createTenantry, isTenantryError, type Tenantry, type TenantryErrorCode } from 'tenantry';
import {
  createJobAdmin,
  createJobWorker,
  defineJob,
  enqueueJob,
  enqueueJobs,
  type JobAdmin,
  type JobDefinition,
  type JobWorker,
  type JobWorkerOptions,
  retryDelayMs,
} from 'tenantry/jobs';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { type ReferenceDatabase, seedTenant, sqlState, withClient } from './fixtures.ts';
import {
  type AdminPool,
  createAdminPool,
  createTenant,
  gate,
  jobRows,
  recordingLogger,
  startWorker,
  waitFor,
} from './jobs-fixtures/helpers.ts';

let database: TestDatabase;
let tenantry: Tenantry<ReferenceDatabase>;
let admin: AdminPool;
let jobAdmin: JobAdmin;
const workers: JobWorker[] = [];

before(async () => {
  database = await createTestDatabase();
  tenantry = await createTenantry<ReferenceDatabase>({
    connectionString: database.appUrl,
    maxConnections: 8,
  });
  admin = createAdminPool(database.adminUrl);
  jobAdmin = createJobAdmin({ connectionString: database.adminUrl });
});

after(async () => {
  await Promise.all(workers.map((worker) => worker.stop()));
  await jobAdmin.close();
  await admin.close();
  await tenantry.close();
  await database.drop();
});

/** Starts a worker on the file's database; `after` stops it if the test did not. */
async function worker(
  options: Parameters<typeof startWorker>[2],
  on: Tenantry<ReferenceDatabase> = tenantry,
): Promise<JobWorker> {
  const started = await startWorker(on, database.adminUrl, options);
  workers.push(started);
  return started;
}

function code(expected: TenantryErrorCode): (error: unknown) => boolean {
  return (error) => {
    assert.ok(isTenantryError(error, expected), `expected ${expected}, got ${String(error)}`);
    return true;
  };
}

async function jobCount(task: string, pool: AdminPool = admin): Promise<number> {
  return (await jobRows(pool, task)).length;
}

function noop<P = Record<string, unknown>>(name: string): JobDefinition<P, ReferenceDatabase> {
  return defineJob<P, ReferenceDatabase>(name, { async run() {} });
}

describe('enqueue', () => {
  test('a job exists only if its unit of work commits, stamped with the unit tenant', async () => {
    const tenantId = await createTenant(admin, 'commit');
    const job = noop<{ note: string }>('enqueue.commit');

    await assert.rejects(
      tenantry.withTenant(tenantId, async (db) => {
        await enqueueJob(db, job, { note: 'rolled back' });
        throw new Error('rollback on purpose');
      }),
      /rollback on purpose/,
    );
    assert.equal(await jobCount(job.name), 0);

    const id = await tenantry.withTenant(tenantId, (db) =>
      enqueueJob(db, job, { note: 'committed' }),
    );
    const rows = await jobRows(admin, job.name);
    assert.equal(rows.length, 1);
    assert.equal(rows[0]?.id, id);
    assert.equal(rows[0]?.payload.tenantId, tenantId);
    assert.deepEqual(rows[0]?.payload.data, { note: 'committed' });
    assert.deepEqual(rows[0]?.flags, { [`tenant:${tenantId}`]: true });
    assert.equal(rows[0]?.key, null);
  });

  test('enqueueJobs writes every job in the unit tenant, and nothing when it rolls back', async () => {
    const tenantId = await createTenant(admin, 'bulk');
    const job = noop<{ n: number }>('enqueue.bulk');
    await assert.rejects(
      tenantry.withTenant(tenantId, async (db) => {
        await enqueueJobs(db, job, [{ n: 0 }, { n: 1 }]);
        throw new Error('rollback on purpose');
      }),
    );
    assert.equal(await jobCount(job.name), 0);
    const ids = await tenantry.withTenant(tenantId, (db) =>
      enqueueJobs(db, job, [{ n: 1 }, { n: 2 }, { n: 3 }]),
    );
    const rows = await jobRows(admin, job.name);
    assert.deepEqual(
      rows.map((row) => row.id),
      ids,
    );
    for (const [index, row] of rows.entries()) {
      assert.equal(row.tenant_id, tenantId);
      assert.deepEqual(row.payload.data, { n: index + 1 });
      assert.deepEqual(row.flags, { [`tenant:${tenantId}`]: true });
    }
    assert.deepEqual(await tenantry.withTenant(tenantId, (db) => enqueueJobs(db, job, [])), []);
  });

  test('enqueueing outside a tenant context throws TENANTRY_ERR_CONTEXT_MISSING and stores nothing', async () => {
    const job = noop('enqueue.outside');
    await assert.rejects(enqueueJob(tenantry.db, job, {}), code('TENANTRY_ERR_CONTEXT_MISSING'));
    await assert.rejects(enqueueJobs(tenantry.db, job, [{}]), code('TENANTRY_ERR_CONTEXT_MISSING'));
    await withClient(database.appUrl, async (client) => {
      assert.equal(
        await sqlState(client.query(`select tenantry.enqueue_job('enqueue.outside', '{}'::jsonb)`)),
        '42501',
      );
      await client.query('begin');
      await client.query(`set local tenantry.tenant_id = ''`);
      assert.equal(
        await sqlState(
          client.query(`select tenantry.enqueue_jobs('enqueue.outside', array['{}'::jsonb])`),
        ),
        '42501',
      );
      await client.query('rollback');
    });
    assert.equal(await jobCount(job.name), 0);
  });

  test('the app role cannot reach the runner tables and functions, even in a tenant context', async () => {
    const tenantId = await createTenant(admin, 'no-runner');
    const statements: [string, string][] = [
      ['select jobs', 'select * from graphile_worker._private_jobs'],
      ['select jobs view', 'select * from graphile_worker.jobs'],
      [
        'insert job',
        `insert into graphile_worker._private_jobs (task_id, payload) values (1, '{}')`,
      ],
      ['update jobs', 'update graphile_worker._private_jobs set run_at = now()'],
      ['delete jobs', 'delete from graphile_worker._private_jobs'],
      ['select tasks', 'select * from graphile_worker._private_tasks'],
      ['add_job', `select graphile_worker.add_job('enqueue.direct', '{}'::json)`],
      [
        'add_jobs',
        `select * from graphile_worker.add_jobs(array[row('enqueue.direct', '{}'::json, null, null, null, null, null, null)::graphile_worker.job_spec])`,
      ],
      ['force_unlock_workers', `select graphile_worker.force_unlock_workers(array['w'])`],
      ['permanently_fail_jobs', 'select graphile_worker.permanently_fail_jobs(array[1::bigint])'],
      ['job_backlog', `select tenantry.job_backlog('${tenantId}')`],
      ['select job_workers', 'select * from tenantry.job_workers'],
      [
        'insert job_workers',
        `insert into tenantry.job_workers (worker_id, host, pid) values ('w', 'h', 1)`,
      ],
      ['delete scheduled_job_runs', 'delete from tenantry.scheduled_job_runs'],
    ];
    await withClient(database.appUrl, async (client) => {
      for (const [label, statement] of statements) {
        await client.query('begin');
        await client.query(`set local tenantry.tenant_id = '${tenantId}'`);
        const state = await sqlState(client.query(statement));
        await client.query('rollback');
        assert.equal(state, '42501', label);
      }
    });
    assert.equal(await jobCount('enqueue.direct'), 0);
  });

  test('complete_job removes only a job of the current tenant that the named worker holds', async () => {
    const a = await createTenant(admin, 'complete-a');
    const b = await createTenant(admin, 'complete-b');
    const job = noop('enqueue.complete');
    const id = await tenantry.withTenant(a, (db) => enqueueJob(db, job, {}));
    await admin.query(
      `update graphile_worker._private_jobs
          set locked_by = 'worker-a', locked_at = '2026-01-01T00:00:00.123Z', attempts = 1
        where id = $1`,
      [id],
    );
    const complete = `select tenantry.complete_job($1::bigint, $2::text, '2026-01-01T00:00:00.123Z')`;
    await withClient(database.appUrl, async (client) => {
      const refusal = async (tenantId: string | null, worker: string | null): Promise<unknown> => {
        await client.query('begin');
        if (tenantId !== null) await client.query(`set local tenantry.tenant_id = '${tenantId}'`);
        try {
          await client.query(complete, [id, worker]);
          return 'completed';
        } catch (error) {
          const { code, hint } = error as { code?: unknown; hint?: unknown };
          return { code, hint };
        } finally {
          await client.query('rollback');
        }
      };
      const notHeld = { code: '55000', hint: 'tenantry:job_not_held' };
      assert.deepEqual(await refusal(b, 'worker-a'), notHeld, "another tenant's job");
      assert.deepEqual(await refusal(a, 'worker-b'), notHeld, 'another worker');
      assert.deepEqual(await refusal(a, null), notHeld, 'no worker');
      assert.deepEqual(await refusal(a, ''), notHeld, 'an empty worker id');
      assert.deepEqual(await refusal(null, 'worker-a'), notHeld, 'no tenant context');
      assert.deepEqual(await refusal('', 'worker-a'), notHeld, 'an empty tenant context');
      assert.equal(
        await sqlState(client.query(complete, [id, 'worker-a'])),
        '55000',
        'outside any transaction',
      );
      const [row] = await jobRows(admin, job.name);
      assert.equal(row?.id, id);
      assert.equal(row?.locked_by, 'worker-a');

      await client.query('begin');
      await client.query(`set local tenantry.tenant_id = '${a}'`);
      await client.query(complete, [id, 'worker-a']);
      await client.query('rollback');
      assert.equal(await jobCount(job.name), 1, 'a rolled-back completion leaves the job');
      await client.query('begin');
      await client.query(`set local tenantry.tenant_id = '${a}'`);
      await client.query(complete, [id, 'worker-a']);
      await client.query('commit');
    });
    assert.equal(await jobCount(job.name), 0);
  });

  test('idempotency keys deduplicate within a tenant, never across tenants', async () => {
    const a = await createTenant(admin, 'key-a');
    const b = await createTenant(admin, 'key-b');
    const job = noop<{ n: number }>('enqueue.keyed');
    const first = await tenantry.withTenant(a, (db) =>
      enqueueJob(db, job, { n: 1 }, { key: 'welcome:1' }),
    );
    const again = await tenantry.withTenant(a, (db) =>
      enqueueJob(db, job, { n: 2 }, { key: 'welcome:1' }),
    );
    assert.equal(again, first);
    let rows = await jobRows(admin, job.name);
    assert.equal(rows.length, 1);
    assert.deepEqual(rows[0]?.payload.data, { n: 1 });

    const inB = await tenantry.withTenant(b, (db) =>
      enqueueJob(db, job, { n: 3 }, { key: 'welcome:1' }),
    );
    assert.notEqual(inB, first);
    rows = await jobRows(admin, job.name);
    assert.deepEqual(
      rows.map((row) => [row.tenant_id, row.key]),
      [
        [a, `${a}/welcome:1`],
        [b, `${b}/welcome:1`],
      ],
    );
    const listed = await jobAdmin.listJobs({ tenantId: a, task: job.name });
    assert.deepEqual(
      listed.map((info) => [info.id, info.key, info.state]),
      [[first, 'welcome:1', 'waiting']],
    );

    const replaced = await tenantry.withTenant(a, (db) =>
      enqueueJob(db, job, { n: 4 }, { key: 'welcome:1', keyMode: 'replace' }),
    );
    assert.equal(replaced, first);
    rows = await jobRows(admin, job.name);
    assert.equal(rows.length, 2);
    assert.deepEqual(rows.find((row) => row.tenant_id === a)?.payload.data, { n: 4 });
    assert.deepEqual(rows.find((row) => row.tenant_id === b)?.payload.data, { n: 3 });
  });

  test('invalid payloads, keys, run times and options are refused with TENANTRY_ERR_JOB_INVALID', async () => {
    const tenantId = await createTenant(admin, 'invalid');
    const job = noop<unknown>('enqueue.invalid');
    const attempts: [string, (db: Kysely<ReferenceDatabase>) => Promise<unknown>][] = [
      ['array payload', (db) => enqueueJob(db, job, [1])],
      ['null payload', (db) => enqueueJob(db, job, null)],
      ['string payload', (db) => enqueueJob(db, job, 'text')],
      ['number payload', (db) => enqueueJob(db, job, 7)],
      [
        'cyclic payload',
        (db) => {
          const cyclic: Record<string, unknown> = {};
          cyclic.self = cyclic;
          return enqueueJob(db, job, cyclic);
        },
      ],
      ['empty key', (db) => enqueueJob(db, job, {}, { key: '' })],
      ['long key', (db) => enqueueJob(db, job, {}, { key: 'k'.repeat(201) })],
      ['control character in key', (db) => enqueueJob(db, job, {}, { key: 'a\nb' })],
      ['non-string key', (db) => enqueueJob(db, job, {}, { key: 12 as never })],
      ['invalid date', (db) => enqueueJob(db, job, {}, { runAt: new Date('not a date') })],
      ['string run time', (db) => enqueueJob(db, job, {}, { runAt: '2030-01-01' as never })],
      ['key mode', (db) => enqueueJob(db, job, {}, { keyMode: 'merge' as never })],
      ['zero attempts', (db) => enqueueJob(db, job, {}, { maxAttempts: 0 })],
      ['fractional attempts', (db) => enqueueJob(db, job, {}, { maxAttempts: 1.5 })],
      ['too many attempts', (db) => enqueueJob(db, job, {}, { maxAttempts: 101 })],
      ['bulk non-object', (db) => enqueueJobs(db, job, [{}, 'text'])],
      ['bulk not an array', (db) => enqueueJobs(db, job, {} as never)],
      [
        'bulk too many',
        (db) =>
          enqueueJobs(
            db,
            job,
            Array.from({ length: 10_001 }, () => ({})),
          ),
      ],
      [
        'definition bypassing defineJob',
        (db) => enqueueJob(db, { ...job, name: 'Not A Task Name' } as typeof job, {}),
      ],
      [
        'reserved task name bypassing defineJob',
        (db) => enqueueJob(db, { ...job, name: 'tenantry.fan-out' } as typeof job, {}),
      ],
    ];
    for (const [label, attempt] of attempts) {
      await assert.rejects(
        tenantry.withTenant(tenantId, attempt),
        code('TENANTRY_ERR_JOB_INVALID'),
        label,
      );
    }
    await withClient(database.appUrl, async (client) => {
      const refused: [string, string][] = [
        ['payload array', `select tenantry.enqueue_job('enqueue.invalid', '[1]'::jsonb)`],
        ['reserved name', `select tenantry.enqueue_job('tenantry.fan-out', '{}'::jsonb)`],
        [
          'infinite run time',
          `select tenantry.enqueue_job('enqueue.invalid', '{}'::jsonb, 'infinity'::timestamptz)`,
        ],
        [
          'bulk reserved name',
          `select tenantry.enqueue_jobs('tenantry.fan-out', array['{}'::jsonb])`,
        ],
      ];
      for (const [label, statement] of refused) {
        await client.query('begin');
        await client.query(`set local tenantry.tenant_id = '${tenantId}'`);
        const state = await sqlState(client.query(statement));
        await client.query('rollback');
        assert.equal(state, '22023', label);
      }
    });
    assert.equal(await jobCount(job.name), 0);
    assert.equal(await jobCount('tenantry.fan-out'), 0);
    assert.equal(await jobCount('Not A Task Name'), 0);
  });
});

describe('definitions and worker options', () => {
  test('defineJob refuses bad names, missing handlers and bad attempt counts', () => {
    const run = async () => {};
    for (const name of [
      '',
      'Upper.case',
      'has space',
      'trailing.',
      '.leading',
      'a..b',
      '1starts.with.digit',
      `a${'b'.repeat(100)}`,
      'tenantry.reserved',
      42,
    ]) {
      assert.throws(
        () => defineJob(name as string, { run }),
        code('TENANTRY_ERR_JOB_INVALID'),
        String(name),
      );
    }
    assert.throws(() => defineJob('no.handler', {} as never), code('TENANTRY_ERR_JOB_INVALID'));
    for (const maxAttempts of [0, -1, 1.5, 101, Number.NaN]) {
      assert.throws(
        () => defineJob('bad.attempts', { run, maxAttempts }),
        code('TENANTRY_ERR_JOB_INVALID'),
        String(maxAttempts),
      );
    }
    const good = defineJob('broadcast.send-batch_2', { run, maxAttempts: 3 });
    assert.equal(good.name, 'broadcast.send-batch_2');
    assert.equal(good.maxAttempts, 3);
    assert.ok(Object.isFrozen(good));
  });

  test('createJobWorker refuses duplicate jobs, bad schedules and bad timing options', async () => {
    const job = noop('options.job');
    const other = noop('options.other');
    const base = { tenantry, connectionString: database.adminUrl, jobs: [job] };
    const refused: [string, JobWorkerOptions<ReferenceDatabase>, TenantryErrorCode][] = [
      ['duplicate job', { ...base, jobs: [job, noop('options.job')] }, 'TENANTRY_ERR_JOB_INVALID'],
      [
        'bad cron',
        { ...base, schedules: [{ name: 'nightly', cron: 'not a cron', job }] },
        'TENANTRY_ERR_JOB_INVALID',
      ],
      [
        'out of range cron',
        { ...base, schedules: [{ name: 'nightly', cron: '61 * * * *', job }] },
        'TENANTRY_ERR_JOB_INVALID',
      ],
      [
        'duplicate schedule',
        {
          ...base,
          schedules: [
            { name: 'nightly', cron: '0 3 * * *', job },
            { name: 'nightly', cron: '0 4 * * *', job },
          ],
        },
        'TENANTRY_ERR_JOB_INVALID',
      ],
      [
        'bad schedule name',
        { ...base, schedules: [{ name: 'Nightly Run', cron: '0 3 * * *', job }] },
        'TENANTRY_ERR_JOB_INVALID',
      ],
      [
        'schedule of a job the worker does not run',
        { ...base, schedules: [{ name: 'nightly', cron: '0 3 * * *', job: other }] },
        'TENANTRY_ERR_JOB_INVALID',
      ],
      [
        'stale worker detection not above two heartbeats',
        { ...base, heartbeatIntervalMs: 1000, staleWorkerAfterMs: 2000 },
        'TENANTRY_ERR_CONFIG_INVALID',
      ],
      ['zero concurrency', { ...base, concurrency: 0 }, 'TENANTRY_ERR_CONFIG_INVALID'],
      ['zero tenant concurrency', { ...base, tenantConcurrency: 0 }, 'TENANTRY_ERR_CONFIG_INVALID'],
      [
        'tenant limits without concurrentJobs',
        { ...base, tenantConcurrency: {} as never },
        'TENANTRY_ERR_CONFIG_INVALID',
      ],
      ['negative grace', { ...base, shutdownGraceMs: -1 }, 'TENANTRY_ERR_CONFIG_INVALID'],
    ];
    for (const [label, options, expected] of refused) {
      await assert.rejects(createJobWorker<ReferenceDatabase>(options), code(expected), label);
    }
  });
});

describe('tenant isolation in jobs', () => {
  test('a job whose payload names another tenant cannot read or change that tenant rows', async () => {
    const a = await seedTenant(database.adminUrl, tenantry, `jobsa${randomUUID().slice(0, 6)}`);
    const b = await seedTenant(database.adminUrl, tenantry, `jobsb${randomUUID().slice(0, 6)}`);
    const before = await admin.query(
      'select t.name as tag, c.name as contact from tags t, contacts c where t.tenant_id = $1 and t.id = $2 and c.tenant_id = $1 and c.id = $3',
      [b.tenantId, b.tagId, b.contactId],
    );
    assert.equal(before.length, 1);
    const seen: Record<string, unknown>[] = [];
    const probe = defineJob<
      { tenantId: string; tagId: string; contactId: string },
      ReferenceDatabase
    >('isolation.probe', {
      maxAttempts: 1,
      async run(payload, ctx) {
        const found = await ctx.db
          .selectFrom('tags')
          .select('id')
          .where('id', '=', payload.tagId)
          .executeTakeFirst();
        const updated = await ctx.db
          .updateTable('tags')
          .set({ name: 'stolen' })
          .where('id', '=', payload.tagId)
          .executeTakeFirstOrThrow();
        const deleted = await ctx.db
          .deleteFrom('contacts')
          .where('id', '=', payload.contactId)
          .executeTakeFirstOrThrow();
        const raw =
          await sql`update tags set name = 'stolen-raw' where id = ${payload.tagId}::uuid`.execute(
            ctx.db,
          );
        const rawByTenant =
          await sql`delete from contacts where tenant_id = ${payload.tenantId}::uuid`.execute(
            ctx.db,
          );
        const visible = await ctx.db.selectFrom('tags').select('id').execute();
        await ctx.db.insertInto('tags').values({ name: 'probe-effect' }).execute();
        seen.push({
          tenantId: ctx.tenantId,
          payloadTenantId: payload.tenantId,
          found: found !== undefined,
          updated: updated.numUpdatedRows,
          deleted: deleted.numDeletedRows,
          raw: raw.numAffectedRows,
          rawByTenant: rawByTenant.numAffectedRows,
          visible: visible.map((row) => row.id),
        });
      },
    });
    const id = await tenantry.withTenant(a.tenantId, (db) =>
      enqueueJob(db, probe, { tenantId: b.tenantId, tagId: b.tagId, contactId: b.contactId }),
    );
    const [row] = await jobRows(admin, probe.name);
    assert.equal(row?.id, id);
    assert.equal(row?.payload.tenantId, a.tenantId);
    assert.deepEqual(row?.flags, { [`tenant:${a.tenantId}`]: true });

    const running = await worker({ jobs: [probe] });
    await waitFor('the probe job to finish or fail', async () => {
      const rows = await jobRows(admin, probe.name);
      return rows.every((job) => job.attempts >= job.max_attempts && job.locked_by === null);
    });
    await running.stop();
    assert.equal(running.health().completed, 1);
    assert.deepEqual(await jobRows(admin, probe.name), [], 'the completed job is removed');

    assert.deepEqual(seen, [
      {
        tenantId: a.tenantId,
        payloadTenantId: b.tenantId,
        found: false,
        updated: 0n,
        deleted: 0n,
        raw: 0n,
        rawByTenant: 0n,
        visible: [a.tagId],
      },
    ]);
    const effects = await admin.query(
      `select tenant_id::text from tags where name = 'probe-effect'`,
    );
    assert.deepEqual(effects, [{ tenant_id: a.tenantId }]);
    const afterRows = await admin.query(
      'select t.name as tag, c.name as contact from tags t, contacts c where t.tenant_id = $1 and t.id = $2 and c.tenant_id = $1 and c.id = $3',
      [b.tenantId, b.tagId, b.contactId],
    );
    assert.deepEqual(afterRows, before);
  });

  test('jobs of A, B, A on one connection each see only their tenant, and leave no context behind', async () => {
    const single = await createTenantry<ReferenceDatabase>({
      connectionString: database.appUrl,
      maxConnections: 1,
    });
    try {
      const a = await createTenant(admin, 'seq-a');
      const b = await createTenant(admin, 'seq-b');
      await tenantry.withTenant(a, (db) =>
        db
          .insertInto('tags')
          .values([{ name: 'a1' }, { name: 'a2' }])
          .execute(),
      );
      await tenantry.withTenant(b, (db) =>
        db
          .insertInto('tags')
          .values([{ name: 'b1' }, { name: 'b2' }, { name: 'b3' }])
          .execute(),
      );
      const runs: { tenantId: string; setting: string; pid: number; tags: number }[] = [];
      const job = defineJob<Record<string, never>, ReferenceDatabase>('isolation.sequence', {
        async run(_payload, ctx) {
          const context = await sql<{ setting: string; pid: number }>`
            select current_setting('tenantry.tenant_id') as setting, pg_backend_pid() as pid`.execute(
            ctx.db,
          );
          const tags = await ctx.db.selectFrom('tags').select('name').execute();
          runs.push({
            tenantId: ctx.tenantId,
            setting: context.rows[0]?.setting ?? '',
            pid: context.rows[0]?.pid ?? 0,
            tags: tags.length,
          });
        },
      });
      for (const tenantId of [a, b, a]) {
        await tenantry.withTenant(tenantId, (db) => enqueueJob(db, job, {}));
      }
      const running = await worker({ jobs: [job], concurrency: 1 }, single);
      await waitFor('three jobs to finish', async () => (await jobCount(job.name)) === 0);
      await running.stop();

      assert.deepEqual(
        runs.map((run) => run.tenantId),
        [a, b, a],
      );
      for (const run of runs) {
        assert.equal(run.setting, run.tenantId);
        assert.equal(run.tags, run.tenantId === a ? 2 : 3);
      }
      const outside = await sql<{ setting: string | null; pid: number }>`
        select current_setting('tenantry.tenant_id', true) as setting, pg_backend_pid() as pid`.execute(
        single.db,
      );
      assert.equal(new Set(runs.map((run) => run.pid)).size, 1);
      assert.equal(outside.rows[0]?.pid, runs[0]?.pid);
      assert.ok(
        outside.rows[0]?.setting === '' || outside.rows[0]?.setting === null,
        `tenant setting left on the pooled connection: ${outside.rows[0]?.setting}`,
      );
    } finally {
      await single.close();
    }
  });
});

describe('retries, dead letters and replay', () => {
  test('a job that fails twice runs three times in its tenant, with backoff and its last error', async () => {
    const tenantId = await createTenant(admin, 'retry');
    const retry = { baseDelayMs: 40, maxDelayMs: 60 };
    const attempts: {
      tenantId: string;
      attempt: number;
      lastError: string | null;
      delayMs: number;
    }[] = [];
    const job = defineJob<Record<string, never>, ReferenceDatabase>('retry.flaky', {
      maxAttempts: 5,
      async run(_payload, ctx) {
        const [row] = await admin.query<{ last_error: string | null; delay_ms: number }>(
          `select last_error, extract(epoch from run_at - updated_at)::float8 * 1000 as delay_ms
             from graphile_worker._private_jobs where id = $1`,
          [ctx.jobId],
        );
        attempts.push({
          tenantId: ctx.tenantId,
          attempt: ctx.attempt,
          lastError: row?.last_error ?? null,
          delayMs: Math.round(row?.delay_ms ?? -1),
        });
        await ctx.db
          .insertInto('tags')
          .values({ name: `attempt-${ctx.attempt}` })
          .execute();
        if (ctx.attempt < 3) throw new Error(`flaky failure ${ctx.attempt}`);
      },
    });
    await tenantry.withTenant(tenantId, (db) => enqueueJob(db, job, {}));
    const running = await worker({ jobs: [job], retry });
    await waitFor('the flaky job to succeed', async () => (await jobCount(job.name)) === 0);
    const health = running.health();
    await running.stop();

    assert.deepEqual(
      attempts.map((entry) => [entry.tenantId, entry.attempt]),
      [
        [tenantId, 1],
        [tenantId, 2],
        [tenantId, 3],
      ],
    );
    assert.equal(attempts[0]?.lastError, null);
    assert.match(attempts[1]?.lastError ?? '', /flaky failure 1/);
    assert.match(attempts[2]?.lastError ?? '', /flaky failure 2/);
    for (const entry of attempts.slice(1)) {
      const failed = entry.attempt - 1;
      const ceiling = Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (failed - 1));
      assert.ok(
        entry.delayMs >= ceiling / 2 && entry.delayMs <= ceiling,
        `retry ${failed} delayed ${entry.delayMs} ms, outside [${ceiling / 2}, ${ceiling}]`,
      );
      assert.ok(entry.delayMs > 0 && entry.delayMs <= retry.maxDelayMs);
    }
    const tags = await tenantry.withTenant(tenantId, (db) =>
      db.selectFrom('tags').select('name').execute(),
    );
    assert.deepEqual(
      tags.map((tag) => tag.name),
      ['attempt-3'],
    );
    assert.equal(health.retried, 2);
    assert.equal(health.completed, 1);
  });

  test("the runner's own failure update cannot overwrite an outcome the worker settled", async () => {
    const tenantId = await createTenant(admin, 'settled');
    const job = noop('retry.settled');
    const id = await tenantry.withTenant(tenantId, (db) => enqueueJob(db, job, {}));
    // graphile-worker 0.18's failure update, as it runs after a task throws.
    const runnerFailure = `
      update graphile_worker._private_jobs as jobs
         set last_error = (el->>'message'),
             run_at = greatest(now(), run_at) + (exp(least(attempts, 10)) * interval '1 second'),
             locked_by = null, locked_at = null,
             payload = coalesce(el->'payload', jobs.payload)
        from json_array_elements($2::json) as els(el)
       where id = (el->>'jobId')::bigint and locked_by = $1::text
      returning id`;
    const lock = () =>
      admin.query(
        `update graphile_worker._private_jobs set locked_by = 'pool-1', locked_at = now(), attempts = 1 where id = $1`,
        [id],
      );
    await lock();
    const settled = await admin.query(runnerFailure, [
      'pool-1',
      JSON.stringify([{ jobId: id, message: 'TENANTRY_JOB_SETTLED' }]),
    ]);
    assert.deepEqual(settled, []);
    const [row] = await jobRows(admin, job.name);
    assert.equal(row?.locked_by, 'pool-1');
    assert.equal(row?.last_error, null);
    const failed = await admin.query(runnerFailure, [
      'pool-1',
      JSON.stringify([{ jobId: id, message: 'a real failure' }]),
    ]);
    assert.equal(failed.length, 1);
    assert.equal((await jobRows(admin, job.name))[0]?.last_error, 'a real failure');
    assert.equal(await jobAdmin.removeTenantJobs(tenantId), 1);
  });

  test('retryDelayMs grows exponentially, is capped and jittered between half and all of it', () => {
    const options = { baseDelayMs: 1000, maxDelayMs: 60_000 };
    assert.equal(
      retryDelayMs(1, options, () => 0),
      500,
    );
    assert.equal(
      retryDelayMs(1, options, () => 1),
      1000,
    );
    assert.equal(
      retryDelayMs(3, options, () => 0),
      2000,
    );
    assert.equal(
      retryDelayMs(3, options, () => 1),
      4000,
    );
    assert.equal(
      retryDelayMs(20, options, () => 1),
      60_000,
    );
    assert.equal(
      retryDelayMs(20, options, () => 0),
      30_000,
    );
    assert.equal(
      retryDelayMs(0, options, () => 1),
      1000,
    );
    assert.equal(
      retryDelayMs(1000, options, () => 1),
      60_000,
    );
  });

  test('a job out of attempts is dead-lettered with its error, and replay runs it again in its tenant', async () => {
    const tenantId = await createTenant(admin, 'dead');
    let succeed = false;
    const runs: { tenantId: string; attempt: number; jobId: string }[] = [];
    const job = defineJob<Record<string, never>, ReferenceDatabase>('deadletter.always', {
      maxAttempts: 2,
      async run(_payload, ctx) {
        runs.push({ tenantId: ctx.tenantId, attempt: ctx.attempt, jobId: ctx.jobId });
        if (!succeed) throw new Error('permanent failure');
        await ctx.db.insertInto('tags').values({ name: 'replayed' }).execute();
      },
    });
    const id = await tenantry.withTenant(tenantId, (db) => enqueueJob(db, job, {}));
    const waiting = await tenantry.withTenant(tenantId, (db) =>
      enqueueJob(db, job, {}, { runAt: new Date(Date.now() + 3_600_000) }),
    );
    const running = await worker({ jobs: [job] });
    const dead = await waitFor(
      'the job to be dead-lettered',
      async () => (await jobAdmin.listJobs({ state: 'dead', task: job.name }))[0],
    );
    assert.equal(dead.id, id);
    assert.equal(dead.tenantId, tenantId);
    assert.equal(dead.attempts, 2);
    assert.equal(dead.maxAttempts, 2);
    assert.match(dead.lastError ?? '', /permanent failure/);
    assert.deepEqual(await jobAdmin.countJobs(tenantId), {
      waiting: 1,
      running: 0,
      dead: 1,
      parked: 0,
    });
    assert.deepEqual(
      runs.map((run) => run.attempt),
      [1, 2],
    );
    assert.equal(running.health().deadLettered, 1);

    await assert.rejects(jobAdmin.replayJobs([waiting]), code('TENANTRY_ERR_JOB_NOT_FOUND'));
    await assert.rejects(jobAdmin.replayJobs(['987654321']), code('TENANTRY_ERR_JOB_NOT_FOUND'));
    await assert.rejects(jobAdmin.replayJobs(['not-an-id']), code('TENANTRY_ERR_JOB_INVALID'));
    const [stillWaiting] = await jobAdmin.listJobs({ tenantId, state: 'waiting' });
    assert.equal(stillWaiting?.id, waiting);
    assert.equal(stillWaiting?.attempts, 0);

    succeed = true;
    assert.deepEqual(await jobAdmin.replayJobs([id]), [id]);
    await waitFor('the replayed job to finish', async () => (await jobCount(job.name)) === 1);
    await running.stop();
    assert.deepEqual(runs[2], { tenantId, attempt: 1, jobId: id });
    const tags = await tenantry.withTenant(tenantId, (db) =>
      db.selectFrom('tags').select('name').execute(),
    );
    assert.deepEqual(
      tags.map((tag) => tag.name),
      ['replayed'],
    );
    assert.deepEqual(
      (await jobRows(admin, job.name)).map((row) => row.id),
      [waiting],
    );
    assert.equal(await jobAdmin.removeTenantJobs(tenantId), 1);
    assert.equal(await jobCount(job.name), 0);
  });

  test('a payload its definition cannot parse is dead-lettered at once, without running', async () => {
    const tenantId = await createTenant(admin, 'parse');
    let ran = 0;
    const job = defineJob<{ n: number }, ReferenceDatabase>('deadletter.parse', {
      maxAttempts: 5,
      parse(data) {
        const n = (data as { n?: unknown }).n;
        if (typeof n !== 'number') throw new Error('n must be a number');
        return { n };
      },
      async run() {
        ran++;
      },
    });
    const id = await tenantry.withTenant(tenantId, (db) =>
      enqueueJob(db, job, { n: 'seven' } as never),
    );
    const running = await worker({ jobs: [job] });
    const dead = await waitFor(
      'the unparsable job to be dead-lettered',
      async () => (await jobAdmin.listJobs({ state: 'dead', task: job.name }))[0],
    );
    await running.stop();
    assert.equal(dead.id, id);
    assert.equal(dead.attempts, 5);
    assert.match(dead.lastError ?? '', /n must be a number/);
    assert.equal(ran, 0);
    assert.equal(await jobAdmin.removeTenantJobs(tenantId), 1);
  });
});

describe('parking', () => {
  test('jobs of a suspended tenant are parked, not run, and run once the tenant is resumed', async () => {
    const suspended = await createTenant(admin, 'park');
    const active = await createTenant(admin, 'park-other');
    const ran: string[] = [];
    const job = defineJob<Record<string, never>, ReferenceDatabase>('parking.work', {
      async run(_payload, ctx) {
        ran.push(ctx.tenantId);
      },
    });
    const parkedId = await tenantry.withTenant(suspended, (db) => enqueueJob(db, job, {}));
    await tenantry.withTenant(active, (db) => enqueueJob(db, job, {}));
    await admin.query(`update tenantry.tenants set status = 'suspended' where id = $1`, [
      suspended,
    ]);
    const running = await worker({ jobs: [job] });
    const parked = await waitFor('the suspended tenant job to be parked (or run)', async () => {
      if (ran.includes(suspended))
        return { id: 'ran', lastError: 'ran', attempts: -1, runAt: null };
      const [info] = await jobAdmin.listJobs({ tenantId: suspended, state: 'parked' });
      return info !== undefined && ran.length === 1 ? info : undefined;
    });
    assert.deepEqual(ran, [active]);
    assert.equal(parked.id, parkedId);
    assert.match(parked.lastError ?? '', /suspended/);
    assert.equal(parked.attempts, 0);
    assert.equal(parked.runAt, undefined);
    assert.deepEqual(await jobAdmin.countJobs(suspended), {
      waiting: 0,
      running: 0,
      dead: 0,
      parked: 1,
    });
    await assert.rejects(jobAdmin.replayJobs([parkedId]), code('TENANTRY_ERR_JOB_NOT_FOUND'));

    await admin.query(`update tenantry.tenants set status = 'active' where id = $1`, [suspended]);
    assert.equal(await jobAdmin.resumeParkedJobs(suspended), 1);
    await waitFor('the resumed job to run', async () => (await jobCount(job.name)) === 0);
    await running.stop();
    assert.deepEqual(ran, [active, suspended]);
    assert.equal(running.health().parked, 1);
  });
});

describe('fairness and limits', () => {
  /**
   * A big tenant enqueues 10,000 jobs, then a small one 10; returns where the small tenant's last
   * job ran and how many of the big tenant's jobs were left when it did.
   */
  async function backlogRace(
    name: string,
    limits: { concurrency: number; tenantConcurrency: number },
  ): Promise<{ lastSmall: number; smallDone: number; bigLeft: number }> {
    const big = await createTenant(admin, 'fair-big');
    const small = await createTenant(admin, 'fair-small');
    const order: string[] = [];
    const job = defineJob<{ n: number }, ReferenceDatabase>(name, {
      async run(_payload, ctx) {
        order.push(ctx.tenantId);
      },
    });
    await tenantry.withTenant(big, async (db) => {
      for (let batch = 0; batch < 10; batch++) {
        await enqueueJobs(
          db,
          job,
          Array.from({ length: 1000 }, (_, n) => ({ n: batch * 1000 + n })),
        );
      }
    });
    await tenantry.withTenant(small, (db) =>
      enqueueJobs(
        db,
        job,
        Array.from({ length: 10 }, (_, n) => ({ n })),
      ),
    );
    const smallDone = () => order.filter((tenantId) => tenantId === small).length;
    const running = await worker({ jobs: [job], ...limits });
    await waitFor('the small tenant to finish (or 2,000 jobs to run)', () =>
      smallDone() === 10 || order.length >= 2000 ? true : undefined,
    );
    const lastSmall = order.lastIndexOf(small);
    await running.stop();
    const [left] = await admin.query<{ n: number }>(
      `select count(*)::int as n from graphile_worker._private_jobs where payload ->> 'tenantId' = $1`,
      [big],
    );
    assert.equal(await jobAdmin.removeTenantJobs(big), left?.n);
    return { lastSmall, smallDone: smallDone(), bigLeft: left?.n ?? 0 };
  }

  test('fair priorities: a small tenant behind a 10,000-job backlog is not starved, even without limits', async () => {
    const race = await backlogRace('fairness.priority', { concurrency: 4, tenantConcurrency: 4 });
    assert.equal(race.smallDone, 10);
    assert.ok(
      race.lastSmall < 100,
      `the small tenant's last job ran at position ${race.lastSmall}`,
    );
    assert.ok(race.bigLeft > 5000, `only ${race.bigLeft} of the big tenant's jobs were left`);
  });

  test('with a tenant limit below the concurrency, the small tenant finishes long before the backlog drains', async () => {
    const race = await backlogRace('fairness.limited', { concurrency: 4, tenantConcurrency: 2 });
    assert.equal(race.smallDone, 10);
    assert.ok(
      race.lastSmall < 100,
      `the small tenant's last job ran at position ${race.lastSmall}`,
    );
    assert.ok(race.bigLeft > 5000, `only ${race.bigLeft} of the big tenant's jobs were left`);
  });

  test('at most tenantConcurrency jobs of one tenant run at once', async () => {
    const a = await createTenant(admin, 'limit-a');
    const b = await createTenant(admin, 'limit-b');
    const busy = new Map<string, number>();
    const peak = new Map<string, number>();
    const finished: string[] = [];
    const blocked: (() => void)[] = [];
    const job = defineJob<Record<string, never>, ReferenceDatabase>('fairness.blocking', {
      async run(_payload, ctx) {
        const now = (busy.get(ctx.tenantId) ?? 0) + 1;
        busy.set(ctx.tenantId, now);
        peak.set(ctx.tenantId, Math.max(peak.get(ctx.tenantId) ?? 0, now));
        try {
          if (ctx.tenantId === a) {
            const { promise, open } = gate();
            blocked.push(open);
            await promise;
          }
        } finally {
          busy.set(ctx.tenantId, (busy.get(ctx.tenantId) ?? 1) - 1);
        }
        finished.push(ctx.tenantId);
      },
    });
    // B's jobs go first, so B is fetched whatever the priorities: this test is about the limit.
    await tenantry.withTenant(b, (db) => enqueueJobs(db, job, [{}, {}]));
    await tenantry.withTenant(a, (db) =>
      enqueueJobs(
        db,
        job,
        Array.from({ length: 6 }, () => ({})),
      ),
    );
    const running = await worker({ jobs: [job], concurrency: 6, tenantConcurrency: 2 });
    const doneOf = (tenantId: string) => finished.filter((id) => id === tenantId).length;
    await waitFor(
      'B to finish while jobs of A block',
      () => doneOf(b) === 2 && blocked.length >= 2,
    );
    while (doneOf(a) < 6) {
      const done = doneOf(a);
      blocked.shift()?.();
      await waitFor('the next job of A to start or the last to finish', () => {
        const left = 6 - doneOf(a);
        return doneOf(a) > done && blocked.length >= Math.min(2, left);
      });
    }
    await running.stop();
    assert.equal(peak.get(a), 2);
    assert.ok((peak.get(b) ?? 0) <= 2);
    assert.equal(await jobCount(job.name), 0);
  });

  test('per-tenant limits from a callback apply to each tenant separately', async () => {
    const one = await createTenant(admin, 'plan-one');
    const three = await createTenant(admin, 'plan-three');
    const busy = new Map<string, number>();
    const peak = new Map<string, number>();
    const blocked: (() => void)[] = [];
    const finished: string[] = [];
    const job = defineJob<Record<string, never>, ReferenceDatabase>('fairness.plan', {
      async run(_payload, ctx) {
        const now = (busy.get(ctx.tenantId) ?? 0) + 1;
        busy.set(ctx.tenantId, now);
        peak.set(ctx.tenantId, Math.max(peak.get(ctx.tenantId) ?? 0, now));
        const { promise, open } = gate();
        blocked.push(open);
        await promise;
        busy.set(ctx.tenantId, now - 1);
        finished.push(ctx.tenantId);
      },
    });
    await tenantry.withTenant(one, (db) => enqueueJobs(db, job, [{}, {}, {}]));
    await tenantry.withTenant(three, (db) => enqueueJobs(db, job, [{}, {}, {}, {}]));
    const running = await worker({
      jobs: [job],
      concurrency: 8,
      tenantConcurrency: { concurrentJobs: (tenantId) => (tenantId === three ? 3 : 1) },
    });
    await waitFor('one job of the first and three of the second tenant to run', () =>
      (busy.get(one) ?? 0) >= 1 && (busy.get(three) ?? 0) >= 3 ? true : undefined,
    );
    while (finished.length < 7) {
      const done = finished.length;
      const open = await waitFor('a blocked job', () => blocked.shift());
      open();
      await waitFor('a job to finish', () => finished.length > done);
    }
    await running.stop();
    assert.equal(peak.get(one), 1);
    assert.equal(peak.get(three), 3);
  });
});

describe('schedules', () => {
  test('a fan-out enqueues one job per active tenant, once per period', async () => {
    const scratch = await createTestDatabase();
    const scratchAdmin = createAdminPool(scratch.adminUrl);
    const scratchTenantry = await createTenantry<ReferenceDatabase>({
      connectionString: scratch.appUrl,
    });
    let running: JobWorker | undefined;
    try {
      const first = await createTenant(scratchAdmin, 'fan-one');
      const second = await createTenant(scratchAdmin, 'fan-two');
      const suspended = await createTenant(scratchAdmin, 'fan-off', 'suspended');
      const ran: { tenantId: string; period: string; forTenant: string }[] = [];
      const nightly = defineJob<{ period: string; forTenant: string }, ReferenceDatabase>(
        'schedule.nightly',
        {
          async run(payload, ctx) {
            ran.push({
              tenantId: ctx.tenantId,
              period: payload.period,
              forTenant: payload.forTenant,
            });
          },
        },
      );
      running = await startWorker(scratchTenantry, scratch.adminUrl, {
        jobs: [nightly],
        schedules: [
          {
            name: 'nightly',
            cron: '0 3 * * *',
            job: nightly,
            payload: ({ tenantId, period }) => ({
              period: period.toISOString(),
              forTenant: tenantId,
            }),
          },
        ],
      });
      const monday = new Date('2030-01-07T03:00:00.000Z');
      const tuesday = new Date('2030-01-08T03:00:00.000Z');
      const summary = (result: Awaited<ReturnType<JobWorker['runSchedule']>>) => ({
        tenants: result.tenants,
        enqueued: result.enqueued,
        skipped: result.skipped,
        failed: result.failed,
      });
      assert.deepEqual(summary(await running.runSchedule('nightly', monday)), {
        tenants: 2,
        enqueued: 2,
        skipped: 0,
        failed: 0,
      });
      assert.deepEqual(summary(await running.runSchedule('nightly', monday)), {
        tenants: 2,
        enqueued: 0,
        skipped: 2,
        failed: 0,
      });
      const ofPeriod = (period: Date) =>
        ran
          .filter((entry) => entry.period === period.toISOString())
          .map((entry) => entry.tenantId)
          .sort();
      await waitFor('Monday jobs to run', () => ofPeriod(monday).length === 2);
      await waitFor(
        'Monday jobs to be removed',
        async () => (await jobCount(nightly.name, scratchAdmin)) === 0,
      );
      assert.deepEqual(summary(await running.runSchedule('nightly', monday)), {
        tenants: 2,
        enqueued: 0,
        skipped: 2,
        failed: 0,
      });
      assert.deepEqual(summary(await running.runSchedule('nightly', tuesday)), {
        tenants: 2,
        enqueued: 2,
        skipped: 0,
        failed: 0,
      });
      await waitFor('Tuesday jobs to run', () => ofPeriod(tuesday).length === 2);
      await waitFor(
        'Tuesday jobs to be removed',
        async () => (await jobCount(nightly.name, scratchAdmin)) === 0,
      );
      const expected = [first, second].sort();
      assert.deepEqual(ofPeriod(monday), expected);
      assert.deepEqual(ofPeriod(tuesday), expected);
      assert.ok(ran.every((entry) => entry.forTenant === entry.tenantId));
      assert.ok(!ran.some((entry) => entry.tenantId === suspended));
      const runs = await scratchAdmin.query<{
        tenant_id: string;
        period: Date;
        job_id: string | null;
      }>(
        'select tenant_id::text, period, job_id::text from tenantry.scheduled_job_runs order by period, tenant_id',
      );
      assert.equal(runs.length, 4);
      assert.ok(runs.every((row) => row.job_id !== null && row.tenant_id !== suspended));
      await assert.rejects(running.runSchedule('weekly', monday), code('TENANTRY_ERR_JOB_INVALID'));
      await assert.rejects(
        running.runSchedule('nightly', new Date('nope')),
        code('TENANTRY_ERR_JOB_INVALID'),
      );
    } finally {
      await running?.stop();
      await scratchTenantry.close();
      await scratchAdmin.close();
      await scratch.drop();
    }
  });
});

describe('shutdown', () => {
  test('stop() waits for a running job to finish, then the job is removed', async () => {
    const tenantId = await createTenant(admin, 'graceful');
    const started = gate();
    const release = gate();
    let finished = false;
    const job = defineJob<Record<string, never>, ReferenceDatabase>('shutdown.slow', {
      async run(_payload, ctx) {
        started.open();
        await release.promise;
        await ctx.db.insertInto('tags').values({ name: 'finished' }).execute();
        finished = true;
      },
    });
    await tenantry.withTenant(tenantId, (db) => enqueueJob(db, job, {}));
    const running = await worker({ jobs: [job], shutdownGraceMs: 30_000 });
    await started.promise;
    let finishedWhenStopped: boolean | undefined;
    const stopping = running.stop().then(() => {
      finishedWhenStopped = finished;
    });
    assert.equal(running.health().status, 'stopping');
    // The job is released only once stop() has resolved (a stop() that does not wait) or had
    // half a second to do so; a correct stop() passes whichever comes first.
    await Promise.race([stopping, delay(500)]);
    assert.equal(finishedWhenStopped, undefined, 'stop() resolved while the job was running');
    release.open();
    await stopping;
    assert.equal(finishedWhenStopped, true);
    assert.equal(running.health().status, 'stopped');
    assert.equal(await jobCount(job.name), 0);
    const tags = await tenantry.withTenant(tenantId, (db) =>
      db.selectFrom('tags').select('name').execute(),
    );
    assert.deepEqual(
      tags.map((tag) => tag.name),
      ['finished'],
    );
    const heartbeats = await admin.query(
      'select 1 from tenantry.job_workers where worker_id = $1',
      [running.workerId],
    );
    assert.equal(heartbeats.length, 0);
  });

  test('a job still running when the grace period ends sees its abort signal', async () => {
    const tenantId = await createTenant(admin, 'abort');
    const started = gate();
    let aborted = false;
    const job = defineJob<Record<string, never>, ReferenceDatabase>('shutdown.abortable', {
      async run(_payload, ctx) {
        started.open();
        await new Promise<void>((resolve) => {
          ctx.signal.addEventListener('abort', () => resolve(), { once: true });
        });
        aborted = ctx.signal.aborted;
        throw new Error('stopped by the shutdown');
      },
    });
    const id = await tenantry.withTenant(tenantId, (db) => enqueueJob(db, job, {}));
    const running = await worker({ jobs: [job], shutdownGraceMs: 300 });
    await started.promise;
    await running.stop();
    assert.equal(aborted, true);
    const [info] = await jobAdmin.listJobs({ tenantId });
    assert.equal(info?.id, id);
    assert.equal(info?.state, 'waiting', 'the aborted job goes back to the queue');
    assert.ok(info?.lastError);
    assert.equal(await jobAdmin.removeTenantJobs(tenantId), 1);
  });

  test('stop() returns even when a job ignores its abort signal, and the job goes back to the queue', async () => {
    const tenantId = await createTenant(admin, 'stubborn');
    const started = gate();
    const release = gate();
    const job = defineJob<Record<string, never>, ReferenceDatabase>('shutdown.stubborn', {
      async run(_payload, ctx) {
        started.open();
        await release.promise;
        await ctx.db
          .insertInto('tags')
          .values({ name: `late-${ctx.attempt}` })
          .execute();
      },
    });
    const id = await tenantry.withTenant(tenantId, (db) => enqueueJob(db, job, {}));
    const log = recordingLogger();
    const running = await worker({ jobs: [job], shutdownGraceMs: 50, logger: log.logger });
    await started.promise;
    await running.stop();
    assert.equal(running.health().status, 'stopped');
    const [row] = await jobRows(admin, job.name);
    assert.equal(row?.id, id);
    assert.equal(row?.locked_by, null);
    release.open();
    // The late handler no longer holds its job: its commit is refused and its work rolled back.
    const lost = () => log.lines.some((line) => line.message?.startsWith('job no longer held'));
    await waitFor(
      'the late handler to end',
      () => running.health().running === 0 && (running.health().completed > 0 || lost()),
    );
    assert.equal(running.health().completed, 0, 'the late handler committed a released job');
    assert.ok(lost());
    assert.equal(await jobCount(job.name), 1);
    // The released job may still be queued (its retry pushed out by the runner): run it now.
    await admin.query('update graphile_worker._private_jobs set run_at = now() where id = $1', [
      id,
    ]);
    const rerun = await worker({ jobs: [job] });
    await waitFor('the released job to be removed', async () => (await jobCount(job.name)) === 0);
    await rerun.stop();
    const tags = await admin.query<{ name: string }>('select name from tags where tenant_id = $1', [
      tenantId,
    ]);
    assert.deepEqual(tags, [{ name: 'late-2' }], 'the job effect landed once, from the rerun');
  });
});
