import type { webcrypto } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  errors,
  type JSONWebKeySet,
  type JWTPayload,
  type JWTVerifyGetKey,
  type JWTVerifyOptions,
  jwtVerify,
} from 'jose';
import { isTenantryError, TenantryError } from '../errors.ts';
import { parseTenantId, parseUserId } from '../tenant-id.ts';
import type { IdentificationStrategy, Identity } from './identity.ts';

/**
 * Options of {@link createJwtStrategy}. Exactly one of `secret`, `jwksUrl` and `jwks` names the
 * key material.
 *
 * @example
 * ```ts
 * const options: JwtStrategyOptions = {
 *   jwksUrl: 'https://auth.example.com/.well-known/jwks.json',
 *   issuer: 'https://auth.example.com/',
 *   audience: 'https://api.example.com',
 * };
 * ```
 */
export interface JwtStrategyOptions {
  /**
   * Shared secret for HMAC-signed tokens (`HS256`, `HS384`, `HS512`): at least as many bytes as
   * the hash output of every allowed algorithm (32 for `HS256`).
   */
  readonly secret?: string | Uint8Array;
  /**
   * URL of the identity provider's JSON Web Key Set. Must be `https:`, except on a loopback host
   * (`localhost`, `127.0.0.1`, `[::1]`).
   */
  readonly jwksUrl?: string | URL;
  /** A JSON Web Key Set of public keys held locally (no fetching). */
  readonly jwks?: JSONWebKeySet;
  /**
   * Time after a successful key set fetch before a token with an unknown `kid` may trigger
   * another fetch (only with `jwksUrl`). @defaultValue 30000
   */
  readonly jwksCooldownMs?: number;
  /** Age after which the fetched key set is fetched again (only with `jwksUrl`). @defaultValue 600000 */
  readonly jwksCacheMaxAgeMs?: number;
  /** Time allowed for one key set fetch (only with `jwksUrl`). @defaultValue 5000 */
  readonly jwksTimeoutMs?: number;
  /**
   * Signature algorithms accepted; the token's `alg` header must be one of them. `none` is never
   * accepted, HMAC algorithms only with `secret`, asymmetric ones only with a key set.
   * @defaultValue ['HS256'] with `secret`, ['RS256', 'ES256', 'EdDSA'] with a key set
   */
  readonly algorithms?: readonly string[];
  /** Accepted `iss` values; when set, the claim is required. @defaultValue undefined (not checked) */
  readonly issuer?: string | readonly string[];
  /** Accepted `aud` values; when set, the claim is required. @defaultValue undefined (not checked) */
  readonly audience?: string | readonly string[];
  /** Clock skew allowed when checking `exp`, `nbf` and `iat`, from 0 to 300. @defaultValue 5 */
  readonly clockToleranceSec?: number;
  /** Largest age of a token, from its `iat` claim (then required). @defaultValue undefined (no limit) */
  readonly maxTokenAgeSec?: number;
  /**
   * Claim naming the tenant, read as a literal name (namespaced claims such as
   * `https://example.com/tenant_id` work; dots are not paths). @defaultValue 'tenant_id'
   */
  readonly tenantClaim?: string;
  /** Whether the tenant claim holds a tenant id (a UUID) or a tenant slug. @defaultValue 'id' */
  readonly tenantClaimFormat?: 'id' | 'slug';
  /** Claim holding the user id (a UUID). @defaultValue 'sub' */
  readonly userClaim?: string;
  /** Whether a token without the user claim is refused. @defaultValue true */
  readonly requireUser?: boolean;
  /** Claim holding the caller's role in the tenant; ignored unless a string. @defaultValue 'role' */
  readonly roleClaim?: string;
  /**
   * With `secret` only: how many verified tokens to remember, so a client reusing its token
   * skips the signature check (WebCrypto HMAC costs about 0.1 ms a request). An entry lives at
   * most 60 s and never past the token's `exp` (or `iat + maxTokenAgeSec`), so expiry works as
   * without it; keys of a JWKS can rotate, so key sets are never cached. 0 turns it off.
   * @defaultValue 10000
   */
  readonly verifiedTokenCacheSize?: number;
}

interface JwtSettings {
  readonly key: Uint8Array | JWTVerifyGetKey;
  readonly verifyOptions: JWTVerifyOptions;
  readonly tenantClaim: string;
  readonly tenantClaimFormat: 'id' | 'slug';
  readonly userClaim: string;
  readonly requireUser: boolean;
  readonly roleClaim: string;
}

