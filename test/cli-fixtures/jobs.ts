/**
 * A jobs module for `tenantry worker --jobs test/cli-fixtures/jobs.ts` in test/cli.test.ts: one
 * job that tags its tenant, one that holds its slot until the test releases it.
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'tenantry';
import { defineJob } from 'tenantry/jobs';
import type { AppDatabase } from '../../app/database.ts';

/** Creates the tag `name` in the job's tenant. */
export const tagJob = defineJob<{ name: string }, AppDatabase>('cli-fixture.tag', {
  async run({ name }, { db }) {
    await db.insertInto('tags').values({ name }).execute();
  },
});

/** Waits until the tenant has a tag named `release`, then creates the tag `name`. */
export const heldJob = defineJob<{ name: string }, AppDatabase>('cli-fixture.held', {
  maxAttempts: 1,
  async run({ name }, { db, signal }) {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const release = await db
        .selectFrom('tags')
        .select('id')
        .where('name', '=', 'release')
        .executeTakeFirst();
      if (release !== undefined) break;
      if (signal.aborted || Date.now() > deadline) throw new Error('the test never released it');
      await delay(20);
    }
    await db.insertInto('tags').values({ name }).execute();
  },
});

export async function setupJobs(context: { readonly logger: Logger }) {
  context.logger.info({}, 'fixture jobs module set up');
  return {
    jobs: [tagJob, heldJob],
    close() {
      context.logger.info({}, 'fixture jobs module closed');
    },
  };
}
