/**
 * Tenantry against the tenant-isolation patterns TypeScript projects use today, in one process on
 * one embedded PostgreSQL, same data, same pool size, interleaved rounds:
 *
 * - the pattern of Prisma's row-level-security example (prisma/prisma-client-extensions,
 *   `row-level-security/script.ts`): per request `BEGIN`, `SELECT set_config(
 *   'app.current_company_id', $1, TRUE)`, the query, `COMMIT`, each awaited one by one, here
 *   written with `pg` on a pool (no ORM cost on top), against a table carrying the example's
 *   `tenant_isolation_policy` and `bypass_rls_policy`;
 * - `@usebetterdev/tenant` (its core and Drizzle adapter, the code the umbrella package
 *   re-exports) with drizzle-orm on node-postgres, `runAs(tenantId, tx => …)`, against a table
 *   carrying the policy and trigger its CLI generates;
 * - Tenantry `withTenant` (and `oneShot`) with the guard, against a table set up by
 *   `tenantry.enable_tenant_isolation`.
 *
 * Two operations (a point read by id, a one-row insert returning its id) at 1, 8 and 32 in
 * flight: ops/s, p50 and p95 latency, and Tenantry's throughput over each peer's. Every variant
 * connects as the same non-superuser role, so RLS applies to all; before measuring, each one is
 * checked to read its tenant's row, to see nothing of another tenant's, and to write into its own
 * tenant. Prints markdown; the last line printed is one JSON object.
 */
