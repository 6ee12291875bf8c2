import type { Kysely } from 'kysely';
import { isTenantryError, TenantryError } from 'tenantry';
import type { AppDatabase } from '../database.ts';
import { decodeCursor, toPage } from '../http/pagination.ts';
import * as repository from './tags.repository.ts';

/** A tag in API responses. */
export interface Tag {
  readonly id: string;
  readonly name: string;
}

function notFound(): TenantryError {
  return new TenantryError('TENANTRY_ERR_HTTP_NOT_FOUND', 'Tag not found.');
}

function invalidCursor(): TenantryError {
  return new TenantryError('TENANTRY_ERR_HTTP_VALIDATION', 'The cursor is not valid.', {
    details: {
      errors: [{ pointer: '/querystring/cursor', message: 'is not a cursor from this API' }],
    },
  });
}

async function uniqueName<T>(write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (error) {
    if (!isTenantryError(error, 'TENANTRY_ERR_DB_CONFLICT')) throw error;
    throw new TenantryError(
      'TENANTRY_ERR_DB_CONFLICT',
      'A tag with this name already exists in this workspace.',
      {
        cause: error,
        details: { errors: [{ pointer: '/body/name', message: 'is already used by another tag' }] },
      },
    );
  }
}

/**
 * Creates a tag.
 *
 * @throws TenantryError `TENANTRY_ERR_DB_CONFLICT` when the workspace has a tag of that name.
 * @example
 * ```ts
 * const tag = await createTag(db, { name: 'vip' });
 * ```
 */
export async function createTag(db: Kysely<AppDatabase>, input: { name: string }): Promise<Tag> {
  return uniqueName(() => repository.insertTag(db, input.name));
}

/**
 * Reads one tag.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND`, also for another workspace's tag.
 * @example
 * ```ts
 * const tag = await getTag(db, id);
 * ```
 */
export async function getTag(db: Kysely<AppDatabase>, id: string): Promise<Tag> {
  const tag = await repository.findTag(db, id);
  if (tag === undefined) throw notFound();
  return tag;
}

/**
 * Lists a page of tags in name order.
 *
 * @example
 * ```ts
 * const { items, nextCursor } = await listTags(db, { limit: 25, cursor: request.query.cursor });
 * ```
 */
export async function listTags(
  db: Kysely<AppDatabase>,
  query: { readonly limit: number; readonly cursor?: string | undefined },
): Promise<{ items: Tag[]; nextCursor: string | null }> {
  let after: string | undefined;
  if (query.cursor !== undefined) {
    const [name] = decodeCursor(query.cursor, 1);
    if (typeof name !== 'string') throw invalidCursor();
    after = name;
  }
  const rows = await repository.listTags(db, { limit: query.limit + 1, after });
  return toPage(rows, query.limit, (row) => [row.name]);
}

/**
 * Renames a tag.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND` or `TENANTRY_ERR_DB_CONFLICT`.
 * @example
 * ```ts
 * const tag = await renameTag(db, id, { name: 'customer' });
 * ```
 */
export async function renameTag(
  db: Kysely<AppDatabase>,
  id: string,
  input: { name: string },
): Promise<Tag> {
  const tag = await uniqueName(() => repository.renameTag(db, id, input.name));
  if (tag === undefined) throw notFound();
  return tag;
}

/**
 * Deletes a tag and unlinks it from every contact.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND`, also for another workspace's tag.
 * @example
 * ```ts
 * await deleteTag(db, id);
 * ```
 */
export async function deleteTag(db: Kysely<AppDatabase>, id: string): Promise<void> {
  if (!(await repository.deleteTag(db, id))) throw notFound();
}
