import { randomUUID } from 'node:crypto';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyServerOptions } from 'fastify';
import {
  type PendingMigration,
  type TenantDirectory,
  type Tenantry,
  TenantryError,
} from 'tenantry';
import {
  createApiKeyStrategy,
  createJwtStrategy,
  createPathStrategy,
  createSubdomainStrategy,
  createTrustedHeaderStrategy,
  type IdentificationStrategy,
  sendProblem,
  type TenantRateLimitOptions,
  tenantRateLimit,
  tenantryFastify,
} from 'tenantry/fastify';
import { authRoutes } from './auth/auth.routes.ts';
import { usageRoutes } from './billing/usage.routes.ts';
import type { BroadcastJobs } from './broadcasts/broadcast.jobs.ts';
import { broadcastsRoutes } from './broadcasts/broadcasts.routes.ts';
import type { AuthConfig } from './config.ts';
import { contactsRoutes } from './contacts/contacts.routes.ts';
import { conversationsRoutes } from './conversations/conversations.routes.ts';
import type { AppDatabase } from './database.ts';
import { digestsRoutes } from './digests/digests.routes.ts';
import type { StorageJobs } from './exports/export.jobs.ts';
import { exportsRoutes } from './exports/exports.routes.ts';
import type { AppStorage } from './files/app-storage.ts';
import { filesRoutes } from './files/files.routes.ts';
import { localFilesRoutes } from './files/local-files.routes.ts';
import { healthRoutes } from './health/health.routes.ts';
import type { AppInstance, AppServices } from './http/types.ts';
import { tagsRoutes } from './tags/tags.routes.ts';
import { templatesRoutes } from './templates/templates.routes.ts';
import { webhooksRoutes } from './webhooks/webhooks.routes.ts';
import { workspacesRoutes } from './workspaces/workspaces.routes.ts';

declare module 'tenantry/fastify' {
  interface TenantryFastifyRegister {
    database: AppDatabase;
  }
}

/** Options for {@link buildApp}. */
export interface BuildAppOptions {
  readonly tenantry: Tenantry<AppDatabase>;
  readonly directory: TenantDirectory;
  readonly auth: AuthConfig;
  /** Lists migrations the database lacks (for `/readyz`). */
  readonly pendingMigrations: (db: Tenantry<AppDatabase>['db']) => Promise<PendingMigration[]>;
  /** Enables `<workspace>.<baseDomain>` addresses. */
  readonly baseDomain?: string | undefined;
  /** Enables the trusted-header strategy for internal callers. */
  readonly internalSecret?: string | undefined;
  /** @defaultValue 300 */
  readonly webhookToleranceSec?: number;
  /** Fastify's logger option (pino options, or false). @defaultValue false */
  readonly logger?: FastifyServerOptions['logger'];
  /**
   * The jobs new broadcasts enqueue (`setupJobs()` output). Without it the `/broadcasts` routes
   * are not served.
   */
  readonly jobs?:
    | {
        readonly broadcasts: Pick<BroadcastJobs, 'dispatch'>;
        readonly storage?: Pick<StorageJobs, 'contactsExport'> | undefined;
      }
    | undefined;
  /**
   * The app's storage (`createAppStorage()`): serves `/files` (and, with the local driver, its
   * signed URLs at `/files/*`); with `jobs.storage` also `/exports`. Without it neither is served.
   */
  readonly files?: AppStorage | undefined;
  /**
   * Per-workspace API rate limit from the plan's `api_requests_per_minute` (429 with
   * `RateLimit`/`Retry-After` past it). Without it requests are not rate limited.
   */
  readonly rateLimit?: Pick<TenantRateLimitOptions, 'limits' | 'store'> | undefined;
}

// ignoreBOM keeps a byte order mark in the text, which the JSON parser strips once, as before.
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Routes that need a workspace are served at `/v1/...` and at `/t/<workspace>/v1/...`. */
const tenantPrefixes = ['/v1', '/t/:workspace/v1'] as const;

/**
 * Builds the reference backend: the Tenantry plugin, OpenAPI document and UI, health probes,
 * auth and workspaces, the CRM and messaging API, broadcasts and digests, files and exports.
 * Closing the app closes the pools (not the jobs' own: see `setupJobs()`, nor the storage's).
 *
 * @example
 * ```ts
 * const app = await buildApp({ tenantry, directory, auth, pendingMigrations, jobs });
 * const response = await app.inject({ method: 'GET', url: '/healthz' });
 * ```
 */
