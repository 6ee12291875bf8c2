import { createHash, randomUUID } from 'node:crypto';
import { type Kysely, type RawBuilder, sql } from 'kysely';
import { defaultTenantrySchema, parseIdentifier } from '../config.ts';
import { TenantryError } from '../errors.ts';
import { isUuid } from '../tenant-id.ts';
import { parseContentType } from './content-types.ts';
import { parseFileName } from './file-names.ts';
import { assertKeyInTenant } from './keys.ts';
import type { SignedUrl, StorageDriver, StoredObject } from './storage-driver.ts';

/** The Kysely of an open tenant unit of work, whatever its database type. */
// biome-ignore lint/suspicious/noExplicitAny: storage runs static SQL, independent of the app's tables
export type StorageExecutor = Kysely<any>;

/** Options of {@link createStorage}. */
export interface StorageOptions {
  /** Where the bytes live: {@link createLocalStorageDriver} or an S3-compatible driver. */
  readonly driver: StorageDriver;
  /** Largest file a client may declare, in bytes. */
  readonly maxUploadBytes: number;
  /** How long an upload URL stays valid. @defaultValue 300 */
  readonly uploadUrlTtlSeconds?: number;
  /** How long a download URL stays valid. @defaultValue 300 */
  readonly downloadUrlTtlSeconds?: number;
  /** Content types a client may declare; any well-formed type when omitted. */
  readonly allowedContentTypes?: readonly string[];
  /** Schema of Tenantry's objects. @defaultValue 'tenantry' */
  readonly schema?: string;
}

/** What a client declares when it asks to upload a file. */
export interface UploadRequest {
  /** The user's file name, kept as metadata only (see {@link parseFileName}). */
  readonly fileName: string;
  /** Exact size in bytes. */
  readonly size: number;
  /** Bare lowercase `type/subtype`. */
  readonly contentType: string;
  /** SHA-256 of the bytes (hex); when given, {@link Storage.confirmUpload} verifies it. */
  readonly sha256?: string;
  /** The uploading user. @defaultValue the unit of work's user id */
  readonly uploadedBy?: string;
}

/** Bytes the server itself stores as a file of the current tenant (see {@link Storage.putObject}). */
export interface PutObjectRequest {
  /** The user-facing file name, kept as metadata only (see {@link parseFileName}). */
  readonly fileName: string;
  /** Bare lowercase `type/subtype`. */
  readonly contentType: string;
  /** The whole content; its size and SHA-256 are computed by the server. */
  readonly body: Uint8Array;
  /** The user the file is stored for. @defaultValue the unit of work's user id */
  readonly uploadedBy?: string;
}

/** A file's registry row. */
export interface StoredFile {
  readonly id: string;
  readonly tenantId: string;
  readonly objectKey: string;
  readonly fileName: string;
  readonly sizeBytes: number;
  readonly contentType: string;
  readonly sha256: string | null;
  /**
   * `pending` until confirmed, `uploaded` once usable, `deleted` when confirmation rejected it
   * (`error` holds why). A file deleted by {@link Storage.deleteFile} is no longer found at all.
   */
  readonly status: 'pending' | 'uploaded' | 'deleted';
  /** Why confirmation rejected the upload. */
  readonly error: string | null;
  readonly uploadedBy: string | null;
  readonly driver: string;
  readonly createdAt: Date;
  readonly uploadedAt: Date | null;
  /** When the upload URL expires. */
  readonly expiresAt: Date;
}

/** Bytes and files a tenant stores (uploaded files only). */
export interface StorageUsage {
  readonly files: number;
  readonly bytes: number;
}

