/**
 * GET one contact by id over HTTP: the reference app's full stack (JWT verification, tenant
 * directory, request unit of work, guard, RLS, schemas) against a bare Fastify handler running
 * the same lookup with `pg` and an explicit `WHERE tenant_id = $1` (superuser, no RLS, no
 * auth). Same process, same server, same data, interleaved rounds driven by autocannon. The
 * last line printed is one JSON object.
 */
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import autocannon from 'autocannon';
import Fastify from 'fastify';
import { SignJWT } from 'jose';
import pg from 'pg';
import {
  bootstrapDatabase,
  createMigrationCheck,
  createTenantDirectory,
  createTenantry,
  migrate,
  startEmbeddedPostgres,
} from 'tenantry';
import { buildApp } from '../app/app.ts';
import type { AppDatabase } from '../app/database.ts';
import { referenceAppSources } from './sources.ts';

const tenantCount = Number(process.env.BENCH_TENANTS ?? 200);
const contactsPerTenant = Number(process.env.BENCH_CONTACTS_PER_TENANT ?? 50);
const roundSec = Number(process.env.BENCH_ROUND_SEC ?? 5);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 20);
const poolSize = 10;

/** What GET /v1/contacts/:id reads (the contact and its tags), written by hand. */
const bareSql = `
  select c.id, c.name, c.phone, c.email, c.attributes, c.version, c.created_at, c.updated_at,
         (select coalesce(json_agg(agg), '[]') from (
            select t.id, t.name from contact_tags ct
            join tags t on t.tenant_id = ct.tenant_id and t.id = ct.tag_id
            where ct.tenant_id = $1 and ct.contact_id = c.id order by t.name) as agg) as tags
  from contacts c where c.tenant_id = $1 and c.id = $2`;

interface Target {
  readonly tenantId: string;
  readonly contactId: string;
  readonly token: string;
}

async function loadData(adminUrl: string): Promise<{ tenantId: string; contactId: string }[]> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    const existing = await client.query<{ n: number }>(
      "select count(*)::int as n from tenantry.tenants where slug like 'bench-%'",
    );
    if (existing.rows[0]?.n !== tenantCount) {
      process.stdout.write(`loading ${tenantCount} tenants x ${contactsPerTenant} contacts...\n`);
      await client.query('begin');
      await client.query(
        "delete from contacts where tenant_id in (select id from tenantry.tenants where slug like 'bench-%')",
      );
      await client.query("delete from tenantry.tenants where slug like 'bench-%'");
      await client.query(
        `insert into tenantry.tenants (slug, name)
         select 'bench-' || g, 'Bench ' || g from generate_series(1, $1) g`,
        [tenantCount],
      );
      await client.query(
        `insert into contacts (tenant_id, name, phone, email, attributes)
         select t.id, 'Contact ' || g, '+1555' || lpad(g::text, 7, '0'), 'c' || g || '@example.com',
                jsonb_build_object('plan', case when g % 3 = 0 then 'gold' else 'free' end)
         from tenantry.tenants t, generate_series(1, $1) g where t.slug like 'bench-%'`,
        [contactsPerTenant],
      );
      await client.query('commit');
      await client.query('analyze contacts');
    }
    const rows = await client.query<{ tenant_id: string; id: string }>(
      `select c.tenant_id, c.id from contacts c
       join tenantry.tenants t on t.id = c.tenant_id where t.slug like 'bench-%'`,
    );
    return rows.rows.map((row) => ({ tenantId: row.tenant_id, contactId: row.id }));
  } finally {
    await client.end();
  }
}

async function measure(
  url: string,
  targets: readonly Target[],
  withAuth: boolean,
): Promise<number> {
  let next = 0;
  const result = await autocannon({
    url,
    connections,
    duration: roundSec,
    requests: [
      {
        method: 'GET',
        setupRequest: (request) => {
          const target = targets[next++ % targets.length] as Target;
          request.path = withAuth
            ? `/v1/contacts/${target.contactId}`
            : `/bare/${target.tenantId}/contacts/${target.contactId}`;
          if (withAuth) {
            request.headers = { ...request.headers, authorization: `Bearer ${target.token}` };
          }
          return request;
        },
      },
    ],
  });
  const failures = result.non2xx + result.errors + result.timeouts;
  if (failures > 0) throw new Error(`${url}: ${failures} failed requests`);
  return result.requests.average;
}

