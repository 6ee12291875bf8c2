import { type Command, InvalidArgumentError, Option } from 'commander';
import { createJobAdmin, type JobAdmin, type JobInfo, type JobState } from '../jobs/index.ts';
import { parseTenantId, type TenantId } from '../tenant-id.ts';
import type { PreparedDatabase } from './database.ts';

/** Runs a command's work on a prepared database and stops it afterwards (see `main.ts`). */
export type WithDatabase = <T>(fn: (database: PreparedDatabase) => Promise<T>) => Promise<T>;

const jobStates: readonly JobState[] = ['waiting', 'running', 'dead', 'parked'];

/**
 * Adds `tenantry jobs list|count|replay|resume`: operator access to the job queue through
 * `createJobAdmin()` on the owner connection.
 *
 * @example
 * ```ts
 * const program = new Command('tenantry');
 * addJobCommands(program, withDatabase);
 * await program.parseAsync(['node', 'tenantry', 'jobs', 'list', '--state', 'dead']);
 * ```
 */
export function addJobCommands(program: Command, withDatabase: WithDatabase): void {
  const withAdmin = <T>(fn: (admin: JobAdmin) => Promise<T>): Promise<T> =>
    withDatabase(async (database) => {
      const admin = createJobAdmin({ connectionString: database.adminUrl });
      try {
        return await fn(admin);
      } finally {
        await admin.close();
      }
    });

  const jobs = program
    .command('jobs')
    .description(
      'Inspect the job queue: list and count jobs, replay dead ones, resume parked ones.',
    );

  jobs
    .command('list')
    .description('List jobs, newest first.')
    .addOption(new Option('--tenant <id>', "only this tenant's jobs").argParser(parseTenantOption))
    .addOption(new Option('--state <state>', 'only jobs in this state').choices(jobStates))
    .option('--task <name>', 'only jobs of this task')
    .addOption(
      new Option('--limit <n>', 'at most this many jobs (1-1000)')
        .argParser(integerOption('--limit', 1, 1000))
        .default(100),
    )
    .option('--json', 'print the jobs as JSON')
    .action(
      async (options: {
        tenant?: TenantId;
        state?: JobState;
        task?: string;
        limit: number;
        json?: boolean;
      }) => {
        const listed = await withAdmin((admin) =>
          admin.listJobs({
            limit: options.limit,
            ...(options.tenant === undefined ? {} : { tenantId: options.tenant }),
            ...(options.state === undefined ? {} : { state: options.state }),
            ...(options.task === undefined ? {} : { task: options.task }),
          }),
        );
        process.stdout.write(
          options.json
            ? `${JSON.stringify(listed.map(toJson), null, 2)}\n`
            : formatJobTable(listed),
        );
      },
    );

  jobs
    .command('count')
    .description('Count jobs per state.')
    .addOption(new Option('--tenant <id>', "only this tenant's jobs").argParser(parseTenantOption))
    .option('--json', 'print the counts as JSON')
    .action(async (options: { tenant?: TenantId; json?: boolean }) => {
      const counts = await withAdmin((admin) => admin.countJobs(options.tenant));
      process.stdout.write(
        options.json
          ? `${JSON.stringify(counts)}\n`
          : formatTable(
              ['STATE', 'JOBS'],
              jobStates.map((state) => [state, String(counts[state])]),
              [false, true],
            ),
      );
    });

  jobs
    .command('replay')
    .description('Run dead-lettered jobs again from attempt 1, with their payload and tenant.')
    .argument('<id...>', 'ids of dead jobs (see `jobs list --state dead`)', collectJobId)
    .action(async (ids: string[]) => {
      const replayed = await withAdmin((admin) => admin.replayJobs(ids));
      process.stdout.write(`replayed ${replayed.length} jobs: ${replayed.join(', ')}\n`);
    });

  jobs
    .command('resume')
    .description("Make a tenant's parked jobs runnable again (after resuming the tenant).")
    .addOption(
      new Option('--tenant <id>', 'the tenant whose parked jobs run again')
        .argParser(parseTenantOption)
        .makeOptionMandatory(),
    )
    .action(async (options: { tenant: TenantId }) => {
      const resumed = await withAdmin((admin) => admin.resumeParkedJobs(options.tenant));
      process.stdout.write(`resumed ${resumed} parked jobs of tenant ${options.tenant}\n`);
    });
}

