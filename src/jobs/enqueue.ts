import { type Kysely, sql } from 'kysely';
import { defaultTenantrySchema, parseIdentifier } from '../config.ts';
import { TenantryError } from '../errors.ts';
import { type JobDefinition, parseMaxAttempts } from './define-job.ts';

/** Options of {@link enqueueJob}. */
export interface EnqueueOptions {
  /**
   * Idempotency key, scoped to the tenant (two tenants may use the same key). With the default
   * `keyMode`, enqueueing a key that a queued, running or dead-lettered job already has does
   * nothing and returns that job's id.
   */
  readonly key?: string;
  /**
   * `dedupe`: keep the existing job. `replace`: a waiting job with the key takes the new payload
   * and run time (debounce). `preserve-run-at`: like replace but keeps the run time.
   * @defaultValue 'dedupe'
   */
  readonly keyMode?: 'dedupe' | 'replace' | 'preserve-run-at';
  /** Earliest time to run. @defaultValue now */
  readonly runAt?: Date;
  /** Overrides the definition's attempt count. */
  readonly maxAttempts?: number;
  /** Schema of Tenantry's objects. @defaultValue 'tenantry' */
  readonly schema?: string;
}

const keyModes = {
  dedupe: 'unsafe_dedupe',
  replace: 'replace',
  'preserve-run-at': 'preserve_run_at',
};

/**
 * Enqueues a tenant job in the caller's transaction. The tenant is the one of `db`'s unit of
 * work, read by the database from the transaction's context and written into the job record; the
 * job exists if and only if that transaction commits. Outside a tenant context it throws
 * `TENANTRY_ERR_CONTEXT_MISSING`.
 *
 * @example
 * ```ts
 * import { enqueueJob } from 'tenantry/jobs';
 *
 * await tenantry.withTenant(tenantId, async (db) => {
 *   const contact = await db.insertInto('contacts').values({ name }).returning('id').executeTakeFirstOrThrow();
 *   await enqueueJob(db, welcomeEmail, { contactId: contact.id }, { key: `welcome:${contact.id}` });
 * });
 * ```
 */
export async function enqueueJob<Payload>(
  db: Kysely<any>,
  definition: JobDefinition<Payload, any>,
  payload: Payload,
  options: EnqueueOptions = {},
): Promise<string> {
  const schema = parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema');
  const data = serializePayload(definition.name, payload);
  const keyMode = keyModes[options.keyMode ?? 'dedupe'];
  if (keyMode === undefined) {
    throw new TenantryError(
      'TENANTRY_ERR_JOB_INVALID',
      `keyMode must be "dedupe", "replace" or "preserve-run-at", got ${JSON.stringify(options.keyMode)}.`,
    );
  }
  const key = options.key === undefined ? null : parseJobKey(options.key);
  const runAt = parseRunAt(options.runAt);
  const maxAttempts = parseMaxAttempts(options.maxAttempts ?? definition.maxAttempts);
  try {
    const result = await sql<{ id: string }>`select ${sql.id(schema, 'enqueue_job')}(
        ${definition.name}, ${data}::jsonb, ${runAt}::timestamptz, ${maxAttempts}::integer,
        ${key}::text, ${keyMode}::text)::text as id`.execute(db);
    const id = result.rows[0]?.id;
    if (id === undefined) throw new Error('enqueue_job returned no row');
    return id;
  } catch (error) {
    throw toEnqueueError(error);
  }
}

/**
 * Enqueues many jobs of one definition for the current tenant in one statement (at most 10,000).
 * Returns the job ids in payload order.
 *
 * @example
 * ```ts
 * import { enqueueJobs } from 'tenantry/jobs';
 * await enqueueJobs(db, sendBatch, batches.map((contactIds) => ({ broadcastId, contactIds })));
 * ```
 */
