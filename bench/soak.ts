/**
 * Soak (not in CI): SOAK_REQUESTS requests (default 1,000,000) alternating across SOAK_TENANTS
 * workspaces (default 1,000) through the reference app's HTTP server on 127.0.0.1, with the app's
 * Tenantry pool at SOAK_POOL connections (default 4) and SOAK_IN_FLIGHT requests in flight
 * (default 16) over keep-alive connections. The app runs in a child process (this file with
 * `serve`), so its memory is measured apart from the load generator's.
 *
 * Request i goes to workspace i mod SOAK_TENANTS; of every 10, 5 list the workspace's newest
 * contacts, 4 read one of its contacts by id, 1 creates a contact. Every contact is named
 * `soak <workspace number> …` and every id is remembered with its workspace, so each row of each
 * response is checked to belong to the workspace that asked: wrong-tenant rows are counted (the
 * expected count is 0). At the end every acknowledged create must be in the database, in its
 * workspace. The app's RSS and heap (after a GC) are sampled at the start, every 10 % and at the
 * end. Progress goes to stderr; the summary to stdout and, unless `--no-write`, to the generated
 * `soak` section of docs/benchmarks.md. Exits 1 when a check failed.
 *
 * `npm run soak` (about 15-20 min on a 2-core machine), or smaller:
 * `SOAK_REQUESTS=100000 npm run soak`.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { SignJWT } from 'jose';
import pg from 'pg';
import {
  bootstrapDatabase,
  createMigrationCheck,
  createTenantDirectory,
  createTenantry,
  defaultRoleNames,
  migrate,
  startEmbeddedPostgres,
} from 'tenantry';
import { buildApp } from '../app/app.ts';
import type { AuthConfig } from '../app/config.ts';
import type { AppDatabase } from '../app/database.ts';
import {
  busyMachineNote,
  formatMachine,
  type MachineDetails,
  machineDetails,
  writeDocSection,
} from './report.ts';
import { referenceAppSources } from './sources.ts';

const totalRequests = Number(process.env.SOAK_REQUESTS ?? 1_000_000);
const tenantCount = Number(process.env.SOAK_TENANTS ?? 1_000);
const poolSize = Number(process.env.SOAK_POOL ?? 4);
const inFlight = Number(process.env.SOAK_IN_FLIGHT ?? 16);
const contactsPerTenant = Number(process.env.SOAK_CONTACTS_PER_TENANT ?? 10);
const listLimit = 10;
const database = 'tenantry_soak';
const directory = '.tenantry/soak-postgres';

/** What the parent sends the app process to start it. */
interface ServeRequest {
  readonly type: 'serve';
  readonly appUrl: string;
  readonly auth: AuthConfig & { readonly mode: 'local' };
  readonly poolSize: number;
}

/** What the app process answers. */
type ServeMessage =
  | { readonly type: 'listening'; readonly port: number }
  | { readonly type: 'memory'; readonly memory: MemorySample };

interface MemorySample {
  readonly rssMiB: number;
  readonly heapUsedMiB: number;
  readonly heapTotalMiB: number;
  readonly externalMiB: number;
  /** Whether the heap was measured right after a full GC (`--expose-gc`). */
  readonly afterGc: boolean;
}

interface Workspace {
  readonly index: number;
  readonly tenantId: string;
  readonly token: string;
  readonly contactIds: string[];
}

interface Checkpoint {
  readonly label: string;
  readonly requests: number;
  /** The machine's 1-minute load average then. */
  readonly loadAverage: number;
  readonly app: MemorySample;
  readonly loadGenerator: MemorySample;
}

interface Tally {
  requests: number;
  rowsChecked: number;
  wrongTenantRows: number;
  unexpectedStatus: number;
  failedRequests: number;
  creates: number;
  readonly statuses: Map<number, number>;
  readonly firstProblems: string[];
  /** Latency histogram in 50 µs buckets up to 5 s. */
  readonly latency: Uint32Array;
}

if (process.argv[2] === 'serve') {
  serve();
} else {
  process.exitCode = await main();
}

