import { randomBytes } from 'node:crypto';
import { defaultRoleNames, quoteIdentifier } from '../config.ts';
import { bootstrapDatabase, withCredentials, withDatabase } from '../database/bootstrap.ts';
import { withClient } from '../database/client.ts';
import { startEmbeddedPostgres } from '../database/embedded-postgres.ts';
import { TenantryError } from '../errors.ts';
import { type MigrationSource, migrate } from '../migrations/migrate.ts';

/** Connection details of the test cluster, handed from the global setup to each test file. */
export interface TestCluster {
  /** Superuser connection to the maintenance database. */
  readonly adminUrl: string;
  /** Name of the migrated template database. */
  readonly template: string;
  readonly appPassword: string;
  readonly analyticsPassword: string;
}

/** A private database cloned from the template for one test file. */
export interface TestDatabase {
  readonly name: string;
  /** Superuser connection to this database (to inspect or break things on purpose). */
  readonly adminUrl: string;
  /** App role connection to this database. */
  readonly appUrl: string;
  /** Analytics role connection to this database. */
  readonly analyticsUrl: string;
  /** Drops the database (terminating leftover connections). */
  drop(): Promise<void>;
}

/** Options for {@link startTestCluster}. */
export interface StartTestClusterOptions {
  /** Superuser URL of an existing server; an embedded cluster is started when omitted. */
  readonly databaseUrl?: string;
  /** Folder of the embedded test cluster. @defaultValue '.tenantry/test-postgres' */
  readonly directory?: string;
  /** Application migrations applied to the template after Tenantry's own. */
  readonly sources?: readonly MigrationSource[];
  /** Template database name. @defaultValue 'tenantry_test_template' */
  readonly template?: string;
}

const clusterVariable = 'TENANTRY_TEST_CLUSTER';

/**
 * Starts (or reuses) a test cluster and builds a freshly migrated template database, once per
 * test run. Call it from a `node --test --test-global-setup` module; it publishes the cluster
 * to test files through the `TENANTRY_TEST_CLUSTER` environment variable.
 *
 * @example
 * ```ts
 * // test/global-setup.ts
 * import { startTestCluster } from 'tenantry/testing';
 * let stop: () => Promise<void>;
 * export async function globalSetup() {
 *   ({ stop } = await startTestCluster({ sources: [{ name: 'app', directory: 'migrations' }] }));
 * }
 * export async function globalTeardown() { await stop(); }
 * ```
 */
export async function startTestCluster(
  options: StartTestClusterOptions = {},
): Promise<{ cluster: TestCluster; stop: () => Promise<void> }> {
  const template = options.template ?? 'tenantry_test_template';
  const appPassword = randomBytes(16).toString('hex');
  const analyticsPassword = randomBytes(16).toString('hex');
  let adminUrl: string;
  let stop: () => Promise<void> = async () => {};
  if (options.databaseUrl !== undefined) {
    adminUrl = withDatabase(options.databaseUrl, 'postgres');
  } else {
    const server = await startEmbeddedPostgres({
      directory: options.directory ?? '.tenantry/test-postgres',
      durability: 'fast',
    });
    adminUrl = server.connectionString('postgres');
    stop = () => server.stop();
  }
  try {
    await dropDatabase(adminUrl, template);
    await bootstrapDatabase({
      adminConnectionString: adminUrl,
      database: template,
      passwords: { app: appPassword, analytics: analyticsPassword },
    });
    await migrate({
      connectionString: withDatabase(adminUrl, template),
      sources: options.sources ?? [],
    });
  } catch (error) {
    await stop();
    throw error;
  }
  const cluster: TestCluster = Object.freeze({
    adminUrl,
    template,
    appPassword,
    analyticsPassword,
  });
  process.env[clusterVariable] = JSON.stringify(cluster);
  return { cluster, stop };
}

/**
 * Clones the migrated template into a private database for one test file.
 *
 * @example
 * ```ts
 * import { after, before } from 'node:test';
 * import { createTestDatabase } from 'tenantry/testing';
 * let database;
 * before(async () => { database = await createTestDatabase(); });
 * after(() => database.drop());
 * ```
 */
export async function createTestDatabase(
  cluster: TestCluster = readTestCluster(),
): Promise<TestDatabase> {
  const name = `tenantry_test_${randomBytes(6).toString('hex')}`;
  await withClient(cluster.adminUrl, async (client) => {
    await client.query(
      `create database ${quoteIdentifier(name)} template ${quoteIdentifier(cluster.template)} owner ${quoteIdentifier(defaultRoleNames.owner)}`,
    );
  });
  await withClient(withDatabase(cluster.adminUrl, name), async (client) => {
    await client.query(`
      revoke all on database ${quoteIdentifier(name)} from public;
      grant connect on database ${quoteIdentifier(name)} to ${quoteIdentifier(defaultRoleNames.app)};
      grant connect, temporary on database ${quoteIdentifier(name)} to ${quoteIdentifier(defaultRoleNames.analytics)};`);
  });
  const adminUrl = withDatabase(cluster.adminUrl, name);
  return Object.freeze({
    name,
    adminUrl,
    appUrl: withCredentials(adminUrl, defaultRoleNames.app, cluster.appPassword),
    analyticsUrl: withCredentials(adminUrl, defaultRoleNames.analytics, cluster.analyticsPassword),
    drop: () => dropDatabase(cluster.adminUrl, name),
  });
}

/**
 * Reads the cluster published by {@link startTestCluster}.
 *
 * @example
 * ```ts
 * import { readTestCluster } from 'tenantry/testing';
 * const { adminUrl, template } = readTestCluster();
 * ```
 */
export function readTestCluster(): TestCluster {
  const raw = process.env[clusterVariable];
  if (raw === undefined) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `${clusterVariable} is not set: run the tests with "npm test" (its global setup starts the test cluster).`,
    );
  }
  return JSON.parse(raw) as TestCluster;
}

async function dropDatabase(adminUrl: string, name: string): Promise<void> {
  await withClient(adminUrl, (client) =>
    client.query(`drop database if exists ${quoteIdentifier(name)} with (force)`),
  );
}