const hmacMinimumSecretBytes: Readonly<Record<string, number>> = Object.freeze({
  HS256: 32,
  HS384: 48,
  HS512: 64,
});
const asymmetricAlgorithms: ReadonlySet<string> = new Set([
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
  'Ed25519',
]);
const defaultSecretAlgorithms = Object.freeze(['HS256']);
const defaultKeySetAlgorithms = Object.freeze(['RS256', 'ES256', 'EdDSA']);
const privateKeyMembers = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k', 'priv'];
const loopbackHosts: ReadonlySet<string> = new Set(['localhost', '127.0.0.1', '[::1]']);
const maxClockToleranceSec = 300;
const tenantSlugPattern = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const compactJwtPattern = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;
const authorizationPattern = /^(\S+)(?:\s+(.*))?$/;

function configError(message: string, cause?: unknown): TenantryError {
  return new TenantryError('TENANTRY_ERR_CONFIG_INVALID', `JWT strategy: ${message}`, { cause });
}

function claimError(message: string, cause?: unknown): TenantryError {
  return new TenantryError('TENANTRY_ERR_AUTH_CLAIM_INVALID', message, { cause });
}

function resolveAlgorithms(
  algorithms: readonly string[] | undefined,
  withSecret: boolean,
): readonly string[] {
  if (algorithms === undefined)
    return withSecret ? defaultSecretAlgorithms : defaultKeySetAlgorithms;
  if (!Array.isArray(algorithms) || algorithms.length === 0) {
    throw configError('algorithms must be a non-empty array of algorithm names.');
  }
  for (const algorithm of algorithms) {
    if (typeof algorithm === 'string' && algorithm.toLowerCase() === 'none') {
      throw configError('the "none" algorithm accepts unsigned tokens and is never allowed.');
    }
    const isHmac =
      typeof algorithm === 'string' && Object.hasOwn(hmacMinimumSecretBytes, algorithm);
    if (!isHmac && !asymmetricAlgorithms.has(algorithm)) {
      throw configError(
        `unsupported algorithm ${JSON.stringify(algorithm)}; use HS256/384/512 with a secret or ${[...asymmetricAlgorithms].join(', ')} with a key set.`,
      );
    }
    if (withSecret && !isHmac) {
      throw configError(
        `${algorithm} is an asymmetric algorithm; a shared secret allows only HS*.`,
      );
    }
    if (!withSecret && isHmac) {
      // A key set holds public keys; accepting HMAC there is the classic algorithm-confusion hole.
      throw configError(
        `${algorithm} needs a shared secret; a key set allows only asymmetric algorithms.`,
      );
    }
  }
  return Object.freeze([...algorithms]);
}

const hmacHashes: Readonly<Record<string, string>> = {
  HS256: 'SHA-256',
  HS384: 'SHA-384',
  HS512: 'SHA-512',
};

/**
 * Imports the shared secret once per algorithm: handing jose the raw bytes would import a
 * CryptoKey on every request. The algorithm is already pinned by `algorithms`.
 */
function createSecretKeyResolver(secret: Uint8Array): JWTVerifyGetKey {
  const imported = new Map<string, Promise<webcrypto.CryptoKey>>();
  return (header) => {
    const alg = header.alg ?? '';
    const hash = hmacHashes[alg];
    if (hash === undefined) return secret;
    let key = imported.get(alg);
    if (key === undefined) {
      key = crypto.subtle.importKey('raw', secret, { name: 'HMAC', hash }, false, ['verify']);
      imported.set(alg, key);
    }
    return key;
  };
}

function resolveSecret(secret: unknown, algorithms: readonly string[]): Uint8Array {
  let bytes: Uint8Array;
  if (typeof secret === 'string') bytes = new TextEncoder().encode(secret);
  else if (secret instanceof Uint8Array) bytes = new Uint8Array(secret);
  else throw configError('secret must be a string or a Uint8Array.');
  const minimum = Math.max(
    ...algorithms.map((algorithm) => hmacMinimumSecretBytes[algorithm] ?? 0),
  );
  if (bytes.byteLength < minimum) {
    throw configError(
      `the secret must be at least ${minimum} bytes for ${algorithms.join(', ')} (RFC 7518 3.2); got ${bytes.byteLength}.`,
    );
  }
  return bytes;
}

