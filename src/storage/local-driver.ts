import { createHash, createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import { createReadStream } from 'node:fs';
import {
  link,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { dirname, join, resolve, sep } from 'node:path';
import type { Readable } from 'node:stream';
import { TenantryError } from '../errors.ts';
import { parseContentType } from './content-types.ts';
import { parseFileName } from './file-names.ts';
import { assertDriverKeyInTenant, parseDriverKey } from './keys.ts';
import type {
  ObjectExpectation,
  SignedDownloadRequest,
  SignedUploadRequest,
  SignedUrl,
  StorageDriver,
  StoredObject,
} from './storage-driver.ts';

/** Options of {@link createLocalStorageDriver}. */
export interface LocalStorageDriverOptions {
  /** Directory holding the objects, at `<root>/<key>`, created when missing. */
  readonly root: string;
  /**
   * Absolute URL the app serves {@link createLocalStorageHandler} under, such as
   * `https://app.example.com/files`. Signed URLs are `<baseUrl>/<key>?<signed fields>`.
   */
  readonly baseUrl: string;
  /** HMAC key for signed URLs, at least 32 bytes; rotate it to revoke every URL. */
  readonly secret: string | Uint8Array;
}

/** A verified signed URL: what it allows. */
export interface VerifiedStorageUrl {
  readonly method: 'PUT' | 'GET';
  readonly key: string;
  readonly tenantId: string;
  readonly expiresAt: Date;
  /** Upload URLs: the exact body size. */
  readonly size: number | undefined;
  /** Upload URLs: the exact `Content-Type`. */
  readonly contentType: string | undefined;
  /** Upload URLs signed with a declared SHA-256: the digest the body must have (hex). */
  readonly sha256: string | undefined;
  /** Download URLs: the `Content-Disposition` file name. */
  readonly fileName: string | undefined;
}

/** An object opened for reading. */
export interface LocalObjectReader {
  readonly size: number;
  readonly contentType: string | undefined;
  readonly stream: Readable;
}

/** The local filesystem driver, with the extra methods its HTTP handler uses. */
export interface LocalStorageDriver extends StorageDriver {
  readonly name: 'local';
  /** Absolute root directory. */
  readonly root: string;
  /**
   * Verifies a request's method and URL (path and query, as in `IncomingMessage.url`) against
   * the signature; throws `TENANTRY_ERR_STORAGE_URL_INVALID` or `TENANTRY_ERR_STORAGE_URL_EXPIRED`.
   */
  verifyUrl(method: string | undefined, url: string | undefined, now?: Date): VerifiedStorageUrl;
  /**
   * Streams `body` into the object at `key`: at most `size` bytes (more throws
   * `TENANTRY_ERR_STORAGE_TOO_LARGE`), exactly `size` in the end, SHA-256 computed on the way
   * (another digest than `expected.sha256`, when given, throws
   * `TENANTRY_ERR_STORAGE_UPLOAD_MISMATCH` and stores nothing), written once (an existing object
   * throws `TENANTRY_ERR_STORAGE_OBJECT_EXISTS`).
   */
  writeObject(
    key: string,
    body: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    expected: ObjectExpectation,
  ): Promise<StoredObject>;
  /** Opens the object at `key` for reading, or `undefined` if absent. */
  readObject(key: string): Promise<LocalObjectReader | undefined>;
}

interface Sidecar {
  readonly size: number;
  readonly contentType: string;
  readonly sha256: string;
}

const signedParams = ['method', 'tenant', 'expires', 'size', 'type', 'sha256', 'name', 'signature'];
const uploadParams = new Set([
  'method',
  'tenant',
  'expires',
  'size',
  'type',
  'sha256',
  'signature',
]);
const sha256Hex = /^[0-9a-f]{64}$/;
const downloadParams = new Set(['method', 'tenant', 'expires', 'name', 'signature']);
const decimal = /^(?:0|[1-9][0-9]{0,15})$/;
const base64Url = /^[A-Za-z0-9_-]{43}$/;
const tenantPrefixPattern =
  /^tenants\/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\/$/;

/**
 * A storage driver on the local filesystem, the embedded default. Objects live at
 * `<root>/<key>` with a `<root>/.meta/<key>.json` sidecar holding their size, content type and the
 * SHA-256 computed while the upload streamed. Signed URLs point at the app itself
 * (`<baseUrl>/<key>?method=…&tenant=…&expires=…&size=…&type=…[&sha256=…]&signature=…`) and
 * carry an HMAC-SHA256 over every field, verified in constant time by
 * {@link createLocalStorageHandler}; `sha256` (when the upload declared one) makes the handler
 * refuse a body with another digest.
 *
 * @example
 * ```ts
 * import { createLocalStorageDriver, createLocalStorageHandler } from 'tenantry/storage';
 * const driver = createLocalStorageDriver({
 *   root: '.tenantry/files',
 *   baseUrl: 'http://localhost:3000/files',
 *   secret: process.env.STORAGE_SECRET!,
 * });
 * const handle = createLocalStorageHandler(driver); // serve it under /files
 * ```
 */
export function createLocalStorageDriver(options: LocalStorageDriverOptions): LocalStorageDriver {
  const root = parseRoot(options?.root);
  const { baseUrl, basePath } = parseBaseUrl(options.baseUrl);
  const macKey = createHmac('sha256', parseSecret(options.secret))
    .update('tenantry-storage-url-v1')
    .digest();
  const tmpDirectory = join(root, '.tmp');
  const metaDirectory = '.meta';

  function sign(fields: readonly (string | number | null)[]): string {
    return createHmac('sha256', macKey)
      .update(JSON.stringify(['tenantry-storage-url-v1', ...fields]))
      .digest('base64url');
  }

  function objectPath(key: string): string {
    parseDriverKey(key);
    return insideRoot(key);
  }

  function sidecarPath(key: string): string {
    return insideRoot(join(metaDirectory, `${key}.json`));
  }

  function insideRoot(relative: string): string {
    const path = resolve(root, relative);
    if (!path.startsWith(root + sep)) {
      throw new TenantryError(
        'TENANTRY_ERR_STORAGE_KEY_INVALID',
        'The key resolves outside the root.',
      );
    }
    return path;
  }

  function expirySeconds(expiresAt: Date): number {
    if (!(expiresAt instanceof Date) || !Number.isFinite(expiresAt.getTime())) {
      throw new TenantryError(
        'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
        'expiresAt must be a valid Date.',
      );
    }
    return Math.floor(expiresAt.getTime() / 1000);
  }

  async function readSidecar(key: string): Promise<Sidecar | undefined> {
    try {
      const parsed: unknown = JSON.parse(await readFile(sidecarPath(key), 'utf8'));
      if (parsed === null || typeof parsed !== 'object') return undefined;
      const { size, contentType, sha256 } = parsed as Record<string, unknown>;
      if (
        typeof size !== 'number' ||
        typeof contentType !== 'string' ||
        typeof sha256 !== 'string'
      ) {
        return undefined;
      }
      return { size, contentType, sha256 };
    } catch (error) {
      if (isMissing(error)) return undefined;
      throw error;
    }
  }

  const driver: LocalStorageDriver = {
    name: 'local',
    root,

    async signUpload(request: SignedUploadRequest): Promise<SignedUrl> {
      assertDriverKeyInTenant(request.key, request.tenantId);
      const size = request.size;
      if (!Number.isSafeInteger(size) || size < 0) {
        throw new TenantryError(
          'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
          'size must be a non-negative integer.',
        );
      }
      const contentType = parseContentType(request.contentType);
      const sha256 = request.sha256;
      if (sha256 !== undefined && (typeof sha256 !== 'string' || !sha256Hex.test(sha256))) {
        throw new TenantryError(
          'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
          'sha256 must be 64 lowercase hex digits.',
        );
      }
      const tenant = request.tenantId.toLowerCase();
      const expires = expirySeconds(request.expiresAt);
      const signature = sign(uploadFields(request.key, tenant, expires, size, contentType, sha256));
      const query = new URLSearchParams({
        method: 'PUT',
        tenant,
        expires: String(expires),
        size: String(size),
        type: contentType,
      });
      if (sha256 !== undefined) query.set('sha256', sha256);
      query.set('signature', signature);
      return Object.freeze({
        url: `${baseUrl}/${request.key}?${query}`,
        method: 'PUT',
        headers: Object.freeze({ 'content-type': contentType, 'content-length': String(size) }),
        expiresAt: new Date(expires * 1000),
      });
    },

    async signDownload(request: SignedDownloadRequest): Promise<SignedUrl> {
      assertDriverKeyInTenant(request.key, request.tenantId);
      const fileName = request.fileName === undefined ? null : parseFileName(request.fileName);
      const tenant = request.tenantId.toLowerCase();
      const expires = expirySeconds(request.expiresAt);
      const signature = sign(['GET', request.key, tenant, expires, null, null, fileName]);
      const query = new URLSearchParams({ method: 'GET', tenant, expires: String(expires) });
      if (fileName !== null) query.set('name', fileName);
      query.set('signature', signature);
      return Object.freeze({
        url: `${baseUrl}/${request.key}?${query}`,
        method: 'GET',
        headers: Object.freeze({}),
        expiresAt: new Date(expires * 1000),
      });
    },

    verifyUrl(method, url, now = new Date()) {
      const invalid = () =>
        new TenantryError('TENANTRY_ERR_STORAGE_URL_INVALID', 'The storage URL is invalid.');
      if (typeof url !== 'string' || (method !== 'PUT' && method !== 'GET')) throw invalid();
      const queryAt = url.indexOf('?');
      if (queryAt < 0) throw invalid();
      const path = url.slice(0, queryAt);
      if (!path.startsWith(`${basePath}/`)) throw invalid();
      const key = path.slice(basePath.length + 1);
      let keyTenant: string;
      try {
        keyTenant = parseDriverKey(key);
      } catch (error) {
        throw new TenantryError('TENANTRY_ERR_STORAGE_URL_INVALID', 'The storage URL is invalid.', {
          cause: error,
        });
      }
      const params = new URLSearchParams(url.slice(queryAt + 1));
      const values = new Map<string, string>();
      for (const [name, value] of params) {
        if (!signedParams.includes(name) || values.has(name)) throw invalid();
        values.set(name, value);
      }
      const signedMethod = values.get('method');
      const expected = signedMethod === 'PUT' ? uploadParams : downloadParams;
      if (signedMethod !== 'PUT' && signedMethod !== 'GET') throw invalid();
      for (const name of values.keys()) if (!expected.has(name)) throw invalid();
      const tenant = values.get('tenant') ?? '';
      const expiresText = values.get('expires') ?? '';
      const signature = values.get('signature') ?? '';
      if (!decimal.test(expiresText) || !base64Url.test(signature)) throw invalid();
      let size: number | null = null;
      let contentType: string | null = null;
      let fileName: string | null = null;
      const sha256 = values.get('sha256');
      if (sha256 !== undefined && !sha256Hex.test(sha256)) throw invalid();
      if (signedMethod === 'PUT') {
        const sizeText = values.get('size') ?? '';
        if (!decimal.test(sizeText)) throw invalid();
        size = Number(sizeText);
        contentType = values.get('type') ?? '';
      } else if (values.has('name')) {
        fileName = values.get('name') ?? '';
      }
      const expires = Number(expiresText);
      const computed = Buffer.from(
        sign(
          signedMethod === 'PUT'
            ? uploadFields(key, tenant, expires, size ?? 0, contentType ?? '', sha256)
            : [signedMethod, key, tenant, expires, size, contentType, fileName],
        ),
        'base64url',
      );
      const given = Buffer.from(signature, 'base64url');
      if (given.length !== computed.length || !timingSafeEqual(given, computed)) throw invalid();
      if (signedMethod !== method) throw invalid();
      if (keyTenant !== tenant) throw invalid();
      if (expires * 1000 <= now.getTime()) {
        throw new TenantryError('TENANTRY_ERR_STORAGE_URL_EXPIRED', 'The storage URL has expired.');
      }
      return Object.freeze({
        method: signedMethod,
        key,
        tenantId: tenant,
        expiresAt: new Date(expires * 1000),
        size: size ?? undefined,
        contentType: contentType ?? undefined,
        sha256,
        fileName: fileName ?? undefined,
      });
    },

    async writeObject(key, body, expected) {
      const target = objectPath(key);
      await mkdir(tmpDirectory, { recursive: true });
      const tmp = join(tmpDirectory, randomUUID());
      const hash = createHash('sha256');
      let size = 0;
      const file = await open(tmp, 'wx');
      try {
        try {
          for await (const chunk of body) {
            size += chunk.byteLength;
            if (size > expected.size) {
              throw new TenantryError(
                'TENANTRY_ERR_STORAGE_TOO_LARGE',
                'The body is larger than the size the URL was signed for.',
              );
            }
            hash.update(chunk);
            await file.write(chunk);
          }
        } finally {
          await file.close();
        }
        if (size !== expected.size) {
          throw new TenantryError(
            'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
            'The body is shorter than the size the URL was signed for.',
          );
        }
        const sidecar: Sidecar = {
          size,
          contentType: expected.contentType,
          sha256: hash.digest('hex'),
        };
        if (expected.sha256 !== undefined && sidecar.sha256 !== expected.sha256) {
          throw new TenantryError(
            'TENANTRY_ERR_STORAGE_UPLOAD_MISMATCH',
            'The body does not have the SHA-256 the URL was signed for.',
          );
        }
        await mkdir(dirname(target), { recursive: true });
        // link() never replaces an existing file, so an upload URL writes its object once and two
        // concurrent uploads cannot interleave an object with another upload's sidecar.
        try {
          await link(tmp, target);
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
            throw new TenantryError(
              'TENANTRY_ERR_STORAGE_OBJECT_EXISTS',
              'The object was already uploaded.',
              {
                cause: error,
              },
            );
          }
          throw error;
        }
        const sidecarTmp = `${tmp}.json`;
        const sidecarTarget = sidecarPath(key);
        await writeFile(sidecarTmp, JSON.stringify(sidecar), { flag: 'wx' });
        await mkdir(dirname(sidecarTarget), { recursive: true });
        await rename(sidecarTmp, sidecarTarget);
        return Object.freeze({ ...sidecar });
      } finally {
        await rm(tmp, { force: true });
        await rm(`${tmp}.json`, { force: true });
      }
    },

    async readObject(key) {
      const path = objectPath(key);
      let size: number;
      try {
        size = (await stat(path)).size;
      } catch (error) {
        if (isMissing(error)) return undefined;
        throw error;
      }
      const sidecar = await readSidecar(key);
      return { size, contentType: sidecar?.contentType, stream: createReadStream(path) };
    },

    async head(key) {
      const path = objectPath(key);
      let size: number;
      try {
        size = (await stat(path)).size;
      } catch (error) {
        if (isMissing(error)) return undefined;
        throw error;
      }
      const sidecar = await readSidecar(key);
      if (sidecar !== undefined && sidecar.size === size) {
        return Object.freeze({ size, contentType: sidecar.contentType, sha256: sidecar.sha256 });
      }
      // The object landed but its sidecar has not (yet): hash the bytes themselves.
      const hash = createHash('sha256');
      for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
      return Object.freeze({ size, contentType: undefined, sha256: hash.digest('hex') });
    },

    async delete(key) {
      const path = objectPath(key);
      await rm(sidecarPath(key), { force: true });
      await rm(path, { force: true });
    },

    async deletePrefix(prefix) {
      if (typeof prefix !== 'string' || !tenantPrefixPattern.test(prefix)) {
        throw new TenantryError(
          'TENANTRY_ERR_STORAGE_KEY_INVALID',
          'The local driver deletes a tenant prefix "tenants/<tenant id>/".',
        );
      }
      const directory = insideRoot(prefix);
      let objects: number;
      try {
        const entries = await readdir(directory, { recursive: true, withFileTypes: true });
        objects = entries.filter((entry) => entry.isFile()).length;
      } catch (error) {
        if (isMissing(error)) return 0;
        throw error;
      }
      await rm(insideRoot(join(metaDirectory, prefix)), { recursive: true, force: true });
      await rm(directory, { recursive: true, force: true });
      return objects;
    },

    async close() {},
  };
  return Object.freeze(driver);
}

/**
 * The HMAC'd fields of an upload URL. A declared SHA-256 is appended, so URLs without one keep
 * the same fields and dropping or adding one changes what is signed.
 */
function uploadFields(
  key: string,
  tenant: string,
  expires: number,
  size: number,
  contentType: string,
  sha256: string | undefined,
): (string | number | null)[] {
  const fields: (string | number | null)[] = ['PUT', key, tenant, expires, size, contentType, null];
  if (sha256 !== undefined) fields.push(sha256);
  return fields;
}

function parseRoot(value: unknown): string {
  if (typeof value !== 'string' || value === '') {
    throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'root must be a directory path.');
  }
  return resolve(value);
}

function parseBaseUrl(value: unknown): { baseUrl: string; basePath: string } {
  let url: URL;
  try {
    url = new URL(String(value));
  } catch (error) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'baseUrl must be an absolute http(s) URL.',
      {
        cause: error,
      },
    );
  }
  if (
    (url.protocol !== 'http:' && url.protocol !== 'https:') ||
    url.search !== '' ||
    url.hash !== ''
  ) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'baseUrl must be an http(s) URL without query or fragment.',
    );
  }
  const basePath = url.pathname.replace(/\/+$/, '');
  return { baseUrl: `${url.origin}${basePath}`, basePath };
}

function parseSecret(value: unknown): Buffer {
  const secret =
    typeof value === 'string'
      ? Buffer.from(value, 'utf8')
      : value instanceof Uint8Array
        ? Buffer.from(value)
        : undefined;
  if (secret === undefined || secret.length < 32) {
    throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'secret must be at least 32 bytes.');
  }
  return secret;
}

function isMissing(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}
