import { createHash } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Kysely } from 'kysely';
import { TenantryError } from 'tenantry';
import type { AppDatabase } from '../database.ts';

const keyPattern = /^[\x21-\x7e]{1,255}$/;

/**
 * Runs a creating handler at most once per `Idempotency-Key`. The key is claimed by inserting it
 * in the request's own transaction, so a concurrent retry waits on the row lock and then sees
 * the first request's outcome: replayed when it committed (same status and body, header
 * `idempotent-replayed: true`), run afresh when it rolled back. Reusing a key for another
 * request is refused. Without the header the handler just runs.
 *
 * @example
 * ```ts
 * app.post('/contacts', async (request, reply) =>
 *   idempotent(request, reply, db, 201, () => createContact(db, request.body)),
 * );
 * ```
 */
export async function idempotent<T>(
  request: FastifyRequest,
  reply: FastifyReply,
  db: Kysely<AppDatabase>,
  status: number,
  fn: () => Promise<T>,
): Promise<T> {
  const header = request.headers['idempotency-key'];
  if (header === undefined) {
    reply.code(status);
    return fn();
  }
  if (typeof header !== 'string' || !keyPattern.test(header)) {
    throw new TenantryError(
      'TENANTRY_ERR_HTTP_IDEMPOTENCY_KEY_INVALID',
      'Idempotency-Key must be 1 to 255 visible ASCII characters.',
    );
  }
  const requestHash = createHash('sha256')
    .update(
      JSON.stringify([
        request.method,
        request.routeOptions.url,
        request.params,
        request.body ?? null,
        request.tenant?.userId ?? null,
      ]),
    )
    .digest();
  const claimed = await db
    .insertInto('idempotency_keys')
    .values({ key: header, request_hash: requestHash })
    .onConflict((conflict) => conflict.columns(['tenant_id', 'key']).doNothing())
    .returning('key')
    .executeTakeFirst();
  if (claimed === undefined) {
    const previous = await db
      .selectFrom('idempotency_keys')
      .select(['request_hash', 'status_code', 'response'])
      .where('key', '=', header)
      .executeTakeFirstOrThrow();
    if (!previous.request_hash.equals(requestHash) || previous.status_code === null) {
      throw new TenantryError(
        'TENANTRY_ERR_HTTP_IDEMPOTENCY_KEY_REUSED',
        'This Idempotency-Key was used for a different request; use a new key.',
      );
    }
    reply.code(previous.status_code).header('idempotent-replayed', 'true');
    return previous.response as T;
  }
  const result = await fn();
  await db
    .updateTable('idempotency_keys')
    .set({ status_code: status, response: JSON.stringify(result) })
    .where('key', '=', header)
    .execute();
  reply.code(status);
  return result;
}
