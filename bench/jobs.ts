/**
 * Tenant jobs against plain graphile-worker: the same trivial job (increment one counter row of
 * a tenant) run by `run()` from graphile-worker on its own pool with an explicit
 * `WHERE tenant_id = $1` (superuser, no RLS), and by Tenantry's `createJobWorker` (status check,
 * tenant transaction on the app role's pool with the job's completion sent with its COMMIT, RLS,
 * guard). Same process, same server, same concurrency, interleaved rounds. With
 * BENCH_JOBS_BREAKDOWN=1, two more variants add Tenantry's pieces to the baseline one at a time
 * (its job table, then the tenant transaction), to show where the time goes. Then fairness: small
 * tenants enqueue while one tenant has a large backlog. The last line printed is one JSON object.
 */
import { readdir, readFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import {
  type JobHelpers,
  makeWorkerUtils,
  Logger as RunnerLogger,
  run as runGraphile,
  runMigrations,
  type WorkerUtils,
} from 'graphile-worker';
import type { Kysely } from 'kysely';
import pg from 'pg';
import {
  bootstrapDatabase,
  createTenantry,
  type EmbeddedPostgresServer,
  migrate,
  startEmbeddedPostgres,
} from 'tenantry';
import { createJobWorker, defineJob, enqueueJobs, jobsMigrationSource } from 'tenantry/jobs';

interface BenchDatabase {
  bench_job_counters: { tenant_id: string; id: number; n: number };
}

const jobCount = Number(process.env.BENCH_JOBS ?? 20_000);
const tenantCount = Number(process.env.BENCH_JOB_TENANTS ?? 100);
const rounds = Number(process.env.BENCH_JOB_ROUNDS ?? 2);
const concurrency = Number(process.env.BENCH_JOB_CONCURRENCY ?? 10);
const bigBacklog = Number(process.env.BENCH_FAIRNESS_BIG_JOBS ?? 20_000);
const smallTenants = Number(process.env.BENCH_FAIRNESS_SMALL_TENANTS ?? 20);
const smallJobs = Number(process.env.BENCH_FAIRNESS_SMALL_JOBS ?? 10);
/** Big-tenant jobs that must have started before the small tenants enqueue. */
const backlogHeadStart = 500;
const rowsPerTenant = 10;
const database = 'tenantry_bench_jobs';
const directory = '.tenantry/bench-jobs-postgres';
const plainTask = 'bench.plain';
const plainSchema = 'bench_graphile_worker';
const tenantrySchema = 'graphile_worker';
const withBreakdown = process.env.BENCH_JOBS_BREAKDOWN === '1';
/** Linux's USER_HZ, the unit of `/proc/<pid>/stat` times (100 on every mainstream kernel). */
const clockTicksPerSecond = 100;
const plainUpdate =
  'update bench_plain.job_counters set n = n + 1 where tenant_id = $1 and id = $2';

/** What the running round wants to hear about each job; swapped per round. */
interface Probe {
  started(tenantId: string, id: number): void;
  finished(tenantId: string, id: number): void;
}
let probe: Probe = { started: () => {}, finished: () => {} };

interface Job {
  readonly tenantId: string;
  readonly id: number;
}

/** One way of running the jobs: how they are enqueued, and a worker that runs them. */
interface Variant {
  readonly name: string;
  /** The schema of the job table the variant's jobs go through. */
  readonly schema: string;
  enqueue(jobs: readonly Job[]): Promise<void>;
  start(): Promise<{ stop(): Promise<void> }>;
}

const silentRunnerLogger = new RunnerLogger(() => () => {});

/** A pool whose idle clients may drop without crashing the process (graphile-worker checks). */
function createPool(connectionString: string, max: number): pg.Pool {
  const pool = new pg.Pool({ connectionString, max });
  pool.on('error', () => {});
  pool.on('connect', (client) => {
    client.on('error', () => {});
  });
  return pool;
}

export async function run(): Promise<void> {
  const server = await startEmbeddedPostgres({ directory });
  try {
    await runWith(server);
  } finally {
    await server.stop();
  }
}

async function runWith(server: EmbeddedPostgresServer): Promise<void> {
  const adminUrl = server.connectionString(database);
  // A fresh database every run: the data is small, and a kept one would hold migrations of an
  // older checkout.
  const maintenance = createPool(server.connectionString('postgres'), 1);
  await maintenance.query(`drop database if exists ${database} with (force)`);
  await maintenance.end();
  await bootstrapDatabase({
    adminConnectionString: server.connectionString('postgres'),
    database,
    passwords: { app: server.secrets.appPassword },
  });
  await migrate({ connectionString: adminUrl, sources: [jobsMigrationSource()] });
  const admin = createPool(adminUrl, 2);
  // graphile-worker's own schema, untouched: Tenantry's queue table carries two more indexes.
  await runMigrations({ pgPool: admin, schema: plainSchema, logger: silentRunnerLogger });
  const tenants = await loadData(admin);
  const tenantry = await createTenantry<BenchDatabase>({
    connectionString: server.connectionString(database, 'tenantry_app', server.secrets.appPassword),
    maxConnections: concurrency,
    tenantTables: ['bench_job_counters'],
  });
  const utilsPools: pg.Pool[] = [];
  const utilsOf = new Map<string, WorkerUtils>();
  for (const schema of [plainSchema, tenantrySchema]) {
    const pool = createPool(adminUrl, 2);
    utilsPools.push(pool);
    utilsOf.set(
      schema,
      await makeWorkerUtils({ pgPool: pool, schema, logger: silentRunnerLogger }),
    );
  }

  const increment = defineJob<{ id: number }, BenchDatabase>('bench.increment', {
    async run({ id }, { db, tenantId }) {
      probe.started(tenantId, id);
      await db
        .updateTable('bench_job_counters')
        .set((eb) => ({ n: eb('n', '+', 1) }))
        .where('id', '=', id)
        .execute();
      probe.finished(tenantId, id);
    },
  });

  /** graphile-worker's `addJobs`, in batches of 10,000 like `enqueueJobs`. */
  const addPlainJobs = (schema: string) => async (jobs: readonly Job[]) => {
    const utils = utilsOf.get(schema) as WorkerUtils;
    for (let offset = 0; offset < jobs.length; offset += 10_000) {
      await utils.addJobs(
        jobs.slice(offset, offset + 10_000).map((job) => ({
          identifier: plainTask,
          payload: { tenantId: job.tenantId, id: job.id },
        })),
      );
    }
  };
  /** graphile-worker's `run()` on a pool of its own, sized like the one inside Tenantry. */
  const startGraphile =
    (schema: string, task: (job: Job, helpers: JobHelpers) => Promise<void>, batched = false) =>
    async () => {
      const pool = createPool(adminUrl, Math.min(concurrency + 2, 20));
      const runner = await runGraphile({
        pgPool: pool,
        schema,
        concurrency,
        noHandleSignals: true,
        pollInterval: 1000,
        logger: silentRunnerLogger,
        taskList: { [plainTask]: (payload, helpers) => task(payload as Job, helpers) },
        // The same batching as Tenantry's worker with `prefetch`: a local queue of `concurrency`
        // jobs, batched completions and failures.
        ...(batched
          ? {
              preset: {
                worker: {
                  completeJobBatchDelay: 0,
                  failJobBatchDelay: 0,
                  localQueue: { size: concurrency },
                },
              },
            }
          : {}),
      });
      return {
        async stop() {
          await runner.stop();
          await pool.end();
        },
      };
    };
  const plainJob = async (job: Job, helpers: JobHelpers) => {
    probe.started(job.tenantId, job.id);
    await helpers.query(plainUpdate, [job.tenantId, job.id]);
    probe.finished(job.tenantId, job.id);
  };
  const updateCounter = (db: Kysely<BenchDatabase>, id: number) =>
    db
      .updateTable('bench_job_counters')
      .set((eb) => ({ n: eb('n', '+', 1) }))
      .where('id', '=', id)
      .execute();

  const baseline: Variant = {
    name: 'graphile-worker, WHERE tenant_id (baseline)',
    schema: plainSchema,
    enqueue: addPlainJobs(plainSchema),
    start: startGraphile(plainSchema, plainJob),
  };
  const enqueueTenantJobs = async (jobs: readonly Job[]) => {
    for (const [tenantId, ofTenant] of Map.groupBy(jobs, (job) => job.tenantId)) {
      for (let offset = 0; offset < ofTenant.length; offset += 10_000) {
        await tenantry.withTenant(tenantId, (db) =>
          enqueueJobs(
            db,
            increment,
            ofTenant.slice(offset, offset + 10_000).map((job) => ({ id: job.id })),
          ),
        );
      }
    }
  };
  const batchedBaseline: Variant = {
    name: 'graphile-worker, local queue + batching',
    schema: plainSchema,
    enqueue: addPlainJobs(plainSchema),
    start: startGraphile(plainSchema, plainJob, true),
  };
  const prefetchWorker: Variant = {
    name: `Tenantry createJobWorker, prefetch ${concurrency}`,
    schema: tenantrySchema,
    enqueue: enqueueTenantJobs,
    start: () =>
      createJobWorker({
        tenantry,
        connectionString: adminUrl,
        jobs: [increment],
        concurrency,
        prefetch: concurrency,
      }),
  };
  const tenantryWorker: Variant = {
    name: 'Tenantry createJobWorker',
    schema: tenantrySchema,
    async enqueue(jobs) {
      for (const [tenantId, ofTenant] of Map.groupBy(jobs, (job) => job.tenantId)) {
        for (let offset = 0; offset < ofTenant.length; offset += 10_000) {
          await tenantry.withTenant(tenantId, (db) =>
            enqueueJobs(
              db,
              increment,
              ofTenant.slice(offset, offset + 10_000).map((job) => ({ id: job.id })),
            ),
          );
        }
      }
    },
    start: () =>
      createJobWorker({ tenantry, connectionString: adminUrl, jobs: [increment], concurrency }),
  };
  const breakdown: Variant[] = [
    {
      name: "  baseline on Tenantry's job table",
      schema: tenantrySchema,
      enqueue: addPlainJobs(tenantrySchema),
      start: startGraphile(tenantrySchema, plainJob),
    },
    {
      name: '  baseline + withTenant (update)',
      schema: plainSchema,
      enqueue: addPlainJobs(plainSchema),
      start: startGraphile(plainSchema, async (job) => {
        probe.started(job.tenantId, job.id);
        await tenantry.withTenant(job.tenantId, (db) => updateCounter(db, job.id));
        probe.finished(job.tenantId, job.id);
      }),
    },
  ];
  const variants = [
    baseline,
    tenantryWorker,
    batchedBaseline,
    prefetchWorker,
    ...(withBreakdown ? breakdown : []),
  ];

  const throughputJobs: Job[] = Array.from({ length: jobCount }, (_, index) => ({
    tenantId: tenants.spread[index % tenants.spread.length] as string,
    id: 1 + (Math.floor(index / tenants.spread.length) % rowsPerTenant),
  }));
  console.error(`warming up (${variants.length} variants x 1000 jobs)...`);
  for (const variant of variants) {
    await measureThroughput(admin, server.dataDir, variant, throughputJobs.slice(0, 1000));
  }
  const totals = new Map<string, Totals>(
    variants.map((variant) => [
      variant.name,
      {
        jobs: 0,
        ms: 0,
        nodeCpuMs: 0,
        writes: 0,
        serverCpuMs: 0,
        machineBusyMs: 0,
        machineTotalMs: 0,
      },
    ]),
  );
  const perRound: { variant: string; jobsPerSecond: number }[] = [];
  for (let round = 1; round <= rounds; round++) {
    // Alternate the order too, so no variant always runs right after the same other one.
    const order = round % 2 === 1 ? variants : [...variants].reverse();
    for (const variant of order) {
      const measured = await measureThroughput(admin, server.dataDir, variant, throughputJobs);
      const total = totals.get(variant.name) as Totals;
      total.jobs += throughputJobs.length;
      total.ms += measured.elapsedMs;
      total.nodeCpuMs += measured.nodeCpuMs;
      total.writes += measured.writes;
      total.serverCpuMs += measured.serverCpuMs;
      total.machineBusyMs += measured.machineBusyMs;
      total.machineTotalMs += measured.machineTotalMs;
      const jobsPerSecond = (jobCount / measured.elapsedMs) * 1000;
      perRound.push({ variant: variant.name, jobsPerSecond });
      console.error(`round ${round}: ${variant.name.trim()}: ${jobsPerSecond.toFixed(0)} jobs/s`);
    }
  }

  const fairness = new Map<string, Fairness>();
  for (const variant of [tenantryWorker, baseline]) {
    console.error(`fairness: ${variant.name}...`);
    fairness.set(variant.name, await measureFairness(admin, variant, tenants));
  }

  for (const utils of utilsOf.values()) await utils.release();
  for (const pool of utilsPools) await pool.end();
  await tenantry.close();
  await admin.end();

  const rate = (name: string) => {
    const total = totals.get(name) as Totals;
    return (total.jobs / total.ms) * 1000;
  };
  const baseRate = rate(baseline.name);
  const cpuTotal = (name: string) => {
    const total = totals.get(name) as Totals;
    return total.nodeCpuMs + total.serverCpuMs;
  };
  const cpuPerJob = (name: string) => {
    const total = totals.get(name) as Totals;
    return {
      writes: Number((total.writes / total.jobs).toFixed(2)),
      node: Math.round((total.nodeCpuMs * 1000) / total.jobs),
      postgres: Math.round((total.serverCpuMs * 1000) / total.jobs),
    };
  };
  const cpu = os.cpus()[0]?.model ?? 'unknown cpu';
  console.log(
    `jobs benchmark: ${jobCount} jobs over ${tenantCount} tenants, concurrency ${concurrency}, ${rounds} interleaved rounds per variant`,
  );
  console.log(
    `node ${process.version}, ${os.cpus().length} x ${cpu}, PostgreSQL embedded on loopback\n`,
  );
  console.log(
    `${'variant'.padEnd(44)} ${'per round jobs/s'.padStart(18)} ${'jobs/s'.padStart(7)} ${'ratio'.padStart(6)} ${'writes/job'.padStart(10)} ${'node CPU µs/job'.padStart(16)} ${'PG CPU µs/job'.padStart(14)} ${'machine busy'.padStart(13)}`,
  );
  for (const variant of variants) {
    const total = totals.get(variant.name) as Totals;
    const each = perRound
      .filter((entry) => entry.variant === variant.name)
      .map((entry) => entry.jobsPerSecond.toFixed(0))
      .join(' / ');
    console.log(
      `${variant.name.padEnd(44)} ${each.padStart(18)} ${rate(variant.name).toFixed(0).padStart(7)} ${(rate(variant.name) / baseRate).toFixed(2).padStart(6)} ${(total.writes / total.jobs).toFixed(2).padStart(10)} ${((total.nodeCpuMs * 1000) / total.jobs).toFixed(0).padStart(16)} ${((total.serverCpuMs * 1000) / total.jobs).toFixed(0).padStart(14)} ${`${Math.round((100 * total.machineBusyMs) / total.machineTotalMs)}%`.padStart(13)}`,
    );
  }
  console.log(
    `\nfairness: one tenant with ${bigBacklog} queued jobs; after ${backlogHeadStart} of them started, ${smallTenants} tenants enqueue ${smallJobs} jobs each`,
  );
  console.log(
    `${'variant'.padEnd(44)} ${'wait p50 ms'.padStart(12)} ${'wait p95 ms'.padStart(12)} ${'done p95 ms'.padStart(12)} ${'big jobs still queued'.padStart(22)}`,
  );
  for (const [name, result] of fairness) {
    console.log(
      `${name.padEnd(44)} ${result.waitP50Ms.toFixed(0).padStart(12)} ${result.waitP95Ms.toFixed(0).padStart(12)} ${result.doneP95Ms.toFixed(0).padStart(12)} ${String(result.bigStillQueued).padStart(22)}`,
    );
  }
  const tenantryFairness = fairness.get(tenantryWorker.name) as Fairness;
  const baselineFairness = fairness.get(baseline.name) as Fairness;
  const round3 = (value: number) => Number(value.toFixed(3));
  const [onJobTable, withTenant] = breakdown.map((variant) =>
    totals.has(variant.name) ? round3(rate(variant.name) / baseRate) : undefined,
  );
  console.log(
    JSON.stringify({
      bench: 'jobs',
      ratio: round3(rate(tenantryWorker.name) / baseRate),
      // Throughput on a machine shared with others swings with their load; CPU time per job
      // (this process plus the server's) does much less.
      cpu_ratio: round3(cpuTotal(baseline.name) / cpuTotal(tenantryWorker.name)),
      small_tenant_p95_wait_ms: Math.round(tenantryFairness.waitP95Ms),
      big_jobs_queued_when_small_done: tenantryFairness.bigStillQueued,
      baseline_jobs_per_s: Math.round(baseRate),
      tenantry_jobs_per_s: Math.round(rate(tenantryWorker.name)),
      // Tenantry with prefetch against plain graphile-worker with the same batching, and against
      // plain graphile-worker's defaults.
      prefetch_ratio_same_batching: round3(rate(prefetchWorker.name) / rate(batchedBaseline.name)),
      prefetch_ratio_vs_default_baseline: round3(rate(prefetchWorker.name) / baseRate),
      baseline_per_job: cpuPerJob(baseline.name),
      tenantry_per_job: cpuPerJob(tenantryWorker.name),
      baseline_small_tenant_p95_wait_ms: Math.round(baselineFairness.waitP95Ms),
      baseline_big_jobs_queued_when_small_done: baselineFairness.bigStillQueued,
      ...(withBreakdown
        ? {
            job_table_ratio: onJobTable,
            with_tenant_ratio: withTenant,
          }
        : {}),
    }),
  );
}

/**
 * Enqueues `jobs`, starts the variant's worker and returns the milliseconds from the first job
 * starting to the queue being empty; checks that every job ran exactly once.
 */
async function measureThroughput(
  admin: pg.Pool,
  dataDir: string,
  variant: Variant,
  jobs: readonly Job[],
): Promise<Measured> {
  await resetQueue(admin);
  const before = await counterSum(admin);
  await variant.enqueue(jobs);
  let firstStart: number | undefined;
  let finished = 0;
  const { promise: allFinished, resolve } = Promise.withResolvers<void>();
  probe = {
    started: () => {
      firstStart ??= performance.now();
    },
    finished: () => {
      if (++finished === jobs.length) resolve();
    },
  };
  const worker = await variant.start();
  const serverBefore = await serverCpuMs(dataDir);
  const cpuBefore = {
    node: process.cpuUsage(),
    writes: await writeCalls(),
    server: serverBefore,
    machine: machineCpuMs(),
  };
  await allFinished;
  await waitForEmptyQueue(admin, variant.schema);
  const elapsedMs = performance.now() - (firstStart as number);
  const nodeCpu = process.cpuUsage(cpuBefore.node);
  const writes = (await writeCalls()) - cpuBefore.writes;
  const machine = machineCpuMs();
  const server = await serverCpuMs(dataDir);
  await worker.stop();
  const after = await counterSum(admin);
  if (after - before !== jobs.length) {
    throw new Error(`${variant.name}: ${after - before} increments for ${jobs.length} jobs`);
  }
  return {
    elapsedMs,
    nodeCpuMs: (nodeCpu.user + nodeCpu.system) / 1000,
    writes,
    serverCpuMs: serverCpuSinceMs(cpuBefore.server, server),
    machineBusyMs: machine.busy - cpuBefore.machine.busy,
    machineTotalMs: machine.total - cpuBefore.machine.total,
  };
}

interface Totals {
  jobs: number;
  ms: number;
  nodeCpuMs: number;
  writes: number;
  serverCpuMs: number;
  machineBusyMs: number;
  machineTotalMs: number;
}

interface Measured {
  readonly elapsedMs: number;
  /** CPU time of this process (the workers, pools and the bench itself). */
  readonly nodeCpuMs: number;
  /** Write system calls of this process: one per flush of messages to the server. */
  readonly writes: number;
  /** CPU time of the PostgreSQL server's processes (postmaster and backends). */
  readonly serverCpuMs: number;
  /**
   * Busy and total CPU time of the whole machine over the same span (every core): whatever else
   * runs on the machine counts too, so only the busy share is shown.
   */
  readonly machineBusyMs: number;
  readonly machineTotalMs: number;
}

/**
 * CPU time used so far by each of the server's processes (Linux `/proc`; empty elsewhere), by
 * pid: see {@link serverCpuSinceMs}.
 */
async function serverCpuMs(dataDir: string): Promise<Map<string, number>> {
  const times = new Map<string, number>();
  try {
    const postmaster = (await readFile(join(dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0];
    for (const entry of await readdir('/proc')) {
      if (!/^[0-9]+$/.test(entry)) continue;
      const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => undefined);
      if (stat === undefined) continue;
      // Fields after the command name: state, ppid, ..., utime (14th field), stime (15th).
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (entry !== postmaster && fields[1] !== postmaster) continue;
      times.set(entry, (Number(fields[11]) + Number(fields[12])) * (1000 / clockTicksPerSecond));
    }
  } catch {
    return new Map();
  }
  return times;
}

/**
 * Server CPU time spent between two samples: processes alive at both count their difference,
 * processes started since count whole; one that exited in between (an autovacuum worker, an idle
 * pooled connection closed) loses its last moments, never more. `NaN` without `/proc`.
 */
function serverCpuSinceMs(before: Map<string, number>, after: Map<string, number>): number {
  if (after.size === 0) return Number.NaN;
  let total = 0;
  for (const [pid, ms] of after) total += ms - (before.get(pid) ?? 0);
  return total;
}

/** This process's write system calls so far (Linux `/proc/self/io`; `NaN` elsewhere). */
async function writeCalls(): Promise<number> {
  const io = await readFile('/proc/self/io', 'utf8').catch(() => '');
  return Number(/^syscw: ([0-9]+)$/m.exec(io)?.[1] ?? Number.NaN);
}

function machineCpuMs(): { busy: number; total: number } {
  let busy = 0;
  let total = 0;
  for (const cpu of os.cpus()) {
    const { user, nice, sys, irq, idle } = cpu.times;
    busy += user + nice + sys + irq;
    total += user + nice + sys + irq + idle;
  }
  return { busy, total };
}

interface Fairness {
  readonly waitP50Ms: number;
  readonly waitP95Ms: number;
  readonly doneP95Ms: number;
  readonly bigStillQueued: number;
}

/**
 * One tenant's backlog of `bigBacklog` jobs is being worked through when `smallTenants` tenants
 * enqueue `smallJobs` each: how long their jobs wait to start and to finish, and how many of the
 * big tenant's jobs had not started when the last small job finished.
 */
async function measureFairness(
  admin: pg.Pool,
  variant: Variant,
  tenants: { big: string; small: readonly string[] },
): Promise<Fairness> {
  await resetQueue(admin);
  await variant.enqueue(
    Array.from({ length: bigBacklog }, (_, index) => ({
      tenantId: tenants.big,
      id: 1 + (index % rowsPerTenant),
    })),
  );
  let bigStarted = 0;
  const enqueuedAt = new Map<string, number>();
  const waits: number[] = [];
  const dones: number[] = [];
  let smallFinished = 0;
  let bigStartedWhenSmallDone = 0;
  const headStart = Promise.withResolvers<void>();
  const smallDone = Promise.withResolvers<void>();
  probe = {
    started: (tenantId) => {
      if (tenantId === tenants.big) {
        if (++bigStarted === backlogHeadStart) headStart.resolve();
        return;
      }
      waits.push(performance.now() - (enqueuedAt.get(tenantId) as number));
    },
    finished: (tenantId) => {
      if (tenantId === tenants.big) return;
      dones.push(performance.now() - (enqueuedAt.get(tenantId) as number));
      if (++smallFinished === tenants.small.length * smallJobs) {
        bigStartedWhenSmallDone = bigStarted;
        smallDone.resolve();
      }
    },
  };
  const worker = await variant.start();
  await headStart.promise;
  for (const tenantId of tenants.small) {
    // Taken before the enqueue: the wait includes the enqueue itself, never less than the truth.
    enqueuedAt.set(tenantId, performance.now());
    await variant.enqueue(
      Array.from({ length: smallJobs }, (_, index) => ({ tenantId, id: 1 + index })),
    );
  }
  await smallDone.promise;
  await worker.stop();
  await resetQueue(admin);
  return {
    waitP50Ms: percentile(waits, 0.5),
    waitP95Ms: percentile(waits, 0.95),
    doneP95Ms: percentile(dones, 0.95),
    bigStillQueued: bigBacklog - bigStartedWhenSmallDone,
  };
}

function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)] ?? Number.NaN;
}

