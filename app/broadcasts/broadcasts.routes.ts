import { requireTenant } from 'tenantry/fastify';
import type { JobDefinition } from 'tenantry/jobs';
import { Type } from 'typebox';
import { ProblemSchema } from '../conversations/conversations.schemas.ts';
import type { AppDatabase } from '../database.ts';
import { idempotent } from '../http/idempotency.ts';
import { Page, PageQuery } from '../http/pagination.ts';
import type { AppInstance, AppServices } from '../http/types.ts';
import type { BroadcastDispatchPayload } from './broadcast.jobs.ts';
import {
  createBroadcast,
  getBroadcast,
  listBroadcasts,
  listRecipients,
} from './broadcasts.service.ts';

const Uuid = Type.String({ format: 'uuid' });
const BroadcastStatus = Type.Union([
  Type.Literal('queued'),
  Type.Literal('sending'),
  Type.Literal('completed'),
  Type.Literal('failed'),
]);
const RecipientStatus = Type.Union([
  Type.Literal('pending'),
  Type.Literal('sent'),
  Type.Literal('failed'),
]);
const Variable = Type.Union([
  Type.String({ minLength: 1, maxLength: 1024, description: 'Fixed text' }),
  Type.Object(
    {
      contact: Type.Union([Type.Literal('name'), Type.Literal('phone'), Type.Literal('email')], {
        description: 'This field of each recipient contact (empty when the contact has none)',
      }),
    },
    { additionalProperties: false },
  ),
]);
const Variables = Type.Array(Variable, {
  maxItems: 20,
  description: 'Values of the template placeholders {{1}}..{{n}}, in order',
});

const BroadcastSchema = Type.Object({
  id: Uuid,
  name: Type.String(),
  templateId: Uuid,
  body: Type.String({ description: 'The template body when the broadcast was created' }),
  variables: Variables,
  tagIds: Type.Array(Uuid),
  status: BroadcastStatus,
  createdBy: Type.Union([Uuid, Type.Null()]),
  counts: Type.Object({
    total: Type.Integer(),
    pending: Type.Integer(),
    sent: Type.Integer(),
    failed: Type.Integer(),
  }),
  createdAt: Type.String({ format: 'date-time' }),
  startedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  completedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
});

const RecipientSchema = Type.Object({
  contactId: Uuid,
  contactName: Type.String(),
  status: RecipientStatus,
  attempts: Type.Integer({ description: 'The job attempt that settled the recipient' }),
  providerMessageId: Type.Union([Type.String(), Type.Null()]),
  lastError: Type.Union([Type.String(), Type.Null()]),
  sentAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
});

const CreateBody = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 200 }),
    templateId: Uuid,
    tagIds: Type.Array(Uuid, {
      minItems: 1,
      maxItems: 50,
      uniqueItems: true,
      description: 'Contacts with any of these tags receive the broadcast',
    }),
    variables: Type.Optional(Variables),
  },
  { additionalProperties: false },
);

const ListQuery = Type.Object({ ...PageQuery.properties }, { additionalProperties: false });
const RecipientsQuery = Type.Object(
  { ...PageQuery.properties, status: Type.Optional(RecipientStatus) },
  { additionalProperties: false },
);
const IdParams = Type.Object({ id: Uuid });

const errors = {
  400: ProblemSchema,
  401: ProblemSchema,
  403: ProblemSchema,
  404: ProblemSchema,
};

/** Options of {@link broadcastsRoutes}: the app's services and the job a new broadcast enqueues. */
export interface BroadcastsRoutesOptions extends AppServices {
  readonly dispatchJob: JobDefinition<BroadcastDispatchPayload, AppDatabase>;
}

/**
 * Broadcast routes: create (owners and admins, with `Idempotency-Key`; answered 202 while jobs
 * send it), list, read with counts, and list recipients by status. API keys need the
 * `broadcasts:read` / `broadcasts:write` scopes.
 *
 * @example
 * ```ts
 * await app.register(broadcastsRoutes, { ...services, prefix: '/v1', dispatchJob: jobs.broadcasts.dispatch });
 * ```
 */
export async function broadcastsRoutes(
  app: AppInstance,
  options: BroadcastsRoutesOptions,
): Promise<void> {
  const dispatchJob = options.dispatchJob;

  app.post(
    '/broadcasts',
    {
      config: { scope: 'broadcasts:write', roles: ['owner', 'admin'] },
      schema: {
        tags: ['broadcasts'],
        summary: 'Send a message template to every contact with some tags (owners and admins)',
        description:
          'The recipients are the contacts that have any of `tagIds` now. Answers 202: background jobs send the messages; read the broadcast for its progress. Send `Idempotency-Key` to make retries safe.',
        body: CreateBody,
        response: { 202: BroadcastSchema, ...errors, 422: ProblemSchema },
      },
    },
    async (request, reply) => {
      const tenant = requireTenant(request);
      return idempotent(request, reply, tenant.db, 202, () =>
        createBroadcast(tenant.db, request.body, tenant.userId, dispatchJob),
      );
    },
  );

  app.get(
    '/broadcasts',
    {
      config: { scope: 'broadcasts:read' },
      schema: {
        tags: ['broadcasts'],
        summary: 'List broadcasts, newest first',
        querystring: ListQuery,
        response: { 200: Page(BroadcastSchema), ...errors },
      },
    },
    async (request) =>
      listBroadcasts(requireTenant(request).db, {
        limit: request.query.limit ?? 25,
        cursor: request.query.cursor,
      }),
  );

  app.get(
    '/broadcasts/:id',
    {
      config: { scope: 'broadcasts:read' },
      schema: {
        tags: ['broadcasts'],
        summary: 'Read a broadcast and its counts by recipient status',
        params: IdParams,
        response: { 200: BroadcastSchema, ...errors },
      },
    },
    async (request) => getBroadcast(requireTenant(request).db, request.params.id.toLowerCase()),
  );

  app.get(
    '/broadcasts/:id/recipients',
    {
      config: { scope: 'broadcasts:read' },
      schema: {
        tags: ['broadcasts'],
        summary: "List a broadcast's recipients in contact id order",
        params: IdParams,
        querystring: RecipientsQuery,
        response: { 200: Page(RecipientSchema), ...errors },
      },
    },
    async (request) =>
      listRecipients(requireTenant(request).db, request.params.id.toLowerCase(), {
        limit: request.query.limit ?? 25,
        cursor: request.query.cursor,
        status: request.query.status,
      }),
  );
}
