import type { FastifyRequest } from 'fastify';
import type { Kysely } from 'kysely';
import { authenticateApiKey } from '../api-keys.ts';
import { TenantryError } from '../errors.ts';
import type { IdentificationStrategy, Identity } from './identity.ts';

/** Options for {@link createApiKeyStrategy}. */
export interface ApiKeyStrategyOptions {
  /** A database handle outside any tenant context (`tenantry.db`). */
  readonly db: Kysely<any>;
  /** Header carrying the key. @defaultValue 'x-api-key' */
  readonly header?: string;
  /** Schema of Tenantry's own objects. @defaultValue 'tenantry' */
  readonly schema?: string;
}

/**
 * Identifies the tenant from an API key (`X-API-Key: tk_<prefix>_<secret>`, created with
 * `createApiKey`). The key is checked on every request, so a revoked key stops working at once.
 *
 * @example
 * ```ts
 * import { createApiKeyStrategy } from 'tenantry/fastify';
 * const apiKeys = createApiKeyStrategy({ db: tenantry.db });
 * ```
 */
export function createApiKeyStrategy(options: ApiKeyStrategyOptions): IdentificationStrategy {
  const header = (options.header ?? 'x-api-key').toLowerCase();
  if (!/^[a-z0-9-]+$/.test(header)) {
    throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'header must be an HTTP header name.');
  }
  if (options.db === undefined) {
    throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'db (tenantry.db) is required.');
  }
  return Object.freeze({
    name: 'apiKey',
    async identify(request: FastifyRequest): Promise<Identity | undefined> {
      const value = request.headers[header];
      if (value === undefined) return undefined;
      const key = await authenticateApiKey(options.db, Array.isArray(value) ? undefined : value, {
        ...(options.schema === undefined ? {} : { schema: options.schema }),
      });
      return Object.freeze({
        strategy: 'apiKey',
        authenticated: true,
        tenantId: key.tenantId,
        ...(key.scopes === null ? {} : { scopes: key.scopes }),
        claims: Object.freeze({ keyId: key.keyId }),
      });
    },
  });
}
