import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { Command } from 'commander';
import { createTenantLifecycle, type TenantLifecycle } from '../platform/lifecycle.ts';
import { createLocalStorageDriver } from '../storage/local-driver.ts';
import { createS3StorageDriver } from '../storage/s3-driver.ts';
import type { StorageDriver } from '../storage/storage-driver.ts';
import type { TenantId } from '../tenant-id.ts';
import { parseTenantOption, type WithDatabase } from './job-commands.ts';
import { UsageError } from './usage-error.ts';

/** Where export and erase find the tenants' files. */
interface StorageFlags {
  readonly storageRoot?: string;
  readonly s3Bucket?: string;
}

const defaultSigningKeyVariable = 'TENANTRY_ERASURE_SIGNING_KEY';

/**
 * Adds `create`, `suspend`, `resume`, `export` and `erase` to the `tenants` command: the tenant
 * lifecycle through `createTenantLifecycle()` on the owner connection. Progress goes to stderr;
 * stdout carries the result (the new tenant, the signed erasure report as JSON).
 *
 * Files: `export` and `erase` use the same storage as the reference app — `--storage-root` or
 * `TENANTRY_STORAGE_ROOT` (local driver), `--s3-bucket` or `TENANTRY_S3_BUCKET` (with the
 * `TENANTRY_S3_*` settings), else `<data folder>/files` when it exists.
 *
 * @example
 * ```ts
 * const tenants = program.command('tenants').description('Tenant catalog and lifecycle.');
 * addTenantLifecycleCommands(tenants, withDatabase, process.env);
 * await program.parseAsync(['node', 'tenantry', 'tenants', 'suspend', tenantId]);
 * ```
 */
export function addTenantLifecycleCommands(
  tenants: Command,
  withDatabase: WithDatabase,
  env: Readonly<Record<string, string | undefined>>,
): void {
  const withLifecycle = <T>(
    storageFlags: StorageFlags | undefined,
    fn: (lifecycle: TenantLifecycle) => Promise<T>,
  ): Promise<T> =>
    withDatabase(async (database) => {
      const driver = storageFlags === undefined ? undefined : openStorage(storageFlags, env);
      const lifecycle = createTenantLifecycle({
        connectionString: database.adminUrl,
        ...(driver === undefined ? {} : { storage: { driver } }),
      });
      try {
        return await fn(lifecycle);
      } finally {
        await lifecycle.close();
        await driver?.close();
      }
    });
  const progress = (line: string) => {
    process.stderr.write(`${line}\n`);
  };

  tenants
    .command('create')
    .description('Create an active tenant (emits tenant.created).')
    .argument('<slug>', 'lowercase letters, digits and inner hyphens, at most 63')
    .option('--name <name>', 'display name (default: the slug)')
    .option('--plan <plan>', 'plan id (default: free)')
    .option('--json', 'print the tenant as JSON')
    .action(async (slug: string, options: { name?: string; plan?: string; json?: boolean }) => {
      const tenant = await withLifecycle(undefined, (lifecycle) =>
        lifecycle.create({
          slug,
          name: options.name ?? slug,
          ...(options.plan === undefined ? {} : { plan: options.plan }),
        }),
      );
      process.stdout.write(
        options.json
          ? `${JSON.stringify(tenant, null, 2)}\n`
          : `created tenant ${tenant.id} (slug ${tenant.slug}, plan ${tenant.plan})\n`,
      );
    });

  tenants
    .command('suspend')
    .description('Suspend a tenant: its API requests are refused and its jobs are parked.')
    .argument('<id>', 'tenant id', parseTenantOption)
    .option('--reason <text>', 'why (kept on the tenant and in the tenant.suspended event)')
    .action(async (id: TenantId, options: { reason?: string }) => {
      const result = await withLifecycle(undefined, (lifecycle) =>
        lifecycle.suspend(id, options.reason === undefined ? {} : { reason: options.reason }),
      );
      process.stdout.write(
        result.changed
          ? `suspended tenant ${id}\n`
          : `tenant ${id} was already suspended; nothing changed\n`,
      );
    });

  tenants
    .command('resume')
    .description('Resume a suspended tenant and run its parked jobs.')
    .argument('<id>', 'tenant id', parseTenantOption)
    .action(async (id: TenantId) => {
      const result = await withLifecycle(undefined, (lifecycle) => lifecycle.resume(id));
      process.stdout.write(
        `${result.changed ? 'resumed' : 'already active:'} tenant ${id}; ${result.jobsResumed} parked jobs runnable again\n`,
      );
    });

  tenants
    .command('export')
    .description(
      'Write everything a tenant owns (rows of every tenant table, events, files) to a .tar.gz with a manifest and checksums.',
    )
    .argument('<id>', 'tenant id', parseTenantOption)
    .requiredOption('--out <file>', 'archive to write (.tar.gz)')
    .option('--storage-root <dir>', 'local storage folder (default: TENANTRY_STORAGE_ROOT)')
    .option('--s3-bucket <name>', 'S3 bucket (default: TENANTRY_S3_BUCKET)')
    .option('--no-files', 'registry rows only, without the file objects')
    .action(
      async (
        id: TenantId,
        options: { out: string; storageRoot?: string; s3Bucket?: string; files: boolean },
      ) => {
        const started = Date.now();
        const result = await withLifecycle(options.files ? options : undefined, (lifecycle) =>
          lifecycle.exportTenant({
            tenantId: id,
            output: resolve(options.out),
            includeFiles: options.files,
            onProgress: (event) => {
              if (event.kind === 'files') {
                if (event.files % 100 === 0) {
                  progress(`  files  ${event.files} (${formatBytes(event.bytes)})`);
                }
              } else if (event.done) {
                progress(`  ${event.table}  ${event.rows.toLocaleString('en-US')} rows`);
              } else if (event.rows >= 100_000 && event.rows % 100_000 < 1000) {
                progress(`  ${event.table}  ${event.rows.toLocaleString('en-US')} rows so far`);
              }
            },
          }),
        );
        const { manifest } = result;
        const missing = manifest.files.filter((file) => file.path === undefined).length;
        progress(
          `exported tenant ${id} (${String(manifest.tenant.slug)}) in ${((Date.now() - started) / 1000).toFixed(1)} s: ` +
            `${manifest.tables.length} tables, ${manifest.totals.rows.toLocaleString('en-US')} rows, ` +
            `${manifest.events.rows} events, ${manifest.totals.files} files (${formatBytes(manifest.totals.fileBytes)}` +
            `${missing > 0 ? `, ${missing} without an object` : ''})${manifest.filesIncluded ? '' : ', file objects not included'}`,
        );
        process.stdout.write(
          `${resolve(options.out)}  ${formatBytes(result.bytes)}  sha256 ${result.sha256}\n`,
        );
      },
    );

  tenants
    .command('erase')
    .description(
      'Hard-delete everything a tenant owns (rows, files, jobs, events), verify, and print the signed report (JSON).',
    )
    .argument('<id>', 'tenant id', parseTenantOption)
    .option('--yes', 'confirm: this cannot be undone')
    .option('--force', 'erase even though the tenant is active (otherwise suspend it first)')
    .option(
      '--signing-key-env <name>',
      'environment variable holding the report signing key',
      defaultSigningKeyVariable,
    )
    .option('--storage-root <dir>', 'local storage folder (default: TENANTRY_STORAGE_ROOT)')
    .option('--s3-bucket <name>', 'S3 bucket (default: TENANTRY_S3_BUCKET)')
    .action(
      async (
        id: TenantId,
        options: {
          yes?: boolean;
          force?: boolean;
          signingKeyEnv: string;
          storageRoot?: string;
          s3Bucket?: string;
        },
      ) => {
        if (options.yes !== true) {
          throw new UsageError(
            `Erasing tenant ${id} deletes all its data for good; run again with --yes (export it first: tenantry tenants export ${id} --out <file>).`,
          );
        }
        const signingKey = env[options.signingKeyEnv];
        if (signingKey === undefined || Buffer.byteLength(signingKey) < 32) {
          throw new UsageError(
            `Set ${options.signingKeyEnv} to the report signing key (at least 32 bytes, e.g. openssl rand -base64 48), or name another variable with --signing-key-env.`,
          );
        }
        const result = await withLifecycle(options, (lifecycle) =>
          lifecycle.eraseTenant({
            tenantId: id,
            signingKey,
            force: options.force === true,
            onProgress: (event) => {
              if (event.kind === 'step') progress(`  step ${event.step}`);
              else if (event.done && event.deleted > 0) {
                progress(
                  `    ${event.table}  ${event.deleted.toLocaleString('en-US')} rows deleted`,
                );
              }
            },
          }),
        );
        const { report } = result;
        const rows = report.tables.reduce((sum, table) => sum + table.rowsDeleted, 0);
        progress(
          result.alreadyFinished
            ? `tenant ${id} was erased at ${report.finishedAt}; nothing changed (the stored report follows)`
            : `erased tenant ${id} (${report.slug}): ${rows.toLocaleString('en-US')} rows in ${report.tables.length} tables, ` +
                `${report.objects === null ? 'no file storage' : `${report.objects.deleted} objects`}, ` +
                `${report.jobs.removed} jobs, ${report.outboxEvents.deleted} outbox events; verified: nothing remains`,
        );
        process.stdout.write(
          `${JSON.stringify({ report: result.report, signature: result.signature }, null, 2)}\n`,
        );
      },
    );
}

