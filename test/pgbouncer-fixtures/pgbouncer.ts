import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { access, chmod, chown, constants, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import pg from 'pg';

const execFileAsync = promisify(execFile);

/** Where Debian and most distributions put the binary; `/usr/sbin` is not on a user's PATH. */
const systemDirectories = ['/usr/sbin', '/usr/bin', '/usr/local/sbin', '/usr/local/bin'];

/** OS users PgBouncer may switch to when the tests run as root (it refuses to run as root). */
const unprivilegedUsers = ['postgres', 'nobody'];

/** A PgBouncer binary, and the OS user to run it as, or why there is none. */
export type PgBouncerLookup =
  | {
      readonly found: true;
      readonly binary: string;
      readonly version: string;
      readonly runAs?: OsUser;
    }
  | { readonly found: false; readonly reason: string };

/** An OS account PgBouncer switches to with `-u` when started by root. */
export interface OsUser {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

/**
 * Finds `pgbouncer` on PATH or in the system binary folders and reads its version. When the
 * process runs as root it also picks an unprivileged OS user for `-u` (`postgres`, else `nobody`).
 *
 * @example
 * ```ts
 * const lookup = await findPgBouncer();
 * describe('through pgbouncer', { skip: lookup.found ? false : lookup.reason }, () => {});
 * ```
 */
export async function findPgBouncer(): Promise<PgBouncerLookup> {
  const searched = [
    ...(process.env.PATH ?? '').split(delimiter).filter(Boolean),
    ...systemDirectories,
  ];
  let binary: string | undefined;
  for (const directory of new Set(searched)) {
    const candidate = join(directory, 'pgbouncer');
    if (
      await access(candidate, constants.X_OK).then(
        () => true,
        () => false,
      )
    ) {
      binary = candidate;
      break;
    }
  }
  if (binary === undefined) {
    return {
      found: false,
      reason: `pgbouncer not installed: no executable "pgbouncer" in ${[...new Set(searched)].join(', ')} (Debian: apt-get install pgbouncer; .ci/run installs it)`,
    };
  }
  let version: string;
  try {
    const { stdout } = await execFileAsync(binary, ['--version']);
    version = /PgBouncer\s+(\S+)/.exec(stdout)?.[1] ?? stdout.trim();
  } catch (error) {
    return { found: false, reason: `pgbouncer at ${binary} does not run: ${String(error)}` };
  }
  if (process.getuid?.() !== 0) return { found: true, binary, version };
  for (const name of unprivilegedUsers) {
    const user = await osUser(name);
    if (user !== undefined) return { found: true, binary, version, runAs: user };
  }
  return {
    found: false,
    reason: `pgbouncer refuses to run as root and none of the OS users ${unprivilegedUsers.join(', ')} exists to run it as`,
  };
}

async function osUser(name: string): Promise<OsUser | undefined> {
  try {
    const id = async (flag: string) =>
      Number.parseInt((await execFileAsync('id', [flag, name])).stdout, 10);
    return { name, uid: await id('-u'), gid: await id('-g') };
  } catch {
    return undefined;
  }
}

/** Options for {@link startPgBouncer}. */
export interface StartPgBouncerOptions {
  readonly lookup: Extract<PgBouncerLookup, { found: true }>;
  /** A connection string of the upstream database (its host, port and database are used). */
  readonly upstreamUrl: string;
  /** Login roles and their plain-text passwords, written to the auth file. */
  readonly users: Readonly<Record<string, string>>;
  /** Server connections per database and user. */
  readonly poolSize: number;
  /** @defaultValue 'transaction' */
  readonly poolMode?: 'session' | 'transaction' | 'statement';
  /** @defaultValue 200 */
  readonly maxClientConnections?: number;
  /**
   * Startup parameters PgBouncer accepts and drops instead of refusing the client.
   * @defaultValue ['statement_timeout', 'idle_in_transaction_session_timeout']
   */
  readonly ignoreStartupParameters?: readonly string[];
}

/** A PgBouncer process of a test, on 127.0.0.1 and a free port. */
export interface TestPgBouncer {
  readonly port: number;
  /** The PgBouncer version. */
  readonly version: string;
  /** A URL for `user` through PgBouncer (the password from the auth file). */
  url(user: string): string;
  /** What PgBouncer logged so far (stderr), for failure messages. */
  log(): string;
  /** Stops the process (SIGTERM, waiting for it to exit) and removes its folder. */
  stop(): Promise<void>;
}

function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => {
        if (address !== null && typeof address === 'object') resolvePort(address.port);
        else reject(new Error('could not read the chosen port'));
      });
    });
  });
}

function quoted(value: string): string {
  return `"${value.replaceAll('"', '""')}"`;
}

