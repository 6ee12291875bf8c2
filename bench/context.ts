/**
 * Tenant-scoped point lookups by primary key: Tenantry (context + RLS + guard) against raw `pg`
 * with an explicit `WHERE tenant_id = $1` on an identical table without RLS. Same process,
 * same server, same data, interleaved rounds. The last line printed is one JSON object.
 */
import os from 'node:os';
import pg from 'pg';
import { bootstrapDatabase, createTenantry, migrate, startEmbeddedPostgres } from 'tenantry';
import { ContextStatement } from '../src/context-statement.ts';
import { referenceAppSources } from './sources.ts';

interface Contacts {
  contacts: { tenant_id: string; id: string; name: string };
}

const tenantCount = Number(process.env.BENCH_TENANTS ?? 1000);
const rowsPerTenant = Number(process.env.BENCH_ROWS_PER_TENANT ?? 1000);
const roundMs = Number(process.env.BENCH_ROUND_MS ?? 1500);
const rounds = Number(process.env.BENCH_ROUNDS ?? 4);
const concurrency = 10;

type Lookup = (key: Key) => Promise<unknown>;
interface Key {
  readonly tenantId: string;
  readonly id: string;
}

export async function run(): Promise<void> {
  const server = await startEmbeddedPostgres({ directory: '.tenantry/bench-postgres' });
  const admin = server.connectionString('tenantry_bench');
  await bootstrapDatabase({
    adminConnectionString: server.connectionString('postgres'),
    database: 'tenantry_bench',
    passwords: { app: server.secrets.appPassword },
  });
  await migrate({
    connectionString: admin,
    sources: referenceAppSources(),
  });
  const keys = await loadData(admin);
  const appUrl = server.connectionString(
    'tenantry_bench',
    'tenantry_app',
    server.secrets.appPassword,
  );

  const raw = new pg.Pool({ connectionString: admin, max: concurrency });
  const tenantry = await createTenantry<Contacts>({
    connectionString: appUrl,
    maxConnections: concurrency,
  });
  const naive = new pg.Pool({ connectionString: appUrl, max: concurrency });
  const floor = new pg.Pool({ connectionString: appUrl, max: concurrency });
  for (const pool of [raw, naive, floor]) pool.on('error', () => {});

  const variants: Record<string, Lookup> = {
    'raw pg (WHERE tenant_id, no RLS)': async (key) => {
      const result = await raw.query(
        'select * from bench_plain_contacts where tenant_id = $1 and id = $2',
        [key.tenantId, key.id],
      );
      return result.rows[0];
    },
    'raw pg, named prepared statement': async (key) => {
      const result = await raw.query({
        name: 'bench_lookup',
        text: 'select * from bench_plain_contacts where tenant_id = $1 and id = $2',
        values: [key.tenantId, key.id],
      });
      return result.rows[0];
    },
    'tenantry oneShot': (key) =>
      tenantry.oneShot(key.tenantId, (db) =>
        db.selectFrom('contacts').selectAll().where('id', '=', key.id).executeTakeFirst(),
      ),
    'tenantry withTenant': (key) =>
      tenantry.withTenant(key.tenantId, (db) =>
        db.selectFrom('contacts').selectAll().where('id', '=', key.id).executeTakeFirst(),
      ),
    'hand-written BEGIN/SET LOCAL/query/COMMIT, one Sync': async (key) => {
      const client = await floor.connect();
      try {
        const { result } = await new ContextStatement(
          ['begin', `set local tenantry.tenant_id = '${key.tenantId}'`],
          'select * from contacts where tenant_id = $1 and id = $2',
          [key.tenantId, key.id],
          ['commit'],
        ).run(client);
        return result.rows[0];
      } finally {
        client.release();
      }
    },
    'naive (await BEGIN, set_config, query, COMMIT)': async (key) => {
      const client = await naive.connect();
      try {
        await client.query('begin');
        await client.query("select set_config('tenantry.tenant_id', $1, true)", [key.tenantId]);
        const result = await client.query('select * from contacts where id = $1', [key.id]);
        await client.query('commit');
        return result.rows[0];
      } finally {
        client.release();
      }
    },
  };

  for (const lookup of Object.values(variants)) {
    const found = await lookup(keys[0] as Key);
    if (found === undefined)
      throw new Error('benchmark lookup found nothing: the data set is broken');
  }

  const results: Record<string, { seq: number; conc: number }> = {};
  for (const mode of ['seq', 'conc'] as const) {
    const totals = new Map<string, { ops: number; ms: number }>();
    const workers = mode === 'seq' ? 1 : concurrency;
    await measure(variants, keys, workers, 300, new Map());
    for (let round = 0; round < rounds; round++)
      await measure(variants, keys, workers, roundMs, totals);
    for (const [name, total] of totals) {
      results[name] ??= { seq: 0, conc: 0 };
      (results[name] as { seq: number; conc: number })[mode] = (total.ops / total.ms) * 1000;
    }
  }

  await Promise.all([raw.end(), naive.end(), floor.end(), tenantry.close()]);
  await server.stop();

  const baseline = results['raw pg (WHERE tenant_id, no RLS)'] as { seq: number; conc: number };
  const cpu = os.cpus()[0]?.model ?? 'unknown cpu';
  console.log(
    `context benchmark: ${tenantCount} tenants x ${rowsPerTenant} rows, ${rounds} interleaved rounds of ${roundMs} ms`,
  );
  console.log(
    `node ${process.version}, ${os.cpus().length} x ${cpu}, PostgreSQL embedded on loopback\n`,
  );
  console.log(
    `${'variant'.padEnd(48)} ${'seq ops/s'.padStart(10)} ${'ratio'.padStart(6)} ${'conc10 ops/s'.padStart(13)} ${'ratio'.padStart(6)}`,
  );
  for (const [name, result] of Object.entries(results)) {
    console.log(
      `${name.padEnd(48)} ${result.seq.toFixed(0).padStart(10)} ${(result.seq / baseline.seq).toFixed(2).padStart(6)} ${result.conc
        .toFixed(0)
        .padStart(13)} ${(result.conc / baseline.conc).toFixed(2).padStart(6)}`,
    );
  }
  const tenantryResult = results['tenantry oneShot'] as { seq: number; conc: number };
  const prepared = results['raw pg, named prepared statement'] as { seq: number; conc: number };
  const ratio = (value: number, base: number) => Number((value / base).toFixed(3));
  console.log(
    JSON.stringify({
      bench: 'context',
      seq_ratio: ratio(tenantryResult.seq, baseline.seq),
      conc_ratio: ratio(tenantryResult.conc, baseline.conc),
      seq_ratio_vs_prepared: ratio(tenantryResult.seq, prepared.seq),
      conc_ratio_vs_prepared: ratio(tenantryResult.conc, prepared.conc),
    }),
  );
}

