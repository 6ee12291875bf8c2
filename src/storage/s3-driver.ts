import { createHash } from 'node:crypto';
import {
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { TenantryError } from '../errors.ts';
import { assertDriverKeyInTenant, parseDriverKey } from './keys.ts';
import type {
  ObjectExpectation,
  SignedDownloadRequest,
  SignedUploadRequest,
  SignedUrl,
  StorageDriver,
  StoredObject,
} from './storage-driver.ts';

/** Options of {@link createS3StorageDriver}. */
export interface S3StorageDriverOptions {
  /** Bucket holding every tenant's objects (under `tenants/<tenant id>/`). */
  readonly bucket: string;
  /**
   * Signing region.
   * @defaultValue `'us-east-1'`
   */
  readonly region?: string;
  /** Endpoint of an S3-compatible server (MinIO, R2, ...); AWS S3 when omitted. */
  readonly endpoint?: string;
  /**
   * Address the bucket in the path (`http://host/bucket/key`) rather than the host name.
   * @defaultValue `true` when `endpoint` is set, `false` otherwise
   */
  readonly forcePathStyle?: boolean;
  /** Static credentials; the SDK's default provider chain when omitted. */
  readonly credentials?: {
    readonly accessKeyId: string;
    readonly secretAccessKey: string;
    readonly sessionToken?: string;
  };
  /**
   * How long one request to S3 may take before it fails (the SDK then retries it), in
   * milliseconds: a store that accepts connections but never answers must not hold a request,
   * and the database transaction around it, forever.
   * @defaultValue 30000
   */
  readonly requestTimeoutMs?: number;
  /** How long connecting to S3 may take, in milliseconds. @defaultValue 5000 */
  readonly connectionTimeoutMs?: number;
  /**
   * A client to use instead of building one. It must be configured with
   * `requestChecksumCalculation: 'WHEN_REQUIRED'`; the driver does not destroy it on `close()`.
   */
  readonly client?: S3Client;
}

const maxPresignedSeconds = 604_800;
const deleteBatchSize = 1000;
const sha256Hex = /^[0-9a-f]{64}$/;
const sha256Base64 = /^[A-Za-z0-9+/]{43}=$/;
const checksumHeader = 'x-amz-checksum-sha256';

/**
 * A {@link StorageDriver} for AWS S3 and S3-compatible servers, signing URLs with SigV4 (AWS SDK
 * v3 request presigner). Upload URLs are `PUT` URLs whose signature covers the key, the expiry,
 * `content-type` and `content-length`; download URLs are `GET` URLs. Every key goes through
 * `parseDriverKey` (`tenants/<tenant id>/` then plain segments: no `..`, encoding, backslash or
 * control character) and is signed only under `tenants/<request.tenantId>/`; anything else throws
 * `TENANTRY_ERR_STORAGE_KEY_INVALID` before the SDK is called.
 *
 * When the upload request declares `sha256`, the URL also signs an `x-amz-checksum-sha256`
 * header (the digest in base64, returned in `headers`): the client must send it, and S3 refuses
 * a body whose SHA-256 differs and stores the checksum with the object. `head()` asks for it
 * (`ChecksumMode: 'ENABLED'`) and reports it as hex; for an object uploaded without one it
 * falls back to a `sha256` user metadata entry (`x-amz-meta-sha256`, hex), else `undefined`.
 * A browser upload needs the bucket's CORS rules to allow the `x-amz-checksum-sha256` header.
 *
 * @example
 * ```ts
 * import { createS3StorageDriver } from 'tenantry/storage';
 *
 * const driver = createS3StorageDriver({ bucket: 'uploads', region: 'eu-west-1' });
 * const upload = await driver.signUpload({
 *   tenantId,
 *   key: `tenants/${tenantId}/files/${fileId}`,
 *   size: 1024,
 *   contentType: 'application/pdf',
 *   expiresAt: new Date(Date.now() + 5 * 60_000),
 *   sha256: declaredSha256Hex, // optional: S3 then refuses other bytes
 * });
 * // headers: content-type, content-length (and x-amz-checksum-sha256 when sha256 was given)
 * await fetch(upload.url, { method: upload.method, headers: upload.headers, body });
 * ```
 */
export function createS3StorageDriver(options: S3StorageDriverOptions): StorageDriver {
  if (typeof options.bucket !== 'string' || options.bucket.length === 0) {
    throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'S3 storage driver needs a bucket.');
  }
  const bucket = options.bucket;
  const ownsClient = options.client === undefined;
  const client =
    options.client ??
    new S3Client({
      region: options.region ?? 'us-east-1',
      ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }),
      forcePathStyle: options.forcePathStyle ?? options.endpoint !== undefined,
      // A copy: the SDK writes bookkeeping onto the credentials object it is given.
      ...(options.credentials === undefined ? {} : { credentials: { ...options.credentials } }),
      // The default (WHEN_SUPPORTED) makes the presigner put a CRC32 of the empty body into
      // PUT URLs, so S3 would refuse every upload of real bytes.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      // The SDK's defaults wait forever for a connection and for an answer.
      requestHandler: {
        connectionTimeout: options.connectionTimeoutMs ?? 5_000,
        requestTimeout: options.requestTimeoutMs ?? 30_000,
        throwOnRequestTimeout: true,
      },
    });
  let checksumChecked = ownsClient ? Promise.resolve() : undefined;

  function ensureChecksumConfig(): Promise<void> {
    checksumChecked ??= (async () => {
      const mode = await client.config.requestChecksumCalculation();
      if (mode !== 'WHEN_REQUIRED') {
        throw new TenantryError(
          'TENANTRY_ERR_CONFIG_INVALID',
          `The S3 client passed to the storage driver has requestChecksumCalculation '${mode}'; it must be 'WHEN_REQUIRED' or signed uploads carry an empty-body checksum.`,
        );
      }
    })();
    return checksumChecked;
  }

  return Object.freeze({
    name: 's3',

    async signUpload(request: SignedUploadRequest): Promise<SignedUrl> {
      assertDriverKeyInTenant(request.key, request.tenantId);
      if (!Number.isSafeInteger(request.size) || request.size < 0) {
        throw new TenantryError(
          'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
          'Upload size must be a non-negative integer.',
        );
      }
      if (!isHeaderValue(request.contentType)) {
        throw new TenantryError(
          'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
          'Upload content type must be a non-empty printable header value.',
        );
      }
      const checksum = request.sha256 === undefined ? undefined : checksumOf(request.sha256);
      await ensureChecksumConfig();
      const timing = presignTiming(request.expiresAt);
      const signed = ['content-length', 'content-type', 'host'];
      if (checksum !== undefined) signed.push(checksumHeader);
      const url = await getSignedUrl(
        client,
        new PutObjectCommand({
          Bucket: bucket,
          Key: request.key,
          ContentType: request.contentType,
          ContentLength: request.size,
          ...(checksum === undefined ? {} : { ChecksumSHA256: checksum }),
        }),
        {
          ...timing.options,
          signableHeaders: new Set(signed),
          // A signed header the client must send (S3 checks the body against it), never a query
          // parameter that a URL could carry without the client knowing.
          unhoistableHeaders: new Set([checksumHeader]),
        },
      );
      assertSignedHeaders(url, signed);
      return Object.freeze({
        url,
        method: 'PUT' as const,
        headers: Object.freeze({
          'content-type': request.contentType,
          'content-length': String(request.size),
          ...(checksum === undefined ? {} : { [checksumHeader]: checksum }),
        }),
        expiresAt: timing.expiresAt,
      });
    },

    async signDownload(request: SignedDownloadRequest): Promise<SignedUrl> {
      assertDriverKeyInTenant(request.key, request.tenantId);
      const timing = presignTiming(request.expiresAt);
      const url = await getSignedUrl(
        client,
        new GetObjectCommand({
          Bucket: bucket,
          Key: request.key,
          ...(request.fileName === undefined
            ? {}
            : { ResponseContentDisposition: contentDisposition(request.fileName) }),
        }),
        timing.options,
      );
      assertSignedHeaders(url, ['host']);
      return Object.freeze({
        url,
        method: 'GET' as const,
        headers: Object.freeze({}),
        expiresAt: timing.expiresAt,
      });
    },

    async head(key: string): Promise<StoredObject | undefined> {
      parseDriverKey(key);
      try {
        const output = await client.send(
          new HeadObjectCommand({ Bucket: bucket, Key: key, ChecksumMode: 'ENABLED' }),
        );
        const metadata = output.Metadata?.sha256?.toLowerCase();
        return Object.freeze({
          size: output.ContentLength ?? 0,
          contentType: output.ContentType,
          sha256:
            hexOfChecksum(output.ChecksumSHA256) ??
            (metadata !== undefined && sha256Hex.test(metadata) ? metadata : undefined),
        });
      } catch (error) {
        if (isNotFound(error)) return undefined;
        throw unavailable(error);
      }
    },

    async writeObject(
      key: string,
      body: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
      expected: ObjectExpectation,
    ): Promise<StoredObject> {
      parseDriverKey(key);
      if (!Number.isSafeInteger(expected.size) || expected.size < 0) {
        throw new TenantryError(
          'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
          'size must be a non-negative integer number of bytes.',
        );
      }
      if (!isHeaderValue(expected.contentType)) {
        throw new TenantryError(
          'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
          'Content type must be a non-empty printable header value.',
        );
      }
      const declared = expected.sha256 === undefined ? undefined : checksumOf(expected.sha256);
      // The digest must be known before the request starts (S3 checks the body against it), so
      // the bytes are gathered first, bounded by the declared size.
      const chunks: Uint8Array[] = [];
      const hash = createHash('sha256');
      let size = 0;
      for await (const chunk of body) {
        size += chunk.byteLength;
        if (size > expected.size) {
          throw new TenantryError(
            'TENANTRY_ERR_STORAGE_TOO_LARGE',
            'The body is larger than the declared size.',
          );
        }
        hash.update(chunk);
        chunks.push(chunk);
      }
      if (size !== expected.size) {
        throw new TenantryError(
          'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
          'The body is shorter than the declared size.',
        );
      }
      const digest = hash.digest();
      const checksum = digest.toString('base64');
      if (declared !== undefined && declared !== checksum) {
        throw new TenantryError(
          'TENANTRY_ERR_STORAGE_UPLOAD_MISMATCH',
          'The body does not have the declared SHA-256.',
        );
      }
      await reachStore(
        client.send(
          new PutObjectCommand({
            Bucket: bucket,
            Key: key,
            Body: Buffer.concat(chunks),
            ContentType: expected.contentType,
            ContentLength: size,
            ChecksumSHA256: checksum,
          }),
        ),
      );
      return Object.freeze({
        size,
        contentType: expected.contentType,
        sha256: digest.toString('hex'),
      });
    },

    async delete(key: string): Promise<void> {
      parseDriverKey(key);
      await reachStore(client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key })));
    },

    async deletePrefix(prefix: string): Promise<number> {
      assertStoragePrefix(prefix);
      let deleted = 0;
      let continuationToken: string | undefined;
      do {
        const page = await reachStore(
          client.send(
            new ListObjectsV2Command({
              Bucket: bucket,
              Prefix: prefix,
              MaxKeys: deleteBatchSize,
              ContinuationToken: continuationToken,
            }),
          ),
        );
        const keys = (page.Contents ?? [])
          .map((object) => object.Key)
          .filter((key): key is string => key?.startsWith(prefix) === true);
        if (keys.length > 0) {
          const result = await reachStore(
            client.send(
              new DeleteObjectsCommand({
                Bucket: bucket,
                Delete: { Objects: keys.map((Key) => ({ Key })), Quiet: true },
              }),
            ),
          );
          const failure = result.Errors?.[0];
          if (failure !== undefined) {
            throw new Error(
              `S3 refused to delete ${result.Errors?.length} object(s) under ${prefix}: ${failure.Code} ${failure.Message}`,
            );
          }
          deleted += keys.length;
        }
        continuationToken = page.IsTruncated === true ? page.NextContinuationToken : undefined;
      } while (continuationToken !== undefined);
      return deleted;
    },

    async close(): Promise<void> {
      if (ownsClient) client.destroy();
    },
  });
}

