import type { Kysely } from 'kysely';
import { TenantryError } from 'tenantry';
import { findConversation, touchConversation } from '../conversations/conversations.repository.ts';
import type { AppDatabase } from '../database.ts';
import { AppError } from '../errors.ts';
import { decodeCursor, toPage } from '../http/pagination.ts';
import {
  type AttachmentRow,
  findTemplateBody,
  findUploadedFileIds,
  insertAttachments,
  insertMessage,
  listAttachments,
  listMessageRows,
  type MessageRow,
} from './messages.repository.ts';

/** The longest message body, in characters. */
export const maxMessageLength = 4096;

/** The most files one message carries. */
export const maxAttachments = 10;

/** A file attached to a message; download it with `GET /files/:id/download`. */
export interface MessageAttachment {
  fileId: string;
  fileName: string;
  contentType: string;
  sizeBytes: number;
}

/** A message as the API returns it. */
export interface Message {
  id: string;
  conversationId: string;
  direction: 'inbound' | 'outbound';
  body: string;
  status: MessageRow['status'];
  senderId: string | null;
  providerMessageId: string | null;
  createdAt: string;
  attachments: MessageAttachment[];
}

/** What `POST /conversations/:id/messages` accepts: a body, or a template and its variables. */
export interface NewMessage {
  body?: string | undefined;
  templateId?: string | undefined;
  variables?: readonly string[] | undefined;
  /** Uploaded files of the workspace to attach. */
  attachmentIds?: readonly string[] | undefined;
}

function toMessage(row: MessageRow, attachments: readonly AttachmentRow[] = []): Message {
  return {
    id: row.id,
    conversationId: row.conversation_id,
    direction: row.direction,
    body: row.body,
    status: row.status,
    senderId: row.sender_id,
    providerMessageId: row.provider_message_id,
    createdAt: row.created_at.toISOString(),
    attachments: attachments
      .filter((attachment) => attachment.message_id === row.id)
      .map((attachment) => ({
        fileId: attachment.file_id,
        fileName: attachment.file_name,
        contentType: attachment.content_type,
        sizeBytes: Number(attachment.size_bytes),
      })),
  };
}

async function requireUploadedFiles(
  db: Kysely<AppDatabase>,
  fileIds: readonly string[],
): Promise<string[]> {
  const ids = fileIds.map((id) => id.toLowerCase());
  if (new Set(ids).size !== ids.length) {
    throw validation('/body/attachmentIds', 'lists a file twice');
  }
  if (ids.length === 0) return ids;
  const usable = await findUploadedFileIds(db, ids);
  const errors = ids.flatMap((id, index) =>
    usable.has(id)
      ? []
      : [{ pointer: `/body/attachmentIds/${index}`, message: 'names no uploaded file' }],
  );
  if (errors.length > 0) {
    throw new TenantryError('TENANTRY_ERR_DB_INVALID_REFERENCE', 'Attachment not found.', {
      details: { errors },
    });
  }
  return ids;
}

function validation(pointer: string, message: string): TenantryError {
  return new TenantryError('TENANTRY_ERR_HTTP_VALIDATION', `${pointer} ${message}`, {
    details: { errors: [{ pointer, message }] },
  });
}

async function requireConversation(db: Kysely<AppDatabase>, conversationId: string) {
  if ((await findConversation(db, conversationId)) === undefined) {
    throw new TenantryError('TENANTRY_ERR_HTTP_NOT_FOUND', 'Conversation not found.');
  }
}

/**
 * Fills a template's `{{1}}`..`{{n}}` placeholders with `variables` (one per placeholder number,
 * in order), as WhatsApp message templates do.
 *
 * @throws AppError `APP_ERR_TEMPLATE_VARIABLES_INVALID` when the count does not match the highest
 *   placeholder number, or the result is longer than {@link maxMessageLength}.
 * @example
 * ```ts
 * renderTemplate('Hi {{1}}, order {{2}} shipped', ['Ana', '42']); // 'Hi Ana, order 42 shipped'
 * ```
 */