function openStorage(
  flags: StorageFlags,
  env: Readonly<Record<string, string | undefined>>,
): StorageDriver | undefined {
  const text = (name: string) => (env[name] === '' ? undefined : env[name]);
  const bucket =
    flags.s3Bucket ?? (flags.storageRoot === undefined ? text('TENANTRY_S3_BUCKET') : undefined);
  if (bucket !== undefined) {
    const accessKeyId = text('TENANTRY_S3_ACCESS_KEY_ID');
    const secretAccessKey = text('TENANTRY_S3_SECRET_ACCESS_KEY');
    const region = text('TENANTRY_S3_REGION');
    const endpoint = text('TENANTRY_S3_ENDPOINT');
    const pathStyle = text('TENANTRY_S3_FORCE_PATH_STYLE');
    return createS3StorageDriver({
      bucket,
      ...(region === undefined ? {} : { region }),
      ...(endpoint === undefined ? {} : { endpoint }),
      ...(pathStyle === undefined ? {} : { forcePathStyle: pathStyle === 'true' }),
      ...(accessKeyId === undefined || secretAccessKey === undefined
        ? {}
        : { credentials: { accessKeyId, secretAccessKey } }),
    });
  }
  const configured = flags.storageRoot ?? text('TENANTRY_STORAGE_ROOT');
  const root = resolve(
    configured ??
      join(dirname(resolve(text('TENANTRY_DATA_DIR') ?? '.tenantry/postgres')), 'files'),
  );
  if (configured === undefined && !existsSync(root)) return undefined;
  if (!existsSync(root)) {
    throw new UsageError(`The storage folder ${root} does not exist; check --storage-root.`);
  }
  // The CLI only reads and deletes objects: it signs no URL, so any secret will do.
  return createLocalStorageDriver({
    root,
    baseUrl: 'http://localhost/files',
    secret: randomBytes(32).toString('hex'),
  });
}

function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}
