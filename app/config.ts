import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { type CliConfig, loadCliConfig, TenantryError } from 'tenantry';

/** How access tokens are issued and checked. */
export type AuthConfig =
  | {
      /** The app signs its own HS256 access tokens (sign-up, login, refresh). */
      readonly mode: 'local';
      /** HS256 secret, at least 32 bytes. */
      readonly jwtSecret: string;
      readonly issuer: string;
      readonly audience: string;
      /** Access-token lifetime; a removed member keeps access at most this long. */
      readonly accessTokenTtlSec: number;
      readonly refreshTokenTtlSec: number;
    }
  | {
      /** An external identity provider issues tokens; the app only verifies them. */
      readonly mode: 'external';
      readonly jwksUrl: string;
      readonly issuer: string | undefined;
      readonly audience: string | undefined;
      readonly tenantClaim: string;
      readonly userClaim: string;
      readonly roleClaim: string;
      readonly algorithms: readonly string[];
    };

/** Where uploaded files live. */
export type StorageConfig =
  | {
      /** Objects on the local filesystem, served by the app under `<publicUrl>/files`. */
      readonly driver: 'local';
      /** @defaultValue `<data folder>/files` (the data folder holds the embedded cluster) */
      readonly root: string;
      /** HMAC key of the signed URLs, at least 32 bytes (`TENANTRY_STORAGE_SECRET`). */
      readonly secret: string;
      /** `<publicUrl>/files` */
      readonly baseUrl: string;
      /** Largest upload in bytes. @defaultValue 26214400 (`TENANTRY_STORAGE_MAX_UPLOAD_BYTES`) */
      readonly maxUploadBytes: number;
    }
  | {
      /** An S3-compatible bucket (`TENANTRY_S3_BUCKET`); clients upload and download directly. */
      readonly driver: 's3';
      readonly bucket: string;
      readonly region: string | undefined;
      readonly endpoint: string | undefined;
      readonly forcePathStyle: boolean | undefined;
      readonly credentials:
        | { readonly accessKeyId: string; readonly secretAccessKey: string }
        | undefined;
      readonly maxUploadBytes: number;
    };

/** Settings of the reference app, read from the environment in this one place. */
export interface AppConfig {
  readonly database: CliConfig;
  /** @defaultValue 3000 (`PORT`) */
  readonly port: number;
  /** @defaultValue '127.0.0.1' (`HOST`; use 0.0.0.0 in a container) */
  readonly host: string;
  /** Public URL printed in the sign-in hint. @defaultValue http://localhost:<port> */
  readonly publicUrl: string;
  /** Base domain for `<workspace>.<baseDomain>` addresses (`TENANTRY_BASE_DOMAIN`); off when unset. */
  readonly baseDomain: string | undefined;
  readonly auth: AuthConfig;
  /** Seed a demo workspace on first start (`SEED_DEMO`, default true). */
  readonly seedDemo: boolean;
  /** Allowed age of an inbound webhook's timestamp. @defaultValue 300 */
  readonly webhookToleranceSec: number;
  /** `TENANTRY_INTERNAL_SECRET`: enables the trusted-header strategy for internal callers. */
  readonly internalSecret: string | undefined;
  readonly logLevel: string;
  /** Largest pool of the app role. @defaultValue 10 (`DB_POOL_MAX`) */
  readonly maxConnections: number;
  /** The job worker started in the app's process, on the app role's pool. */
  readonly worker: {
    /**
     * `inprocess`, or `off` when workers run elsewhere (`tenantry worker --jobs app/worker.ts`).
     * @defaultValue 'inprocess' (`TENANTRY_WORKER`)
     */
    readonly mode: 'inprocess' | 'off';
    /**
     * Jobs run at once; each holds one of the app pool's connections while it runs.
     * @defaultValue 4 (`TENANTRY_WORKER_CONCURRENCY`)
     */
    readonly concurrency: number;
  };
  /**
   * Share of new deliveries the default channel provider fails, 0 to 1, to exercise retries.
   * @defaultValue 0 (`TENANTRY_CHANNEL_FAILURE_RATE`)
   */
  readonly channelFailureRate: number;
  readonly storage: StorageConfig;
  /**
   * Where per-workspace request counts live: `memory` (one process) or `postgres` (shared by
   * every instance, one upsert per request). `off` disables rate limiting.
   * @defaultValue 'memory' (`TENANTRY_RATE_LIMIT_STORE`)
   */
  readonly rateLimitStore: 'memory' | 'postgres' | 'off';
  /**
   * Run the webhook dispatcher (billing events to `tenantry webhooks` endpoints) in the app's
   * process: `inprocess`, or `off` when `tenantry webhooks dispatch` runs elsewhere.
   * @defaultValue 'inprocess' (`TENANTRY_WEBHOOKS`)
   */
  readonly webhooks: 'inprocess' | 'off';
}