/** Empties both job tables and vacuums them, so every round starts alike. */
async function resetQueue(admin: pg.Pool): Promise<void> {
  for (const schema of [plainSchema, tenantrySchema]) {
    await admin.query(`delete from ${schema}._private_jobs`);
    await admin.query(`vacuum analyze ${schema}._private_jobs`);
  }
}

async function waitForEmptyQueue(admin: pg.Pool, schema: string): Promise<void> {
  for (;;) {
    const result = await admin.query<{ left: boolean }>(
      `select exists (select 1 from ${schema}._private_jobs) as left`,
    );
    if (result.rows[0]?.left === false) return;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

async function counterSum(admin: pg.Pool): Promise<number> {
  const result = await admin.query<{ n: string }>(
    `select (select coalesce(sum(n), 0) from bench_job_counters)
          + (select coalesce(sum(n), 0) from bench_plain.job_counters) as n`,
  );
  return Number(result.rows[0]?.n);
}

/**
 * Creates the tenants (`tenantCount` spread tenants, one big and `smallTenants` small ones) and
 * their counter rows, in an RLS table for Tenantry and a plain copy for graphile-worker alone.
 */
async function loadData(
  admin: pg.Pool,
): Promise<{ spread: string[]; big: string; small: string[] }> {
  const client = await admin.connect();
  try {
    await client.query('begin');
    await client.query('set local role tenantry_owner');
    await client.query('drop table if exists bench_job_counters');
    await client.query('drop schema if exists bench_plain cascade');
    await client.query("delete from tenantry.tenants where slug like 'bench-jobs-%'");
    await client.query(`
      create table bench_job_counters (
        tenant_id uuid not null, id integer not null, n bigint not null default 0,
        primary key (tenant_id, id))`);
    await client.query(`select tenantry.enable_tenant_isolation('bench_job_counters')`);
    await client.query('create schema bench_plain');
    await client.query(
      'create table bench_plain.job_counters (like bench_job_counters including defaults including constraints including indexes)',
    );
    const total = tenantCount + 1 + smallTenants;
    const created = await client.query<{ id: string }>(
      `insert into tenantry.tenants (slug, name)
       select 'bench-jobs-' || g, 'bench ' || g from generate_series(1, $1) g
       returning id::text`,
      [total],
    );
    const ids = created.rows.map((row) => row.id);
    for (const table of ['bench_job_counters', 'bench_plain.job_counters']) {
      await client.query(
        `insert into ${table} (tenant_id, id)
         select t, g from unnest($1::uuid[]) t, generate_series(1, $2) g`,
        [ids, Math.max(rowsPerTenant, smallJobs)],
      );
    }
    await client.query('commit');
    await client.query('analyze bench_job_counters');
    await client.query('analyze bench_plain.job_counters');
    return {
      spread: ids.slice(0, tenantCount),
      big: ids[tenantCount] as string,
      small: ids.slice(tenantCount + 1),
    };
  } catch (error) {
    await client.query('rollback').catch(() => undefined);
    throw error;
  } finally {
    client.release();
  }
}
