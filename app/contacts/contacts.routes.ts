import { requireTenant } from 'tenantry/fastify';
import { Type } from 'typebox';
import { expectedVersion, withEtag } from '../http/etag.ts';
import { idempotent } from '../http/idempotency.ts';
import { Page, PageQuery } from '../http/pagination.ts';
import type { AppInstance, AppServices } from '../http/types.ts';
import { TagSchema } from '../tags/tags.routes.ts';
import {
  createContact,
  deleteContact,
  getContact,
  listContacts,
  tagContact,
  untagContact,
  updateContact,
} from './contacts.service.ts';

const Uuid = Type.String({ format: 'uuid' });
const Name = Type.String({ minLength: 1, maxLength: 200 });
const Phone = Type.String({
  pattern: '^\\+[1-9][0-9]{6,14}$',
  description: 'E.164, unique in the workspace',
  examples: ['+5511999990000'],
});
const Email = Type.String({
  format: 'email',
  maxLength: 320,
  description: 'Unique in the workspace (case-insensitive)',
});
// No JSON type here: the app's Ajv coerces types (anyOf's string branch would turn 10 into "10",
// and null into ""), so the service checks each value's type itself.
const AttributeValueInput = Type.Unsafe<unknown>({
  description: 'A string of up to 1000 characters, a number or a boolean',
});
const AttributeValue = Type.Union([Type.String(), Type.Number(), Type.Boolean()]);
const Attributes = Type.Record(
  Type.String({ pattern: '^[a-zA-Z0-9_]{1,64}$' }),
  AttributeValueInput,
  {
    maxProperties: 50,
    additionalProperties: false,
    description: 'Custom fields: up to 50 keys of letters, digits and _, with scalar values',
  },
);

const ContactSchema = Type.Object({
  id: Uuid,
  name: Type.String(),
  phone: Type.Union([Type.String(), Type.Null()]),
  email: Type.Union([Type.String(), Type.Null()]),
  attributes: Type.Record(Type.String(), AttributeValue),
  tags: Type.Array(TagSchema),
  version: Type.Integer({ description: 'Incremented by every update; the ETag carries it' }),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
});

const CreateBody = Type.Object(
  {
    name: Name,
    phone: Type.Optional(Type.Union([Type.Null(), Phone])),
    email: Type.Optional(Type.Union([Type.Null(), Email])),
    attributes: Type.Optional(Attributes),
    tagIds: Type.Optional(Type.Array(Uuid, { maxItems: 50, uniqueItems: true })),
  },
  { additionalProperties: false },
);

const PatchBody = Type.Object(
  {
    name: Type.Optional(Name),
    phone: Type.Optional(Type.Union([Type.Null(), Phone])),
    email: Type.Optional(Type.Union([Type.Null(), Email])),
    attributes: Type.Optional(Attributes),
  },
  { additionalProperties: false, minProperties: 1 },
);

const ListQuery = Type.Object(
  {
    ...PageQuery.properties,
    sort: Type.Optional(
      Type.Union(
        [
          Type.Literal('created_at'),
          Type.Literal('-created_at'),
          Type.Literal('name'),
          Type.Literal('-name'),
        ],
        { default: 'created_at', description: 'A leading - sorts descending' },
      ),
    ),
    tagId: Type.Optional(
      Type.String({ format: 'uuid', description: 'Only contacts with this tag' }),
    ),
    phone: Type.Optional(Type.String({ maxLength: 16, description: 'Exact phone' })),
    email: Type.Optional(Type.String({ maxLength: 320, description: 'Exact email, any case' })),
    attribute: Type.Optional(
      Type.Array(Type.String({ pattern: '^[a-zA-Z0-9_]{1,64}:', maxLength: 1100 }), {
        maxItems: 10,
        description:
          '`key:value`; repeat for several. Matches contacts whose attribute equals the value as text (`seats:10`, `vip:true`).',
      }),
    ),
  },
  { additionalProperties: false },
);

const IdParams = Type.Object({ id: Uuid });
const TagParams = Type.Object({ id: Uuid, tagId: Uuid });
const NoContent = Type.Null({ description: 'Done' });

