import { EventEmitter, once } from 'node:events';
import { hostname } from 'node:os';
import {
  type CronItem,
  type JobHelpers,
  parseCronItems,
  type Runner,
  run,
  type Task,
  type TaskList,
  type WorkerPool,
} from 'graphile-worker';
import { sql } from 'kysely';
import type pg from 'pg';
import {
  defaultTenantrySchema,
  parseIdentifier,
  quoteIdentifier,
  type RoleNames,
  resolveRoleNames,
} from '../config.ts';
import { TenantryError } from '../errors.ts';
import { type Logger, silentLogger, summarizeError } from '../logger.ts';
import { isUuid, type TenantId } from '../tenant-id.ts';
import { setCommitStatement, type Tenantry } from '../tenantry.ts';
import type { JobDefinition } from './define-job.ts';
import { enqueueJob, findHint } from './enqueue.ts';
import { retryDelayMs } from './retry-delay.ts';
import {
  createRunnerPool,
  JobOutcome,
  runnerSchema,
  toRunnerLogger,
  withFields,
} from './runner-support.ts';

/** How many jobs of one tenant may run at once; the quotas layer plugs its plans in here. */
export interface TenantJobLimits {
  /** The tenant's concurrent-job limit (cached by the worker for `limitsCacheMs`). */
  concurrentJobs(tenantId: TenantId): number | Promise<number>;
}

/** A cron schedule that enqueues one job per active tenant, each in that tenant's context. */
export interface JobSchedule<Payload = any> {
  /** Stable name: the period bookkeeping is keyed by it. Lowercase words joined by dots or dashes. */
  readonly name: string;
  /** Five-field cron expression in UTC, e.g. `'0 3 * * *'` for 03:00 every day. */
  readonly cron: string;
  /** The job enqueued for each active tenant. */
  readonly job: JobDefinition<Payload, any>;
  /** The payload for one tenant and period. @defaultValue `{ period: <ISO string> }` */
  readonly payload?: (target: { readonly tenantId: TenantId; readonly period: Date }) => Payload;
}

/** Options of {@link createJobWorker}. */
export interface JobWorkerOptions<DB> {
  /** The app-role Tenantry instance: every tenant job runs in `withTenant()` on its pool. */
  readonly tenantry: Tenantry<DB>;
  /**
   * Connection for the runner's bookkeeping (fetching, retrying, parking jobs): the owner role,
   * or a superuser URL (its connections then act as the owner). Handlers never see it.
   */
  readonly connectionString: string;
  readonly jobs: readonly JobDefinition<any, DB>[];
  readonly schedules?: readonly JobSchedule[];
  /** Jobs run at once by this worker. @defaultValue 10 */
  readonly concurrency?: number;
  /**
   * Jobs of one tenant run at once across all workers: a number, or limits per tenant (plans).
   * @defaultValue half of `concurrency`, at least 1
   */
  readonly tenantConcurrency?: number | TenantJobLimits;
  /** How long a tenant's limit and status are cached. @defaultValue 1000 */
  readonly limitsCacheMs?: number;
  /**
   * Jobs fetched ahead in one query and held by this worker (graphile-worker's local queue).
   * Fewer fetch queries under load; the jobs held wait behind this worker's running ones (other
   * workers count them as running for the per-tenant limits). 0 fetches one job at a time.
   * @defaultValue 0
   */
  readonly prefetch?: number;
  /** Poll interval for jobs that became due (new jobs are announced by NOTIFY). @defaultValue 1000 */
  readonly pollIntervalMs?: number;
  /** Retry delay: `min(maxDelayMs, baseDelayMs * 2^(attempt-1))`, then a random 50-100 % of it. */
  readonly retry?: { readonly baseDelayMs?: number; readonly maxDelayMs?: number };
  /** How often the worker records that it is alive. @defaultValue 5000 */
  readonly heartbeatIntervalMs?: number;
  /** A worker silent this long is dead: its running jobs are released to others. @defaultValue 30000 */
  readonly staleWorkerAfterMs?: number;
  /**
   * On stop, how long running jobs get before their abort signal fires. Jobs still running at
   * twice this plus a second are released back to the queue and `stop()` returns.
   * @defaultValue 10000
   */
  readonly shutdownGraceMs?: number;
  /** How long schedule periods (`scheduled_job_runs`) are kept. @defaultValue 7 days */
  readonly retentionMs?: number;
  /** Schema of Tenantry's objects. @defaultValue 'tenantry' */
  readonly schema?: string;
  readonly roles?: Partial<RoleNames>;
  readonly logger?: Logger;
}

