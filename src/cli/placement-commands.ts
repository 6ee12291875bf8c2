import { type Command, InvalidArgumentError, Option } from 'commander';
import { withClient } from '../database/client.ts';
import type { MigrationSource } from '../migrations/migrate.ts';
import {
  connectionUrlVariable,
  listPlacements,
  type MigrateTargetsSummary,
  migrateTargets,
  placeTenantInDatabase,
  placeTenantInSchema,
  type TargetMigrationResult,
} from '../placement/index.ts';
import { isUuid } from '../tenant-id.ts';
import { formatTable, type WithDatabase } from './job-commands.ts';
import { UsageError } from './usage-error.ts';

/**
 * Adds `tenantry placement list|set|migrate`: tenants placed in a dedicated schema or database,
 * placing a new tenant in one, and applying the application's migrations to every dedicated
 * schema and database. Progress
 * goes to stderr, summaries to stdout; `migrate` exits 1 when a schema failed.
 *
 * @example
 * ```ts
 * const program = new Command('tenantry');
 * addPlacementCommands(program, withDatabase, { sources: [{ name: 'app', directory: 'app/migrations' }] });
 * await program.parseAsync(['node', 'tenantry', 'placement', 'migrate', '--concurrency', '8']);
 * ```
 */
export function addPlacementCommands(
  program: Command,
  withDatabase: WithDatabase,
  options: { readonly sources: readonly MigrationSource[] },
): void {
  const placement = program
    .command('placement')
    .description(
      'Tenants in a dedicated schema or database: list them, place a new tenant, migrate them all.',
    );

  placement
    .command('list')
    .description(
      'List the tenants placed in their own schema or database and their latest migration.',
    )
    .option('--json', 'print the placements as JSON')
    .action(async (flags: { json?: boolean }) => {
      const listed = await withDatabase((database) =>
        listPlacements({ connectionString: database.adminUrl }),
      );
      if (flags.json === true) {
        process.stdout.write(`${JSON.stringify(listed, null, 2)}\n`);
        return;
      }
      process.stdout.write(
        formatTable(
          ['TENANT', 'SLUG', 'PLACEMENT', 'MIGRATIONS', 'LATEST'],
          listed.map((entry) => [
            entry.tenantId,
            entry.slug,
            entry.kind === 'schema'
              ? `schema ${entry.schema}`
              : `database ${entry.database} (${entry.connection})`,
            String(entry.appliedMigrations),
            entry.latestMigration ?? '-',
          ]),
          [false, false, false, true, false],
        ),
      );
    });

  placement
    .command('set')
    .description(
      'Place a tenant that has no rows yet in a schema of its own (created, migrated and verified in one transaction) or in a dedicated database (its owner URL in TENANTRY_CONNECTION_<NAME>_URL). Move a tenant with rows with "tenants move".',
    )
    .argument('<tenant>', 'the tenant id or slug')
    .addOption(
      new Option('--schema [name]', 'place it in a dedicated schema (default name t_<12 hex>)'),
    )
    .addOption(
      new Option(
        '--database <connection>',
        'place it in the dedicated database of this connection name',
      ).conflicts('schema'),
    )
    .action(async (tenant: string, flags: { schema?: string | boolean; database?: string }) => {
      if (flags.database !== undefined) {
        const connection = flags.database;
        const url = process.env[connectionUrlVariable(connection)];
        if (url === undefined || url === '') {
          throw new UsageError(
            `Set ${connectionUrlVariable(connection)} to the owner (or superuser) URL of the dedicated database of "${connection}".`,
          );
        }
        const placed = await withDatabase(async (database) =>
          placeTenantInDatabase({
            controlConnectionString: database.adminUrl,
            targetAdminUrl: url,
            connectionName: connection,
            tenantId: await resolveTenant(database.adminUrl, tenant),
            sources: options.sources,
          }),
        );
        process.stdout.write(
          `tenant ${placed.tenantId} placed in database ${placed.databaseName} (connection ${placed.connectionName}, ${placed.applied} migrations, ${placed.durationMs}ms)\n`,
        );
        return;
      }
      if (flags.schema === undefined) {
        throw new UsageError('Say where: --schema [name] or --database <connection>.');
      }
      const placed = await withDatabase(async (database) => {
        const tenantId = await resolveTenant(database.adminUrl, tenant);
        return placeTenantInSchema({
          connectionString: database.adminUrl,
          tenantId,
          ...(typeof flags.schema === 'string' ? { schema: flags.schema } : {}),
          sources: options.sources,
        });
      });
      process.stdout.write(
        `tenant ${placed.tenantId} placed in schema ${placed.schema} (${placed.applied} migrations, ${placed.durationMs}ms)\n`,
      );
    });

  placement
    .command('migrate')
    .description(
      "Apply the application's migrations (already applied to the pool) to every dedicated schema.",
    )
    .addOption(
      new Option('--concurrency <n>', 'schemas migrated at once')
        .argParser(parseConcurrency)
        .default(4),
    )
    .action(async (flags: { concurrency: number }) => {
      const summary = await withDatabase(async (database) =>
        migrateTargets({
          connectionString: database.adminUrl,
          sources: options.sources,
          concurrency: flags.concurrency,
          databases: await dedicatedDatabaseUrls(database.adminUrl),
          onProgress: ({ done, total, target }) => {
            const width = 30;
            const filled = Math.round((done / Math.max(total, 1)) * width);
            process.stderr.write(
              `\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} ${targetName(target)} ${target.status}`.padEnd(
                100,
              ),
            );
            if (done === total) process.stderr.write('\n');
          },
        }),
      );
      process.stdout.write(formatSummary(summary));
      if (summary.failed.length > 0 || summary.busy.length > 0) process.exitCode = 1;
    });
}

