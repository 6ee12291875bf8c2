import { requireTenant } from 'tenantry/fastify';
import type { JobDefinition } from 'tenantry/jobs';
import type { Storage } from 'tenantry/storage';
import { Type } from 'typebox';
import { ProblemSchema } from '../conversations/conversations.schemas.ts';
import type { AppDatabase } from '../database.ts';
import type { AppInstance, AppServices } from '../http/types.ts';
import type { ContactsExportPayload } from './export.jobs.ts';
import { getExport, requestContactsExport } from './exports.service.ts';

const Uuid = Type.String({ format: 'uuid' });

const ExportSchema = Type.Object({
  id: Uuid,
  kind: Type.Literal('contacts'),
  status: Type.Union([Type.Literal('queued'), Type.Literal('ready'), Type.Literal('failed')]),
  fileId: Type.Union([Uuid, Type.Null()]),
  rowCount: Type.Union([Type.Integer(), Type.Null()]),
  error: Type.Union([Type.String(), Type.Null()]),
  createdAt: Type.String({ format: 'date-time' }),
  finishedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  download: Type.Union([
    Type.Object({ url: Type.String(), expiresAt: Type.String({ format: 'date-time' }) }),
    Type.Null(),
  ]),
});

const errors = {
  400: ProblemSchema,
  401: ProblemSchema,
  403: ProblemSchema,
  404: ProblemSchema,
};

/** Options of {@link exportsRoutes}: the app's services, its storage and the export job. */
export interface ExportsRoutesOptions extends AppServices {
  readonly storage: Storage;
  readonly contactsExportJob: JobDefinition<ContactsExportPayload, AppDatabase>;
}

/**
 * Export routes: start a contacts export (a job writes the CSV into the workspace's storage) and
 * read an export, with a short-lived download URL once it is ready. Owners and admins only; API
 * keys need `exports:read` / `exports:write`.
 *
 * @example
 * ```ts
 * await app.register(exportsRoutes, { ...services, prefix: '/v1', storage, contactsExportJob });
 * ```
 */
export async function exportsRoutes(
  app: AppInstance,
  options: ExportsRoutesOptions,
): Promise<void> {
  app.post(
    '/exports/contacts',
    {
      config: { scope: 'exports:write', roles: ['owner', 'admin'] },
      schema: {
        tags: ['exports'],
        summary: "Export the workspace's contacts to a CSV file (owners and admins)",
        description: 'Answers 202: a job writes the file; read the export until it is ready.',
        response: { 202: Type.Object({ exportId: Uuid }), ...errors },
      },
    },
    async (request, reply) => {
      const tenant = requireTenant(request);
      const result = await requestContactsExport(
        tenant.db,
        tenant.userId,
        options.contactsExportJob,
      );
      reply.code(202);
      return result;
    },
  );

  app.get(
    '/exports/:id',
    {
      config: { scope: 'exports:read', roles: ['owner', 'admin'] },
      schema: {
        tags: ['exports'],
        summary: 'Read an export; `download` holds a short-lived URL once it is ready',
        params: Type.Object({ id: Uuid }),
        response: { 200: ExportSchema, ...errors },
      },
    },
    async (request) =>
      getExport(requireTenant(request).db, options.storage, request.params.id.toLowerCase()),
  );
}
