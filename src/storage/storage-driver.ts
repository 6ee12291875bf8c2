/**
 * What a storage driver does. Drivers only ever see keys the storage service generated under
 * `tenants/<tenant id>/`; they never build a key from user input.
 */
export interface StorageDriver {
  /** Driver name for logs and the registry (`local`, `s3`). */
  readonly name: string;
  /**
   * A URL the client uploads the object's bytes to with `PUT`, valid until `expiresAt`, bound to
   * the key, the exact size, the content type and (for drivers that can) the tenant.
   */
  signUpload(request: SignedUploadRequest): Promise<SignedUrl>;
  /** A URL the client downloads the object from with `GET`, valid until `expiresAt`. */
  signDownload(request: SignedDownloadRequest): Promise<SignedUrl>;
  /**
   * Stores bytes the server itself produced at `key` (no URL involved): at most and exactly
   * `expected.size` bytes (`TENANTRY_ERR_STORAGE_TOO_LARGE` / `TENANTRY_ERR_STORAGE_REQUEST_INVALID`
   * otherwise), with `expected.contentType`; when `expected.sha256` is given, bytes with another
   * digest throw `TENANTRY_ERR_STORAGE_UPLOAD_MISMATCH` and nothing is stored. Returns the object
   * as {@link StorageDriver.head} would, with the SHA-256 computed on the way.
   */
  writeObject(
    key: string,
    body: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    expected: ObjectExpectation,
  ): Promise<StoredObject>;
  /** The stored object's size, content type and SHA-256 (hex), or `undefined` if absent. */
  head(key: string): Promise<StoredObject | undefined>;
  /** Deletes one object; deleting an absent object succeeds. */
  delete(key: string): Promise<void>;
  /** Deletes every object whose key starts with `prefix`; returns how many were deleted. */
  deletePrefix(prefix: string): Promise<number>;
  /** Releases resources (clients, sockets). */
  close(): Promise<void>;
}

/** What {@link StorageDriver.writeObject} must store. */
export interface ObjectExpectation {
  readonly size: number;
  readonly contentType: string;
  /** Hex SHA-256 the bytes must have. */
  readonly sha256?: string;
}

/** What a driver signs for an upload. */
export interface SignedUploadRequest {
  readonly tenantId: string;
  readonly key: string;
  readonly size: number;
  readonly contentType: string;
  readonly expiresAt: Date;
  /**
   * SHA-256 the client declared for the bytes, 64 lowercase hex digits. When given, the URL binds
   * it and the server refuses a body with another digest (S3: the signed `x-amz-checksum-sha256`
   * header, returned in {@link SignedUrl.headers}; local: the signed `sha256` field), and
   * {@link StorageDriver.head} reports it.
   */
  readonly sha256?: string;
}

/** What a driver signs for a download. */
export interface SignedDownloadRequest {
  readonly tenantId: string;
  readonly key: string;
  readonly expiresAt: Date;
  /** `Content-Disposition` filename the download should carry (already normalised). */
  readonly fileName?: string;
}

/** A pre-signed URL and how to use it. */
export interface SignedUrl {
  readonly url: string;
  readonly method: 'PUT' | 'GET';
  /**
   * Headers the client must send (upload: `content-type`, `content-length`, and
   * `x-amz-checksum-sha256` on S3 when a SHA-256 was declared).
   */
  readonly headers: Readonly<Record<string, string>>;
  readonly expiresAt: Date;
}

/** An object as the driver sees it. */
export interface StoredObject {
  readonly size: number;
  readonly contentType: string | undefined;
  /** SHA-256 of the bytes, hex, when the driver can compute or read it. */
  readonly sha256: string | undefined;
}
