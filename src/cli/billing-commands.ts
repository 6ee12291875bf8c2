import { type Command, InvalidArgumentError, Option } from 'commander';
import { type BillingAdmin, createBillingAdmin, type PlanDefinition } from '../billing/index.ts';
import type { TenantId } from '../tenant-id.ts';
import {
  formatTable,
  integerOption,
  parseTenantOption,
  type WithDatabase,
} from './job-commands.ts';
import { UsageError } from './usage-error.ts';

/**
 * Adds `tenantry plans list|set|assign|override` and `tenantry usage`: the plan catalog, tenants'
 * plans and limit overrides, and every tenant's usage, through `createBillingAdmin()` on the
 * owner connection. Changes apply at the next consumption.
 *
 * @example
 * ```ts
 * addBillingCommands(program, withDatabase);
 * await program.parseAsync(['node', 'tenantry', 'plans', 'set', 'pro', '--name', 'Pro', '--limit', 'seats=25']);
 * ```
 */
export function addBillingCommands(program: Command, withDatabase: WithDatabase): void {
  const withAdmin = <T>(fn: (admin: BillingAdmin) => Promise<T>): Promise<T> =>
    withDatabase(async (database) => {
      const admin = createBillingAdmin({ connectionString: database.adminUrl });
      try {
        return await fn(admin);
      } finally {
        await admin.close();
      }
    });

  const plans = program
    .command('plans')
    .description("Manage the plan catalog, tenants' plans and per-tenant limit overrides.");

  plans
    .command('list')
    .description('List plans and their limits.')
    .option('--json', 'print the plans as JSON')
    .action(async (options: { json?: boolean }) => {
      const listed = await withAdmin((admin) => admin.listPlans());
      process.stdout.write(
        options.json ? `${JSON.stringify(listed, null, 2)}\n` : formatPlans(listed),
      );
    });

  plans
    .command('set')
    .description('Create or replace a plan; metrics without --limit are unlimited.')
    .argument('<id>', 'plan id: lowercase letters, digits, - and _')
    .requiredOption('--name <name>', 'display name')
    .option(
      '--limit <metric=value>',
      'a limit, repeatable (value: a non-negative integer or "unlimited")',
      collectLimit,
    )
    .action(
      async (id: string, options: { name: string; limit?: Record<string, number | null> }) => {
        await withAdmin((admin) =>
          admin.definePlan({ id, name: options.name, limits: options.limit ?? {} }),
        );
        process.stdout.write(`plan ${id} saved\n`);
      },
    );

  plans
    .command('assign')
    .description('Move a tenant to a plan (effective at once; emits tenant.plan_changed).')
    .argument('<tenant>', 'tenant id', parseTenantOption)
    .argument('<plan>', 'plan id')
    .addOption(
      new Option(
        '--anchor-day <day>',
        'day of the month its billing periods start (1-31)',
      ).argParser(integerOption('--anchor-day', 1, 31)),
    )
    .action(async (tenant: TenantId, plan: string, options: { anchorDay?: number }) => {
      await withAdmin((admin) =>
        admin.setTenantPlan(
          tenant,
          plan,
          options.anchorDay === undefined ? {} : { anchorDay: options.anchorDay },
        ),
      );
      process.stdout.write(`tenant ${tenant} is on plan ${plan}\n`);
    });

  plans
    .command('override')
    .description("Set (or with --clear remove) a tenant's own limit for one metric.")
    .argument('<tenant>', 'tenant id', parseTenantOption)
    .argument('<metric>', 'metric name, e.g. contacts')
    .argument('[limit]', 'a non-negative integer or "unlimited"')
    .option('--clear', 'remove the override; the plan applies again')
    .action(
      async (
        tenant: TenantId,
        metric: string,
        limit: string | undefined,
        options: { clear?: boolean },
      ) => {
        if (options.clear === true) {
          const removed = await withAdmin((admin) => admin.clearLimitOverride(tenant, metric));
          process.stdout.write(
            removed ? `override of ${metric} removed\n` : `tenant had no override of ${metric}\n`,
          );
          return;
        }
        if (limit === undefined) {
          throw new UsageError('Pass the limit (an integer or "unlimited"), or --clear.');
        }
        let value: number | null;
        try {
          value = parseLimitValue(limit);
        } catch (error) {
          throw new UsageError((error as Error).message);
        }
        await withAdmin((admin) => admin.setLimitOverride(tenant, metric, value));
        process.stdout.write(`tenant ${tenant}: ${metric} limited to ${value ?? 'unlimited'}\n`);
      },
    );

  program
    .command('usage')
    .description("Every tenant's usage and limits: count metrics now, period metrics this period.")
    .addOption(new Option('--tenant <id>', 'only this tenant').argParser(parseTenantOption))
    .option('--metric <name>', 'only this metric')
    .addOption(
      new Option('--limit <n>', 'at most this many rows (1-10000)')
        .argParser(integerOption('--limit', 1, 10_000))
        .default(1000),
    )
    .option('--json', 'print the rows as JSON')
    .action(
      async (options: { tenant?: TenantId; metric?: string; limit: number; json?: boolean }) => {
        const rows = await withAdmin((admin) =>
          admin.usageReport({
            limit: options.limit,
            ...(options.tenant === undefined ? {} : { tenantId: options.tenant }),
            ...(options.metric === undefined ? {} : { metric: options.metric }),
          }),
        );
        if (options.json) {
          process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
          return;
        }
        process.stdout.write(
          rows.length === 0
            ? 'no tenants\n'
            : formatTable(
                ['TENANT', 'SLUG', 'PLAN', 'METRIC', 'USED', 'LIMIT', 'PERIOD START'],
                rows.map((row) => [
                  row.tenantId,
                  row.slug,
                  row.plan,
                  row.metric,
                  String(row.used),
                  row.limit === null ? 'unlimited' : String(row.limit),
                  row.kind === 'period' ? row.periodStart.toISOString().slice(0, 10) : '-',
                ]),
                [false, false, false, false, true, true, false],
              ),
        );
      },
    );
}

function parseLimitValue(value: string): number | null {
  if (value === 'unlimited') return null;
  const parsed = /^[0-9]{1,16}$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(parsed)) {
    throw new InvalidArgumentError(
      `A limit is a non-negative integer or "unlimited", not "${value}".`,
    );
  }
  return parsed;
}

function collectLimit(
  value: string,
  previous: Record<string, number | null> | undefined,
): Record<string, number | null> {
  const match = /^([a-z][a-z0-9_]{0,62})=(.+)$/.exec(value);
  if (match === null) {
    throw new InvalidArgumentError(
      `--limit takes metric=value, e.g. contacts=1000; got "${value}".`,
    );
  }
  const [, metric = '', limit = ''] = match;
  return { ...(previous ?? {}), [metric]: parseLimitValue(limit) };
}

function formatPlans(plans: readonly PlanDefinition[]): string {
  if (plans.length === 0) return 'no plans\n';
  return formatTable(
    ['PLAN', 'NAME', 'LIMITS'],
    plans.map((plan) => [
      plan.id,
      plan.name,
      Object.entries(plan.limits)
        .map(([metric, limit]) => `${metric}=${limit ?? 'unlimited'}`)
        .join(' ') || '(unlimited)',
    ]),
    [false, false, false],
  );
}