/** Tenant-scoped file storage; every function takes the tenant unit of work's `db` first. */
export interface Storage {
  readonly driver: StorageDriver;
  /**
   * Registers a pending file under a server-generated key in the current tenant's prefix and
   * signs an upload URL bound to its exact size and content type.
   */
  requestUpload(
    db: StorageExecutor,
    request: UploadRequest,
  ): Promise<{ readonly fileId: string; readonly upload: SignedUrl }>;
  /**
   * Checks the uploaded object against the request (size, content type, checksum if declared)
   * and returns the file: `uploaded` when it matches; otherwise the object is deleted and the
   * file returned as `deleted` with the reason in `error`. Throws
   * `TENANTRY_ERR_STORAGE_UPLOAD_MISSING` when nothing was uploaded yet (the file stays pending).
   */
  confirmUpload(db: StorageExecutor, fileId: string): Promise<StoredFile>;
  /** Signs a short-lived download URL for an uploaded file of the current tenant. */
  requestDownload(db: StorageExecutor, fileId: string): Promise<SignedUrl>;
  /**
   * Stores bytes the server produced (an export, a generated report) as an uploaded file of the
   * current tenant: registers the row like {@link Storage.requestUpload}, writes the object,
   * verifies its size and content type (and its SHA-256 when the driver reports one) and returns
   * the file `uploaded` with the SHA-256 computed here. When any step fails the object and the row
   * are removed and the error is thrown: no `uploaded` row exists for bytes that were not stored.
   * The object is written before the unit of work commits, so a unit that rolls back afterwards
   * leaves an object without a row under the tenant's prefix.
   */
  putObject(db: StorageExecutor, request: PutObjectRequest): Promise<StoredFile>;
  /**
   * The current tenant's file with this id, whatever its status, except a deleted one
   * (`TENANTRY_ERR_STORAGE_FILE_NOT_FOUND`).
   */
  getFile(db: StorageExecutor, fileId: string): Promise<StoredFile>;
  /**
   * Marks the file deleted in the caller's unit of work: from then on it is not found and not
   * counted. The object is removed later by {@link Storage.purgeDeletedFiles}, once the mark has
   * committed, so a unit of work that rolls back leaves the file intact and downloadable.
   */
  deleteFile(db: StorageExecutor, fileId: string): Promise<void>;
  /**
   * Removes the objects of the current tenant's files that {@link Storage.deleteFile} marked
   * deleted in a committed unit of work, then their rows; returns how many. Run it in its own
   * unit of work (a scheduled job), never in the one that deleted the files.
   */
  purgeDeletedFiles(db: StorageExecutor): Promise<number>;
  /**
   * Whether a signed URL for `key` may still be used in the current tenant: `GET` needs an
   * uploaded file, `PUT` a pending one, neither a deleted one. A serving route checks it after
   * verifying the URL (see the local handler's `authorize`), so deleting or rejecting a file ends
   * its outstanding URLs at once.
   */
  allowsSignedAccess(db: StorageExecutor, method: 'GET' | 'PUT', key: string): Promise<boolean>;
  /** Files and bytes the current tenant stores. */
  storageUsage(db: StorageExecutor): Promise<StorageUsage>;
  /**
   * Removes the current tenant's files that never became usable (pending or rejected) and whose
   * upload URL expired before `olderThan`, objects included; returns how many. Files marked by
   * {@link Storage.deleteFile} are left to {@link Storage.purgeDeletedFiles}. Pass `new Date()`
   * or earlier: a later time would remove files whose URL can still upload.
   */
  removeStalePendingUploads(db: StorageExecutor, olderThan: Date): Promise<number>;
}

interface FileRow {
  id: string;
  tenant_id: string;
  object_key: string;
  file_name: string;
  size_bytes: string;
  content_type: string;
  expected_sha256: string | null;
  sha256: string | null;
  status: 'pending' | 'uploaded' | 'deleted';
  error: string | null;
  uploaded_by: string | null;
  driver: string;
  created_at: Date;
  uploaded_at: Date | null;
  expires_at: Date;
  deleted_at: Date | null;
}

const sha256Pattern = /^[0-9a-f]{64}$/;

/**
 * Tenant-scoped file storage over a driver and the `tenantry.files` registry (install it with
 * `storageMigrationSource()`). Keys are `tenants/<tenant id>/<file id>`, built in SQL from the
 * transaction's tenant and a server-generated id; the caller never names a tenant or a key, and
 * another tenant's file id answers `TENANTRY_ERR_STORAGE_FILE_NOT_FOUND` through RLS.
 *
 * @example
 * ```ts
 * import { createLocalStorageDriver, createStorage } from 'tenantry/storage';
 * const storage = createStorage({ driver, maxUploadBytes: 10 * 1024 * 1024 });
 * const { fileId, upload } = await tenantry.withTenant(tenantId, (db) =>
 *   storage.requestUpload(db, { fileName: 'invoice.pdf', size: 5120, contentType: 'application/pdf' }),
 * );
 * // the client PUTs the bytes to upload.url with upload.headers, then:
 * const file = await tenantry.withTenant(tenantId, (db) => storage.confirmUpload(db, fileId));
 * ```
 */
