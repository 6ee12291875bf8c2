import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { createTenantry, type Tenantry } from 'tenantry';
import { enqueueJob } from 'tenantry/jobs';
import { createTestDatabase, readTestCluster, type TestDatabase } from 'tenantry/testing';
import { heldJob, tagJob } from './cli-fixtures/jobs.ts';
import { type ReferenceDatabase, withClient } from './fixtures.ts';

const execFileAsync = promisify(execFile);
const cli = new URL('../src/cli/main.ts', import.meta.url).pathname;
const repository = new URL('..', import.meta.url).pathname;

interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

async function runCli(args: readonly string[], env: Record<string, string>): Promise<CliResult> {
  try {
    const { stdout, stderr } = await execFileAsync(
      process.execPath,
      ['--conditions=development', cli, ...args],
      {
        cwd: repository,
        env: { PATH: process.env.PATH ?? '', ...env },
      },
    );
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code?: number; stdout?: string; stderr?: string };
    return { code: failed.code ?? -1, stdout: failed.stdout ?? '', stderr: failed.stderr ?? '' };
  }
}

describe('tenantry CLI against an external DATABASE_URL', () => {
  let database: TestDatabase;
  before(async () => {
    database = await createTestDatabase();
  });
  after(() => database.drop());

  test('migrate on an up-to-date database applies nothing and says so', async () => {
    const result = await runCli(['migrate'], { DATABASE_URL: database.adminUrl });
    assert.equal(result.code, 0, result.stderr);
    const files = [
      ...(await readdir(new URL('../sql/', import.meta.url))),
      ...(await readdir(new URL('../sql/jobs/', import.meta.url))),
      ...(await readdir(new URL('../sql/storage/', import.meta.url))),
      ...(await readdir(new URL('../sql/billing/', import.meta.url))),
      ...(await readdir(new URL('../sql/platform/', import.meta.url))),
      ...(await readdir(new URL('../app/migrations/', import.meta.url))),
    ].filter((name) => name.endsWith('.sql'));
    assert.match(
      result.stdout,
      new RegExp(`migrations: 0 applied, ${files.length} already up to date`),
    );
  });

  test('doctor --json reports nothing and exits 0 on the reference schema', async () => {
    const result = await runCli(['doctor', '--json'], { DATABASE_URL: database.adminUrl });
    assert.equal(result.code, 0, result.stderr);
    assert.deepEqual(JSON.parse(result.stdout).findings, []);
  });

  test('doctor exits 1 with a machine-readable finding once a hole exists', async () => {
    await withClient(database.adminUrl, (client) =>
      client.query('alter table tags no force row level security'),
    );
    try {
      const result = await runCli(['doctor', '--json'], { DATABASE_URL: database.adminUrl });
      assert.equal(result.code, 1);
      const findings = JSON.parse(result.stdout).findings as { kind: string; object: string }[];
      assert.deepEqual(
        findings.map((finding) => [finding.kind, finding.object]),
        [['rls_not_forced', 'public.tags']],
      );
      const human = await runCli(['doctor'], { DATABASE_URL: database.adminUrl });
      assert.equal(human.code, 1);
      assert.match(human.stdout, /force row level security/i);
    } finally {
      await withClient(database.adminUrl, (client) =>
        client.query('alter table tags force row level security'),
      );
    }
  });

  test('start without the app role connection names the variable to set', async () => {
    const result = await runCli(['start'], { DATABASE_URL: database.adminUrl });
    assert.equal(result.code, 1);
    assert.match(result.stderr, /TENANTRY_APP_DATABASE_URL/);
    assert.match(result.stderr, /TENANTRY_ERR_CONFIG_INVALID/);
  });

  test('start with the app role connection checks it and audits clean', async () => {
    const result = await runCli(['start'], {
      DATABASE_URL: database.adminUrl,
      TENANTRY_APP_DATABASE_URL: database.appUrl,
    });
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /app role connected; tenant tables: .*contacts/);
    assert.match(result.stdout, /No findings/);
  });

  test('a malformed DATABASE_URL is refused with a clear message', async () => {
    const result = await runCli(['doctor'], { DATABASE_URL: 'mysql://nope' });
    assert.equal(result.code, 1);
    assert.match(result.stderr, /DATABASE_URL must be a postgres:\/\/ URL/);
  });

  test('an unreachable server is reported without a stack trace', async () => {
    const result = await runCli(['doctor'], {
      DATABASE_URL: 'postgres://postgres:x@127.0.0.1:1/tenantry',
    });
    assert.equal(result.code, 1);
    assert.match(result.stderr, /TENANTRY_ERR_DB_UNAVAILABLE/);
    assert.doesNotMatch(result.stderr, /\n\s+at /);
  });
});