function integer(env: NodeJS.ProcessEnv, name: string, fallback: number, min: number, max: number) {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `${name} must be an integer between ${min} and ${max}, got "${raw}".`,
    );
  }
  return value;
}

function fraction(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!/^\s*[0-9.]+\s*$/.test(raw) || !Number.isFinite(value) || value < 0 || value > 1) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `${name} must be a number from 0 to 1, got "${raw}".`,
    );
  }
  return value;
}

function text(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const value = env[name];
  return value === undefined || value === '' ? undefined : value;
}

function loadStorageConfig(
  env: NodeJS.ProcessEnv,
  database: CliConfig,
  publicUrl: string,
  generatedSecret: (purpose: 'jwt' | 'storage') => string,
  cwd: string,
): StorageConfig {
  const maxUploadBytes = integer(
    env,
    'TENANTRY_STORAGE_MAX_UPLOAD_BYTES',
    25 * 1024 * 1024,
    1,
    5 * 1024 * 1024 * 1024,
  );
  const bucket = text(env, 'TENANTRY_S3_BUCKET');
  if (bucket !== undefined) {
    const accessKeyId = text(env, 'TENANTRY_S3_ACCESS_KEY_ID');
    const secretAccessKey = text(env, 'TENANTRY_S3_SECRET_ACCESS_KEY');
    if ((accessKeyId === undefined) !== (secretAccessKey === undefined)) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        'Set both TENANTRY_S3_ACCESS_KEY_ID and TENANTRY_S3_SECRET_ACCESS_KEY, or neither (the AWS default credential chain).',
      );
    }
    const pathStyle = text(env, 'TENANTRY_S3_FORCE_PATH_STYLE');
    if (pathStyle !== undefined && pathStyle !== 'true' && pathStyle !== 'false') {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `TENANTRY_S3_FORCE_PATH_STYLE must be "true" or "false", got "${pathStyle}".`,
      );
    }
    return Object.freeze({
      driver: 's3',
      bucket,
      region: text(env, 'TENANTRY_S3_REGION'),
      endpoint: text(env, 'TENANTRY_S3_ENDPOINT'),
      forcePathStyle: pathStyle === undefined ? undefined : pathStyle === 'true',
      credentials:
        accessKeyId === undefined || secretAccessKey === undefined
          ? undefined
          : Object.freeze({ accessKeyId, secretAccessKey }),
      maxUploadBytes,
    });
  }
  let secret = text(env, 'TENANTRY_STORAGE_SECRET');
  if (secret === undefined) {
    // An external database means a deployment: every instance must share one secret.
    if (database.databaseUrl !== undefined) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        'With DATABASE_URL set, the local storage driver needs TENANTRY_STORAGE_SECRET (openssl rand -base64 48), or set TENANTRY_S3_BUCKET.',
      );
    }
    secret = generatedSecret('storage');
  }
  if (Buffer.byteLength(secret) < 32) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'TENANTRY_STORAGE_SECRET must be at least 32 bytes (openssl rand -base64 48).',
    );
  }
  const dataDirectory = dirname(resolve(cwd, database.embeddedDirectory));
  return Object.freeze({
    driver: 'local',
    root: resolve(cwd, text(env, 'TENANTRY_STORAGE_ROOT') ?? join(dataDirectory, 'files')),
    secret,
    baseUrl: `${publicUrl.replace(/\/+$/, '')}/files`,
    maxUploadBytes,
  });
}

/**
 * The development JWT and storage-URL secrets, each generated once per data folder (the parent of
 * the embedded database's directory, mode 0600) so tokens and signed URLs survive a restart and
 * `tenantry worker` shares them with `npm start`. Production sets TENANTRY_JWT_SECRET and
 * TENANTRY_STORAGE_SECRET.
 *
 * @example
 * ```ts
 * const config = loadAppConfig(process.env, developmentSecret(process.env));
 * ```
 */
export function developmentSecret(env: NodeJS.ProcessEnv): (purpose: 'jwt' | 'storage') => string {
  const directory = dirname(resolve(loadCliConfig(env).embeddedDirectory));
  return (purpose) => {
    const path = join(directory, `app-${purpose}-secret`);
    try {
      return readFileSync(path, 'utf8').trim();
    } catch {
      const secret = randomBytes(48).toString('base64url');
      mkdirSync(directory, { recursive: true, mode: 0o700 });
      writeFileSync(path, `${secret}\n`, { mode: 0o600 });
      return secret;
    }
  };
}

