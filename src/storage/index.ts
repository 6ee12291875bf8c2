export { parseContentType } from './content-types.ts';
export { maxFileNameLength, parseFileName } from './file-names.ts';
export {
  assertDriverKeyInTenant,
  assertKeyInTenant,
  createObjectKey,
  type ObjectKeyParts,
  parseDriverKey,
  parseObjectKey,
  tenantKeyPrefix,
} from './keys.ts';
export {
  createLocalStorageDriver,
  type LocalObjectReader,
  type LocalStorageDriver,
  type LocalStorageDriverOptions,
  type VerifiedStorageUrl,
} from './local-driver.ts';
export {
  createLocalStorageHandler,
  type LocalStorageHandler,
  type LocalStorageHandlerOptions,
} from './local-handler.ts';
export { storageMigrationSource, storageMigrationsDirectory } from './migration-source.ts';
export { createS3StorageDriver, type S3StorageDriverOptions } from './s3-driver.ts';
export type {
  ObjectExpectation,
  SignedDownloadRequest,
  SignedUploadRequest,
  SignedUrl,
  StorageDriver,
  StoredObject,
} from './storage-driver.ts';
export {
  createStorage,
  type PutObjectRequest,
  type Storage,
  type StorageExecutor,
  type StorageOptions,
  type StorageUsage,
  type StoredFile,
  type UploadRequest,
} from './storage-service.ts';
