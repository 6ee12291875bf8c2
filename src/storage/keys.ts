import { TenantryError } from '../errors.ts';

const uuid = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
const keyPattern = new RegExp(`^tenants/(${uuid})/(${uuid})$`);
const uuidPattern = new RegExp(`^${uuid}$`);

/** The parts of an object key. */
export interface ObjectKeyParts {
  readonly tenantId: string;
  readonly fileId: string;
}

/**
 * The object key of a file: `tenants/<tenant id>/<file id>`, both lowercase UUIDs. Keys are
 * built only by the server, from ids it generated; never from user input.
 *
 * @example
 * ```ts
 * import { createObjectKey } from 'tenantry/storage';
 * createObjectKey(tenantId, randomUUID()); // 'tenants/7c9e…/3f2a…'
 * ```
 */
export function createObjectKey(tenantId: string, fileId: string): string {
  return `tenants/${parseId(tenantId, 'tenant id')}/${parseId(fileId, 'file id')}`;
}

/**
 * The key prefix holding every object of a tenant: `tenants/<tenant id>/`.
 *
 * @example
 * ```ts
 * import { tenantKeyPrefix } from 'tenantry/storage';
 * await driver.deletePrefix(tenantKeyPrefix(tenantId));
 * ```
 */
export function tenantKeyPrefix(tenantId: string): string {
  return `tenants/${parseId(tenantId, 'tenant id')}/`;
}

/**
 * Splits an object key into tenant id and file id. Anything that is not exactly
 * `tenants/<uuid>/<uuid>` in lowercase (extra segments, `..`, encoded characters, backslashes,
 * a leading slash) throws `TENANTRY_ERR_STORAGE_KEY_INVALID`.
 *
 * @example
 * ```ts
 * import { parseObjectKey } from 'tenantry/storage';
 * const { tenantId, fileId } = parseObjectKey(key);
 * ```
 */
export function parseObjectKey(key: unknown): ObjectKeyParts {
  const match = typeof key === 'string' ? keyPattern.exec(key) : null;
  if (match === null) {
    throw new TenantryError(
      'TENANTRY_ERR_STORAGE_KEY_INVALID',
      'An object key must be exactly "tenants/<tenant id>/<file id>".',
    );
  }
  return { tenantId: match[1] as string, fileId: match[2] as string };
}

/**
 * Checks that `key` is a well-formed key under `tenantId`'s prefix and returns its parts;
 * otherwise throws `TENANTRY_ERR_STORAGE_KEY_INVALID`.
 *
 * @example
 * ```ts
 * import { assertKeyInTenant } from 'tenantry/storage';
 * assertKeyInTenant(key, tenantId);
 * ```
 */
export function assertKeyInTenant(key: unknown, tenantId: string): ObjectKeyParts {
  const parts = parseObjectKey(key);
  if (typeof tenantId !== 'string' || parts.tenantId !== tenantId.toLowerCase()) {
    throw new TenantryError(
      'TENANTRY_ERR_STORAGE_KEY_INVALID',
      "The object key is outside the tenant's prefix.",
    );
  }
  return parts;
}

function parseId(value: string, what: string): string {
  const id = typeof value === 'string' ? value.toLowerCase() : '';
  if (!uuidPattern.test(id)) {
    throw new TenantryError('TENANTRY_ERR_STORAGE_KEY_INVALID', `The ${what} must be a UUID.`);
  }
  return id;
}

const segment = '[A-Za-z0-9][A-Za-z0-9_.-]{0,127}';
const driverKeyPattern = new RegExp(`^tenants/(${uuid})/${segment}(?:/${segment}){0,7}$`);

/**
 * Checks a key a driver is asked to sign, read or delete: `tenants/<tenant id>/` followed by one
 * to eight segments of letters, digits, `_`, `.` and `-`, each starting with a letter or digit
 * (so no `.`/`..` segment, no empty segment, no encoding, no backslash). The file registry's
 * keys (`tenants/<tenant id>/<file id>`) are one case; other Tenantry features (exports) may
 * nest deeper. Returns the tenant id; throws `TENANTRY_ERR_STORAGE_KEY_INVALID`.
 *
 * @example
 * ```ts
 * import { parseDriverKey } from 'tenantry/storage';
 * parseDriverKey(`tenants/${tenantId}/exports/${exportId}.csv`); // tenantId
 * ```
 */
export function parseDriverKey(key: unknown): string {
  const match = typeof key === 'string' && key.length <= 1024 ? driverKeyPattern.exec(key) : null;
  if (match === null) {
    throw new TenantryError(
      'TENANTRY_ERR_STORAGE_KEY_INVALID',
      'An object key must be "tenants/<tenant id>/" followed by plain path segments.',
    );
  }
  return match[1] as string;
}

/**
 * {@link parseDriverKey}, plus the check that the key is under `tenantId`'s prefix.
 *
 * @example
 * ```ts
 * import { assertDriverKeyInTenant } from 'tenantry/storage';
 * assertDriverKeyInTenant(request.key, request.tenantId);
 * ```
 */
export function assertDriverKeyInTenant(key: unknown, tenantId: string): void {
  if (typeof tenantId !== 'string' || parseDriverKey(key) !== tenantId.toLowerCase()) {
    throw new TenantryError(
      'TENANTRY_ERR_STORAGE_KEY_INVALID',
      "The object key is outside the tenant's prefix.",
    );
  }
}
