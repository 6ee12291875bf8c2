import { type Tenantry, TenantryError } from 'tenantry';
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
import type { AppDatabase } from '../database.ts';

/** The app's file storage: the Tenantry storage service and what the app adds around it. */
export interface AppStorage {
  readonly storage: Storage;
  /**
   * Serves the local driver's signed URLs under `/files/*`, checking each verified URL against
   * the file registry in its tenant's transaction on `tenantry`; `undefined` with S3.
   */
  readonly localHandler: ((tenantry: Tenantry<AppDatabase>) => LocalStorageHandler) | undefined;
  /**
   * Stores bytes the server produced (an export) as an uploaded file of the current tenant
   * (`storage.putObject()`).
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

  return Object.freeze({
    storage,
    localHandler:
      localDriver === undefined
        ? undefined
        : (tenantry: Tenantry<AppDatabase>) =>
            createLocalStorageHandler(localDriver, {
              authorize: (url) =>
                tenantry.withTenant(url.tenantId, (db) =>
                  storage.allowsSignedAccess(db, url.method, url.key),
                ),
            }),
    putFile: (db: StorageExecutor, file: ServerFile) => storage.putObject(db, file),
    close: () => driver.close(),
  });
}

function unreachable(): never {
  throw new TenantryError('TENANTRY_ERR_CONFIG_INVALID', 'Unknown storage driver.');
}
