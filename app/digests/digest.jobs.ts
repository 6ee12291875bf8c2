import { TenantryError } from 'tenantry';
import { defineJob, type JobSchedule } from 'tenantry/jobs';
import type { AppDatabase } from '../database.ts';
import { computeDigest } from './digests.repository.ts';

/** Payload of `digest.daily`: the schedule period it was enqueued for. */
export interface DigestPayload {
  /** ISO timestamp of the period; the digest covers the UTC day before it. */
  readonly period: string;
}

/**
 * The UTC day a digest run for `period` summarises: the day before the period's own UTC day, so
 * the 03:00 run of 15 March reports on 14 March.
 *
 * @example
 * ```ts
 * digestDayOf(new Date('2026-03-15T03:00:00Z')); // '2026-03-14'
 * ```
 */
export function digestDayOf(period: Date): string {
  const day = new Date(
    Date.UTC(period.getUTCFullYear(), period.getUTCMonth(), period.getUTCDate() - 1),
  );
  return day.toISOString().slice(0, 10);
}

/**
 * Checks a stored `digest.daily` payload.
 *
 * @throws TenantryError `TENANTRY_ERR_JOB_INVALID` (the job is dead-lettered at once).
 * @example
 * ```ts
 * parseDigestPayload({ period: '2026-03-15T03:00:00.000Z' });
 * ```
 */
export function parseDigestPayload(data: unknown): DigestPayload {
  const period = (data as { period?: unknown } | null)?.period;
  if (typeof period !== 'string' || Number.isNaN(Date.parse(period))) {
    throw new TenantryError(
      'TENANTRY_ERR_JOB_INVALID',
      'The payload of digest.daily has no period (an ISO timestamp).',
    );
  }
  return { period };
}

/**
 * `digest.daily`: computes the workspace's conversation digest of the UTC day before the
 * period and stores it (a second run for the same day replaces the row).
 *
 * @example
 * ```ts
 * await enqueueJob(db, conversationDigestJob, { period: new Date().toISOString() });
 * ```
 */
export const conversationDigestJob = defineJob<DigestPayload, AppDatabase>('digest.daily', {
  parse: parseDigestPayload,
  async run({ period }, ctx) {
    const digest = await computeDigest(ctx.db, digestDayOf(new Date(period)));
    ctx.logger.info({ day: digest.day }, 'conversation digest computed');
  },
});

/**
 * Every day at 03:00 UTC, one `digest.daily` job per active workspace, for the day before.
 *
 * @example
 * ```ts
 * await createJobWorker({ tenantry, connectionString, jobs: [conversationDigestJob], schedules: [conversationDigestSchedule] });
 * ```
 */
export const conversationDigestSchedule: JobSchedule<DigestPayload> = Object.freeze({
  name: 'conversation-digest',
  cron: '0 3 * * *',
  job: conversationDigestJob,
  payload: ({ period }: { readonly period: Date }) => ({ period: period.toISOString() }),
});
