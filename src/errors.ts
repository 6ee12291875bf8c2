/**
 * Every error Tenantry raises on purpose: its stable code, HTTP status and meaning.
 *
 * `docs/reference/error-codes.md` documents this table; a test keeps the two in sync.
 *
 * @example
 * ```ts
 * import { errorCodes } from 'tenantry';
 * console.log(errorCodes.TENANTRY_ERR_CONTEXT_MISSING.status); // 500
 * ```
 */
export const errorCodes = Object.freeze({
  TENANTRY_ERR_CONFIG_INVALID: {
    status: 500,
    title: 'Invalid Tenantry configuration',
  },
  TENANTRY_ERR_TENANT_ID_INVALID: {
    status: 400,
    title: 'Tenant id is not a valid UUID',
  },
  TENANTRY_ERR_USER_ID_INVALID: {
    status: 400,
    title: 'User id is not a valid UUID',
  },
  TENANTRY_ERR_CONTEXT_MISSING: {
    status: 500,
    title: 'Tenant table queried outside a tenant context',
  },
  TENANTRY_ERR_JOB_INVALID: {
    status: 500,
    title: 'Job definition, payload or enqueue options are invalid',
  },
  TENANTRY_ERR_JOB_NOT_FOUND: {
    status: 404,
    title: 'No such job',
  },
  TENANTRY_ERR_CONTEXT_MISMATCH: {
    status: 500,
    title: 'Nested unit of work names another tenant',
  },
  TENANTRY_ERR_GUARD_TENANT_MISMATCH: {
    status: 403,
    title: 'Query names a tenant other than the current one',
  },
  TENANTRY_ERR_GUARD_UNSUPPORTED_QUERY: {
    status: 500,
    title: 'Query shape the tenant guard cannot scope',
  },
  TENANTRY_ERR_STREAMING_UNSUPPORTED: {
    status: 500,
    title: 'A one-shot unit of work cannot stream',
  },
  TENANTRY_ERR_STREAM_OPEN: {
    status: 500,
    title: 'Query on a unit of work while its stream is open',
  },
  TENANTRY_ERR_ONE_SHOT_SECOND_QUERY: {
    status: 500,
    title: 'A one-shot unit of work runs exactly one query',
  },
  TENANTRY_ERR_UNIT_OF_WORK_CLOSED: {
    status: 500,
    title: 'Executor used after its unit of work ended',
  },
  TENANTRY_ERR_TRANSACTION_ROLLED_BACK: {
    status: 500,
    title: 'Transaction was rolled back by the server',
  },
  TENANTRY_ERR_DB_UNAVAILABLE: {
    status: 503,
    title: 'Database unavailable',
  },
  TENANTRY_ERR_DB_CONFLICT: {
    status: 409,
    title: 'Conflicting row already exists',
  },
  TENANTRY_ERR_DB_NOT_FOUND: {
    status: 404,
    title: 'Not found',
  },
  TENANTRY_ERR_DB_INVALID_REFERENCE: {
    status: 422,
    title: 'Referenced row does not exist',
  },
  TENANTRY_ERR_DB_STILL_REFERENCED: {
    status: 409,
    title: 'Row still referenced by other rows',
  },
  TENANTRY_ERR_DB_INVALID_VALUE: {
    status: 422,
    title: 'Value rejected by the database',
  },
  TENANTRY_ERR_DB_FORBIDDEN: {
    status: 403,
    title: 'Row not accessible in this tenant',
  },
  TENANTRY_ERR_DB_TIMEOUT: {
    status: 503,
    title: 'Statement timed out',
  },
  TENANTRY_ERR_DB_SERIALIZATION: {
    status: 503,
    title: 'Transaction conflicted with a concurrent one; retry',
  },
  TENANTRY_ERR_DB_QUERY_FAILED: {
    status: 500,
    title: 'Database query failed',
  },
  TENANTRY_ERR_EMBEDDED_START_FAILED: {
    status: 500,
    title: 'Embedded PostgreSQL failed to start',
  },
  TENANTRY_ERR_EMBEDDED_PORT_IN_USE: {
    status: 500,
    title: 'Embedded PostgreSQL port already in use',
  },
  TENANTRY_ERR_EMBEDDED_DATA_DIR_LOCKED: {
    status: 500,
    title: 'Embedded PostgreSQL data directory is used by another server',
  },
  TENANTRY_ERR_SERVER_VERSION_UNSUPPORTED: {
    status: 500,
    title: 'PostgreSQL server version unsupported',
  },
  TENANTRY_ERR_MIGRATION_FAILED: {
    status: 500,
    title: 'Migration failed',
  },
  TENANTRY_ERR_MIGRATION_CHANGED: {
    status: 500,
    title: 'An applied migration file was changed',
  },
  TENANTRY_ERR_MIGRATION_INVALID_FILE: {
    status: 500,
    title: 'Migration file name or content invalid',
  },
  TENANTRY_ERR_BOOTSTRAP_FAILED: {
    status: 500,
    title: 'Creating roles or database failed',
  },
  TENANTRY_ERR_AUTH_REQUIRED: {
    status: 401,
    title: 'Credentials required',
  },
  TENANTRY_ERR_AUTH_TOKEN_INVALID: {
    status: 401,
    title: 'Access token rejected',
  },
  TENANTRY_ERR_AUTH_TOKEN_EXPIRED: {
    status: 401,
    title: 'Access token expired or not yet valid',
  },
  TENANTRY_ERR_AUTH_CLAIM_INVALID: {
    status: 401,
    title: 'Tenant or user claim missing or malformed',
  },
  TENANTRY_ERR_AUTH_KEYS_UNAVAILABLE: {
    status: 503,
    title: "Identity provider's signing keys unavailable",
  },
  TENANTRY_ERR_AUTH_API_KEY_INVALID: {
    status: 401,
    title: 'API key rejected',
  },
  TENANTRY_ERR_AUTH_API_KEY_REVOKED: {
    status: 401,
    title: 'API key revoked or expired',
  },
  TENANTRY_ERR_AUTH_HEADER_UNTRUSTED: {
    status: 401,
    title: 'Trusted tenant header sent by an untrusted caller',
  },
  TENANTRY_ERR_AUTH_INSUFFICIENT_SCOPE: {
    status: 403,
    title: 'Credential lacks the scope this route requires',
  },
  TENANTRY_ERR_AUTH_FORBIDDEN: {
    status: 403,
    title: 'Role not allowed to perform this action',
  },
  TENANTRY_ERR_TENANT_UNIDENTIFIED: {
    status: 400,
    title: 'No tenant identified for a tenant route',
  },
  TENANTRY_ERR_TENANT_MISMATCH: {
    status: 403,
    title: 'Identification strategies named different tenants',
  },
  TENANTRY_ERR_TENANT_NOT_FOUND: {
    status: 404,
    title: 'Tenant not found',
  },
  TENANTRY_ERR_TENANT_SUSPENDED: {
    status: 403,
    title: 'Tenant suspended',
  },
  TENANTRY_ERR_TENANT_DELETED: {
    status: 410,
    title: 'Tenant deleted',
  },
  TENANTRY_ERR_TENANT_MOVING: {
    status: 503,
    title: 'Tenant is being moved; retry shortly',
  },
  TENANTRY_ERR_TENANT_SLUG_INVALID: {
    status: 400,
    title: 'Tenant slug invalid or reserved',
  },
  TENANTRY_ERR_TENANT_SLUG_TAKEN: {
    status: 409,
    title: 'Tenant slug already taken',
  },
  TENANTRY_ERR_HTTP_BAD_REQUEST: {
    status: 400,
    title: 'Malformed request',
  },
  TENANTRY_ERR_HTTP_VALIDATION: {
    status: 400,
    title: 'Request failed validation',
  },
  TENANTRY_ERR_HTTP_NOT_FOUND: {
    status: 404,
    title: 'Not found',
  },
  TENANTRY_ERR_HTTP_METHOD_NOT_ALLOWED: {
    status: 405,
    title: 'Method not allowed',
  },
  TENANTRY_ERR_HTTP_PAYLOAD_TOO_LARGE: {
    status: 413,
    title: 'Request body too large',
  },
  TENANTRY_ERR_HTTP_UNSUPPORTED_MEDIA_TYPE: {
    status: 415,
    title: 'Unsupported content type',
  },
  TENANTRY_ERR_HTTP_PRECONDITION_FAILED: {
    status: 412,
    title: 'If-Match does not match the current version',
  },
  TENANTRY_ERR_HTTP_PRECONDITION_REQUIRED: {
    status: 428,
    title: 'If-Match header required',
  },
  TENANTRY_ERR_HTTP_IDEMPOTENCY_KEY_INVALID: {
    status: 400,
    title: 'Idempotency-Key header malformed',
  },
  TENANTRY_ERR_HTTP_IDEMPOTENCY_KEY_REUSED: {
    status: 422,
    title: 'Idempotency key reused with a different request',
  },
  TENANTRY_ERR_HTTP_INTERNAL: {
    status: 500,
    title: 'Internal server error',
  },
  TENANTRY_ERR_WEBHOOK_SIGNATURE_INVALID: {
    status: 401,
    title: 'Webhook signature missing, stale or wrong',
  },
  TENANTRY_ERR_QUOTA_EXCEEDED: {
    status: 402,
    title: 'Plan limit reached',
  },
  TENANTRY_ERR_RATE_LIMITED: {
    status: 429,
    title: 'Too many requests',
  },
  TENANTRY_ERR_USAGE_INVALID: {
    status: 400,
    title: 'Usage request invalid',
  },
  TENANTRY_ERR_PLAN_NOT_FOUND: {
    status: 404,
    title: 'Plan not found',
  },
  TENANTRY_ERR_WEBHOOK_INVALID: {
    status: 400,
    title: 'Webhook endpoint, secret, filter or option invalid',
  },
  TENANTRY_ERR_WEBHOOK_NOT_FOUND: {
    status: 404,
    title: 'No such webhook endpoint or delivery',
  },
  TENANTRY_ERR_PARTITION_LAYOUT_INVALID: {
    status: 400,
    title: 'Table is not partitioned by tenant',
  },
  TENANTRY_ERR_PARTITION_EXISTS: {
    status: 409,
    title: 'Dedicated partition state conflicts',
  },
  TENANTRY_ERR_PARTITION_VERIFY_FAILED: {
    status: 500,
    title: 'Partition move verification failed',
  },
  TENANTRY_ERR_TENANT_STATE_CONFLICT: {
    status: 409,
    title: 'Tenant status does not allow this change',
  },
  TENANTRY_ERR_TENANT_INVALID: {
    status: 400,
    title: 'Tenant name or lifecycle option invalid',
  },
  TENANTRY_ERR_TENANT_ERASURE_INCOMPLETE: {
    status: 500,
    title: 'Erasure still found tenant data; run it again',
  },
  TENANTRY_ERR_STORAGE_UNAVAILABLE: {
    status: 503,
    title: 'Storage unavailable',
  },
  TENANTRY_ERR_TENANT_MOVE_VERIFY_FAILED: {
    status: 500,
    title: 'Tenant move verification failed',
  },
  TENANTRY_ERR_PLAN_INVALID: {
    status: 400,
    title: 'Plan definition invalid',
  },
  TENANTRY_ERR_STORAGE_NAME_INVALID: {
    status: 400,
    title: 'File name invalid',
  },
  TENANTRY_ERR_STORAGE_KEY_INVALID: {
    status: 400,
    title: 'Object key invalid or outside the tenant prefix',
  },
  TENANTRY_ERR_STORAGE_REQUEST_INVALID: {
    status: 400,
    title: 'Upload request invalid',
  },
  TENANTRY_ERR_STORAGE_TOO_LARGE: {
    status: 413,
    title: 'File larger than allowed',
  },
  TENANTRY_ERR_STORAGE_TYPE_NOT_ALLOWED: {
    status: 415,
    title: 'Content type not allowed',
  },
  TENANTRY_ERR_STORAGE_FILE_NOT_FOUND: {
    status: 404,
    title: 'No such file',
  },
  TENANTRY_ERR_STORAGE_URL_INVALID: {
    status: 403,
    title: 'Storage URL invalid, tampered with or used with the wrong method',
  },
  TENANTRY_ERR_STORAGE_URL_EXPIRED: {
    status: 410,
    title: 'Storage URL expired',
  },
  TENANTRY_ERR_STORAGE_OBJECT_EXISTS: {
    status: 409,
    title: 'Object already uploaded',
  },
  TENANTRY_ERR_STORAGE_UPLOAD_MISSING: {
    status: 409,
    title: 'Upload not received',
  },
  TENANTRY_ERR_STORAGE_UPLOAD_MISMATCH: {
    status: 422,
    title: 'Uploaded object does not match the request',
  },
} as const);

