/**
 * What placement costs. (1) Point lookups by primary key through `oneShot` for a pooled tenant
 * without a router (the baseline), and through the placement router for a pooled, a
 * schema-placed and a database-placed tenant, plus the database-placed tenant's lookups straight
 * on its database without a router; interleaved rounds in one process on one server. (2) Online
 * moves of a tenant with BENCH_PLACEMENT_MOVE_ROWS notes (default 100,000) pool -> schema -> database ->
 * pool: total time and how long its writes were held. The last line printed is one JSON object.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { bootstrapDatabase, createTenantry, migrate, startEmbeddedPostgres } from 'tenantry';
import { billingMigrationSource } from 'tenantry/billing';
import { jobsMigrationSource } from 'tenantry/jobs';
import {
  createPlacementRouter,
  createPoolRegistry,
  moveTenant,
  placeTenantInDatabase,
  placeTenantInSchema,
} from 'tenantry/placement';
import { platformMigrationSource } from 'tenantry/platform';
import { storageMigrationSource } from 'tenantry/storage';

interface Notes {
  notes: { tenant_id: string; id: string; body: string };
}

const rowsPerTenant = Number(process.env.BENCH_PLACEMENT_ROWS_PER_TENANT ?? 10_000);
const moveRows = Number(process.env.BENCH_PLACEMENT_MOVE_ROWS ?? 100_000);
const roundMs = Number(process.env.BENCH_PLACEMENT_ROUND_MS ?? 1500);
const rounds = Number(process.env.BENCH_PLACEMENT_ROUNDS ?? 5);
const concurrency = 10;

const notesSql = `create table notes (
  tenant_id uuid not null default tenantry.current_tenant_id(),
  id uuid not null default gen_random_uuid(),
  body text not null,
  primary key (tenant_id, id)
);
select tenantry.enable_tenant_isolation('notes');
`;

async function exec(url: string, text: string, values: unknown[] = []) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(text, values)).rows;
  } finally {
    await client.end();
  }
}

/** A tenant in the control database's catalog. */
async function createTenant(controlUrl: string, slug: string): Promise<string> {
  const rows = await exec(
    controlUrl,
    `insert into tenantry.tenants (slug, name) values ($1, $1) returning id::text as id`,
    [slug],
  );
  return rows[0].id as string;
}

async function fillNotes(
  url: string,
  tenantId: string,
  rows: number,
  schema = 'public',
): Promise<string[]> {
  const ids = await exec(
    url,
    `insert into "${schema}".notes (tenant_id, body)
     select $1, 'note ' || n || repeat('x', 80) from generate_series(1, $2) n returning id::text as id`,
    [tenantId, rows],
  );
  return ids.map((row) => row.id as string);
}

