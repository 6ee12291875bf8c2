import { type Command, Option } from 'commander';
import { withClient } from '../database/client.ts';
import type { MigrationSource } from '../migrations/migrate.ts';
import { connectionUrlVariable } from '../placement/migrate-targets.ts';
import {
  moveTenant,
  resumeTenantMove,
  rollbackTenantMove,
  type TenantMoveProgress,
  type TenantMoveReport,
} from '../placement/tenant-move.ts';
import { isUuid } from '../tenant-id.ts';
import { formatTable, type WithDatabase } from './job-commands.ts';
import { dedicatedDatabaseUrls } from './placement-commands.ts';
import { UsageError } from './usage-error.ts';

interface MoveFlags {
  readonly to?: string;
  readonly schema?: string;
  readonly connection?: string;
  readonly resume?: boolean;
  readonly rollback?: boolean;
  readonly json?: boolean;
  readonly fenceGraceMs?: string;
}

/**
 * Adds `tenants move <tenant> --to pool|schema|database [--schema name] [--connection name]`,
 * with `--resume` and `--rollback` for a move that stopped: an online move of a tenant's rows
 * between the shared tables, a dedicated schema and a dedicated database (see `moveTenant()`;
 * dedicated databases' owner URLs come from `TENANTRY_CONNECTION_<NAME>_URL`). Progress (each step, rows per table) goes to
 * stderr; the report goes to stdout, as a summary or as JSON with `--json`.
 *
 * @example
 * ```ts
 * const tenants = program.command('tenants');
 * addMoveCommands(tenants, withDatabase, { sources: [{ name: 'app', directory: 'app/migrations' }] });
 * await program.parseAsync(['node', 'tenantry', 'tenants', 'move', 'acme', '--to', 'schema']);
 * ```
 */
export function addMoveCommands(
  tenants: Command,
  withDatabase: WithDatabase,
  options: { readonly sources: readonly MigrationSource[] },
): void {
  tenants
    .command('move')
    .description(
      "Move a tenant's rows between the shared tables, a dedicated schema and a dedicated database, online (its writes are held for the switch only).",
    )
    .argument('<tenant>', 'the tenant id or slug')
    .addOption(
      new Option('--to <placement>', 'where to move it').choices(['pool', 'schema', 'database']),
    )
    .option('--schema <name>', 'the dedicated schema to create (default t_<12 hex of the id>)')
    .option(
      '--connection <name>',
      'with --to database: the connection name of the dedicated database (its owner URL in TENANTRY_CONNECTION_<NAME>_URL)',
    )
    .option('--resume', 'finish the unfinished move of the tenant')
    .option('--rollback', 'undo the unfinished move of the tenant (before it switched)')
    .option('--fence-grace-ms <ms>', 'how long the pool stays fenced after a move out of it')
    .option('--json', 'print the report as JSON')
    .action(async (tenant: string, flags: MoveFlags) => {
      const modes = [flags.to !== undefined, flags.resume === true, flags.rollback === true];
      if (modes.filter(Boolean).length !== 1) {
        throw new UsageError('Say one of --to pool|schema|database, --resume or --rollback.');
      }
      if (flags.schema !== undefined && flags.to !== 'schema') {
        throw new UsageError('--schema goes with --to schema.');
      }
      if ((flags.connection !== undefined) !== (flags.to === 'database')) {
        throw new UsageError(
          '--to database needs --connection <name>, and --connection goes with it only.',
        );
      }
      if (flags.connection !== undefined && !process.env[connectionUrlVariable(flags.connection)]) {
        throw new UsageError(
          `Set ${connectionUrlVariable(flags.connection)} to the owner (or superuser) URL of the dedicated database of "${flags.connection}".`,
        );
      }
      let fenceGraceMs: number | undefined;
      if (flags.fenceGraceMs !== undefined) {
        fenceGraceMs = Number(flags.fenceGraceMs);
        if (!Number.isSafeInteger(fenceGraceMs) || fenceGraceMs < 0) {
          throw new UsageError('--fence-grace-ms must be a non-negative integer.');
        }
      }
      const report = await withDatabase(async (database) => {
        const common = {
          connectionString: database.adminUrl,
          tenantId: await resolveTenant(database.adminUrl, tenant),
          sources: options.sources,
          databases: await dedicatedDatabaseUrls(
            database.adminUrl,
            flags.connection === undefined ? [] : [flags.connection],
          ),
          onProgress: printProgress,
          ...(fenceGraceMs === undefined ? {} : { fenceGraceMs }),
        };
        if (flags.resume === true) return resumeTenantMove(common);
        if (flags.rollback === true) return rollbackTenantMove(common);
        return moveTenant({
          ...common,
          to: flags.to as 'pool' | 'schema' | 'database',
          ...(flags.schema === undefined ? {} : { schema: flags.schema }),
          ...(flags.connection === undefined ? {} : { connection: flags.connection }),
        });
      });
      process.stdout.write(
        flags.json === true ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report),
      );
    });
}

function printProgress(progress: TenantMoveProgress): void {
  if (progress.table === undefined) {
    process.stderr.write(`move ${progress.moveId}: ${progress.step}\n`);
  } else if (progress.phase === 'copy') {
    process.stderr.write(`  copied ${progress.table}: ${progress.rows} rows\n`);
  } else if ((progress.rows ?? 0) > 0 || (progress.deleted ?? 0) > 0) {
    process.stderr.write(
      `  caught up ${progress.table}: +${progress.rows} -${progress.deleted ?? 0} rows\n`,
    );
  }
}

/** The human summary of a move report. */
export function formatReport(report: TenantMoveReport): string {
  const where = (
    placement: string,
    schema: string,
    database: string | null,
    connection: string | null,
  ) =>
    placement === 'database'
      ? `${placement} ${database} via ${connection}`
      : `${placement} (${schema})`;
  const head =
    `tenant ${report.tenantId}: move ${report.moveId} ${where(report.from, report.fromSchema, report.fromDatabase, report.fromConnection)} -> ${where(report.to, report.toSchema, report.toDatabase, report.toConnection)} ${report.step}` +
    (report.holdMs === null ? '' : `, writes held ${report.holdMs}ms`) +
    `, ${report.durationMs}ms\n`;
  if (report.tables.length === 0) return head;
  return (
    head +
    formatTable(
      ['TABLE', 'ROWS', 'COPIED', 'CAUGHT UP +', 'CAUGHT UP -', 'CHECKSUM'],
      report.tables.map((table) => [
        table.table,
        String(table.rows),
        String(table.copiedRows),
        String(table.deltaInserted),
        String(table.deltaDeleted),
        table.checksum,
      ]),
      [false, true, true, true, true, false],
    )
  );
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