/** A stable Tenantry error code such as `TENANTRY_ERR_CONTEXT_MISSING`. */
export type TenantryErrorCode = keyof typeof errorCodes;

/** Extra fields carried by a {@link TenantryError}. */
export interface TenantryErrorOptions {
  /** The underlying error; always preserved. */
  cause?: unknown;
  /** Structured, client-safe details (never SQL, never another tenant's data). */
  details?: Readonly<Record<string, unknown>>;
}

/**
 * The one error class Tenantry throws: a stable `code`, an HTTP `status` and the `cause`.
 *
 * @example
 * ```ts
 * import { TenantryError, isTenantryError } from 'tenantry';
 * try {
 *   await tenantry.withTenant('not-a-uuid', async () => {});
 * } catch (error) {
 *   if (isTenantryError(error)) console.log(error.code); // TENANTRY_ERR_TENANT_ID_INVALID
 * }
 * ```
 */
export class TenantryError extends Error {
  readonly code: TenantryErrorCode;
  readonly status: number;
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(code: TenantryErrorCode, message: string, options: TenantryErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TenantryError';
    this.code = code;
    this.status = errorCodes[code].status;
    this.details = options.details;
  }
}

/**
 * Tells whether a value is a {@link TenantryError}, optionally with a given code.
 *
 * @example
 * ```ts
 * if (isTenantryError(error, 'TENANTRY_ERR_DB_CONFLICT')) reply.code(409);
 * ```
 */
export function isTenantryError(value: unknown, code?: TenantryErrorCode): value is TenantryError {
  return value instanceof TenantryError && (code === undefined || value.code === code);
}
