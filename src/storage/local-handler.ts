import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { errorCodes, isTenantryError, TenantryError, type TenantryErrorCode } from '../errors.ts';
import type { LocalStorageDriver, VerifiedStorageUrl } from './local-driver.ts';

/** Options of {@link createLocalStorageHandler}. */
export interface LocalStorageHandlerOptions {
  /**
   * Called once a URL's signature, method, tenant and expiry verified, before any byte moves:
   * `false` answers 404 `TENANTRY_ERR_STORAGE_FILE_NOT_FOUND`. Wire it to
   * {@link Storage.allowsSignedAccess} so a URL stops working once its file is deleted or
   * rejected, not only when it expires.
   */
  authorize?(url: VerifiedStorageUrl): Promise<boolean>;
}

/** A Node.js request listener serving a local driver's signed URLs. */
export type LocalStorageHandler = (
  request: IncomingMessage,
  response: ServerResponse,
) => Promise<void>;

/**
 * Serves the signed URLs of a {@link createLocalStorageDriver} driver, framework-neutral: mount
 * it wherever the driver's `baseUrl` points, passing the raw `IncomingMessage` (its `url` must
 * still hold the full path and query). `PUT` streams the body into the object, refusing a body
 * whose `Content-Length` or `Content-Type` is not the signed one (413, 415, 400) or, for a URL
 * signed with a SHA-256, whose bytes have another digest (422, nothing stored); `GET` streams
 * the object back as an attachment. A URL that fails verification, is used with the other
 * method or names another tenant's key gets 403, an expired one 410. Errors are RFC 9457
 * `application/problem+json` with a stable `code`; client input never causes a 500. With
 * `options.authorize`, a verified URL is also checked against the file registry (404 when its
 * file is deleted, rejected or, for `PUT`, no longer pending).
 *
 * @example
 * ```ts
 * import { createServer } from 'node:http';
 * import { createLocalStorageHandler } from 'tenantry/storage';
 * const handle = createLocalStorageHandler(driver, {
 *   authorize: (url) =>
 *     tenantry.withTenant(url.tenantId, (db) => storage.allowsSignedAccess(db, url.method, url.key)),
 * });
 * createServer((req, res) => void handle(req, res)).listen(3000);
 * ```
 */
export function createLocalStorageHandler(
  driver: LocalStorageDriver,
  options: LocalStorageHandlerOptions = {},
): LocalStorageHandler {
  const authorize = options.authorize;
  return async (request, response) => {
    try {
      const verified = driver.verifyUrl(request.method, request.url);
      if (authorize !== undefined && !(await authorize(verified))) {
        throw new TenantryError('TENANTRY_ERR_STORAGE_FILE_NOT_FOUND', 'No such file.');
      }
      if (verified.method === 'PUT') {
        const size = verified.size ?? 0;
        const lengthHeader = request.headers['content-length'];
        if (lengthHeader === undefined || !/^[0-9]{1,16}$/.test(lengthHeader)) {
          throw new TenantryError(
            'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
            'An upload needs the Content-Length it was signed for.',
          );
        }
        const length = Number(lengthHeader);
        if (length > size) {
          throw new TenantryError(
            'TENANTRY_ERR_STORAGE_TOO_LARGE',
            'The body is larger than the size the URL was signed for.',
          );
        }
        if (length !== size) {
          throw new TenantryError(
            'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
            'The Content-Length is not the size the URL was signed for.',
          );
        }
        const contentType = request.headers['content-type']?.trim().toLowerCase();
        const signedType = verified.contentType;
        if (signedType === undefined || contentType !== signedType) {
          throw new TenantryError(
            'TENANTRY_ERR_STORAGE_TYPE_NOT_ALLOWED',
            'The Content-Type is not the one the URL was signed for.',
          );
        }
        await driver.writeObject(verified.key, request, {
          size,
          contentType: signedType,
          ...(verified.sha256 === undefined ? {} : { sha256: verified.sha256 }),
        });
        response.writeHead(204, { 'cache-control': 'no-store' });
        response.end();
        return;
      }
      const object = await driver.readObject(verified.key);
      if (object === undefined) {
        throw new TenantryError('TENANTRY_ERR_STORAGE_FILE_NOT_FOUND', 'No such file.');
      }
      response.writeHead(200, {
        'content-type': object.contentType ?? 'application/octet-stream',
        'content-length': String(object.size),
        'content-disposition': contentDisposition(verified.fileName),
        'x-content-type-options': 'nosniff',
        'cache-control': 'private, no-store',
      });
      await pipeline(object.stream, response);
    } catch (error) {
      if (response.headersSent) {
        response.destroy(error instanceof Error ? error : undefined);
        return;
      }
      sendProblem(request, response, error);
    }
  };
}

function sendProblem(request: IncomingMessage, response: ServerResponse, error: unknown): void {
  const code: TenantryErrorCode = isTenantryError(error)
    ? error.code
    : 'TENANTRY_ERR_HTTP_INTERNAL';
  const { status, title } = errorCodes[code];
  const detail = isTenantryError(error)
    ? error.message
    : 'The server failed to handle the request.';
  const body = JSON.stringify({ type: 'about:blank', title, status, detail, code });
  // The body may still be arriving: answer, then close the connection rather than read it.
  response.writeHead(status, {
    'content-type': 'application/problem+json',
    'content-length': String(Buffer.byteLength(body)),
    'cache-control': 'no-store',
    connection: 'close',
  });
  response.end(body);
  request.resume();
}

function contentDisposition(fileName: string | undefined): string {
  if (fileName === undefined) return 'attachment';
  const fallback = fileName.replace(/[^\x20-\x7e]|["\\%]/g, '_');
  const encoded = encodeURIComponent(fileName).replace(
    /['()*]/g,
    (character) => `%${character.charCodeAt(0).toString(16).toUpperCase()}`,
  );
  return `attachment; filename="${fallback}"; filename*=UTF-8''${encoded}`;
}