import { readFile } from 'node:fs/promises';
import { betterTenant } from '@usebetterdev/tenant-core';
import { drizzleDatabase } from '@usebetterdev/tenant-drizzle';
import { eq, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/node-postgres';
import { pgTable, text, timestamp, uuid } from 'drizzle-orm/pg-core';
import type { Generated } from 'kysely';
import pg from 'pg';
import {
  bootstrapDatabase,
  createTenantry,
  defaultRoleNames,
  type EmbeddedPostgresServer,
  migrate,
  startEmbeddedPostgres,
} from 'tenantry';
import { formatMachine, type MachineDetails, machineDetails, percentile } from './report.ts';

const tenantCount = Number(process.env.BENCH_PEER_TENANTS ?? 1000);
const rowsPerTenant = Number(process.env.BENCH_PEER_ROWS_PER_TENANT ?? 100);
const roundMs = Number(process.env.BENCH_PEER_ROUND_MS ?? 1000);
const rounds = Number(process.env.BENCH_PEER_ROUNDS ?? 3);
const poolSize = Number(process.env.BENCH_PEER_POOL ?? 10);
const inFlightLevels = (process.env.BENCH_PEER_IN_FLIGHT ?? '1,8,32')
  .split(',')
  .map((value) => Number(value));
const database = 'tenantry_bench_peer';
const directory = '.tenantry/bench-peer-postgres';
const appRole = defaultRoleNames.app;

interface PeerDatabase {
  tenantry_items: {
    tenant_id: Generated<string>;
    id: Generated<string>;
    name: string;
    created_at: Generated<Date>;
  };
}

/** The usebetter table as Drizzle declares it (their `tenantId` column helper, minus its FK). */
const usebetterItems = pgTable('usebetter_items', {
  id: uuid('id').primaryKey().defaultRandom(),
  tenantId: uuid('tenant_id')
    .notNull()
    .default(sql`(current_setting('app.current_tenant', true))::uuid`),
  name: text('name').notNull(),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
});

/**
 * Three tables with the same columns, the same data and two btree indexes each (the primary key
 * and `(tenant_id, created_at)`), each with the isolation its approach prescribes.
 */
const schemaSql = `
  set role ${defaultRoleNames.owner};

  create table tenantry_items (
    tenant_id uuid not null,
    id uuid not null default gen_random_uuid(),
    name text not null,
    created_at timestamptz not null default now(),
    primary key (tenant_id, id)
  );
  create index on tenantry_items (tenant_id, created_at);
  select tenantry.enable_tenant_isolation('tenantry_items');

  -- Prisma's row-level-security example: policy, bypass policy and column default as it has them.
  create table prisma_items (
    id uuid primary key default gen_random_uuid(),
    tenant_id uuid not null default (current_setting('app.current_company_id'::text))::uuid,
    name text not null,
    created_at timestamptz not null default now()
  );
  create index on prisma_items (tenant_id, created_at);
  alter table prisma_items enable row level security;
  alter table prisma_items force row level security;
  create policy tenant_isolation_policy on prisma_items
    using (tenant_id = current_setting('app.current_company_id', true)::uuid);
  create policy bypass_rls_policy on prisma_items
    using (current_setting('app.bypass_rls', true)::text = 'on');
  grant select, insert, update, delete on prisma_items to ${appRole};

  -- @usebetterdev/tenant-cli 0.5.4 \`migrate\` output for a tenant table.
  create table usebetter_items (
    id uuid primary key default gen_random_uuid(),
    tenant_id uuid not null default (current_setting('app.current_tenant', true))::uuid,
    name text not null,
    created_at timestamptz not null default now()
  );
  create index on usebetter_items (tenant_id, created_at);
  create or replace function set_tenant_id() returns trigger as $$
  begin
    if new.tenant_id is null and current_setting('app.current_tenant', true) is not null then
      new.tenant_id := current_setting('app.current_tenant', true)::uuid;
    end if;
    return new;
  end;
  $$ language plpgsql;
  alter table usebetter_items enable row level security;
  alter table usebetter_items force row level security;
  create policy rls_tenant_usebetter_items on usebetter_items
    for all
    using ((tenant_id)::text = current_setting('app.current_tenant', true)
           or current_setting('app.bypass_rls', true) = 'true')
    with check ((tenant_id)::text = current_setting('app.current_tenant', true)
                or current_setting('app.bypass_rls', true) = 'true');
  create trigger set_tenant_id_trigger before insert on usebetter_items
    for each row execute procedure set_tenant_id();
  grant select, insert, update, delete on usebetter_items to ${appRole};

  reset role;`;

interface Key {
  readonly tenantId: string;
  readonly id: string;
}

interface Variant {
  readonly name: string;
  readonly table: string;
  /** Reads one row by id; returns the tenant id of the row found. */
  readonly read: (key: Key) => Promise<string | undefined>;
  /** Inserts one row for the tenant; returns its id. */
  readonly write: (tenantId: string) => Promise<string>;
}

type Operation = 'point read' | 'small write';

interface Cell {
  ops: number;
  ms: number;
  readonly samples: number[];
}

interface Result {
  readonly operation: Operation;
  readonly inFlight: number;
  readonly variant: string;
  readonly opsPerSec: number;
  readonly p50Ms: number;
  readonly p95Ms: number;
}

const prismaName = 'Prisma RLS example pattern';
const withTenantName = 'Tenantry `withTenant`';
const oneShotName = 'Tenantry `oneShot`';

export async function run(): Promise<void> {
  const machine = await machineDetails();
  const server = await startEmbeddedPostgres({ directory });
  try {
    await runWith(server, machine);
  } finally {
    await server.stop();
  }
}

async function runWith(server: EmbeddedPostgresServer, machine: MachineDetails): Promise<void> {
  const { adminUrl, appUrl, keys, tenants, postgresVersion } = await setUp(server);
  const usebetterVersion = await packageVersion('@usebetterdev/tenant-core');
  const drizzleVersion = await packageVersion('drizzle-orm');
  const usebetterName = `@usebetterdev/tenant ${usebetterVersion} (drizzle-orm ${drizzleVersion})`;

  const prismaPool = new pg.Pool({ connectionString: appUrl, max: poolSize });
  const drizzlePool = new pg.Pool({ connectionString: appUrl, max: poolSize });
  for (const pool of [prismaPool, drizzlePool]) pool.on('error', () => {});
  const tenantry = await createTenantry<PeerDatabase>({
    connectionString: appUrl,
    maxConnections: poolSize,
  });
  const better = betterTenant({
    database: drizzleDatabase(drizzle({ client: drizzlePool })),
    tenantResolver: { header: 'x-tenant-id' },
    // The default also loads the tenant's row in a second transaction for every runAs.
    loadTenant: false,
    telemetry: { enabled: false },
  });

  const variants: Variant[] = [
    {
      name: prismaName,
      table: 'prisma_items',
      read: async (key) => {
        const rows = await prismaTransaction(prismaPool, key.tenantId, (client) =>
          client.query<{ tenant_id: string }>(
            'select id, tenant_id, name, created_at from prisma_items where id = $1 limit 1',
            [key.id],
          ),
        );
        return rows.rows[0]?.tenant_id;
      },
      write: async (tenantId) => {
        const rows = await prismaTransaction(prismaPool, tenantId, (client) =>
          client.query<{ id: string }>('insert into prisma_items (name) values ($1) returning id', [
            'peer write',
          ]),
        );
        return requireId(rows.rows[0]?.id);
      },
    },
    {
      name: usebetterName,
      table: 'usebetter_items',
      read: async (key) => {
        const rows = await better.runAs(key.tenantId, (tx) =>
          tx.select().from(usebetterItems).where(eq(usebetterItems.id, key.id)).limit(1),
        );
        return rows[0]?.tenantId;
      },
      write: async (tenantId) => {
        const rows = await better.runAs(tenantId, (tx) =>
          tx
            .insert(usebetterItems)
            .values({ name: 'peer write' })
            .returning({ id: usebetterItems.id }),
        );
        return requireId(rows[0]?.id);
      },
    },
    {
      name: withTenantName,
      table: 'tenantry_items',
      read: async (key) => {
        const row = await tenantry.withTenant(key.tenantId, (db) =>
          db
            .selectFrom('tenantry_items')
            .select(['id', 'tenant_id', 'name', 'created_at'])
            .where('id', '=', key.id)
            .executeTakeFirst(),
        );
        return row?.tenant_id;
      },
      write: async (tenantId) => {
        const row = await tenantry.withTenant(tenantId, (db) =>
          db
            .insertInto('tenantry_items')
            .values({ name: 'peer write' })
            .returning('id')
            .executeTakeFirstOrThrow(),
        );
        return row.id;
      },
    },
    {
      name: oneShotName,
      table: 'tenantry_items',
      read: async (key) => {
        const row = await tenantry.oneShot(key.tenantId, (db) =>
          db
            .selectFrom('tenantry_items')
            .select(['id', 'tenant_id', 'name', 'created_at'])
            .where('id', '=', key.id)
            .executeTakeFirst(),
        );
        return row?.tenant_id;
      },
      write: async (tenantId) => {
        const row = await tenantry.oneShot(tenantId, (db) =>
          db
            .insertInto('tenantry_items')
            .values({ name: 'peer write' })
            .returning('id')
            .executeTakeFirstOrThrow(),
        );
        return row.id;
      },
    },
  ];

  try {
    await checkIsolation(variants, keys, adminUrl);
    const results = await measureAll(variants, keys, tenants);
    report(results, machine, postgresVersion, usebetterName);
  } finally {
    await Promise.all([prismaPool.end(), drizzlePool.end(), tenantry.close()]);
  }
}

/** The Prisma example's batch transaction, statement by statement, on one pooled connection. */
async function prismaTransaction<T>(
  pool: pg.Pool,
  tenantId: string,
  query: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query('begin');
    await client.query(`select set_config('app.current_company_id', $1, true)`, [tenantId]);
    const result = await query(client);
    await client.query('commit');
    return result;
  } catch (error) {
    await client.query('rollback').catch(() => {});
    throw error;
  } finally {
    client.release();
  }
}

