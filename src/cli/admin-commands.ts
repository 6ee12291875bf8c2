import { type Command, InvalidArgumentError, Option } from 'commander';
import {
  type Analytics,
  createAnalytics,
  type DailySeries,
  type NoisyMeasure,
  type NoisyNeighbour,
  type TenantStatus,
  type TenantSummary,
} from '../platform/analytics.ts';
import type { TenantId } from '../tenant-id.ts';
import {
  formatTable,
  integerOption,
  parseTenantOption,
  type WithDatabase,
} from './job-commands.ts';
import { UsageError } from './usage-error.ts';

/** Settings of the analytics commands that do not come from the database. */
export interface AdminCommandOptions {
  /**
   * The operator token (`TENANTRY_ADMIN_TOKEN`) for `noisy --by requests|latency`, which asks the
   * API process's admin listener: request figures live in that process's memory.
   */
  readonly adminToken?: string | undefined;
}

const tenantStatuses: readonly TenantStatus[] = ['active', 'suspended', 'moving', 'deleted'];
const noisyMeasures: readonly NoisyMeasure[] = ['rows', 'storage', 'requests', 'latency'];

/**
 * Adds the read-only analytics commands: `tenants list`, `tenants stats <id>` (under the
 * `tenants` group the caller created), `metrics` and `noisy`. They read as the analytics role
 * (`TENANTRY_ANALYTICS_DATABASE_URL`, or the embedded server's), falling back to the owner
 * connection in read-only transactions when none is configured.
 *
 * @example
 * ```ts
 * const program = new Command('tenantry');
 * const tenants = program.command('tenants').description('Tenants: list, stats, lifecycle.');
 * addAdminCommands(tenants, program, withDatabase, { adminToken: env.TENANTRY_ADMIN_TOKEN });
 * await program.parseAsync(['node', 'tenantry', 'noisy', '--by', 'rows']);
 * ```
 */
