import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LightMyRequestResponse } from 'fastify';
import { SignJWT } from 'jose';
import {
  createMigrationCheck,
  createTenantDirectory,
  createTenantry,
  silentLogger,
  type TenantDirectory,
  type Tenantry,
} from 'tenantry';
import { billingMigrationSource, createPlanLimitCache } from 'tenantry/billing';
import { jobsMigrationSource } from 'tenantry/jobs';
import {
  createSchemaPlacementRouter,
  placeTenantInSchema,
  type SchemaPlacementRouter,
} from 'tenantry/placement';
import { platformMigrationSource } from 'tenantry/platform';
import { storageMigrationSource } from 'tenantry/storage';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { buildApp } from '../app/app.ts';
import type { AuthConfig } from '../app/config.ts';
import type { AppDatabase } from '../app/database.ts';
import { type AppStorage, createAppStorage } from '../app/files/app-storage.ts';
import type { AppInstance } from '../app/http/types.ts';
import { type AppJobs, setupJobs } from '../app/jobs.ts';
import { withClient } from './fixtures.ts';

/**
 * Where {@link createWorkspace} puts a new workspace: the shared tables of `public` (`pool`) or a
 * dedicated schema of its own (`schema`, routed by a placement router).
 */
export type TestPlacement = 'pool' | 'schema';

/** The app's migration files, as the source `placeTenantInSchema` replays in a new schema. */
export const appMigrationSource = Object.freeze({
  name: 'app',
  directory: new URL('../app/migrations/', import.meta.url).pathname,
});

/**
 * The placement the app suites run with: `TENANTRY_TEST_PLACEMENT` (`pool` or `schema`),
 * `pool` when unset.
 */
export function testPlacementFromEnv(): TestPlacement {
  const value = process.env.TENANTRY_TEST_PLACEMENT ?? 'pool';
  if (value !== 'pool' && value !== 'schema') {
    throw new Error(`TENANTRY_TEST_PLACEMENT must be "pool" or "schema", not "${value}"`);
  }
  return value;
}

/** A reference app on a private database clone, driven through `app.inject()`. */
export interface TestApp {
  readonly app: AppInstance;
  /** Where {@link createWorkspace} places new workspaces. */
  readonly placement: TestPlacement;
  /**
   * The dedicated schema of each workspace {@link createWorkspace} placed in one, by tenant id
   * (empty in `pool` placement).
   */
  readonly schemas: ReadonlyMap<string, string>;
  /**
   * The placement router's `schemaFor` in `schema` placement (pass it to any other Tenantry
   * instance the test opens on this database), `undefined` in `pool` placement.
   */
  readonly tenantSchema: SchemaPlacementRouter['schemaFor'] | undefined;
  readonly database: TestDatabase;
  readonly tenantry: Tenantry<AppDatabase>;
  readonly directory: TenantDirectory;
  readonly auth: AuthConfig & { readonly mode: 'local' };
  /** The app's jobs (no worker runs them unless a test starts one). */
  readonly jobs: AppJobs;
  /** The app's storage: the local driver in a temporary folder, URLs under `http://localhost/files`. */
  readonly files: AppStorage;
  /** The local driver's root folder. */
  readonly filesRoot: string;
  /** Closes the app (and its pools) and drops the database. */
  close(): Promise<void>;
}

/** A workspace made directly in the database, with a member and a token for them. */
export interface TestWorkspace {
  readonly tenantId: string;
  readonly slug: string;
  readonly userId: string;
  readonly email: string;
  readonly role: 'owner' | 'admin' | 'member';
  /** A valid access token for this user in this workspace. */
  readonly token: string;
  /** `{ authorization: 'Bearer …' }` */
  readonly headers: Readonly<Record<string, string>>;
}

