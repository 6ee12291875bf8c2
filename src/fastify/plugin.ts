import type {
  FastifyInstance,
  FastifyPluginAsync,
  FastifyReply,
  FastifyRequest,
  HookHandlerDoneFunction,
} from 'fastify';
import fp from 'fastify-plugin';
import type { Kysely } from 'kysely';
import { TenantryError } from '../errors.ts';
import type { TenantDirectory, TenantRecord } from '../tenant-directory.ts';
import { parseTenantId, parseUserId, type TenantId, type UserId } from '../tenant-id.ts';
import type { OpenUnitOfWork, Tenantry, UnitOfWorkOptions } from '../tenantry.ts';
import type { IdentificationStrategy, Identity } from './identity.ts';
import { sendProblem } from './problem-details.ts';

/**
 * Declare your database type here once so `request.tenant.db` is typed:
 *
 * @example
 * ```ts
 * declare module 'tenantry/fastify' {
 *   interface TenantryFastifyRegister {
 *     database: AppDatabase;
 *   }
 * }
 * ```
 */
// biome-ignore lint/suspicious/noEmptyInterface: filled by declaration merging in applications.
export interface TenantryFastifyRegister {}

/** The database type registered through {@link TenantryFastifyRegister}, else `any`. */
export type RegisteredDatabase = TenantryFastifyRegister extends { database: infer DB } ? DB : any;

/**
 * What a route needs: `authenticated` (the default) — a verified credential (JWT, API key,
 * trusted header) names the tenant, and subdomain or path may only agree with it; `public` — a
 * tenant named by any strategy, no credential needed (the handler authenticates, as a webhook
 * does with its signature); `none` — no tenant, strategies do not run.
 */
export type TenantRequirement = 'authenticated' | 'public' | 'none';

/** The tenant of a request, with its request-scoped unit of work. */
export interface RequestTenant<DB = RegisteredDatabase> {
  readonly id: TenantId;
  readonly slug: string;
  readonly name: string;
  readonly plan: string;
  readonly userId: UserId | undefined;
  readonly role: string | undefined;
  /** Scopes of a scope-limited credential; `undefined` means not limited. */
  readonly scopes: readonly string[] | undefined;
  /** What each strategy that spoke found (claims included). */
  readonly identities: readonly Identity[];
  /**
   * The request's guarded database: one transaction, opened by the first query, committed
   * before the response is sent (a 2xx means committed) and rolled back on an error status.
   */
  readonly db: Kysely<DB>;
}

/** Options for the Tenantry Fastify plugin. */
export interface TenantryFastifyOptions {
  readonly tenantry: Tenantry<any>;
  readonly directory: TenantDirectory;
  /** Strategies, run in order; every one that speaks must name the same tenant. */
  readonly strategies: readonly IdentificationStrategy[];
  /** What routes without `config.tenant` need. @defaultValue 'authenticated' */
  readonly defaultRequirement?: TenantRequirement;
  /** Options of each request's unit of work. @defaultValue {} */
  readonly unitOfWork?: UnitOfWorkOptions;
  /** Install the problem+json error and not-found handlers. @defaultValue true */
  readonly problemDetails?: boolean;
  /** Close the strategies, the directory and Tenantry when Fastify closes. @defaultValue true */
  readonly closeResources?: boolean;
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The identified tenant; `null` on routes with `config.tenant: 'none'`. */
    tenant: RequestTenant | null;
  }
  interface FastifyContextConfig {
    /** What the route needs; see {@link TenantRequirement}. */
    tenant?: TenantRequirement;
    /** A scope that scope-limited credentials (API keys) must carry. */
    scope?: string;
    /** Roles allowed; a credential without a role is refused. */
    roles?: readonly string[];
  }
  interface FastifyInstance {
    /** The Tenantry instance and tenant directory the plugin was registered with. */
    tenantry: { readonly tenantry: Tenantry<any>; readonly directory: TenantDirectory };
  }
}

const requirements = new Set<TenantRequirement>(['authenticated', 'public', 'none']);
const unitKey = Symbol('tenantry.unit');