export function addAdminCommands(
  tenants: Command,
  program: Command,
  withDatabase: WithDatabase,
  options: AdminCommandOptions = {},
): void {
  const withAnalytics = <T>(
    fn: (analytics: Analytics) => Promise<T>,
    series: readonly DailySeries[] = [],
  ): Promise<T> =>
    withDatabase(async (database) => {
      const analytics = await createAnalytics({
        connectionString: database.analyticsUrl ?? database.adminUrl,
        readOnly: database.analyticsUrl !== undefined,
        series,
      });
      try {
        return await fn(analytics);
      } finally {
        await analytics.close();
      }
    });

  tenants
    .command('list')
    .description('List tenants with their plan, status, placement and current usage, by slug.')
    .option('--search <text>', 'part of the slug or name, or a whole tenant id')
    .addOption(
      new Option('--status <status>', 'only tenants in this status').choices(tenantStatuses),
    )
    .option('--plan <plan>', 'only tenants on this plan')
    .addOption(
      new Option('--limit <n>', 'at most this many tenants (1-500)')
        .argParser(integerOption('--limit', 1, 500))
        .default(50),
    )
    .option('--cursor <cursor>', 'continue after the previous page (its "next page" hint)')
    .option('--json', 'print the page as JSON')
    .action(
      async (flags: {
        search?: string;
        status?: TenantStatus;
        plan?: string;
        limit: number;
        cursor?: string;
        json?: boolean;
      }) => {
        const page = await withAnalytics((analytics) =>
          analytics.listTenants({
            limit: flags.limit,
            ...(flags.search === undefined ? {} : { search: flags.search }),
            ...(flags.status === undefined ? {} : { status: flags.status }),
            ...(flags.plan === undefined ? {} : { plan: flags.plan }),
            ...(flags.cursor === undefined ? {} : { cursor: flags.cursor }),
          }),
        );
        if (flags.json) {
          process.stdout.write(`${JSON.stringify(page, null, 2)}\n`);
          return;
        }
        process.stdout.write(
          page.tenants.length === 0
            ? 'no tenants\n'
            : formatTable(
                ['SLUG', 'ID', 'PLAN', 'STATUS', 'PLACEMENT', 'USAGE'],
                page.tenants.map((tenant) => [
                  tenant.slug,
                  tenant.id,
                  tenant.plan,
                  tenant.status,
                  tenant.placement,
                  formatUsage(tenant),
                ]),
                [false, false, false, false, false, false],
              ),
        );
        if (page.nextCursor !== null) {
          process.stdout.write(`next page: --cursor ${page.nextCursor}\n`);
        }
      },
    );

  tenants
    .command('stats')
    .description(
      "One tenant's rows per tenant table (exact counts), stored bytes, usage and jobs per state.",
    )
    .argument('<id>', 'the tenant id', parseTenantOption)
    .option('--json', 'print the statistics as JSON')
    .action(async (id: TenantId, flags: { json?: boolean }) => {
      const stats = await withAnalytics((analytics) => analytics.tenantStats(id));
      if (flags.json) {
        process.stdout.write(`${JSON.stringify(stats, null, 2)}\n`);
        return;
      }
      const { tenant } = stats;
      const lines = [
        `tenant ${tenant.slug} (${tenant.id}): ${tenant.name}`,
        `plan ${tenant.plan}, status ${tenant.status}, placement ${tenant.placement}`,
        `usage: ${formatUsage(tenant)}`,
        `storage: ${stats.storage.files} files, ${formatBytes(stats.storage.bytes)}`,
        `jobs: ${stats.jobs.waiting} waiting, ${stats.jobs.running} running, ${stats.jobs.dead} dead, ${stats.jobs.parked} parked`,
        'requests: counted in the API process; see GET /tenants/<id>/stats on its admin listener',
        '',
      ];
      process.stdout.write(`${lines.join('\n')}\n`);
      const filled = stats.tables.filter((entry) => entry.rows > 0);
      process.stdout.write(
        formatTable(
          ['TABLE', 'ROWS'],
          [
            ...filled.map((entry) => [entry.table, String(entry.rows)]),
            ['total', String(stats.totalRows)],
          ],
          [false, true],
        ),
      );
      const empty = stats.tables.length - filled.length;
      if (empty > 0) process.stdout.write(`(${empty} other tenant tables have no rows)\n`);
      if (stats.unreadableTables.length > 0) {
        process.stdout.write(`not readable (not counted): ${stats.unreadableTables.join(', ')}\n`);
      }
    });

  program
    .command('metrics')
    .description(
      'Platform metrics across tenants: rows per day of the given series, active tenants, tenants per status, storage, job backlog.',
    )
    .addOption(
      new Option('--days <n>', 'days in the window, today included (1-366)')
        .argParser(integerOption('--days', 1, 366))
        .default(30),
    )
    .option(
      '--series <name=table:column>',
      'count rows of a tenant table per day of a timestamptz column, e.g. messages=messages:created_at (repeatable)',
      collectSeries,
    )
    .option('--json', 'print the metrics as JSON')
    .action(async (flags: { days: number; series?: DailySeries[]; json?: boolean }) => {
      const series = flags.series ?? [];
      const metrics = await withAnalytics(
        (analytics) => analytics.platformMetrics({ days: flags.days }),
        series,
      );
      if (flags.json) {
        process.stdout.write(`${JSON.stringify(metrics, null, 2)}\n`);
        return;
      }
      const names = series.map((entry) => entry.name);
      if (names.length > 0) {
        process.stdout.write(
          formatTable(
            ['DAY', ...names.map((name) => name.toUpperCase()), 'ACTIVE TENANTS'],
            metrics.days.map((day) => [
              day.day,
              ...names.map((name) => String(day.counts[name] ?? 0)),
              String(day.activeTenants),
            ]),
            [false, ...names.map(() => true), true],
          ),
        );
        process.stdout.write(
          `${names.map((name) => `${name}: ${metrics.totals[name] ?? 0}`).join(', ')}; active tenants in ${flags.days} days: ${metrics.activeTenants ?? 0}\n`,
        );
      }
      const { tenants, storage, jobs } = metrics;
      process.stdout.write(
        [
          `tenants: ${tenants.total} (${tenants.active} active, ${tenants.suspended} suspended, ${tenants.moving} moving, ${tenants.deleted} deleted)`,
          `storage: ${storage.files} files, ${formatBytes(storage.bytes)}`,
          `jobs: ${jobs.waiting} waiting (backlog), ${jobs.running} running, ${jobs.dead} dead, ${jobs.parked} parked`,
          '',
        ].join('\n'),
      );
    });

  program
    .command('noisy')
    .description(
      'Rank tenants by rows (exact counts over every tenant table), stored bytes, or, from the running API, requests and p95 latency.',
    )
    .addOption(
      new Option('--by <measure>', 'what to rank by').choices(noisyMeasures).default('rows'),
    )
    .addOption(
      new Option('--limit <n>', 'at most this many tenants (1-100)')
        .argParser(integerOption('--limit', 1, 100))
        .default(10),
    )
    .option(
      '--admin-url <url>',
      'the API process admin listener, for --by requests|latency',
      'http://127.0.0.1:3001',
    )
    .option('--json', 'print the ranking as JSON')
    .action(
      async (flags: { by: NoisyMeasure; limit: number; adminUrl: string; json?: boolean }) => {
        const ranking =
          flags.by === 'requests' || flags.by === 'latency'
            ? await askAdminListener(flags.adminUrl, options.adminToken, flags.by, flags.limit)
            : await withAnalytics((analytics) =>
                analytics.noisyNeighbours({ by: flags.by, limit: flags.limit }),
              );
        if (flags.json) {
          process.stdout.write(`${JSON.stringify(ranking, null, 2)}\n`);
          return;
        }
        process.stdout.write(
          ranking.length === 0
            ? 'no tenants to rank\n'
            : formatTable(
                ['#', 'SLUG', 'ID', 'PLAN', 'STATUS', flags.by.toUpperCase(), 'SHARE'],
                ranking.map((entry, index) => [
                  String(index + 1),
                  entry.slug,
                  entry.tenantId,
                  entry.plan,
                  entry.status,
                  formatValue(entry),
                  entry.share === null ? '-' : `${(entry.share * 100).toFixed(1)}%`,
                ]),
                [true, false, false, false, false, true, true],
              ),
        );
      },
    );
}

