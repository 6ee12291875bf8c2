import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { isTenantryError } from 'tenantry';
import {
  canonicalJson,
  createTenantLifecycle,
  type ErasureProgress,
  type TenantExportManifest,
  type TenantLifecycle,
  verifyErasureReport,
} from 'tenantry/platform';
import { createLocalStorageDriver, type LocalStorageDriver } from 'tenantry/storage';
import { createTestApp, queryAsAdmin, type TestApp } from './app-fixtures.ts';
import { type SeededTenant, seedTenant } from './fixtures.ts';

let testApp: TestApp;
let driver: LocalStorageDriver;
let lifecycle: TenantLifecycle;
let workDir: string;
const signingKey = randomBytes(48).toString('base64');
const seeded: Record<'a' | 'b' | 'c', SeededTenant> = {} as never;

before(async () => {
  testApp = await createTestApp();
  driver = createLocalStorageDriver({
    root: testApp.filesRoot,
    baseUrl: 'http://localhost/files',
    secret: randomBytes(32).toString('hex'),
  });
  lifecycle = createTenantLifecycle({
    connectionString: testApp.database.adminUrl,
    storage: { driver },
  });
  workDir = await mkdtemp(join(tmpdir(), 'tenantry-lifecycle-'));
  for (const name of ['a', 'b', 'c'] as const) {
    const tenant = await seedTenant(testApp.database.adminUrl, testApp.tenantry, `erase${name}`);
    seeded[name] = tenant;
    await testApp.tenantry.withTenant(tenant.tenantId, async (db) => {
      for (let i = 0; i < 3; i++) {
        await testApp.files.putFile(db, {
          fileName: `${name}-${i}.txt`,
          contentType: 'text/plain',
          body: Buffer.from(`file ${i} of tenant ${name}: ${randomBytes(16).toString('hex')}\n`),
        });
      }
    });
  }
});

after(async () => {
  await lifecycle?.close();
  await driver?.close();
  await testApp?.close();
  if (workDir !== undefined) await rm(workDir, { recursive: true, force: true });
});

/** Every table with a tenant_id column, read from the catalog independently of the code under test. */
async function catalogTables(): Promise<string[]> {
  const rows = await queryAsAdmin<{ name: string }>(
    testApp,
    `select format('%I.%I', n.nspname, c.relname) as name
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
       join pg_attribute a on a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped
      where c.relkind in ('r', 'p') and not c.relispartition
        and n.nspname not in ('pg_catalog', 'information_schema')
      order by 1`,
  );
  return rows.map((row) => row.name);
}

/** Row count and an md5 over the rows of every tenant-id table for one tenant. */
async function fingerprint(tenantId: string): Promise<Record<string, string>> {
  const result: Record<string, string> = {};
  for (const table of await catalogTables()) {
    if (table === 'tenantry.tenant_erasures') continue;
    const [row] = await queryAsAdmin<{ n: number; md5: string }>(
      testApp,
      `select count(*)::int as n, md5(coalesce(string_agg(t::text, '|' order by t::text), '')) as md5
         from ${table} t where tenant_id = $1`,
      [tenantId],
    );
    result[table] = `${row?.n}:${row?.md5}`;
  }
  return result;
}

