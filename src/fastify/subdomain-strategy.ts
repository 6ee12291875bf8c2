import type { FastifyRequest } from 'fastify';
import { TenantryError } from '../errors.ts';
import type { IdentificationStrategy, Identity } from './identity.ts';

/**
 * Options of {@link createSubdomainStrategy}.
 *
 * @example
 * ```ts
 * const options: SubdomainStrategyOptions = { baseDomain: 'example.com', ignore: ['www', 'docs'] };
 * ```
 */
export interface SubdomainStrategyOptions {
  /** The domain tenants live under: `acme.example.com` names tenant `acme` for `example.com`. */
  readonly baseDomain: string;
  /** Labels directly under the base domain that are not tenants. @defaultValue ['www', 'api', 'app'] */
  readonly ignore?: readonly string[];
}

const tenantSlugPattern = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const maxDomainLength = 253;
const defaultIgnore = Object.freeze(['www', 'api', 'app']);

function configError(message: string): TenantryError {
  return new TenantryError('TENANTRY_ERR_CONFIG_INVALID', `Subdomain strategy: ${message}`);
}

function resolveBaseDomain(value: unknown): string {
  if (typeof value !== 'string') throw configError('baseDomain must be a domain name string.');
  const domain = value.toLowerCase();
  const labels = domain.split('.');
  if (domain.length > maxDomainLength || !labels.every((label) => tenantSlugPattern.test(label))) {
    throw configError(
      `baseDomain must be a bare domain name such as "example.com" (no scheme, port, leading or trailing dot), got ${JSON.stringify(value)}.`,
    );
  }
  return domain;
}

function resolveIgnore(value: unknown): ReadonlySet<string> {
  const labels = value ?? defaultIgnore;
  if (!Array.isArray(labels) || !labels.every((label) => typeof label === 'string' && label)) {
    throw configError('ignore must be an array of non-empty labels.');
  }
  return new Set(labels.map((label: string) => label.toLowerCase()));
}

function requestHost(request: FastifyRequest): string {
  // Fastify's `hostname` has already dropped the port (and handles `[ipv6]:port`).
  const host = request.hostname.toLowerCase();
  return host.endsWith('.') ? host.slice(0, -1) : host;
}

/**
 * Creates the `subdomain` strategy: a request to `<slug>.<baseDomain>` names the tenant `<slug>`.
 *
 * The host is lowercased and its port dropped. The apex domain, hosts outside the base domain,
 * hosts more than one label below it (`a.b.example.com`) and the `ignore`d labels yield
 * `undefined`; a label that is not a valid tenant slug is refused with
 * `TENANTRY_ERR_TENANT_SLUG_INVALID`. The identity is not authenticated: it only names a tenant.
 * Behind a proxy, set Fastify's `trustProxy` so `request.hostname` is the client-facing host.
 *
 * @example
 * ```ts
 * const subdomain = createSubdomainStrategy({ baseDomain: 'example.com' });
 * // Host: Acme.example.com:8443
 * await subdomain.identify(request); // { strategy: 'subdomain', authenticated: false, tenantSlug: 'acme' }
 * ```
 */
export function createSubdomainStrategy(options: SubdomainStrategyOptions): IdentificationStrategy {
  if (typeof options !== 'object' || options === null) {
    throw configError('options must be an object with a baseDomain.');
  }
  const suffix = `.${resolveBaseDomain(options.baseDomain)}`;
  const ignore = resolveIgnore(options.ignore);
  return Object.freeze({
    name: 'subdomain',
    identify(request: FastifyRequest): Identity | undefined {
      const host = requestHost(request);
      if (!host.endsWith(suffix)) return undefined;
      const label = host.slice(0, -suffix.length);
      if (label === '' || label.includes('.') || ignore.has(label)) return undefined;
      if (!tenantSlugPattern.test(label)) {
        throw new TenantryError(
          'TENANTRY_ERR_TENANT_SLUG_INVALID',
          'The subdomain is not a valid tenant slug.',
        );
      }
      return Object.freeze({ strategy: 'subdomain', authenticated: false, tenantSlug: label });
    },
  });
}
