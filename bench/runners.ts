/**
 * The job runner choice, measured: graphile-worker as Tenantry runs it (`tenantry/jobs`) against
 * pg-boss, on one embedded cluster in one run, on the three things Tenantry needs of a runner:
 *
 * 1. transactional enqueue as the app role inside a tenant transaction: which privileges pg-boss
 *    needs on its schema (found by trying with none and granting one at a time), what those
 *    grants expose, commit/rollback behaviour, and transactions per second (sequential and 8
 *    concurrent, interleaved rounds, against the same transaction without a job);
 * 2. fairness: tenant X has 10,000 jobs queued when tenant Y enqueues 10: at which completion
 *    Y's last job finished and how long Y's jobs waited, for each runner at the same concurrency;
 * 3. throughput of trivial jobs (one tenant-scoped query each) over 100 tenants.
 *
 * Every job handler does the same work: one query on `tags` in `tenantry.withTenant()` on the app
 * role's pool (the Tenantry worker's handler gets that transaction as `ctx.db`).
 * `node --conditions=development bench/runners.ts` or `npm run bench -- runners`.
 * The last line printed is one JSON object.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import {
  makeWorkerUtils,
  Logger as RunnerLogger,
  run as runGraphile,
  type WorkerUtils,
} from 'graphile-worker';
import type { Kysely } from 'kysely';
import pg from 'pg';
import { fromKysely, PgBoss, type Db as PgBossDb, type WorkOptions } from 'pg-boss';
import {
  bootstrapDatabase,
  createTenantry,
  type EmbeddedPostgresServer,
  migrate,
  startEmbeddedPostgres,
  type Tenantry,
} from 'tenantry';
import { createJobWorker, defineJob, enqueueJob, enqueueJobs } from 'tenantry/jobs';
import { referenceAppSources } from './sources.ts';

interface BenchDatabase {
  tags: { tenant_id: string; id: string; name: string };
}

const database = 'tenantry_bench_runners';
const directory = '.tenantry/bench-runners-postgres';
const ownerRole = 'tenantry_owner';
const appRole = 'tenantry_app';
const bossSchema = 'pgboss';

/** The privilege and exposure probes always run; these measurements can be left out. */
const phases = new Set(
  (process.env.BENCH_RUNNERS_PHASES ?? 'enqueue,fairness,throughput').split(','),
);
const tenantCount = Number(process.env.BENCH_RUNNERS_TENANTS ?? 100);
const enqueueRoundMs = Number(process.env.BENCH_RUNNERS_ENQUEUE_ROUND_MS ?? 1500);
const enqueueRounds = Number(process.env.BENCH_RUNNERS_ENQUEUE_ROUNDS ?? 3);
const enqueueConcurrency = 8;
const bigBacklog = Number(process.env.BENCH_RUNNERS_BIG_JOBS ?? 10_000);
const smallJobs = 10;
const fairnessConcurrency = 4;
/** Jobs of X completed before Y enqueues: Y arrives while X's backlog is being worked through. */
const fairnessHeadStart = 100;
const fairnessDeadlineMs = Number(process.env.BENCH_RUNNERS_FAIRNESS_DEADLINE_MS ?? 120_000);
/** Per round: two rounds of 5,000 make 10,000 jobs per variant. */
const throughputJobs = Number(process.env.BENCH_RUNNERS_JOBS ?? 5000);
const throughputRounds = Number(process.env.BENCH_RUNNERS_ROUNDS ?? 2);
const throughputConcurrency = 8;
const throughputDeadlineMs = Number(process.env.BENCH_RUNNERS_DEADLINE_MS ?? 60_000);
/** pg-boss with batchSize 1 and no burst trigger polls once per interval per worker: sampled. */
const pollBoundWindowMs = 5000;
const pgBossBatchSize = 20;

const enqueueQueue = 'bench-enqueue';
/** A queue whose inserts NOTIFY (pg-boss's `notify: true`), as graphile-worker's add_job always does. */
const notifyQueue = 'bench-enqueue-notify';
const otherQueue = 'bench-platform-only';
const tenantTask = 'bench.tenant';
const plainTask = 'bench.plain';

const silentRunnerLogger = new RunnerLogger(() => () => {});

/** What the running measurement wants to hear about each job; swapped per measurement. */
interface Probe {
  started(tenantId: string, n: number): void;
  finished(tenantId: string, n: number): void;
}
let probe: Probe = { started: () => {}, finished: () => {} };

interface BenchJob {
  readonly tenantId: string;
  readonly n: number;
}

/** One runner set-up: how its jobs are enqueued, a worker that runs them, and its queue. */
interface RunnerVariant {
  readonly name: string;
  /** Enqueues a backlog the fastest way this runner offers. */
  enqueueBulk(jobs: readonly BenchJob[]): Promise<void>;
  /** Enqueues one job the way a request of the tenant would (its own transaction). */
  enqueueOne(job: BenchJob): Promise<void>;
  start(concurrency: number): Promise<{ stop(): Promise<void> }>;
  /** Jobs of this variant not yet finished. */
  pending(): Promise<number>;
  reset(): Promise<void>;
}

interface Environment {
  readonly server: EmbeddedPostgresServer;
  readonly adminUrl: string;
  readonly appUrl: string;
  readonly admin: pg.Pool;
  readonly tenantry: Tenantry<BenchDatabase>;
  readonly tenants: readonly string[];
  readonly x: string;
  readonly y: string;
  readonly boss: PgBoss;
  readonly utils: WorkerUtils;
  readonly utilsPool: pg.Pool;
  /** Server version and the settings that decide commit cost. */
  readonly postgres: string;
}

/** A pool whose idle clients may drop without crashing the process. */
function createPool(connectionString: string, max: number, role?: string): pg.Pool {
  const pool = new pg.Pool({
    connectionString,
    max,
    ...(role === undefined ? {} : { options: `-c role=${role}` }),
  });
  pool.on('error', () => {});
  pool.on('connect', (client) => {
    client.on('error', () => {});
  });
  return pool;
}

const tagQuery = (db: Kysely<BenchDatabase>) =>
  db.selectFrom('tags').select('id').orderBy('id').limit(1).execute();

export async function run(): Promise<void> {
  const server = await startEmbeddedPostgres({ directory });
  try {
    await runWith(server);
  } finally {
    await server.stop();
  }
}