interface UnitHolder {
  [unitKey]?: OpenUnitOfWork<any>;
}

function fail(code: ConstructorParameters<typeof TenantryError>[0], message: string): never {
  throw new TenantryError(code, message);
}

function checkStatus(record: TenantRecord): void {
  switch (record.status) {
    case 'active':
      return;
    case 'suspended':
      fail('TENANTRY_ERR_TENANT_SUSPENDED', 'This workspace is suspended.');
      break;
    case 'deleted':
      fail('TENANTRY_ERR_TENANT_DELETED', 'This workspace was deleted.');
      break;
    case 'moving':
      fail('TENANTRY_ERR_TENANT_MOVING', 'This workspace is being moved; retry shortly.');
      break;
    default:
      fail('TENANTRY_ERR_TENANT_NOT_FOUND', 'No such workspace.');
  }
}

async function resolveTenantId(directory: TenantDirectory, identity: Identity): Promise<TenantId> {
  if (identity.tenantId !== undefined) {
    try {
      return parseTenantId(identity.tenantId);
    } catch (error) {
      throw new TenantryError('TENANTRY_ERR_AUTH_CLAIM_INVALID', 'The tenant id is malformed.', {
        cause: error,
      });
    }
  }
  const slug = identity.tenantSlug as string;
  const record = await directory.bySlug(slug);
  if (record === undefined) fail('TENANTRY_ERR_TENANT_NOT_FOUND', 'No such workspace.');
  return record.id;
}

function checkOptions(options: TenantryFastifyOptions): void {
  if (options.tenantry === undefined || typeof options.tenantry.beginUnit !== 'function') {
    fail('TENANTRY_ERR_CONFIG_INVALID', 'tenantry (from createTenantry) is required.');
  }
  if (options.directory === undefined || typeof options.directory.byId !== 'function') {
    fail('TENANTRY_ERR_CONFIG_INVALID', 'directory (from createTenantDirectory) is required.');
  }
  if (!Array.isArray(options.strategies) || options.strategies.length === 0) {
    fail('TENANTRY_ERR_CONFIG_INVALID', 'strategies must list at least one strategy.');
  }
  if (options.defaultRequirement !== undefined && !requirements.has(options.defaultRequirement)) {
    fail(
      'TENANTRY_ERR_CONFIG_INVALID',
      'defaultRequirement must be authenticated, public or none.',
    );
  }
}