/** What {@link JobWorker.health} reports. */
export interface JobWorkerHealth {
  readonly status: 'starting' | 'running' | 'stopping' | 'stopped';
  readonly workerId: string | undefined;
  readonly concurrency: number;
  readonly running: number;
  readonly runningByTenant: Readonly<Record<string, number>>;
  readonly completed: number;
  readonly retried: number;
  readonly deadLettered: number;
  readonly parked: number;
  readonly lastHeartbeatAt: Date | undefined;
}

/** What one fan-out did. */
export interface FanOutResult {
  readonly schedule: string;
  readonly period: Date;
  readonly tenants: number;
  readonly enqueued: number;
  /** Tenants that already had this period's job. */
  readonly skipped: number;
  readonly failed: number;
}

/** A running job worker. */
export interface JobWorker {
  /** The runner's worker id (graphile-worker's pool id), once started. */
  readonly workerId: string | undefined;
  health(): JobWorkerHealth;
  /** Enqueues a schedule's jobs for `period` now (what the cron trigger does). Idempotent per period. */
  runSchedule(name: string, period: Date): Promise<FanOutResult>;
  /**
   * Stops fetching jobs and waits for the running ones (their abort signal fires after
   * `shutdownGraceMs`; those still running at twice that plus a second go back to the queue),
   * then closes the worker. Heartbeats go on meanwhile, so other workers leave its jobs alone.
   */
  stop(): Promise<void>;
}

const fanOutTask = 'tenantry.fan-out';
const scheduleNamePattern = /^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$/;

/**
 * Starts a worker that runs tenant jobs. Each job runs in `tenantry.withTenant(job's tenant)` on
 * a fresh transaction of the app role's pool (never on the runner's own connection), and the
 * job's row is deleted by that transaction's COMMIT, so a job whose work committed is never run
 * again. Jobs of suspended or deleted tenants are parked, not run. Failures retry
 * with exponential backoff and jitter until `maxAttempts`, then stay dead-lettered with their last
 * error (see `createJobAdmin()` to list and replay them).
 *
 * @example
 * ```ts
 * import { createJobWorker } from 'tenantry/jobs';
 *
 * const worker = await createJobWorker({
 *   tenantry,
 *   connectionString: ownerUrl,
 *   jobs: [welcomeEmail, nightlyDigest],
 *   schedules: [{ name: 'digest', cron: '0 3 * * *', job: nightlyDigest }],
 *   logger,
 * });
 * process.once('SIGTERM', () => worker.stop());
 * ```
 */
