import type { Kysely } from 'kysely';
import { TenantryError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import type { TenantId } from '../tenant-id.ts';

/** What a job handler receives besides its payload. */
export interface JobContext<DB = any> {
  /** The tenant the job was enqueued for, read from the job record (never from the payload). */
  readonly tenantId: TenantId;
  /** The guarded database of the job's own transaction, in the job's tenant context. */
  readonly db: Kysely<DB>;
  /** The job row's id; stable across retries and replays. */
  readonly jobId: string;
  /** This attempt's number, from 1. */
  readonly attempt: number;
  readonly maxAttempts: number;
  /** The key the job was enqueued with (without the tenant prefix), if any. */
  readonly key: string | undefined;
  /** A child logger carrying `tenantId`, `jobId`, `task` and `attempt`. */
  readonly logger: Logger;
  /** Aborts when the worker is shutting down and the grace period is over. */
  readonly signal: AbortSignal;
}

/** Options of {@link defineJob}. */
export interface JobDefinitionOptions<Payload, DB = any> {
  /**
   * Turns the stored payload (JSON, untrusted: it may come from an older release) into the
   * handler's type, or throws. A throw is a permanent failure: the job is dead-lettered at once.
   * @defaultValue the payload as stored
   */
  readonly parse?: (data: unknown) => Payload;
  /** The work, run inside the job's tenant transaction; a throw retries the job. */
  readonly run: (payload: Payload, context: JobContext<DB>) => Promise<void>;
  /** Attempts before the job is dead-lettered. @defaultValue 10 */
  readonly maxAttempts?: number;
}

/** A typed tenant job: a task name, how to parse its payload and the handler. */
export interface JobDefinition<Payload = unknown, DB = any> {
  readonly name: string;
  readonly maxAttempts: number;
  readonly parse: (data: unknown) => Payload;
  readonly run: (payload: Payload, context: JobContext<DB>) => Promise<void>;
}

const taskNamePattern = /^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*$/;

/** Validates a task name (lowercase words joined by dots, at most 100 characters). */
export function parseTaskName(name: unknown): string {
  if (typeof name !== 'string' || name.length > 100 || !taskNamePattern.test(name)) {
    throw new TenantryError(
      'TENANTRY_ERR_JOB_INVALID',
      `A job name is lowercase words joined by dots (e.g. "broadcast.send"), at most 100 characters; got ${JSON.stringify(name)}.`,
    );
  }
  if (name.startsWith('tenantry.')) {
    throw new TenantryError(
      'TENANTRY_ERR_JOB_INVALID',
      `Job names starting with "tenantry." are reserved for Tenantry's own tasks; got "${name}".`,
    );
  }
  return name;
}

/** Validates an attempt count (an integer from 1 to 100). */
export function parseMaxAttempts(value: unknown, what = 'maxAttempts'): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 100) {
    throw new TenantryError(
      'TENANTRY_ERR_JOB_INVALID',
      `${what} must be an integer from 1 to 100, got ${JSON.stringify(value)}.`,
    );
  }
  return value;
}

/**
 * Defines a tenant job. The definition is both what `enqueueJob()` takes (so the payload is
 * typed at the call site) and what a worker runs.
 *
 * @example
 * ```ts
 * import { defineJob } from 'tenantry/jobs';
 *
 * export const welcomeEmail = defineJob('contacts.welcome', {
 *   parse: (data) => data as { contactId: string },
 *   async run({ contactId }, { db, logger }) {
 *     const contact = await db.selectFrom('contacts').selectAll().where('id', '=', contactId).executeTakeFirst();
 *     if (contact === undefined) return; // deleted meanwhile, or another tenant's id: nothing to do
 *     logger.info({ contactId }, 'welcome email sent');
 *   },
 * });
 * ```
 */
export function defineJob<Payload, DB = any>(
  name: string,
  options: JobDefinitionOptions<Payload, DB>,
): JobDefinition<Payload, DB> {
  if (typeof options?.run !== 'function') {
    throw new TenantryError('TENANTRY_ERR_JOB_INVALID', `Job "${name}" needs a run() function.`);
  }
  return Object.freeze({
    name: parseTaskName(name),
    maxAttempts: parseMaxAttempts(options.maxAttempts ?? 10),
    parse: options.parse ?? ((data: unknown) => data as Payload),
    run: options.run,
  });
}
