import type { Kysely } from 'kysely';
import { isTenantryError, TenantryError } from 'tenantry';
import type { AppDatabase } from '../database.ts';
import { AppError } from '../errors.ts';
import { decodeCursor, toPage } from '../http/pagination.ts';
import { existingTagIds, findTag } from '../tags/tags.repository.ts';
import type { Tag } from '../tags/tags.service.ts';
import * as repository from './contacts.repository.ts';

/** A contact in API responses (camelCase, never the tenant id). */
export interface Contact {
  readonly id: string;
  readonly name: string;
  readonly phone: string | null;
  readonly email: string | null;
  readonly attributes: Record<string, string | number | boolean>;
  readonly tags: Tag[];
  readonly version: number;
  readonly createdAt: string;
  readonly updatedAt: string;
}

/** Custom attributes as a request sends them (values are checked by the service). */
export type AttributesInput = Readonly<Record<string, unknown>>;

/** The body of a contact creation. */
export interface NewContact {
  readonly name: string;
  readonly phone?: string | null | undefined;
  readonly email?: string | null | undefined;
  readonly attributes?: AttributesInput | undefined;
  readonly tagIds?: readonly string[] | undefined;
}

/** The body of a contact update. */
export interface ContactChanges {
  readonly name?: string | undefined;
  readonly phone?: string | null | undefined;
  readonly email?: string | null | undefined;
  readonly attributes?: AttributesInput | undefined;
}

/** Query parameters of a contact list. */
export interface ContactQuery {
  readonly limit: number;
  readonly cursor?: string | undefined;
  readonly sort?: repository.ContactSort | undefined;
  readonly tagId?: string | undefined;
  readonly phone?: string | undefined;
  readonly email?: string | undefined;
  /** `key:value` pairs. */
  readonly attribute?: readonly string[] | undefined;
}

const uniqueFields: Readonly<Record<string, string>> = {
  contacts_tenant_id_phone_key: 'phone',
  contacts_tenant_id_email_key: 'email',
};

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const timestampPattern = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;

function contactNotFound(): TenantryError {
  return new TenantryError('TENANTRY_ERR_HTTP_NOT_FOUND', 'Contact not found.');
}

function invalidCursor(): TenantryError {
  return new TenantryError('TENANTRY_ERR_HTTP_VALIDATION', 'The cursor is not valid.', {
    details: {
      errors: [{ pointer: '/querystring/cursor', message: 'is not a cursor from this API' }],
    },
  });
}

/** Runs a write and turns a unique violation into a conflict naming the field. */
async function uniquePhoneAndEmail<T>(write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (error) {
    if (!isTenantryError(error, 'TENANTRY_ERR_DB_CONFLICT')) throw error;
    const constraint = (error.cause as { constraint?: unknown } | undefined)?.constraint;
    const field = typeof constraint === 'string' ? uniqueFields[constraint] : undefined;
    if (field === undefined) throw error;
    throw new TenantryError(
      'TENANTRY_ERR_DB_CONFLICT',
      `Another contact in this workspace has this ${field}.`,
      {
        cause: error,
        details: {
          field,
          errors: [{ pointer: `/body/${field}`, message: 'is already used by another contact' }],
        },
      },
    );
  }
}

function scalarAttributes(
  attributes: AttributesInput,
): Readonly<Record<string, string | number | boolean>> {
  const errors = Object.entries(attributes).flatMap(([key, value]) =>
    (typeof value === 'string' && value.length <= 1000) ||
    (typeof value === 'number' && Number.isFinite(value)) ||
    typeof value === 'boolean'
      ? []
      : [
          {
            pointer: `/body/attributes/${key}`,
            message: 'must be a string of up to 1000 characters, a number or a boolean',
          },
        ],
  );
  if (errors.length > 0) {
    throw new TenantryError(
      'TENANTRY_ERR_HTTP_VALIDATION',
      errors.map((error) => `${error.pointer} ${error.message}`).join('; '),
      { details: { errors } },
    );
  }
  return attributes as Readonly<Record<string, string | number | boolean>>;
}