function resolveJwksUrl(value: unknown): URL {
  if (typeof value !== 'string' && !(value instanceof URL)) {
    throw configError('jwksUrl must be a string or a URL.');
  }
  let url: URL;
  try {
    url = new URL(value instanceof URL ? value.href : value);
  } catch (cause) {
    throw configError('jwksUrl must be an absolute URL.', cause);
  }
  const secure =
    url.protocol === 'https:' || (url.protocol === 'http:' && loopbackHosts.has(url.hostname));
  if (!secure) {
    throw configError(
      'jwksUrl must use https: (plain http: is allowed only on a loopback host); keys fetched over plain http can be replaced in transit.',
    );
  }
  return url;
}

function nonNegativeNumber(value: unknown, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw configError(`${name} must be a non-negative finite number.`);
  }
  return value;
}

function createRemoteKey(options: JwtStrategyOptions): JWTVerifyGetKey {
  const timeoutMs = options.jwksTimeoutMs ?? 5000;
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) {
    throw configError('jwksTimeoutMs must be a positive integer.');
  }
  const remote = createRemoteJWKSet(resolveJwksUrl(options.jwksUrl), {
    cooldownDuration: nonNegativeNumber(options.jwksCooldownMs, 30_000, 'jwksCooldownMs'),
    cacheMaxAge: nonNegativeNumber(options.jwksCacheMaxAgeMs, 600_000, 'jwksCacheMaxAgeMs'),
    timeoutDuration: timeoutMs,
  });
  return async (header, token) => {
    try {
      return await remote(header, token);
    } catch (error) {
      if (error instanceof errors.JWKSNoMatchingKey) throw error;
      if (error instanceof errors.JWKSMultipleMatchingKeys) throw error;
      throw new TenantryError(
        'TENANTRY_ERR_AUTH_KEYS_UNAVAILABLE',
        'The access token could not be verified: the signing keys are unavailable; retry shortly.',
        { cause: error, details: { reason: 'jwks_unavailable' } },
      );
    }
  };
}

function createLocalKey(jwks: unknown): JWTVerifyGetKey {
  const keys = (jwks as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys) || keys.length === 0) {
    throw configError('jwks must be a JSON Web Key Set with a non-empty "keys" array.');
  }
  for (const key of keys) {
    if (typeof key !== 'object' || key === null) throw configError('jwks keys must be objects.');
    if (privateKeyMembers.some((member) => Object.hasOwn(key, member))) {
      throw configError(
        'jwks must hold public keys only; a key carries private or secret material.',
      );
    }
  }
  try {
    return createLocalJWKSet(jwks as JSONWebKeySet);
  } catch (cause) {
    throw configError('jwks is not a valid JSON Web Key Set.', cause);
  }
}

function resolveStringList(value: unknown, name: string): string | string[] | undefined {
  if (value === undefined) return undefined;
  if (typeof value === 'string' && value !== '') return value;
  if (
    Array.isArray(value) &&
    value.length > 0 &&
    value.every((entry) => typeof entry === 'string' && entry !== '')
  ) {
    return [...value];
  }
  throw configError(`${name} must be a non-empty string or a non-empty array of them.`);
}

function resolveClaimName(value: unknown, fallback: string, name: string): string {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || value === '') {
    throw configError(`${name} must be a non-empty claim name.`);
  }
  return value;
}

