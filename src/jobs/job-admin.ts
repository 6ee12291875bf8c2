import { type RoleNames, resolveRoleNames } from '../config.ts';
import { TenantryError } from '../errors.ts';
import { parseTenantId, type TenantId } from '../tenant-id.ts';
import { createRunnerPool, runnerSchema } from './runner-support.ts';

/** Where a job is in its life. */
export type JobState = 'waiting' | 'running' | 'dead' | 'parked';

/** A job as operators see it. */
export interface JobInfo {
  readonly id: string;
  readonly task: string;
  /** `undefined` for Tenantry's own platform jobs (schedule triggers). */
  readonly tenantId: TenantId | undefined;
  readonly state: JobState;
  readonly attempts: number;
  readonly maxAttempts: number;
  readonly runAt: Date | undefined;
  readonly lastError: string | undefined;
  /** The key as enqueued (without the tenant prefix). */
  readonly key: string | undefined;
  readonly createdAt: Date;
}

/** Filters of {@link JobAdmin.listJobs}. */
export interface ListJobsOptions {
  readonly tenantId?: string;
  readonly state?: JobState;
  readonly task?: string;
  /** @defaultValue 100 (at most 1000) */
  readonly limit?: number;
  /** Ids below this one (for paging, newest first). */
  readonly beforeId?: string;
}

/** Operator access to the job queue (owner role): dead letters, replay, parked jobs. */
export interface JobAdmin {
  listJobs(options?: ListJobsOptions): Promise<JobInfo[]>;
  /** Job counts per state, optionally for one tenant. */
  countJobs(tenantId?: string): Promise<Readonly<Record<JobState, number>>>;
  /**
   * Runs dead-lettered jobs again from attempt 1, with their original payload and tenant.
   * Throws `TENANTRY_ERR_JOB_NOT_FOUND` naming ids that are not dead-lettered.
   */
  replayJobs(ids: readonly string[]): Promise<string[]>;
  /** Makes a tenant's parked jobs runnable again (after the tenant is resumed). */
  resumeParkedJobs(tenantId: string): Promise<number>;
  /** Deletes every job of a tenant that is not running (tenant erasure). */
  removeTenantJobs(tenantId: string): Promise<number>;
  close(): Promise<void>;
}

const stateExpression = `case
  when j.locked_at is not null then 'running'
  when j.run_at = 'infinity' then 'parked'
  when j.attempts >= j.max_attempts then 'dead'
  else 'waiting' end`;

/**
 * Opens operator access to the job queue. It connects as the owner role (a superuser URL acts
 * as the owner), never as the app role: tenants cannot see or replay jobs through it.
 *
 * @example
 * ```ts
 * import { createJobAdmin } from 'tenantry/jobs';
 * const admin = createJobAdmin({ connectionString: ownerUrl });
 * const dead = await admin.listJobs({ state: 'dead' });
 * await admin.replayJobs(dead.map((job) => job.id));
 * await admin.close();
 * ```
 */
