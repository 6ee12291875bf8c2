import { requireTenant } from 'tenantry/fastify';
import { Type } from 'typebox';
import { expectedVersion, withEtag } from '../http/etag.ts';
import { idempotent } from '../http/idempotency.ts';
import { Page, PageQuery } from '../http/pagination.ts';
import type { AppInstance, AppServices } from '../http/types.ts';
import {
  createTemplate,
  deleteTemplate,
  getTemplate,
  listTemplates,
  updateTemplate,
} from './templates.service.ts';

const Name = Type.String({
  pattern: '^[a-z0-9_]{1,64}$',
  description: 'Lowercase letters, digits and _; unique per language in the workspace',
  examples: ['order_shipped'],
});
const Language = Type.String({
  pattern: '^[a-z]{2}(_[A-Z]{2})?$',
  description: 'Language code, optionally with a region',
  examples: ['en', 'pt_BR'],
});
const Category = Type.Union([
  Type.Literal('marketing'),
  Type.Literal('utility'),
  Type.Literal('authentication'),
]);
const Body = Type.String({
  minLength: 1,
  maxLength: 1024,
  description: 'Text with optional placeholders {{1}}, {{2}}, … numbered without gaps',
});

const TemplateSchema = Type.Object({
  id: Type.String({ format: 'uuid' }),
  name: Type.String(),
  language: Type.String(),
  category: Category,
  body: Type.String(),
  version: Type.Integer({ description: 'Incremented by every update; the ETag carries it' }),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
});

const CreateBody = Type.Object(
  { name: Name, language: Language, category: Category, body: Body },
  { additionalProperties: false },
);
const PatchBody = Type.Object(
  {
    name: Type.Optional(Name),
    language: Type.Optional(Language),
    category: Type.Optional(Category),
    body: Type.Optional(Body),
  },
  { additionalProperties: false, minProperties: 1 },
);
const ListQuery = Type.Object(
  {
    ...PageQuery.properties,
    category: Type.Optional(Category),
    language: Type.Optional(Language),
  },
  { additionalProperties: false },
);
const IdParams = Type.Object({ id: Type.String({ format: 'uuid' }) });

/**
 * Message template routes: create (with `Idempotency-Key`), list (by category and language),
 * read and update with ETag / If-Match, delete (owners and admins). API keys need the
 * `templates:read` / `templates:write` scopes.
 *
 * @example
 * ```ts
 * await app.register(templatesRoutes, { ...services, prefix: '/v1' });
 * ```
 */
export async function templatesRoutes(app: AppInstance, _options: AppServices): Promise<void> {
  app.post(
    '/templates',
    {
      config: { scope: 'templates:write' },
      schema: {
        tags: ['templates'],
        summary: 'Create a message template',
        description:
          'Send `Idempotency-Key` to make retries safe. Name and language together are unique per workspace.',
        body: CreateBody,
        response: { 201: TemplateSchema },
      },
    },
    async (request, reply) => {
      const db = requireTenant(request).db;
      const template = await idempotent(request, reply, db, 201, () =>
        createTemplate(db, request.body),
      );
      return withEtag(reply, template);
    },
  );

  app.get(
    '/templates',
    {
      config: { scope: 'templates:read' },
      schema: {
        tags: ['templates'],
        summary: 'List message templates in name and language order',
        querystring: ListQuery,
        response: { 200: Page(TemplateSchema) },
      },
    },
    async (request) =>
      listTemplates(requireTenant(request).db, {
        limit: request.query.limit ?? 25,
        cursor: request.query.cursor,
        category: request.query.category,
        language: request.query.language,
      }),
  );

  app.get(
    '/templates/:id',
    {
      config: { scope: 'templates:read' },
      schema: {
        tags: ['templates'],
        summary: 'Read a message template (ETag header for a later If-Match)',
        params: IdParams,
        response: { 200: TemplateSchema },
      },
    },
    async (request, reply) =>
      withEtag(reply, await getTemplate(requireTenant(request).db, request.params.id)),
  );

  app.patch(
    '/templates/:id',
    {
      config: { scope: 'templates:write' },
      schema: {
        tags: ['templates'],
        summary: 'Update a message template',
        description:
          'Requires `If-Match` with the ETag of your last read (428 without, 412 when it changed since).',
        params: IdParams,
        body: PatchBody,
        response: { 200: TemplateSchema },
      },
    },
    async (request, reply) => {
      const id = request.params.id;
      const version = expectedVersion(request, id);
      return withEtag(
        reply,
        await updateTemplate(requireTenant(request).db, id, version, request.body),
      );
    },
  );

  app.delete(
    '/templates/:id',
    {
      config: { scope: 'templates:write', roles: ['owner', 'admin'] },
      schema: {
        tags: ['templates'],
        summary: 'Delete a message template (owners and admins)',
        params: IdParams,
        response: { 204: Type.Null({ description: 'Deleted' }) },
      },
    },
    async (request, reply) => {
      await deleteTemplate(requireTenant(request).db, request.params.id);
      return reply.code(204).send(null);
    },
  );
}
