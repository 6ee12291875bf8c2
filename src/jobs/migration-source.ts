import { fileURLToPath } from 'node:url';
import { runMigrations } from 'graphile-worker';
import type { MigrationSource } from '../migrations/migrate.ts';
import { createRunnerPool, runnerSchema, toRunnerLogger } from './runner-support.ts';

/** The folder of Tenantry's job migrations (applied under the source name `tenantry_jobs`). */
export const jobsMigrationsDirectory = fileURLToPath(new URL('../../sql/jobs/', import.meta.url));

/**
 * The migration source that installs the job queue: graphile-worker's schema (through its own
 * migrator, as the owner role, pinned to the version Tenantry ships with), then Tenantry's job
 * objects (`enqueue_job`, completions, schedules, worker heartbeats). List it before the
 * application's sources.
 *
 * @example
 * ```ts
 * import { migrate } from 'tenantry';
 * import { jobsMigrationSource } from 'tenantry/jobs';
 * await migrate({ connectionString: adminUrl, sources: [jobsMigrationSource(), { name: 'app', directory: 'migrations' }] });
 * ```
 */
export function jobsMigrationSource(): MigrationSource {
  const source: MigrationSource = {
    name: 'tenantry_jobs',
    directory: jobsMigrationsDirectory,
    async before({ connectionString, ownerRole, logger }) {
      const pool = createRunnerPool(connectionString, ownerRole, 1);
      try {
        logger.info({ schema: runnerSchema }, 'installing the job runner schema');
        await runMigrations({ pgPool: pool, schema: runnerSchema, logger: toRunnerLogger(logger) });
      } finally {
        await pool.end();
      }
    },
  };
  return Object.freeze(source);
}