async function runWith(server: EmbeddedPostgresServer): Promise<void> {
  const started = performance.now();
  const loadAtStart = os.loadavg()[0] ?? Number.NaN;
  const env = await setUp(server);
  const bossErrors: string[] = [];
  env.boss.on('error', (error) => {
    if (bossErrors.length < 20) bossErrors.push(String(error?.message ?? error));
  });
  try {
    const privileges = await probePrivileges(env);
    const producer = await probeProducerInstance(env);
    const exposure = await probeExposure(env);
    const rollback = await checkRollback(env);
    const enqueue = phases.has('enqueue') ? await measureEnqueue(env) : [];
    const variants = createVariants(env);
    const fairness: FairnessResult[] = [];
    if (phases.has('fairness')) {
      for (const variant of variants.fairness) {
        fairness.push(await measureFairness(env, variant));
      }
    }
    const throughput = phases.has('throughput') ? await measureThroughputs(env, variants) : [];
    report({
      env,
      privileges,
      producer,
      exposure,
      rollback,
      enqueue,
      fairness,
      throughput,
      bossErrors,
      totalMs: performance.now() - started,
      loadAtStart,
    });
  } finally {
    await env.boss.stop({ graceful: false, timeout: 1000 }).catch(() => undefined);
    await env.utils.release();
    await env.utilsPool.end();
    await env.tenantry.close();
    await env.admin.end();
  }
}

async function setUp(server: EmbeddedPostgresServer): Promise<Environment> {
  const adminUrl = server.connectionString(database);
  const appUrl = server.connectionString(database, appRole, server.secrets.appPassword);
  // A fresh database every run: a kept one would hold migrations of an older checkout.
  const maintenance = createPool(server.connectionString('postgres'), 1);
  await maintenance.query(`drop database if exists ${database} with (force)`);
  await maintenance.end();
  await bootstrapDatabase({
    adminConnectionString: server.connectionString('postgres'),
    database,
    passwords: { app: server.secrets.appPassword },
  });
  await migrate({
    connectionString: adminUrl,
    sources: referenceAppSources(),
  });
  const admin = createPool(adminUrl, 4);
  const settings = await admin.query<{ name: string; setting: string }>(
    `select name, setting from pg_settings
      where name in ('server_version', 'fsync', 'synchronous_commit', 'shared_buffers', 'max_connections')
      order by name`,
  );
  const created = await admin.query<{ id: string }>(
    `insert into tenantry.tenants (slug, name)
     select 'bench-runners-' || g, 'bench ' || g from generate_series(1, $1) g
     returning id::text`,
    [tenantCount + 2],
  );
  const ids = created.rows.map((row) => row.id);
  await admin.query(
    `insert into tags (tenant_id, name)
     select t, 'tag ' || g from unnest($1::uuid[]) t, generate_series(1, 10) g`,
    [ids],
  );
  await admin.query('analyze tags');

  // pg-boss installed by the owner role into a schema of its own, as a deployment would.
  const boss = new PgBoss({
    connectionString: adminUrl,
    options: `-c role=${ownerRole}`,
    schema: bossSchema,
    max: 12,
    schedule: false,
    // The stats that pg-boss's batchSize-1 burst mode reads, refreshed as often as it allows.
    monitorIntervalSeconds: 1,
    superviseIntervalSeconds: 1,
    queueCacheIntervalSeconds: 1,
  });
  await boss.start();
  for (const queue of [enqueueQueue, otherQueue]) await boss.createQueue(queue);
  await boss.createQueue(notifyQueue, { notify: true });

  const tenantry = await createTenantry<BenchDatabase>({
    connectionString: appUrl,
    maxConnections: 10,
  });
  const utilsPool = createPool(adminUrl, 2, ownerRole);
  const utils = await makeWorkerUtils({ pgPool: utilsPool, logger: silentRunnerLogger });
  return {
    server,
    adminUrl,
    appUrl,
    admin,
    tenantry,
    tenants: ids.slice(0, tenantCount),
    x: ids[tenantCount] as string,
    y: ids[tenantCount + 1] as string,
    boss,
    utils,
    utilsPool,
    postgres: settings.rows.map((row) => `${row.name}=${row.setting}`).join(', '),
  };
}

// --- 1. enqueue as the app role -----------------------------------------------------------------

const noopJob = defineJob<Record<string, unknown>, BenchDatabase>('bench.enqueue', {
  async run() {},
});

interface GrantStep {
  /** The grant applied before this attempt (none for the first). */
  readonly grant: string | undefined;
  readonly outcome: string;
}

/** What pg-boss's `send({ db })` raises, reduced to a line: SQLSTATE and message. */
function describeError(error: unknown): string {
  const record = error as { code?: unknown; message?: unknown; cause?: unknown };
  const cause = record?.cause as { code?: unknown; message?: unknown } | undefined;
  const code = typeof record?.code === 'string' ? record.code : cause?.code;
  const message = String(cause?.message ?? record?.message ?? error);
  return `${typeof code === 'string' ? `${code} ` : ''}${message}`.slice(0, 160);
}

/** One business write and one pg-boss job in a tenant transaction of the app role. */
async function sendAsApp(
  env: Environment,
  tenantId: string,
  queue: string,
  data: object,
  options: Parameters<PgBoss['send']>[2] = {},
): Promise<string | null> {
  return env.tenantry.withTenant(tenantId, async (db) => {
    await db
      .insertInto('tags')
      .values({ name: randomUUID() } as never)
      .execute();
    return env.boss.send(queue, data, { ...options, db: fromKysely(db) as PgBossDb });
  });
}

/**
 * Tries `send({ db })` as the app role with no rights on pg-boss's schema, then grants one
 * privilege at a time until it works; records each error. The queue is a standard one, so its
 * jobs go to the shared partition `job_common` (pg-boss inserts into the partition directly, so
 * a grant on the partitioned parent `job` would not do).
 */
async function probePrivileges(
  env: Environment,
): Promise<{ ladder: GrantStep[]; without: GrantStep[]; notify: GrantStep[] }> {
  const grants = [
    `grant usage on schema ${bossSchema} to ${appRole}`,
    `grant insert on ${bossSchema}.job_common to ${appRole}`,
    `grant select (id) on ${bossSchema}.job_common to ${appRole}`,
    `grant select on ${bossSchema}.queue to ${appRole}`,
  ];
  const attempt = async (grant: string | undefined, steps: GrantStep[], queue = enqueueQueue) => {
    try {
      const id = await sendAsApp(env, env.x, queue, { tenantId: env.x });
      steps.push({ grant, outcome: id === null ? 'no job (null id)' : 'ok' });
      return id !== null;
    } catch (error) {
      steps.push({ grant, outcome: describeError(error) });
      return false;
    }
  };
  const ladder: GrantStep[] = [];
  let works = await attempt(undefined, ladder);
  for (const grant of grants) {
    if (works) break;
    await env.admin.query(grant);
    works = await attempt(grant, ladder);
  }
  if (!works) {
    throw new Error(`pg-boss send({ db }) as the app role never worked: ${JSON.stringify(ladder)}`);
  }
  // Each grant taken back alone, to show it is needed.
  const without: GrantStep[] = [];
  for (const grant of grants.slice(0, ladder.length - 1)) {
    const revoke = grant.replace(/^grant /, 'revoke ').replace(/ to /, ' from ');
    await env.admin.query(revoke);
    await attempt(revoke, without);
    await env.admin.query(grant);
  }
  const onParent = `grant insert, select (id) on ${bossSchema}.job to ${appRole}`;
  await env.admin.query(`revoke insert, select (id) on ${bossSchema}.job_common from ${appRole}`);
  await env.admin.query(onParent);
  await attempt(`${onParent} (instead of on job_common)`, without);
  await env.admin.query(`revoke insert, select (id) on ${bossSchema}.job from ${appRole}`);
  await env.admin.query(`grant insert, select (id) on ${bossSchema}.job_common to ${appRole}`);
  // A queue with `notify: true` inserts with RETURNING id, start_after.
  const notify: GrantStep[] = [];
  if (!(await attempt(undefined, notify, notifyQueue))) {
    const grant = `grant select (start_after) on ${bossSchema}.job_common to ${appRole}`;
    await env.admin.query(grant);
    await attempt(grant, notify, notifyQueue);
  }
  return { ladder, without, notify };
}