export async function buildApp(options: BuildAppOptions): Promise<AppInstance> {
  const app = Fastify({
    logger: options.logger ?? false,
    genReqId: (request) => {
      const incoming = request.headers['x-request-id'];
      return typeof incoming === 'string' && /^[\w.-]{1,64}$/.test(incoming)
        ? incoming
        : randomUUID();
    },
    return503OnClosing: true,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true } },
    // Errors the router raises before any route (a malformed percent-encoding, a parameter
    // past maxParamLength) get the same problem+json as every other error.
    frameworkErrors: (error, request, reply) => sendProblem(request, reply, error),
  }).withTypeProvider<TypeBoxTypeProvider>();

  // JSON must be UTF-8 (RFC 8259): invalid bytes are refused instead of becoming U+FFFD.
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request, body, done) => {
    let text: string;
    try {
      text = strictUtf8.decode(body as Buffer);
    } catch (cause) {
      done(
        new TenantryError('TENANTRY_ERR_HTTP_BAD_REQUEST', 'The body is not valid UTF-8.', {
          cause,
        }),
        undefined,
      );
      return;
    }
    parseJson(request, text, done);
  });

  app.addHook('onSend', async (request, reply, payload) => {
    reply.header('x-request-id', request.id);
    return payload;
  });

  // The documentation routes need no workspace.
  app.addHook('onRoute', (route) => {
    if (route.url.startsWith('/docs')) route.config = { ...route.config, tenant: 'none' };
    // OpenAPI needs every path placeholder declared: routes served under /t/:workspace with a
    // params schema of their own get the workspace parameter added to it.
    const params = route.schema?.params as
      | { type?: unknown; properties?: Record<string, unknown>; required?: string[] }
      | undefined;
    if (
      route.url.includes('/:workspace/') &&
      params?.type === 'object' &&
      params.properties?.workspace === undefined
    ) {
      route.schema = {
        ...route.schema,
        params: {
          ...params,
          properties: { ...params.properties, workspace: { type: 'string' } },
          required: [...(params.required ?? []), 'workspace'],
        },
      };
    }
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Tenantry reference API',
        version: '0.1.0',
        description:
          'A multi-tenant messaging and CRM backend built on Tenantry. Every workspace route runs under PostgreSQL Row Level Security.',
      },
      components: {
        securitySchemes: {
          bearerAuth: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' },
          apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key' },
        },
      },
      security: [{ bearerAuth: [] }, { apiKey: [] }],
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  const auth = options.auth;
  const strategies: IdentificationStrategy[] = [
    auth.mode === 'local'
      ? createJwtStrategy({ secret: auth.jwtSecret, issuer: auth.issuer, audience: auth.audience })
      : createJwtStrategy({
          jwksUrl: auth.jwksUrl,
          algorithms: [...auth.algorithms],
          ...(auth.issuer === undefined ? {} : { issuer: auth.issuer }),
          ...(auth.audience === undefined ? {} : { audience: auth.audience }),
          tenantClaim: auth.tenantClaim,
          userClaim: auth.userClaim,
          roleClaim: auth.roleClaim,
        }),
    createApiKeyStrategy({ db: options.tenantry.db }),
    createPathStrategy({ prefix: '/t' }),
  ];
  if (options.baseDomain !== undefined) {
    strategies.push(createSubdomainStrategy({ baseDomain: options.baseDomain }));
  }
  if (options.internalSecret !== undefined) {
    strategies.push(createTrustedHeaderStrategy({ enabled: true, secret: options.internalSecret }));
  }
  await app.register(tenantryFastify, {
    tenantry: options.tenantry,
    directory: options.directory,
    strategies,
  });
  if (options.rateLimit !== undefined) {
    await app.register(tenantRateLimit, options.rateLimit);
  }

  const services: AppServices = Object.freeze({
    tenantry: options.tenantry,
    directory: options.directory,
    auth,
    webhookToleranceSec: options.webhookToleranceSec ?? 300,
  });

  app.get('/openapi.json', { config: { tenant: 'none' }, schema: { hide: true } }, async () =>
    app.swagger(),
  );
  await app.register(healthRoutes(options.pendingMigrations), services);
  await app.register(authRoutes, services);
  await app.register(webhooksRoutes, services);
  const files = options.files;
  if (files?.localHandler !== undefined) {
    await app.register(localFilesRoutes, { handler: files.localHandler(options.tenantry) });
  }
  for (const prefix of tenantPrefixes) {
    await app.register(workspacesRoutes, { ...services, prefix });
    await app.register(contactsRoutes, { ...services, prefix });
    await app.register(tagsRoutes, { ...services, prefix });
    await app.register(conversationsRoutes, { ...services, prefix });
    await app.register(templatesRoutes, { ...services, prefix });
    await app.register(digestsRoutes, { ...services, prefix });
    await app.register(usageRoutes, { ...services, prefix });
    if (options.jobs !== undefined) {
      await app.register(broadcastsRoutes, {
        ...services,
        prefix,
        dispatchJob: options.jobs.broadcasts.dispatch,
      });
    }
    if (files !== undefined) {
      await app.register(filesRoutes, { ...services, prefix, files });
      const contactsExportJob = options.jobs?.storage?.contactsExport;
      if (contactsExportJob !== undefined) {
        await app.register(exportsRoutes, {
          ...services,
          prefix,
          storage: files.storage,
          contactsExportJob,
        });
      }
    }
  }
  return app;
}
