import { Command, CommanderError, Option } from 'commander';
import { billingMigrationSource } from '../billing/index.ts';
import { withClient } from '../database/client.ts';
import { type DoctorReport, formatDoctorReport, runDoctor } from '../doctor/doctor.ts';
import { isTenantryError } from '../errors.ts';
import { jobsMigrationSource } from '../jobs/index.ts';
import { migrate } from '../migrations/migrate.ts';
import { connectionUrlVariable, migrateTargets } from '../placement/index.ts';
import { platformMigrationSource } from '../platform/index.ts';
import { storageMigrationSource } from '../storage/index.ts';
import { createTenantry } from '../tenantry.ts';
import { addAdminCommands } from './admin-commands.ts';
import { addBillingCommands } from './billing-commands.ts';
import { addCitusCommands } from './citus-commands.ts';
import { loadCliConfig } from './config.ts';
import { createConsoleLogger } from './console-logger.ts';
import { type PreparedDatabase, prepareDatabase, requireAppUrl } from './database.ts';
import { addJobCommands } from './job-commands.ts';
import { addMoveCommands } from './move-commands.ts';
import { addPartitionCommands } from './partition-commands.ts';
import { addPlacementCommands, dedicatedDatabaseUrls, targetName } from './placement-commands.ts';
import { addTenantLifecycleCommands } from './tenant-commands.ts';
import { UsageError } from './usage-error.ts';
import { addWebhookCommands } from './webhook-commands.ts';
import { addWorkerCommand } from './worker-command.ts';

const config = loadCliConfig();
const logger = createConsoleLogger(config.logLevel);

async function withDatabase<T>(fn: (database: PreparedDatabase) => Promise<T>): Promise<T> {
  const database = await prepareDatabase({ ...config, stopOnSignal: false }, logger);
  const stop = () => {
    void database.stop().finally(() => process.exit(130));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    return await fn(database);
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    await database.stop();
  }
}

async function applyMigrations(database: PreparedDatabase, directory: string) {
  const summary = await migrate({
    connectionString: database.adminUrl,
    sources: [
      jobsMigrationSource(),
      storageMigrationSource(),
      billingMigrationSource(),
      platformMigrationSource(),
      { name: 'app', directory },
    ],
    logger,
  });
  const applied = summary.applied.length;
  process.stdout.write(
    `migrations: ${applied} applied, ${summary.upToDate} already up to date${
      applied > 0
        ? ` (${summary.applied.map((m) => `${m.source}/${m.version}-${m.name} ${m.durationMs}ms`).join(', ')})`
        : ''
    }\n`,
  );
  // Tenants placed in dedicated schemas and databases get the same app migrations, each target
  // on its own.
  const targets = await migrateTargets({
    connectionString: database.adminUrl,
    sources: [{ name: 'app', directory }],
    databases: await dedicatedDatabaseUrls(database.adminUrl),
  });
  if (targets.total > 0) {
    process.stdout.write(
      `dedicated schemas and databases: ${targets.migrated} migrated, ${targets.upToDate} up to date, ${targets.failed.length} failed, ${targets.busy.length} busy\n`,
    );
    for (const failed of targets.failed) {
      process.stderr.write(
        `  ${targetName(failed)} (tenant ${failed.tenantId}): ${failed.error?.message ?? 'failed'}\n`,
      );
    }
    if (targets.failed.length > 0 || targets.busy.length > 0) process.exitCode = 1;
  }
}

const program = new Command()
  .name('tenantry')
  .description('Multi-tenant PostgreSQL with database-enforced isolation.')
  .showHelpAfterError()
  // Before the commands are added, so they inherit it: usage errors end up in the catch below.
  .exitOverride();

program
  .command('setup')
  .description('Create the roles and the database (embedded server unless DATABASE_URL is set).')
  .action(async () => {
    await withDatabase(async () => {
      process.stdout.write('roles and database are ready\n');
    });
  });

program
  .command('migrate')
  .description("Apply Tenantry's migrations (core, then jobs), then the application's.")
  .addOption(
    new Option('--dir <path>', 'application migration folder').default(config.migrationsDirectory),
  )
  .action(async (options: { dir: string }) => {
    await withDatabase((database) => applyMigrations(database, options.dir));
  });

