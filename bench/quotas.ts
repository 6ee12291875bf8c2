/**
 * What an exact, database-enforced quota costs a write. The same inserts run, in the same
 * process and database, into two identical tenant tables: `bench_plain` (no quota) and
 * `bench_counted` (`tenantry.attach_quota(…, 'bench_rows')`, limited on every tenant's plan, the
 * expensive path: a guarded counter update per statement). Three shapes:
 *   - single: one row per unit of work, `inFlight` units at once spread over `tenants` tenants;
 *   - hot: the same, all on ONE tenant (its counter row serialises those transactions);
 *   - bulk: 1,000 rows per statement (one counter update for the statement).
 * Prints rows per second for each and the counted/plain ratio; the last line is one JSON object.
 */
import { randomUUID } from 'node:crypto';
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
import { storageMigrationSource } from 'tenantry/storage';

const singles = Number(process.env.BENCH_QUOTAS_SINGLE ?? 6_000);
const bulkStatements = Number(process.env.BENCH_QUOTAS_BULK ?? 60);
const inFlight = Number(process.env.BENCH_QUOTAS_IN_FLIGHT ?? 8);
const tenantCount = Number(process.env.BENCH_QUOTAS_TENANTS ?? 50);
const rounds = Number(process.env.BENCH_QUOTAS_ROUNDS ?? 3);
const database = 'tenantry_bench_quotas';
const directory = '.tenantry/bench-quotas-postgres';

interface BenchDatabase {
  bench_plain: { tenant_id?: string; id: string; name: string };
  bench_counted: { tenant_id?: string; id: string; name: string };
}
type Table = keyof BenchDatabase;

export async function run(): Promise<void> {
  const server = await startEmbeddedPostgres({ directory });
  try {
    await runWith(server);
  } finally {
    await server.stop();
  }
}

async function setUp(
  server: EmbeddedPostgresServer,
): Promise<{ adminUrl: string; appUrl: string }> {
  const maintenance = new pg.Client({ connectionString: server.connectionString('postgres') });
  await maintenance.connect();
  await maintenance.query(`drop database if exists ${database} with (force)`);
  await maintenance.end();
  await bootstrapDatabase({
    adminConnectionString: server.connectionString('postgres'),
    database,
    passwords: { app: server.secrets.appPassword },
  });
  const adminUrl = server.connectionString(database);
  await migrate({
    connectionString: adminUrl,
    sources: [jobsMigrationSource(), storageMigrationSource(), billingMigrationSource()],
  });
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`
      set role tenantry_owner;
      insert into tenantry.metrics (name, kind, unit) values ('bench_rows', 'count', 'row');
      insert into tenantry.plans (id, name) values ('bench', 'Bench');
      insert into tenantry.plan_limits (plan_id, metric, limit_value) values ('bench', 'bench_rows', 1000000000);
      create table bench_plain (tenant_id uuid not null, id uuid not null, name text not null,
        primary key (tenant_id, id));
      create table bench_counted (tenant_id uuid not null, id uuid not null, name text not null,
        primary key (tenant_id, id));
      select tenantry.enable_tenant_isolation('bench_plain');
      select tenantry.enable_tenant_isolation('bench_counted');
      select tenantry.attach_quota('bench_counted', 'bench_rows');
      insert into tenantry.tenants (id, slug, name, plan)
        select gen_random_uuid(), 'bench-' || n, 'Bench ' || n, 'bench'
          from generate_series(1, ${tenantCount}) n;
    `);
  } finally {
    await admin.end();
  }
  return {
    adminUrl,
    appUrl: server.connectionString(database, 'tenantry_app', server.secrets.appPassword),
  };
}

async function tenantIds(adminUrl: string): Promise<string[]> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    const result = await client.query<{ id: string }>(
      "select id from tenantry.tenants where slug like 'bench-%' order by slug",
    );
    return result.rows.map((row) => row.id);
  } finally {
    await client.end();
  }
}

/** `total` units of work of one insert statement each, `inFlight` at once; rows per second. */
async function measure(
  tenantry: Tenantry<BenchDatabase>,
  table: Table,
  tenants: readonly string[],
  total: number,
  rowsPerStatement: number,
): Promise<number> {
  let next = 0;
  const worker = async () => {
    while (next < total) {
      const index = next++;
      const tenantId = tenants[index % tenants.length] as string;
      await tenantry.withTenant(tenantId, (db) =>
        db
          .insertInto(table)
          .values(
            Array.from({ length: rowsPerStatement }, () => ({ id: randomUUID(), name: 'row' })),
          )
          .execute(),
      );
    }
  };
  const started = process.hrtime.bigint();
  await Promise.all(Array.from({ length: inFlight }, worker));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return Math.round((total * rowsPerStatement) / seconds);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

async function runWith(server: EmbeddedPostgresServer): Promise<void> {
  const { adminUrl, appUrl } = await setUp(server);
  const tenants = await tenantIds(adminUrl);
  const hot = tenants.slice(0, 1);
  const tenantry = await createTenantry<BenchDatabase>({
    connectionString: appUrl,
    maxConnections: inFlight,
    tenantTables: ['bench_plain', 'bench_counted'],
  });
  try {
    // Warm-up: plans, statement caches, counter rows.
    for (const table of ['bench_plain', 'bench_counted'] as const) {
      await measure(tenantry, table, tenants, 500, 1);
    }
    const results: Record<string, { plain: number[]; counted: number[] }> = {
      single: { plain: [], counted: [] },
      hot: { plain: [], counted: [] },
      bulk: { plain: [], counted: [] },
    };
    for (let round = 0; round < rounds; round++) {
      // Alternate the order so neither table always runs on a warmer cache.
      const order: Table[] =
        round % 2 === 0 ? ['bench_plain', 'bench_counted'] : ['bench_counted', 'bench_plain'];
      for (const table of order) {
        const key = table === 'bench_plain' ? 'plain' : 'counted';
        results.single?.[key].push(await measure(tenantry, table, tenants, singles, 1));
        results.hot?.[key].push(await measure(tenantry, table, hot, singles / 2, 1));
        results.bulk?.[key].push(await measure(tenantry, table, tenants, bulkStatements, 1000));
      }
    }
    const summary: Record<string, number> = {};
    for (const [shape, { plain, counted }] of Object.entries(results)) {
      const p = median(plain);
      const c = median(counted);
      summary[`${shape}PlainRowsPerSec`] = p;
      summary[`${shape}CountedRowsPerSec`] = c;
      summary[`${shape}Ratio`] = Math.round((c / p) * 100) / 100;
      console.log(
        `${shape.padEnd(6)} plain ${String(p).padStart(7)} rows/s   counted ${String(c).padStart(7)} rows/s   ratio ${(c / p).toFixed(2)}`,
      );
    }
    console.log(
      JSON.stringify({
        bench: 'quotas',
        inFlight,
        tenants: tenantCount,
        rounds,
        ...summary,
      }),
    );
  } finally {
    await tenantry.close();
  }
}
