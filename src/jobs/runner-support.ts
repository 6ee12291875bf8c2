import { Logger as GraphileLogger } from 'graphile-worker';
import pg from 'pg';
import { parseIdentifier } from '../config.ts';
import type { Logger } from '../logger.ts';

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

/** Routes graphile-worker's log lines to an injected logger (debug and info stay at debug). */
export function toRunnerLogger(logger: Logger): GraphileLogger {
  return new GraphileLogger((scope) => (level, message, meta) => {
    const fields = { runner: 'graphile-worker', ...scope, ...(meta ?? {}) };
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
