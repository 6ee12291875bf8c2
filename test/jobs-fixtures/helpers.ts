import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import type { Logger, Tenantry } from 'tenantry';
import { createJobWorker, type JobWorker, type JobWorkerOptions } from 'tenantry/jobs';
import type { ReferenceDatabase } from '../fixtures.ts';

/** A superuser pool on one test database, for setting up and inspecting what the app role cannot. */
export interface AdminPool {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    text: string,
    values?: unknown[],
  ): Promise<R[]>;
  close(): Promise<void>;
}

export function createAdminPool(adminUrl: string): AdminPool {
  const pool = new pg.Pool({ connectionString: adminUrl, max: 3 });
  pool.on('error', () => {});
  return {
    async query<R extends pg.QueryResultRow>(text: string, values: unknown[] = []) {
      return (await pool.query<R>(text, values)).rows;
    },
    close: () => pool.end(),
  };
}

/** Inserts a tenant into the catalog as the superuser and returns its id. */
export async function createTenant(
  admin: AdminPool,
  slug: string,
  status: 'active' | 'suspended' = 'active',
): Promise<string> {
  const id = randomUUID();
  await admin.query(
    'insert into tenantry.tenants (id, slug, name, status) values ($1, $2, $2, $3)',
    [id, `${slug}-${id.slice(0, 8)}`, status],
  );
  return id;
}

/** Polls `condition` until it returns a value other than `undefined` / `false`, or fails at the deadline. */
export async function waitFor<T>(
  description: string,
  condition: () => T | Promise<T>,
  timeoutMs = 20_000,
): Promise<Exclude<T, false | undefined>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value !== undefined && value !== false) return value as Exclude<T, false | undefined>;
    if (Date.now() > deadline) throw new Error(`Timed out waiting for: ${description}`);
    await delay(10);
  }
}

/**
 * A promise with its resolve function, for handlers that block until the test releases them;
 * `opened` tells a test polling with a deadline whether it was opened.
 */
export function gate(): { promise: Promise<void>; open: () => void; readonly opened: boolean } {
  let resolve: () => void = () => {};
  let opened = false;
  const promise = new Promise<void>((done) => {
    resolve = done;
  });
  return {
    promise,
    open: () => {
      opened = true;
      resolve();
    },
    get opened() {
      return opened;
    },
  };
}

/** A logger that keeps every line, for tests that wait on what a worker reported. */
export function recordingLogger(): {
  logger: Logger;
  lines: { level: string; message: string | undefined; fields: object }[];
} {
  const lines: { level: string; message: string | undefined; fields: object }[] = [];
  const line =
    (level: string) =>
    (fields: object, message?: string): void => {
      lines.push({ level, message, fields });
    };
  return {
    logger: { debug: line('debug'), info: line('info'), warn: line('warn'), error: line('error') },
    lines,
  };
}

/** Worker options that make retries, polling and stale-worker detection fast enough for tests. */
export const fastWorkerOptions = Object.freeze({
  pollIntervalMs: 50,
  retry: { baseDelayMs: 10, maxDelayMs: 50 },
  heartbeatIntervalMs: 200,
  staleWorkerAfterMs: 1000,
  shutdownGraceMs: 5000,
});

/** Starts a worker with {@link fastWorkerOptions} under `options`. */
export function startWorker(
  tenantry: Tenantry<ReferenceDatabase>,
  connectionString: string,
  options: Omit<JobWorkerOptions<ReferenceDatabase>, 'tenantry' | 'connectionString'>,
): Promise<JobWorker> {
  return createJobWorker<ReferenceDatabase>({
    ...fastWorkerOptions,
    ...options,
    tenantry,
    connectionString,
  });
}

/** The job rows of one task, as the superuser sees them. */
export async function jobRows(
  admin: AdminPool,
  task: string,
): Promise<
  {
    id: string;
    tenant_id: string | null;
    payload: { tenantId: string; data: Record<string, unknown> };
    flags: Record<string, boolean> | null;
    key: string | null;
    attempts: number;
    max_attempts: number;
    locked_by: string | null;
    last_error: string | null;
  }[]
> {
  return admin.query(
    `select j.id::text, j.payload ->> 'tenantId' as tenant_id, j.payload, j.flags, j.key,
            j.attempts, j.max_attempts, j.locked_by, j.last_error
       from graphile_worker._private_jobs j
       join graphile_worker._private_tasks t on t.id = j.task_id
      where t.identifier = $1
      order by j.id`,
    [task],
  );
}

/** The task the crash test's child process runs, and the row its job writes. */
export const crashJobName = 'crash.effect';
export const crashEffectTag = 'crash-effect';
