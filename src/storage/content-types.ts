import { TenantryError } from '../errors.ts';

const contentTypePattern = /^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$/;

/**
 * Validates a declared content type: a bare lowercase `type/subtype` (no parameters), the form
 * Tenantry signs and compares byte for byte. Throws `TENANTRY_ERR_STORAGE_REQUEST_INVALID`.
 *
 * @example
 * ```ts
 * import { parseContentType } from 'tenantry/storage';
 * parseContentType('application/pdf'); // 'application/pdf'
 * ```
 */
export function parseContentType(value: unknown): string {
  if (typeof value !== 'string' || !contentTypePattern.test(value)) {
    throw new TenantryError(
      'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
      'A content type must be a lowercase "type/subtype" without parameters.',
    );
  }
  return value;
}
