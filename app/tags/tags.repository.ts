import type { Kysely } from 'kysely';
import type { AppDatabase } from '../database.ts';

/** A tag row as the API sees it. */
export interface TagRow {
  readonly id: string;
  readonly name: string;
}

/**
 * Inserts a tag; a name the workspace already uses raises `TENANTRY_ERR_DB_CONFLICT`.
 *
 * @example
 * ```ts
 * const tag = await insertTag(db, 'vip');
 * ```
 */
export async function insertTag(db: Kysely<AppDatabase>, name: string): Promise<TagRow> {
  return db.insertInto('tags').values({ name }).returning(['id', 'name']).executeTakeFirstOrThrow();
}

/**
 * Finds one tag of the current workspace by id.
 *
 * @example
 * ```ts
 * const tag = await findTag(db, id); // undefined when absent or another workspace's
 * ```
 */
export async function findTag(db: Kysely<AppDatabase>, id: string): Promise<TagRow | undefined> {
  return db.selectFrom('tags').select(['id', 'name']).where('id', '=', id).executeTakeFirst();
}

/**
 * Returns which of `ids` are tags of the current workspace.
 *
 * @example
 * ```ts
 * const found = await existingTagIds(db, body.tagIds);
 * ```
 */
export async function existingTagIds(
  db: Kysely<AppDatabase>,
  ids: readonly string[],
): Promise<Set<string>> {
  if (ids.length === 0) return new Set();
  const rows = await db.selectFrom('tags').select('id').where('id', 'in', ids).execute();
  return new Set(rows.map((row) => row.id));
}

/**
 * Lists tags by name, `limit + 1` rows after the name `after` (keyset pagination on the unique
 * `(tenant_id, name)` index).
 *
 * @example
 * ```ts
 * const rows = await listTags(db, { limit: 26, after: undefined });
 * ```
 */
export async function listTags(
  db: Kysely<AppDatabase>,
  page: { readonly limit: number; readonly after: string | undefined },
): Promise<TagRow[]> {
  let query = db.selectFrom('tags').select(['id', 'name']).orderBy('name').limit(page.limit);
  if (page.after !== undefined) query = query.where('name', '>', page.after);
  return query.execute();
}

/**
 * Renames a tag; returns `undefined` when there is no such tag in the workspace.
 *
 * @example
 * ```ts
 * const tag = await renameTag(db, id, 'customer');
 * ```
 */
export async function renameTag(
  db: Kysely<AppDatabase>,
  id: string,
  name: string,
): Promise<TagRow | undefined> {
  return db
    .updateTable('tags')
    .set({ name })
    .where('id', '=', id)
    .returning(['id', 'name'])
    .executeTakeFirst();
}

/**
 * Deletes a tag (its links to contacts go with it); tells whether a row was deleted.
 *
 * @example
 * ```ts
 * if (!(await deleteTag(db, id))) throw notFound();
 * ```
 */
export async function deleteTag(db: Kysely<AppDatabase>, id: string): Promise<boolean> {
  const result = await db.deleteFrom('tags').where('id', '=', id).executeTakeFirst();
  return result.numDeletedRows > 0n;
}