function requireId(id: string | undefined): string {
  if (id === undefined) throw new Error('insert returned no row');
  return id;
}

/** Recreates the database, the three tables and their data; returns lookup keys. */
async function setUp(server: EmbeddedPostgresServer): Promise<{
  adminUrl: string;
  appUrl: string;
  keys: Key[];
  tenants: string[];
  postgresVersion: string;
}> {
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
  await migrate({ connectionString: adminUrl });
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    process.stderr.write(
      `peer: loading ${tenantCount} tenants x ${rowsPerTenant} rows x 3 tables\n`,
    );
    await admin.query(schemaSql);
    await admin.query(
      `insert into tenantry_items (tenant_id, name)
       select t.tenant_id, 'item ' || g
       from (select gen_random_uuid() as tenant_id from generate_series(1, $1)) t,
            generate_series(1, $2) g`,
      [tenantCount, rowsPerTenant],
    );
    for (const table of ['prisma_items', 'usebetter_items']) {
      await admin.query(
        `insert into ${table} (id, tenant_id, name, created_at)
         select id, tenant_id, name, created_at from tenantry_items`,
      );
    }
    for (const table of ['tenantry_items', 'prisma_items', 'usebetter_items']) {
      await admin.query(`vacuum analyze ${table}`);
    }
    const keys = await admin.query<Key>(
      `select tenant_id as "tenantId", id from tenantry_items order by random() limit 20000`,
    );
    const tenants = await admin.query<{ tenant_id: string }>(
      'select distinct tenant_id from tenantry_items order by 1',
    );
    const version = await admin.query<{ v: string }>(
      `select current_setting('server_version') as v`,
    );
    return {
      adminUrl,
      appUrl: server.connectionString(database, appRole, server.secrets.appPassword),
      keys: keys.rows,
      tenants: tenants.rows.map((row) => row.tenant_id),
      postgresVersion: `PostgreSQL ${version.rows[0]?.v ?? '?'}`,
    };
  } finally {
    await admin.end();
  }
}

