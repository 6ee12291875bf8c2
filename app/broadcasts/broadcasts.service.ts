import type { Kysely } from 'kysely';
import { TenantryError } from 'tenantry';
import { enqueueJob, type JobDefinition } from 'tenantry/jobs';
import type {
  AppDatabase,
  BroadcastStatus,
  BroadcastVariable,
  RecipientStatus,
} from '../database.ts';
import { AppError } from '../errors.ts';
import { decodeCursor, toPage } from '../http/pagination.ts';
import { renderTemplate } from '../messages/messages.service.ts';
import { existingTagIds } from '../tags/tags.repository.ts';
import { findTemplate } from '../templates/templates.repository.ts';
import type { BroadcastDispatchPayload } from './broadcast.jobs.ts';
import * as repository from './broadcasts.repository.ts';

/** A broadcast as the API returns it. */
export interface Broadcast {
  readonly id: string;
  readonly name: string;
  readonly templateId: string;
  readonly body: string;
  readonly variables: BroadcastVariable[];
  readonly tagIds: string[];
  readonly status: BroadcastStatus;
  readonly createdBy: string | null;
  readonly counts: {
    readonly total: number;
    readonly pending: number;
    readonly sent: number;
    readonly failed: number;
  };
  readonly createdAt: string;
  readonly startedAt: string | null;
  readonly completedAt: string | null;
}

/** One recipient of a broadcast as the API returns it. */
export interface Recipient {
  readonly contactId: string;
  readonly contactName: string;
  readonly status: RecipientStatus;
  readonly attempts: number;
  readonly providerMessageId: string | null;
  readonly lastError: string | null;
  readonly sentAt: string | null;
}

/** What `POST /broadcasts` accepts. */
export interface NewBroadcast {
  readonly name: string;
  readonly templateId: string;
  /** Contacts with any of these tags receive it. */
  readonly tagIds: readonly string[];
  readonly variables?: readonly BroadcastVariable[] | undefined;
}

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function broadcastNotFound(): TenantryError {
  return new TenantryError('TENANTRY_ERR_HTTP_NOT_FOUND', 'Broadcast not found.');
}

function invalidCursor(): TenantryError {
  return new TenantryError('TENANTRY_ERR_HTTP_VALIDATION', 'The cursor is not valid.', {
    details: {
      errors: [{ pointer: '/querystring/cursor', message: 'is not a cursor of this listing' }],
    },
  });
}

function toBroadcast(row: repository.BroadcastRow): Broadcast {
  return {
    id: row.id,
    name: row.name,
    templateId: row.template_id,
    body: row.body,
    variables: row.variables,
    tagIds: row.tag_ids,
    status: row.status,
    createdBy: row.created_by,
    counts: {
      total: row.recipient_count,
      pending: Math.max(0, row.recipient_count - row.sent_count - row.failed_count),
      sent: row.sent_count,
      failed: row.failed_count,
    },
    createdAt: row.created_at.toISOString(),
    startedAt: row.started_at?.toISOString() ?? null,
    completedAt: row.completed_at?.toISOString() ?? null,
  };
}

function toRecipient(row: repository.RecipientRow): Recipient {
  return {
    contactId: row.contact_id,
    contactName: row.contact_name,
    status: row.status,
    attempts: row.attempts,
    providerMessageId: row.provider_message_id,
    lastError: row.last_error,
    sentAt: row.sent_at?.toISOString() ?? null,
  };
}

/**
 * Creates a broadcast in the request's transaction: checks the template and tags, stores the
 * broadcast with the template's body, makes every contact with any of the tags a pending
 * recipient, and enqueues `dispatch` for it. The job exists only if the transaction commits.
 *
 * @throws TenantryError `TENANTRY_ERR_DB_INVALID_REFERENCE` for a template or tag that is not
 *   the workspace's; AppError `APP_ERR_TEMPLATE_VARIABLES_INVALID` when the variables do not fit
 *   the template, `APP_ERR_BROADCAST_NO_RECIPIENTS` when no contact has any of the tags.
 * @example
 * ```ts
 * const broadcast = await createBroadcast(db, { name: 'Spring sale', templateId, tagIds: [vip] }, userId, jobs.broadcasts.dispatch);
 * ```
 */