describe('tenantry migrate on an empty database', () => {
  test("applies Tenantry's core, then the job queue, the file registry and billing, then the app's migrations", async () => {
    const { adminUrl } = readTestCluster();
    const name = `tenantry_cli_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
    await withClient(adminUrl, (client) => client.query(`create database ${name}`));
    try {
      const url = new URL(adminUrl);
      url.pathname = `/${name}`;
      const result = await runCli(['migrate'], { DATABASE_URL: url.href });
      assert.equal(result.code, 0, result.stderr);
      const applied = /\((.*)\)$/m.exec(result.stdout)?.[1]?.split(', ') ?? [];
      const sources = [...new Set(applied.map((entry) => entry.split('/')[0]))];
      assert.deepEqual(sources, [
        'tenantry',
        'tenantry_jobs',
        'tenantry_storage',
        'tenantry_billing',
        'tenantry_platform',
        'app',
      ]);
      const installed = await withClient(url.href, (client) =>
        client.query(`select to_regclass('graphile_worker._private_jobs') is not null as jobs`),
      );
      assert.equal(installed.rows[0]?.jobs, true);
    } finally {
      await withClient(adminUrl, (client) =>
        client.query(`drop database if exists ${name} with (force)`),
      );
    }
  });
});

interface HealthBody {
  readonly status: string;
  readonly concurrency: number;
  readonly runningByTenant: Record<string, number>;
}

interface Worker {
  readonly stderr: () => string;
  readonly exited: Promise<[number | null, NodeJS.Signals | null]>;
  signal(name: NodeJS.Signals): void;
}

function startWorker(args: readonly string[], env: Record<string, string>): Worker {
  const child = spawn(process.execPath, ['--conditions=development', cli, 'worker', ...args], {
    cwd: repository,
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  return { stderr: () => stderr, exited, signal: (name) => child.kill(name) };
}

/** Polls `check` until it returns something other than undefined, or fails after `timeoutMs`. */
async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(25);
  }
}

describe('tenantry jobs and tenantry worker', () => {
  let database: TestDatabase;
  let tenantry: Tenantry<ReferenceDatabase>;
  let env: Record<string, string>;

  const admin = async (text: string, values: unknown[] = []) =>
    (await withClient(database.adminUrl, (client) => client.query(text, values))).rows;
  const createTenant = async () => {
    const tenantId = randomUUID();
    await admin(`insert into tenantry.tenants (id, slug, name) values ($1, $2, 'cli')`, [
      tenantId,
      `cli-${tenantId}`,
    ]);
    return tenantId;
  };
  const enqueueTag = (tenantId: string, name: string) =>
    tenantry.withTenant(tenantId, (db) => enqueueJob(db, tagJob, { name }));
  const tagsOf = (tenantId: string) =>
    tenantry.withTenant(tenantId, async (db) =>
      (await db.selectFrom('tags').select('name').orderBy('name').execute()).map((t) => t.name),
    );
  const cliJson = async (args: readonly string[]) => {
    const result = await runCli(args, env);
    assert.equal(result.code, 0, result.stderr);
    return JSON.parse(result.stdout);
  };

  before(async () => {
    database = await createTestDatabase();
    tenantry = await createTenantry<ReferenceDatabase>({
      connectionString: database.appUrl,
      maxConnections: 4,
    });
    env = { DATABASE_URL: database.adminUrl, TENANTRY_APP_DATABASE_URL: database.appUrl };
  });
  after(async () => {
    await tenantry.close();
    await database.drop();
  });

  test('jobs list, count and replay show a dead job of one tenant and run it again', async () => {
    const tenantA = await createTenant();
    const tenantB = await createTenant();
    const dead = await enqueueTag(tenantA, 'dead-one');
    const other = await enqueueTag(tenantB, 'waiting-one');
    await admin(
      `update graphile_worker._private_jobs
          set attempts = max_attempts, last_error = 'Error: smtp refused' where id = $1`,
      [dead],
    );

    const listed = await cliJson(['jobs', 'list', '--tenant', tenantA, '--json']);
    assert.deepEqual(
      listed.map((job: Record<string, unknown>) => [
        job.id,
        job.task,
        job.tenantId,
        job.state,
        job.attempts,
        job.lastError,
      ]),
      [[dead, 'cli-fixture.tag', tenantA, 'dead', 10, 'Error: smtp refused']],
    );
    const human = await runCli(['jobs', 'list', '--state', 'dead', '--tenant', tenantA], env);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /^ID\s+TASK\s+TENANT\s+STATE\s+ATTEMPTS\s+RUN AT\s+LAST ERROR$/m);
    assert.match(
      human.stdout,
      new RegExp(
        `^\\s*${dead}\\s+cli-fixture\\.tag\\s+${tenantA}\\s+dead\\s+10/10\\s+\\S+\\s+Error: smtp refused$`,
        'm',
      ),
    );
    assert.doesNotMatch(human.stdout, new RegExp(`\\b${other}\\b|${tenantB}`));
    const waitingOfA = await cliJson([
      'jobs',
      'list',
      '--tenant',
      tenantA,
      '--state',
      'waiting',
      '--json',
    ]);
    assert.deepEqual(waitingOfA, []);

    assert.deepEqual(await cliJson(['jobs', 'count', '--tenant', tenantA, '--json']), {
      waiting: 0,
      running: 0,
      dead: 1,
      parked: 0,
    });
    assert.deepEqual(await cliJson(['jobs', 'count', '--tenant', tenantB, '--json']), {
      waiting: 1,
      running: 0,
      dead: 0,
      parked: 0,
    });
    const counted = await runCli(['jobs', 'count', '--tenant', tenantA], env);
    assert.match(counted.stdout, /^dead\s+1$/m);

    const replayed = await runCli(['jobs', 'replay', dead], env);
    assert.equal(replayed.code, 0, replayed.stderr);
    assert.equal(replayed.stdout, `replayed 1 jobs: ${dead}\n`);
    const [revived] = await cliJson(['jobs', 'list', '--tenant', tenantA, '--json']);
    assert.equal(revived.state, 'waiting');
    assert.equal(revived.attempts, 0);

    const again = await runCli(['jobs', 'replay', dead, other], env);
    assert.equal(again.code, 1);
    assert.match(again.stderr, new RegExp(`${dead}, ${other}.*TENANTRY_ERR_JOB_NOT_FOUND`));
  });

  test("jobs resume makes one tenant's parked jobs runnable and leaves the others parked", async () => {
    const tenantA = await createTenant();
    const tenantB = await createTenant();
    const parkedA = await enqueueTag(tenantA, 'parked-a');
    const parkedB = await enqueueTag(tenantB, 'parked-b');
    await admin(
      `update graphile_worker._private_jobs set run_at = 'infinity' where id = any($1::bigint[])`,
      [[parkedA, parkedB]],
    );
    const resumed = await runCli(['jobs', 'resume', '--tenant', tenantA], env);
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.equal(resumed.stdout, `resumed 1 parked jobs of tenant ${tenantA}\n`);
    assert.equal((await cliJson(['jobs', 'count', '--tenant', tenantA, '--json'])).waiting, 1);
    assert.equal((await cliJson(['jobs', 'count', '--tenant', tenantB, '--json'])).parked, 1);
  });

  test('bad jobs arguments exit 2 with a message that names the fix', async () => {
    const cases: [string[], RegExp][] = [
      [['jobs', 'list', '--tenant', 'acme'], /--tenant <id>.*UUID/],
      [['jobs', 'list', '--state', 'failed'], /waiting, running, dead, parked/],
      [['jobs', 'list', '--limit', '0'], /--limit takes an integer from 1 to 1000/],
      [['jobs', 'replay', '12', 'x'], /job id is a positive integer/],
      [['jobs', 'resume'], /required option '--tenant <id>'/],
      [
        ['worker', '--jobs', 'test/cli-fixtures/jobs.ts', '--concurrency', 'many'],
        /--concurrency takes an integer/,
      ],
    ];
    for (const [args, message] of cases) {
      const result = await runCli(args, env);
      assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, message);
    }
  });

  test('worker runs jobs from the module, reports health, and stops gracefully on SIGTERM', async () => {
    const tenantId = await createTenant();
    await enqueueTag(tenantId, 'from-worker');
    const worker = startWorker(
      [
        '--jobs',
        'test/cli-fixtures/jobs.ts',
        '--health-port',
        '0',
        '--concurrency',
        '4',
        '--tenant-concurrency',
        '2',
      ],
      env,
    );
    try {
      const url = await waitFor(
        'the health endpoint',
        () => /health endpoint listening url=(\S+)/.exec(worker.stderr())?.[1],
      );
      await waitFor('the job to run', async () =>
        (await tagsOf(tenantId)).includes('from-worker') ? true : undefined,
      );
      const healthy = await fetch(url);
      assert.equal(healthy.status, 200);
      const health = (await healthy.json()) as HealthBody;
      assert.equal(health.status, 'running');
      assert.equal(health.concurrency, 4);

      const held = await tenantry.withTenant(tenantId, (db) =>
        enqueueJob(db, heldJob, { name: 'held-done' }),
      );
      await waitFor('the held job to start', async () => {
        const response = await fetch(url);
        const body = (await response.json()) as HealthBody;
        return body.runningByTenant[tenantId] === 1 ? true : undefined;
      });
      worker.signal('SIGTERM');
      const stopping = await waitFor('the health endpoint to report stopping', async () => {
        const response = await fetch(url);
        return response.status === 503 ? ((await response.json()) as HealthBody) : undefined;
      });
      assert.equal(stopping.status, 'stopping');
      await tenantry.withTenant(tenantId, (db) =>
        db.insertInto('tags').values({ name: 'release' }).execute(),
      );
      const [code] = await worker.exited;
      assert.equal(code, 0, worker.stderr());
      assert.deepEqual(await tagsOf(tenantId), ['from-worker', 'held-done', 'release']);
      assert.equal((await admin('select count(*)::int as n from tenantry.job_workers'))[0]?.n, 0);
      assert.equal(
        (
          await admin(
            'select count(*)::int as n from graphile_worker._private_jobs where id = $1',
            [held],
          )
        )[0]?.n,
        0,
      );
      assert.match(worker.stderr(), /fixture jobs module set up/);
      // Earlier tests left jobs of other tenants in the queue; this worker ran them too.
      const completed = Number(
        /job worker stopped[^\n]*completed=(\d+)/.exec(worker.stderr())?.[1],
      );
      assert.ok(completed >= 2, worker.stderr());
      assert.ok(
        worker.stderr().indexOf('job worker stopped') <
          worker.stderr().indexOf('fixture jobs module closed'),
        'the module is closed after the worker stopped',
      );
      await assert.rejects(fetch(url));
    } finally {
      worker.signal('SIGKILL');
    }
  });

  test('worker names the fix when the module is missing or has no setupJobs', async () => {
    const missing = await runCli(['worker', '--jobs', 'test/cli-fixtures/absent.ts'], env);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /--jobs test\/cli-fixtures\/absent\.ts: no such file/);
    assert.match(missing.stderr, /exports setupJobs\(\)/);
    assert.doesNotMatch(missing.stderr, /\n\s+at /);

    const without = await runCli(['worker', '--jobs', 'test/cli-fixtures/no-setup.ts'], env);
    assert.equal(without.code, 2);
    assert.match(without.stderr, /does not export a setupJobs function/);
    assert.doesNotMatch(without.stderr, /\n\s+at /);
  });

  test("worker runs the reference app's jobs module, storage jobs included, and stops on SIGINT", async () => {
    const storageRoot = await mkdtemp(join(tmpdir(), 'tenantry-worker-files-'));
    const worker = startWorker(['--jobs', 'app/worker.ts', '--concurrency', '2'], {
      ...env,
      TENANTRY_STORAGE_SECRET: randomBytes(48).toString('base64url'),
      TENANTRY_STORAGE_ROOT: storageRoot,
      TENANTRY_JWT_SECRET: randomBytes(48).toString('base64url'),
    });
    try {
      const started = await waitFor(
        'the worker to start',
        () => /job worker started [^\n]*jobs=(\[[^\]]*\])/.exec(worker.stderr())?.[1],
      );
      const names = JSON.parse(started) as string[];
      for (const name of ['broadcast.dispatch', 'contacts.export', 'storage.cleanup-pending']) {
        assert.ok(names.includes(name), `${name} missing from ${started}`);
      }
      worker.signal('SIGINT');
      const [code] = await worker.exited;
      assert.equal(code, 0, worker.stderr());
      assert.match(worker.stderr(), /job worker stopped/);
    } finally {
      worker.signal('SIGKILL');
      await rm(storageRoot, { recursive: true, force: true });
    }
  });

  test('worker without the app role connection names the variable to set', async () => {
    const result = await runCli(['worker', '--jobs', 'test/cli-fixtures/jobs.ts'], {
      DATABASE_URL: database.adminUrl,
    });
    assert.equal(result.code, 1);
    assert.match(result.stderr, /TENANTRY_APP_DATABASE_URL.*TENANTRY_ERR_CONFIG_INVALID/);
  });
});