const tenantryFastifyPlugin: FastifyPluginAsync<TenantryFastifyOptions> = async (
  fastify: FastifyInstance,
  options: TenantryFastifyOptions,
) => {
  if (fastify.hasDecorator('tenantry')) {
    if (fastify.tenantry.tenantry === options.tenantry) return;
    fail(
      'TENANTRY_ERR_CONFIG_INVALID',
      'The Tenantry plugin is already registered with another Tenantry instance.',
    );
  }
  checkOptions(options);
  const { tenantry, directory } = options;
  const strategies = Object.freeze([...options.strategies]);
  const defaultRequirement = options.defaultRequirement ?? 'authenticated';
  const unitOptions = options.unitOfWork;

  // A mistyped requirement must not fall through to a weaker one: refuse it at start-up.
  fastify.addHook('onRoute', (route) => {
    const config = (route.config ?? {}) as {
      tenant?: unknown;
      scope?: unknown;
      roles?: unknown;
    };
    if (config.tenant !== undefined && !requirements.has(config.tenant as TenantRequirement)) {
      fail(
        'TENANTRY_ERR_CONFIG_INVALID',
        `Route ${route.method} ${route.url}: config.tenant must be authenticated, public or none.`,
      );
    }
    if (config.scope !== undefined && typeof config.scope !== 'string') {
      fail(
        'TENANTRY_ERR_CONFIG_INVALID',
        `Route ${route.method} ${route.url}: config.scope must be a string.`,
      );
    }
    if (
      config.roles !== undefined &&
      (!Array.isArray(config.roles) || !config.roles.every((role) => typeof role === 'string'))
    ) {
      fail(
        'TENANTRY_ERR_CONFIG_INVALID',
        `Route ${route.method} ${route.url}: config.roles must list role names.`,
      );
    }
  });

  fastify.decorate('tenantry', Object.freeze({ tenantry, directory }));
  fastify.decorateRequest('tenant', null);

  if (options.problemDetails !== false) {
    fastify.setErrorHandler((error, request, reply) => sendProblem(request, reply, error));
    fastify.setNotFoundHandler((request, reply) =>
      sendProblem(
        request,
        reply,
        new TenantryError('TENANTRY_ERR_HTTP_NOT_FOUND', 'No such resource.'),
      ),
    );
  }

  async function identify(request: FastifyRequest, requirement: TenantRequirement) {
    const identities: Identity[] = [];
    for (const strategy of strategies) {
      const identity = await strategy.identify(request);
      if (identity !== undefined) identities.push(Object.freeze(identity));
    }
    const authenticated = identities.filter((identity) => identity.authenticated);
    if (requirement === 'authenticated' && authenticated.length === 0) {
      fail('TENANTRY_ERR_AUTH_REQUIRED', 'Sign in: this route needs a token or an API key.');
    }
    const naming = identities.filter(
      (identity) => identity.tenantId !== undefined || identity.tenantSlug !== undefined,
    );
    const tenantIds = new Set<TenantId>();
    for (const identity of naming) tenantIds.add(await resolveTenantId(directory, identity));
    if (tenantIds.size > 1) {
      fail(
        'TENANTRY_ERR_TENANT_MISMATCH',
        'The credential and the address name different workspaces.',
      );
    }
    const [tenantId] = tenantIds;
    if (tenantId === undefined) {
      fail('TENANTRY_ERR_TENANT_UNIDENTIFIED', 'No workspace was identified for this request.');
    }
    // Fail closed: on an authenticated route the tenant must come from a credential, so an
    // address alone (subdomain, path) never selects a tenant for a signed-in user.
    if (
      requirement === 'authenticated' &&
      !authenticated.some(
        (identity) => identity.tenantId !== undefined || identity.tenantSlug !== undefined,
      )
    ) {
      fail('TENANTRY_ERR_TENANT_UNIDENTIFIED', 'The credential does not name a workspace.');
    }
    const users = new Set(
      authenticated.flatMap((identity) => (identity.userId === undefined ? [] : [identity.userId])),
    );
    if (users.size > 1) {
      fail('TENANTRY_ERR_TENANT_MISMATCH', 'The credentials name different users.');
    }
    const [rawUserId] = users;
    let userId: UserId | undefined;
    if (rawUserId !== undefined) {
      try {
        userId = parseUserId(rawUserId);
      } catch (error) {
        throw new TenantryError('TENANTRY_ERR_AUTH_CLAIM_INVALID', 'The user id is malformed.', {
          cause: error,
        });
      }
    }
    const record = await directory.byId(tenantId);
    if (record === undefined) fail('TENANTRY_ERR_TENANT_NOT_FOUND', 'No such workspace.');
    checkStatus(record);
    const scoped = authenticated.filter((identity) => identity.scopes !== undefined);
    const scopes =
      scoped.length === 0
        ? undefined
        : Object.freeze(
            (scoped[0]?.scopes ?? []).filter((scope) =>
              scoped.every((identity) => identity.scopes?.includes(scope)),
            ),
          );
    const role = authenticated.find((identity) => identity.role !== undefined)?.role;
    return { record, userId, role, scopes, identities: Object.freeze(identities) };
  }

  fastify.addHook('onRequest', async (request: FastifyRequest, reply: FastifyReply) => {
    const config = request.routeOptions.config;
    const requirement = request.is404 ? 'none' : (config.tenant ?? defaultRequirement);
    if (requirement === 'none') return;
    const found = await identify(request, requirement);
    if (
      config.scope !== undefined &&
      found.scopes !== undefined &&
      !found.scopes.includes(config.scope)
    ) {
      fail('TENANTRY_ERR_AUTH_INSUFFICIENT_SCOPE', `This route needs the "${config.scope}" scope.`);
    }
    if (
      config.roles !== undefined &&
      (found.role === undefined || !config.roles.includes(found.role))
    ) {
      fail('TENANTRY_ERR_AUTH_FORBIDDEN', 'Your role does not allow this action.');
    }
    const unit = tenantry.beginUnit(
      found.userId === undefined
        ? found.record.id
        : { tenantId: found.record.id, userId: found.userId },
      unitOptions,
    );
    (request as UnitHolder)[unitKey] = unit;
    request.tenant = Object.freeze({
      id: found.record.id,
      slug: found.record.slug,
      name: found.record.name,
      plan: found.record.plan,
      userId: found.userId,
      role: found.role,
      scopes: found.scopes,
      identities: found.identities,
      db: unit.db,
    });
    request.log = request.log.child({ tenantId: found.record.id });
    // Fastify logs "request completed" and response errors through reply.log.
    reply.log = request.log;
  });

  // Run the rest of the request inside the unit, so `tenantry.db` and `withTenant()` in
  // services join the request's transaction instead of opening a second one.
  fastify.addHook(
    'preHandler',
    (request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction) => {
      const unit = (request as UnitHolder)[unitKey];
      if (unit === undefined) done();
      else unit.run(done);
    },
  );

  fastify.addHook('onSend', async (request: FastifyRequest, reply: FastifyReply, payload) => {
    const unit = (request as UnitHolder)[unitKey];
    if (unit === undefined || unit.isClosed) return payload;
    if (reply.statusCode < 400) await unit.commit();
    else await unit.rollback();
    return payload;
  });

  const release = async (request: FastifyRequest) => {
    const unit = (request as UnitHolder)[unitKey];
    if (unit !== undefined && !unit.isClosed) {
      request.log.warn('request ended with its unit of work open; rolling back');
      await unit.rollback().catch((error: unknown) => {
        request.log.error({ err: error }, 'rollback after the response failed');
      });
    }
  };
  fastify.addHook('onResponse', release);
  fastify.addHook('onError', async (request) => {
    const unit = (request as UnitHolder)[unitKey];
    if (unit !== undefined && !unit.isClosed) await unit.rollback().catch(() => undefined);
  });

  if (options.closeResources !== false) {
    fastify.addHook('onClose', async () => {
      for (const strategy of strategies) await strategy.close?.();
      await directory.close();
      await tenantry.close();
    });
  }
};

