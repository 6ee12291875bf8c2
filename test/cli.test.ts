import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { withClient } from './fixtures.ts';

const execFileAsync = promisify(execFile);
const cli = new URL('../src/cli/main.ts', import.meta.url).pathname;

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
