import { createQuotas } from 'tenantry/billing';
import { defineJob, type JobSchedule } from 'tenantry/jobs';
import type { AppDatabase } from '../database.ts';

const quotas = createQuotas();

/**
 * `billing.close-period`: emits `period.closed` (the workspace's usage summary of its previous
 * billing period, ready for invoicing) into the outbox, once per period; later runs in the same
 * period do nothing. Runs in the workspace's own transaction.
 *
 * @example
 * ```ts
 * await enqueueJob(db, closeBillingPeriodJob, {});
 * ```
 */
export const closeBillingPeriodJob = defineJob<Record<string, never>, AppDatabase>(
  'billing.close-period',
  {
    parse: () => ({}),
    maxAttempts: 5,
    async run(_payload, ctx) {
      const eventId = await quotas.closeBillingPeriod(ctx.db);
      if (eventId !== undefined) ctx.logger.info({ eventId }, 'billing period closed');
    },
  },
);

/**
 * Every day at 00:30 UTC, one `billing.close-period` job per active workspace: a workspace whose
 * period ended (its anchor day passed) gets its `period.closed` within a day.
 *
 * @example
 * ```ts
 * const worker = await createJobWorker({ ..., schedules: [closeBillingPeriodSchedule] });
 * ```
 */
export const closeBillingPeriodSchedule: JobSchedule<Record<string, never>> = Object.freeze({
  name: 'billing-close-period',
  cron: '30 0 * * *',
  job: closeBillingPeriodJob,
  payload: () => ({}),
});