/**
 * A web process that enqueues needs a started PgBoss instance of its own (send() looks the queue
 * up through the instance's own pool, not through `db`). Started with the app role's credentials
 * and every background duty off, with the grants above only.
 */
async function probeProducerInstance(env: Environment): Promise<GrantStep[]> {
  const ladder = [`grant select on ${bossSchema}.version to ${appRole}`];
  const steps: GrantStep[] = [];
  const attempt = async (grant: string | undefined) => {
    const producer = new PgBoss({
      connectionString: env.appUrl,
      schema: bossSchema,
      max: 2,
      migrate: false,
      createSchema: false,
      supervise: false,
      schedule: false,
      registerInstance: false,
    });
    const errors: string[] = [];
    producer.on('error', (error) => errors.push(describeError(error)));
    try {
      await producer.start();
      const id = await env.tenantry.withTenant(env.x, (db) =>
        producer.send(enqueueQueue, { tenantId: env.x }, { db: fromKysely(db) as PgBossDb }),
      );
      steps.push({
        grant,
        outcome: `${id === null ? 'started, send returned null' : 'ok'}${errors.length > 0 ? ` (error events: ${errors.join('; ')})` : ''}`,
      });
      return id !== null;
    } catch (error) {
      steps.push({ grant, outcome: describeError(error) });
      return false;
    } finally {
      await producer.stop({ graceful: false, timeout: 1000 }).catch(() => undefined);
    }
  };
  let works = await attempt(undefined);
  for (const grant of ladder) {
    if (works) break;
    await env.admin.query(grant);
    works = await attempt(grant);
  }
  return steps;
}

interface ExposureCheck {
  readonly runner: 'pg-boss' | 'graphile-worker';
  readonly attempt: string;
  readonly outcome: string;
}

/** What the app role can do with the grants pg-boss needs, next to Tenantry's enqueue functions. */
async function probeExposure(env: Environment): Promise<ExposureCheck[]> {
  const checks: ExposureCheck[] = [];
  const app = new pg.Client({ connectionString: env.appUrl });
  await app.connect();
  const check = async (
    runner: ExposureCheck['runner'],
    attempt: string,
    fn: () => Promise<string>,
  ) => {
    try {
      checks.push({ runner, attempt, outcome: await fn() });
    } catch (error) {
      checks.push({ runner, attempt, outcome: `refused: ${describeError(error)}` });
    }
  };
  const stored = async (id: string | null) => {
    const row = await env.admin.query<{
      tenant: string;
      group_id: string;
      priority: number;
      name: string;
    }>(
      `select data ->> 'tenantId' as tenant, group_id, priority, name from ${bossSchema}.job where id = $1`,
      [id],
    );
    const job = row.rows[0];
    if (job === undefined) return 'no job stored';
    const who = (tenantId: string | null) =>
      tenantId === env.x ? 'X' : tenantId === env.y ? 'Y' : String(tenantId);
    return `accepted: stored with data.tenantId=${who(job.tenant)}, group_id=${who(job.group_id)}, priority=${job.priority}, queue=${job.name}`;
  };
  try {
    await check(
      'pg-boss',
      "in X's transaction, send({ tenantId: Y }, { group: { id: Y } })",
      async () =>
        stored(
          await sendAsApp(env, env.x, enqueueQueue, { tenantId: env.y }, { group: { id: env.y } }),
        ),
    );
    await check(
      'pg-boss',
      "in X's transaction, send with priority 1000000 (jumps every queue)",
      async () =>
        stored(
          await sendAsApp(env, env.x, enqueueQueue, { tenantId: env.x }, { priority: 1_000_000 }),
        ),
    );
    await check(
      'pg-boss',
      `in X's transaction, send to another queue ("${otherQueue}")`,
      async () => stored(await sendAsApp(env, env.x, otherQueue, { tenantId: env.x })),
    );
    await check(
      'pg-boss',
      "app role: select data from job_common (other tenants' payloads)",
      async () => {
        const result = await app.query(`select data from ${bossSchema}.job_common limit 1`);
        return `allowed: ${result.rows.length} row(s)`;
      },
    );
    await check(
      'pg-boss',
      "app role: select count(*), id from job_common (every tenant's jobs)",
      async () => {
        const result = await app.query<{ n: number }>(
          `select count(*)::int as n from ${bossSchema}.job_common`,
        );
        return `allowed: sees ${result.rows[0]?.n} jobs of all tenants (ids only)`;
      },
    );
    await check(
      'pg-boss',
      'app role: raw INSERT of a job already "active", for tenant Y',
      async () => {
        await app.query(
          `insert into ${bossSchema}.job_common (name, data, state) values ($1, $2, 'active')`,
          [enqueueQueue, JSON.stringify({ tenantId: env.y })],
        );
        return 'allowed: any column, any state';
      },
    );
    await check('pg-boss', 'app role: update/delete job_common', async () => {
      await app.query(`delete from ${bossSchema}.job_common where false`);
      return 'allowed';
    });
    await check(
      'graphile-worker',
      'app role: select graphile_worker.add_job(...) directly',
      async () => {
        await app.query(`select graphile_worker.add_job('bench.enqueue', '{}'::json)`);
        return 'allowed';
      },
    );
    await check(
      'graphile-worker',
      'app role: select from graphile_worker._private_jobs',
      async () => {
        await app.query('select count(*) from graphile_worker._private_jobs');
        return 'allowed';
      },
    );
    await check(
      'graphile-worker',
      "in X's transaction, enqueueJob(db, job, { tenantId: Y })",
      async () => {
        const id = await env.tenantry.withTenant(env.x, (db) =>
          enqueueJob(db, noopJob, { tenantId: env.y }),
        );
        const row = await env.admin.query<{
          tenant: string;
          data_tenant: string;
          priority: number;
        }>(
          `select payload ->> 'tenantId' as tenant, payload -> 'data' ->> 'tenantId' as data_tenant, priority
           from graphile_worker._private_jobs where id = $1`,
          [id],
        );
        const job = row.rows[0];
        return `job tenant=${job?.tenant === env.x ? 'X' : job?.tenant} (server-written), caller's tenantId=${job?.data_tenant === env.y ? 'Y' : job?.data_tenant} kept under data, priority=${job?.priority} (server-computed)`;
      },
    );
    await check(
      'graphile-worker',
      'app role outside a tenant transaction: tenantry.enqueue_job(...)',
      async () => {
        await app.query(`select tenantry.enqueue_job('bench.enqueue', '{}'::jsonb)`);
        return 'allowed';
      },
    );
    await check(
      'graphile-worker',
      "in X's transaction, a reserved task (tenantry.fan-out)",
      async () => {
        await env.tenantry.withTenant(env.x, (db) =>
          enqueueJob(db, { ...noopJob, name: 'tenantry.fan-out' }, {}),
        );
        return 'allowed';
      },
    );
    // A possible mitigation on pg-boss's side: RLS on its shared partition, written and kept by
    // Tenantry (the owner role has BYPASSRLS, so pg-boss's own statements are unaffected).
    await env.admin.query(`
      alter table ${bossSchema}.job_common enable row level security;
      create policy tenantry_app_insert on ${bossSchema}.job_common for insert to ${appRole}
        with check (data ->> 'tenantId' = tenantry.current_tenant_id()::text
                    and group_id is not distinct from data ->> 'tenantId' and priority = 0);
      create policy tenantry_app_returning on ${bossSchema}.job_common for select to ${appRole}
        using (data ->> 'tenantId' = tenantry.current_tenant_id()::text)`);
    try {
      await check('pg-boss', 'with an RLS policy added on job_common: honest send in X', async () =>
        stored(
          await sendAsApp(env, env.x, enqueueQueue, { tenantId: env.x }, { group: { id: env.x } }),
        ),
      );
      await check(
        'pg-boss',
        'with an RLS policy added on job_common: forged tenant Y in X',
        async () =>
          stored(
            await sendAsApp(
              env,
              env.x,
              enqueueQueue,
              { tenantId: env.y },
              { group: { id: env.y } },
            ),
          ),
      );
    } finally {
      await env.admin.query(`
        drop policy tenantry_app_insert on ${bossSchema}.job_common;
        drop policy tenantry_app_returning on ${bossSchema}.job_common;
        alter table ${bossSchema}.job_common disable row level security`);
    }
  } finally {
    await app.end();
  }
  await resetEnqueueQueues(env);
  return checks;
}

