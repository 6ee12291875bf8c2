import { requireTenant } from 'tenantry/fastify';
import { Type } from 'typebox';
import { ProblemSchema } from '../conversations/conversations.schemas.ts';
import { Page, PageQuery } from '../http/pagination.ts';
import type { AppInstance, AppServices } from '../http/types.ts';
import { getDigest, listDigests } from './digests.service.ts';

const DigestSchema = Type.Object({
  day: Type.String({ format: 'date', description: 'The UTC day' }),
  conversationsOpened: Type.Integer({ description: 'Conversations created that day' }),
  conversationsActive: Type.Integer({ description: 'Conversations with a message that day' }),
  messagesIn: Type.Integer(),
  messagesOut: Type.Integer(),
  computedAt: Type.String({ format: 'date-time' }),
});

const ListQuery = Type.Object({ ...PageQuery.properties }, { additionalProperties: false });
const DayParams = Type.Object({
  day: Type.String({
    pattern: '^[0-9]{4}-[0-9]{2}-[0-9]{2}$',
    description: 'A UTC day, YYYY-MM-DD',
    examples: ['2026-03-14'],
  }),
});
const errors = { 400: ProblemSchema, 401: ProblemSchema, 403: ProblemSchema, 404: ProblemSchema };

/**
 * Conversation digests, computed nightly by the `digest.daily` job: list (latest day first) and
 * read one day. API keys need the `conversations:read` scope.
 *
 * @example
 * ```ts
 * await app.register(digestsRoutes, { ...services, prefix: '/v1' });
 * ```
 */
export async function digestsRoutes(app: AppInstance, _options: AppServices): Promise<void> {
  app.get(
    '/digests',
    {
      config: { scope: 'conversations:read' },
      schema: {
        tags: ['digests'],
        summary: 'List daily conversation digests, latest day first',
        description: 'Computed every day at 03:00 UTC for the day before.',
        querystring: ListQuery,
        response: { 200: Page(DigestSchema), ...errors },
      },
    },
    async (request) =>
      listDigests(requireTenant(request).db, {
        limit: request.query.limit ?? 25,
        cursor: request.query.cursor,
      }),
  );

  app.get(
    '/digests/:day',
    {
      config: { scope: 'conversations:read' },
      schema: {
        tags: ['digests'],
        summary: 'Read the conversation digest of one UTC day',
        params: DayParams,
        response: { 200: DigestSchema, ...errors },
      },
    },
    async (request) => getDigest(requireTenant(request).db, request.params.day),
  );
}