/**
 * The Tenantry Fastify plugin: identifies the tenant of every request with the configured
 * strategies, refuses what does not add up (401/403/404/410 problem+json), and gives handlers
 * `request.tenant.db`, a lazily opened unit of work committed before the response is sent.
 *
 * @example
 * ```ts
 * import Fastify from 'fastify';
 * import { createTenantDirectory, createTenantry } from 'tenantry';
 * import { createJwtStrategy, tenantryFastify } from 'tenantry/fastify';
 *
 * const app = Fastify();
 * await app.register(tenantryFastify, {
 *   tenantry: await createTenantry<AppDatabase>({ connectionString: appUrl }),
 *   directory: await createTenantDirectory({ connectionString: appUrl }),
 *   strategies: [createJwtStrategy({ secret: process.env.JWT_SECRET })],
 * });
 * app.get('/contacts/:id', async (request) =>
 *   request.tenant!.db.selectFrom('contacts').selectAll()
 *     .where('id', '=', (request.params as { id: string }).id).executeTakeFirst(),
 * );
 * ```
 */
export const tenantryFastify = fp(tenantryFastifyPlugin, {
  fastify: '5.x',
  name: 'tenantry',
});

/**
 * Returns the request's tenant, or throws `TENANTRY_ERR_TENANT_UNIDENTIFIED` on a route that has
 * none (a programming error: the route should require a tenant).
 *
 * @example
 * ```ts
 * app.get('/tags', async (request) => requireTenant(request).db.selectFrom('tags').selectAll().execute());
 * ```
 */
export function requireTenant(request: FastifyRequest): RequestTenant {
  if (request.tenant === null) {
    fail('TENANTRY_ERR_TENANT_UNIDENTIFIED', 'This route has no tenant.');
  }
  return request.tenant;
}
