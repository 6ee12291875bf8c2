import { createHash, timingSafeEqual } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance, FastifyServerOptions } from 'fastify';
import { TenantryError } from '../errors.ts';
import { sendProblem } from '../fastify/problem-details.ts';
import type { Analytics, NoisyMeasure, RequestMetrics, TenantStatus } from './analytics.ts';

/**
 * The lifecycle actions the admin listener exposes, structurally: `createTenantLifecycle()`
 * (on the owner connection) fits, as does any object with these methods.
 */
export interface AdminLifecycle {
  create(input: {
    readonly slug: string;
    readonly name: string;
    readonly plan?: string;
  }): Promise<unknown>;
  suspend(tenantId: string, options?: { readonly reason?: string }): Promise<unknown>;
  resume(tenantId: string): Promise<unknown>;
}

/** Options for {@link createAdminServer}. */
export interface AdminServerOptions {
  /** Cross-tenant reads (`createAnalytics()` on the analytics role). */
  readonly analytics: Analytics;
  /** Lifecycle actions; without it `POST /tenants...` routes are not served. */
  readonly lifecycle?: AdminLifecycle;
  /** The operator token every request must carry as `Authorization: Bearer <token>`; 32+ bytes. */
  readonly token: string;
  /** Interface to listen on. @defaultValue '127.0.0.1' */
  readonly host?: string;
  /** @defaultValue 3001 (0 picks a free port) */
  readonly port?: number;
  /** The API process's request recorder, served at `GET /metrics/requests`. */
  readonly requestMetrics?: RequestMetrics;
  /** Fastify's logger option (pino options, or false). @defaultValue false */
  readonly logger?: FastifyServerOptions['logger'];
}

/** A running (or ready to listen) admin listener. */
export interface AdminServer {
  /** The Fastify instance (`inject()` in tests). */
  readonly app: FastifyInstance;
  /** Starts listening on the configured host and port; returns the address as a URL. */
  listen(): Promise<string>;
  /** Stops listening. The analytics and lifecycle objects are the caller's to close. */
  close(): Promise<void>;
}

const minimumTokenBytes = 32;
const tenantStatuses: readonly TenantStatus[] = ['active', 'suspended', 'moving', 'deleted'];
const noisyMeasures: readonly NoisyMeasure[] = ['rows', 'storage', 'requests', 'latency'];

const tenantIdParams = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', maxLength: 64 } },
} as const;

/**
 * Builds the operator listener: its own Fastify instance, never mounted on the public API,
 * listening on 127.0.0.1 unless told otherwise. Every request, including one for a route that
 * does not exist, must carry the operator token (compared in constant time); anything else is a
 * 401 problem. Reads go through the analytics role's pool, lifecycle actions through the
 * injected lifecycle object (owner connection).
 *
 * Routes: `GET /tenants`, `GET /tenants/:id`, `GET /tenants/:id/stats`, `GET /metrics/platform`,
 * `GET /metrics/noisy-neighbours`, `GET /metrics/requests` (with a request recorder), and with a
 * lifecycle `POST /tenants` (201, the tenant), `POST /tenants/:id/suspend` (body `{ reason? }`)
 * and `POST /tenants/:id/resume` (`{ tenant, changed?, jobsResumed? }`).
 *
 * @example
 * ```ts
 * import { createAdminServer, createAnalytics } from 'tenantry/platform';
 * const analytics = await createAnalytics({ connectionString: analyticsUrl });
 * const admin = await createAdminServer({ analytics, token: process.env.TENANTRY_ADMIN_TOKEN, port: 3001 });
 * await admin.listen(); // http://127.0.0.1:3001
 * // curl -H "authorization: Bearer $TENANTRY_ADMIN_TOKEN" http://127.0.0.1:3001/tenants
 * await admin.close();
 * await analytics.close();
 * ```
 */
