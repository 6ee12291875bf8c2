import type { Kysely } from 'kysely';
import { isTenantryError, TenantryError } from 'tenantry';
import type { AppDatabase } from '../database.ts';
import { decodeCursor, toPage } from '../http/pagination.ts';
import * as repository from './templates.repository.ts';

/** A message template in API responses. */
export interface Template {
  readonly id: string;
  readonly name: string;
  readonly language: string;
  readonly category: repository.TemplateCategory;
  readonly body: string;
  readonly version: number;
  readonly createdAt: string;
  readonly updatedAt: string;
}

/** Query parameters of a template list. */
export interface TemplateQuery {
  readonly limit: number;
  readonly cursor?: string | undefined;
  readonly category?: repository.TemplateCategory | undefined;
  readonly language?: string | undefined;
}

function templateNotFound(): TenantryError {
  return new TenantryError('TENANTRY_ERR_HTTP_NOT_FOUND', 'Template not found.');
}

function invalidCursor(): TenantryError {
  return new TenantryError('TENANTRY_ERR_HTTP_VALIDATION', 'The cursor is not valid.', {
    details: {
      errors: [{ pointer: '/querystring/cursor', message: 'is not a cursor from this API' }],
    },
  });
}

/**
 * Checks a template body's placeholders: each `{{...}}` must be `{{n}}`, numbered 1, 2, … without
 * gaps (a value is sent for each when the template is used).
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_VALIDATION` naming the problem.
 * @example
 * ```ts
 * checkPlaceholders('Hi {{1}}, your order {{2}} shipped.'); // ok
 * checkPlaceholders('Hi {{2}}'); // throws: {{1}} is missing
 * ```
 */
export function checkPlaceholders(body: string): void {
  const numbers = new Set<number>();
  let problem: string | undefined;
  for (const match of body.matchAll(/\{\{([^{}]*)\}\}/g)) {
    const inner = match[1] ?? '';
    if (!/^[1-9][0-9]{0,2}$/.test(inner)) {
      problem = `placeholder {{${inner}}} must be a number such as {{1}}`;
      break;
    }
    numbers.add(Number(inner));
  }
  if (problem === undefined) {
    for (let n = 1; n <= numbers.size; n++) {
      if (!numbers.has(n)) {
        problem = `placeholders must be numbered from {{1}} without gaps; {{${n}}} is missing`;
        break;
      }
    }
  }
  if (problem !== undefined) {
    throw new TenantryError('TENANTRY_ERR_HTTP_VALIDATION', `/body/body ${problem}`, {
      details: { errors: [{ pointer: '/body/body', message: problem }] },
    });
  }
}

async function uniqueNameAndLanguage<T>(write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (error) {
    if (!isTenantryError(error, 'TENANTRY_ERR_DB_CONFLICT')) throw error;
    throw new TenantryError(
      'TENANTRY_ERR_DB_CONFLICT',
      'A template with this name and language already exists in this workspace.',
      {
        cause: error,
        details: {
          errors: [
            { pointer: '/body/name', message: 'is already used by a template in this language' },
          ],
        },
      },
    );
  }
}

function toTemplate(row: repository.TemplateRow): Template {
  return {
    id: row.id,
    name: row.name,
    language: row.language,
    category: row.category,
    body: row.body,
    version: row.version,
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
  };
}

/**
 * Creates a message template.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_VALIDATION` for malformed placeholders,
 *   `TENANTRY_ERR_DB_CONFLICT` when the name exists in that language.
 * @example
 * ```ts
 * const template = await createTemplate(db, { name: 'order_shipped', language: 'pt_BR', category: 'utility', body: 'Pedido {{1}} enviado' });
 * ```
 */
export async function createTemplate(
  db: Kysely<AppDatabase>,
  input: repository.TemplateFields,
): Promise<Template> {
  checkPlaceholders(input.body);
  return toTemplate(await uniqueNameAndLanguage(() => repository.insertTemplate(db, input)));
}

/**
 * Reads one template.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND`, also for another workspace's template.
 * @example
 * ```ts
 * const template = await getTemplate(db, id);
 * ```
 */
export async function getTemplate(db: Kysely<AppDatabase>, id: string): Promise<Template> {
  const row = await repository.findTemplate(db, id);
  if (row === undefined) throw templateNotFound();
  return toTemplate(row);
}

/**
 * Lists a page of templates in (name, language) order.
 *
 * @example
 * ```ts
 * const page = await listTemplates(db, { limit: 25, category: 'marketing' });
 * ```
 */
export async function listTemplates(
  db: Kysely<AppDatabase>,
  query: TemplateQuery,
): Promise<{ items: Template[]; nextCursor: string | null }> {
  let after: { name: string; language: string } | undefined;
  if (query.cursor !== undefined) {
    const [name, language] = decodeCursor(query.cursor, 2);
    if (typeof name !== 'string' || typeof language !== 'string') throw invalidCursor();
    after = { name, language };
  }
  const rows = await repository.listTemplates(db, {
    limit: query.limit + 1,
    after,
    category: query.category,
    language: query.language,
  });
  const page = toPage(rows, query.limit, (row) => [row.name, row.language]);
  return { items: page.items.map(toTemplate), nextCursor: page.nextCursor };
}

/**
 * Updates a template the client last read at `version`, incrementing its version.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND`, `TENANTRY_ERR_HTTP_PRECONDITION_FAILED`
 *   when it changed since, `TENANTRY_ERR_DB_CONFLICT`, `TENANTRY_ERR_HTTP_VALIDATION`.
 * @example
 * ```ts
 * const template = await updateTemplate(db, id, expectedVersion(request, id), { body: 'Hi {{1}}' });
 * ```
 */
export async function updateTemplate(
  db: Kysely<AppDatabase>,
  id: string,
  version: number,
  changes: Partial<repository.TemplateFields>,
): Promise<Template> {
  if (changes.body !== undefined) checkPlaceholders(changes.body);
  const row = await uniqueNameAndLanguage(() =>
    repository.updateTemplate(db, id, version, changes),
  );
  if (row === undefined) {
    if ((await repository.findTemplate(db, id)) === undefined) throw templateNotFound();
    throw new TenantryError(
      'TENANTRY_ERR_HTTP_PRECONDITION_FAILED',
      'The template changed since you read it; read it again.',
    );
  }
  return toTemplate(row);
}

/**
 * Deletes a template.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND`, also for another workspace's template.
 * @example
 * ```ts
 * await deleteTemplate(db, id);
 * ```
 */
export async function deleteTemplate(db: Kysely<AppDatabase>, id: string): Promise<void> {
  if (!(await repository.deleteTemplate(db, id))) throw templateNotFound();
}
