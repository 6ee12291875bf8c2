import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, readFile, rm, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { isTenantryError } from 'tenantry';
import {
  type EmbeddedPostgresServer,
  startEmbeddedPostgres,
} from '../src/database/embedded-postgres.ts';

// Under the project, not os.tmpdir(): as root the server runs as the postgres OS user, which
// must reach the folder (and a folder it cannot reach would silently move elsewhere).
const directory = fileURLToPath(
  new URL(`../.tenantry/test-embedded-${randomBytes(6).toString('hex')}/`, import.meta.url),
);
const running = new Set<EmbeddedPostgresServer>();

async function start(port?: number): Promise<EmbeddedPostgresServer> {
  const server = await startEmbeddedPostgres({ directory, port, durability: 'fast' });
  running.add(server);
  return server;
}

async function query<T extends pg.QueryResultRow>(url: string, sql: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {});
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

function listen(port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

function close(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

function portOf(server: Server): number {
  const address = server.address();
  assert.ok(address !== null && typeof address === 'object');
  return address.port;
}

after(async () => {
  for (const server of running) await server.stop();
  await rm(directory, { recursive: true, force: true });
});

describe('startEmbeddedPostgres', () => {
  let server: EmbeddedPostgresServer;

  test('starts a real server on 127.0.0.1 that answers queries', async () => {
    server = await start();
    assert.equal(server.dataDir, join(directory, 'data'));
    assert.equal(server.host, '127.0.0.1');
    const url = server.connectionString('postgres');
    assert.deepEqual(await query(url, 'select 1 as one'), [{ one: 1 }]);
    assert.deepEqual(await query(url, "select current_setting('fsync') as fsync"), [
      { fsync: 'off' },
    ]);
    await query(url, "create table survivors (name text); insert into survivors values ('kept')");
  });

  test('keeps its secrets in a state file readable by its owner only, and enforces them', async () => {
    const statePath = join(directory, 'state.json');
    assert.equal((await stat(statePath)).mode & 0o777, 0o600);
    const state = JSON.parse(await readFile(statePath, 'utf8'));
    assert.equal(state.port, server.port);
    assert.deepEqual(state.secrets, server.secrets);
    await assert.rejects(
      query(server.connectionString('postgres', 'postgres', 'not-the-password'), 'select 1'),
      (error: { code?: string }) => error.code === '28P01',
    );
  });

  test('refuses a second server on the same data directory and leaves the first running', async () => {
    await assert.rejects(start(), (error) => {
      assert.ok(
        isTenantryError(error, 'TENANTRY_ERR_EMBEDDED_DATA_DIR_LOCKED'),
        `got ${String(error)}`,
      );
      return true;
    });
    assert.deepEqual(await query(server.connectionString('postgres'), 'select 1 as one'), [
      { one: 1 },
    ]);
  });

  test('stop() is safe to call twice and really stops the server', async () => {
    await Promise.all([server.stop(), server.stop()]);
    await server.stop();
    running.delete(server);
    await assert.rejects(
      query(server.connectionString('postgres'), 'select 1'),
      (error: { code?: string }) => error.code === 'ECONNREFUSED',
    );
  });

  test('keeps data across restarts and reuses the previous port when it is free', async () => {
    const previousPort = server.port;
    const statePath = join(directory, 'state.json');
    await chmod(statePath, 0o644);
    const restarted = await start();
    server = restarted;
    try {
      assert.equal(restarted.port, previousPort);
      assert.equal(
        (await stat(statePath)).mode & 0o777,
        0o600,
        'a widened state file is tightened',
      );
      assert.deepEqual(
        await query(restarted.connectionString('postgres'), 'select name from survivors'),
        [{ name: 'kept' }],
      );
    } finally {
      await restarted.stop();
      running.delete(restarted);
    }
  });

  test('moves to a free port when the previous one is taken', async () => {
    const squatter = await listen(server.port);
    try {
      const moved = await start();
      try {
        assert.notEqual(moved.port, server.port);
        assert.deepEqual(await query(moved.connectionString('postgres'), 'select 1 as one'), [
          { one: 1 },
        ]);
      } finally {
        await moved.stop();
        running.delete(moved);
      }
    } finally {
      await close(squatter);
    }
  });

  test('reports an explicit port that is in use, naming the port', async () => {
    const squatter = await listen(0);
    const port = portOf(squatter);
    try {
      await assert.rejects(start(port), (error) => {
        assert.ok(
          isTenantryError(error, 'TENANTRY_ERR_EMBEDDED_PORT_IN_USE'),
          `got ${String(error)}`,
        );
        assert.match(error.message, new RegExp(`\\b${port}\\b`));
        assert.equal(error.details?.port, port);
        return true;
      });
    } finally {
      await close(squatter);
    }
  });
});
