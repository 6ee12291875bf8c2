import { TenantryError } from 'tenantry';
import {
  createLocalStorageDriver,
  createLocalStorageHandler,
  createS3StorageDriver,
  createStorage,
  type LocalStorageDriver,
  type LocalStorageHandler,
  type Storage,
  type StorageDriver,
  type StorageExecutor,
  type StoredFile,
} from 'tenantry/storage';
import type { StorageConfig } from '../config.ts';

/** The app's file storage: the Tenantry storage service and what the app adds around it. */
export interface AppStorage {
  readonly storage: Storage;
  /** Serves the local driver's signed URLs under `/files/*`; `undefined` with S3. */
  readonly localHandler: LocalStorageHandler | undefined;
  /**
   * Stores bytes the server produced (an export) as an uploaded file of the current tenant,
   * through the same request/confirm flow as a client upload.
   */
  putFile(db: StorageExecutor, file: ServerFile): Promise<StoredFile>;
  /** Closes the driver. */
  close(): Promise<void>;
}

/** A file the server writes itself. */
export interface ServerFile {
  readonly fileName: string;
  readonly contentType: string;
  readonly body: Uint8Array;
}

/**
 * Builds the app's storage from its configuration: the local driver (objects under `root`, URLs
 * signed with `secret` and served by the app under `baseUrl`) or an S3-compatible bucket.
 *
 * @example
 * ```ts
 * const files = createAppStorage(config.storage);
 * const file = await tenantry.withTenant(tenantId, (db) =>
 *   files.putFile(db, { fileName: 'a.csv', contentType: 'text/csv', body: Buffer.from('x\n') }),
 * );
 * ```
 */
export function createAppStorage(config: StorageConfig): AppStorage {
  const localDriver: LocalStorageDriver | undefined =
    config.driver === 'local'
      ? createLocalStorageDriver({
          root: config.root,
          baseUrl: config.baseUrl,
          secret: config.secret,
        })
      : undefined;
  const driver: StorageDriver =
    localDriver ??
    (config.driver === 's3'
      ? createS3StorageDriver({
          bucket: config.bucket,
          ...(config.region === undefined ? {} : { region: config.region }),
          ...(config.endpoint === undefined ? {} : { endpoint: config.endpoint }),
          ...(config.forcePathStyle === undefined ? {} : { forcePathStyle: config.forcePathStyle }),
          ...(config.credentials === undefined ? {} : { credentials: config.credentials }),
        })
      : unreachable());
  const storage = createStorage({ driver, maxUploadBytes: config.maxUploadBytes });

  async function writeObject(
    db: StorageExecutor,
    fileId: string,
    upload: { readonly url: string; readonly headers: Readonly<Record<string, string>> },
    file: ServerFile,
  ): Promise<void> {
    if (localDriver !== undefined) {
      // The storage service has no server-side put: the local driver writes the object directly
      // (the key comes from the registry row the service just created in this tenant).
      const { objectKey } = await storage.getFile(db, fileId);
      await localDriver.writeObject(objectKey, [file.body], {
        size: file.body.byteLength,
        contentType: file.contentType,
      });
      return;
    }
    const response = await fetch(upload.url, {
      method: 'PUT',
      headers: upload.headers,
      body: file.body,
    });
    if (!response.ok) {
      throw new TenantryError(
        'TENANTRY_ERR_STORAGE_UPLOAD_MISSING',
        `The object store refused the upload (HTTP ${response.status}).`,
      );
    }
  }

  return Object.freeze({
    storage,
    localHandler: localDriver === undefined ? undefined : createLocalStorageHandler(localDriver),
    async putFile(db: StorageExecutor, file: ServerFile) {
      const { fileId, upload } = await storage.requestUpload(db, {
        fileName: file.fileName,
        size: file.body.byteLength,
        contentType: file.contentType,
      });
      await writeObject(db, fileId, upload, file);
      const stored = await storage.confirmUpload(db, fileId);
      if (stored.status !== 'uploaded') {
        throw new TenantryError(
          'TENANTRY_ERR_STORAGE_UPLOAD_MISMATCH',
          `The stored object does not match: ${stored.error ?? 'unknown reason'}.`,
        );
      }
      return stored;
    },
    close: () => driver.close(),
  });
}

function unreachable(): never {
  throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'Unknown storage driver.');
}