function toContact(row: repository.ContactRow, tags: Tag[]): Contact {
  return {
    id: row.id,
    name: row.name,
    phone: row.phone,
    email: row.email,
    // Only scalar values are ever written (the request schemas check them).
    attributes: row.attributes as Record<string, string | number | boolean>,
    tags,
    version: row.version,
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
  };
}

async function withTags(db: Kysely<AppDatabase>, row: repository.ContactRow): Promise<Contact> {
  const tags = await repository.tagsOfContacts(db, [row.id]);
  return toContact(row, tags.get(row.id) ?? []);
}

/**
 * Creates a contact and links the given tags.
 *
 * @throws TenantryError `TENANTRY_ERR_DB_INVALID_REFERENCE` for a tag id that is not one of the
 *   workspace's tags, `TENANTRY_ERR_DB_CONFLICT` (with `field`) for a phone or email in use.
 * @example
 * ```ts
 * const contact = await createContact(db, { name: 'Ada', phone: '+5511999990000', tagIds: [vip] });
 * ```
 */
export async function createContact(db: Kysely<AppDatabase>, input: NewContact): Promise<Contact> {
  const attributes = scalarAttributes(input.attributes ?? {});
  const tagIds = [...new Set(input.tagIds ?? [])];
  const found = await existingTagIds(db, tagIds);
  const missing = (input.tagIds ?? []).flatMap((id, index) =>
    found.has(id)
      ? []
      : [{ pointer: `/body/tagIds/${index}`, message: 'is not a tag of this workspace' }],
  );
  if (missing.length > 0) {
    throw new TenantryError(
      'TENANTRY_ERR_DB_INVALID_REFERENCE',
      'Some tagIds do not name tags of this workspace.',
      { details: { errors: missing } },
    );
  }
  const row = await uniquePhoneAndEmail(() =>
    repository.insertContact(db, {
      name: input.name,
      phone: input.phone ?? null,
      email: input.email ?? null,
      attributes,
    }),
  );
  await repository.linkTags(db, row.id, tagIds);
  return withTags(db, row);
}

/**
 * Reads one contact with its tags.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND`, also for another workspace's contact.
 * @example
 * ```ts
 * const contact = await getContact(db, id);
 * ```
 */
export async function getContact(db: Kysely<AppDatabase>, id: string): Promise<Contact> {
  const row = await repository.findContactWithTags(db, id);
  if (row === undefined) throw contactNotFound();
  return toContact(row, row.tags);
}

function parseAttributeFilters(pairs: readonly string[]): [string, string][] {
  return pairs.map((pair) => {
    const separator = pair.indexOf(':');
    return [pair.slice(0, separator), pair.slice(separator + 1)];
  });
}

/**
 * Lists a page of contacts, filtered and sorted; the cursor remembers the sort it was made for.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_VALIDATION` for a cursor that is not ours or was made
 *   for another sort order.
 * @example
 * ```ts
 * const page = await listContacts(db, { limit: 25, sort: 'name', attribute: ['plan:gold'] });
 * ```
 */
export async function listContacts(
  db: Kysely<AppDatabase>,
  query: ContactQuery,
): Promise<{ items: Contact[]; nextCursor: string | null }> {
  const sort = query.sort ?? 'created_at';
  let after: { key: string; id: string } | undefined;
  if (query.cursor !== undefined) {
    const [cursorSort, key, id] = decodeCursor(query.cursor, 3);
    const keyValid =
      typeof key === 'string' &&
      (!sort.endsWith('created_at') ||
        (timestampPattern.test(key) && !Number.isNaN(Date.parse(key))));
    if (cursorSort !== sort || !keyValid || typeof id !== 'string' || !uuidPattern.test(id)) {
      throw invalidCursor();
    }
    after = { key: key as string, id };
  }
  const rows = await repository.listContacts(db, {
    limit: query.limit + 1,
    sort,
    after,
    tagId: query.tagId,
    phone: query.phone,
    email: query.email,
    attributes: parseAttributeFilters(query.attribute ?? []),
  });
  const page = toPage(rows, query.limit, (row) => [sort, row.sort_key, row.id]);
  const tags = await repository.tagsOfContacts(
    db,
    page.items.map((row) => row.id),
  );
  return {
    items: page.items.map((row) => toContact(row, tags.get(row.id) ?? [])),
    nextCursor: page.nextCursor,
  };
}

