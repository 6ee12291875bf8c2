export { type ApiKeyStrategyOptions, createApiKeyStrategy } from './api-key-strategy.ts';
export {
  createTrustedHeaderStrategy,
  type TrustedHeaderStrategyOptions,
} from './header-strategy.ts';
export type { IdentificationStrategy, Identity } from './identity.ts';
export { createJwtStrategy, type JwtStrategyOptions } from './jwt-strategy.ts';
export { createPathStrategy, type PathStrategyOptions } from './path-strategy.ts';
export {
  type RegisteredDatabase,
  type RequestTenant,
  requireTenant,
  type TenantRequirement,
  type TenantryFastifyOptions,
  type TenantryFastifyRegister,
  tenantryFastify,
} from './plugin.ts';
export {
  type CodedError,
  type ProblemDetails,
  sendProblem,
  toProblemDetails,
} from './problem-details.ts';
export { type TenantRateLimitOptions, tenantRateLimit } from './rate-limit-plugin.ts';
export { createSubdomainStrategy, type SubdomainStrategyOptions } from './subdomain-strategy.ts';