export function createStorage(options: StorageOptions): Storage {
  const driver = options?.driver;
  if (driver === undefined || typeof driver.signUpload !== 'function') {
    throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'driver must be a StorageDriver.');
  }
  const maxUploadBytes = positiveInteger(options.maxUploadBytes, 'maxUploadBytes');
  const uploadTtlMs =
    positiveInteger(options.uploadUrlTtlSeconds ?? 300, 'uploadUrlTtlSeconds') * 1000;
  const downloadTtlMs =
    positiveInteger(options.downloadUrlTtlSeconds ?? 300, 'downloadUrlTtlSeconds') * 1000;
  const allowed =
    options.allowedContentTypes === undefined
      ? undefined
      : new Set(options.allowedContentTypes.map((type) => parseConfiguredType(type)));
  const schema = parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema');
  const files = sql.id(schema, 'files');
  const currentTenant = sql`${sql.id(schema, 'current_tenant_id')}()`;
  const currentUser = sql`${sql.id(schema, 'current_user_id')}()`;

  async function rows(db: StorageExecutor, query: RawBuilder<FileRow>): Promise<FileRow[]> {
    return (await query.execute(db)).rows;
  }

  async function findFile(
    db: StorageExecutor,
    fileId: string,
    forUpdate = false,
  ): Promise<FileRow> {
    const id = parseFileId(fileId);
    const [row] = await rows(
      db,
      sql<FileRow>`select * from ${files}
        where tenant_id = ${currentTenant} and id = ${id}::uuid ${forUpdate ? sql`for update` : sql``}`,
    );
    if (row === undefined || isDeleted(row)) throw notFound();
    assertKeyInTenant(row.object_key, row.tenant_id);
    return row;
  }

  async function register(
    db: StorageExecutor,
    request: UploadRequest,
    what: string,
  ): Promise<FileRow> {
    const fileName = parseFileName(request?.fileName);
    const size = request.size;
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new TenantryError(
        'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
        'size must be a non-negative integer number of bytes.',
      );
    }
    if (size > maxUploadBytes) {
      throw new TenantryError(
        'TENANTRY_ERR_STORAGE_TOO_LARGE',
        `Files are limited to ${maxUploadBytes} bytes.`,
        { details: { maxUploadBytes } },
      );
    }
    const contentType = parseContentType(request.contentType);
    if (allowed !== undefined && !allowed.has(contentType)) {
      throw new TenantryError(
        'TENANTRY_ERR_STORAGE_TYPE_NOT_ALLOWED',
        'This content type is not allowed.',
        {
          details: { allowedContentTypes: [...allowed] },
        },
      );
    }
    const sha256 = request.sha256 === undefined ? null : request.sha256.toLowerCase();
    if (sha256 !== null && !sha256Pattern.test(sha256)) {
      throw new TenantryError(
        'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
        'sha256 must be 64 hex digits.',
      );
    }
    if (request.uploadedBy !== undefined && !isUuid(request.uploadedBy)) {
      throw new TenantryError('TENANTRY_ERR_STORAGE_REQUEST_INVALID', 'uploadedBy must be a UUID.');
    }
    const fileId = randomUUID();
    const expiresAt = new Date(Date.now() + uploadTtlMs);
    // The key is built here from the transaction's tenant: the caller never names either.
    const [row] = await rows(
      db,
      sql<FileRow>`insert into ${files} (tenant_id, id, object_key, file_name, size_bytes,
          content_type, expected_sha256, uploaded_by, driver, expires_at)
        select ${currentTenant}, ${fileId}::uuid,
               'tenants/' || ${currentTenant}::text || '/' || ${fileId}, ${fileName},
               ${size}::bigint, ${contentType}, ${sha256},
               coalesce(${request.uploadedBy ?? null}::uuid, ${currentUser}), ${driver.name},
               ${expiresAt}::timestamptz
         where ${currentTenant} is not null
        returning *`,
    );
    if (row === undefined) {
      throw new TenantryError(
        'TENANTRY_ERR_CONTEXT_MISSING',
        `${what} needs the db of an open tenant unit of work.`,
      );
    }
    assertKeyInTenant(row.object_key, row.tenant_id);
    return row;
  }

  async function discard(db: StorageExecutor, row: FileRow): Promise<void> {
    // Best effort: the caller gets the error that made the write fail, and a row this cleanup
    // could not delete is still pending (never usable) and removed when its URL has expired.
    await driver.delete(row.object_key).catch(() => undefined);
    await sql`delete from ${files} where tenant_id = ${currentTenant} and id = ${row.id}::uuid`
      .execute(db)
      .catch(() => undefined);
  }

  const storage: Storage = {
    driver,

    async requestUpload(db, request) {
      const row = await register(db, request, 'requestUpload()');
      const upload = await driver.signUpload({
        tenantId: row.tenant_id,
        key: row.object_key,
        size: Number(row.size_bytes),
        contentType: row.content_type,
        expiresAt: row.expires_at,
        ...(row.expected_sha256 === null ? {} : { sha256: row.expected_sha256 }),
      });
      return Object.freeze({ fileId: row.id, upload });
    },

    async confirmUpload(db, fileId) {
      const row = await findFile(db, fileId, true);
      if (row.status !== 'pending') {
        if (row.status === 'uploaded') return toStoredFile(row);
        throw notFound();
      }
      const object = await driver.head(row.object_key);
      if (object === undefined) {
        throw new TenantryError(
          'TENANTRY_ERR_STORAGE_UPLOAD_MISSING',
          'No object was uploaded for this file yet.',
        );
      }
      const problem = mismatch(row, object, row.expected_sha256 !== null);
      if (problem !== undefined) {
        await driver.delete(row.object_key);
        const [rejected] = await rows(
          db,
          sql<FileRow>`update ${files} set status = 'deleted', error = ${problem}
            where id = ${row.id}::uuid returning *`,
        );
        return toStoredFile(rejected ?? row);
      }
      const [uploaded] = await rows(
        db,
        sql<FileRow>`update ${files}
            set status = 'uploaded', sha256 = ${object.sha256 ?? null}, uploaded_at = now()
          where id = ${row.id}::uuid and status = 'pending' returning *`,
      );
      if (uploaded === undefined) throw notFound();
      return toStoredFile(uploaded);
    },

    async putObject(db, request) {
      const body = request?.body;
      if (!(body instanceof Uint8Array)) {
        throw new TenantryError('TENANTRY_ERR_STORAGE_REQUEST_INVALID', 'body must be bytes.');
      }
      const sha256 = createHash('sha256').update(body).digest('hex');
      const row = await register(
        db,
        {
          fileName: request.fileName,
          size: body.byteLength,
          contentType: request.contentType,
          sha256,
          ...(request.uploadedBy === undefined ? {} : { uploadedBy: request.uploadedBy }),
        },
        'putObject()',
      );
      try {
        await driver.writeObject(row.object_key, [body], {
          size: body.byteLength,
          contentType: row.content_type,
          sha256,
        });
        const object = await driver.head(row.object_key);
        const problem =
          object === undefined ? 'the object was not stored' : mismatch(row, object, false);
        if (problem !== undefined) {
          throw new TenantryError(
            'TENANTRY_ERR_STORAGE_UPLOAD_MISMATCH',
            `The stored object does not match: ${problem}.`,
          );
        }
        const [uploaded] = await rows(
          db,
          sql<FileRow>`update ${files}
              set status = 'uploaded', sha256 = ${sha256}, uploaded_at = now()
            where id = ${row.id}::uuid and status = 'pending' returning *`,
        );
        if (uploaded === undefined) throw notFound();
        return toStoredFile(uploaded);
      } catch (error) {
        await discard(db, row);
        throw error;
      }
    },

    async requestDownload(db, fileId) {
      const row = await findFile(db, fileId);
      if (row.status !== 'uploaded') throw notFound();
      return driver.signDownload({
        tenantId: row.tenant_id,
        key: row.object_key,
        expiresAt: new Date(Date.now() + downloadTtlMs),
        fileName: row.file_name,
      });
    },

    async getFile(db, fileId) {
      return toStoredFile(await findFile(db, fileId));
    },

    async deleteFile(db, fileId) {
      const id = parseFileId(fileId);
      // Only the mark: the object goes once it has committed (purgeDeletedFiles), so a rollback
      // of this unit of work never leaves a row whose object is gone. A purge skips marks made at
      // its own transaction's now(), i.e. its own.
      const [row] = await rows(
        db,
        sql<FileRow>`update ${files} set status = 'deleted', deleted_at = now()
          where tenant_id = ${currentTenant} and id = ${id}::uuid and deleted_at is null
          returning *`,
      );
      if (row === undefined) throw notFound();
    },

    async purgeDeletedFiles(db) {
      const marked = await rows(
        db,
        sql<FileRow>`select * from ${files}
          where tenant_id = ${currentTenant} and deleted_at < now()
          for update skip locked`,
      );
      for (const row of marked) {
        assertKeyInTenant(row.object_key, row.tenant_id);
        await driver.delete(row.object_key);
      }
      if (marked.length === 0) return 0;
      const purged = await rows(
        db,
        sql<FileRow>`delete from ${files}
          where tenant_id = ${currentTenant} and id = any(${marked.map((row) => row.id)}::uuid[])
            and deleted_at is not null
          returning *`,
      );
      return purged.length;
    },

    async allowsSignedAccess(db, method, key) {
      if ((method !== 'GET' && method !== 'PUT') || typeof key !== 'string') return false;
      const status = method === 'GET' ? 'uploaded' : 'pending';
      const found = await sql<{ found: number }>`select 1 as found from ${files}
          where tenant_id = ${currentTenant} and object_key = ${key}
            and status = ${status} and deleted_at is null`.execute(db);
      return found.rows.length > 0;
    },

    async storageUsage(db) {
      const result = await sql<{ tenant_id: string | null; files: number; bytes: string }>`
        select ${currentTenant}::text as tenant_id, count(*)::integer as files,
               coalesce(sum(size_bytes), 0)::text as bytes
          from ${files}
         where tenant_id = ${currentTenant} and status = 'uploaded'`.execute(db);
      const usage = result.rows[0];
      if (usage === undefined || usage.tenant_id === null) {
        throw new TenantryError(
          'TENANTRY_ERR_CONTEXT_MISSING',
          'storageUsage() needs the db of an open tenant unit of work.',
        );
      }
      return Object.freeze({ files: usage.files, bytes: Number(usage.bytes) });
    },

    async removeStalePendingUploads(db, olderThan) {
      if (!(olderThan instanceof Date) || !Number.isFinite(olderThan.getTime())) {
        throw new TenantryError(
          'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
          'olderThan must be a valid Date.',
        );
      }
      const removed = await rows(
        db,
        sql<FileRow>`delete from ${files}
          where tenant_id = ${currentTenant} and status <> 'uploaded'
            and deleted_at is null
            and expires_at < ${olderThan}::timestamptz
          returning *`,
      );
      for (const row of removed) {
        assertKeyInTenant(row.object_key, row.tenant_id);
        await driver.delete(row.object_key);
      }
      return removed.length;
    },
  };
  return Object.freeze(storage);
}

