import { randomBytes } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { dirname, join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import {
  bootstrapDatabase,
  defaultRoleNames,
  type EmbeddedPostgresServer,
  migrate,
  startEmbeddedPostgres,
  withCredentials,
} from 'tenantry';
import { billingMigrationSource } from 'tenantry/billing';
import { jobsMigrationSource } from 'tenantry/jobs';
import { platformMigrationSource } from 'tenantry/platform';
import { storageMigrationSource } from 'tenantry/storage';
import type { TestDatabase } from 'tenantry/testing';
import { appMigrationSource } from '../app-fixtures.ts';

/**
 * An embedded PostgreSQL server of one test file, never the shared test cluster: the file may
 * stop it, crash it and start it again on the same data directory and port.
 */
export interface PrivateCluster {
  /** The application database, bootstrapped and migrated like the app's (`drop()` does nothing). */
  readonly database: TestDatabase;
  readonly port: number;
  /** Whether the server is running (between a stop or crash and the next start it is not). */
  readonly running: boolean;
  /** Fast shutdown (`SIGINT`): open sessions are terminated, the server checkpoints and exits. */
  stop(): Promise<void>;
  /**
   * Immediate shutdown (`SIGQUIT` to the postmaster), as in a crash: no checkpoint, the next
   * start replays the write-ahead log.
   */
  crash(): Promise<void>;
  /** Starts the server again on the same data directory and port. */
  start(): Promise<void>;
  /** Stops the server and removes its folder. */
  remove(): Promise<void>;
}

/** The app's migration sources, in the order `app/main.ts` and the test global setup apply them. */
export const appMigrationSources = Object.freeze([
  jobsMigrationSource(),
  storageMigrationSource(),
  billingMigrationSource(),
  platformMigrationSource(),
  appMigrationSource,
]);

const databaseName = 'tenantry_fault';

/**
 * Starts a private embedded cluster under `.tenantry/test-fault-<random>` with full durability
 * (fsync and synchronous commit on: an acknowledged commit must survive a crash), then
 * bootstraps and migrates the application database.
 *
 * @example
 * ```ts
 * const cluster = await startPrivateCluster();
 * await cluster.stop();
 * await cluster.start();
 * await cluster.remove();
 * ```
 */
export async function startPrivateCluster(): Promise<PrivateCluster> {
  // Under the project, not os.tmpdir(): as root the server runs as the postgres OS user, which
  // must reach the folder.
  const directory = fileURLToPath(
    new URL(`../../.tenantry/test-fault-${randomBytes(6).toString('hex')}/`, import.meta.url),
  );
  let server: EmbeddedPostgresServer | undefined = await startEmbeddedPostgres({
    directory,
    durability: 'full',
  });
  const first = server;
  const port = first.port;
  const adminUrl = first.connectionString(databaseName);
  try {
    await bootstrapDatabase({
      adminConnectionString: first.connectionString('postgres'),
      database: databaseName,
      passwords: { app: first.secrets.appPassword, analytics: first.secrets.analyticsPassword },
    });
    await migrate({ connectionString: adminUrl, sources: appMigrationSources });
  } catch (error) {
    await first.stop();
    await rm(directory, { recursive: true, force: true });
    throw error;
  }
  const database: TestDatabase = Object.freeze({
    name: databaseName,
    adminUrl,
    appUrl: withCredentials(adminUrl, defaultRoleNames.app, first.secrets.appPassword),
    analyticsUrl: withCredentials(
      adminUrl,
      defaultRoleNames.analytics,
      first.secrets.analyticsPassword,
    ),
    drop: async () => {},
  });

  const stop = async () => {
    const stopping = server;
    server = undefined;
    await stopping?.stop();
  };
  return {
    database,
    port,
    get running() {
      return server !== undefined;
    },
    stop,
    async crash() {
      const crashing = server;
      if (crashing === undefined) return;
      server = undefined;
      const pid = Number.parseInt(
        (await readFile(join(crashing.dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0] ?? '',
        10,
      );
      process.kill(pid, 'SIGQUIT');
      // The crashed instance is never stopped: its child has exited, and the package's stop()
      // would wait for an exit event that already fired.
      await waitUntil(`the postmaster (pid ${pid}) to exit`, () => !isAlive(pid));
      await waitUntil(`port ${port} to close`, async () => !(await accepts(port)));
    },
    async start() {
      if (server !== undefined) return;
      server = await startEmbeddedPostgres({ directory, port, durability: 'full' });
    },
    async remove() {
      const dataDir = server?.dataDir ?? first.dataDir;
      await stop();
      // As root a folder the postgres user cannot reach moves elsewhere: remove where it is.
      await rm(dirname(dataDir), { recursive: true, force: true });
      await rm(directory, { recursive: true, force: true });
    },
  };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

async function waitUntil(
  description: string,
  condition: () => boolean | Promise<boolean>,
): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${description}`);
    await delay(20);
  }
}