/** Starts the reference app on a fresh clone of the test template. */
export async function createTestApp(
  overrides: {
    readonly webhookToleranceSec?: number;
    readonly baseDomain?: string;
    readonly maxUploadBytes?: number;
    /** @defaultValue {@link testPlacementFromEnv} */
    readonly placement?: TestPlacement;
  } = {},
): Promise<TestApp> {
  const placement = overrides.placement ?? testPlacementFromEnv();
  const database = await createTestDatabase();
  let router: SchemaPlacementRouter | undefined;
  if (placement === 'schema') {
    router = await createSchemaPlacementRouter({ connectionString: database.appUrl });
  }
  const tenantry = await createTenantry<AppDatabase>({
    connectionString: database.appUrl,
    ...(router === undefined ? {} : { tenantSchema: router.schemaFor }),
  });
  const directory = await createTenantDirectory({ connectionString: database.appUrl });
  const auth = Object.freeze({
    mode: 'local' as const,
    jwtSecret: randomBytes(32).toString('hex'),
    issuer: 'tenantry-test',
    audience: 'tenantry-test-api',
    accessTokenTtlSec: 900,
    refreshTokenTtlSec: 3600,
  });
  const filesRoot = await mkdtemp(join(tmpdir(), 'tenantry-app-files-'));
  const files = createAppStorage({
    driver: 'local',
    root: filesRoot,
    secret: randomBytes(32).toString('hex'),
    baseUrl: 'http://localhost/files',
    maxUploadBytes: overrides.maxUploadBytes ?? 1024 * 1024,
  });
  // The plan's requests-per-minute limit applies in tests as in production (memory store).
  const planLimits = await createPlanLimitCache({
    connectionString: database.appUrl,
    metrics: ['api_requests_per_minute'],
  });
  const jobs = await setupJobs({
    tenantry,
    appConnectionString: database.appUrl,
    logger: silentLogger,
    files,
    ...(router === undefined ? {} : { tenantSchema: router.schemaFor }),
  });
  const app = await buildApp({
    tenantry,
    directory,
    auth,
    pendingMigrations: await createMigrationCheck({
      sources: [
        jobsMigrationSource(),
        storageMigrationSource(),
        billingMigrationSource(),
        platformMigrationSource(),
        appMigrationSource,
      ],
    }),
    webhookToleranceSec: overrides.webhookToleranceSec ?? 300,
    baseDomain: overrides.baseDomain,
    jobs,
    files,
    rateLimit: { limits: planLimits },
  });
  await app.ready();
  const schemas = new Map<string, string>();
  if (placement === 'schema') placedSchemas.set(database, schemas);
  const testApp: TestApp = {
    app,
    placement,
    schemas,
    tenantSchema: router?.schemaFor,
    database,
    tenantry,
    directory,
    auth,
    jobs,
    files,
    filesRoot,
    async close() {
      await app.close();
      await jobs.close();
      await files.close();
      await planLimits.close();
      await router?.close();
      await database.drop();
      await rm(filesRoot, { recursive: true, force: true });
    },
  };
  return testApp;
}

/**
 * The workspaces placed in dedicated schemas, per database whose app routes them. A test that
 * passes {@link createWorkspace} a copy of its `TestApp` with another database (served by an app
 * without the router) gets pooled workspaces there.
 */
const placedSchemas = new WeakMap<TestDatabase, Map<string, string>>();

/**
 * The schema of views through which {@link queryAsAdmin} reads every workspace's rows at once in
 * `schema` placement: one view per tenant table of `public`, the union of that table in `public`
 * and in every dedicated schema.
 */
const allTenantsSchema = 'test_all_tenants';

async function refreshAllTenantsViews(
  database: TestDatabase,
  placed: ReadonlyMap<string, string>,
): Promise<void> {
  const schemas = ['public', ...placed.values()];
  await withClient(database.adminUrl, async (client) => {
    const tables = await client.query<{ name: string }>(
      `select c.relname as name from pg_class c
        where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p')
          and not c.relispartition
          and exists (select 1 from pg_attribute a where a.attrelid = c.oid
                       and a.attname = 'tenant_id' and not a.attisdropped)`,
    );
    const views = tables.rows.map(({ name }) => {
      const union = schemas
        .map((schema) => `select * from "${schema}"."${name}"`)
        .join(' union all ');
      return `create view "${allTenantsSchema}"."${name}" as ${union};`;
    });
    await client.query(
      `begin; drop schema if exists "${allTenantsSchema}" cascade; create schema "${allTenantsSchema}"; ${views.join(' ')} commit;`,
    );
  });
}

/** Signs an access token the way the app's local mode does (HS256, tenant_id/sub/role). */
export async function signAccessToken(
  auth: TestApp['auth'],
  claims: { tenantId: string; userId: string; role: string },
  lifetimeSec = 900,
): Promise<string> {
  return new SignJWT({ tenant_id: claims.tenantId, role: claims.role })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(claims.userId)
    .setIssuer(auth.issuer)
    .setAudience(auth.audience)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + lifetimeSec)
    .sign(new TextEncoder().encode(auth.jwtSecret));
}

/**
 * Creates a workspace, a user and their membership as the superuser (not through the API, so
 * tests of other routes do not depend on sign-up), plus a token for that user. In `schema`
 * placement the workspace is placed in its own schema before its first row (the membership).
 */
