import { TenantryError } from 'tenantry';
import { requireTenant } from 'tenantry/fastify';
import { Type } from 'typebox';
import { expectedVersion, withEtag } from '../http/etag.ts';
import { idempotent } from '../http/idempotency.ts';
import { Page, PageQuery } from '../http/pagination.ts';
import type { AppInstance, AppServices } from '../http/types.ts';
import { messagesRoutes } from '../messages/messages.routes.ts';
import { searchConversations } from '../search/search.repository.ts';
import { ConversationParams, ConversationSchema, ProblemSchema } from './conversations.schemas.ts';
import {
  createConversation,
  getConversation,
  listConversations,
  updateConversation,
} from './conversations.service.ts';

const uuidPattern = '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$';

const CreateConversationBody = Type.Object(
  {
    contactId: Type.String({ format: 'uuid' }),
    subject: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
    assigneeId: Type.Optional(
      Type.String({ format: 'uuid', description: 'A member of this workspace' }),
    ),
  },
  { additionalProperties: false },
);

const UpdateConversationBody = Type.Object(
  {
    status: Type.Optional(Type.Union([Type.Literal('open'), Type.Literal('closed')])),
    subject: Type.Optional(
      Type.Union([Type.String({ minLength: 1, maxLength: 200 }), Type.Null()]),
    ),
    assigneeId: Type.Optional(
      Type.Union([Type.String({ format: 'uuid' }), Type.Null()], {
        description: 'A member of this workspace, or null to unassign',
      }),
    ),
  },
  { additionalProperties: false, minProperties: 1 },
);

const ListConversationsQuery = Type.Object(
  {
    ...PageQuery.properties,
    status: Type.Optional(Type.Union([Type.Literal('open'), Type.Literal('closed')])),
    assignee: Type.Optional(
      Type.String({
        pattern: `^(me|none)$|${uuidPattern}`,
        description: '`me` (the signed-in user), `none` (unassigned) or a user id',
      }),
    ),
    contactId: Type.Optional(Type.String({ format: 'uuid' })),
    q: Type.Optional(
      Type.String({ minLength: 1, maxLength: 200, description: 'Free-text search' }),
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

function queryError(pointer: string, message: string): TenantryError {
  return new TenantryError('TENANTRY_ERR_HTTP_VALIDATION', `${pointer} ${message}`, {
    details: { errors: [{ pointer, message }] },
  });
}

/**
 * Conversations (`/conversations`) and their messages (`/conversations/:id/messages`): open,
 * list, read, assign and close conversations, each one with a contact of the workspace.
 *
 * @example
 * ```ts
 * await app.register(conversationsRoutes, { ...services, prefix: '/v1' });
 * ```
 */
export async function conversationsRoutes(app: AppInstance, options: AppServices): Promise<void> {
  app.post(
    '/conversations',
    {
      config: { scope: 'conversations:write' },
      schema: {
        tags: ['conversations'],
        summary: 'Open a conversation with a contact',
        description:
          'Send `Idempotency-Key` to make retries safe. The contact must be one of this workspace; the assignee a member of it.',
        body: CreateConversationBody,
        response: { 201: ConversationSchema, ...errors, 422: ProblemSchema },
      },
    },
    async (request, reply) => {
      const db = requireTenant(request).db;
      const conversation = await idempotent(request, reply, db, 201, () =>
        createConversation(db, request.body),
      );
      return withEtag(reply, conversation);
    },
  );

  app.get(
    '/conversations',
    {
      config: { scope: 'conversations:read' },
      schema: {
        tags: ['conversations'],
        summary: 'List conversations, most recently updated first',
        description:
          '`assignee=me` lists the conversations assigned to the signed-in user. `q` matches word prefixes of the subject and of the contact name, email and phone (digits anywhere in the number); it cannot be combined with `contactId` or `assignee=none`.',
        querystring: ListConversationsQuery,
        response: { 200: Page(ConversationSchema), ...errors },
      },
    },
    async (request) => {
      const tenant = requireTenant(request);
      const { assignee, q, contactId, status, limit, cursor } = request.query;
      let assigneeId: string | null | undefined;
      if (assignee === 'me') {
        if (tenant.userId === undefined) {
          throw queryError('/querystring/assignee', 'needs a credential that names a user');
        }
        assigneeId = tenant.userId;
      } else if (assignee === 'none') {
        assigneeId = null;
      } else {
        assigneeId = assignee?.toLowerCase();
      }
      if (q !== undefined && (contactId !== undefined || assigneeId === null)) {
        throw queryError('/querystring/q', 'cannot be combined with contactId or assignee=none');
      }
      return listConversations(
        tenant.db,
        { status, assigneeId, contactId, q, limit: limit ?? 25, cursor },
        searchConversations,
      );
    },
  );

  app.get(
    '/conversations/:id',
    {
      config: { scope: 'conversations:read' },
      schema: {
        tags: ['conversations'],
        summary: 'Read a conversation',
        description: 'The ETag header carries the version to send back in If-Match.',
        params: ConversationParams,
        response: { 200: ConversationSchema, ...errors },
      },
    },
    async (request, reply) =>
      withEtag(reply, await getConversation(requireTenant(request).db, request.params.id)),
  );

  app.patch(
    '/conversations/:id',
    {
      config: { scope: 'conversations:write' },
      schema: {
        tags: ['conversations'],
        summary: 'Change the status, subject or assignee of a conversation',
        description: 'Requires If-Match with the ETag of your last read (428 without, 412 stale).',
        params: ConversationParams,
        body: UpdateConversationBody,
        response: {
          200: ConversationSchema,
          ...errors,
          412: ProblemSchema,
          422: ProblemSchema,
          428: ProblemSchema,
        },
      },
    },
    async (request, reply) => {
      const db = requireTenant(request).db;
      const id = request.params.id.toLowerCase();
      const current = await getConversation(db, id);
      const version = expectedVersion(request, current.id);
      return withEtag(reply, await updateConversation(db, id, version, request.body));
    },
  );

  // The parent's prefix already applies to children; passing it on would double it.
  const { prefix: _prefix, ...services } = options as AppServices & { prefix?: string };
  await app.register(messagesRoutes, services);
}
