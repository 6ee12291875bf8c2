import type { Command } from 'commander';
import { withClient } from '../database/client.ts';
import { TenantryError } from '../errors.ts';
import {
  type DistributionPlan,
  detectCitus,
  distributeTenantTables,
  planDistribution,
  readDistributionCatalog,
} from '../placement/citus.ts';
import { formatTable, type WithDatabase } from './job-commands.ts';

/** Where the Citus commands write; the process's streams unless a test captures them. */
export interface CitusCommandOutput {
  readonly stdout: { write(text: string): unknown };
  readonly stderr: { write(text: string): unknown };
}

/**
 * Adds `tenantry citus status|distribute`: what Citus holds and what distribution would do,
 * and distributing the tenant tables of a migrated database on a Citus coordinator. On a server
 * without Citus both explain it and fail with `TENANTRY_ERR_CONFIG_INVALID` (exit 1), changing
 * nothing. Progress goes to stderr, reports to stdout.
 *
 * @example
 * ```ts
 * const program = new Command('tenantry');
 * addCitusCommands(program, withDatabase);
 * await program.parseAsync(['node', 'tenantry', 'citus', 'distribute']);
 * ```
 */
export function addCitusCommands(
  program: Command,
  withDatabase: WithDatabase,
  output: CitusCommandOutput = process,
): void {
  const citus = program
    .command('citus')
    .description(
      'Citus scale-out: show how the tables are distributed, distribute the tenant tables by tenant_id.',
    );

  citus
    .command('status')
    .description(
      'Show the Citus version and workers, and for every table what Citus holds and what "distribute" would do.',
    )
    .option('--json', 'print the status as JSON')
    .action(async (flags: { json?: boolean }) => {
      const { info, plan } = await withDatabase((database) =>
        withClient(database.adminUrl, async (client) => ({
          info: await detectCitus(client),
          plan: planDistribution(await readDistributionCatalog(client)),
        })),
      );
      if (flags.json === true) {
        output.stdout.write(`${JSON.stringify({ citus: info, plan }, null, 2)}\n`);
      } else {
        output.stdout.write(
          info.installed
            ? `citus ${info.version}: ${info.workers} workers${info.coordinatorInMetadata ? ', coordinator in the metadata' : ''}\n`
            : 'citus: not installed in this database (what "distribute" would do on a coordinator:)\n',
        );
        output.stdout.write(formatPlan(plan));
      }
      if (!info.installed) {
        throw new TenantryError(
          'TENANTRY_ERR_CONFIG_INVALID',
          'This database has no Citus extension; point DATABASE_URL at a Citus coordinator (docs/guides/scale-out-with-citus.md).',
        );
      }
    });

  citus
    .command('distribute')
    .description(
      'After "tenantry migrate": make the catalog tables reference tables, distribute every tenant table by tenant_id (co-located) and let SET LOCAL reach the workers. Safe to run again.',
    )
    .action(async () => {
      const summary = await withDatabase((database) =>
        distributeTenantTables({
          connectionString: database.adminUrl,
          onProgress: ({ done, total, step, durationMs }) => {
            output.stderr.write(
              `[${done}/${total}] ${step.action === 'reference' ? 'reference  ' : 'distributed'} ${step.table} (${durationMs}ms)\n`,
            );
          },
        }),
      );
      const lines = [
        `citus ${summary.citusVersion}, ${summary.workers} workers: ${summary.reference.length} reference tables made, ${summary.distributed.length} tenant tables distributed, ${summary.alreadyDone.length} already done (${summary.durationMs}ms)`,
        `co-located with: ${summary.anchor ?? '-'}`,
        `on the coordinator: ${summary.local.map((entry) => entry.table).join(', ') || '-'}`,
        ...summary.settings.map((statement) => `applied: ${statement}`),
      ];
      output.stdout.write(`${lines.join('\n')}\n`);
    });
}

function formatPlan(plan: DistributionPlan): string {
  const rows = [
    ...plan.steps.map((step) => [
      step.table,
      step.action === 'reference' ? 'reference' : 'distributed by tenant_id',
      step.status === 'done' ? 'done' : 'pending',
      step.colocateWith ?? '',
    ]),
    ...plan.local.map((entry) => [entry.table, 'stays on the coordinator', '', '']),
  ];
  let text = formatTable(['TABLE', 'CITUS', 'STATUS', 'CO-LOCATED WITH'], rows, [
    false,
    false,
    false,
    false,
  ]);
  if (plan.blockers.length > 0) {
    text += `blockers (distribute refuses until they are fixed):\n${plan.blockers
      .map((blocker) => `  ${blocker.table}: ${blocker.problem}\n`)
      .join('')}`;
  }
  return text;
}
