import { type PreparedDatabase, TenantryError } from 'tenantry';
import {
  type AdminLifecycle,
  type Analytics,
  createAdminServer,
  createAnalytics,
  type RequestMetrics,
} from 'tenantry/platform';
import type { AppInstance } from './http/types.ts';

/** Settings of the operator listener, read from the environment by {@link loadAdminConfig}. */
export interface AdminConfig {
  /** `TENANTRY_ADMIN_TOKEN`, 32+ bytes; the listener is off without it. */
  readonly token: string | undefined;
  /** @defaultValue '127.0.0.1' (`TENANTRY_ADMIN_HOST`) */
  readonly host: string;
  /** @defaultValue 3001 (`TENANTRY_ADMIN_PORT`) */
  readonly port: number;
}

/**
 * Reads the operator listener's settings: `TENANTRY_ADMIN_TOKEN` (off when unset),
 * `TENANTRY_ADMIN_HOST` and `TENANTRY_ADMIN_PORT`.
 *
 * @example
 * ```ts
 * const adminConfig = loadAdminConfig(process.env);
 * ```
 */
export function loadAdminConfig(env: NodeJS.ProcessEnv): AdminConfig {
  const rawPort = env.TENANTRY_ADMIN_PORT;
  const port = rawPort === undefined || rawPort === '' ? 3001 : Number(rawPort);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `TENANTRY_ADMIN_PORT must be an integer between 0 and 65535, got "${rawPort}".`,
    );
  }
  const token = env.TENANTRY_ADMIN_TOKEN;
  if (token !== undefined && token !== '' && Buffer.byteLength(token) < 32) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'TENANTRY_ADMIN_TOKEN must be at least 32 bytes (openssl rand -base64 48).',
    );
  }
  return Object.freeze({
    token: token === '' ? undefined : token,
    host: env.TENANTRY_ADMIN_HOST || '127.0.0.1',
    port,
  });
}

/**
 * Feeds the request recorder from the public app: one sample per response of a workspace
 * request (`request.tenant` set), with Fastify's measured duration. Call it before the app is
 * ready or listening: Fastify refuses new hooks after `ready()`.
 *
 * @example
 * ```ts
 * const requestMetrics = createRequestMetrics();
 * observeRequests(app, requestMetrics);
 * await app.listen({ port: 3000 });
 * ```
 */
export function observeRequests(app: AppInstance, metrics: RequestMetrics): void {
  app.addHook('onResponse', async (request, reply) => {
    const tenant = request.tenant;
    if (tenant !== null && tenant !== undefined) {
      metrics.record(tenant.id, reply.elapsedTime, reply.statusCode);
    }
  });
}

/** The operator listener of the reference app, or the hint that it is off. */
export interface AdminListener {
  /** Its address, `undefined` when it is off. */
  readonly url: string | undefined;
  /** One line for the start-up banner: where it listens, or how to turn it on. */
  readonly banner: string;
  /** The analytics handle the listener reads through (`undefined` when off). */
  readonly analytics: Analytics | undefined;
  /** Stops the listener and closes the analytics pool. */
  close(): Promise<void>;
}

/** Inputs of {@link startAdminListener}. */
export interface StartAdminListenerOptions {
  readonly config: AdminConfig;
  readonly database: Pick<PreparedDatabase, 'analyticsUrl'>;
  /** The public app's recorder (see {@link observeRequests}). */
  readonly requestMetrics?: RequestMetrics;
  /**
   * Lifecycle actions on the owner connection (`createTenantLifecycle({ connectionString:
   * database.adminUrl })`); without it the listener is read-only. The caller closes it.
   */
  readonly lifecycle?: AdminLifecycle;
  /** Fastify logger options of the listener. @defaultValue false */
  readonly logger?: { readonly level: string } | false;
}

/**
 * Starts the reference app's operator listener, separate from the public API: its own port
 * (3001), bound to 127.0.0.1, the operator token on every request, reads as the analytics role
 * (the embedded database provides its connection; an external one needs
 * `TENANTRY_ANALYTICS_DATABASE_URL`). Without `TENANTRY_ADMIN_TOKEN` it stays off and the banner
 * says how to turn it on.
 *
 * @example
 * ```ts
 * const requestMetrics = createRequestMetrics();
 * observeRequests(app, requestMetrics);
 * const admin = await startAdminListener({ config: loadAdminConfig(process.env), database, requestMetrics });
 * process.stdout.write(`${admin.banner}\n`);
 * // on shutdown:
 * await admin.close();
 * ```
 */
export async function startAdminListener(
  options: StartAdminListenerOptions,
): Promise<AdminListener> {
  const { config } = options;
  if (config.token === undefined) {
    return Object.freeze({
      url: undefined,
      banner:
        'Admin listener off: set TENANTRY_ADMIN_TOKEN (openssl rand -base64 48) to serve tenant analytics ' +
        `on http://${config.host}:${config.port} (docs/guides/admin-and-analytics.md).`,
      analytics: undefined,
      close: async () => {},
    });
  }
  const analyticsUrl = options.database.analyticsUrl;
  if (analyticsUrl === undefined) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'TENANTRY_ADMIN_TOKEN is set but the analytics connection is unknown: with DATABASE_URL set, also set ' +
        'TENANTRY_ANALYTICS_DATABASE_URL (the tenantry_analytics role).',
    );
  }
  const analytics = await createAnalytics({
    connectionString: analyticsUrl,
    series: [{ name: 'messages', table: 'messages', timestampColumn: 'created_at' }],
    ...(options.requestMetrics === undefined ? {} : { requestMetrics: options.requestMetrics }),
  });
  try {
    const server = await createAdminServer({
      analytics,
      token: config.token,
      host: config.host,
      port: config.port,
      logger: options.logger ?? false,
      ...(options.lifecycle === undefined ? {} : { lifecycle: options.lifecycle }),
      ...(options.requestMetrics === undefined ? {} : { requestMetrics: options.requestMetrics }),
    });
    const url = await server.listen();
    return Object.freeze({
      url,
      banner: `Admin listener on ${url} (Authorization: Bearer $TENANTRY_ADMIN_TOKEN; GET /tenants, /metrics/platform)`,
      analytics,
      async close() {
        try {
          await server.close();
        } finally {
          await analytics.close();
        }
      },
    });
  } catch (error) {
    await analytics.close();
    throw error;
  }
}