function isDeleted(row: FileRow): boolean {
  return row.deleted_at !== null;
}

function mismatch(row: FileRow, object: StoredObject, checkSha256: boolean): string | undefined {
  if (object.size !== Number(row.size_bytes)) {
    return `size ${object.size} differs from the declared ${row.size_bytes}`;
  }
  if (object.contentType !== undefined && object.contentType !== row.content_type) {
    return 'content type differs from the declared one';
  }
  const checksumKnown = checkSha256 || object.sha256 !== undefined;
  if (checksumKnown && row.expected_sha256 !== null && object.sha256 !== row.expected_sha256) {
    return 'SHA-256 differs from the declared one';
  }
  return undefined;
}

function toStoredFile(row: FileRow): StoredFile {
  return Object.freeze({
    id: row.id,
    tenantId: row.tenant_id,
    objectKey: row.object_key,
    fileName: row.file_name,
    sizeBytes: Number(row.size_bytes),
    contentType: row.content_type,
    sha256: row.sha256,
    status: row.status,
    error: row.error,
    uploadedBy: row.uploaded_by,
    driver: row.driver,
    createdAt: row.created_at,
    uploadedAt: row.uploaded_at,
    expiresAt: row.expires_at,
  });
}

function parseFileId(value: unknown): string {
  if (!isUuid(value)) throw notFound();
  return value;
}

function notFound(): TenantryError {
  return new TenantryError('TENANTRY_ERR_STORAGE_FILE_NOT_FOUND', 'No such file.');
}

function positiveInteger(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', `${what} must be a positive integer.`);
  }
  return value;
}

function parseConfiguredType(value: string): string {
  try {
    return parseContentType(value);
  } catch (error) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `allowedContentTypes holds an invalid type ${JSON.stringify(value)}.`,
      { cause: error },
    );
  }
}