export async function createWorkspace(
  testApp: TestApp,
  slug: string,
  role: TestWorkspace['role'] = 'owner',
): Promise<TestWorkspace> {
  const tenantId = randomUUID();
  const userId = randomUUID();
  const email = `${role}-${randomBytes(3).toString('hex')}@${slug}.test`;
  await withClient(testApp.database.adminUrl, async (client) => {
    await client.query('insert into tenantry.tenants (id, slug, name) values ($1, $2, $3)', [
      tenantId,
      slug,
      `Workspace ${slug}`,
    ]);
    await client.query(
      `insert into auth.users (id, email, name, password_hash) values ($1, $2, $3, 'unusable')`,
      [userId, email, `User ${slug}`],
    );
  });
  const schemas = placedSchemas.get(testApp.database);
  if (schemas !== undefined) {
    const placed = await placeTenantInSchema({
      connectionString: testApp.database.adminUrl,
      tenantId,
      sources: [appMigrationSource],
    });
    schemas.set(tenantId, placed.schema);
    await refreshAllTenantsViews(testApp.database, schemas);
  }
  await insertMembership(testApp, { tenantId, userId, role });
  const token = await signAccessToken(testApp.auth, { tenantId, userId, role });
  return {
    tenantId,
    slug,
    userId,
    email,
    role,
    token,
    headers: { authorization: `Bearer ${token}` },
  };
}

/** Adds another member with `role` to an existing workspace, with a token. */
export async function addMember(
  testApp: TestApp,
  workspace: TestWorkspace,
  role: TestWorkspace['role'],
): Promise<TestWorkspace> {
  const userId = randomUUID();
  const email = `${role}-${randomBytes(3).toString('hex')}@${workspace.slug}.test`;
  await withClient(testApp.database.adminUrl, async (client) => {
    await client.query(
      `insert into auth.users (id, email, name, password_hash) values ($1, $2, $3, 'unusable')`,
      [userId, email, `User ${role}`],
    );
  });
  await insertMembership(testApp, { tenantId: workspace.tenantId, userId, role });
  const token = await signAccessToken(testApp.auth, {
    tenantId: workspace.tenantId,
    userId,
    role,
  });
  return {
    ...workspace,
    userId,
    email,
    role,
    token,
    headers: { authorization: `Bearer ${token}` },
  };
}

async function insertMembership(
  testApp: TestApp,
  member: { tenantId: string; userId: string; role: string },
): Promise<void> {
  await queryAsAdmin(
    testApp,
    'insert into memberships (tenant_id, user_id, role) values ($1, $2, $3)',
    [member.tenantId, member.userId, member.role],
  );
}

/**
 * Runs SQL as the superuser on the test app's database (to inspect what really got stored).
 *
 * In `schema` placement, unqualified tenant tables resolve where the rows are: a statement whose
 * `values` name placed workspaces runs with `search_path` set to their schemas, then `public`; a
 * read naming none reads every workspace through union views (`test_all_tenants`); an `update` or
 * `delete` naming none runs once in each dedicated schema and once in `public`, in one
 * transaction, and returns every run's rows.
 */
export async function queryAsAdmin<R extends Record<string, unknown>>(
  testApp: TestApp,
  text: string,
  values: unknown[] = [],
): Promise<R[]> {
  const placed = placedSchemas.get(testApp.database);
  if (placed === undefined || placed.size === 0) {
    return withClient(testApp.database.adminUrl, async (client) => {
      return (await client.query<R>(text, values)).rows;
    });
  }
  const named = [
    ...new Set(
      values.flatMap((value) => {
        const schema = typeof value === 'string' ? placed.get(value) : undefined;
        return schema === undefined ? [] : [schema];
      }),
    ),
  ];
  const verb = /^\s*(\w+)/.exec(text)?.[1]?.toLowerCase();
  let searchPaths: string[][];
  if (named.length > 0) searchPaths = [[...named, 'public']];
  else if (verb === 'select' || verb === 'with') searchPaths = [[allTenantsSchema, 'public']];
  else if (verb === 'update' || verb === 'delete') {
    searchPaths = [...placed.values(), 'public'].map((schema) => [schema, 'public']);
  } else searchPaths = [['public']];
  return withClient(testApp.database.adminUrl, async (client) => {
    await client.query('begin');
    try {
      const rows: R[] = [];
      for (const path of searchPaths) {
        await client.query(`select set_config('search_path', $1, true)`, [
          path.map((schema) => `"${schema}"`).join(', '),
        ]);
        rows.push(...(await client.query<R>(text, values)).rows);
      }
      await client.query('commit');
      return rows;
    } catch (error) {
      await client.query('rollback');
      throw error;
    }
  });
}

/** The parsed JSON body of an injected response. */
export function bodyOf<T = any>(response: LightMyRequestResponse): T {
  return JSON.parse(response.body) as T;
}
