// A worker of the reference app's jobs in its own process, for the worker-crash fault test. Its
// channel provider is the app's database one (each delivery commits on its own, like a call to an
// external channel), wrapped so that after `blockAfterSends` deliveries the next send reports
// "blocked" on stdout and never returns: the parent then kills this process mid-batch.
// Usage: node --conditions=development broadcast-worker.ts '{"appUrl": "...", "adminUrl": "...",
//   "blockAfterSends": 7, "batchSize": 5}'
import { createTenantry, silentLogger } from 'tenantry';
import { createJobWorker } from 'tenantry/jobs';
import {
  type ChannelMessage,
  type ChannelProvider,
  createDatabaseChannelProvider,
} from '../../app/channels/channel-provider.ts';
import type { AppDatabase } from '../../app/database.ts';
import { setupJobs } from '../../app/jobs.ts';
import { fastWorkerOptions } from '../jobs-fixtures/helpers.ts';

const { appUrl, adminUrl, blockAfterSends, batchSize } = JSON.parse(process.argv[2] ?? '{}') as {
  appUrl: string;
  adminUrl: string;
  blockAfterSends: number;
  batchSize: number;
};
const tenantry = await createTenantry<AppDatabase>({ connectionString: appUrl, maxConnections: 2 });
const deliveries = await createTenantry<Pick<AppDatabase, 'channel_deliveries'>>({
  connectionString: appUrl,
  maxConnections: 2,
  tenantTables: ['channel_deliveries'],
});
const channel = createDatabaseChannelProvider({ tenantry: deliveries });
let sent = 0;
const provider: ChannelProvider = {
  async send(message: ChannelMessage) {
    if (sent >= blockAfterSends) {
      process.stdout.write(`blocked ${sent}\n`);
      return new Promise<never>(() => {});
    }
    const delivered = await channel.send(message);
    sent += 1;
    return delivered;
  },
};
const jobs = await setupJobs({
  tenantry,
  appConnectionString: appUrl,
  logger: silentLogger,
  config: { channelProvider: provider, broadcastBatchSize: batchSize },
});
const worker = await createJobWorker<AppDatabase>({
  ...fastWorkerOptions,
  concurrency: 1,
  tenantry,
  connectionString: adminUrl,
  jobs: jobs.jobs,
});
process.stdout.write(`worker ${worker.workerId}\n`);
