import type { Kysely } from 'kysely';
import { TenantryError } from 'tenantry';
import type { AppDatabase } from '../database.ts';
import { AppError } from '../errors.ts';
import { decodeCursor, toPage } from '../http/pagination.ts';
import {
  type ConversationFilter,
  type ConversationRow,
  contactExists,
  findConversation,
  insertConversation,
  isWorkspaceMember,
  listConversationRows,
  updateConversationRow,
} from './conversations.repository.ts';

/** A conversation as the API returns it. */
export interface Conversation {
  id: string;
  contactId: string;
  contactName: string;
  subject: string | null;
  status: 'open' | 'closed';
  assigneeId: string | null;
  version: number;
  createdAt: string;
  updatedAt: string;
  lastMessageAt: string | null;
}

/** What `GET /conversations` accepts, already resolved (`assignee=me` is a user id here). */
export interface ConversationQuery {
  status?: 'open' | 'closed' | undefined;
  assigneeId?: string | null | undefined;
  contactId?: string | undefined;
  q?: string | undefined;
  limit: number;
  cursor?: string | undefined;
}

/**
 * Finds the ids of conversations matching free text, newest-updated first, `limit` after the
 * keyset position: the integration point for `searchConversations` of
 * app/search/search.repository.ts, which `conversationsRoutes` passes to
 * {@link listConversations} to serve `GET /conversations?q=`.
 */
export type ConversationSearch = (
  db: Kysely<AppDatabase>,
  params: {
    query: string;
    status?: 'open' | 'closed';
    assigneeId?: string;
    limit: number;
    after?: { updatedAt: string; id: string };
  },
) => Promise<readonly { id: string }[]>;

function toConversation(row: ConversationRow): Conversation {
  return {
    id: row.id,
    contactId: row.contact_id,
    contactName: row.contact_name,
    subject: row.subject,
    status: row.status,
    assigneeId: row.assignee_id,
    version: row.version,
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
    lastMessageAt: row.last_message_at?.toISOString() ?? null,
  };
}

function notFound(): TenantryError {
  return new TenantryError('TENANTRY_ERR_HTTP_NOT_FOUND', 'Conversation not found.');
}

async function checkAssignee(db: Kysely<AppDatabase>, assigneeId: string | null | undefined) {
  if (assigneeId === null || assigneeId === undefined) return;
  if (!(await isWorkspaceMember(db, assigneeId))) {
    throw new AppError(
      'APP_ERR_ASSIGNEE_NOT_A_MEMBER',
      'assigneeId must be the user id of a member of this workspace.',
    );
  }
}

/**
 * Reads a conversation of the current tenant.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND`, the same for a missing id and for another
 *   tenant's.
 * @example
 * ```ts
 * const conversation = await getConversation(db, id);
 * ```
 */
export async function getConversation(db: Kysely<AppDatabase>, id: string): Promise<Conversation> {
  const row = await findConversation(db, id);
  if (row === undefined) throw notFound();
  return toConversation(row);
}

/**
 * Opens a conversation with one of the tenant's contacts, optionally assigned to a member.
 *
 * @throws TenantryError `TENANTRY_ERR_DB_INVALID_REFERENCE` when the contact is not visible;
 *   AppError `APP_ERR_ASSIGNEE_NOT_A_MEMBER` when the assignee is not a member.
 * @example
 * ```ts
 * const conversation = await createConversation(db, { contactId, subject: 'Refund' });
 * ```
 */
export async function createConversation(
  db: Kysely<AppDatabase>,
  input: { contactId: string; subject?: string | undefined; assigneeId?: string | undefined },
): Promise<Conversation> {
  if (!(await contactExists(db, input.contactId))) {
    throw new TenantryError('TENANTRY_ERR_DB_INVALID_REFERENCE', 'Contact not found.', {
      details: { errors: [{ pointer: '/body/contactId', message: 'names no contact' }] },
    });
  }
  await checkAssignee(db, input.assigneeId);
  const id = await insertConversation(db, {
    contactId: input.contactId,
    subject: input.subject ?? null,
    assigneeId: input.assigneeId ?? null,
  });
  return getConversation(db, id);
}