function resolveSettings(options: JwtStrategyOptions): JwtSettings {
  if (typeof options !== 'object' || options === null) {
    throw configError('options must be an object.');
  }
  const sources = [options.secret, options.jwksUrl, options.jwks].filter((v) => v !== undefined);
  if (sources.length !== 1) {
    throw configError('give exactly one of secret, jwksUrl or jwks.');
  }
  if (
    options.jwksUrl === undefined &&
    (options.jwksCooldownMs !== undefined ||
      options.jwksCacheMaxAgeMs !== undefined ||
      options.jwksTimeoutMs !== undefined)
  ) {
    throw configError('jwksCooldownMs, jwksCacheMaxAgeMs and jwksTimeoutMs apply only to jwksUrl.');
  }
  const withSecret = options.secret !== undefined;
  const algorithms = resolveAlgorithms(options.algorithms, withSecret);
  let key: Uint8Array | JWTVerifyGetKey;
  if (withSecret) key = createSecretKeyResolver(resolveSecret(options.secret, algorithms));
  else if (options.jwksUrl !== undefined) key = createRemoteKey(options);
  else key = createLocalKey(options.jwks);

  const clockToleranceSec = options.clockToleranceSec ?? 5;
  if (
    typeof clockToleranceSec !== 'number' ||
    !Number.isFinite(clockToleranceSec) ||
    clockToleranceSec < 0 ||
    clockToleranceSec > maxClockToleranceSec
  ) {
    throw configError(`clockToleranceSec must be between 0 and ${maxClockToleranceSec}.`);
  }
  const maxTokenAgeSec = options.maxTokenAgeSec;
  if (
    maxTokenAgeSec !== undefined &&
    (typeof maxTokenAgeSec !== 'number' || !Number.isFinite(maxTokenAgeSec) || maxTokenAgeSec <= 0)
  ) {
    throw configError('maxTokenAgeSec must be a positive number of seconds.');
  }
  const tenantClaimFormat = options.tenantClaimFormat ?? 'id';
  if (tenantClaimFormat !== 'id' && tenantClaimFormat !== 'slug') {
    throw configError('tenantClaimFormat must be "id" or "slug".');
  }
  const requireUser = options.requireUser ?? true;
  if (typeof requireUser !== 'boolean') throw configError('requireUser must be a boolean.');

  const issuer = resolveStringList(options.issuer, 'issuer');
  const audience = resolveStringList(options.audience, 'audience');
  const verifyOptions: JWTVerifyOptions = {
    algorithms: [...algorithms] as JWTVerifyOptions['algorithms'],
    requiredClaims: ['exp'],
    clockTolerance: clockToleranceSec,
    ...(issuer === undefined ? {} : { issuer }),
    ...(audience === undefined ? {} : { audience }),
    ...(maxTokenAgeSec === undefined ? {} : { maxTokenAge: maxTokenAgeSec }),
  };
  return Object.freeze({
    key,
    verifyOptions: Object.freeze(verifyOptions),
    tenantClaim: resolveClaimName(options.tenantClaim, 'tenant_id', 'tenantClaim'),
    tenantClaimFormat,
    userClaim: resolveClaimName(options.userClaim, 'sub', 'userClaim'),
    requireUser,
    roleClaim: resolveClaimName(options.roleClaim, 'role', 'roleClaim'),
  });
}

function bearerToken(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (typeof header !== 'string') return undefined;
  const match = authorizationPattern.exec(header.trim());
  if (match === null || match[1]?.toLowerCase() !== 'bearer') return undefined;
  const token = match[2]?.trim() ?? '';
  if (!compactJwtPattern.test(token)) {
    throw new TenantryError(
      'TENANTRY_ERR_AUTH_TOKEN_INVALID',
      'The bearer token is not a well-formed JWT.',
    );
  }
  return token;
}

function toTenantryError(error: unknown): TenantryError {
  if (isTenantryError(error)) return error;
  if (error instanceof errors.JWTExpired) {
    return new TenantryError('TENANTRY_ERR_AUTH_TOKEN_EXPIRED', 'The access token has expired.', {
      cause: error,
    });
  }
  if (
    error instanceof errors.JWTClaimValidationFailed &&
    error.claim === 'nbf' &&
    error.reason === 'check_failed'
  ) {
    return new TenantryError(
      'TENANTRY_ERR_AUTH_TOKEN_EXPIRED',
      'The access token is not valid yet.',
      {
        cause: error,
      },
    );
  }
  return new TenantryError('TENANTRY_ERR_AUTH_TOKEN_INVALID', 'The access token was rejected.', {
    cause: error,
  });
}

async function verifyToken(token: string, settings: JwtSettings): Promise<JWTPayload> {
  try {
    return (await jwtVerify(token, settings.key, settings.verifyOptions)).payload;
  } catch (error) {
    if (!(error instanceof errors.JWKSMultipleMatchingKeys)) throw toTenantryError(error);
    // Key sets without `kid`s (or with reused ones) can match several keys: try each in turn.
    let lastError: unknown = error;
    for await (const candidate of error) {
      try {
        return (await jwtVerify(token, candidate, settings.verifyOptions)).payload;
      } catch (candidateError) {
        if (!(candidateError instanceof errors.JWSSignatureVerificationFailed)) {
          throw toTenantryError(candidateError);
        }
        lastError = candidateError;
      }
    }
    throw toTenantryError(lastError);
  }
}

