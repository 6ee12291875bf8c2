/**
 * Does listing a tenant's newest 50 messages stay as fast when the same volume of messages is
 * spread over 100 times more tenants? Two databases in the partitioned layout (messages LIST
 * on tenant_id over a DEFAULT partition HASH-partitioned into 16), each with
 * BENCH_SCALE_MESSAGES messages (default 10,000,000, generated in SQL): one with 100 tenants, one
 * with 10,000. The app's query runs through Tenantry as the app role (guard and RLS) for random
 * tenants, one at a time; p50 and p95 latency per scenario. The last line is one JSON object:
 * growth = p50 at 10,000 tenants / p50 at 100 (target <= 1.3).
 *
 * A loaded database is kept and reused by the next run when its size matches; set
 * BENCH_SCALE_RELOAD=1 to load it again.
 */
import { availableParallelism, cpus, totalmem } from 'node:os';
import pg from 'pg';
import {
  bootstrapDatabase,
  createTenantry,
  type EmbeddedPostgresServer,
  migrate,
  startEmbeddedPostgres,
  type Tenantry,
} from 'tenantry';
import { billingMigrationSource } from 'tenantry/billing';
import { jobsMigrationSource } from 'tenantry/jobs';
import { platformMigrationSource } from 'tenantry/platform';
import { storageMigrationSource } from 'tenantry/storage';
import type { AppDatabase } from '../app/database.ts';

const totalMessages = Number(process.env.BENCH_SCALE_MESSAGES ?? 10_000_000);
const queries = Number(process.env.BENCH_SCALE_QUERIES ?? 3_000);
const warmupQueries = Number(process.env.BENCH_SCALE_WARMUP ?? 500);
const rounds = Number(process.env.BENCH_SCALE_ROUNDS ?? 3);
const reload = process.env.BENCH_SCALE_RELOAD === '1';
const tenantCounts = [100, 10_000] as const;
const chunkRows = 500_000;
const directory = '.tenantry/bench-scale-postgres';
const appMigrations = new URL('../app/migrations/', import.meta.url).pathname;

interface Scenario {
  readonly tenants: number;
  readonly database: string;
  readonly tenantIds: readonly string[];
  tenantry?: Tenantry<AppDatabase>;
  readonly samples: number[];
}

function progress(line: string): void {
  process.stderr.write(`${line}\n`);
}

export async function run(): Promise<void> {
  const server = await startEmbeddedPostgres({ directory, durability: 'fast' });
  try {
    await runWith(server);
  } finally {
    await server.stop();
  }
}

async function runWith(server: EmbeddedPostgresServer): Promise<void> {
  const scenarios: Scenario[] = [];
  for (const tenants of tenantCounts) {
    const database = `tenantry_bench_scale_${tenants}`;
    const tenantIds = await prepare(server, database, tenants);
    scenarios.push({ tenants, database, tenantIds, samples: [] });
  }
  try {
    for (const scenario of scenarios) {
      scenario.tenantry = await createTenantry<AppDatabase>({
        connectionString: server.connectionString(
          scenario.database,
          'tenantry_app',
          server.secrets.appPassword,
        ),
        maxConnections: 1,
      });
      await measure(scenario, warmupQueries);
    }
    // Alternate the scenarios round by round so neither always runs on a warmer machine.
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? scenarios : [...scenarios].reverse();
      for (const scenario of order) {
        scenario.samples.push(...(await measure(scenario, Math.ceil(queries / rounds))));
      }
    }
  } finally {
    for (const scenario of scenarios) await scenario.tenantry?.close();
  }

  const summary: Record<string, number> = {};
  for (const scenario of scenarios) {
    const p50 = percentile(scenario.samples, 0.5);
    const p95 = percentile(scenario.samples, 0.95);
    summary[`p50Ms${scenario.tenants}`] = round3(p50);
    summary[`p95Ms${scenario.tenants}`] = round3(p95);
    console.log(
      `${String(scenario.tenants).padStart(6)} tenants  ${(totalMessages / scenario.tenants).toFixed(0).padStart(8)} messages each   p50 ${p50.toFixed(3)} ms   p95 ${p95.toFixed(3)} ms   (${scenario.samples.length} queries)`,
    );
  }
  const growth = (summary.p50Ms10000 ?? 0) / (summary.p50Ms100 ?? 1);
  console.log(
    `machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${availableParallelism()} CPUs, ${Math.round(totalmem() / 2 ** 30)} GiB`,
  );
  console.log(
    JSON.stringify({
      bench: 'scale',
      growth: Math.round(growth * 100) / 100,
      messages: totalMessages,
      queries,
      ...summary,
    }),
  );
}