export async function run(): Promise<void> {
  const server = await startEmbeddedPostgres({ directory: '.tenantry/bench-http-postgres' });
  const adminUrl = server.connectionString('tenantry_bench');
  const appUrl = server.connectionString(
    'tenantry_bench',
    'tenantry_app',
    server.secrets.appPassword,
  );
  const sources = referenceAppSources();
  await bootstrapDatabase({
    adminConnectionString: server.connectionString('postgres'),
    database: 'tenantry_bench',
    passwords: { app: server.secrets.appPassword },
  });
  await migrate({ connectionString: adminUrl, sources });
  const rows = await loadData(adminUrl);

  const auth = {
    mode: 'local' as const,
    jwtSecret: randomBytes(32).toString('hex'),
    issuer: 'tenantry-bench',
    audience: 'tenantry-bench-api',
    accessTokenTtlSec: 3600,
    refreshTokenTtlSec: 3600,
  };
  const secret = new TextEncoder().encode(auth.jwtSecret);
  const tokens = new Map<string, string>();
  for (const { tenantId } of rows) {
    if (tokens.has(tenantId)) continue;
    tokens.set(
      tenantId,
      await new SignJWT({ tenant_id: tenantId, role: 'member' })
        .setProtectedHeader({ alg: 'HS256' })
        .setSubject(crypto.randomUUID())
        .setIssuer(auth.issuer)
        .setAudience(auth.audience)
        .setIssuedAt()
        .setExpirationTime('2h')
        .sign(secret),
    );
  }
  const targets: Target[] = rows
    .map((row) => ({ ...row, token: tokens.get(row.tenantId) as string }))
    .sort(() => Math.random() - 0.5);

  const tenantry = await createTenantry<AppDatabase>({
    connectionString: appUrl,
    maxConnections: poolSize,
  });
  const directory = await createTenantDirectory({ connectionString: appUrl });
  const app = await buildApp({
    tenantry,
    directory,
    auth,
    pendingMigrations: await createMigrationCheck({ sources }),
  });
  const appAddress = await app.listen({ port: 0, host: '127.0.0.1' });

  const pool = new pg.Pool({ connectionString: adminUrl, max: poolSize });
  pool.on('error', () => {});
  const bare = Fastify();
  bare.get<{ Params: { tenantId: string; id: string } }>(
    '/bare/:tenantId/contacts/:id',
    async (request, reply) => {
      const result = await pool.query(bareSql, [request.params.tenantId, request.params.id]);
      if (result.rows.length === 0) return reply.code(404).send({ error: 'not found' });
      return result.rows[0];
    },
  );
  const bareAddress = await bare.listen({ port: 0, host: '127.0.0.1' });

  try {
    process.stdout.write(
      `${os.cpus()[0]?.model ?? 'cpu'} x${os.cpus().length}, ${targets.length} contacts in ${tokens.size} tenants, ` +
        `${connections} connections, ${rounds} rounds of ${roundSec}s per variant\n`,
    );
    await measure(bareAddress, targets, false);
    await measure(appAddress, targets, true);
    const bareRates: number[] = [];
    const appRates: number[] = [];
    for (let round = 0; round < rounds; round++) {
      bareRates.push(await measure(bareAddress, targets, false));
      appRates.push(await measure(appAddress, targets, true));
      process.stdout.write(
        `round ${round + 1}: bare ${bareRates.at(-1)?.toFixed(0)} req/s, tenantry ${appRates.at(-1)?.toFixed(0)} req/s\n`,
      );
    }
    const median = (values: number[]) =>
      [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? 0;
    const bareRps = median(bareRates);
    const appRps = median(appRates);
    process.stdout.write(
      `${JSON.stringify({ bench: 'http', ratio: Number((appRps / bareRps).toFixed(3)), tenantry_rps: Math.round(appRps), bare_rps: Math.round(bareRps) })}\n`,
    );
  } finally {
    await app.close();
    await bare.close();
    await pool.end();
    await directory.close();
    await tenantry.close();
    await server.stop();
  }
}