async function askAdminListener(
  adminUrl: string,
  token: string | undefined,
  by: NoisyMeasure,
  limit: number,
): Promise<NoisyNeighbour[]> {
  if (token === undefined || token === '') {
    throw new UsageError(
      `Requests and latency are counted in the API process's memory: set TENANTRY_ADMIN_TOKEN to the token its admin listener uses (it is asked at ${adminUrl}).`,
    );
  }
  let url: URL;
  try {
    url = new URL('/metrics/noisy-neighbours', adminUrl);
  } catch {
    throw new UsageError(
      `--admin-url must be a URL such as http://127.0.0.1:3001, got "${adminUrl}".`,
    );
  }
  url.searchParams.set('by', by);
  url.searchParams.set('limit', String(limit));
  let response: Response;
  try {
    response = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
  } catch (error) {
    throw new UsageError(
      `Cannot reach the admin listener at ${url.origin} (${error instanceof Error ? error.message : String(error)}): is the API running with TENANTRY_ADMIN_TOKEN set? Pass its address with --admin-url.`,
    );
  }
  const body = (await response.json().catch(() => undefined)) as
    | { tenants?: NoisyNeighbour[]; detail?: string; code?: string }
    | undefined;
  if (!response.ok || body?.tenants === undefined) {
    throw new UsageError(
      `The admin listener at ${url.origin} answered ${response.status}: ${body?.detail ?? 'no details'}${body?.code === undefined ? '' : ` [${body.code}]`}`,
    );
  }
  return body.tenants;
}

function collectSeries(value: string, previous: DailySeries[] | undefined): DailySeries[] {
  const match =
    /^([a-z][a-z0-9_]*)=([A-Za-z_][\w$]*(?:\.[A-Za-z_][\w$]*)?):([A-Za-z_][\w$]*)$/.exec(value);
  if (match === null) {
    throw new InvalidArgumentError(
      'A series is name=table:column, e.g. messages=messages:created_at (table may be schema.table).',
    );
  }
  return [
    ...(previous ?? []),
    { name: match[1] ?? '', table: match[2] ?? '', timestampColumn: match[3] ?? '' },
  ];
}

function formatUsage(tenant: TenantSummary): string {
  const entries = Object.entries(tenant.usage).sort(([a], [b]) => a.localeCompare(b));
  if (entries.length === 0) return '-';
  return entries
    .map(([metric, used]) => `${metric}=${metric.endsWith('_bytes') ? formatBytes(used) : used}`)
    .join(' ');
}

function formatValue(entry: NoisyNeighbour): string {
  if (entry.unit === 'bytes') return formatBytes(entry.value);
  if (entry.unit === 'ms') return `${entry.value.toFixed(1)} ms`;
  return String(entry.value);
}

function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}
