import { TenantryError } from './errors.ts';

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const nilUuid = '00000000-0000-0000-0000-000000000000';

/** A tenant id that passed {@link parseTenantId}: a canonical, lowercase UUID. */
export type TenantId = string & { readonly __tenantId: unique symbol };

/** A user id that passed {@link parseUserId}: a canonical, lowercase UUID. */
export type UserId = string & { readonly __userId: unique symbol };

function canonicalUuid(value: unknown): string | undefined {
  if (typeof value !== 'string' || value.length !== 36) return undefined;
  const lower = value.toLowerCase();
  return uuidPattern.test(lower) && lower !== nilUuid ? lower : undefined;
}

/**
 * Tells whether a value is a UUID Tenantry accepts as an id (hyphenated hex, any case, not nil).
 *
 * @example
 * ```ts
 * isUuid('0b5c6a3e-6a8e-4f7e-9a51-2f7c1c9d2e10'); // true
 * isUuid("x'; drop table contacts; --"); // false
 * ```
 */
export function isUuid(value: unknown): value is string {
  return canonicalUuid(value) !== undefined;
}

/**
 * Validates a tenant id and returns its canonical lowercase form.
 *
 * Only the 36-character hyphenated form is accepted: braces, whitespace, quotes, URNs and the
 * nil UUID are rejected, so a validated id can be written into a `SET LOCAL` literal safely.
 *
 * @example
 * ```ts
 * parseTenantId('0B5C6A3E-6A8E-4F7E-9A51-2F7C1C9D2E10'); // '0b5c6a3e-6a8e-4f7e-9a51-2f7c1c9d2e10'
 * parseTenantId('{0b5c6a3e-6a8e-4f7e-9a51-2f7c1c9d2e10}'); // throws TENANTRY_ERR_TENANT_ID_INVALID
 * ```
 */
export function parseTenantId(value: unknown): TenantId {
  const id = canonicalUuid(value);
  if (id === undefined) {
    throw new TenantryError(
      'TENANTRY_ERR_TENANT_ID_INVALID',
      'Tenant id must be a UUID in its 36-character hyphenated form.',
    );
  }
  return id as TenantId;
}

/**
 * Validates a user id and returns its canonical lowercase form.
 *
 * @example
 * ```ts
 * parseUserId('5d0f8c7e-1d2a-4c1b-8e7f-0a1b2c3d4e5f');
 * ```
 */
export function parseUserId(value: unknown): UserId {
  const id = canonicalUuid(value);
  if (id === undefined) {
    throw new TenantryError(
      'TENANTRY_ERR_USER_ID_INVALID',
      'User id must be a UUID in its 36-character hyphenated form.',
    );
  }
  return id as UserId;
}