/** The app's query: a tenant's newest 50 messages, through the guard, as the app role. */
async function newestMessages(tenantry: Tenantry<AppDatabase>, tenantId: string) {
  return tenantry.withTenant(tenantId, (db) =>
    db
      .selectFrom('messages')
      .select(['id', 'conversation_id', 'direction', 'body', 'status', 'created_at'])
      .orderBy('created_at', 'desc')
      .limit(50)
      .execute(),
  );
}

async function measure(scenario: Scenario, count: number): Promise<number[]> {
  const tenantry = scenario.tenantry;
  if (tenantry === undefined) throw new Error('scenario not started');
  const samples: number[] = [];
  for (let i = 0; i < count; i++) {
    const tenantId = scenario.tenantIds[Math.floor(Math.random() * scenario.tenantIds.length)];
    if (tenantId === undefined) continue;
    const started = process.hrtime.bigint();
    const rows = await newestMessages(tenantry, tenantId);
    samples.push(Number(process.hrtime.bigint() - started) / 1e6);
    if (rows.length !== 50) {
      throw new Error(`tenant ${tenantId} returned ${rows.length} messages, expected 50`);
    }
  }
  return samples;
}

/**
 * Creates (or reuses) a database with `tenants` tenants and `totalMessages` messages spread
 * evenly, in the migrated partitioned layout; returns the tenant ids.
 */
async function prepare(
  server: EmbeddedPostgresServer,
  database: string,
  tenants: number,
): Promise<string[]> {
  const url = server.connectionString(database);
  if (!reload && (await loadedSize(url)) === `${totalMessages}/${tenants}`) {
    progress(`${database}: reusing ${totalMessages} messages over ${tenants} tenants`);
    return tenantIdsOf(url);
  }
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
    connectionString: url,
    sources: [
      jobsMigrationSource(),
      storageMigrationSource(),
      billingMigrationSource(),
      platformMigrationSource(),
      { name: 'app', directory: appMigrations },
    ],
  });
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const started = performance.now();
    // The superuser loads with triggers off (no quota metering of 10M historical messages, no
    // per-row foreign key checks); the rows are consistent by construction.
    await client.query('set session_replication_role = replica');
    await client.query(
      `insert into tenantry.tenants (id, slug, name, plan)
       select gen_random_uuid(), 'bench-' || g, 'Bench ' || g, 'enterprise' from generate_series(1, $1::int) g`,
      [tenants],
    );
    await client.query(
      `create table bench_tenants as
         select (row_number() over (order by id) - 1)::int as n, id from tenantry.tenants`,
    );
    await client.query('alter table bench_tenants add primary key (n)');
    await client.query(
      `insert into contacts (tenant_id, id, name) select id, id, 'Contact' from bench_tenants;
       insert into conversations (tenant_id, id, contact_id) select id, id, id from bench_tenants;`,
    );
    for (let first = 0; first < totalMessages; first += chunkRows) {
      const last = Math.min(first + chunkRows, totalMessages) - 1;
      // Message g belongs to tenant g mod tenants; its time grows with g, so every tenant's
      // messages span the same period.
      await client.query(
        `insert into messages (tenant_id, id, conversation_id, direction, body, status, created_at)
         select t.id, gen_random_uuid(), t.id,
                case when g % 2 = 0 then 'inbound' else 'outbound' end,
                'Message ' || g || ': hello, this is a benchmark message body.',
                'delivered', timestamptz '2025-01-01' + g * interval '1 second'
           from generate_series($1::bigint, $2::bigint) g
           join bench_tenants t on t.n = (g % $3::int)`,
        [first, last, tenants],
      );
      progress(
        `${database}: ${last + 1}/${totalMessages} messages (${Math.round((performance.now() - started) / 1000)} s)`,
      );
    }
    await client.query('reset session_replication_role');
    progress(`${database}: vacuum analyze`);
    await client.query('vacuum (analyze) messages');
    await client.query(
      `create table bench_scale_info as select $1::bigint as messages, $2::int as tenants`,
      [totalMessages, tenants],
    );
    progress(`${database}: loaded in ${Math.round((performance.now() - started) / 1000)} s`);
  } finally {
    await client.end();
  }
  return tenantIdsOf(url);
}

async function loadedSize(url: string): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: url });
  try {
    await client.connect();
  } catch {
    return undefined;
  }
  try {
    const result = await client.query<{ size: string }>(
      `select messages || '/' || tenants as size from bench_scale_info`,
    );
    return result.rows[0]?.size;
  } catch {
    return undefined;
  } finally {
    await client.end();
  }
}

async function tenantIdsOf(url: string): Promise<string[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<{ id: string }>('select id from bench_tenants order by n')).rows.map(
      (row) => row.id,
    );
  } finally {
    await client.end();
  }
}

function percentile(samples: readonly number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0;
}

function round3(value: number): number {
  return Math.round(value * 1000) / 1000;
}