export async function createJobWorker<DB>(options: JobWorkerOptions<DB>): Promise<JobWorker> {
  const logger = options.logger ?? silentLogger;
  const schema = parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema');
  const roles = resolveRoleNames(options.roles);
  const concurrency = positiveInteger(options.concurrency ?? 10, 'concurrency', 1000);
  const limits = toLimits(options.tenantConcurrency, Math.max(1, Math.floor(concurrency / 2)));
  const limitsCacheMs = nonNegative(options.limitsCacheMs ?? 1000, 'limitsCacheMs');
  const pollIntervalMs = positiveInteger(options.pollIntervalMs ?? 1000, 'pollIntervalMs');
  const baseDelayMs = positiveInteger(options.retry?.baseDelayMs ?? 1000, 'retry.baseDelayMs');
  const maxDelayMs = positiveInteger(options.retry?.maxDelayMs ?? 3_600_000, 'retry.maxDelayMs');
  const heartbeatIntervalMs = positiveInteger(
    options.heartbeatIntervalMs ?? 5000,
    'heartbeatIntervalMs',
  );
  const staleWorkerAfterMs = positiveInteger(
    options.staleWorkerAfterMs ?? 30_000,
    'staleWorkerAfterMs',
  );
  if (staleWorkerAfterMs <= heartbeatIntervalMs * 2) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'staleWorkerAfterMs must be more than twice heartbeatIntervalMs, or live workers would be taken for dead.',
    );
  }
  const prefetch = nonNegative(options.prefetch ?? 0, 'prefetch');
  const shutdownGraceMs = nonNegative(options.shutdownGraceMs ?? 10_000, 'shutdownGraceMs');
  const retentionMs = positiveInteger(options.retentionMs ?? 7 * 86_400_000, 'retentionMs');
  const tenantry = options.tenantry;
  const t = quoteIdentifier(schema);

  const definitions = new Map<string, JobDefinition<any, DB>>();
  for (const definition of options.jobs) {
    if (definitions.has(definition.name)) {
      throw new TenantryError(
        'TENANTRY_ERR_JOB_INVALID',
        `Two job definitions are named "${definition.name}".`,
      );
    }
    definitions.set(definition.name, definition);
  }
  const schedules = new Map<string, JobSchedule>();
  for (const schedule of options.schedules ?? []) {
    if (
      typeof schedule.name !== 'string' ||
      schedule.name.length > 100 ||
      !scheduleNamePattern.test(schedule.name)
    ) {
      throw new TenantryError(
        'TENANTRY_ERR_JOB_INVALID',
        `A schedule name is lowercase words joined by dots, at most 100 characters; got ${JSON.stringify(schedule.name)}.`,
      );
    }
    if (schedules.has(schedule.name)) {
      throw new TenantryError(
        'TENANTRY_ERR_JOB_INVALID',
        `Two schedules are named "${schedule.name}".`,
      );
    }
    if (!definitions.has(schedule.job.name)) {
      throw new TenantryError(
        'TENANTRY_ERR_JOB_INVALID',
        `Schedule "${schedule.name}" enqueues job "${schedule.job.name}", which is not in this worker's jobs.`,
      );
    }
    schedules.set(schedule.name, schedule);
  }
  let cronItems: ReturnType<typeof parseCronItems>;
  try {
    cronItems = parseCronItems(
      [...schedules.values()].map(
        (schedule): CronItem => ({
          task: fanOutTask,
          match: schedule.cron,
          identifier: `tenantry.schedule.${schedule.name}`,
          payload: { schedule: schedule.name },
          options: { backfillPeriod: 0, maxAttempts: 10 },
        }),
      ),
    );
  } catch (error) {
    throw new TenantryError(
      'TENANTRY_ERR_JOB_INVALID',
      `Invalid cron expression in a schedule: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }

  const pool = createRunnerPool(
    options.connectionString,
    roles.owner,
    Math.min(concurrency + 2, 20),
  );
  const query = async <R extends pg.QueryResultRow>(
    text: string,
    values: unknown[] = [],
  ): Promise<pg.QueryResult<R>> => pool.query<R>(text, values);

  // --- per-tenant limits: exact within this worker, refreshed from the job table across workers.
  const running = new Map<string, number>();
  // Jobs of a tenant this worker holds, running or waiting for a slot: counted from the moment
  // the runner hands a job over, so the next fetch already skips a tenant at its limit.
  const claimed = new Map<string, number>();
  const remoteRunning = new Map<string, number>();
  const released = new EventEmitter();
  released.setMaxListeners(0);
  const limitCache = new Map<string, { value: number; expiresAt: number }>();
  const activeUntil = new Map<string, number>();
  const limitOf = (tenantId: string): number => limitCache.get(tenantId)?.value ?? limits.fallback;
  const refreshLimit = async (tenantId: string): Promise<number> => {
    const cached = limitCache.get(tenantId);
    if (cached !== undefined && cached.expiresAt > Date.now()) return cached.value;
    let value = limits.fallback;
    try {
      value = Math.max(1, Math.floor(await limits.of(tenantId as TenantId)));
    } catch (error) {
      logger.warn(
        { tenantId, error: summarizeError(error) },
        'tenant job limit lookup failed; using the default',
      );
    }
    if (limitCache.size > 10_000) limitCache.clear();
    limitCache.set(tenantId, { value, expiresAt: Date.now() + limitsCacheMs });
    return value;
  };
  // Only "active" is cached: a job resumed right after its tenant was reactivated must not be
  // parked again on a stale "suspended".
  const tenantStatus = async (tenantId: string): Promise<string | undefined> => {
    if ((activeUntil.get(tenantId) ?? 0) > Date.now()) return 'active';
    const result = await query<{ status: string }>(
      `select status from ${t}.tenants where id = $1`,
      [tenantId],
    );
    const value = result.rows[0]?.status;
    if (activeUntil.size > 10_000) activeUntil.clear();
    if (value === 'active') activeUntil.set(tenantId, Date.now() + limitsCacheMs);
    else activeUntil.delete(tenantId);
    return value;
  };
  const forbiddenFlags = (): string[] | null => {
    const flags: string[] = [];
    const tenants = new Set([...claimed.keys(), ...remoteRunning.keys()]);
    for (const tenantId of tenants) {
      const busy = (claimed.get(tenantId) ?? 0) + (remoteRunning.get(tenantId) ?? 0);
      if (busy >= limitOf(tenantId)) flags.push(`tenant:${tenantId}`);
    }
    return flags.length === 0 ? null : flags;
  };
  const acquireSlot = async (tenantId: string): Promise<void> => {
    const limit = await refreshLimit(tenantId);
    // Another worker slot may have fetched a job of this tenant before the flag was set; the
    // limit still holds within this worker because the late job waits here.
    while ((running.get(tenantId) ?? 0) >= limit) {
      await once(released, tenantId);
    }
    running.set(tenantId, (running.get(tenantId) ?? 0) + 1);
  };
  const claim = (tenantId: string): void => {
    claimed.set(tenantId, (claimed.get(tenantId) ?? 0) + 1);
  };
  const unclaim = (tenantId: string): void => {
    const left = (claimed.get(tenantId) ?? 1) - 1;
    if (left <= 0) claimed.delete(tenantId);
    else claimed.set(tenantId, left);
  };
  const releaseSlot = (tenantId: string): void => {
    const left = (running.get(tenantId) ?? 1) - 1;
    if (left <= 0) running.delete(tenantId);
    else running.set(tenantId, left);
    released.emit(tenantId);
  };

  const counters = { completed: 0, retried: 0, deadLettered: 0, parked: 0 };
  let inFlight = 0;
  const settled = new EventEmitter();
  let status: JobWorkerHealth['status'] = 'starting';
  let workerId: string | undefined;
  let lastHeartbeatAt: Date | undefined;

  const settle = async (
    jobId: string,
    lockedBy: string | null,
    assignments: string,
    values: unknown[],
  ): Promise<void> => {
    // Releases the job with our own outcome. graphile-worker's own failure update only touches a
    // job still locked by this worker, so after this it changes nothing.
    await query(
      `update ${runnerSchema}._private_jobs
          set ${assignments}, locked_at = null, locked_by = null, updated_at = now()
        where id = $1 and locked_by = $2`,
      [jobId, lockedBy, ...values],
    );
  };

  const completeSql = `select ${t}.complete_job($1::bigint, $2::text, $3::timestamptz)`;
  const setCommit = (tenantry as unknown as Record<symbol, unknown>)[setCommitStatement];
  // The job row is deleted with the job's COMMIT, in the same round trip. A Tenantry instance
  // from another copy of the package lacks the hook: the statement then runs on its own, last.
  const completeWithCommit = (db: unknown, values: readonly unknown[]): Promise<void> | void => {
    if (typeof setCommit === 'function') {
      setCommit.call(tenantry, completeSql, values);
      return;
    }
    return sql`select ${sql.id(schema, 'complete_job')}(${values[0]}::bigint, ${values[1]}::text, ${values[2]}::timestamptz)`
      .execute(db as Parameters<ReturnType<typeof sql>['execute']>[0])
      .then(() => undefined);
  };

  const runTenantJob = async (
    definition: JobDefinition<any, DB>,
    rawPayload: unknown,
    helpers: JobHelpers,
  ): Promise<void> => {
    const job = helpers.job;
    const jobId = String(job.id);
    const record = rawPayload as { tenantId?: unknown; data?: unknown } | null;
    const tenantId = typeof record?.tenantId === 'string' ? record.tenantId : undefined;
    const baseLog = withFields(logger, {
      jobId,
      task: definition.name,
      attempt: job.attempts,
      tenantId,
    });
    if (tenantId === undefined || !isUuid(tenantId)) {
      counters.deadLettered++;
      baseLog.error({}, 'job has no tenant in its record; dead-lettered');
      await settle(jobId, job.locked_by, 'attempts = max_attempts, last_error = $3', [
        'TENANTRY: the job record names no tenant (was it added without enqueueJob?)',
      ]);
      throw new JobOutcome('dead-lettered');
    }
    claim(tenantId);
    try {
      const tenantState = await tenantStatus(tenantId);
      if (tenantState !== 'active') {
        if (tenantState === 'moving') {
          counters.retried++;
          await settle(
            jobId,
            job.locked_by,
            `attempts = greatest(attempts - 1, 0), run_at = now() + interval '5 seconds', last_error = $3`,
            ['TENANTRY: tenant is moving; retrying shortly'],
          );
          throw new JobOutcome('deferred');
        }
        counters.parked++;
        const reason = `TENANTRY_PARKED: tenant is ${tenantState ?? 'deleted'}`;
        baseLog.warn({ reason }, 'job parked');
        // Re-checked in the update itself: a tenant reactivated (and its parked jobs resumed)
        // since the read above must not find this job parked afterwards.
        await settle(
          jobId,
          job.locked_by,
          `attempts = greatest(attempts - 1, 0), last_error = $3,
           run_at = case when exists (select 1 from ${t}.tenants where id = $4::uuid and status = 'active')
                         then now() else 'infinity' end`,
          [reason, tenantId],
        );
        throw new JobOutcome('parked');
      }
      await acquireSlot(tenantId);
      const started = performance.now();
      const completion = [jobId, job.locked_by, job.locked_at];
      try {
        await tenantry.withTenant(tenantId, async (db) => {
          let payload: unknown;
          try {
            payload = definition.parse(record?.data);
          } catch (error) {
            throw new PayloadRejected(error);
          }
          await definition.run(payload, {
            tenantId: tenantId as TenantId,
            db,
            jobId,
            attempt: job.attempts,
            maxAttempts: job.max_attempts,
            key: typeof job.key === 'string' ? job.key.slice(tenantId.length + 1) : undefined,
            logger: baseLog,
            signal: helpers.abortSignal,
          });
          await completeWithCommit(db, completion);
        });
      } catch (error) {
        if (findHint(error) === 'tenantry:job_not_held') {
          // Released meanwhile (this worker was taken for dead): the job's work rolled back, and
          // whoever holds the job now runs it.
          baseLog.warn({}, 'job no longer held by this worker; its work was rolled back');
          throw new JobOutcome('lost');
        }
        const durationMs = Math.round(performance.now() - started);
        const message = `${error instanceof Error ? error.name : 'Error'}: ${
          error instanceof Error ? error.message : String(error)
        }`.slice(0, 2000);
        if (error instanceof PayloadRejected || job.attempts >= job.max_attempts) {
          counters.deadLettered++;
          baseLog.error(
            { durationMs, error: summarizeError(error) },
            'job failed for good; dead-lettered',
          );
          await settle(jobId, job.locked_by, 'attempts = max_attempts, last_error = $3', [message]);
          throw new JobOutcome('dead-lettered');
        }
        const delayMs = retryDelayMs(job.attempts, { baseDelayMs, maxDelayMs });
        counters.retried++;
        baseLog.warn(
          { durationMs, delayMs, error: summarizeError(error) },
          'job failed; will retry',
        );
        await settle(
          jobId,
          job.locked_by,
          `run_at = now() + $3::integer * interval '1 millisecond', last_error = $4`,
          [delayMs, message],
        );
        throw new JobOutcome('retrying');
      } finally {
        releaseSlot(tenantId);
      }
      counters.completed++;
      baseLog.debug({ durationMs: Math.round(performance.now() - started) }, 'job completed');
    } finally {
      unclaim(tenantId);
    }
  };

  const fanOut = async (name: string, period: Date): Promise<FanOutResult> => {
    const schedule = schedules.get(name);
    if (schedule === undefined) {
      throw new TenantryError('TENANTRY_ERR_JOB_INVALID', `No schedule is named "${name}".`);
    }
    if (!(period instanceof Date) || Number.isNaN(period.getTime())) {
      throw new TenantryError(
        'TENANTRY_ERR_JOB_INVALID',
        'A schedule period must be a valid Date.',
      );
    }
    const result = { schedule: name, period, tenants: 0, enqueued: 0, skipped: 0, failed: 0 };
    const log = withFields(logger, { schedule: name, period: period.toISOString() });
    let after = '00000000-0000-0000-0000-000000000000';
    for (;;) {
      const page = await query<{ id: string }>(
        `select id::text from ${t}.tenants where status = 'active' and id > $1 order by id limit 500`,
        [after],
      );
      if (page.rows.length === 0) break;
      after = page.rows[page.rows.length - 1]?.id ?? after;
      const ids = page.rows.map((row) => row.id);
      let next = 0;
      const lane = async (): Promise<void> => {
        while (next < ids.length) {
          const tenantId = ids[next++] as TenantId;
          result.tenants++;
          try {
            const enqueued = await tenantry.withTenant(tenantId, async (db) => {
              const claimed = await sql`
                insert into ${sql.id(schema, 'scheduled_job_runs')} (schedule, period)
                values (${name}, ${period.toISOString()}::timestamptz)
                on conflict do nothing returning schedule`.execute(db);
              if (claimed.rows.length === 0) return false;
              const payload = schedule.payload?.({ tenantId, period }) ?? {
                period: period.toISOString(),
              };
              const jobId = await enqueueJob(db, schedule.job, payload, {
                key: `schedule:${name}:${period.toISOString()}`,
                schema,
              });
              await sql`
                update ${sql.id(schema, 'scheduled_job_runs')} set job_id = ${jobId}::bigint
                 where schedule = ${name} and period = ${period.toISOString()}::timestamptz`.execute(
                db,
              );
              return true;
            });
            if (enqueued) result.enqueued++;
            else result.skipped++;
          } catch (error) {
            result.failed++;
            log.error({ tenantId, error: summarizeError(error) }, 'fan-out failed for a tenant');
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(4, ids.length) }, lane));
    }
    log.info({ ...result, period: period.toISOString() }, 'schedule fanned out');
    return Object.freeze(result);
  };

  const tracked =
    (task: Task): Task =>
    async (payload, helpers) => {
      inFlight++;
      try {
        await task(payload, helpers);
      } finally {
        if (--inFlight === 0) settled.emit('idle');
      }
    };
  const taskList: TaskList = {};
  for (const definition of definitions.values()) {
    taskList[definition.name] = tracked((payload, helpers) =>
      runTenantJob(definition, payload, helpers),
    );
  }
  taskList[fanOutTask] = tracked(async (payload) => {
    const record = payload as { schedule?: unknown; _cron?: { ts?: unknown } };
    if (typeof record.schedule !== 'string' || typeof record._cron?.ts !== 'string') {
      throw new Error('fan-out job without a schedule and period');
    }
    const outcome = await fanOut(record.schedule, new Date(record._cron.ts));
    if (outcome.failed > 0) {
      throw new Error(
        `fan-out of "${record.schedule}" failed for ${outcome.failed} tenants; retrying them`,
      );
    }
  });

  const events = new EventEmitter();
  let workerPool: Pick<WorkerPool, 'id' | 'forcefulShutdown'> | undefined;
  events.on('pool:create', (event: { workerPool: WorkerPool }) => {
    workerPool = event.workerPool;
    workerId = event.workerPool.id;
  });
  let runner: Runner;
  try {
    runner = await run({
      pgPool: pool,
      schema: runnerSchema,
      concurrency,
      pollInterval: pollIntervalMs,
      noHandleSignals: true,
      taskList,
      parsedCronItems: cronItems,
      forbiddenFlags,
      events: events as never,
      logger: toRunnerLogger(logger),
      gracefulShutdownAbortTimeout: shutdownGraceMs,
      preset: {
        worker: {
          // A job's row is deleted by its own COMMIT, so graphile-worker's completion is only
          // cleanup (and its failure update is skipped by a trigger): batching them costs no
          // safety and saves a round trip per job.
          completeJobBatchDelay: 0,
          failJobBatchDelay: 0,
          ...(prefetch > 0 ? { localQueue: { size: prefetch } } : {}),
        },
      },
    });
  } catch (error) {
    await pool.end().catch(() => undefined);
    throw error;
  }
  if (workerId === undefined) {
    await runner.stop().catch(() => undefined);
    await pool.end().catch(() => undefined);
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'The job runner did not report its worker id.',
    );
  }
  const id = workerId;

  const heartbeat = async (): Promise<void> => {
    try {
      await query(
        `insert into ${t}.job_workers (worker_id, host, pid) values ($1, $2, $3)
         on conflict (worker_id) do update set last_seen_at = now()`,
        [id, hostname(), process.pid],
      );
      lastHeartbeatAt = new Date();
      // Dead workers: silent too long, or holding locks older than that without ever having
      // recorded a heartbeat (killed between fetching a job and their first heartbeat).
      const swept = await query<{ worker_id: string }>(
        `with stale as (
           delete from ${t}.job_workers
            where last_seen_at < now() - $1::integer * interval '1 millisecond' and worker_id <> $2
           returning worker_id),
         unregistered as (
           select distinct j.locked_by as worker_id from ${runnerSchema}._private_jobs j
            where j.locked_by is not null and j.locked_by <> $2
              and j.locked_at < now() - $1::integer * interval '1 millisecond'
              and not exists (select 1 from ${t}.job_workers w where w.worker_id = j.locked_by)),
         dead as (select worker_id from stale union select worker_id from unregistered)
         select worker_id from dead, lateral (
           select ${runnerSchema}.force_unlock_workers(array[dead.worker_id])) unlocked`,
        [staleWorkerAfterMs, id],
      );
      if (swept.rows.length > 0) {
        logger.warn(
          { workers: swept.rows.map((row) => row.worker_id) },
          'released the jobs of dead workers',
        );
      }
      const busy = await query<{ tenant_id: string; jobs: number }>(
        `select payload ->> 'tenantId' as tenant_id, count(*)::integer as jobs
           from ${runnerSchema}._private_jobs
          where locked_by is not null and locked_by <> $1 and payload ->> 'tenantId' is not null
          group by 1`,
        [id],
      );
      remoteRunning.clear();
      for (const row of busy.rows) remoteRunning.set(row.tenant_id, row.jobs);
    } catch (error) {
      logger.warn({ error: summarizeError(error) }, 'job worker heartbeat failed');
    }
  };
  const maintenance = async (): Promise<void> => {
    try {
      await query(
        `delete from ${t}.scheduled_job_runs where period < now() - $1::bigint * interval '1 millisecond'`,
        [retentionMs],
      );
    } catch (error) {
      logger.warn({ error: summarizeError(error) }, 'job maintenance failed');
    }
  };
  let beating: Promise<void> | undefined;
  const beat = (): void => {
    beating ??= heartbeat().finally(() => {
      beating = undefined;
    });
  };
  await heartbeat();
  const heartbeatTimer = setInterval(beat, heartbeatIntervalMs);
  heartbeatTimer.unref();
  const limitsTimer = setInterval(
    () => {
      for (const tenantId of running.keys()) void refreshLimit(tenantId);
    },
    Math.max(limitsCacheMs, 250),
  );
  limitsTimer.unref();
  const maintenanceTimer = setInterval(maintenance, 600_000);
  maintenanceTimer.unref();
  status = 'running';
  logger.info(
    { workerId: id, concurrency, jobs: [...definitions.keys()], schedules: [...schedules.keys()] },
    'job worker started',
  );

  let stopping: Promise<void> | undefined;
  return Object.freeze({
    get workerId() {
      return id;
    },
    health: (): JobWorkerHealth =>
      Object.freeze({
        status,
        workerId: id,
        concurrency,
        running: [...running.values()].reduce((sum, n) => sum + n, 0),
        runningByTenant: Object.freeze(Object.fromEntries(running)),
        ...counters,
        lastHeartbeatAt,
      }),
    runSchedule: fanOut,
    stop(): Promise<void> {
      stopping ??= (async () => {
        status = 'stopping';
        clearInterval(limitsTimer);
        clearInterval(maintenanceTimer);
        logger.info({ workerId: id }, 'job worker stopping');
        const graceful = runner.stop('stop requested');
        // runner.kill() does nothing once stop() has begun, so a handler that ignores its abort
        // signal would hold stop() forever: past the deadline its job is released to the queue.
        const deadline = setTimeout(
          () => {
            logger.warn(
              { workerId: id, running: inFlight },
              'jobs outlived the shutdown grace period; releasing them',
            );
            void Promise.resolve(workerPool?.forcefulShutdown('shutdown grace period over')).catch(
              () => undefined,
            );
          },
          shutdownGraceMs * 2 + 1000,
        );
        try {
          await graceful;
        } catch (error) {
          logger.warn({ error: summarizeError(error) }, 'job runner stopped with an error');
        } finally {
          clearTimeout(deadline);
        }
        // Heartbeats go on while running jobs finish, or another worker would take this one for
        // dead and run its jobs a second time; one still in flight would record it again after
        // the delete.
        clearInterval(heartbeatTimer);
        await beating;
        await query(`delete from ${t}.job_workers where worker_id = $1`, [id]).catch(
          () => undefined,
        );
        // A released job whose handler still runs settles its row through this pool when it ends,
        // and the runner reports the outcome right after, in the same turn of the event loop.
        if (inFlight > 0) {
          void once(settled, 'idle')
            .then(() => new Promise((resolve) => setImmediate(resolve)))
            .then(() => pool.end())
            .catch(() => undefined);
        } else {
          await pool.end().catch(() => undefined);
        }
        status = 'stopped';
        logger.info({ workerId: id, ...counters }, 'job worker stopped');
      })();
      return stopping;
    },
  });
}

class PayloadRejected extends Error {
  override readonly name = 'PayloadRejected';
  constructor(cause: unknown) {
    super(
      `the job payload was rejected by the definition's parse(): ${cause instanceof Error ? cause.message : String(cause)}`,
      { cause },
    );
  }
}

function toLimits(
  value: number | TenantJobLimits | undefined,
  fallback: number,
): { fallback: number; of: (tenantId: TenantId) => number | Promise<number> } {
  if (value === undefined) return { fallback, of: () => fallback };
  if (typeof value === 'number') {
    const limit = positiveInteger(value, 'tenantConcurrency', 1000);
    return { fallback: limit, of: () => limit };
  }
  if (typeof value?.concurrentJobs !== 'function') {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'tenantConcurrency must be a number or an object with concurrentJobs(tenantId).',
    );
  }
  return { fallback, of: (tenantId) => value.concurrentJobs(tenantId) };
}

function positiveInteger(value: unknown, name: string, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > max) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `${name} must be an integer from 1 to ${max}, got ${JSON.stringify(value)}.`,
    );
  }
  return value;
}

function nonNegative(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `${name} must be a non-negative integer, got ${JSON.stringify(value)}.`,
    );
  }
  return value;
}
