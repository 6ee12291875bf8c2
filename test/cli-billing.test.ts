import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { withClient } from './fixtures.ts';

const execFileAsync = promisify(execFile);
const cli = new URL('../src/cli/main.ts', import.meta.url).pathname;
const repository = new URL('..', import.meta.url).pathname;

let database: TestDatabase;
let env: Record<string, string>;

async function runCli(args: readonly string[]) {
  try {
    const { stdout, stderr } = await execFileAsync(
      process.execPath,
      ['--conditions=development', cli, ...args],
      { cwd: repository, env: { PATH: process.env.PATH ?? '', ...env } },
    );
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code?: number; stdout?: string; stderr?: string };
    return { code: failed.code ?? -1, stdout: failed.stdout ?? '', stderr: failed.stderr ?? '' };
  }
}

async function asAdmin<T = Record<string, unknown>>(text: string, values: unknown[] = []) {
  return withClient(
    database.adminUrl,
    async (client) => (await client.query(text, values)).rows as T[],
  );
}

before(async () => {
  database = await createTestDatabase();
  env = { DATABASE_URL: database.adminUrl };
});

after(() => database.drop());

describe('tenantry plans and usage', () => {
  test('set, list, assign, override and report, with the changes in the database', async () => {
    const tenantId = randomUUID();
    await asAdmin(
      "insert into tenantry.tenants (id, slug, name) values ($1, 'cli-billing', 'CLI')",
      [tenantId],
    );
    const set = await runCli([
      'plans',
      'set',
      'team',
      '--name',
      'Team',
      '--limit',
      'seats=10',
      '--limit',
      'contacts=unlimited',
    ]);
    assert.equal(set.code, 0, set.stderr);
    const listed = await runCli(['plans', 'list', '--json']);
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual(
      (JSON.parse(listed.stdout) as { id: string; limits: unknown }[]).find(
        (plan) => plan.id === 'team',
      ),
      { id: 'team', name: 'Team', limits: { seats: 10, contacts: null } },
    );
    const assigned = await runCli(['plans', 'assign', tenantId, 'team', '--anchor-day', '15']);
    assert.equal(assigned.code, 0, assigned.stderr);
    assert.deepEqual(
      await asAdmin('select plan, billing_anchor_day from tenantry.tenants where id = $1', [
        tenantId,
      ]),
      [{ plan: 'team', billing_anchor_day: 15 }],
    );
    const overridden = await runCli(['plans', 'override', tenantId, 'seats', '12']);
    assert.equal(overridden.code, 0, overridden.stderr);
    const report = await runCli(['usage', '--tenant', tenantId, '--metric', 'seats', '--json']);
    assert.equal(report.code, 0, report.stderr);
    const rows = JSON.parse(report.stdout) as { plan: string; limit: number; used: number }[];
    assert.deepEqual(
      rows.map((row) => [row.plan, row.limit, row.used]),
      [['team', 12, 0]],
    );
    const table = await runCli(['usage', '--tenant', tenantId]);
    assert.match(table.stdout, /cli-billing\s+team\s+seats\s+0\s+12/);
    const cleared = await runCli(['plans', 'override', tenantId, 'seats', '--clear']);
    assert.equal(cleared.code, 0, cleared.stderr);
    assert.match(cleared.stdout, /override of seats removed/);
  });

  test('bad input names the fix, exits non-zero and changes nothing', async () => {
    const before = await asAdmin('select count(*)::int as n from tenantry.plans');
    for (const [args, message] of [
      [['plans', 'set', 'x', '--name', 'X', '--limit', 'seats'], /metric=value/],
      [['plans', 'set', 'x', '--name', 'X', '--limit', 'seats=-1'], /non-negative integer/],
      [['plans', 'set', 'Bad Id', '--name', 'X'], /plan id/],
      [['plans', 'set', 'x', '--name', 'X', '--limit', 'nosuch=1'], /Unknown metric "nosuch"/],
      [['plans', 'assign', 'not-a-uuid', 'free'], /tenant id/],
      [['plans', 'assign', randomUUID(), 'free'], /No tenant/],
      [['plans', 'override', randomUUID(), 'seats'], /--clear/],
      [['usage', '--limit', '0'], /--limit takes an integer/],
    ] as const) {
      const result = await runCli(args);
      assert.notEqual(result.code, 0, `${args.join(' ')} succeeded`);
      assert.match(result.stderr, message, args.join(' '));
      assert.doesNotMatch(result.stderr, /\n\s+at /, 'no stack trace');
    }
    assert.deepEqual(await asAdmin('select count(*)::int as n from tenantry.plans'), before);
  });
});
