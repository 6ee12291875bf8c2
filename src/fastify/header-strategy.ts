import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { TenantryError } from '../errors.ts';
import { parseTenantId, parseUserId } from '../tenant-id.ts';
import type { IdentificationStrategy, Identity } from './identity.ts';

/**
 * Options of {@link createTrustedHeaderStrategy}.
 *
 * @example
 * ```ts
 * const options: TrustedHeaderStrategyOptions = {
 *   enabled: true,
 *   secret: config.internalSecret, // at least 32 characters, shared with internal callers only
 * };
 * ```
 */
export interface TrustedHeaderStrategyOptions {
  /**
   * Must be `true`: the strategy trusts headers that any client could send, so turning it on is
   * a deliberate act.
   */
  readonly enabled: boolean;
  /** Secret internal callers send in `secretHeader`; at least 32 visible ASCII characters. */
  readonly secret: string;
  /** Header carrying the tenant id. @defaultValue 'x-tenant-id' */
  readonly tenantHeader?: string;
  /** Header carrying the acting user's id (optional in requests). @defaultValue 'x-user-id' */
  readonly userHeader?: string;
  /** Header carrying the shared secret. @defaultValue 'x-internal-secret' */
  readonly secretHeader?: string;
}

const minimumSecretLength = 32;
const headerSafeSecretPattern = /^[\x21-\x7e]+$/;
const headerNamePattern = /^[a-z0-9!#$%&'*+.^_`|~-]+$/;

function configError(message: string): TenantryError {
  return new TenantryError('TENANTRY_ERR_CONFIG_INVALID', `Trusted header strategy: ${message}`);
}

function resolveHeaderName(value: unknown, fallback: string, name: string): string {
  if (value === undefined) return fallback;
  const header = typeof value === 'string' ? value.toLowerCase() : '';
  if (!headerNamePattern.test(header)) throw configError(`${name} must be an HTTP header name.`);
  return header;
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}

/**
 * Creates the `header` strategy for internal callers (other services, workers behind the same
 * gateway): the tenant and user ids are read from headers, trusted only when the request also
 * carries the shared secret.
 *
 * A request without the tenant header yields `undefined`. With it, a missing or wrong secret is
 * refused with `TENANTRY_ERR_AUTH_HEADER_UNTRUSTED` (compared in constant time over SHA-256
 * digests, so neither content nor length leaks), and malformed ids with
 * `TENANTRY_ERR_AUTH_CLAIM_INVALID`. Construction is refused unless `enabled` is `true` and the
 * secret has at least 32 characters. Make sure the edge proxy strips these headers from public
 * traffic.
 *
 * @example
 * ```ts
 * const internal = createTrustedHeaderStrategy({ enabled: true, secret: config.internalSecret });
 * // x-tenant-id: 0b5c6a3e-6a8e-4f7e-9a51-2f7c1c9d2e10, x-internal-secret: <secret>
 * await internal.identify(request); // { strategy: 'header', authenticated: true, tenantId }
 * ```
 */
export function createTrustedHeaderStrategy(
  options: TrustedHeaderStrategyOptions,
): IdentificationStrategy {
  if (typeof options !== 'object' || options === null || options.enabled !== true) {
    throw configError(
      'pass enabled: true to turn it on. It trusts tenant and user ids sent in request headers, so it is off unless asked for explicitly.',
    );
  }
  if (typeof options.secret !== 'string' || options.secret.length < minimumSecretLength) {
    throw configError(
      `secret must be a string of at least ${minimumSecretLength} characters; without a strong shared secret any client could name any tenant.`,
    );
  }
  if (!headerSafeSecretPattern.test(options.secret)) {
    throw configError(
      'secret must be visible ASCII characters only (no spaces or control characters), as it travels in a header.',
    );
  }
  const expected = digest(options.secret);
  const tenantHeader = resolveHeaderName(options.tenantHeader, 'x-tenant-id', 'tenantHeader');
  const userHeader = resolveHeaderName(options.userHeader, 'x-user-id', 'userHeader');
  const secretHeader = resolveHeaderName(options.secretHeader, 'x-internal-secret', 'secretHeader');
  if (new Set([tenantHeader, userHeader, secretHeader]).size !== 3) {
    throw configError('tenantHeader, userHeader and secretHeader must be three different headers.');
  }
  return Object.freeze({
    name: 'header',
    identify(request: FastifyRequest): Identity | undefined {
      const tenantValue = request.headers[tenantHeader];
      if (tenantValue === undefined) return undefined;
      const presented = request.headers[secretHeader];
      if (typeof presented !== 'string') {
        throw new TenantryError(
          'TENANTRY_ERR_AUTH_HEADER_UNTRUSTED',
          'The tenant header was sent without the internal secret.',
        );
      }
      if (!timingSafeEqual(digest(presented), expected)) {
        throw new TenantryError(
          'TENANTRY_ERR_AUTH_HEADER_UNTRUSTED',
          'The tenant header was sent with a wrong internal secret.',
        );
      }
      let tenantId: string;
      try {
        tenantId = parseTenantId(tenantValue);
      } catch (cause) {
        throw new TenantryError(
          'TENANTRY_ERR_AUTH_CLAIM_INVALID',
          `The ${tenantHeader} header is not a valid tenant id.`,
          { cause },
        );
      }
      const userValue = request.headers[userHeader];
      let userId: string | undefined;
      if (userValue !== undefined) {
        try {
          userId = parseUserId(userValue);
        } catch (cause) {
          throw new TenantryError(
            'TENANTRY_ERR_AUTH_CLAIM_INVALID',
            `The ${userHeader} header is not a valid user id.`,
            { cause },
          );
        }
      }
      return Object.freeze({
        strategy: 'header',
        authenticated: true,
        tenantId,
        ...(userId === undefined ? {} : { userId }),
      });
    },
  });
}