interface RollbackResult {
  readonly runner: string;
  readonly committed: number;
  readonly rolledBack: number;
}

class RollbackRequested extends Error {}

/** A job enqueued in a committed tenant transaction exists; one in a rolled-back one does not. */
async function checkRollback(env: Environment): Promise<RollbackResult[]> {
  const count = {
    'graphile-worker (enqueueJob)': (marker: string) =>
      env.admin.query<{ n: number }>(
        `select count(*)::int as n from graphile_worker._private_jobs where payload -> 'data' ->> 'marker' = $1`,
        [marker],
      ),
    'pg-boss (send with db)': (marker: string) =>
      env.admin.query<{ n: number }>(
        `select count(*)::int as n from ${bossSchema}.job where data ->> 'marker' = $1`,
        [marker],
      ),
  };
  const enqueue = {
    'graphile-worker (enqueueJob)': (db: Kysely<BenchDatabase>, marker: string) =>
      enqueueJob(db, noopJob, { marker }),
    'pg-boss (send with db)': (db: Kysely<BenchDatabase>, marker: string) =>
      env.boss.send(enqueueQueue, { tenantId: env.x, marker }, { db: fromKysely(db) as PgBossDb }),
  };
  const results: RollbackResult[] = [];
  for (const runner of Object.keys(count) as (keyof typeof count)[]) {
    const committed = randomUUID();
    const rolledBack = randomUUID();
    await env.tenantry.withTenant(env.x, async (db) => {
      await db
        .insertInto('tags')
        .values({ name: committed } as never)
        .execute();
      await enqueue[runner](db, committed);
    });
    await env.tenantry
      .withTenant(env.x, async (db) => {
        await db
          .insertInto('tags')
          .values({ name: rolledBack } as never)
          .execute();
        await enqueue[runner](db, rolledBack);
        throw new RollbackRequested();
      })
      .catch((error: unknown) => {
        if (!(error instanceof RollbackRequested)) throw error;
      });
    results.push({
      runner,
      committed: (await count[runner](committed)).rows[0]?.n ?? -1,
      rolledBack: (await count[runner](rolledBack)).rows[0]?.n ?? -1,
    });
  }
  await resetEnqueueQueues(env);
  return results;
}

async function resetEnqueueQueues(env: Environment): Promise<void> {
  await env.admin.query('delete from graphile_worker._private_jobs');
  await env.admin.query(`delete from ${bossSchema}.job_common`);
  await env.admin.query(`vacuum analyze graphile_worker._private_jobs, ${bossSchema}.job_common`);
}

interface EnqueueResult {
  readonly name: string;
  readonly seq: number;
  readonly conc: number;
}

/**
 * Tenant transactions per second: BEGIN, context, INSERT a tag, enqueue one job, COMMIT, in a
 * random tenant, for each runner and for the same transaction without a job.
 */
