import { sql } from 'kysely';
import { defineJob, type JobSchedule } from 'tenantry/jobs';
import type { AppDatabase } from '../database.ts';

/** How long an `Idempotency-Key` is remembered: a retry within this window replays. */
export const idempotencyKeyRetentionHours = 24;

/**
 * `idempotency.expire`: deletes the workspace's idempotency keys older than
 * {@link idempotencyKeyRetentionHours} (runs in the workspace's own transaction, so RLS limits it
 * to that workspace's keys).
 *
 * @example
 * ```ts
 * await enqueueJob(db, expireIdempotencyKeysJob, {});
 * ```
 */
export const expireIdempotencyKeysJob = defineJob<Record<string, never>, AppDatabase>(
  'idempotency.expire',
  {
    parse: () => ({}),
    maxAttempts: 3,
    async run(_payload, ctx) {
      const result = await ctx.db
        .deleteFrom('idempotency_keys')
        .where(
          'created_at',
          '<',
          sql<Date>`now() - make_interval(hours => ${idempotencyKeyRetentionHours})`,
        )
        .executeTakeFirst();
      ctx.logger.debug({ deleted: Number(result.numDeletedRows) }, 'idempotency keys expired');
    },
  },
);

/**
 * Every hour, one `idempotency.expire` job per active workspace.
 *
 * @example
 * ```ts
 * await createJobWorker({ tenantry, connectionString, jobs: [expireIdempotencyKeysJob], schedules: [idempotencyExpirySchedule] });
 * ```
 */
export const idempotencyExpirySchedule: JobSchedule<Record<string, never>> = Object.freeze({
  name: 'idempotency-expiry',
  cron: '17 * * * *',
  job: expireIdempotencyKeysJob,
  payload: () => ({}),
});
