import { requireTenant } from 'tenantry/fastify';
import { Type } from 'typebox';
import { ConversationParams, ProblemSchema } from '../conversations/conversations.schemas.ts';
import { idempotent } from '../http/idempotency.ts';
import { Page, PageQuery } from '../http/pagination.ts';
import type { AppInstance, AppServices } from '../http/types.ts';
import { listMessages, maxAttachments, maxMessageLength, sendMessage } from './messages.service.ts';

const MessageSchema = Type.Object({
  id: Type.String({ format: 'uuid' }),
  conversationId: Type.String({ format: 'uuid' }),
  direction: Type.Union([Type.Literal('inbound'), Type.Literal('outbound')]),
  body: Type.String(),
  status: Type.Union([
    Type.Literal('received'),
    Type.Literal('queued'),
    Type.Literal('sent'),
    Type.Literal('delivered'),
    Type.Literal('read'),
    Type.Literal('failed'),
  ]),
  senderId: Type.Union([Type.String({ format: 'uuid' }), Type.Null()]),
  providerMessageId: Type.Union([Type.String(), Type.Null()]),
  createdAt: Type.String({ format: 'date-time' }),
  attachments: Type.Array(
    Type.Object({
      fileId: Type.String({ format: 'uuid' }),
      fileName: Type.String(),
      contentType: Type.String(),
      sizeBytes: Type.Integer(),
    }),
    { description: 'Download one with GET /files/{fileId}/download' },
  ),
});

const SendMessageBody = Type.Object(
  {
    body: Type.Optional(Type.String({ minLength: 1, maxLength: maxMessageLength })),
    templateId: Type.Optional(
      Type.String({ format: 'uuid', description: 'Send a message template instead of `body`' }),
    ),
    variables: Type.Optional(
      Type.Array(Type.String({ minLength: 1, maxLength: 1024 }), {
        maxItems: 20,
        description: 'Values of the template placeholders {{1}}..{{n}}, in order',
      }),
    ),
    attachmentIds: Type.Optional(
      Type.Array(Type.String({ format: 'uuid' }), {
        maxItems: maxAttachments,
        description: 'Uploaded files of the workspace to attach (POST /files, then confirm)',
      }),
    ),
  },
  { additionalProperties: false },
);

const ListMessagesQuery = Type.Object(
  {
    ...PageQuery.properties,
    order: Type.Optional(
      Type.Union([Type.Literal('desc'), Type.Literal('asc')], {
        description: 'By creation time; newest first by default',
      }),
    ),
  },
  { additionalProperties: false },
);

const errors = {
  400: ProblemSchema,
  401: ProblemSchema,
  403: ProblemSchema,
  404: ProblemSchema,
};

/**
 * Messages of a conversation (`/conversations/:id/messages`): send an outbound message (queued
 * for the channel provider) and page through the history. Registered by the conversations routes.
 *
 * @example
 * ```ts
 * await app.register(messagesRoutes, services); // inside conversationsRoutes
 * ```
 */
export async function messagesRoutes(app: AppInstance, _options: AppServices): Promise<void> {
  app.post(
    '/conversations/:id/messages',
    {
      config: { scope: 'conversations:write' },
      schema: {
        tags: ['messages'],
        summary: 'Send a message in a conversation',
        description:
          'Send `body`, or `templateId` with `variables`. The message is queued for the channel provider. Send `Idempotency-Key` to make retries safe.',
        params: ConversationParams,
        body: SendMessageBody,
        response: { 201: MessageSchema, ...errors, 422: ProblemSchema },
      },
    },
    async (request, reply) => {
      const tenant = requireTenant(request);
      const conversationId = request.params.id.toLowerCase();
      return idempotent(request, reply, tenant.db, 201, () =>
        sendMessage(tenant.db, conversationId, request.body, tenant.userId),
      );
    },
  );

  app.get(
    '/conversations/:id/messages',
    {
      config: { scope: 'conversations:read' },
      schema: {
        tags: ['messages'],
        summary: "List a conversation's messages, newest first",
        params: ConversationParams,
        querystring: ListMessagesQuery,
        response: { 200: Page(MessageSchema), ...errors },
      },
    },
    async (request) =>
      listMessages(requireTenant(request).db, request.params.id.toLowerCase(), {
        limit: request.query.limit ?? 25,
        cursor: request.query.cursor,
        order: request.query.order,
      }),
  );
}