async function measureEnqueue(env: Environment): Promise<EnqueueResult[]> {
  const owner = createPool(env.adminUrl, enqueueConcurrency, ownerRole);
  /** The same transaction on an owner connection, by hand: no Tenantry, no wrapper, no RLS. */
  const ownerTransaction = async (tenantId: string, addJob: boolean) => {
    const client = await owner.connect();
    try {
      await client.query('begin');
      await client.query('insert into tags (tenant_id, name) values ($1, $2)', [
        tenantId,
        randomUUID(),
      ]);
      if (addJob) {
        await client.query(
          `select graphile_worker.add_job('bench.enqueue', $1::json, flags => $2::text[])`,
          [JSON.stringify({ tenantId, data: { at: Date.now() } }), [`tenant:${tenantId}`]],
        );
      }
      await client.query('commit');
    } finally {
      client.release();
    }
  };
  const variants: Record<string, (tenantId: string) => Promise<unknown>> = {
    'tag insert only (no job)': (tenantId) =>
      env.tenantry.withTenant(tenantId, (db) =>
        db
          .insertInto('tags')
          .values({ name: randomUUID() } as never)
          .execute(),
      ),
    'graphile-worker: enqueueJob': (tenantId) =>
      env.tenantry.withTenant(tenantId, async (db) => {
        await db
          .insertInto('tags')
          .values({ name: randomUUID() } as never)
          .execute();
        await enqueueJob(db, noopJob, { at: Date.now() });
      }),
    'pg-boss: send({ db }), group = tenant': (tenantId) =>
      env.tenantry.withTenant(tenantId, async (db) => {
        await db
          .insertInto('tags')
          .values({ name: randomUUID() } as never)
          .execute();
        await env.boss.send(
          enqueueQueue,
          { tenantId, at: Date.now() },
          { db: fromKysely(db) as PgBossDb, group: { id: tenantId } },
        );
      }),
    'pg-boss: same, queue with notify: true': (tenantId) =>
      env.tenantry.withTenant(tenantId, async (db) => {
        await db
          .insertInto('tags')
          .values({ name: randomUUID() } as never)
          .execute();
        await env.boss.send(
          notifyQueue,
          { tenantId, at: Date.now() },
          { db: fromKysely(db) as PgBossDb, group: { id: tenantId } },
        );
      }),
    'diagnostic, owner by hand: tag insert only': (tenantId) => ownerTransaction(tenantId, false),
    'diagnostic, owner by hand: + graphile add_job': (tenantId) => ownerTransaction(tenantId, true),
  };
  const results: EnqueueResult[] = [];
  const totals = new Map<
    string,
    { seq: { ops: number; ms: number }; conc: { ops: number; ms: number } }
  >();
  for (const name of Object.keys(variants)) {
    totals.set(name, { seq: { ops: 0, ms: 0 }, conc: { ops: 0, ms: 0 } });
  }
  const names = Object.keys(variants);
  for (const mode of ['seq', 'conc'] as const) {
    const workers = mode === 'seq' ? 1 : enqueueConcurrency;
    for (const name of names)
      await timed(variants[name] as (t: string) => Promise<unknown>, env.tenants, workers, 300);
    for (let round = 0; round < enqueueRounds; round++) {
      const order = round % 2 === 0 ? names : [...names].reverse();
      for (const name of order) {
        // Every round starts from an empty queue: graphile's fair priority counts the tenant's
        // waiting jobs, and an ever-growing table would make later rounds pay for earlier ones.
        await resetEnqueueQueues(env);
        const measured = await timed(
          variants[name] as (t: string) => Promise<unknown>,
          env.tenants,
          workers,
          enqueueRoundMs,
        );
        const total = totals.get(name)?.[mode] as { ops: number; ms: number };
        total.ops += measured.ops;
        total.ms += measured.ms;
      }
    }
  }
  for (const [name, total] of totals) {
    results.push({
      name,
      seq: (total.seq.ops / total.seq.ms) * 1000,
      conc: (total.conc.ops / total.conc.ms) * 1000,
    });
  }
  await owner.end();
  await resetEnqueueQueues(env);
  return results;
}

async function timed(
  fn: (tenantId: string) => Promise<unknown>,
  tenants: readonly string[],
  workers: number,
  durationMs: number,
): Promise<{ ops: number; ms: number }> {
  let ops = 0;
  const started = performance.now();
  const deadline = started + durationMs;
  await Promise.all(
    Array.from({ length: workers }, async () => {
      while (performance.now() < deadline) {
        await fn(tenants[Math.floor(Math.random() * tenants.length)] as string);
        ops++;
      }
    }),
  );
  return { ops, ms: performance.now() - started };
}

// --- the runners --------------------------------------------------------------------------------

interface Variants {
  readonly fairness: readonly RunnerVariant[];
  readonly throughput: readonly RunnerVariant[];
}

