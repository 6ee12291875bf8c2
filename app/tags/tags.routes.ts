import { requireTenant } from 'tenantry/fastify';
import { Type } from 'typebox';
import { idempotent } from '../http/idempotency.ts';
import { Page, PageQuery } from '../http/pagination.ts';
import type { AppInstance, AppServices } from '../http/types.ts';
import { createTag, deleteTag, getTag, listTags, renameTag } from './tags.service.ts';

const TagName = Type.String({
  minLength: 1,
  maxLength: 60,
  description: 'Unique in the workspace',
});

/** A tag as the API returns it. */
export const TagSchema = Type.Object({
  id: Type.String({ format: 'uuid' }),
  name: Type.String(),
});

const TagBody = Type.Object({ name: TagName }, { additionalProperties: false });
const ListQuery = Type.Object({ ...PageQuery.properties }, { additionalProperties: false });
const IdParams = Type.Object({ id: Type.String({ format: 'uuid' }) });
const Deleted = Type.Null({ description: 'Deleted' });

/**
 * Tag routes: create (with `Idempotency-Key`), list, read, rename and delete (owners and admins).
 * API keys need the `contacts:read` / `contacts:write` scopes.
 *
 * @example
 * ```ts
 * await app.register(tagsRoutes, { ...services, prefix: '/v1' });
 * ```
 */
export async function tagsRoutes(app: AppInstance, _options: AppServices): Promise<void> {
  app.post(
    '/tags',
    {
      config: { scope: 'contacts:write' },
      schema: {
        tags: ['tags'],
        summary: 'Create a tag',
        description: 'Send `Idempotency-Key` to make retries safe. Names are unique per workspace.',
        body: TagBody,
        response: { 201: TagSchema },
      },
    },
    async (request, reply) => {
      const db = requireTenant(request).db;
      return idempotent(request, reply, db, 201, () => createTag(db, request.body));
    },
  );

  app.get(
    '/tags',
    {
      config: { scope: 'contacts:read' },
      schema: {
        tags: ['tags'],
        summary: 'List tags in name order',
        querystring: ListQuery,
        response: { 200: Page(TagSchema) },
      },
    },
    async (request) =>
      listTags(requireTenant(request).db, {
        limit: request.query.limit ?? 25,
        cursor: request.query.cursor,
      }),
  );

  app.get(
    '/tags/:id',
    {
      config: { scope: 'contacts:read' },
      schema: {
        tags: ['tags'],
        summary: 'Read a tag',
        params: IdParams,
        response: { 200: TagSchema },
      },
    },
    async (request) => getTag(requireTenant(request).db, request.params.id),
  );

  app.patch(
    '/tags/:id',
    {
      config: { scope: 'contacts:write' },
      schema: {
        tags: ['tags'],
        summary: 'Rename a tag',
        params: IdParams,
        body: TagBody,
        response: { 200: TagSchema },
      },
    },
    async (request) => renameTag(requireTenant(request).db, request.params.id, request.body),
  );

  app.delete(
    '/tags/:id',
    {
      config: { scope: 'contacts:write', roles: ['owner', 'admin'] },
      schema: {
        tags: ['tags'],
        summary: 'Delete a tag and unlink it from every contact (owners and admins)',
        params: IdParams,
        response: { 204: Deleted },
      },
    },
    async (request, reply) => {
      await deleteTag(requireTenant(request).db, request.params.id);
      return reply.code(204).send(null);
    },
  );
}