/**
 * Contact routes: create (with `Idempotency-Key`), list (filters, sorts, cursor pages), read and
 * update with ETag / If-Match, delete (owners and admins), and tag links. API keys need the
 * `contacts:read` / `contacts:write` scopes.
 *
 * @example
 * ```ts
 * await app.register(contactsRoutes, { ...services, prefix: '/v1' });
 * ```
 */
export async function contactsRoutes(app: AppInstance, _options: AppServices): Promise<void> {
  app.post(
    '/contacts',
    {
      config: { scope: 'contacts:write' },
      schema: {
        tags: ['contacts'],
        summary: 'Create a contact',
        description:
          'Send `Idempotency-Key` to make retries safe. Phone and email are unique per workspace (409 names the field). The ETag header carries the version.',
        body: CreateBody,
        response: { 201: ContactSchema },
      },
    },
    async (request, reply) => {
      const db = requireTenant(request).db;
      const contact = await idempotent(request, reply, db, 201, () =>
        createContact(db, request.body),
      );
      return withEtag(reply, contact);
    },
  );

  app.get(
    '/contacts',
    {
      config: { scope: 'contacts:read' },
      schema: {
        tags: ['contacts'],
        summary: 'List contacts',
        description:
          'Cursor-paginated. Pass `nextCursor` back as `cursor` with the same `sort` and filters.',
        querystring: ListQuery,
        response: { 200: Page(ContactSchema) },
      },
    },
    async (request) => {
      const query = request.query;
      return listContacts(requireTenant(request).db, {
        limit: query.limit ?? 25,
        cursor: query.cursor,
        sort: query.sort,
        tagId: query.tagId,
        phone: query.phone,
        email: query.email,
        attribute: query.attribute,
      });
    },
  );

  app.get(
    '/contacts/:id',
    {
      config: { scope: 'contacts:read' },
      schema: {
        tags: ['contacts'],
        summary: 'Read a contact (ETag header for a later If-Match)',
        params: IdParams,
        response: { 200: ContactSchema },
      },
    },
    async (request, reply) =>
      withEtag(reply, await getContact(requireTenant(request).db, request.params.id)),
  );

  app.patch(
    '/contacts/:id',
    {
      config: { scope: 'contacts:write' },
      schema: {
        tags: ['contacts'],
        summary: 'Update a contact',
        description:
          'Requires `If-Match` with the ETag of your last read (428 without, 412 when the contact changed since). `attributes` replaces the whole set.',
        params: IdParams,
        body: PatchBody,
        response: { 200: ContactSchema },
      },
    },
    async (request, reply) => {
      const id = request.params.id;
      const version = expectedVersion(request, id);
      const contact = await updateContact(requireTenant(request).db, id, version, request.body);
      return withEtag(reply, contact);
    },
  );

  app.delete(
    '/contacts/:id',
    {
      config: { scope: 'contacts:write', roles: ['owner', 'admin'] },
      schema: {
        tags: ['contacts'],
        summary: 'Delete a contact (owners and admins)',
        description: 'Refused with 409 while conversations refer to the contact.',
        params: IdParams,
        response: { 204: NoContent },
      },
    },
    async (request, reply) => {
      await deleteContact(requireTenant(request).db, request.params.id);
      return reply.code(204).send(null);
    },
  );

  app.put(
    '/contacts/:id/tags/:tagId',
    {
      config: { scope: 'contacts:write' },
      schema: {
        tags: ['contacts'],
        summary: 'Tag a contact',
        params: TagParams,
        response: { 204: NoContent },
      },
    },
    async (request, reply) => {
      await tagContact(requireTenant(request).db, request.params.id, request.params.tagId);
      return reply.code(204).send(null);
    },
  );

  app.delete(
    '/contacts/:id/tags/:tagId',
    {
      config: { scope: 'contacts:write' },
      schema: {
        tags: ['contacts'],
        summary: 'Remove a tag from a contact',
        params: TagParams,
        response: { 204: NoContent },
      },
    },
    async (request, reply) => {
      await untagContact(requireTenant(request).db, request.params.id, request.params.tagId);
      return reply.code(204).send(null);
    },
  );
}