program
  .command('doctor')
  .description('Audit tenant isolation; exits 1 when anything is found.')
  .option('--json', 'print the report as JSON')
  .option('--schema <name...>', 'schemas holding tenant tables', ['public'])
  .option(
    '--no-placements',
    "audit only the --schema schemas, not tenants' dedicated schemas and databases",
  )
  .action(async (options: { json?: boolean; schema: string[]; placements: boolean }) => {
    await withDatabase(async (database) => {
      const report = await runDoctor({
        connectionString: database.adminUrl,
        schemas: options.schema,
        placementSchemas: options.placements !== false,
      });
      const dedicated =
        options.placements === false ? [] : await auditDedicatedDatabases(database.adminUrl);
      if (options.json) {
        const output =
          dedicated.length === 0 ? report : { ...report, dedicatedDatabases: dedicated };
        process.stdout.write(`${JSON.stringify(output, null, 2)}\n`);
      } else {
        process.stdout.write(`${formatDoctorReport(report)}\n`);
        for (const entry of dedicated) {
          process.stdout.write(
            entry.report === undefined
              ? `\ndedicated database of connection ${entry.connection}: not audited (${entry.skipped})\n`
              : `\ndedicated database ${entry.database} (connection ${entry.connection}):\n${formatDoctorReport(entry.report)}\n`,
          );
        }
      }
      if (
        report.findings.length > 0 ||
        dedicated.some((entry) => (entry.report?.findings.length ?? 0) > 0)
      ) {
        process.exitCode = 1;
      }
    });
  });

/**
 * Audits the `public` schema of every dedicated database the catalog names whose owner URL is
 * configured (`TENANTRY_CONNECTION_<NAME>_URL`); the others are listed as not audited.
 */
async function auditDedicatedDatabases(adminUrl: string): Promise<
  {
    readonly connection: string;
    readonly database?: string;
    readonly report?: DoctorReport;
    readonly skipped?: string;
  }[]
> {
  const names = await withClient(adminUrl, async (client) => {
    const present = await client.query(`select to_regclass('tenantry.tenant_placements') as t`);
    if (present.rows[0]?.t === null) return [];
    const result = await client.query<{ connection: string; database: string }>(
      `select distinct connection_name as connection, database_name as database
         from tenantry.tenant_placements where connection_name is not null order by 1, 2`,
    );
    return result.rows;
  });
  if (names.length === 0) return [];
  const urls = await dedicatedDatabaseUrls(adminUrl);
  const audited = [];
  for (const { connection, database } of names) {
    const url = urls[connection];
    if (url === undefined) {
      audited.push({
        connection,
        database,
        skipped: `set ${connectionUrlVariable(connection)} to audit it`,
      });
      continue;
    }
    audited.push({
      connection,
      database,
      report: await runDoctor({ connectionString: url, placementSchemas: false }),
    });
  }
  return audited;
}

program
  .command('start')
  .description(
    'Prepare the database, apply migrations, check the app role connection and print the audit.',
  )
  .action(async () => {
    await withDatabase(async (database) => {
      await applyMigrations(database, config.migrationsDirectory);
      const tenantry = await createTenantry({ connectionString: requireAppUrl(database) });
      try {
        process.stdout.write(
          `app role connected; tenant tables: ${[...tenantry.tenantTables].filter((t) => !t.includes('.')).join(', ')}\n`,
        );
      } finally {
        await tenantry.close();
      }
      const report = await runDoctor({ connectionString: database.adminUrl });
      process.stdout.write(`${formatDoctorReport(report)}\n`);
      if (report.findings.length > 0) process.exitCode = 1;
    });
  });

addWorkerCommand(program, config, logger);
addJobCommands(program, withDatabase);
addBillingCommands(program, withDatabase);
addPartitionCommands(program, withDatabase);
addCitusCommands(program, withDatabase);
addPlacementCommands(program, withDatabase, {
  sources: [{ name: 'app', directory: config.migrationsDirectory }],
});
const tenants = program.command('tenants').description('Tenants: list, statistics, lifecycle.');
addAdminCommands(tenants, program, withDatabase, { adminToken: process.env.TENANTRY_ADMIN_TOKEN });
addTenantLifecycleCommands(tenants, withDatabase, process.env);
addMoveCommands(tenants, withDatabase, {
  sources: [{ name: 'app', directory: config.migrationsDirectory }],
});
addWebhookCommands(program, withDatabase, config, logger);

try {
  await program.parseAsync();
} catch (error) {
  if (error instanceof CommanderError) {
    // Commander printed the message (and help); a command line it refused is a usage error.
    process.exitCode = error.exitCode === 0 ? 0 : 2;
  } else if (error instanceof UsageError) {
    process.stderr.write(`tenantry: ${error.message}\n`);
    process.exitCode = 2;
  } else {
    process.stderr.write(
      isTenantryError(error)
        ? `tenantry: ${error.message} [${error.code}]\n`
        : `tenantry: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    process.exitCode = 1;
  }
}
