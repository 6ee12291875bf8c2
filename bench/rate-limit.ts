/**
 * Cost per request of the two rate limit stores: the in-process memory store against the
 * PostgreSQL store (one `tenantry.hit_rate_limit()` upsert per request on the app role's pool),
 * over the same keys, in the same process. The PostgreSQL store runs one request at a time
 * (latency) and with many in flight (throughput). The last line printed is one JSON object.
 */
import pg from 'pg';
import {
  bootstrapDatabase,
  type EmbeddedPostgresServer,
  migrate,
  startEmbeddedPostgres,
} from 'tenantry';
import {
  billingMigrationSource,
  createMemoryRateLimitStore,
  createPostgresRateLimitStore,
  type RateLimitStore,
} from 'tenantry/billing';
import { jobsMigrationSource } from 'tenantry/jobs';
import { storageMigrationSource } from 'tenantry/storage';

const memoryHits = Number(process.env.BENCH_RATE_LIMIT_MEMORY_HITS ?? 1_000_000);
const postgresHits = Number(process.env.BENCH_RATE_LIMIT_POSTGRES_HITS ?? 20_000);
const inFlight = Number(process.env.BENCH_RATE_LIMIT_IN_FLIGHT ?? 16);
const keyCount = Number(process.env.BENCH_RATE_LIMIT_KEYS ?? 1_000);
const database = 'tenantry_bench_rate_limit';
const directory = '.tenantry/bench-rate-limit-postgres';
/** High enough that every hit is admitted and writes: the expensive path. */
const limit = 1_000_000;
const windowMs = 60_000;

const keys = Array.from({ length: keyCount }, (_, i) => `api:bench-${i}`);

/** Runs `total` hits with `concurrency` in flight; returns hits per second. */
async function measure(store: RateLimitStore, total: number, concurrency: number): Promise<number> {
  let next = 0;
  const worker = async () => {
    while (next < total) {
      const i = next++;
      await store.hit(keys[i % keyCount] as string, limit, windowMs, Date.now());
    }
  };
  const started = process.hrtime.bigint();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return Math.round(total / seconds);
}

export async function run(): Promise<void> {
  const server = await startEmbeddedPostgres({ directory });
  try {
    await runWith(server);
  } finally {
    await server.stop();
  }
}

async function runWith(server: EmbeddedPostgresServer): Promise<void> {
  const maintenance = new pg.Client({ connectionString: server.connectionString('postgres') });
  await maintenance.connect();
  await maintenance.query(`drop database if exists ${database} with (force)`);
  await maintenance.end();
  await bootstrapDatabase({
    adminConnectionString: server.connectionString('postgres'),
    database,
    passwords: { app: server.secrets.appPassword },
  });
  await migrate({
    connectionString: server.connectionString(database),
    sources: [jobsMigrationSource(), storageMigrationSource(), billingMigrationSource()],
  });
  const appUrl = server.connectionString(database, 'tenantry_app', server.secrets.appPassword);

  const memory = createMemoryRateLimitStore();
  await measure(memory, Math.min(memoryHits, 100_000), 1);
  const memoryOps = await measure(memory, memoryHits, 1);
  await memory.close();

  const postgres = createPostgresRateLimitStore({
    connectionString: appUrl,
    maxConnections: Math.min(inFlight, 8),
    pruneIntervalMs: 0,
  });
  await measure(postgres, Math.min(postgresHits, 2_000), inFlight);
  const postgresSerialOps = await measure(postgres, Math.min(postgresHits, 5_000), 1);
  const postgresConcurrentOps = await measure(postgres, postgresHits, inFlight);
  await postgres.close();

  const result = {
    bench: 'rate-limit',
    keys: keyCount,
    memoryOpsPerSecond: memoryOps,
    postgresSerialOpsPerSecond: postgresSerialOps,
    postgresSerialLatencyMs: Number((1000 / postgresSerialOps).toFixed(3)),
    postgresConcurrentOpsPerSecond: postgresConcurrentOps,
    postgresInFlight: inFlight,
    memoryToPostgresConcurrentRatio: Number((memoryOps / postgresConcurrentOps).toFixed(1)),
  };
  console.log(`memory store:                ${memoryOps} hits/s (1 in flight)`);
  console.log(
    `postgres store, 1 in flight: ${postgresSerialOps} hits/s (${result.postgresSerialLatencyMs} ms per hit)`,
  );
  console.log(`postgres store, ${inFlight} in flight: ${postgresConcurrentOps} hits/s`);
  console.log(JSON.stringify(result));
}

if (import.meta.main) await run();