/** The app process: waits for its configuration, serves until told to stop. */
function serve(): void {
  let close: (() => Promise<unknown>) | undefined;
  process.on('message', async (message: ServeRequest | { type: 'memory' } | { type: 'stop' }) => {
    if (message.type === 'serve') {
      const tenantry = await createTenantry<AppDatabase>({
        connectionString: message.appUrl,
        maxConnections: message.poolSize,
      });
      const app = await buildApp({
        tenantry,
        directory: await createTenantDirectory({ connectionString: message.appUrl }),
        auth: message.auth,
        pendingMigrations: await createMigrationCheck({ sources: referenceAppSources() }),
      });
      await app.listen({ port: 0, host: '127.0.0.1' });
      const address = app.server.address();
      close = () => app.close();
      tellParent({
        type: 'listening',
        port: typeof address === 'object' && address ? address.port : 0,
      });
    } else if (message.type === 'memory') {
      tellParent({ type: 'memory', memory: sampleMemory() });
    } else {
      await close?.();
      process.exit(0);
    }
  });
}

function tellParent(message: ServeMessage): void {
  process.send?.(message);
}

function loadAverage(): number {
  return Number((os.loadavg()[0] ?? 0).toFixed(2));
}

function sampleMemory(): MemorySample {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const usage = process.memoryUsage();
  const mib = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10;
  return {
    rssMiB: mib(usage.rss),
    heapUsedMiB: mib(usage.heapUsed),
    heapTotalMiB: mib(usage.heapTotal),
    externalMiB: mib(usage.external),
    afterGc: gc !== undefined,
  };
}

