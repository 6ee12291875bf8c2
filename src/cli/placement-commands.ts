import { type Command, InvalidArgumentError, Option } from 'commander';
import { withClient } from '../database/client.ts';
import type { MigrationSource } from '../migrations/migrate.ts';
import {
  listPlacements,
  type MigrateTargetsSummary,
  migrateTargets,
  placeTenantInSchema,
} from '../placement/index.ts';
import { isUuid } from '../tenant-id.ts';
import { formatTable, type WithDatabase } from './job-commands.ts';
import { UsageError } from './usage-error.ts';

/**
 * Adds `tenantry placement list|set|migrate`: tenants placed in a dedicated schema, placing a new
 * tenant in one, and applying the application's migrations to every dedicated schema. Progress
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
    .description('Tenants in a dedicated schema: list them, place a new tenant, migrate them all.');

  placement
    .command('list')
    .description('List the tenants placed in their own schema and their latest migration.')
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
          ['TENANT', 'SLUG', 'SCHEMA', 'MIGRATIONS', 'LATEST'],
          listed.map((entry) => [
            entry.tenantId,
            entry.slug,
            entry.schema,
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
      'Place a tenant that has no rows yet in a schema of its own (created, migrated and verified in one transaction).',
    )
    .argument('<tenant>', 'the tenant id or slug')
    .addOption(
      new Option('--schema [name]', 'place it in a dedicated schema (default name t_<12 hex>)'),
    )
    .action(async (tenant: string, flags: { schema?: string | boolean }) => {
      if (flags.schema === undefined) {
        throw new UsageError('Say where: --schema [name] (the only placement this version makes).');
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
      const summary = await withDatabase((database) =>
        migrateTargets({
          connectionString: database.adminUrl,
          sources: options.sources,
          concurrency: flags.concurrency,
          onProgress: ({ done, total, target }) => {
            const width = 30;
            const filled = Math.round((done / Math.max(total, 1)) * width);
            process.stderr.write(
              `\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} ${target.schema} ${target.status}`.padEnd(
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

function formatSummary(summary: MigrateTargetsSummary): string {
  const lines = [
    `dedicated schemas: ${summary.total}, migrated ${summary.migrated}, up to date ${summary.upToDate}, failed ${summary.failed.length}, busy ${summary.busy.length} (${summary.durationMs}ms)`,
  ];
  for (const failed of summary.failed) {
    lines.push(`  failed ${failed.schema} (tenant ${failed.tenantId}): ${failed.error?.message}`);
  }
  for (const busy of summary.busy) {
    lines.push(`  busy ${busy.schema}: another migrator holds it; run again`);
  }
  if (summary.waitingForPool.length > 0) {
    lines.push(
      `  waiting for the pool: ${summary.waitingForPool.map((file) => `${file.source}/${file.version}`).join(', ')} (run "tenantry migrate" first)`,
    );
  }
  return `${lines.join('\n')}\n`;
}