function createVariants(env: Environment): Variants {
  const tenantJob = defineJob<{ n: number }, BenchDatabase>(tenantTask, {
    async run({ n }, { db, tenantId }) {
      probe.started(tenantId, n);
      await tagQuery(db);
      probe.finished(tenantId, n);
    },
  });
  const graphilePending = async () => {
    const result = await env.admin.query<{ n: number }>(
      'select count(*)::int as n from graphile_worker._private_jobs',
    );
    return result.rows[0]?.n ?? 0;
  };
  const graphileReset = async () => {
    await env.admin.query('delete from graphile_worker._private_jobs');
    await env.admin.query('vacuum analyze graphile_worker._private_jobs');
  };

  const tenantryWorker = (
    name: string,
    options: { tenantConcurrency?: number } = {},
  ): RunnerVariant => ({
    name,
    async enqueueBulk(jobs) {
      for (const [tenantId, ofTenant] of Map.groupBy(jobs, (job) => job.tenantId)) {
        for (let offset = 0; offset < ofTenant.length; offset += 10_000) {
          const chunk = ofTenant.slice(offset, offset + 10_000);
          await env.tenantry.withTenant(tenantId, (db) =>
            enqueueJobs(
              db,
              tenantJob,
              chunk.map((job) => ({ n: job.n })),
            ),
          );
        }
      }
    },
    async enqueueOne(job) {
      await env.tenantry.withTenant(job.tenantId, (db) => enqueueJob(db, tenantJob, { n: job.n }));
    },
    start: (concurrency) =>
      createJobWorker({
        tenantry: env.tenantry,
        connectionString: env.adminUrl,
        jobs: [tenantJob],
        concurrency,
        ...(options.tenantConcurrency === undefined
          ? {}
          : { tenantConcurrency: options.tenantConcurrency }),
      }),
    pending: graphilePending,
    reset: graphileReset,
  });

  const plainGraphile = (
    name: string,
    batching?: { localQueueSize: number; completeJobBatchDelayMs: number },
  ): RunnerVariant => ({
    name,
    async enqueueBulk(jobs) {
      for (let offset = 0; offset < jobs.length; offset += 10_000) {
        await env.utils.addJobs(
          jobs
            .slice(offset, offset + 10_000)
            .map((job) => ({ identifier: plainTask, payload: job })),
        );
      }
    },
    enqueueOne: async (job) => {
      await env.utils.addJob(plainTask, job);
    },
    async start(concurrency) {
      const pool = createPool(env.adminUrl, concurrency + 2, ownerRole);
      const runner = await runGraphile({
        pgPool: pool,
        concurrency,
        noHandleSignals: true,
        pollInterval: 1000,
        logger: silentRunnerLogger,
        ...(batching === undefined
          ? {}
          : {
              preset: {
                worker: {
                  localQueue: { size: batching.localQueueSize },
                  completeJobBatchDelay: batching.completeJobBatchDelayMs,
                },
              },
            }),
        taskList: {
          [plainTask]: async (payload) => {
            const job = payload as BenchJob;
            probe.started(job.tenantId, job.n);
            await env.tenantry.withTenant(job.tenantId, tagQuery);
            probe.finished(job.tenantId, job.n);
          },
        },
      });
      return {
        async stop() {
          await runner.stop();
          await pool.end();
        },
      };
    },
    pending: graphilePending,
    reset: graphileReset,
  });
  const plainFifo = plainGraphile('graphile-worker plain (add_jobs, FIFO)');

  const pgBoss = (
    name: string,
    queue: string,
    options: { group: boolean; work: WorkOptions },
  ): RunnerVariant => {
    const data = (job: BenchJob) => ({ tenantId: job.tenantId, n: job.n });
    const group = (job: BenchJob) => (options.group ? { group: { id: job.tenantId } } : {});
    return {
      name,
      async enqueueBulk(jobs) {
        await env.boss.createQueue(queue);
        for (let offset = 0; offset < jobs.length; offset += 5000) {
          await env.boss.insert(
            queue,
            jobs.slice(offset, offset + 5000).map((job) => ({ data: data(job), ...group(job) })),
          );
        }
      },
      async enqueueOne(job) {
        await env.boss.createQueue(queue);
        await env.tenantry.withTenant(job.tenantId, (db) =>
          env.boss.send(queue, data(job), { ...group(job), db: fromKysely(db) as PgBossDb }),
        );
      },
      async start(concurrency) {
        if (options.work.burstWhenReadyExceeds !== undefined) {
          // The burst trigger reads the queue's ready count from pg-boss's stats cache: start once
          // a monitor pass has counted the backlog, as a long-running worker would see it.
          const deadline = performance.now() + 10_000;
          while (
            ((await env.boss.getQueue(queue))?.readyCount ?? 0) <=
            options.work.burstWhenReadyExceeds
          ) {
            if (performance.now() > deadline) break;
            await new Promise((resolve) => setTimeout(resolve, 50));
          }
        }
        const id = await env.boss.work<{ tenantId: string; n: number }>(
          queue,
          { ...options.work, localConcurrency: concurrency },
          async (jobs) => {
            for (const job of jobs) {
              probe.started(job.data.tenantId, job.data.n);
              await env.tenantry.withTenant(job.data.tenantId, tagQuery);
              probe.finished(job.data.tenantId, job.data.n);
            }
          },
        );
        return {
          stop: () => env.boss.offWork(queue, { id, wait: true }),
        };
      },
      async pending() {
        const result = await env.admin.query<{ n: number }>(
          `select count(*)::int as n from ${bossSchema}.job where name = $1 and state < 'completed'`,
          [queue],
        );
        return result.rows[0]?.n ?? 0;
      },
      async reset() {
        await env.boss.createQueue(queue);
        await env.admin.query(`delete from ${bossSchema}.job where name = $1`, [queue]);
        await env.admin.query(`vacuum analyze ${bossSchema}.job_common`);
      },
    };
  };
  const burstOne: WorkOptions = {
    batchSize: 1,
    pollingIntervalSeconds: 0.5,
    burstWhenReadyExceeds: 1,
  };

  return {
    fairness: [
      tenantryWorker('Tenantry worker (defaults: fair priority + tenantConcurrency 2)'),
      tenantryWorker('Tenantry worker, fair priority only (tenantConcurrency 4)', {
        tenantConcurrency: fairnessConcurrency,
      }),
      plainFifo,
      pgBoss('pg-boss FIFO (batch 1, burst)', 'bench-fair-fifo', { group: false, work: burstOne }),
      pgBoss('pg-boss group = tenant, groupConcurrency 2', 'bench-fair-group', {
        group: true,
        work: { ...burstOne, groupConcurrency: 2 },
      }),
    ],
    throughput: [
      tenantryWorker('Tenantry createJobWorker'),
      plainFifo,
      plainGraphile(
        `graphile-worker plain, localQueue ${pgBossBatchSize} + completeJobBatchDelay 0`,
        { localQueueSize: pgBossBatchSize, completeJobBatchDelayMs: 0 },
      ),
      pgBoss('pg-boss work(), batchSize 1, default polling (0.5 s)', 'bench-tp-poll', {
        group: false,
        work: { batchSize: 1, pollingIntervalSeconds: 0.5 },
      }),
      pgBoss('pg-boss work(), batchSize 1, burstWhenReadyExceeds', 'bench-tp-burst', {
        group: false,
        work: burstOne,
      }),
      pgBoss(`pg-boss work(), batchSize ${pgBossBatchSize}, burstWhenBatchFull`, 'bench-tp-batch', {
        group: false,
        work: { batchSize: pgBossBatchSize, pollingIntervalSeconds: 0.5, burstWhenBatchFull: true },
      }),
    ],
  };
}

// --- 2. fairness --------------------------------------------------------------------------------

interface FairnessResult {
  readonly name: string;
  readonly enqueueXMs: number;
  /** Completions (all tenants, from the worker's start) when Y's last job finished. */
  readonly yLastCompletionIndex: number | undefined;
  readonly yWaitP50Ms: number;
  readonly yWaitP95Ms: number;
  readonly xRemaining: number;
}

/**
 * X's backlog is queued and the worker has completed `fairnessHeadStart` of it when Y enqueues
 * its jobs, one tenant transaction each: where Y's last job finished among all completions, how
 * long Y's jobs waited to start (from just before their enqueue), and how many of X's jobs had not
 * run yet. Stops at Y's last job (or the deadline).
 */
async function measureFairness(env: Environment, variant: RunnerVariant): Promise<FairnessResult> {
  await variant.reset();
  const enqueueStarted = performance.now();
  await variant.enqueueBulk(Array.from({ length: bigBacklog }, (_, n) => ({ tenantId: env.x, n })));
  const enqueueXMs = performance.now() - enqueueStarted;
  let completions = 0;
  let xCompleted = 0;
  let yCompleted = 0;
  let yLast: number | undefined;
  const enqueuedAt = new Map<number, number>();
  const waits: number[] = [];
  const headStart = Promise.withResolvers<void>();
  const yDone = Promise.withResolvers<void>();
  probe = {
    started: (tenantId, n) => {
      if (tenantId === env.y) waits.push(performance.now() - (enqueuedAt.get(n) as number));
    },
    finished: (tenantId) => {
      completions++;
      if (tenantId === env.x) {
        if (++xCompleted === fairnessHeadStart) headStart.resolve();
        return;
      }
      if (++yCompleted === smallJobs) {
        yLast = completions;
        yDone.resolve();
      }
    },
  };
  const worker = await variant.start(fairnessConcurrency);
  try {
    await withDeadline(headStart.promise, fairnessDeadlineMs);
    for (let n = 0; n < smallJobs; n++) {
      enqueuedAt.set(n, performance.now());
      await variant.enqueueOne({ tenantId: env.y, n });
    }
    await withDeadline(yDone.promise, fairnessDeadlineMs);
  } finally {
    await worker.stop();
  }
  const xRemaining = bigBacklog - xCompleted;
  probe = { started: () => {}, finished: () => {} };
  await variant.reset();
  const result = {
    name: variant.name,
    enqueueXMs,
    yLastCompletionIndex: yLast,
    yWaitP50Ms: percentile(waits, 0.5),
    yWaitP95Ms: waits.length === smallJobs ? percentile(waits, 0.95) : Number.NaN,
    xRemaining,
  };
  console.error(
    `fairness: ${variant.name}: Y's last job at completion ${yLast ?? 'never'}, Y wait p95 ${result.yWaitP95Ms.toFixed(0)} ms`,
  );
  return result;
}

