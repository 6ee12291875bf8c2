import { createHash, randomBytes } from 'node:crypto';
import { SignJWT } from 'jose';
import type { AuthConfig } from '../config.ts';

/** The local-mode part of {@link AuthConfig}: the app signs its own tokens. */
export type LocalAuthConfig = Extract<AuthConfig, { mode: 'local' }>;

/** What an access token says: who, in which workspace, with which role. */
export interface AccessClaims {
  readonly userId: string;
  readonly tenantId: string;
  readonly role: string;
}

/**
 * Signs an HS256 access token with the claims the app's JWT strategy reads (`sub`,
 * `tenant_id`, `role`) plus `iss`, `aud`, `iat` and `exp`.
 *
 * @example
 * ```ts
 * const token = await signAccessToken(config.auth, { userId, tenantId, role: 'owner' });
 * ```
 */
export async function signAccessToken(
  auth: LocalAuthConfig,
  claims: AccessClaims,
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ tenant_id: claims.tenantId, role: claims.role })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(claims.userId)
    .setIssuer(auth.issuer)
    .setAudience(auth.audience)
    .setIssuedAt(now)
    .setExpirationTime(now + auth.accessTokenTtlSec)
    .sign(new TextEncoder().encode(auth.jwtSecret));
}

/**
 * A new opaque secret (refresh token, invitation token): 32 random bytes, base64url.
 *
 * @example
 * ```ts
 * const token = newOpaqueToken(); // 43 characters
 * ```
 */
export function newOpaqueToken(): string {
  return randomBytes(32).toString('base64url');
}

/**
 * The SHA-256 of an opaque token, the only form stored. The tokens carry 256 random bits, so a
 * fast hash suffices: there is nothing to guess.
 *
 * @example
 * ```ts
 * await db.insertInto('invitations').values({ token_hash: hashToken(token), ... }).execute();
 * ```
 */
export function hashToken(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}