async function objectFiles(tenantId: string): Promise<string[]> {
  const directory = join(testApp.filesRoot, 'tenants', tenantId);
  if (!existsSync(directory)) return [];
  const entries = await readdir(directory, { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => entry.isFile())
    .map((entry) => entry.name)
    .sort();
}

async function objectsDigest(tenantId: string): Promise<string> {
  const hash = createHash('sha256');
  for (const name of await objectFiles(tenantId)) {
    hash.update(name);
    hash.update(await readFile(join(testApp.filesRoot, 'tenants', tenantId, name)));
  }
  return hash.digest('hex');
}

function sha256(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

describe('export, then erase, then verify', () => {
  let manifest: TenantExportManifest;
  let extracted: string;
  const othersBefore: Record<string, { rows: Record<string, string>; objects: string }> = {};

  test('export A: archive parses, counts match the database, checksums match', async () => {
    const a = seeded.a.tenantId;
    const archive = join(workDir, 'a.tar.gz');
    const progress: string[] = [];
    const result = await lifecycle.exportTenant({
      tenantId: a,
      output: archive,
      onProgress: (event) => {
        if (event.kind === 'table' && event.done) progress.push(event.table);
      },
    });
    extracted = join(workDir, 'a');
    await rm(extracted, { recursive: true, force: true });
    execFileSync('mkdir', ['-p', extracted]);
    execFileSync('tar', ['-xzf', archive, '-C', extracted]);
    assert.equal(sha256(await readFile(archive)), result.sha256);
    manifest = JSON.parse(await readFile(join(extracted, 'manifest.json'), 'utf8'));
    assert.deepEqual(manifest, JSON.parse(JSON.stringify(result.manifest)));
    assert.equal(manifest.tenantId, a);
    assert.equal(manifest.tenant.slug, 'erasea');
    assert.equal(manifest.format, 'tenantry-tenant-export');
    assert.match(manifest.tenantryVersion, /^\d+\.\d+\.\d+/);

    // Every catalog table with a tenant_id column is in the archive (the ledgers aside).
    const expected = (await catalogTables()).filter(
      (table) => table !== 'tenantry.outbox_events' && table !== 'tenantry.tenant_erasures',
    );
    assert.deepEqual(
      manifest.tables.map((table) => table.table).sort(),
      expected.map((t) => t.replaceAll('"', '')).sort(),
    );
    for (const name of [
      'tenantry.files',
      'tenantry.usage_counters',
      'tenantry.usage_events',
      'public.messages',
    ]) {
      assert.ok(
        manifest.tables.some((table) => table.table === name && table.rows > 0),
        name,
      );
    }
    assert.deepEqual(
      progress.slice(0, manifest.tables.length),
      manifest.tables.map((t) => t.table),
    );

    for (const table of manifest.tables) {
      const [row] = await queryAsAdmin<{ n: number }>(
        testApp,
        `select count(*)::int as n from ${table.table} where tenant_id = $1`,
        [a],
      );
      assert.equal(table.rows, row?.n, table.table);
      let lines = 0;
      for (const part of table.parts) {
        const body = await readFile(join(extracted, part.path));
        assert.equal(sha256(body), part.sha256, part.path);
        const rows = body.toString('utf8').trimEnd().split('\n');
        assert.equal(rows.length, part.rows);
        for (const line of rows) assert.equal(JSON.parse(line).tenant_id, a);
        lines += rows.length;
      }
      assert.equal(lines, table.rows, table.table);
    }
    const [events] = await queryAsAdmin<{ n: number }>(
      testApp,
      'select count(*)::int as n from tenantry.outbox_events where tenant_id = $1',
      [a],
    );
    assert.equal(manifest.events.rows, events?.n);

    // The three uploaded objects, byte for byte; the seed's pending file has no object.
    const uploaded = manifest.files.filter((file) => file.path !== undefined);
    assert.equal(uploaded.length, 3);
    for (const file of uploaded) {
      const body = await readFile(join(extracted, file.path as string));
      const stored = await readFile(join(testApp.filesRoot, file.objectKey));
      assert.deepEqual(body, stored);
      assert.equal(sha256(body), file.sha256);
      assert.equal(file.matchesRegistry, true);
    }
    // SHA256SUMS covers every entry, in `sha256sum -c` format.
    const sums = (await readFile(join(extracted, 'SHA256SUMS'), 'utf8')).trimEnd().split('\n');
    assert.ok(sums.some((line) => line.endsWith('  manifest.json')));
    for (const line of sums) {
      const [digest, path] = line.split('  ');
      assert.equal(sha256(await readFile(join(extracted, path as string))), digest, path);
    }
    // No row of another tenant anywhere in the archive.
    const all = execFileSync(
      'cat',
      sums.map((line) => join(extracted, line.split('  ')[1] as string)),
    );
    for (const other of [seeded.b.tenantId, seeded.c.tenantId]) {
      assert.equal(all.includes(Buffer.from(other)), false);
    }
  });

  test('erase A, crashing twice on the way: everything of A is gone, B and C untouched', async () => {
    const a = seeded.a.tenantId;
    for (const other of [seeded.b.tenantId, seeded.c.tenantId]) {
      othersBefore[other] = { rows: await fingerprint(other), objects: await objectsDigest(other) };
    }
    assert.equal((await objectFiles(a)).length, 3);
    await lifecycle.suspend(a, { reason: 'offboarding' });

    const crash = (when: (event: ErasureProgress) => boolean) => (event: ErasureProgress) => {
      if (when(event)) throw new Error('simulated crash');
    };
    // 1. After the first committed batch of rows.
    await assert.rejects(
      lifecycle.eraseTenant({
        tenantId: a,
        signingKey,
        batchRows: 1,
        onProgress: crash((event) => event.kind === 'rows' && event.deleted === 1 && !event.done),
      }),
      /simulated crash/,
    );
    const [journal] = await queryAsAdmin<{ step: string; finished_at: Date | null }>(
      testApp,
      'select step, finished_at from tenantry.tenant_erasures where tenant_id = $1',
      [a],
    );
    assert.equal(journal?.finished_at, null);
    assert.equal((await lifecycle.get(a)).status, 'deleted');
    // 2. After verification, before the report.
    await assert.rejects(
      lifecycle.eraseTenant({
        tenantId: a,
        signingKey,
        batchRows: 2,
        onProgress: crash((event) => event.kind === 'step' && event.step === 'verified'),
      }),
      /simulated crash/,
    );
    const noEvent = await queryAsAdmin<{ n: number }>(
      testApp,
      `select count(*)::int as n from tenantry.outbox_events where tenant_id = $1 and type = 'tenant.deleted'`,
      [a],
    );
    assert.equal(noEvent[0]?.n, 0, 'no tenant.deleted before the erasure finishes');

    const steps: string[] = [];
    const { report, signature, alreadyFinished } = await lifecycle.eraseTenant({
      tenantId: a,
      signingKey,
      onProgress: (event) => {
        if (event.kind === 'step') steps.push(event.step);
      },
    });
    assert.equal(alreadyFinished, false);
    assert.deepEqual(steps, [
      'started',
      'jobs',
      'objects',
      'rows',
      'outbox',
      'verified',
      'finished',
    ]);

    // Nothing of A remains: every table with a tenant_id column, the prefix, the queue.
    for (const table of await catalogTables()) {
      if (table === 'tenantry.outbox_events' || table === 'tenantry.tenant_erasures') continue;
      const [row] = await queryAsAdmin<{ n: number }>(
        testApp,
        `select count(*)::int as n from ${table} where tenant_id = $1`,
        [a],
      );
      assert.equal(row?.n, 0, table);
    }
    assert.deepEqual(await objectFiles(a), []);
    assert.equal(existsSync(join(testApp.filesRoot, 'tenants', a)), false);
    const events = await queryAsAdmin<{ type: string; data: Record<string, unknown> }>(
      testApp,
      'select type, data from tenantry.outbox_events where tenant_id = $1',
      [a],
    );
    assert.deepEqual(
      events.map((event) => event.type),
      ['tenant.deleted'],
    );
    assert.deepEqual(events[0]?.data.erasure, JSON.parse(JSON.stringify(report)));
    assert.equal(events[0]?.data.signature, signature);
    const jobs = await queryAsAdmin<{ n: number }>(
      testApp,
      `select count(*)::int as n from graphile_worker._private_jobs where payload ->> 'tenantId' = $1`,
      [a],
    );
    assert.equal(jobs[0]?.n, 0);

    // The report: every row counted once across the three runs, verified, catalog row kept.
    assert.equal(report.tenantId, a);
    assert.equal(report.slug, 'erasea');
    assert.equal(report.previousStatus, 'suspended');
    assert.equal(report.verification.passed, true);
    for (const table of manifest.tables) {
      const entry = report.tables.find((candidate) => candidate.table === table.table);
      assert.ok(entry !== undefined, table.table);
      assert.equal(entry.rowsBefore, table.rows, table.table);
      assert.equal(entry.rowsDeleted, table.rows, table.table);
      assert.equal(entry.rowsRemaining, 0);
    }
    assert.equal(report.objects?.deleted, 3);
    assert.equal(report.objects?.remaining, 0);
    assert.equal(report.outboxEvents.deleted, manifest.events.rows + 1);
    const tenant = await lifecycle.get(a);
    assert.equal(tenant.status, 'deleted');
    assert.equal(tenant.slug, report.catalog.slug);
    assert.equal(tenant.name, 'Deleted tenant');

    // B and C: same rows (count and md5 per table) and the same objects.
    for (const other of [seeded.b.tenantId, seeded.c.tenantId]) {
      assert.deepEqual(await fingerprint(other), othersBefore[other]?.rows);
      assert.equal(await objectsDigest(other), othersBefore[other]?.objects);
      assert.equal((await objectFiles(other)).length, 3);
    }

    // The signature verifies; a tampered report or another key does not.
    assert.equal(verifyErasureReport({ report, signature }, signingKey), true);
    const tampered = JSON.parse(JSON.stringify(report));
    tampered.tables[0].rowsDeleted += 1;
    assert.equal(verifyErasureReport({ report: tampered, signature }, signingKey), false);
    assert.equal(
      verifyErasureReport({ report, signature }, randomBytes(48).toString('base64')),
      false,
    );
    assert.equal(
      verifyErasureReport(
        { report, signature: signature.replace(/^./, (c) => (c === '0' ? '1' : '0')) },
        signingKey,
      ),
      false,
    );
    // What docs/guides/operations.md tells operators to run (jq -cjS, openssl dgst -hmac).
    assert.equal(
      canonicalJson(report),
      JSON.stringify(JSON.parse(canonicalJson(JSON.parse(JSON.stringify(report))))),
    );

    // Running it again changes nothing and returns the same signed report.
    const again = await lifecycle.eraseTenant({ tenantId: a, signingKey });
    assert.equal(again.alreadyFinished, true);
    assert.deepEqual(again.report, JSON.parse(JSON.stringify(report)));
    assert.equal(again.signature, signature);
    const eventsAgain = await queryAsAdmin<{ n: number }>(
      testApp,
      'select count(*)::int as n from tenantry.outbox_events where tenant_id = $1',
      [a],
    );
    assert.equal(eventsAgain[0]?.n, 1);

    // The API answers 410 for the erased workspace's tokens' tenant (no data, no 500).
    const [membership] = await queryAsAdmin(
      testApp,
      'select 1 from memberships where tenant_id = $1',
      [a],
    );
    assert.equal(membership, undefined);
  });

  test('an erasure refuses to run without the storage driver while the tenant has files', async () => {
    const bare = createTenantLifecycle({ connectionString: testApp.database.adminUrl });
    try {
      await lifecycle.suspend(seeded.b.tenantId);
      await assert.rejects(
        bare.eraseTenant({ tenantId: seeded.b.tenantId, signingKey }),
        (error: unknown) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
      );
      await assert.rejects(
        bare.exportTenant({ tenantId: seeded.b.tenantId, output: join(workDir, 'b.tar.gz') }),
        (error: unknown) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
      );
      assert.equal(existsSync(join(workDir, 'b.tar.gz')), false);
      assert.deepEqual(await fingerprint(seeded.c.tenantId), othersBefore[seeded.c.tenantId]?.rows);
      assert.equal((await lifecycle.get(seeded.b.tenantId)).status, 'suspended');
    } finally {
      await bare.close();
      await lifecycle.resume(seeded.b.tenantId);
    }
  });
});

describe('bounded memory', () => {
  test('a 200k-row tenant exports with bounded heap, in many parts', async () => {
    const tenant = await lifecycle.create({ slug: 'erase-big', name: 'Big' });
    const rows = 200_000;
    await queryAsAdmin(
      testApp,
      `insert into idempotency_keys (tenant_id, key, request_hash, status_code, response)
         select $1, 'key-' || g, sha256(g::text::bytea), 201,
                jsonb_build_object('n', g, 'padding', repeat(md5(g::text), 20))
           from generate_series(1, $2::int) g`,
      [tenant.id, rows],
    );
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    gc();
    const baseline = process.memoryUsage().heapUsed;
    let peak = 0;
    let batches = 0;
    let written = 0;
    const sink = new Writable({
      highWaterMark: 16 * 1024,
      write(chunk: Buffer, _encoding, callback) {
        written += chunk.length;
        // A slow reader: the exporter must wait for it, not buffer ahead.
        setImmediate(callback);
      },
    });
    const result = await lifecycle.exportTenant({
      tenantId: tenant.id,
      output: sink,
      partMaxBytes: 4 * 1024 * 1024,
      onProgress: (event) => {
        if (event.kind !== 'table' || ++batches % 25 !== 0) return;
        gc();
        peak = Math.max(peak, process.memoryUsage().heapUsed - baseline);
      },
    });
    const table = result.manifest.tables.find((entry) => entry.table === 'public.idempotency_keys');
    assert.equal(table?.rows, rows);
    const jsonBytes = table?.parts.reduce((sum, part) => sum + part.bytes, 0) ?? 0;
    // The rows are much larger than the bound, so an exporter that buffered them would fail.
    assert.ok(jsonBytes > 150 * 1024 * 1024, `rows exported: ${jsonBytes} bytes`);
    assert.ok((table?.parts.length ?? 0) >= 30, `parts: ${table?.parts.length}`);
    assert.ok(batches > 100);
    assert.ok(peak < 100 * 1024 * 1024, `heap grew by ${Math.round(peak / 1048576)} MB`);
    assert.equal(written, result.bytes);
  });
});