/** Runs each variant in turn for `durationMs` with `workers` concurrent loops. */
async function measure(
  variants: Record<string, Lookup>,
  keys: readonly Key[],
  workers: number,
  durationMs: number,
  totals: Map<string, { ops: number; ms: number }>,
): Promise<void> {
  for (const [name, lookup] of Object.entries(variants)) {
    let ops = 0;
    let cursor = Math.floor(Math.random() * keys.length);
    const started = performance.now();
    const deadline = started + durationMs;
    await Promise.all(
      Array.from({ length: workers }, async () => {
        while (performance.now() < deadline) {
          cursor = (cursor + 1) % keys.length;
          await lookup(keys[cursor] as Key);
          ops++;
        }
      }),
    );
    const total = totals.get(name) ?? { ops: 0, ms: 0 };
    total.ops += ops;
    total.ms += performance.now() - started;
    totals.set(name, total);
  }
}

/** Loads the tenants and rows once (kept between runs) and returns random lookup keys. */
async function loadData(adminUrl: string): Promise<Key[]> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    const existing = await client.query<{ n: number }>('select count(*)::int as n from contacts');
    if ((existing.rows[0]?.n ?? 0) !== tenantCount * rowsPerTenant) {
      console.error(`loading ${tenantCount * rowsPerTenant} rows for ${tenantCount} tenants...`);
      await client.query('begin');
      await client.query('set local role tenantry_owner');
      await client.query('truncate contacts cascade');
      await client.query('drop table if exists bench_plain_contacts');
      await client.query(
        `insert into contacts (tenant_id, id, name)
         select t.tenant_id, gen_random_uuid(), 'contact ' || g
         from (select gen_random_uuid() as tenant_id from generate_series(1, $1)) t,
              generate_series(1, $2) g`,
        [tenantCount, rowsPerTenant],
      );
      await client.query('create table bench_plain_contacts (like contacts including all)');
      await client.query('insert into bench_plain_contacts select * from contacts');
      await client.query('commit');
      await client.query('vacuum analyze contacts');
      await client.query('vacuum analyze bench_plain_contacts');
    }
    const sample = await client.query<Key>(
      `select tenant_id as "tenantId", id from contacts tablesample system (2) limit 20000`,
    );
    return sample.rows.sort(() => Math.random() - 0.5);
  } finally {
    await client.end();
  }
}