function presignTiming(expiresAt: Date): {
  options: { signingDate: Date; expiresIn: number };
  expiresAt: Date;
} {
  const expiresAtMs = expiresAt instanceof Date ? expiresAt.getTime() : Number.NaN;
  // SigV4 dates have whole seconds: sign at the current second and round the lifetime down, so a
  // URL never outlives the expiry the caller asked for.
  const signingMs = Math.floor(Date.now() / 1000) * 1000;
  const expiresIn = Math.floor((expiresAtMs - signingMs) / 1000);
  if (!Number.isFinite(expiresAtMs) || expiresIn < 1 || expiresIn > maxPresignedSeconds) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `A signed URL must expire between 1 second and 7 days from now; got ${String(expiresAt)}.`,
    );
  }
  return {
    options: { signingDate: new Date(signingMs), expiresIn },
    expiresAt: new Date(signingMs + expiresIn * 1000),
  };
}

const tenantPrefixPattern =
  /^tenants\/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\/$/;

function assertStoragePrefix(prefix: string): void {
  // At least `tenants/<tenant id>/`: a prefix such as `tenants/` or `tenants/a` would reach
  // other tenants' objects.
  if (typeof prefix === 'string' && tenantPrefixPattern.test(prefix)) return;
  if (typeof prefix !== 'string' || !prefix.endsWith('/')) {
    throw new TenantryError(
      'TENANTRY_ERR_STORAGE_KEY_INVALID',
      'S3 storage driver deletes only under a prefix of the form tenants/<tenant id>/.',
    );
  }
  parseDriverKey(prefix.slice(0, -1));
}