/**
 * Updates a contact the client last read at `version`, incrementing its version.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND`, `TENANTRY_ERR_HTTP_PRECONDITION_FAILED`
 *   when the contact changed since, `TENANTRY_ERR_DB_CONFLICT` for a phone or email in use.
 * @example
 * ```ts
 * const contact = await updateContact(db, id, expectedVersion(request, id), { name: 'Ada L.' });
 * ```
 */
export async function updateContact(
  db: Kysely<AppDatabase>,
  id: string,
  version: number,
  changes: ContactChanges,
): Promise<Contact> {
  const { attributes, ...fields } = changes;
  const update: Partial<repository.ContactFields> =
    attributes === undefined ? fields : { ...fields, attributes: scalarAttributes(attributes) };
  const row = await uniquePhoneAndEmail(() => repository.updateContact(db, id, version, update));
  if (row === undefined) {
    if ((await repository.findContact(db, id)) === undefined) throw contactNotFound();
    throw new TenantryError(
      'TENANTRY_ERR_HTTP_PRECONDITION_FAILED',
      'The contact changed since you read it; read it again.',
    );
  }
  return withTags(db, row);
}

/**
 * Deletes a contact and its tag links.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND`; AppError
 *   `APP_ERR_CONTACT_HAS_CONVERSATIONS` while conversations refer to it.
 * @example
 * ```ts
 * await deleteContact(db, id);
 * ```
 */
export async function deleteContact(db: Kysely<AppDatabase>, id: string): Promise<void> {
  let deleted: boolean;
  try {
    deleted = await repository.deleteContact(db, id);
  } catch (error) {
    // Tag links cascade; the only reference that can block the delete is a conversation's
    // RESTRICT foreign key (SQLSTATE 23001, or 23503 were it NO ACTION).
    const sqlState = isTenantryError(error) ? error.details?.sqlState : undefined;
    if (sqlState !== '23001' && sqlState !== '23503') throw error;
    throw new AppError(
      'APP_ERR_CONTACT_HAS_CONVERSATIONS',
      'This contact has conversations; delete them before deleting the contact.',
      { cause: error },
    );
  }
  if (!deleted) throw contactNotFound();
}

async function requireContactAndTag(
  db: Kysely<AppDatabase>,
  contactId: string,
  tagId: string,
): Promise<void> {
  if ((await repository.findContact(db, contactId)) === undefined) throw contactNotFound();
  if ((await findTag(db, tagId)) === undefined) {
    throw new TenantryError('TENANTRY_ERR_HTTP_NOT_FOUND', 'Tag not found.');
  }
}

/**
 * Tags a contact (a no-op when it already has the tag).
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND` for a contact or tag that is not the
 *   workspace's.
 * @example
 * ```ts
 * await tagContact(db, contactId, tagId);
 * ```
 */
export async function tagContact(
  db: Kysely<AppDatabase>,
  contactId: string,
  tagId: string,
): Promise<void> {
  await requireContactAndTag(db, contactId, tagId);
  await repository.linkTags(db, contactId, [tagId]);
}

/**
 * Removes a tag from a contact (a no-op when it does not have it).
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND` for a contact or tag that is not the
 *   workspace's.
 * @example
 * ```ts
 * await untagContact(db, contactId, tagId);
 * ```
 */
export async function untagContact(
  db: Kysely<AppDatabase>,
  contactId: string,
  tagId: string,
): Promise<void> {
  await requireContactAndTag(db, contactId, tagId);
  await repository.unlinkTag(db, contactId, tagId);
}