export async function createAdminServer(options: AdminServerOptions): Promise<AdminServer> {
  if (
    typeof options.token !== 'string' ||
    Buffer.byteLength(options.token) < minimumTokenBytes ||
    /\s/.test(options.token)
  ) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `The admin token must be at least ${minimumTokenBytes} bytes without whitespace (openssl rand -base64 48).`,
    );
  }
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? 3001;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'port must be an integer from 0 to 65535.',
    );
  }
  // Comparing digests keeps the comparison constant-time whatever the presented token's length.
  const expected = digest(options.token);
  const { analytics, lifecycle, requestMetrics } = options;

  // Imported here so that `tenantry/platform` loads without Fastify (an optional peer).
  const { default: Fastify } = await import('fastify');
  const app = Fastify({
    logger: options.logger ?? false,
    bodyLimit: 16 * 1024,
    return503OnClosing: true,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: true, useDefaults: true } },
  });

  app.setErrorHandler((error, request, reply) => sendProblem(request, reply, error));
  app.setNotFoundHandler((request, reply) =>
    sendProblem(
      request,
      reply,
      new TenantryError(
        'TENANTRY_ERR_HTTP_NOT_FOUND',
        `No admin route ${request.method} ${request.url.split('?')[0]}.`,
      ),
    ),
  );
  app.addHook('onSend', async (_request, reply, payload) => {
    reply.header('cache-control', 'no-store');
    return payload;
  });
  // onRequest runs before routing decisions reach a handler, and for unknown routes too: nothing
  // about the listener (not even which routes exist) is visible without the token.
  app.addHook('onRequest', async (request, reply) => {
    const header = request.headers.authorization;
    const match = typeof header === 'string' ? /^Bearer +(\S+) *$/i.exec(header) : null;
    if (match === null) {
      reply.header('www-authenticate', 'Bearer realm="tenantry-admin"');
      throw new TenantryError(
        'TENANTRY_ERR_AUTH_REQUIRED',
        'Send the operator token: Authorization: Bearer <TENANTRY_ADMIN_TOKEN>.',
      );
    }
    if (!timingSafeEqual(digest(match[1] ?? ''), expected)) {
      reply.header('www-authenticate', 'Bearer realm="tenantry-admin", error="invalid_token"');
      throw new TenantryError('TENANTRY_ERR_AUTH_TOKEN_INVALID', 'The operator token is wrong.');
    }
  });

  app.get(
    '/tenants',
    {
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            search: { type: 'string', maxLength: 200 },
            status: { type: 'string', enum: [...tenantStatuses] },
            plan: { type: 'string', maxLength: 63 },
            limit: { type: 'integer', minimum: 1, maximum: 500, default: 50 },
            cursor: { type: 'string', maxLength: 200 },
          },
        },
      },
    },
    async (request) => {
      const query = request.query as {
        search?: string;
        status?: TenantStatus;
        plan?: string;
        limit: number;
        cursor?: string;
      };
      return analytics.listTenants(query);
    },
  );

  app.get('/tenants/:id', { schema: { params: tenantIdParams } }, async (request) =>
    analytics.getTenant((request.params as { id: string }).id),
  );

  app.get('/tenants/:id/stats', { schema: { params: tenantIdParams } }, async (request) =>
    analytics.tenantStats((request.params as { id: string }).id),
  );

  app.get(
    '/metrics/platform',
    {
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { days: { type: 'integer', minimum: 1, maximum: 366, default: 30 } },
        },
      },
    },
    async (request) => analytics.platformMetrics(request.query as { days: number }),
  );

  app.get(
    '/metrics/noisy-neighbours',
    {
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            by: { type: 'string', enum: [...noisyMeasures], default: 'rows' },
            limit: { type: 'integer', minimum: 1, maximum: 100, default: 10 },
          },
        },
      },
    },
    async (request) => {
      const query = request.query as { by: NoisyMeasure; limit: number };
      return { by: query.by, tenants: await analytics.noisyNeighbours(query) };
    },
  );

  if (requestMetrics !== undefined) {
    app.get('/metrics/requests', async () => requestMetrics.snapshot());
  }

  if (lifecycle !== undefined) {
    app.post(
      '/tenants',
      {
        schema: {
          body: {
            type: 'object',
            additionalProperties: false,
            required: ['slug', 'name'],
            properties: {
              slug: { type: 'string', minLength: 1, maxLength: 63 },
              name: { type: 'string', minLength: 1, maxLength: 200 },
              plan: { type: 'string', minLength: 1, maxLength: 63 },
            },
          },
        },
      },
      async (request, reply) => {
        const created = await lifecycle.create(
          request.body as { slug: string; name: string; plan?: string },
        );
        const id = (created as { id?: unknown } | undefined)?.id;
        return reply
          .code(201)
          .send(typeof id === 'string' ? await analytics.getTenant(id) : created);
      },
    );
    app.post(
      '/tenants/:id/suspend',
      {
        schema: {
          params: tenantIdParams,
          body: {
            type: ['object', 'null'],
            additionalProperties: false,
            properties: { reason: { type: 'string', maxLength: 500 } },
          },
        },
      },
      async (request) => {
        const { id } = request.params as { id: string };
        const body = (request.body ?? {}) as { reason?: string };
        const result = await lifecycle.suspend(
          id,
          body.reason === undefined ? {} : { reason: body.reason },
        );
        return { ...outcome(result), tenant: await analytics.getTenant(id) };
      },
    );
    app.post('/tenants/:id/resume', { schema: { params: tenantIdParams } }, async (request) => {
      const { id } = request.params as { id: string };
      const result = await lifecycle.resume(id);
      return { ...outcome(result), tenant: await analytics.getTenant(id) };
    });
  }

  return Object.freeze({
    app,
    async listen() {
      await app.listen({ host, port });
      const address = app.server.address() as AddressInfo;
      const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
      return `http://${shown}:${address.port}`;
    },
    close: () => app.close(),
  });
}

// What a lifecycle call reported besides the tenant (`changed`, `jobsResumed`); the tenant itself
// is answered as analytics see it, the same shape as `GET /tenants/:id`.
function outcome(result: unknown): Record<string, unknown> {
  if (typeof result !== 'object' || result === null) return {};
  const { tenant: _tenant, ...rest } = result as Record<string, unknown>;
  return rest;
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}