function assertSignedHeaders(url: string, expected: readonly string[]): void {
  const signed = new URL(url).searchParams.get('X-Amz-SignedHeaders')?.split(';') ?? [];
  const hoistedChecksum = [...new URL(url).searchParams.keys()].some((name) =>
    name.toLowerCase().startsWith('x-amz-checksum-'),
  );
  if (hoistedChecksum || expected.some((header) => !signed.includes(header))) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `S3 presigner produced a URL that does not bind ${expected.join(', ')} or carries a body checksum.`,
    );
  }
}

function checksumOf(sha256: string): string {
  if (typeof sha256 !== 'string' || !sha256Hex.test(sha256)) {
    throw new TenantryError(
      'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
      'Upload sha256 must be 64 lowercase hex digits.',
    );
  }
  return Buffer.from(sha256, 'hex').toString('base64');
}

/** The hex digest of a full-object `ChecksumSHA256`; a multipart composite (`…-N`) is not one. */
function hexOfChecksum(checksum: string | undefined): string | undefined {
  if (checksum === undefined || !sha256Base64.test(checksum)) return undefined;
  return Buffer.from(checksum, 'base64').toString('hex');
}

function isHeaderValue(value: string): boolean {
  return typeof value === 'string' && /^[\u0021-\u007e][\u0020-\u007e]*$/.test(value);
}