export function renderTemplate(template: string, variables: readonly string[]): string {
  const placeholder = /\{\{\s*(\d{1,3})\s*\}\}/g;
  let highest = 0;
  for (const match of template.matchAll(placeholder)) {
    highest = Math.max(highest, Number(match[1]));
  }
  if (variables.length !== highest) {
    throw new AppError(
      'APP_ERR_TEMPLATE_VARIABLES_INVALID',
      `The template takes ${highest} variable(s); ${variables.length} were sent.`,
    );
  }
  const rendered = template.replace(
    placeholder,
    (_match, index: string) => variables[Number(index) - 1] ?? '',
  );
  if (rendered.length > maxMessageLength) {
    throw new AppError(
      'APP_ERR_TEMPLATE_VARIABLES_INVALID',
      `The rendered message is longer than ${maxMessageLength} characters.`,
    );
  }
  return rendered;
}

/**
 * Queues an outbound message in a conversation of the current tenant, from `senderId`, and moves
 * the conversation up the inbox.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND` (conversation, the same for another
 *   tenant's), `TENANTRY_ERR_HTTP_VALIDATION` (neither or both of body and templateId),
 *   `TENANTRY_ERR_DB_INVALID_REFERENCE` (template, or an attachment that is not an uploaded file
 *   of the workspace).
 * @example
 * ```ts
 * const message = await sendMessage(db, conversationId, { body: 'On its way!' }, userId);
 * ```
 */
export async function sendMessage(
  db: Kysely<AppDatabase>,
  conversationId: string,
  input: NewMessage,
  senderId: string | undefined,
): Promise<Message> {
  await requireConversation(db, conversationId);
  let body: string;
  if (input.templateId === undefined) {
    if (input.body === undefined) throw validation('/body', 'needs body or templateId');
    if (input.variables !== undefined) {
      throw validation('/body/variables', 'is only allowed with templateId');
    }
    body = input.body;
  } else {
    if (input.body !== undefined) {
      throw validation('/body/body', 'cannot be combined with templateId');
    }
    const template = await findTemplateBody(db, input.templateId);
    if (template === undefined) {
      throw new TenantryError('TENANTRY_ERR_DB_INVALID_REFERENCE', 'Template not found.', {
        details: { errors: [{ pointer: '/body/templateId', message: 'names no template' }] },
      });
    }
    body = renderTemplate(template, input.variables ?? []);
  }
  const attachmentIds = await requireUploadedFiles(db, input.attachmentIds ?? []);
  const row = await insertMessage(db, {
    conversationId,
    direction: 'outbound',
    body,
    status: 'queued',
    senderId: senderId ?? null,
  });
  if (row === undefined) {
    throw new TenantryError('TENANTRY_ERR_DB_QUERY_FAILED', 'The message was not stored.');
  }
  await insertAttachments(db, row, attachmentIds);
  await touchConversation(db, conversationId, row.created_at);
  return toMessage(row, attachmentIds.length === 0 ? [] : await listAttachments(db, [row.id]));
}

/**
 * Lists a conversation's messages by creation time (newest first unless `order` is `asc`), one
 * cursor page at a time. A cursor continues in the order it was made with.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND` for a conversation not visible.
 * @example
 * ```ts
 * const page = await listMessages(db, conversationId, { limit: 50 });
 * ```
 */
export async function listMessages(
  db: Kysely<AppDatabase>,
  conversationId: string,
  query: { limit: number; cursor?: string | undefined; order?: 'asc' | 'desc' | undefined },
): Promise<{ items: Message[]; nextCursor: string | null }> {
  await requireConversation(db, conversationId);
  const order = query.order ?? 'desc';
  let after: { createdAt: string; id: string } | undefined;
  if (query.cursor !== undefined) {
    const [cursorOrder, createdAt, id] = decodeCursor(query.cursor, 3);
    if (
      cursorOrder !== order ||
      typeof createdAt !== 'string' ||
      Number.isNaN(Date.parse(createdAt)) ||
      typeof id !== 'string' ||
      !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(id)
    ) {
      throw validation('/querystring/cursor', 'is not a cursor of this listing and order');
    }
    after = { createdAt, id };
  }
  const rows = await listMessageRows(db, conversationId, { order, after }, query.limit + 1);
  const page = toPage(rows, query.limit, (row) => [order, row.created_at_key, row.id]);
  const attachments = await listAttachments(
    db,
    page.items.map((item) => item.id),
  );
  return {
    items: page.items.map((item) => toMessage(item, attachments)),
    nextCursor: page.nextCursor,
  };
}