export function createJobAdmin(options: {
  readonly connectionString: string;
  readonly roles?: Partial<RoleNames>;
}): JobAdmin {
  const roles = resolveRoleNames(options.roles);
  const pool = createRunnerPool(options.connectionString, roles.owner, 2);
  const select = `
    select j.id::text, t.identifier as task, j.payload ->> 'tenantId' as tenant_id,
           ${stateExpression} as state, j.attempts, j.max_attempts, j.run_at, j.last_error,
           j.key, j.created_at
      from ${runnerSchema}._private_jobs j
      join ${runnerSchema}._private_tasks t on t.id = j.task_id`;
  const toInfo = (row: Record<string, any>): JobInfo => {
    const tenantId = typeof row.tenant_id === 'string' ? (row.tenant_id as TenantId) : undefined;
    const runAt =
      row.run_at instanceof Date && Number.isFinite(row.run_at.getTime()) ? row.run_at : undefined;
    return Object.freeze({
      id: row.id,
      task: row.task,
      tenantId,
      state: row.state,
      attempts: row.attempts,
      maxAttempts: row.max_attempts,
      runAt,
      lastError: row.last_error ?? undefined,
      key:
        typeof row.key === 'string' && tenantId !== undefined && row.key.startsWith(`${tenantId}/`)
          ? row.key.slice(tenantId.length + 1)
          : (row.key ?? undefined),
      createdAt: row.created_at,
    });
  };
  return Object.freeze({
    async listJobs(filter: ListJobsOptions = {}) {
      const limit = filter.limit ?? 100;
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) {
        throw new TenantryError(
          'TENANTRY_ERR_JOB_INVALID',
          'limit must be an integer from 1 to 1000.',
        );
      }
      const states = ['waiting', 'running', 'dead', 'parked'];
      if (filter.state !== undefined && !states.includes(filter.state)) {
        throw new TenantryError(
          'TENANTRY_ERR_JOB_INVALID',
          `state must be one of ${states.join(', ')}, got ${JSON.stringify(filter.state)}.`,
        );
      }
      const tenantId = filter.tenantId === undefined ? null : parseTenantId(filter.tenantId);
      const beforeId = filter.beforeId === undefined ? null : parseJobId(filter.beforeId);
      const result = await pool.query(
        `select * from (${select}
          where ($1::text is null or j.payload ->> 'tenantId' = $1)
            and ($2::text is null or t.identifier = $2)
            and ($3::bigint is null or j.id < $3)) listed
         where $4::text is null or state = $4
         order by id::bigint desc limit $5`,
        [tenantId, filter.task ?? null, beforeId, filter.state ?? null, limit],
      );
      return result.rows.map(toInfo);
    },
    async countJobs(tenantId?: string) {
      const tenant = tenantId === undefined ? null : parseTenantId(tenantId);
      const result = await pool.query<{ state: JobState; jobs: number }>(
        `select ${stateExpression} as state, count(*)::integer as jobs
           from ${runnerSchema}._private_jobs j
          where $1::text is null or j.payload ->> 'tenantId' = $1
          group by 1`,
        [tenant],
      );
      const counts: Record<JobState, number> = { waiting: 0, running: 0, dead: 0, parked: 0 };
      for (const row of result.rows) counts[row.state] = row.jobs;
      return Object.freeze(counts);
    },
    async replayJobs(ids: readonly string[]) {
      const parsed = ids.map(parseJobId);
      const result = await pool.query<{ id: string }>(
        `update ${runnerSchema}._private_jobs
            set attempts = 0, run_at = now(), updated_at = now()
          where id = any($1::bigint[]) and locked_at is null and run_at < 'infinity'
            and attempts >= max_attempts
          returning id::text`,
        [parsed],
      );
      const replayed = result.rows.map((row) => row.id);
      const missing = parsed.filter((id) => !replayed.includes(id));
      if (missing.length > 0) {
        throw new TenantryError(
          'TENANTRY_ERR_JOB_NOT_FOUND',
          `Not dead-lettered (or not found): ${missing.join(', ')}. ${replayed.length} other jobs were replayed.`,
          { details: { missing, replayed } },
        );
      }
      await pool.query(`select pg_notify('jobs:insert', '{"r":0,"count":1}')`);
      return replayed;
    },
    async resumeParkedJobs(tenantId: string) {
      const tenant = parseTenantId(tenantId);
      const result = await pool.query(
        `update ${runnerSchema}._private_jobs
            set run_at = now(), updated_at = now()
          where payload ->> 'tenantId' = $1 and run_at = 'infinity' and locked_at is null`,
        [tenant],
      );
      await pool.query(`select pg_notify('jobs:insert', '{"r":0,"count":1}')`);
      return result.rowCount ?? 0;
    },
    async removeTenantJobs(tenantId: string) {
      const tenant = parseTenantId(tenantId);
      const result = await pool.query(
        `delete from ${runnerSchema}._private_jobs where payload ->> 'tenantId' = $1 and locked_at is null`,
        [tenant],
      );
      return result.rowCount ?? 0;
    },
    close: () => pool.end(),
  });
}

function parseJobId(id: unknown): string {
  if (typeof id !== 'string' || !/^[1-9][0-9]{0,18}$/.test(id)) {
    throw new TenantryError(
      'TENANTRY_ERR_JOB_INVALID',
      `A job id is a positive integer, got ${JSON.stringify(id)}.`,
    );
  }
  return id;
}
