import pino from 'pino';
import {
  createMigrationCheck,
  createTenantDirectory,
  createTenantry,
  isTenantryError,
  migrate,
  prepareDatabase,
  requireAppUrl,
} from 'tenantry';
import {
  billingMigrationSource,
  createPlanLimitCache,
  createPostgresRateLimitStore,
  createWebhookDispatcher,
  type PlanLimitCache,
  planJobLimits,
  type RateLimitStore,
  type WebhookDispatcher,
} from 'tenantry/billing';
import { createJobWorker, type JobWorker, jobsMigrationSource } from 'tenantry/jobs';
import { createSchemaPlacementRouter, type SchemaPlacementRouter } from 'tenantry/placement';
import {
  createRequestMetrics,
  createTenantLifecycle,
  platformMigrationSource,
  type TenantLifecycle,
} from 'tenantry/platform';
import { storageMigrationSource } from 'tenantry/storage';
import {
  type AdminListener,
  loadAdminConfig,
  observeRequests,
  startAdminListener,
} from './admin.ts';
import { buildApp } from './app.ts';
import { developmentSecret, loadAppConfig } from './config.ts';
import type { AppDatabase } from './database.ts';
import { type AppStorage, createAppStorage } from './files/app-storage.ts';
import { setupJobs } from './jobs.ts';
import { seedDemo } from './seed.ts';

const migrationsDirectory = new URL('./migrations/', import.meta.url).pathname;