/**
 * Reads the app's configuration. `generatedSecret` supplies the JWT secret in local mode when
 * `TENANTRY_JWT_SECRET` is unset, and the local storage driver's URL secret when
 * `TENANTRY_STORAGE_SECRET` is unset on the embedded database (main.ts keeps one of each per
 * data directory).
 *
 * @example
 * ```ts
 * const config = loadAppConfig(process.env, () => 'a development secret of 32+ bytes....');
 * ```
 */
export function loadAppConfig(
  env: NodeJS.ProcessEnv,
  generatedSecret: (purpose: 'jwt' | 'storage') => string,
  cwd: string = process.cwd(),
): AppConfig {
  const port = integer(env, 'PORT', 3000, 0, 65535);
  const mode = text(env, 'AUTH_MODE') ?? 'local';
  let auth: AuthConfig;
  if (mode === 'local') {
    const jwtSecret = text(env, 'TENANTRY_JWT_SECRET') ?? generatedSecret('jwt');
    if (Buffer.byteLength(jwtSecret) < 32) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        'TENANTRY_JWT_SECRET must be at least 32 bytes (openssl rand -base64 48).',
      );
    }
    auth = {
      mode,
      jwtSecret,
      issuer: text(env, 'AUTH_ISSUER') ?? 'tenantry-reference',
      audience: text(env, 'AUTH_AUDIENCE') ?? 'tenantry-reference-api',
      accessTokenTtlSec: integer(env, 'ACCESS_TOKEN_TTL_SEC', 900, 30, 86_400),
      refreshTokenTtlSec: integer(env, 'REFRESH_TOKEN_TTL_SEC', 2_592_000, 60, 31_536_000),
    };
  } else if (mode === 'external') {
    const jwksUrl = text(env, 'AUTH_JWKS_URL');
    if (jwksUrl === undefined) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        'AUTH_MODE=external needs AUTH_JWKS_URL (the identity provider key set).',
      );
    }
    auth = {
      mode,
      jwksUrl,
      issuer: text(env, 'AUTH_ISSUER'),
      audience: text(env, 'AUTH_AUDIENCE'),
      tenantClaim: text(env, 'AUTH_TENANT_CLAIM') ?? 'tenant_id',
      userClaim: text(env, 'AUTH_USER_CLAIM') ?? 'sub',
      roleClaim: text(env, 'AUTH_ROLE_CLAIM') ?? 'role',
      algorithms: (text(env, 'AUTH_ALGORITHMS') ?? 'RS256,ES256,EdDSA')
        .split(',')
        .map((a) => a.trim()),
    };
  } else {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `AUTH_MODE must be "local" or "external", got "${mode}".`,
    );
  }
  const workerMode = text(env, 'TENANTRY_WORKER') ?? 'inprocess';
  if (workerMode !== 'inprocess' && workerMode !== 'off') {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `TENANTRY_WORKER must be "inprocess" or "off", got "${workerMode}".`,
    );
  }
  const rateLimitStore = text(env, 'TENANTRY_RATE_LIMIT_STORE') ?? 'memory';
  if (rateLimitStore !== 'memory' && rateLimitStore !== 'postgres' && rateLimitStore !== 'off') {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `TENANTRY_RATE_LIMIT_STORE must be "memory", "postgres" or "off", got "${rateLimitStore}".`,
    );
  }
  const webhooks = text(env, 'TENANTRY_WEBHOOKS') ?? 'inprocess';
  if (webhooks !== 'inprocess' && webhooks !== 'off') {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `TENANTRY_WEBHOOKS must be "inprocess" or "off", got "${webhooks}".`,
    );
  }
  const database = loadCliConfig(env, cwd);
  const publicUrl = text(env, 'PUBLIC_URL') ?? `http://localhost:${port}`;
  return Object.freeze({
    database,
    port,
    host: text(env, 'HOST') ?? '127.0.0.1',
    publicUrl,
    baseDomain: text(env, 'TENANTRY_BASE_DOMAIN'),
    auth: Object.freeze(auth),
    seedDemo: (text(env, 'SEED_DEMO') ?? 'true') !== 'false',
    webhookToleranceSec: integer(env, 'WEBHOOK_TOLERANCE_SEC', 300, 1, 86_400),
    internalSecret: text(env, 'TENANTRY_INTERNAL_SECRET'),
    logLevel: text(env, 'LOG_LEVEL') ?? 'info',
    maxConnections: integer(env, 'DB_POOL_MAX', 10, 1, 1000),
    worker: Object.freeze({
      mode: workerMode,
      concurrency: integer(env, 'TENANTRY_WORKER_CONCURRENCY', 4, 1, 100),
    }),
    channelFailureRate: fraction(env, 'TENANTRY_CHANNEL_FAILURE_RATE', 0),
    storage: loadStorageConfig(env, database, publicUrl, generatedSecret, cwd),
    rateLimitStore,
    webhooks,
  });
}