/**
 * A commander parser for a tenant id option: the canonical id, or a usage error naming the form.
 *
 * @example
 * ```ts
 * new Option('--tenant <id>').argParser(parseTenantOption);
 * ```
 */
export function parseTenantOption(value: string): TenantId {
  try {
    return parseTenantId(value);
  } catch {
    throw new InvalidArgumentError(
      'Pass the tenant id: a UUID in its 36-character form, e.g. 0b5c6a3e-6a8e-4f7e-9a51-2f7c1c9d2e10.',
    );
  }
}

/**
 * A commander parser for an integer option between `min` and `max`.
 *
 * @example
 * ```ts
 * new Option('--limit <n>').argParser(integerOption('--limit', 1, 1000));
 * ```
 */
export function integerOption(name: string, min: number, max: number): (value: string) => number {
  return (value) => {
    const parsed = /^[0-9]+$/.test(value) ? Number(value) : Number.NaN;
    if (!Number.isSafeInteger(parsed) || parsed < min || parsed > max) {
      throw new InvalidArgumentError(`${name} takes an integer from ${min} to ${max}.`);
    }
    return parsed;
  };
}

function collectJobId(value: string, previous: string[] | undefined): string[] {
  if (!/^[1-9][0-9]{0,18}$/.test(value)) {
    throw new InvalidArgumentError(
      'A job id is a positive integer, as `tenantry jobs list` prints it.',
    );
  }
  return [...(previous ?? []), value];
}

function toJson(job: JobInfo) {
  return {
    id: job.id,
    task: job.task,
    tenantId: job.tenantId ?? null,
    state: job.state,
    attempts: job.attempts,
    maxAttempts: job.maxAttempts,
    runAt: job.runAt?.toISOString() ?? null,
    lastError: job.lastError ?? null,
    key: job.key ?? null,
    createdAt: job.createdAt.toISOString(),
  };
}

function formatJobTable(jobs: readonly JobInfo[]): string {
  if (jobs.length === 0) return 'no jobs\n';
  return formatTable(
    ['ID', 'TASK', 'TENANT', 'STATE', 'ATTEMPTS', 'RUN AT', 'LAST ERROR'],
    jobs.map((job) => [
      job.id,
      job.task,
      job.tenantId ?? '-',
      job.state,
      `${job.attempts}/${job.maxAttempts}`,
      job.runAt === undefined ? '-' : `${job.runAt.toISOString().slice(0, 19)}Z`,
      oneLine(job.lastError ?? '-', 60),
    ]),
    [true, false, false, false, true, false, false],
  );
}

/**
 * Renders rows as a plain-text table with padded columns (right-aligned where asked).
 *
 * @example
 * ```ts
 * process.stdout.write(formatTable(['STATE', 'JOBS'], [['dead', '3']], [false, true]));
 * ```
 */
export function formatTable(
  header: readonly string[],
  rows: readonly (readonly string[])[],
  alignRight: readonly boolean[],
): string {
  const widths = header.map((title, column) =>
    Math.max(title.length, ...rows.map((row) => row[column]?.length ?? 0)),
  );
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, column) => {
        const width = widths[column] ?? 0;
        if (column === cells.length - 1 && alignRight[column] !== true) return cell;
        return alignRight[column] === true ? cell.padStart(width) : cell.padEnd(width);
      })
      .join('  ');
  return `${[header, ...rows].map(line).join('\n')}\n`;
}

function oneLine(text: string, max: number): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length <= max ? flat : `${flat.slice(0, max - 1)}…`;
}
