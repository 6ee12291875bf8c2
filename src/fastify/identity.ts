import type { FastifyRequest } from 'fastify';

/**
 * What one identification strategy learned from a request. A strategy that authenticates a
 * caller (JWT, API key, trusted header) sets `authenticated`; one that only names a tenant
 * (subdomain, path prefix) does not.
 *
 * @example
 * ```ts
 * const identity: Identity = { strategy: 'jwt', authenticated: true, tenantId, userId };
 * ```
 */
export interface Identity {
  /** Name of the strategy that produced it: `jwt`, `subdomain`, `path`, `apiKey`, `header`. */
  readonly strategy: string;
  /** Whether a credential was verified (not just a tenant named). */
  readonly authenticated: boolean;
  /** The tenant id (a UUID as sent; the plugin validates it) when the credential names one. */
  readonly tenantId?: string;
  /** The tenant slug when the strategy names the tenant by slug. */
  readonly tenantSlug?: string;
  /** The acting user's id (a UUID as sent; the plugin validates it). */
  readonly userId?: string;
  /** The caller's role in the tenant, when the credential carries one. */
  readonly role?: string;
  /** Scopes of a scope-limited credential (API keys); `undefined` means not limited. */
  readonly scopes?: readonly string[];
  /** Verified claims (JWT) or other strategy facts, for the application to read. */
  readonly claims?: Readonly<Record<string, unknown>>;
}

/**
 * One way of identifying the tenant of a request. `identify` returns `undefined` when the
 * request carries nothing for this strategy, and throws a `TenantryError` (an `AUTH_*` code)
 * when it carries something invalid: a bad credential is refused, never skipped.
 *
 * @example
 * ```ts
 * const fromQuery: IdentificationStrategy = {
 *   name: 'query',
 *   identify: (request) => undefined,
 * };
 * ```
 */
export interface IdentificationStrategy {
  readonly name: string;
  identify(request: FastifyRequest): Promise<Identity | undefined> | Identity | undefined;
  /** Releases what the strategy holds (called from the plugin's `onClose`). */
  close?(): Promise<void>;
}
