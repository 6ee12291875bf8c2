import type { FastifyRequest } from 'fastify';
import { TenantryError } from '../errors.ts';
import type { IdentificationStrategy, Identity } from './identity.ts';

/**
 * Options of {@link createPathStrategy}.
 *
 * @example
 * ```ts
 * const options: PathStrategyOptions = { prefix: '/tenants' };
 * ```
 */
export interface PathStrategyOptions {
  /**
   * Path the tenant segment follows: `/t/acme/contacts` names tenant `acme`. One or more
   * segments, starting with `/` and without a trailing `/`. @defaultValue '/t'
   */
  readonly prefix?: string;
}

const tenantSlugPattern = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const prefixPattern = /^(?:\/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+$/;

function resolvePrefix(value: unknown): string {
  const prefix = value ?? '/t';
  if (typeof prefix !== 'string' || !prefixPattern.test(prefix)) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `Path strategy: prefix must be a path such as "/t" (leading /, no trailing /, no dot segments, no percent-encoding), got ${JSON.stringify(value)}.`,
    );
  }
  return prefix;
}

/**
 * Creates the `path` strategy: a request to `<prefix>/<slug>` or `<prefix>/<slug>/...` names the
 * tenant `<slug>`.
 *
 * Other paths yield `undefined`. The slug segment is read from the raw URL, before any
 * percent-decoding, and must be a valid tenant slug as is: `%2F`, `%2E` or any other escape in it
 * is refused with `TENANTRY_ERR_TENANT_SLUG_INVALID`, as are uppercase and empty segments. The
 * query string is ignored. The identity is not authenticated: it only names a tenant.
 *
 * @example
 * ```ts
 * const path = createPathStrategy({ prefix: '/t' });
 * // GET /t/acme/contacts?page=2
 * await path.identify(request); // { strategy: 'path', authenticated: false, tenantSlug: 'acme' }
 * ```
 */
export function createPathStrategy(options: PathStrategyOptions = {}): IdentificationStrategy {
  if (typeof options !== 'object' || options === null) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'Path strategy: options must be an object.',
    );
  }
  const start = `${resolvePrefix(options.prefix)}/`;
  return Object.freeze({
    name: 'path',
    identify(request: FastifyRequest): Identity | undefined {
      const url = request.url;
      const queryAt = url.search(/[?#]/);
      const path = queryAt === -1 ? url : url.slice(0, queryAt);
      if (!path.startsWith(start)) return undefined;
      const rest = path.slice(start.length);
      const slashAt = rest.indexOf('/');
      const segment = slashAt === -1 ? rest : rest.slice(0, slashAt);
      if (!tenantSlugPattern.test(segment)) {
        throw new TenantryError(
          'TENANTRY_ERR_TENANT_SLUG_INVALID',
          'The tenant segment of the path is not a valid tenant slug.',
        );
      }
      return Object.freeze({ strategy: 'path', authenticated: false, tenantSlug: segment });
    },
  });
}
