import type { LocalStorageHandler } from 'tenantry/storage';
import type { AppInstance } from '../http/types.ts';

/** Options of {@link localFilesRoutes}. */
export interface LocalFilesRoutesOptions {
  readonly handler: LocalStorageHandler;
}

/**
 * Serves the local storage driver's signed URLs at `/files/*` (`PUT` to upload, `GET` to
 * download). No workspace is identified: the signed URL is the credential, and the handler checks
 * its method, key, tenant, size, type and expiry. Fastify leaves the body alone so the handler
 * streams it to disk.
 *
 * @example
 * ```ts
 * await app.register(localFilesRoutes, { handler: files.localHandler });
 * ```
 */
export async function localFilesRoutes(
  app: AppInstance,
  options: LocalFilesRoutesOptions,
): Promise<void> {
  const handler = options.handler;
  // Encapsulated: only these routes keep the raw body stream for the handler.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_request, _payload, done) => {
    done(null, undefined);
  });
  app.route({
    method: ['GET', 'PUT'],
    url: '/files/*',
    exposeHeadRoute: false,
    config: { tenant: 'none' },
    schema: { hide: true },
    handler: async (request, reply) => {
      reply.hijack();
      await handler(request.raw, reply.raw);
    },
  });
}