/**
 * Starts PgBouncer with its own ini and auth file in a temporary folder (owned by the `-u` user
 * when running as root), listening on a free port of 127.0.0.1 without a Unix socket, logging to
 * stderr. Resolves once a client can log in through it. The system service the Debian package
 * installs plays no part: another port, another configuration.
 *
 * @example
 * ```ts
 * const bouncer = await startPgBouncer({ lookup, upstreamUrl: database.adminUrl,
 *   users: { tenantry_app: appPassword }, poolSize: 1 });
 * const tenantry = await createTenantry({ connectionString: bouncer.url('tenantry_app'), preparedStatements: false });
 * await bouncer.stop();
 * ```
 */
export async function startPgBouncer(options: StartPgBouncerOptions): Promise<TestPgBouncer> {
  const upstream = new URL(options.upstreamUrl);
  const database = decodeURIComponent(upstream.pathname.slice(1));
  const directory = await mkdtemp(join(tmpdir(), 'tenantry-pgbouncer-'));
  const iniPath = join(directory, 'pgbouncer.ini');
  const authPath = join(directory, 'userlist.txt');
  const [firstUser] = Object.keys(options.users);
  if (firstUser === undefined) throw new Error('startPgBouncer needs at least one user');
  const runAs = options.lookup.runAs;
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const ini = [
      '[databases]',
      `${database} = host=${upstream.hostname} port=${upstream.port || '5432'} dbname=${database}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'logfile =',
      'pidfile =',
      'auth_type = scram-sha-256',
      `auth_file = ${authPath}`,
      `pool_mode = ${options.poolMode ?? 'transaction'}`,
      `default_pool_size = ${options.poolSize}`,
      'min_pool_size = 0',
      'reserve_pool_size = 0',
      `max_client_conn = ${options.maxClientConnections ?? 200}`,
      `ignore_startup_parameters = ${(options.ignoreStartupParameters ?? ['statement_timeout', 'idle_in_transaction_session_timeout']).join(',')}`,
      'log_connections = 0',
      'log_disconnections = 0',
      '',
    ].join('\n');
    await writeFile(iniPath, ini, { mode: 0o600 });
    await writeFile(
      authPath,
      Object.entries(options.users)
        .map(([user, password]) => `${quoted(user)} ${quoted(password)}\n`)
        .join(''),
      { mode: 0o600 },
    );
    if (runAs !== undefined) {
      // PgBouncer drops to this user before it reads the auth file.
      for (const path of [directory, iniPath, authPath]) await chown(path, runAs.uid, runAs.gid);
    }
    await chmod(directory, 0o700);
    const args = runAs === undefined ? [iniPath] : ['-u', runAs.name, iniPath];
    const child = spawn(options.lookup.binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    // A test file that fails before its `after` hook must still exit: the process is not
    // referenced, and it goes with the test process.
    child.unref();
    const killOnExit = () => child.kill('SIGKILL');
    process.once('exit', killOnExit);
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-20_000);
    });
    (child.stderr as { unref?: () => void } | null)?.unref?.();
    const exited = new Promise<number | null>((resolveExit) =>
      child.once('exit', (code) => {
        process.removeListener('exit', killOnExit);
        resolveExit(code);
      }),
    );
    const url = (user: string) =>
      `postgres://${encodeURIComponent(user)}:${encodeURIComponent(options.users[user] ?? '')}@127.0.0.1:${port}/${encodeURIComponent(database)}`;
    const ready = await waitUntilReady(url(firstUser), child, exited);
    if (ready === 'ready') {
      return {
        port,
        version: options.lookup.version,
        url,
        log: () => stderr,
        async stop() {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
          await exited;
          await rm(directory, { recursive: true, force: true });
        },
      };
    }
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    // The port was free a moment ago; another process may have taken it since.
    if (attempt >= 3 || !/Address already in use/i.test(stderr)) {
      await rm(directory, { recursive: true, force: true });
      throw new Error(`pgbouncer did not start (${ready}):\n${stderr}`);
    }
  }
}

/** Logs in through PgBouncer until it answers, the process exits, or 15 s pass. */
async function waitUntilReady(
  url: string,
  child: ChildProcess,
  exited: Promise<number | null>,
): Promise<string> {
  const deadline = Date.now() + 15_000;
  let lastError = 'not tried';
  let hasExited = false;
  void exited.then(() => {
    hasExited = true;
  });
  while (Date.now() < deadline) {
    if (hasExited || child.exitCode !== null) return `exited with code ${child.exitCode}`;
    const client = new pg.Client({ connectionString: url });
    client.on('error', () => {});
    try {
      await client.connect();
      await client.query('select 1');
      await client.end();
      return 'ready';
    } catch (error) {
      lastError = error instanceof Error ? error.message : String(error);
      await client.end().catch(() => undefined);
    }
    await delay(50);
  }
  return `no login within 15 s: ${lastError}`;
}