function toIdentity(payload: JWTPayload, settings: JwtSettings): Identity {
  const { tenantClaim, userClaim } = settings;
  const tenantValue = payload[tenantClaim];
  if (tenantValue === undefined) {
    throw claimError(`The access token has no "${tenantClaim}" claim.`);
  }
  let tenant: { tenantId: string } | { tenantSlug: string };
  if (settings.tenantClaimFormat === 'slug') {
    if (typeof tenantValue !== 'string' || !tenantSlugPattern.test(tenantValue)) {
      throw claimError(`The access token's "${tenantClaim}" claim is not a valid tenant slug.`);
    }
    tenant = { tenantSlug: tenantValue };
  } else {
    try {
      tenant = { tenantId: parseTenantId(tenantValue) };
    } catch (cause) {
      throw claimError(
        `The access token's "${tenantClaim}" claim is not a valid tenant id.`,
        cause,
      );
    }
  }
  const userValue = payload[userClaim];
  let userId: string | undefined;
  if (userValue === undefined) {
    if (settings.requireUser) throw claimError(`The access token has no "${userClaim}" claim.`);
  } else {
    try {
      userId = parseUserId(userValue);
    } catch (cause) {
      throw claimError(`The access token's "${userClaim}" claim is not a valid user id.`, cause);
    }
  }
  const role = payload[settings.roleClaim];
  return Object.freeze({
    strategy: 'jwt',
    authenticated: true,
    ...tenant,
    ...(userId === undefined ? {} : { userId }),
    ...(typeof role === 'string' && role !== '' ? { role } : {}),
    claims: Object.freeze(payload),
  });
}

/**
 * Creates the `jwt` strategy: verifies an `Authorization: Bearer` token (signature with pinned
 * algorithms, `exp` required, `nbf`, `iss`, `aud`) and reads the tenant, user and role claims.
 *
 * A request without a bearer token yields `undefined`; any bearer token that fails verification
 * is refused with `TENANTRY_ERR_AUTH_TOKEN_INVALID` or `TENANTRY_ERR_AUTH_TOKEN_EXPIRED`, and a
 * bad tenant or user claim with `TENANTRY_ERR_AUTH_CLAIM_INVALID`. An unreachable key set is
 * `TENANTRY_ERR_AUTH_KEYS_UNAVAILABLE` (503: an outage, not a bad token; `details.reason`
 * `jwks_unavailable`).
 * Options are validated at construction (`TENANTRY_ERR_CONFIG_INVALID`).
 *
 * @example
 * ```ts
 * const jwt = createJwtStrategy({
 *   jwksUrl: 'https://auth.example.com/.well-known/jwks.json',
 *   issuer: 'https://auth.example.com/',
 *   audience: 'https://api.example.com',
 *   tenantClaim: 'https://example.com/tenant_id',
 * });
 * const identity = await jwt.identify(request); // { strategy: 'jwt', tenantId, userId, ... }
 * ```
 */
export function createJwtStrategy(options: JwtStrategyOptions): IdentificationStrategy {
  const settings = resolveSettings(options);
  const cacheSize = options.secret === undefined ? 0 : (options.verifiedTokenCacheSize ?? 10_000);
  if (!Number.isInteger(cacheSize) || cacheSize < 0) {
    throw configError('verifiedTokenCacheSize must be a non-negative integer.');
  }
  // Same bytes, same secret: the same verdict. Only successes are kept, and only while the
  // token is certainly still valid.
  const verified = new Map<string, { readonly identity: Identity; readonly until: number }>();
  const maxTokenAgeSec = options.maxTokenAgeSec;
  return Object.freeze({
    name: 'jwt',
    async identify(request: FastifyRequest): Promise<Identity | undefined> {
      const token = bearerToken(request);
      if (token === undefined) return undefined;
      const now = Date.now();
      const cached = verified.get(token);
      if (cached !== undefined) {
        if (now < cached.until) return cached.identity;
        verified.delete(token);
      }
      const payload = await verifyToken(token, settings);
      const identity = toIdentity(payload, settings);
      if (cacheSize > 0 && typeof payload.exp === 'number') {
        let until = Math.min(now + 60_000, payload.exp * 1000);
        if (maxTokenAgeSec !== undefined && typeof payload.iat === 'number') {
          until = Math.min(until, (payload.iat + maxTokenAgeSec) * 1000);
        }
        if (verified.size >= cacheSize) {
          const oldest = verified.keys().next().value;
          if (oldest !== undefined) verified.delete(oldest);
        }
        verified.set(token, Object.freeze({ identity, until }));
      }
      return identity;
    },
  });
}