async function withDeadline(promise: Promise<void>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  try {
    await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)] ?? Number.NaN;
}

// --- 3. throughput ------------------------------------------------------------------------------

interface ThroughputResult {
  readonly name: string;
  readonly perRound: readonly number[];
  readonly jobsPerSecond: number;
  readonly nodeCpuUsPerJob: number;
  readonly drained: boolean;
}

async function measureThroughputs(
  env: Environment,
  variants: Variants,
): Promise<ThroughputResult[]> {
  const jobs: BenchJob[] = Array.from({ length: throughputJobs }, (_, n) => ({
    tenantId: env.tenants[n % env.tenants.length] as string,
    n,
  }));
  const pollBound = (variant: RunnerVariant) => variant.name.includes('default polling');
  console.error(`throughput: warming up (${variants.throughput.length} variants x 500 jobs)...`);
  for (const variant of variants.throughput) {
    if (!pollBound(variant))
      await measureThroughput(variant, jobs.slice(0, 500), throughputDeadlineMs);
  }
  const totals = new Map(
    variants.throughput.map((variant) => [
      variant.name,
      { jobs: 0, ms: 0, cpuMs: 0, perRound: [] as number[], drained: true },
    ]),
  );
  for (let round = 1; round <= throughputRounds; round++) {
    const order = round % 2 === 1 ? variants.throughput : [...variants.throughput].reverse();
    for (const variant of order) {
      const measured = pollBound(variant)
        ? await measureThroughput(variant, jobs.slice(0, 1000), pollBoundWindowMs)
        : await measureThroughput(variant, jobs, throughputDeadlineMs);
      const total = totals.get(variant.name) as NonNullable<ReturnType<typeof totals.get>>;
      total.jobs += measured.completed;
      total.ms += measured.elapsedMs;
      total.cpuMs += measured.nodeCpuMs;
      total.drained &&= measured.drained || pollBound(variant);
      const rate = (measured.completed / measured.elapsedMs) * 1000;
      total.perRound.push(rate);
      console.error(`throughput round ${round}: ${variant.name}: ${rate.toFixed(0)} jobs/s`);
    }
  }
  return variants.throughput.map((variant) => {
    const total = totals.get(variant.name) as NonNullable<ReturnType<typeof totals.get>>;
    return {
      name: variant.name,
      perRound: total.perRound,
      jobsPerSecond: (total.jobs / total.ms) * 1000,
      nodeCpuUsPerJob: (total.cpuMs * 1000) / total.jobs,
      drained: total.drained,
    };
  });
}

/**
 * Enqueues `jobs`, starts the worker and returns the jobs completed between the first job
 * starting and the queue being empty (or the deadline).
 */