/**
 * Every variant must read its tenant's row, see nothing through another tenant's context, and
 * write into its own tenant: otherwise the comparison would time something that is not isolated.
 */
async function checkIsolation(variants: readonly Variant[], keys: Key[], adminUrl: string) {
  const own = keys[0] as Key;
  const other = keys.find((key) => key.tenantId !== own.tenantId) as Key;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    for (const variant of variants) {
      if ((await variant.read(own)) !== own.tenantId) {
        throw new Error(`${variant.name}: did not read its own tenant's row`);
      }
      if ((await variant.read({ tenantId: other.tenantId, id: own.id })) !== undefined) {
        throw new Error(`${variant.name}: read another tenant's row`);
      }
      const id = await variant.write(own.tenantId);
      const written = await admin.query<{ tenant_id: string }>(
        `select tenant_id from ${variant.table} where id = $1`,
        [id],
      );
      if (written.rows[0]?.tenant_id !== own.tenantId) {
        throw new Error(`${variant.name}: wrote a row outside its tenant`);
      }
    }
  } finally {
    await admin.end();
  }
}

async function measureAll(
  variants: readonly Variant[],
  keys: readonly Key[],
  tenants: readonly string[],
): Promise<Result[]> {
  const operations: Operation[] = ['point read', 'small write'];
  const results: Result[] = [];
  const maxInFlight = Math.max(...inFlightLevels);
  for (const operation of operations) {
    const job = (variant: Variant) => {
      let next = Math.floor(Math.random() * keys.length);
      return operation === 'point read'
        ? () => variant.read(keys[next++ % keys.length] as Key)
        : () => variant.write(tenants[next++ % tenants.length] as string);
    };
    for (const variant of variants) {
      await drive(job(variant), maxInFlight, 500, { ops: 0, ms: 0, samples: [] });
    }
    for (const inFlight of inFlightLevels) {
      const cells = new Map<Variant, Cell>(
        variants.map((variant) => [variant, { ops: 0, ms: 0, samples: [] }]),
      );
      for (let round = 0; round < rounds; round++) {
        // Rotate the order so no variant always runs first (or right after the same one).
        const order = variants.map((_, i) => variants[(i + round) % variants.length] as Variant);
        for (const variant of order) {
          await drive(job(variant), inFlight, roundMs, cells.get(variant) as Cell);
        }
      }
      for (const [variant, cell] of cells) {
        results.push({
          operation,
          inFlight,
          variant: variant.name,
          opsPerSec: (cell.ops / cell.ms) * 1000,
          p50Ms: percentile(cell.samples, 0.5),
          p95Ms: percentile(cell.samples, 0.95),
        });
      }
      process.stderr.write(`peer: ${operation}, ${inFlight} in flight done\n`);
    }
  }
  return results;
}