function contentDisposition(fileName: string): string {
  const fallback = fileName.replace(/[^\u0020-\u007e]|["\\]/g, '_');
  return `attachment; filename="${fallback}"; filename*=UTF-8''${encodeRfc5987(fileName)}`;
}

function encodeRfc5987(value: string): string {
  return encodeURIComponent(value).replace(
    /['()*]/g,
    (character) => `%${character.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/** A request to the store, its failure mapped by {@link unavailable}. */
function reachStore<T>(request: Promise<T>): Promise<T> {
  return request.catch((error: unknown) => {
    throw unavailable(error);
  });
}

/**
 * A request that got no answer (refused, reset, timed out) or a 5xx or throttling answer means
 * the store is unavailable: `TENANTRY_ERR_STORAGE_UNAVAILABLE` (503, retried by jobs), the cause
 * kept for the logs and its text (addresses, bucket names) never shown to clients. S3's other
 * answers are returned unchanged.
 */
function unavailable(error: unknown): unknown {
  if (error instanceof TenantryError) return error;
  if (error instanceof S3ServiceException) {
    const status = error.$metadata.httpStatusCode;
    if (status !== undefined && status < 500 && status !== 429) return error;
  }
  return new TenantryError(
    'TENANTRY_ERR_STORAGE_UNAVAILABLE',
    'The file store is unavailable; try again shortly.',
    { cause: error },
  );
}

function isNotFound(error: unknown): boolean {
  return (
    error instanceof S3ServiceException &&
    (error.name === 'NotFound' ||
      error.name === 'NoSuchKey' ||
      error.$metadata.httpStatusCode === 404)
  );
}