async function resolveTenant(adminUrl: string, tenant: string): Promise<string> {
  if (isUuid(tenant)) return tenant;
  const rows = await withClient(adminUrl, async (client) => {
    const result = await client.query<{ id: string }>(
      'select id from tenantry.tenants where slug = $1',
      [tenant],
    );
    return result.rows;
  });
  const found = rows[0];
  if (found === undefined) throw new UsageError(`No tenant with id or slug "${tenant}".`);
  return found.id;
}

function parseConcurrency(value: string): number {
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < 1 || parsed > 64) {
    throw new InvalidArgumentError('an integer from 1 to 64');
  }
  return parsed;
}

/** How a summary names a target: the schema, or `database <name> (<connection>)`. */
export function targetName(target: TargetMigrationResult): string {
  return target.database === undefined
    ? target.schema
    : `database ${target.database} (${target.connection})`;
}

/**
 * The owner URLs of the dedicated databases, by connection name, from the environment
 * (`TENANTRY_CONNECTION_<NAME>_URL`): for every connection the catalog places tenants on, and for
 * `extra` names. Connections without a variable are left out (the operations needing them say
 * which variable to set).
 */
export async function dedicatedDatabaseUrls(
  adminUrl: string,
  extra: readonly string[] = [],
  env: NodeJS.ProcessEnv = process.env,
): Promise<Record<string, string>> {
  const names = new Set(extra);
  await withClient(adminUrl, async (client) => {
    const present = await client.query(`select to_regclass('tenantry.tenant_placements') as t`);
    if (present.rows[0]?.t === null) return;
    const result = await client.query<{ name: string }>(
      'select distinct connection_name as name from tenantry.tenant_placements where connection_name is not null',
    );
    for (const row of result.rows) names.add(row.name);
  });
  const urls: Record<string, string> = {};
  for (const name of names) {
    const url = env[connectionUrlVariable(name)];
    if (url !== undefined && url !== '') urls[name] = url;
  }
  return urls;
}

function formatSummary(summary: MigrateTargetsSummary): string {
  const lines = [
    `dedicated schemas and databases: ${summary.total}, migrated ${summary.migrated}, up to date ${summary.upToDate}, failed ${summary.failed.length}, busy ${summary.busy.length} (${summary.durationMs}ms)`,
  ];
  for (const failed of summary.failed) {
    lines.push(
      `  failed ${targetName(failed)} (tenant ${failed.tenantId}): ${failed.error?.message}`,
    );
  }
  for (const busy of summary.busy) {
    lines.push(`  busy ${targetName(busy)}: another migrator holds it; run again`);
  }
  if (summary.waitingForPool.length > 0) {
    lines.push(
      `  waiting for the pool: ${summary.waitingForPool.map((file) => `${file.source}/${file.version}`).join(', ')} (run "tenantry migrate" first)`,
    );
  }
  return `${lines.join('\n')}\n`;
}
