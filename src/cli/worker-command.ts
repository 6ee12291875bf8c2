import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { type Command, Option } from 'commander';
import { createJobWorker, type JobWorker } from '../jobs/index.ts';
import type { JobsModuleContext, JobsModuleSetup } from '../jobs/jobs-module.ts';
import { type Logger, summarizeError } from '../logger.ts';
import { createSchemaPlacementRouter } from '../placement/index.ts';
import { createTenantry, type Tenantry } from '../tenantry.ts';
import type { CliConfig } from './config.ts';
import { type PreparedDatabase, prepareDatabase, requireAppUrl } from './database.ts';
import { integerOption } from './job-commands.ts';
import { UsageError } from './usage-error.ts';

interface WorkerCommandOptions {
  readonly jobs: string;
  readonly concurrency: number;
  readonly tenantConcurrency?: number;
  readonly healthPort?: number;
}

/**
 * Adds `tenantry worker --jobs <module>`: loads the module, asks its `setupJobs()` for the job
 * definitions and runs a job worker until SIGINT or SIGTERM, then stops it gracefully.
 *
 * @example
 * ```ts
 * const program = new Command('tenantry');
 * addWorkerCommand(program, loadCliConfig(), createConsoleLogger('info'));
 * await program.parseAsync(['node', 'tenantry', 'worker', '--jobs', 'app/jobs.ts']);
 * ```
 */
export function addWorkerCommand(program: Command, config: CliConfig, logger: Logger): void {
  program
    .command('worker')
    .description('Run tenant jobs: the job definitions come from a module exporting setupJobs().')
    .requiredOption('--jobs <module>', 'module exporting setupJobs(), relative to this folder')
    .addOption(
      new Option('--concurrency <n>', 'jobs run at once by this worker')
        .argParser(integerOption('--concurrency', 1, 1000))
        .default(10),
    )
    .addOption(
      new Option(
        '--tenant-concurrency <n>',
        "jobs of one tenant run at once (overrides the module's tenantConcurrency)",
      ).argParser(integerOption('--tenant-concurrency', 1, 1000)),
    )
    .addOption(
      new Option(
        '--health-port <port>',
        'serve GET /healthz on 127.0.0.1:<port> (0: any port)',
      ).argParser(integerOption('--health-port', 0, 65535)),
    )
    .action((options: WorkerCommandOptions) => runWorker(options, config, logger));
}

