import { TenantryError } from 'tenantry';
import { requireTenant } from 'tenantry/fastify';
import type { StoredFile } from 'tenantry/storage';
import { Type } from 'typebox';
import { ProblemSchema } from '../conversations/conversations.schemas.ts';
import type { AppInstance, AppServices } from '../http/types.ts';
import type { AppStorage } from './app-storage.ts';

const Uuid = Type.String({ format: 'uuid' });
const IdParams = Type.Object({ id: Uuid });

const FileSchema = Type.Object({
  id: Uuid,
  fileName: Type.String(),
  sizeBytes: Type.Integer(),
  contentType: Type.String(),
  sha256: Type.Union([Type.String(), Type.Null()]),
  status: Type.Union([Type.Literal('pending'), Type.Literal('uploaded'), Type.Literal('deleted')]),
  error: Type.Union([Type.String(), Type.Null()]),
  uploadedBy: Type.Union([Uuid, Type.Null()]),
  createdAt: Type.String({ format: 'date-time' }),
  uploadedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
});

const SignedUrlSchema = Type.Object({
  url: Type.String(),
  method: Type.Union([Type.Literal('PUT'), Type.Literal('GET')]),
  headers: Type.Record(Type.String(), Type.String()),
  expiresAt: Type.String({ format: 'date-time' }),
});

const CreateBody = Type.Object(
  {
    fileName: Type.String({ minLength: 1, maxLength: 1024 }),
    size: Type.Integer({ minimum: 0 }),
    contentType: Type.String({ minLength: 3, maxLength: 255 }),
    sha256: Type.Optional(Type.String({ pattern: '^[0-9a-fA-F]{64}$' })),
  },
  { additionalProperties: false },
);

const errors = {
  400: ProblemSchema,
  401: ProblemSchema,
  403: ProblemSchema,
  404: ProblemSchema,
};

/** Options of {@link filesRoutes}: the app's services and its storage. */
export interface FilesRoutesOptions extends AppServices {
  readonly files: AppStorage;
}

function toFile(file: StoredFile) {
  return {
    id: file.id,
    fileName: file.fileName,
    sizeBytes: file.sizeBytes,
    contentType: file.contentType,
    sha256: file.sha256,
    status: file.status,
    error: file.error,
    uploadedBy: file.uploadedBy,
    createdAt: file.createdAt.toISOString(),
    uploadedAt: file.uploadedAt === null ? null : file.uploadedAt.toISOString(),
  };
}

function toSignedUrl(signed: {
  url: string;
  method: 'PUT' | 'GET';
  headers: Readonly<Record<string, string>>;
  expiresAt: Date;
}) {
  return {
    url: signed.url,
    method: signed.method,
    headers: { ...signed.headers },
    expiresAt: signed.expiresAt.toISOString(),
  };
}

/**
 * File routes: ask for an upload URL, confirm the upload, read a file, get a short-lived download
 * URL, delete, and the workspace's storage usage. Files live under the workspace's own prefix; an
 * id of another workspace answers 404. API keys need `files:read` / `files:write`.
 *
 * @example
 * ```ts
 * await app.register(filesRoutes, { ...services, prefix: '/v1', files });
 * ```
 */
export async function filesRoutes(app: AppInstance, options: FilesRoutesOptions): Promise<void> {
  const { storage } = options.files;

  app.post(
    '/files',
    {
      config: { scope: 'files:write' },
      schema: {
        tags: ['files'],
        summary: 'Ask for a URL to upload a file to',
        description:
          'PUT the bytes to `upload.url` with `upload.headers` before `upload.expiresAt`, then confirm. The size and content type are enforced.',
        body: CreateBody,
        response: {
          201: Type.Object({ fileId: Uuid, upload: SignedUrlSchema }),
          ...errors,
          413: ProblemSchema,
          415: ProblemSchema,
        },
      },
    },
    async (request, reply) => {
      const tenant = requireTenant(request);
      const { fileId, upload } = await storage.requestUpload(tenant.db, {
        fileName: request.body.fileName,
        size: request.body.size,
        contentType: request.body.contentType,
        ...(request.body.sha256 === undefined ? {} : { sha256: request.body.sha256 }),
      });
      reply.code(201);
      return { fileId, upload: toSignedUrl(upload) };
    },
  );

  app.post(
    '/files/:id/confirm',
    {
      config: { scope: 'files:write' },
      schema: {
        tags: ['files'],
        summary: 'Confirm an upload: the stored object is checked against the request',
        description:
          'Answers the file once its size, type and checksum match; 422 (and the file is rejected, its object removed) when they do not; 409 while nothing was uploaded.',
        params: IdParams,
        response: { 200: FileSchema, ...errors, 409: ProblemSchema, 422: ProblemSchema },
      },
    },
    async (request) => {
      const tenant = requireTenant(request);
      // Its own unit of work: a rejected upload must stay recorded although the answer is 422
      // (the request's unit rolls back on an error status).
      const unit = options.tenantry.beginUnit({
        tenantId: tenant.id,
        ...(tenant.userId === undefined ? {} : { userId: tenant.userId }),
      });
      let file: StoredFile;
      try {
        file = await storage.confirmUpload(unit.db, request.params.id.toLowerCase());
        await unit.commit();
      } catch (error) {
        await unit.rollback();
        throw error;
      }
      if (file.status !== 'uploaded') {
        throw new TenantryError(
          'TENANTRY_ERR_STORAGE_UPLOAD_MISMATCH',
          `The upload was rejected: ${file.error ?? 'it does not match the request'}.`,
          { details: { fileId: file.id, reason: file.error } },
        );
      }
      return toFile(file);
    },
  );

  app.get(
    '/files/usage',
    {
      config: { scope: 'files:read' },
      schema: {
        tags: ['files'],
        summary: 'Files and bytes the workspace stores (uploaded files only)',
        response: { 200: Type.Object({ files: Type.Integer(), bytes: Type.Integer() }), ...errors },
      },
    },
    async (request) => storage.storageUsage(requireTenant(request).db),
  );

  app.get(
    '/files/:id',
    {
      config: { scope: 'files:read' },
      schema: {
        tags: ['files'],
        summary: "Read a file's metadata",
        params: IdParams,
        response: { 200: FileSchema, ...errors },
      },
    },
    async (request) =>
      toFile(await storage.getFile(requireTenant(request).db, request.params.id.toLowerCase())),
  );

  app.get(
    '/files/:id/download',
    {
      config: { scope: 'files:read' },
      schema: {
        tags: ['files'],
        summary: 'Get a short-lived URL to download an uploaded file from',
        params: IdParams,
        response: {
          200: Type.Object({ url: Type.String(), expiresAt: Type.String({ format: 'date-time' }) }),
          ...errors,
        },
      },
    },
    async (request) => {
      const signed = await storage.requestDownload(
        requireTenant(request).db,
        request.params.id.toLowerCase(),
      );
      return { url: signed.url, expiresAt: signed.expiresAt.toISOString() };
    },
  );

  app.delete(
    '/files/:id',
    {
      config: { scope: 'files:write' },
      schema: {
        tags: ['files'],
        summary: 'Delete a file and its object (it disappears from the messages it is attached to)',
        params: IdParams,
        response: { 204: Type.Null(), ...errors },
      },
    },
    async (request, reply) => {
      await storage.deleteFile(requireTenant(request).db, request.params.id.toLowerCase());
      reply.code(204);
      return null;
    },
  );
}