async function main(): Promise<number> {
  const write = !process.argv.includes('--no-write');
  const machine = await machineDetails();
  const server = await startEmbeddedPostgres({ directory });
  let app: ChildProcess | undefined;
  try {
    const adminUrl = server.connectionString(database);
    const appUrl = server.connectionString(
      database,
      defaultRoleNames.app,
      server.secrets.appPassword,
    );
    const auth = Object.freeze({
      mode: 'local' as const,
      jwtSecret: randomBytes(32).toString('hex'),
      issuer: 'tenantry-soak',
      audience: 'tenantry-soak-api',
      accessTokenTtlSec: 3600,
      refreshTokenTtlSec: 3600,
    });
    const workspaces = await setUp(server, adminUrl, auth);

    app = fork(fileURLToPath(import.meta.url), ['serve'], {
      execArgv: [...process.execArgv.filter((flag) => flag !== '--expose-gc'), '--expose-gc'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const appProcess = app;
    const exited = new Promise<never>((_, reject) => {
      appProcess.once('exit', (code) => reject(new Error(`the app process exited (${code})`)));
    });
    const serveRequest: ServeRequest = { type: 'serve', appUrl, auth, poolSize };
    appProcess.send(serveRequest);
    const port = await Promise.race([
      nextMessage(appProcess, 'listening').then((message) => message.port),
      exited,
    ]);
    const agent = new http.Agent({ keepAlive: true, maxSockets: inFlight });
    const appMemory = async () => {
      appProcess.send({ type: 'memory' });
      return (await Promise.race([nextMessage(appProcess, 'memory'), exited])).memory;
    };
    const checkpoints: Checkpoint[] = [
      {
        label: 'start',
        requests: 0,
        loadAverage: loadAverage(),
        app: await appMemory(),
        loadGenerator: sampleMemory(),
      },
    ];

    const tally: Tally = {
      requests: 0,
      rowsChecked: 0,
      wrongTenantRows: 0,
      unexpectedStatus: 0,
      failedRequests: 0,
      creates: 0,
      statuses: new Map(),
      firstProblems: [],
      latency: new Uint32Array(100_000),
    };
    const owners = new Map<string, number>();
    for (const workspace of workspaces) {
      for (const id of workspace.contactIds) owners.set(id, workspace.index);
    }
    const acknowledged = new Map<number, number>();

    process.stderr.write(
      `soak: ${totalRequests} requests over ${tenantCount} workspaces, ${inFlight} in flight, pool of ${poolSize}\n`,
    );
    const started = performance.now();
    let next = 0;
    let nextCheckpoint = 1;
    let lastProgress = started;
    let checkpointing: Promise<void> = Promise.resolve();
    await Promise.race([
      exited,
      Promise.all(
        Array.from({ length: inFlight }, async () => {
          while (next < totalRequests) {
            const i = next++;
            await oneRequest(i, port, agent, workspaces, owners, acknowledged, tally);
            const done = tally.requests;
            if (done >= (totalRequests * nextCheckpoint) / 10 && nextCheckpoint < 10) {
              const label = `${nextCheckpoint * 10} %`;
              nextCheckpoint++;
              checkpointing = checkpointing.then(async () => {
                checkpoints.push({
                  label,
                  requests: done,
                  loadAverage: loadAverage(),
                  app: await appMemory(),
                  loadGenerator: sampleMemory(),
                });
              });
            }
            const now = performance.now();
            if (now - lastProgress > 5000) {
              lastProgress = now;
              process.stderr.write(
                `soak: ${done}/${totalRequests} (${((done / totalRequests) * 100).toFixed(1)} %), ` +
                  `${Math.round(done / ((now - started) / 1000))} req/s, wrong-tenant rows ${tally.wrongTenantRows}, ` +
                  `unexpected ${tally.unexpectedStatus + tally.failedRequests}\n`,
              );
            }
          }
        }),
      ),
    ]);
    const seconds = (performance.now() - started) / 1000;
    await checkpointing;
    checkpoints.push({
      label: 'end',
      requests: tally.requests,
      loadAverage: loadAverage(),
      app: await appMemory(),
      loadGenerator: sampleMemory(),
    });
    agent.destroy();

    const lost = await verifyWrites(adminUrl, workspaces, acknowledged);
    const summary = render(machine, tally, checkpoints, seconds, lost);
    console.log(summary);
    const json = {
      bench: 'soak',
      requests: tally.requests,
      tenants: tenantCount,
      pool: poolSize,
      inFlight,
      reqPerSec: Math.round(tally.requests / seconds),
      rowsChecked: tally.rowsChecked,
      wrongTenantRows: tally.wrongTenantRows,
      unexpected: tally.unexpectedStatus + tally.failedRequests,
      creates: tally.creates,
      lostOrMisplacedWrites: lost,
      appRssStartMiB: checkpoints[0]?.app.rssMiB,
      appRss10MiB: checkpoints[1]?.app.rssMiB,
      appRssEndMiB: checkpoints.at(-1)?.app.rssMiB,
      appHeapStartMiB: checkpoints[0]?.app.heapUsedMiB,
      appHeap10MiB: checkpoints[1]?.app.heapUsedMiB,
      appHeapEndMiB: checkpoints.at(-1)?.app.heapUsedMiB,
    };
    console.log(JSON.stringify(json));
    if (write) {
      await writeDocSection('soak', summary);
      process.stderr.write('soak: docs/benchmarks.md updated\n');
    }
    const failed =
      tally.wrongTenantRows > 0 ||
      tally.unexpectedStatus + tally.failedRequests > 0 ||
      lost > 0 ||
      tally.requests !== totalRequests;
    return failed ? 1 : 0;
  } finally {
    if (app !== undefined && app.exitCode === null) {
      app.send({ type: 'stop' });
      await new Promise((resolve) => app?.once('exit', resolve));
    }
    await server.stop();
  }
}

function nextMessage<T extends ServeMessage['type']>(
  child: ChildProcess,
  type: T,
): Promise<Extract<ServeMessage, { type: T }>> {
  return new Promise((resolve) => {
    const listener = (message: ServeMessage) => {
      if (message.type !== type) return;
      child.off('message', listener);
      resolve(message as Extract<ServeMessage, { type: T }>);
    };
    child.on('message', listener);
  });
}

/** Sends request `i` and checks its answer. */
async function oneRequest(
  i: number,
  port: number,
  agent: http.Agent,
  workspaces: readonly Workspace[],
  owners: Map<string, number>,
  acknowledged: Map<number, number>,
  tally: Tally,
): Promise<void> {
  const workspace = workspaces[i % workspaces.length] as Workspace;
  const kind = i % 10;
  const prefix = `soak ${workspace.index} `;
  const started = performance.now();
  let response: { status: number; body: string };
  let expected: number;
  try {
    if (kind < 5) {
      expected = 200;
      response = await request(
        port,
        agent,
        'GET',
        `/v1/contacts?limit=${listLimit}&sort=-created_at`,
        workspace.token,
      );
    } else if (kind < 9) {
      expected = 200;
      const id =
        workspace.contactIds[Math.floor(i / workspaces.length) % workspace.contactIds.length];
      response = await request(port, agent, 'GET', `/v1/contacts/${id}`, workspace.token);
    } else {
      expected = 201;
      response = await request(port, agent, 'POST', '/v1/contacts', workspace.token, {
        name: `${prefix}w${i}`,
      });
    }
  } catch (error) {
    tally.requests++;
    tally.failedRequests++;
    remember(tally, `request ${i}: ${(error as Error).message}`);
    return;
  }
  const bucket = Math.min(tally.latency.length - 1, Math.floor((performance.now() - started) * 20));
  tally.latency[bucket] = (tally.latency[bucket] ?? 0) + 1;
  tally.requests++;
  tally.statuses.set(response.status, (tally.statuses.get(response.status) ?? 0) + 1);
  if (response.status !== expected) {
    tally.unexpectedStatus++;
    remember(tally, `request ${i}: status ${response.status}: ${response.body.slice(0, 200)}`);
    return;
  }
  const body = JSON.parse(response.body) as {
    items?: { id: string; name: string }[];
    id?: string;
    name?: string;
  };
  const rows = kind < 5 ? (body.items ?? []) : [{ id: body.id ?? '', name: body.name ?? '' }];
  for (const row of rows) {
    tally.rowsChecked++;
    const owner = owners.get(row.id);
    if (!row.name.startsWith(prefix) || (owner !== undefined && owner !== workspace.index)) {
      tally.wrongTenantRows++;
      remember(tally, `request ${i}: workspace ${workspace.index} got ${row.id} "${row.name}"`);
    }
  }
  if (kind === 9 && body.id !== undefined) {
    tally.creates++;
    owners.set(body.id, workspace.index);
    acknowledged.set(workspace.index, (acknowledged.get(workspace.index) ?? 0) + 1);
  }
}

function remember(tally: Tally, problem: string): void {
  if (tally.firstProblems.length < 10) tally.firstProblems.push(problem);
}

function request(
  port: number,
  agent: http.Agent,
  method: string,
  path: string,
  token: string,
  json?: unknown,
): Promise<{ status: number; body: string }> {
  const payload = json === undefined ? undefined : JSON.stringify(json);
  return new Promise((resolve, reject) => {
    const outgoing = http.request(
      {
        host: '127.0.0.1',
        port,
        method,
        path,
        agent,
        headers: {
          authorization: `Bearer ${token}`,
          ...(payload === undefined
            ? {}
            : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }),
        },
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () =>
          resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString() }),
        );
        response.on('error', reject);
      },
    );
    outgoing.on('error', reject);
    outgoing.end(payload);
  });
}

