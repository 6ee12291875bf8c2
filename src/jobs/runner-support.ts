import { Logger as GraphileLogger } from 'graphile-worker';
import pg from 'pg';
import { parseIdentifier } from '../config.ts';
import { type Logger, summarizeError } from '../logger.ts';

/** The schema graphile-worker's tables live in. */
export const runnerSchema = 'graphile_worker';

/**
 * A pool for the job runner's own bookkeeping: every connection acts as the owner role (a
 * superuser URL is narrowed to it), so the runner's objects are owned by the owner and nothing on
 * this pool runs with more rights than the owner. Tenant work never runs on it.
 */
export function createRunnerPool(
  connectionString: string,
  ownerRole: string,
  max: number,
): pg.Pool {
  const pool = new pg.Pool({
    connectionString,
    max,
    options: `-c role=${parseIdentifier(ownerRole, 'roles.owner')}`,
  });
  // A dropped idle connection must not crash the process; the pool replaces it.
  pool.on('error', () => {});
  pool.on('connect', (client) => {
    client.on('error', () => {});
  });
  return pool;
}

/**
 * The failure message of a job the worker already settled; a trigger on the job table
 * (sql/jobs/000001-jobs.sql) skips the runner's own failure update carrying it.
 */
export const settledJobMessage = 'TENANTRY_JOB_SETTLED';

/**
 * How a tenant job hands its outcome back to the runner after settling the job row itself
 * (retry scheduled, dead-lettered, parked): not a failure of the runner's.
 */
export class JobOutcome extends Error {
  override readonly name = 'JobOutcome';
  /** What the worker did with the job, for the logs. */
  readonly outcome: string;

  constructor(outcome: string) {
    super(settledJobMessage);
    this.outcome = outcome;
  }
}

/**
 * Routes graphile-worker's log lines to an injected logger (debug and info stay at debug). The
 * job row it attaches is reduced to its id and task, so payloads (tenant data) never reach the
 * logs; the runner's "failed task" line for a {@link JobOutcome} is debug, Tenantry logs those.
 */
export function toRunnerLogger(logger: Logger): GraphileLogger {
  return new GraphileLogger((scope) => (level, message, meta) => {
    const { job, error, ...rest } = (meta ?? {}) as { job?: unknown; error?: unknown };
    const fields: Record<string, unknown> = { runner: 'graphile-worker', ...scope, ...rest };
    if (typeof job === 'object' && job !== null) {
      const row = job as { id?: unknown; task_identifier?: unknown };
      fields.jobId = String(row.id);
      fields.task = row.task_identifier;
    }
    if (error instanceof JobOutcome) {
      logger.debug({ ...fields, outcome: error.outcome }, message);
      return;
    }
    if (error !== undefined) fields.error = summarizeError(error);
    if (level === 'error') logger.error(fields, message);
    else if (level === 'warning') logger.warn(fields, message);
    else logger.debug(fields, message);
  });
}

/** A logger that adds `fields` to every line. */
export function withFields(logger: Logger, fields: object): Logger {
  return {
    debug: (object, message) => logger.debug({ ...fields, ...object }, message),
    info: (object, message) => logger.info({ ...fields, ...object }, message),
    warn: (object, message) => logger.warn({ ...fields, ...object }, message),
    error: (object, message) => logger.error({ ...fields, ...object }, message),
  };
}
