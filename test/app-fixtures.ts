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

/** A reference app on a private database clone, driven through `app.inject()`. */
export interface TestApp {
  readonly app: AppInstance;
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
  } = {},
): Promise<TestApp> {
  const database = await createTestDatabase();
  const tenantry = await createTenantry<AppDatabase>({ connectionString: database.appUrl });
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
        { name: 'app', directory: new URL('../app/migrations/', import.meta.url).pathname },
      ],
    }),
    webhookToleranceSec: overrides.webhookToleranceSec ?? 300,
    baseDomain: overrides.baseDomain,
    jobs,
    files,
    rateLimit: { limits: planLimits },
  });
  await app.ready();
  return {
    app,
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
      await database.drop();
      await rm(filesRoot, { recursive: true, force: true });
    },
  };
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
 * tests of other routes do not depend on sign-up), plus a token for that user.
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
    await client.query('insert into memberships (tenant_id, user_id, role) values ($1, $2, $3)', [
      tenantId,
      userId,
      role,
    ]);
  });
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
    await client.query('insert into memberships (tenant_id, user_id, role) values ($1, $2, $3)', [
      workspace.tenantId,
      userId,
      role,
    ]);
  });
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

/** Runs SQL as the superuser on the test app's database (to inspect what really got stored). */
export async function queryAsAdmin<R extends Record<string, unknown>>(
  testApp: TestApp,
  text: string,
  values: unknown[] = [],
): Promise<R[]> {
  return withClient(testApp.database.adminUrl, async (client) => {
    const result = await client.query<R>(text, values);
    return result.rows;
  });
}

/** The parsed JSON body of an injected response. */
export function bodyOf<T = any>(response: LightMyRequestResponse): T {
  return JSON.parse(response.body) as T;
}