export async function enqueueJobs<Payload>(
  db: Kysely<any>,
  definition: JobDefinition<Payload, any>,
  payloads: readonly Payload[],
  options: Pick<EnqueueOptions, 'runAt' | 'maxAttempts' | 'schema'> = {},
): Promise<string[]> {
  const schema = parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema');
  if (!Array.isArray(payloads) || payloads.length > 10_000) {
    throw new TenantryError(
      'TENANTRY_ERR_JOB_INVALID',
      'enqueueJobs() takes an array of at most 10,000 payloads.',
    );
  }
  if (payloads.length === 0) return [];
  const data = payloads.map((payload) => serializePayload(definition.name, payload));
  const runAt = parseRunAt(options.runAt);
  const maxAttempts = parseMaxAttempts(options.maxAttempts ?? definition.maxAttempts);
  try {
    const result = await sql<{ ids: string[] }>`select ${sql.id(schema, 'enqueue_jobs')}(
        ${definition.name}, ${data}::jsonb[], ${runAt}::timestamptz, ${maxAttempts}::integer
      )::text[] as ids`.execute(db);
    return result.rows[0]?.ids ?? [];
  } catch (error) {
    throw toEnqueueError(error);
  }
}

function serializePayload(task: string, payload: unknown): string {
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
    throw new TenantryError(
      'TENANTRY_ERR_JOB_INVALID',
      `The payload of job "${task}" must be a JSON object.`,
    );
  }
  try {
    return JSON.stringify(payload);
  } catch (error) {
    throw new TenantryError(
      'TENANTRY_ERR_JOB_INVALID',
      `The payload of job "${task}" cannot be serialized as JSON.`,
      { cause: error },
    );
  }
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it rejects
const controlCharacter = /[\u0000-\u001f\u007f]/;

function parseJobKey(key: unknown): string {
  if (
    typeof key !== 'string' ||
    key.length === 0 ||
    key.length > 200 ||
    controlCharacter.test(key)
  ) {
    throw new TenantryError(
      'TENANTRY_ERR_JOB_INVALID',
      'A job key is a string of 1 to 200 printable characters.',
    );
  }
  return key;
}

function parseRunAt(runAt: unknown): string | null {
  if (runAt === undefined) return null;
  if (!(runAt instanceof Date) || Number.isNaN(runAt.getTime())) {
    throw new TenantryError('TENANTRY_ERR_JOB_INVALID', 'runAt must be a valid Date.');
  }
  return runAt.toISOString();
}

function toEnqueueError(error: unknown): unknown {
  const hint = findHint(error);
  if (hint === 'tenantry:context_missing') {
    return new TenantryError(
      'TENANTRY_ERR_CONTEXT_MISSING',
      'A tenant job can only be enqueued inside a tenant unit of work (withTenant, a request, or a job).',
      { cause: error },
    );
  }
  if (hint?.startsWith('tenantry:job_')) {
    return new TenantryError('TENANTRY_ERR_JOB_INVALID', 'The job was refused by the database.', {
      cause: error,
    });
  }
  if (sqlStateOf(error) === '42883') {
    // The unit runs in a database without the job queue: a tenant placed in a dedicated database.
    return new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      "This unit of work runs in a database without Tenantry's job queue (a tenant placed in a dedicated database): jobs of such tenants are not supported; place the tenant in the pool or a schema.",
      { cause: error },
    );
  }
  return error;
}

function sqlStateOf(error: unknown): string | undefined {
  for (let current = error, depth = 0; current !== undefined && depth < 5; depth++) {
    if (typeof current !== 'object' || current === null) return undefined;
    const code = (current as { code?: unknown; details?: { sqlState?: unknown } }).details
      ?.sqlState;
    if (typeof code === 'string') return code;
    const own = (current as { code?: unknown }).code;
    if (typeof own === 'string' && /^[0-9A-Z]{5}$/.test(own)) return own;
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}

/** The `hint` of the database error behind `error`, if any (Tenantry's own refusals set one). */
export function findHint(error: unknown): string | undefined {
  for (let current = error, depth = 0; current !== undefined && depth < 5; depth++) {
    if (typeof current !== 'object' || current === null) return undefined;
    const hint = (current as { hint?: unknown }).hint;
    if (typeof hint === 'string') return hint;
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}