/** Runs `operation` with `inFlight` loops for `durationMs`, adding to `cell`. */
async function drive(
  operation: () => Promise<unknown>,
  inFlight: number,
  durationMs: number,
  cell: Cell,
): Promise<void> {
  const started = performance.now();
  const deadline = started + durationMs;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (performance.now() < deadline) {
        const at = performance.now();
        await operation();
        cell.samples.push(performance.now() - at);
        cell.ops++;
      }
    }),
  );
  cell.ms += performance.now() - started;
}

function report(
  results: readonly Result[],
  machine: MachineDetails,
  postgresVersion: string,
  usebetterName: string,
): void {
  const find = (operation: Operation, inFlight: number, variant: string) =>
    results.find(
      (r) => r.operation === operation && r.inFlight === inFlight && r.variant === variant,
    ) as Result;
  const ratio = (a: number, b: number) => Number((a / b).toFixed(2));
  const lines: string[] = [];
  lines.push(
    `Machine: ${formatMachine({ ...machine, postgres: postgresVersion })}. ` +
      `${tenantCount} tenants × ${rowsPerTenant} rows per table, pools of ${poolSize} connections ` +
      `as the app role (RLS on), ${rounds} interleaved rounds of ${roundMs} ms per cell.`,
    '',
    '| operation | in flight | variant | ops/s | p50 ms | p95 ms | ops/s ÷ Prisma pattern |',
    '| --- | --: | --- | --: | --: | --: | --: |',
  );
  for (const r of results) {
    const base = find(r.operation, r.inFlight, prismaName);
    lines.push(
      `| ${r.operation} | ${r.inFlight} | ${r.variant} | ${Math.round(r.opsPerSec)} | ` +
        `${r.p50Ms.toFixed(2)} | ${r.p95Ms.toFixed(2)} | ${ratio(r.opsPerSec, base.opsPerSec).toFixed(2)} |`,
    );
  }
  lines.push(
    '',
    '| operation | in flight | `withTenant` ÷ Prisma pattern | `withTenant` ÷ usebetter | `oneShot` ÷ Prisma pattern | `oneShot` ÷ usebetter |',
    '| --- | --: | --: | --: | --: | --: |',
  );
  const summary: Record<string, number | string> = { bench: 'peer' };
  for (const operation of ['point read', 'small write'] as const) {
    for (const inFlight of inFlightLevels) {
      const prisma = find(operation, inFlight, prismaName).opsPerSec;
      const usebetter = find(operation, inFlight, usebetterName).opsPerSec;
      const withTenant = find(operation, inFlight, withTenantName).opsPerSec;
      const oneShot = find(operation, inFlight, oneShotName).opsPerSec;
      const cells = [
        ratio(withTenant, prisma),
        ratio(withTenant, usebetter),
        ratio(oneShot, prisma),
        ratio(oneShot, usebetter),
      ];
      lines.push(
        `| ${operation} | ${inFlight} | ${cells.map((value) => value.toFixed(2)).join(' | ')} |`,
      );
      const prefix = `${operation === 'point read' ? 'read' : 'write'}${inFlight}`;
      summary[`${prefix}_withTenant_vs_prisma`] = cells[0] as number;
      summary[`${prefix}_withTenant_vs_usebetter`] = cells[1] as number;
    }
  }
  for (const line of lines) console.log(line);
  console.log(JSON.stringify(summary));
}

/** The installed version of a package (the nearest `package.json` above its entry point). */
async function packageVersion(name: string): Promise<string> {
  let dir = new URL('.', import.meta.resolve(name));
  while (dir.pathname !== '/') {
    const manifest = await readFile(new URL('package.json', dir), 'utf8').then(
      (text) => JSON.parse(text) as { name?: string; version?: string },
      () => undefined,
    );
    if (manifest?.name === name) return manifest.version ?? 'unknown';
    dir = new URL('..', dir);
  }
  return 'unknown';
}