export async function run(): Promise<void> {
  const server = await startEmbeddedPostgres({ directory: '.tenantry/bench-placement' });
  const superuser = server.connectionString('postgres');
  const directory = await mkdtemp(join(tmpdir(), 'tenantry-bench-placement-'));
  await writeFile(join(directory, '0001-notes.sql'), notesSql);
  const sources = [{ name: 'app', directory }];
  for (const database of ['bench_control', 'bench_dedicated']) {
    await exec(superuser, `drop database if exists ${database} with (force)`);
    await bootstrapDatabase({
      adminConnectionString: superuser,
      database,
      passwords: { app: server.secrets.appPassword },
    });
  }
  const control = server.connectionString('bench_control');
  const dedicated = server.connectionString('bench_dedicated');
  const appOf = (database: string) =>
    server.connectionString(database, 'tenantry_app', server.secrets.appPassword);
  await migrate({
    connectionString: control,
    sources: [
      jobsMigrationSource(),
      storageMigrationSource(),
      billingMigrationSource(),
      platformMigrationSource(),
      ...sources,
    ],
  });

  const pooled = await createTenant(control, 'pooled');
  const schemaPlaced = await createTenant(control, 'schema');
  const databasePlaced = await createTenant(control, 'database');
  await placeTenantInSchema({ connectionString: control, tenantId: schemaPlaced, sources });
  await placeTenantInDatabase({
    controlConnectionString: control,
    targetAdminUrl: dedicated,
    connectionName: 'eu_1',
    tenantId: databasePlaced,
    sources,
  });
  const [schemaRow] = await exec(
    control,
    'select schema_name from tenantry.tenant_placements where tenant_id = $1',
    [schemaPlaced],
  );
  const keys = {
    pooled: await fillNotes(control, pooled, rowsPerTenant),
    schema: await fillNotes(control, schemaPlaced, rowsPerTenant, schemaRow.schema_name),
    database: await fillNotes(dedicated, databasePlaced, rowsPerTenant),
  };
  await exec(control, 'vacuum analyze');
  await exec(dedicated, 'vacuum analyze');

  const plain = await createTenantry<Notes>({
    connectionString: appOf('bench_control'),
    maxConnections: concurrency,
  });
  const direct = await createTenantry<Notes>({
    connectionString: appOf('bench_dedicated'),
    maxConnections: concurrency,
  });
  const registry = createPoolRegistry({
    connections: { eu_1: appOf('bench_dedicated') },
    maxConnectionsPerPool: concurrency,
  });
  const router = await createPlacementRouter({
    connectionString: appOf('bench_control'),
    registry,
  });
  const routed = await createTenantry<Notes>({
    connectionString: appOf('bench_control'),
    maxConnections: concurrency,
    tenantSchema: router.tenantSchema,
    tenantPool: router.tenantPool,
  });

  const lookup = (tenantry: typeof plain, tenantId: string, ids: readonly string[]) => async () => {
    const id = ids[Math.floor(Math.random() * ids.length)] as string;
    const row = await tenantry.oneShot(tenantId, (db) =>
      db.selectFrom('notes').selectAll().where('id', '=', id).executeTakeFirst(),
    );
    if (row === undefined) throw new Error('lookup found nothing');
  };
  const variants: Record<string, () => Promise<void>> = {
    'pooled tenant, no router': lookup(plain, pooled, keys.pooled),
    'pooled tenant, through the router': lookup(routed, pooled, keys.pooled),
    'schema tenant, through the router': lookup(routed, schemaPlaced, keys.schema),
    'database tenant, through the router': lookup(routed, databasePlaced, keys.database),
    'database tenant, on its database without a router': lookup(
      direct,
      databasePlaced,
      keys.database,
    ),
  };
  const totals = new Map<string, { ops: number; ms: number }>();
  for (const name of Object.keys(variants)) totals.set(name, { ops: 0, ms: 0 });
  for (const fn of Object.values(variants)) for (let i = 0; i < 200; i++) await fn();
  const entries = Object.entries(variants);
  for (let round = 0; round < rounds; round++) {
    // Each round starts with another variant, so no variant always follows the same one.
    const order = [
      ...entries.slice(round % entries.length),
      ...entries.slice(0, round % entries.length),
    ];
    for (const [name, fn] of order) {
      const started = performance.now();
      let ops = 0;
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (performance.now() - started < roundMs) {
            await fn();
            ops++;
          }
        }),
      );
      const total = totals.get(name) as { ops: number; ms: number };
      total.ops += ops;
      total.ms += performance.now() - started;
    }
  }
  const rate = (name: string) => {
    const total = totals.get(name) as { ops: number; ms: number };
    return (total.ops / total.ms) * 1000;
  };
  const baseline = rate('pooled tenant, no router');
  console.log(
    `Point lookups, oneShot, ${concurrency} in flight, ${rounds} rounds of ${roundMs} ms:`,
  );
  console.log('| variant | lookups/s | ratio to the pooled tenant without a router |');
  console.log('| --- | ---: | ---: |');
  const lookups: Record<string, { perSecond: number; ratio: number }> = {};
  for (const name of Object.keys(variants)) {
    const perSecond = rate(name);
    lookups[name] = { perSecond: Math.round(perSecond), ratio: perSecond / baseline };
    console.log(`| ${name} | ${Math.round(perSecond)} | ${(perSecond / baseline).toFixed(2)} |`);
  }
  const databaseRatio =
    rate('database tenant, through the router') /
    rate('database tenant, on its database without a router');
  console.log(
    `router overhead for the database tenant (through the router / without): ${databaseRatio.toFixed(2)}`,
  );

  await routed.close();
  await plain.close();
  await direct.close();
  await router.close();
  await registry.close();

  const mover = await createTenant(control, 'mover');
  await fillNotes(control, mover, moveRows);
  const moves: { to: string; totalMs: number; holdMs: number | null }[] = [];
  console.log(`\nOnline moves of a tenant with ${moveRows} notes (no concurrent traffic):`);
  console.log('| move | total ms | writes held ms |');
  console.log('| --- | ---: | ---: |');
  for (const to of ['schema', 'database', 'pool'] as const) {
    const report = await moveTenant({
      connectionString: control,
      tenantId: mover,
      to,
      sources,
      databases: { eu_1: dedicated },
      ...(to === 'database' ? { connection: 'eu_1' } : {}),
      fenceGraceMs: 0,
    });
    moves.push({ to, totalMs: report.durationMs, holdMs: report.holdMs });
    console.log(`| -> ${to} | ${report.durationMs} | ${report.holdMs} |`);
  }
  await server.stop();
  await rm(directory, { recursive: true, force: true });
  console.log(
    JSON.stringify({
      benchmark: 'placement',
      rowsPerTenant,
      moveRows,
      lookups,
      databaseRouterRatio: databaseRatio,
      moves,
    }),
  );
}
