import { type Kysely, sql } from 'kysely';
import type { AppDatabase } from '../database.ts';

/** A template category, as WhatsApp Business defines them. */
export type TemplateCategory = 'marketing' | 'utility' | 'authentication';

/** A message template row as the API reads it. */
export interface TemplateRow {
  readonly id: string;
  readonly name: string;
  readonly language: string;
  readonly category: TemplateCategory;
  readonly body: string;
  readonly version: number;
  readonly created_at: Date;
  readonly updated_at: Date;
}

/** Writable fields of a template. */
export interface TemplateFields {
  readonly name: string;
  readonly language: string;
  readonly category: TemplateCategory;
  readonly body: string;
}

const columns = [
  'id',
  'name',
  'language',
  'category',
  'body',
  'version',
  'created_at',
  'updated_at',
] as const;

/**
 * Inserts a template; a name and language the workspace already has raises
 * `TENANTRY_ERR_DB_CONFLICT`.
 *
 * @example
 * ```ts
 * const row = await insertTemplate(db, { name: 'welcome', language: 'en', category: 'utility', body: 'Hi {{1}}' });
 * ```
 */
export async function insertTemplate(
  db: Kysely<AppDatabase>,
  fields: TemplateFields,
): Promise<TemplateRow> {
  return db
    .insertInto('message_templates')
    .values(fields)
    .returning(columns)
    .executeTakeFirstOrThrow();
}

/**
 * Finds one template of the current workspace.
 *
 * @example
 * ```ts
 * const row = await findTemplate(db, id); // undefined when absent or another workspace's
 * ```
 */
export async function findTemplate(
  db: Kysely<AppDatabase>,
  id: string,
): Promise<TemplateRow | undefined> {
  return db.selectFrom('message_templates').select(columns).where('id', '=', id).executeTakeFirst();
}

/**
 * Lists `limit` templates in (name, language) order after `after`, the keyset of the unique
 * `(tenant_id, name, language)` index.
 *
 * @example
 * ```ts
 * const rows = await listTemplates(db, { limit: 26, category: 'marketing' });
 * ```
 */
export async function listTemplates(
  db: Kysely<AppDatabase>,
  options: {
    readonly limit: number;
    readonly after?: { readonly name: string; readonly language: string } | undefined;
    readonly category?: TemplateCategory | undefined;
    readonly language?: string | undefined;
  },
): Promise<TemplateRow[]> {
  let query = db
    .selectFrom('message_templates')
    .select(columns)
    .orderBy('name')
    .orderBy('language')
    .limit(options.limit);
  const after = options.after;
  if (after !== undefined) {
    query = query.where(({ eb, refTuple, tuple }) =>
      eb(refTuple('name', 'language'), '>', tuple(after.name, after.language)),
    );
  }
  if (options.category !== undefined) query = query.where('category', '=', options.category);
  if (options.language !== undefined) query = query.where('language', '=', options.language);
  return query.execute();
}

/**
 * Updates a template if it is still at `version`, incrementing the version; returns `undefined`
 * when no row matched (absent, or changed since).
 *
 * @example
 * ```ts
 * const row = await updateTemplate(db, id, 2, { body: 'Hello {{1}}' });
 * ```
 */
export async function updateTemplate(
  db: Kysely<AppDatabase>,
  id: string,
  version: number,
  changes: Partial<TemplateFields>,
): Promise<TemplateRow | undefined> {
  return db
    .updateTable('message_templates')
    .set({ ...changes, version: sql<number>`version + 1`, updated_at: sql<Date>`now()` })
    .where('id', '=', id)
    .where('version', '=', version)
    .returning(columns)
    .executeTakeFirst();
}

/**
 * Deletes a template; tells whether a row was deleted.
 *
 * @example
 * ```ts
 * const deleted = await deleteTemplate(db, id);
 * ```
 */
export async function deleteTemplate(db: Kysely<AppDatabase>, id: string): Promise<boolean> {
  const result = await db.deleteFrom('message_templates').where('id', '=', id).executeTakeFirst();
  return result.numDeletedRows > 0n;
}
