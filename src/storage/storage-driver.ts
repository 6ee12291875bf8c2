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
  /** The stored object's size, content type and SHA-256 (hex), or `undefined` if absent. */
  head(key: string): Promise<StoredObject | undefined>;
  /** Deletes one object; deleting an absent object succeeds. */
  delete(key: string): Promise<void>;
  /** Deletes every object whose key starts with `prefix`; returns how many were deleted. */
  deletePrefix(prefix: string): Promise<number>;
  /** Releases resources (clients, sockets). */
  close(): Promise<void>;
}

/** What a driver signs for an upload. */
export interface SignedUploadRequest {
  readonly tenantId: string;
  readonly key: string;
  readonly size: number;
  readonly contentType: string;
  readonly expiresAt: Date;
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
  /** Headers the client must send (upload: `content-type`, `content-length`). */
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
