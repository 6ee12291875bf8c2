// A job worker in its own process, for the crash test: its job writes a row in the job's
// transaction, reports on stdout and hangs until the parent kills the process.
// Usage: node --conditions=development crash-worker.ts '{"appUrl": "...", "adminUrl": "..."}'
import { createTenantry } from 'tenantry';
import { createJobWorker, defineJob } from 'tenantry/jobs';
import type { ReferenceDatabase } from '../fixtures.ts';
import { crashEffectTag, crashJobName, fastWorkerOptions, gate } from './helpers.ts';

const { appUrl, adminUrl } = JSON.parse(process.argv[2] ?? '{}') as {
  appUrl: string;
  adminUrl: string;
};
const tenantry = await createTenantry<ReferenceDatabase>({
  connectionString: appUrl,
  maxConnections: 2,
});
const started = gate();
const job = defineJob<Record<string, never>, ReferenceDatabase>(crashJobName, {
  async run(_payload, ctx) {
    await ctx.db.insertInto('tags').values({ name: crashEffectTag }).execute();
    // Reported once the worker is fully started, so its heartbeat row exists.
    await started.promise;
    process.stdout.write(`running ${ctx.jobId} ${ctx.attempt}\n`);
    await new Promise<never>(() => {});
  },
});
const worker = await createJobWorker<ReferenceDatabase>({
  ...fastWorkerOptions,
  tenantry,
  connectionString: adminUrl,
  jobs: [job],
});
process.stdout.write(`worker ${worker.workerId}\n`);
started.open();