/** Recreates the database with the workspaces and their contacts; signs a token for each. */
async function setUp(
  server: Awaited<ReturnType<typeof startEmbeddedPostgres>>,
  adminUrl: string,
  auth: ServeRequest['auth'],
): Promise<Workspace[]> {
  const maintenance = new pg.Client({ connectionString: server.connectionString('postgres') });
  await maintenance.connect();
  await maintenance.query(`drop database if exists ${database} with (force)`);
  await maintenance.end();
  await bootstrapDatabase({
    adminConnectionString: server.connectionString('postgres'),
    database,
    passwords: { app: server.secrets.appPassword },
  });
  await migrate({ connectionString: adminUrl, sources: referenceAppSources() });
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    process.stderr.write(
      `soak: loading ${tenantCount} workspaces x ${contactsPerTenant} contacts\n`,
    );
    // Enterprise: no contact quota, so the creates never hit a limit however long the soak.
    await admin.query(
      `insert into tenantry.tenants (slug, name, plan)
       select 'soak-' || g, 'Soak ' || g, 'enterprise' from generate_series(0, $1 - 1) g`,
      [tenantCount],
    );
    await admin.query(
      `insert into contacts (tenant_id, name)
       select t.id, 'soak ' || substr(t.slug, 6) || ' c' || g
       from tenantry.tenants t, generate_series(1, $1) g where t.slug like 'soak-%'`,
      [contactsPerTenant],
    );
    await admin.query('vacuum analyze contacts');
    const rows = await admin.query<{ slug: string; id: string; contact_ids: string[] }>(
      `select t.slug, t.id, array_agg(c.id) as contact_ids
       from tenantry.tenants t join contacts c on c.tenant_id = t.id
       where t.slug like 'soak-%' group by t.slug, t.id`,
    );
    const secret = new TextEncoder().encode(auth.jwtSecret);
    const workspaces: Workspace[] = [];
    for (const row of rows.rows) {
      workspaces.push({
        index: Number(row.slug.slice(5)),
        tenantId: row.id,
        contactIds: row.contact_ids,
        token: await new SignJWT({ tenant_id: row.id, role: 'admin' })
          .setProtectedHeader({ alg: 'HS256' })
          .setSubject(randomUUID())
          .setIssuer(auth.issuer)
          .setAudience(auth.audience)
          .setIssuedAt()
          .setExpirationTime('12h')
          .sign(secret),
      });
    }
    return workspaces.sort((a, b) => a.index - b.index);
  } finally {
    await admin.end();
  }
}

