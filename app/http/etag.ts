import type { FastifyReply, FastifyRequest } from 'fastify';
import { TenantryError } from 'tenantry';

/**
 * The ETag of a versioned row: a weak validator over the row's id and its `version` column,
 * which every update increments.
 *
 * @example
 * ```ts
 * reply.header('etag', etagOf(contact.id, contact.version));
 * ```
 */
export function etagOf(id: string, version: number): string {
  return `W/"${id}.${version}"`;
}

/**
 * Reads `If-Match` as the version the client last saw of row `id`. Updates require it, so a
 * concurrent edit is never silently overwritten.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_PRECONDITION_REQUIRED` without the header,
 *   `TENANTRY_ERR_HTTP_PRECONDITION_FAILED` for an ETag of another row or a malformed one.
 * @example
 * ```ts
 * const version = expectedVersion(request, id);
 * const updated = await db.updateTable('contacts').set(...).where('version', '=', version)...
 * ```
 */
export function expectedVersion(request: FastifyRequest, id: string): number {
  const header = request.headers['if-match'];
  if (header === undefined || header === '') {
    throw new TenantryError(
      'TENANTRY_ERR_HTTP_PRECONDITION_REQUIRED',
      'Send If-Match with the ETag from your last read of this object.',
    );
  }
  const match = /^(?:W\/)?"([0-9a-f-]{36})\.(\d{1,9})"$/.exec(header.trim());
  if (match === null || match[1] !== id.toLowerCase()) {
    throw new TenantryError(
      'TENANTRY_ERR_HTTP_PRECONDITION_FAILED',
      'If-Match does not name the current version of this object; read it again.',
    );
  }
  return Number(match[2]);
}

/** Sets the ETag header for a versioned row and returns the row (for `return` chains). */
export function withEtag<T extends { id: string; version: number }>(
  reply: FastifyReply,
  row: T,
): T {
  reply.header('etag', etagOf(row.id, row.version));
  return row;
}