/**
 * Changes status, subject or assignee of a conversation last read at `version`.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND`, or `TENANTRY_ERR_HTTP_PRECONDITION_FAILED`
 *   when someone changed it since; AppError `APP_ERR_ASSIGNEE_NOT_A_MEMBER`.
 * @example
 * ```ts
 * const closed = await updateConversation(db, id, 2, { status: 'closed' });
 * ```
 */
export async function updateConversation(
  db: Kysely<AppDatabase>,
  id: string,
  version: number,
  patch: {
    status?: 'open' | 'closed' | undefined;
    subject?: string | null | undefined;
    assigneeId?: string | null | undefined;
  },
): Promise<Conversation> {
  const current = await findConversation(db, id);
  if (current === undefined) throw notFound();
  await checkAssignee(db, patch.assigneeId);
  if (!(await updateConversationRow(db, id, version, patch))) {
    throw new TenantryError(
      'TENANTRY_ERR_HTTP_PRECONDITION_FAILED',
      'The conversation changed since you read it; read it again.',
    );
  }
  return getConversation(db, id);
}

/**
 * Lists conversations, newest-updated first, one cursor page at a time. With `q`, `search`
 * finds the matches and this reads them in full (without `search`, `q` is refused).
 *
 * @example
 * ```ts
 * const page = await listConversations(db, { assigneeId: userId, limit: 25 }, searchConversations);
 * ```
 */
export async function listConversations(
  db: Kysely<AppDatabase>,
  query: ConversationQuery,
  search?: ConversationSearch,
): Promise<{ items: Conversation[]; nextCursor: string | null }> {
  let after: ConversationFilter['after'];
  if (query.cursor !== undefined) {
    const [updatedAt, id] = decodeCursor(query.cursor, 2);
    if (
      typeof updatedAt !== 'string' ||
      Number.isNaN(Date.parse(updatedAt)) ||
      typeof id !== 'string' ||
      !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(id)
    ) {
      throw new TenantryError('TENANTRY_ERR_HTTP_VALIDATION', 'The cursor is not valid.', {
        details: {
          errors: [{ pointer: '/querystring/cursor', message: 'is not a cursor from this API' }],
        },
      });
    }
    after = { updatedAt, id };
  }
  let rows: ConversationRow[];
  if (query.q === undefined) {
    rows = await listConversationRows(
      db,
      {
        status: query.status,
        assigneeId: query.assigneeId,
        contactId: query.contactId,
        after,
      },
      query.limit + 1,
    );
  } else if (search === undefined) {
    throw new TenantryError('TENANTRY_ERR_HTTP_VALIDATION', 'Free-text search is not available.', {
      details: { errors: [{ pointer: '/querystring/q', message: 'is not supported' }] },
    });
  } else {
    const hits = await search(db, {
      query: query.q,
      limit: query.limit + 1,
      ...(query.status === undefined ? {} : { status: query.status }),
      ...(typeof query.assigneeId === 'string' ? { assigneeId: query.assigneeId } : {}),
      ...(after === undefined ? {} : { after }),
    });
    const byId = new Map(
      (
        await listConversationRows(
          db,
          { ids: hits.map((hit) => hit.id) },
          hits.length === 0 ? 1 : hits.length,
        )
      ).map((row) => [row.id, row]),
    );
    rows = hits.flatMap((hit) => {
      const row = byId.get(hit.id);
      return row === undefined ? [] : [row];
    });
  }
  const page = toPage(rows, query.limit, (row) => [row.updated_at_key, row.id]);
  return { items: page.items.map(toConversation), nextCursor: page.nextCursor };
}
