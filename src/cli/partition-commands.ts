import { type Command, InvalidArgumentError, Option } from 'commander';
import {
  dedicatePartition,
  listPartitions,
  type PartitionInfo,
  type PartitionMoveResult,
  type PartitionProgress,
  undedicatePartition,
} from '../platform/partitioning.ts';
import { parseTenantId, type TenantId } from '../tenant-id.ts';
import { formatTable, type WithDatabase } from './job-commands.ts';

/**
 * Adds `tenantry partitions list|dedicate|undedicate`: the partitions of a tenant-partitioned
 * table, and moving one tenant into (or out of) a partition of its own, on the owner connection.
 * Progress goes to stderr, the summary to stdout.
 *
 * @example
 * ```ts
 * const program = new Command('tenantry');
 * addPartitionCommands(program, withDatabase);
 * await program.parseAsync(['node', 'tenantry', 'partitions', 'dedicate', 'messages', tenantId]);
 * ```
 */
export function addPartitionCommands(program: Command, withDatabase: WithDatabase): void {
  const partitions = program
    .command('partitions')
    .description(
      'Tables partitioned by tenant: list their partitions, give a large tenant its own partition or move it back.',
    );

  partitions
    .command('list')
    .description(
      'List the partitions of a tenant-partitioned table, with their tenant, size and RLS.',
    )
    .argument('<table>', 'the partitioned table, e.g. messages or tenantry.usage_events')
    .option('--json', 'print the partitions as JSON')
    .action(async (table: string, options: { json?: boolean }) => {
      const listed = await withDatabase((database) =>
        listPartitions({ connectionString: database.adminUrl, table }),
      );
      process.stdout.write(
        options.json === true
          ? `${JSON.stringify(listed, null, 2)}\n`
          : formatPartitionTable(listed),
      );
    });

  const lockTimeout = new Option(
    '--lock-timeout <ms>',
    'give up when a lock is not granted in time',
  )
    .argParser(parseLockTimeout)
    .default(10_000);

  partitions
    .command('dedicate')
    .description(
      "Move one tenant's rows out of the hash partitions into a LIST partition of its own (one transaction; writes to the table pause while it runs).",
    )
    .argument('<table>', 'the partitioned table, e.g. messages or tenantry.usage_events')
    .argument('<tenant>', 'the tenant id', parseTenantArgument)
    .addOption(lockTimeout)
    .action(async (table: string, tenantId: TenantId, options: { lockTimeout: number }) => {
      const result = await withDatabase((database) =>
        dedicatePartition({
          connectionString: database.adminUrl,
          table,
          tenantId,
          lockTimeoutMs: options.lockTimeout,
          onProgress: writeProgress,
        }),
      );
      process.stdout.write(
        `${summary(result, `moved from ${result.hashPartition} into ${result.partition}`)}\n`,
      );
    });

  partitions
    .command('undedicate')
    .description(
      "Move a tenant's rows from its dedicated partition back into the hash partitions and drop the partition.",
    )
    .argument('<table>', 'the partitioned table, e.g. messages or tenantry.usage_events')
    .argument('<tenant>', 'the tenant id', parseTenantArgument)
    .addOption(lockTimeout)
    .action(async (table: string, tenantId: TenantId, options: { lockTimeout: number }) => {
      const result = await withDatabase((database) =>
        undedicatePartition({
          connectionString: database.adminUrl,
          table,
          tenantId,
          lockTimeoutMs: options.lockTimeout,
          onProgress: writeProgress,
        }),
      );
      process.stdout.write(
        `${summary(result, `moved from ${result.partition} (dropped) back into ${result.hashPartition}`)}\n`,
      );
    });
}

function writeProgress(step: PartitionProgress): void {
  const rows = step.rows === undefined ? '' : ` rows=${step.rows}`;
  process.stderr.write(`${step.phase} ${step.partition}${rows} elapsed=${step.elapsedMs}ms\n`);
}

function summary(result: PartitionMoveResult, what: string): string {
  return [
    `${result.table}: ${result.rowsMoved} rows of tenant ${result.tenantId} ${what}`,
    `verified: the tenant's ${result.rowsMoved} rows and the ${result.neighbourRows} rows of the other tenants in ${result.hashPartition} are unchanged (${result.durationMs} ms)`,
  ].join('\n');
}

/**
 * Renders partitions as a table: name, role, tenant, estimated rows, size, RLS.
 *
 * @example
 * ```ts
 * process.stdout.write(formatPartitionTable(await listPartitions({ connectionString, table: 'messages' })));
 * ```
 */
export function formatPartitionTable(partitions: readonly PartitionInfo[]): string {
  return formatTable(
    ['PARTITION', 'ROLE', 'TENANT', 'ROWS (EST.)', 'SIZE', 'RLS', 'BOUND'],
    partitions.map((partition) => [
      partition.name,
      partition.role,
      partition.tenantId ?? '-',
      partition.estimatedRows === undefined ? '?' : String(Math.round(partition.estimatedRows)),
      formatBytes(partition.totalBytes),
      partition.rowSecurity && partition.forceRowSecurity
        ? 'forced'
        : partition.rowSecurity
          ? 'enabled'
          : 'OFF',
      partition.bound,
    ]),
    [false, false, false, true, true, false, false],
  );
}

function formatBytes(bytes: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

function parseTenantArgument(value: string): TenantId {
  try {
    return parseTenantId(value);
  } catch {
    throw new InvalidArgumentError(
      'expected a tenant id (a UUID such as 0b5c6a3e-6a8e-4f7e-9a51-2f7c1c9d2e10).',
    );
  }
}

function parseLockTimeout(value: string): number {
  const parsed = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(parsed) || parsed < 1) {
    throw new InvalidArgumentError('expected a positive number of milliseconds.');
  }
  return parsed;
}