/**
 * Every acknowledged create must be in its workspace, and no contact may carry another
 * workspace's name: returns how many writes are missing or misplaced.
 */
async function verifyWrites(
  adminUrl: string,
  workspaces: readonly Workspace[],
  acknowledged: ReadonlyMap<number, number>,
): Promise<number> {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    const counts = await admin.query<{ slug: string; n: number }>(
      `select t.slug, count(c.id)::int as n from tenantry.tenants t
       left join contacts c on c.tenant_id = t.id and c.name like '% w%'
       where t.slug like 'soak-%' group by t.slug`,
    );
    let lost = 0;
    const found = new Map(counts.rows.map((row) => [Number(row.slug.slice(5)), row.n]));
    for (const workspace of workspaces) {
      lost += Math.abs(
        (acknowledged.get(workspace.index) ?? 0) - (found.get(workspace.index) ?? 0),
      );
    }
    const misplaced = await admin.query<{ n: number }>(
      `select count(*)::int as n from contacts c join tenantry.tenants t on t.id = c.tenant_id
       where c.name not like 'soak ' || substr(t.slug, 6) || ' %'`,
    );
    return lost + (misplaced.rows[0]?.n ?? 0);
  } finally {
    await admin.end();
  }
}

function latencyPercentile(histogram: Uint32Array, q: number): number {
  let total = 0;
  for (const count of histogram) total += count;
  const rank = Math.ceil(total * q);
  let seen = 0;
  for (let bucket = 0; bucket < histogram.length; bucket++) {
    seen += histogram[bucket] ?? 0;
    if (seen >= rank) return (bucket + 1) / 20;
  }
  return Number.POSITIVE_INFINITY;
}

function render(
  machine: MachineDetails,
  tally: Tally,
  checkpoints: readonly Checkpoint[],
  seconds: number,
  lost: number,
): string {
  const unexpected = tally.unexpectedStatus + tally.failedRequests;
  const statuses = [...tally.statuses]
    .sort(([a], [b]) => a - b)
    .map(([status, count]) => `${status}: ${count}`)
    .join(', ');
  const busyNote = busyMachineNote([machine.cpuBusyPercent]);
  const lines = [
    `### Latest soak: ${tally.requests.toLocaleString('en-US')} requests`,
    '',
    `Machine: ${formatMachine(machine)}.`,
    '',
    ...(busyNote === undefined ? [] : [busyNote, '']),
    `Command: \`SOAK_REQUESTS=${totalRequests} SOAK_TENANTS=${tenantCount} SOAK_POOL=${poolSize} ` +
      `SOAK_IN_FLIGHT=${inFlight} npm run soak\` (the full soak is \`npm run soak\`: 1,000,000 requests).`,
    '',
    '| requests | workspaces | app pool | in flight | req/s | p50 ms | p95 ms | p99 ms | rows checked | wrong-tenant rows | unexpected responses | creates | lost or misplaced writes |',
    '| --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |',
    `| ${tally.requests} | ${tenantCount} | ${poolSize} | ${inFlight} | ${Math.round(tally.requests / seconds)} | ` +
      `${latencyPercentile(tally.latency, 0.5).toFixed(2)} | ${latencyPercentile(tally.latency, 0.95).toFixed(2)} | ` +
      `${latencyPercentile(tally.latency, 0.99).toFixed(2)} | ${tally.rowsChecked} | **${tally.wrongTenantRows}** | ` +
      `${unexpected} | ${tally.creates} | **${lost}** |`,
    '',
    `Statuses: ${statuses}. Duration ${(seconds / 60).toFixed(1)} min.`,
    '',
    `Memory of the app process (${checkpoints[0]?.app.afterGc === true ? 'heap measured right after a full GC' : 'heap without a forced GC'}) and of the load generator:`,
    '',
    "| checkpoint | requests | app RSS MiB | app heap used MiB | app heap total MiB | app external MiB | load generator RSS MiB | load average (the soak's own included) |",
    '| --- | --: | --: | --: | --: | --: | --: | --: |',
    ...checkpoints.map(
      (c) =>
        `| ${c.label} | ${c.requests} | ${c.app.rssMiB} | ${c.app.heapUsedMiB} | ${c.app.heapTotalMiB} | ` +
        `${c.app.externalMiB} | ${c.loadGenerator.rssMiB} | ${c.loadAverage} |`,
    ),
  ];
  if (tally.firstProblems.length > 0) {
    lines.push('', 'First problems:', '', '```text', ...tally.firstProblems, '```');
  }
  return lines.join('\n');
}