async function measureThroughput(
  variant: RunnerVariant,
  jobs: readonly BenchJob[],
  deadlineMs: number,
): Promise<{ completed: number; elapsedMs: number; nodeCpuMs: number; drained: boolean }> {
  await variant.reset();
  await variant.enqueueBulk(jobs);
  let firstStart: number | undefined;
  let finished = 0;
  const allFinished = Promise.withResolvers<void>();
  probe = {
    started: () => {
      firstStart ??= performance.now();
    },
    finished: () => {
      if (++finished === jobs.length) allFinished.resolve();
    },
  };
  const worker = await variant.start(throughputConcurrency);
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  await withDeadline(allFinished.promise, deadlineMs);
  let drained = finished === jobs.length;
  if (drained) {
    while ((await variant.pending()) > 0) {
      if (performance.now() - started > deadlineMs) {
        drained = false;
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }
  const elapsedMs = performance.now() - (firstStart ?? started);
  const completed = finished;
  const cpu = process.cpuUsage(cpuBefore);
  await worker.stop();
  probe = { started: () => {}, finished: () => {} };
  await variant.reset();
  return { completed, elapsedMs, nodeCpuMs: (cpu.user + cpu.system) / 1000, drained };
}

// --- report -------------------------------------------------------------------------------------

function versionOf(name: string): string {
  const manifest = new URL(`../node_modules/${name}/package.json`, import.meta.url);
  return (JSON.parse(readFileSync(manifest, 'utf8')) as { version: string }).version;
}

function report(results: {
  env: Environment;
  privileges: {
    readonly ladder: readonly GrantStep[];
    readonly without: readonly GrantStep[];
    readonly notify: readonly GrantStep[];
  };
  producer: readonly GrantStep[];
  exposure: readonly ExposureCheck[];
  rollback: readonly RollbackResult[];
  enqueue: readonly EnqueueResult[];
  fairness: readonly FairnessResult[];
  throughput: readonly ThroughputResult[];
  bossErrors: readonly string[];
  totalMs: number;
  loadAtStart: number;
}): void {
  const cpu = os.cpus()[0]?.model ?? 'unknown cpu';
  console.log(
    `runners benchmark: graphile-worker ${versionOf('graphile-worker')} (tenantry/jobs) vs pg-boss ${versionOf('pg-boss')}, one embedded cluster, ${tenantCount} tenants`,
  );
  console.log(
    `node ${process.version}, ${os.cpus().length} x ${cpu}, PostgreSQL on loopback (${results.env.postgres})`,
  );
  console.log(
    `${Math.round(results.totalMs / 1000)} s; load average (1 min) at start ${results.loadAtStart.toFixed(1)}, at end ${os.loadavg()[0]?.toFixed(1)}\n`,
  );

  console.log(`1a. pg-boss send({ db }) as the app role (${appRole}) in a tenant transaction`);
  for (const step of results.privileges.ladder) {
    console.log(`  ${(step.grant ?? '(no grant)').padEnd(58)} -> ${step.outcome}`);
  }
  console.log('    each grant taken back alone:');
  for (const step of results.privileges.without) {
    console.log(`  ${(step.grant ?? '').padEnd(58)} -> ${step.outcome}`);
  }
  console.log(`    a queue created with notify: true ("${notifyQueue}"):`);
  for (const step of results.privileges.notify) {
    console.log(`  ${(step.grant ?? '(the grants above)').padEnd(58)} -> ${step.outcome}`);
  }
  console.log(
    "    a started PgBoss instance with the app role's credentials (migrate/supervise/schedule off):",
  );
  for (const step of results.producer) {
    console.log(`  ${(step.grant ?? '(only the grants above)').padEnd(58)} -> ${step.outcome}`);
  }
  console.log('\n1b. what the app role can do then (pg-boss), and with tenantry/jobs');
  for (const check of results.exposure) {
    console.log(`  ${check.runner.padEnd(16)} ${check.attempt.padEnd(74)} -> ${check.outcome}`);
  }
  console.log('\n1c. commit / rollback (tag insert + job in one tenant transaction)');
  for (const result of results.rollback) {
    console.log(
      `  ${result.runner.padEnd(32)} committed -> ${result.committed} job, rolled back -> ${result.rolledBack} job`,
    );
  }
  const base = results.enqueue[0];
  if (base !== undefined) printEnqueue(results.enqueue, base);
  if (results.fairness.length > 0) printFairness(results.fairness);
  const tenantryRate = results.throughput[0];
  if (tenantryRate !== undefined) printThroughput(results.throughput, tenantryRate);
  if (results.bossErrors.length > 0) {
    console.log(`\npg-boss error events: ${results.bossErrors.join(' | ')}`);
  }

  const byName = (name: string) => results.enqueue.find((result) => result.name.startsWith(name));
  const fair = (prefix: string) =>
    results.fairness.find((result) => result.name.startsWith(prefix));
  const rate = (prefix: string) =>
    Math.round(
      results.throughput.find((result) => result.name.startsWith(prefix))?.jobsPerSecond ??
        Number.NaN,
    );
  console.log(
    JSON.stringify({
      bench: 'runners',
      pgboss_app_grants: results.privileges.ladder.flatMap((step) =>
        step.grant === undefined ? [] : [step.grant],
      ),
      enqueue_seq_tx_per_s: {
        none: Math.round(byName('tag insert')?.seq ?? Number.NaN),
        graphile: Math.round(byName('graphile')?.seq ?? Number.NaN),
        pgboss: Math.round(byName('pg-boss')?.seq ?? Number.NaN),
      },
      enqueue_conc_tx_per_s: {
        none: Math.round(byName('tag insert')?.conc ?? Number.NaN),
        graphile: Math.round(byName('graphile')?.conc ?? Number.NaN),
        pgboss: Math.round(byName('pg-boss')?.conc ?? Number.NaN),
      },
      fairness_y_last_completion_index: Object.fromEntries(
        results.fairness.map((result) => [result.name, result.yLastCompletionIndex ?? null]),
      ),
      fairness_y_wait_p95_ms: Object.fromEntries(
        results.fairness.map((result) => [result.name, Math.round(result.yWaitP95Ms)]),
      ),
      tenantry_default_y_wait_p95_ms: Math.round(
        fair('Tenantry worker (defaults')?.yWaitP95Ms ?? Number.NaN,
      ),
      throughput_jobs_per_s: {
        tenantry: rate('Tenantry'),
        graphile_plain: rate('graphile-worker plain (add_jobs'),
        graphile_plain_local_queue: rate('graphile-worker plain, localQueue'),
        pgboss_batch1_polling: rate('pg-boss work(), batchSize 1, default'),
        pgboss_batch1_burst: rate('pg-boss work(), batchSize 1, burst'),
        pgboss_batch: rate(`pg-boss work(), batchSize ${pgBossBatchSize}`),
      },
    }),
  );
}

function printEnqueue(enqueue: readonly EnqueueResult[], base: EnqueueResult): void {
  console.log(
    `\n1d. tenant transactions/s (BEGIN, context, INSERT tag, enqueue, COMMIT), ${enqueueRounds} interleaved rounds of ${enqueueRoundMs} ms`,
  );
  console.log(
    `  ${'variant'.padEnd(48)} ${'seq tx/s'.padStart(9)} ${'ratio'.padStart(6)} ${`conc${enqueueConcurrency} tx/s`.padStart(11)} ${'ratio'.padStart(6)}`,
  );
  for (const result of enqueue) {
    console.log(
      `  ${result.name.padEnd(48)} ${result.seq.toFixed(0).padStart(9)} ${(result.seq / base.seq).toFixed(2).padStart(6)} ${result.conc.toFixed(0).padStart(11)} ${(result.conc / base.conc).toFixed(2).padStart(6)}`,
    );
  }
}

function printFairness(fairness: readonly FairnessResult[]): void {
  console.log(
    `\n2. fairness: X has ${bigBacklog} jobs queued; after ${fairnessHeadStart} of them completed, Y enqueues ${smallJobs} (one transaction each); concurrency ${fairnessConcurrency}`,
  );
  console.log(
    '  (X bulk: enqueueJobs as the app role for Tenantry, addJobs / boss.insert as the owner otherwise; Y: enqueueJob / send({ db }) in its tenant transaction, addJob for plain graphile-worker)',
  );
  console.log(
    `  ${'variant'.padEnd(66)} ${'enqueue X ms'.padStart(12)} ${'Y last done at'.padStart(14)} ${'Y wait p50'.padStart(10)} ${'Y wait p95'.padStart(10)} ${'X left'.padStart(7)}`,
  );
  for (const result of fairness) {
    console.log(
      `  ${result.name.padEnd(66)} ${result.enqueueXMs.toFixed(0).padStart(12)} ${String(result.yLastCompletionIndex ?? `> ${fairnessDeadlineMs / 1000} s`).padStart(14)} ${result.yWaitP50Ms.toFixed(0).padStart(10)} ${result.yWaitP95Ms.toFixed(0).padStart(10)} ${String(result.xRemaining).padStart(7)}`,
    );
  }
}

function printThroughput(
  throughput: readonly ThroughputResult[],
  tenantry: ThroughputResult,
): void {
  console.log(
    `\n3. throughput: ${throughputJobs} jobs over ${tenantCount} tenants, one tenant-scoped query each, concurrency ${throughputConcurrency}, ${throughputRounds} interleaved rounds`,
  );
  console.log(
    `  ${'variant'.padEnd(56)} ${'per round jobs/s'.padStart(17)} ${'jobs/s'.padStart(7)} ${'vs Tenantry'.padStart(11)} ${'node CPU µs/job'.padStart(16)}`,
  );
  for (const result of throughput) {
    console.log(
      `  ${`${result.name}${result.drained ? '' : ' *'}`.padEnd(56)} ${result.perRound
        .map((rate) => rate.toFixed(0))
        .join(' / ')
        .padStart(
          17,
        )} ${result.jobsPerSecond.toFixed(0).padStart(7)} ${(result.jobsPerSecond / tenantry.jobsPerSecond).toFixed(2).padStart(11)} ${result.nodeCpuUsPerJob.toFixed(0).padStart(16)}`,
    );
  }
  console.log(`  (default polling: sampled over ${pollBoundWindowMs} ms windows, not drained)`);
}

if (import.meta.main) await run();