export async function createBroadcast(
  db: Kysely<AppDatabase>,
  input: NewBroadcast,
  createdBy: string | undefined,
  dispatchJob: JobDefinition<BroadcastDispatchPayload, AppDatabase>,
): Promise<Broadcast> {
  const template = await findTemplate(db, input.templateId);
  const tagIds = [...new Set(input.tagIds.map((id) => id.toLowerCase()))];
  const found = await existingTagIds(db, tagIds);
  const errors = [
    ...(template === undefined
      ? [{ pointer: '/body/templateId', message: 'is not a template of this workspace' }]
      : []),
    ...input.tagIds.flatMap((id, index) =>
      found.has(id.toLowerCase())
        ? []
        : [{ pointer: `/body/tagIds/${index}`, message: 'is not a tag of this workspace' }],
    ),
  ];
  if (template === undefined || errors.length > 0) {
    throw new TenantryError(
      'TENANTRY_ERR_DB_INVALID_REFERENCE',
      'The template or some tags are not of this workspace.',
      { details: { errors } },
    );
  }
  const variables = input.variables ?? [];
  // Checks the number of variables against the placeholders; contact fields are filled per
  // recipient when the message is sent.
  renderTemplate(
    template.body,
    variables.map((variable) => (typeof variable === 'string' ? variable : '')),
  );
  const row = await repository.insertBroadcast(db, {
    name: input.name,
    templateId: template.id,
    body: template.body,
    variables,
    tagIds,
    createdBy: createdBy ?? null,
  });
  const count = await repository.snapshotRecipients(db, row.id, tagIds);
  if (count === 0) {
    throw new AppError(
      'APP_ERR_BROADCAST_NO_RECIPIENTS',
      'No contact of this workspace has any of these tags; tag some contacts first.',
    );
  }
  await enqueueJob(db, dispatchJob, { broadcastId: row.id }, { key: `broadcast:${row.id}` });
  return toBroadcast({ ...row, recipient_count: count });
}

/**
 * Reads one broadcast with its counts by recipient status.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND`, also for another workspace's broadcast.
 * @example
 * ```ts
 * const broadcast = await getBroadcast(db, id);
 * ```
 */
export async function getBroadcast(db: Kysely<AppDatabase>, id: string): Promise<Broadcast> {
  const row = await repository.findBroadcast(db, id);
  if (row === undefined) throw broadcastNotFound();
  return toBroadcast(row);
}

/**
 * Lists a page of broadcasts, newest first.
 *
 * @example
 * ```ts
 * const page = await listBroadcasts(db, { limit: 25 });
 * ```
 */
export async function listBroadcasts(
  db: Kysely<AppDatabase>,
  query: { readonly limit: number; readonly cursor?: string | undefined },
): Promise<{ items: Broadcast[]; nextCursor: string | null }> {
  let after: { createdAt: string; id: string } | undefined;
  if (query.cursor !== undefined) {
    const [createdAt, id] = decodeCursor(query.cursor, 2);
    if (
      typeof createdAt !== 'string' ||
      Number.isNaN(Date.parse(createdAt)) ||
      typeof id !== 'string' ||
      !uuidPattern.test(id)
    ) {
      throw invalidCursor();
    }
    after = { createdAt, id };
  }
  const rows = await repository.listBroadcasts(db, { limit: query.limit + 1, after });
  const page = toPage(rows, query.limit, (row) => [row.created_at_key, row.id]);
  return { items: page.items.map(toBroadcast), nextCursor: page.nextCursor };
}

/**
 * Lists a page of a broadcast's recipients in contact id order, optionally only those in one
 * status.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND` for a broadcast that is not visible.
 * @example
 * ```ts
 * const page = await listRecipients(db, broadcastId, { limit: 50, status: 'failed' });
 * ```
 */
export async function listRecipients(
  db: Kysely<AppDatabase>,
  broadcastId: string,
  query: {
    readonly limit: number;
    readonly cursor?: string | undefined;
    readonly status?: RecipientStatus | undefined;
  },
): Promise<{ items: Recipient[]; nextCursor: string | null }> {
  if ((await repository.findBroadcast(db, broadcastId)) === undefined) throw broadcastNotFound();
  let afterContactId: string | undefined;
  if (query.cursor !== undefined) {
    const [status, id] = decodeCursor(query.cursor, 2);
    if (status !== (query.status ?? '') || typeof id !== 'string' || !uuidPattern.test(id)) {
      throw invalidCursor();
    }
    afterContactId = id;
  }
  const rows = await repository.listRecipients(db, broadcastId, {
    limit: query.limit + 1,
    status: query.status,
    afterContactId,
  });
  const page = toPage(rows, query.limit, (row) => [query.status ?? '', row.contact_id]);
  return { items: page.items.map(toRecipient), nextCursor: page.nextCursor };
}