async function main(): Promise<void> {
  const config = loadAppConfig(process.env, developmentSecret(process.env));
  const adminConfig = loadAdminConfig(process.env);
  const logger = pino({ level: config.logLevel });
  // The app stops the embedded server itself, after in-flight requests finish.
  const database = await prepareDatabase({ ...config.database, stopOnSignal: false }, logger);
  let stopping = false;
  let worker: JobWorker | undefined;
  let files: AppStorage | undefined;
  let planLimits: PlanLimitCache | undefined;
  let webhooks: WebhookDispatcher | undefined;
  let lifecycle: TenantLifecycle | undefined;
  let admin: AdminListener | undefined;
  let placements: SchemaPlacementRouter | undefined;
  let rateLimitStore: RateLimitStore | undefined;
  try {
    const sources = [
      jobsMigrationSource(),
      storageMigrationSource(),
      billingMigrationSource(),
      platformMigrationSource(),
      { name: 'app', directory: migrationsDirectory },
    ];
    const summary = await migrate({ connectionString: database.adminUrl, sources, logger });
    logger.info(
      { applied: summary.applied.length, upToDate: summary.upToDate },
      'database migrated',
    );
    const appUrl = requireAppUrl(database);
    // Workspaces placed in a dedicated schema (`tenantry placement set`) are served from it.
    placements = await createSchemaPlacementRouter({ connectionString: appUrl, logger });
    const tenantry = await createTenantry<AppDatabase>({
      connectionString: appUrl,
      maxConnections: config.maxConnections,
      logger,
      tenantSchema: placements.schemaFor,
    });
    const directory = await createTenantDirectory({ connectionString: appUrl, logger });
    files = createAppStorage(config.storage);
    // Plan limits read per request (rate limit) and per tenant by the job worker.
    planLimits = await createPlanLimitCache({
      connectionString: appUrl,
      metrics: ['api_requests_per_minute', 'concurrent_jobs'],
      logger,
    });
    if (config.rateLimitStore !== 'off') {
      if (config.rateLimitStore === 'postgres') {
        rateLimitStore = createPostgresRateLimitStore({ connectionString: appUrl, logger });
      }
    }
    const jobs = await setupJobs({
      tenantry,
      appConnectionString: appUrl,
      logger,
      config: { channelFailureRate: config.channelFailureRate },
      files,
      tenantSchema: placements.schemaFor,
    });
    const app = await buildApp({
      tenantry,
      directory,
      auth: config.auth,
      pendingMigrations: await createMigrationCheck({ sources }),
      baseDomain: config.baseDomain,
      internalSecret: config.internalSecret,
      webhookToleranceSec: config.webhookToleranceSec,
      logger: { level: config.logLevel },
      jobs,
      files,
      rateLimit:
        config.rateLimitStore === 'off'
          ? undefined
          : {
              limits: planLimits,
              ...(rateLimitStore === undefined ? {} : { store: rateLimitStore }),
            },
    });
    // Per-workspace request counts and latency for the operator listener (in memory, this process).
    const requestMetrics = createRequestMetrics();
    observeRequests(app, requestMetrics);
    lifecycle = createTenantLifecycle({
      connectionString: database.adminUrl,
      storage: { driver: files.storage.driver },
      logger,
    });
    admin = await startAdminListener({
      config: adminConfig,
      database,
      requestMetrics,
      lifecycle,
      logger: { level: config.logLevel },
    });
    if (config.webhooks === 'inprocess') {
      // Billing events (tenantry_billing's outbox) to the endpoints `tenantry webhooks add` set.
      webhooks = createWebhookDispatcher({ connectionString: database.adminUrl, logger });
      await webhooks.start();
    }
    if (config.worker.mode === 'inprocess') {
      worker = await createJobWorker({
        tenantry,
        connectionString: database.adminUrl,
        jobs: jobs.jobs,
        schedules: jobs.schedules,
        concurrency: config.worker.concurrency,
        tenantConcurrency: planJobLimits(planLimits),
        logger,
      });
    }

    const shutdown = async (signal: string) => {
      if (stopping) {
        process.stderr.write('forced exit\n');
        process.exit(1);
      }
      stopping = true;
      logger.info({ signal }, 'shutting down: finishing running jobs, then in-flight requests');
      try {
        // Running jobs finish on the app's Tenantry, which closing the app closes.
        await worker?.stop();
        await webhooks?.stop();
        await admin?.close();
        await lifecycle?.close();
        await app.close();
        await jobs.close();
        await files?.close();
        await rateLimitStore?.close();
        await planLimits?.close();
        await placements?.close();
      } finally {
        await database.stop();
      }
      logger.info('stopped');
    };
    process.once('SIGINT', () => void shutdown('SIGINT'));
    process.once('SIGTERM', () => void shutdown('SIGTERM'));

    const demo =
      config.seedDemo && config.auth.mode === 'local'
        ? await seedDemo(tenantry, config.auth)
        : undefined;
    await app.listen({ port: config.port, host: config.host });
    const url = config.publicUrl;
    const lines = [
      '',
      `Tenantry reference API on ${url}  (docs: ${url}/docs, OpenAPI: ${url}/openapi.json)`,
      admin.banner,
    ];
    if (demo !== undefined) {
      lines.push(
        `Demo workspace "${demo.workspaceSlug}": sign in as ${demo.email} / ${demo.password}`,
        '',
        '  # sign in, then list the demo contacts:',
        `  TOKEN=$(curl -s ${url}/auth/login -H 'content-type: application/json' \\`,
        `    -d '{"email":"${demo.email}","password":"${demo.password}"}' | node -pe 'JSON.parse(require("fs").readFileSync(0)).accessToken')`,
        `  curl -s ${url}/v1/contacts -H "authorization: Bearer $TOKEN"`,
        '  # broadcasts (POST /v1/broadcasts {name, templateId, tagIds}) and their progress:',
        `  curl -s ${url}/v1/broadcasts -H "authorization: Bearer $TOKEN"`,
        '  # a CSV of the contacts, written by a job (then GET /v1/exports/<exportId>):',
        `  curl -s -X POST ${url}/v1/exports/contacts -H "authorization: Bearer $TOKEN"`,
        '',
      );
    }
    process.stdout.write(`${lines.join('\n')}\n`);
  } catch (error) {
    // The worker polls until stopped; left running it would keep the process alive.
    await worker?.stop();
    await webhooks?.stop();
    await admin?.close();
    await lifecycle?.close();
    await files?.close();
    await placements?.close();
    await database.stop();
    throw error;
  }
}

try {
  await main();
} catch (error) {
  if (isTenantryError(error)) {
    process.stderr.write(`tenantry: ${error.message} [${error.code}]\n`);
  } else {
    process.stderr.write(
      `tenantry: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
  }
  process.exitCode = 1;
}