async function runWorker(
  options: WorkerCommandOptions,
  config: CliConfig,
  logger: Logger,
): Promise<void> {
  const setupJobs = await loadJobsModule(options.jobs);
  const closers: { name: string; close: () => Promise<void> | void }[] = [];
  let database: PreparedDatabase | undefined;
  let stopRequested: ((signal: NodeJS.Signals) => void) | undefined;
  const stopSignal = new Promise<NodeJS.Signals>((resolveSignal) => {
    stopRequested = resolveSignal;
  });
  let signalled = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) {
      // A second signal skips the graceful stop; the embedded server is still stopped first.
      logger.warn({ signal }, 'second signal: exiting without waiting for running jobs');
      void (database?.stop() ?? Promise.resolve()).finally(() => process.exit(130));
      return;
    }
    signalled = true;
    logger.info({ signal }, 'stopping the worker');
    stopRequested?.(signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    database = await prepareDatabase({ ...config, stopOnSignal: false }, logger);
    const prepared = database;
    closers.push({ name: 'database', close: () => prepared.stop() });
    const appConnectionString = requireAppUrl(prepared);
    // Jobs of tenants placed in a dedicated schema run there, as their requests do.
    const placements = await createSchemaPlacementRouter({
      connectionString: appConnectionString,
      logger,
    });
    closers.push({ name: 'placements', close: () => placements.close() });
    // biome-ignore lint/suspicious/noExplicitAny: the module's database type is its own
    const tenantry = await createTenantry<any>({
      connectionString: appConnectionString,
      maxConnections: options.concurrency,
      logger,
      tenantSchema: placements.schemaFor,
    });
    closers.push({ name: 'tenantry', close: () => tenantry.close() });
    const setup = await setupJobs({
      tenantry,
      appConnectionString,
      logger,
      tenantSchema: placements.schemaFor,
    });
    if (typeof setup?.close === 'function') {
      closers.push({ name: 'jobs module', close: () => setup.close?.() });
    }
    if (!Array.isArray(setup?.jobs)) {
      throw new UsageError(
        `setupJobs() in ${options.jobs} must resolve to an object with a jobs array, e.g. { jobs: [sendEmail] }.`,
      );
    }
    if (signalled) return;
    const tenantConcurrency = options.tenantConcurrency ?? setup.tenantConcurrency;
    const worker = await createJobWorker({
      tenantry,
      connectionString: prepared.adminUrl,
      jobs: setup.jobs,
      concurrency: options.concurrency,
      ...(setup.schedules === undefined ? {} : { schedules: setup.schedules }),
      ...(tenantConcurrency === undefined ? {} : { tenantConcurrency }),
      logger,
    });
    closers.push({ name: 'worker', close: () => worker.stop() });
    if (options.healthPort !== undefined) {
      const server = await serveHealth(worker, options.healthPort);
      const { port } = server.address() as AddressInfo;
      logger.info({ url: `http://127.0.0.1:${port}/healthz` }, 'health endpoint listening');
      // Closed after the worker, so probes see 503 while running jobs finish.
      closers.splice(closers.length - 1, 0, {
        name: 'health endpoint',
        close: () => close(server),
      });
    }
    await stopSignal;
  } finally {
    for (const { name, close: closeResource } of closers.reverse()) {
      try {
        await closeResource();
      } catch (error) {
        logger.error({ resource: name, error: summarizeError(error) }, 'closing failed');
      }
    }
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

type SetupJobs = (context: JobsModuleContext) => Promise<JobsModuleSetup>;

async function loadJobsModule(path: string): Promise<SetupJobs> {
  const file = resolve(process.cwd(), path);
  if (!existsSync(file)) {
    throw new UsageError(
      `--jobs ${path}: no such file (${file}). Pass the path, relative to the current folder, of a module that exports setupJobs().`,
    );
  }
  const module = (await import(pathToFileURL(file).href)) as { setupJobs?: unknown };
  if (typeof module.setupJobs !== 'function') {
    throw new UsageError(
      `--jobs ${path} does not export a setupJobs function. Add one: ` +
        'export async function setupJobs({ tenantry, appConnectionString, logger }) { return { jobs: [myJob] }; }',
    );
  }
  return module.setupJobs as SetupJobs;
}

async function serveHealth(worker: JobWorker, port: number): Promise<Server> {
  const server = createServer((request, response) => {
    const path = new URL(request.url ?? '/', 'http://localhost').pathname;
    if (path !== '/healthz' || (request.method !== 'GET' && request.method !== 'HEAD')) {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    const health = worker.health();
    response
      .writeHead(health.status === 'running' ? 200 : 503, {
        'content-type': 'application/json',
        'cache-control': 'no-store',
      })
      .end(request.method === 'HEAD' ? undefined : JSON.stringify(health));
  });
  await new Promise<void>((resolveListen, reject) => {
    const refused = (error: NodeJS.ErrnoException) => {
      reject(
        new UsageError(
          `--health-port ${port}: cannot listen on 127.0.0.1 (${error.code ?? error.message}). Choose another port, or 0 for any free one.`,
          { cause: error },
        ),
      );
    };
    server.once('error', refused);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', refused);
      resolveListen();
    });
  });
  return server;
}

function close(server: Server): Promise<void> {
  return new Promise((resolveClose) => {
    server.close(() => resolveClose());
    server.closeAllConnections();
  });
}
