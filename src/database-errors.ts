import pg from 'pg';
import { TenantryError, type TenantryErrorCode } from './errors.ts';

interface SqlStateRule {
  readonly code: TenantryErrorCode;
  readonly message: string;
  /** Whether the whole unit of work may be run again after a rollback. */
  readonly retryable: boolean;
}

const unavailable: SqlStateRule = {
  code: 'TENANTRY_ERR_DB_UNAVAILABLE',
  message: 'The database is unavailable; try again shortly.',
  retryable: false,
};
const invalidValue: SqlStateRule = {
  code: 'TENANTRY_ERR_DB_INVALID_VALUE',
  message: 'A value was rejected by the database.',
  retryable: false,
};

const queryFailed: SqlStateRule = {
  code: 'TENANTRY_ERR_DB_QUERY_FAILED',
  message: 'The database rejected the query.',
  retryable: false,
};
const conflict: SqlStateRule = {
  code: 'TENANTRY_ERR_DB_CONFLICT',
  message: 'A row with the same unique value already exists.',
  retryable: false,
};
const invalidReference: SqlStateRule = {
  code: 'TENANTRY_ERR_DB_INVALID_REFERENCE',
  message: 'A referenced row does not exist.',
  retryable: false,
};
const stillReferenced: SqlStateRule = {
  code: 'TENANTRY_ERR_DB_STILL_REFERENCED',
  message: 'The row is still referenced by other rows; remove those first.',
  retryable: false,
};
const forbidden: SqlStateRule = {
  code: 'TENANTRY_ERR_DB_FORBIDDEN',
  message: 'The row is not accessible in this tenant.',
  retryable: false,
};
const timeout: SqlStateRule = {
  code: 'TENANTRY_ERR_DB_TIMEOUT',
  message: 'The statement took too long and was cancelled.',
  retryable: false,
};

/**
 * The one table of SQLSTATEs Tenantry treats specially. Messages never echo the server's text,
 * which can name constraints, columns or another tenant's values.
 */
const serialization = (message: string): SqlStateRule => ({
  code: 'TENANTRY_ERR_DB_SERIALIZATION',
  message,
  retryable: true,
});

const sqlStateRules: ReadonlyMap<string, SqlStateRule> = new Map([
  // A tenant move's write fence (tenantry/placement): the tenant's writes wait out the hold.
  [
    'TM001',
    {
      code: 'TENANTRY_ERR_TENANT_MOVING',
      message: 'This workspace is being moved; try again in a few seconds.',
      retryable: false,
    },
  ],
  ['40001', serialization('The transaction conflicted with a concurrent one.')],
  ['40P01', serialization('The transaction was chosen as a deadlock victim.')],
  // Raised when DDL changed the result type of a prepared statement ("cached plan must not
  // change result type"); the failed statement is forgotten, so a re-run prepares it afresh.
  ['0A000', { ...queryFailed, retryable: true }],
  ['23505', conflict],
  ['23503', invalidReference],
  ['23001', stillReferenced],
  ['42501', forbidden],
  ['23502', invalidValue],
  ['23514', invalidValue],
  ['22P02', invalidValue],
  ['22001', invalidValue],
  ['22003', invalidValue],
  ['22007', invalidValue],
  ['22008', invalidValue],
  ['22012', invalidValue],
  ['22021', invalidValue],
  // untranslatable_character: a \u0000 in a jsonb value, or a character the encoding lacks.
  ['22P05', invalidValue],
  ['22023', invalidValue],
  ['57014', timeout],
  ['53300', unavailable],
  ['57P01', unavailable],
  ['57P02', unavailable],
  ['57P03', unavailable],
  ['08000', unavailable],
  ['08001', unavailable],
  ['08003', unavailable],
  ['08004', unavailable],
  ['08006', unavailable],
]);

/** Raised by `tenantry.apply_usage()` when a consumption would pass a limit. */
const quotaExceededSqlState = 'TQ001';

function quotaExceeded(error: pg.DatabaseError): TenantryError {
  let parsed: Record<string, unknown> = {};
  try {
    const detail: unknown = JSON.parse(error.detail ?? '{}');
    if (typeof detail === 'object' && detail !== null) parsed = detail as Record<string, unknown>;
  } catch {
    // A detail that is not Tenantry's JSON: the error keeps its code without numbers.
  }
  const metric = typeof parsed.metric === 'string' ? parsed.metric : undefined;
  const number = (value: unknown) => (typeof value === 'number' ? value : null);
  return new TenantryError(
    'TENANTRY_ERR_QUOTA_EXCEEDED',
    metric === undefined
      ? 'A limit of your plan has been reached.'
      : `The ${metric} limit of your plan has been reached.`,
    {
      cause: error,
      details: {
        sqlState: quotaExceededSqlState,
        metric: metric ?? null,
        limit: number(parsed.limit),
        used: number(parsed.used),
        requested: number(parsed.requested),
      },
    },
  );
}

const networkErrorCodes = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EHOSTUNREACH',
]);

/**
 * Converts an error from `pg` into a {@link TenantryError} through the SQLSTATE table; other
 * errors (including TenantryErrors) are returned unchanged.
 *
 * @example
 * ```ts
 * try { await client.query(sql) } catch (error) { throw toTenantryError(error) }
 * ```
 */
export function toTenantryError(error: unknown): unknown {
  if (error instanceof TenantryError || typeof error !== 'object' || error === null) return error;
  const code = (error as { code?: unknown }).code;
  if (typeof code !== 'string') {
    if (
      error instanceof Error &&
      /Connection terminated|not queryable|Client has encountered a connection error/i.test(
        error.message,
      )
    ) {
      return new TenantryError(unavailable.code, unavailable.message, { cause: error });
    }
    return error;
  }
  if (networkErrorCodes.has(code))
    return new TenantryError(unavailable.code, unavailable.message, { cause: error });
  // Only the server's errors carry a SQLSTATE; other errors with a string code are not ours.
  if (!(error instanceof pg.DatabaseError)) return error;
  if (code === quotaExceededSqlState) return quotaExceeded(error);
  const rule = sqlStateRules.get(code);
  if (rule === undefined) {
    return new TenantryError(queryFailed.code, queryFailed.message, {
      cause: error,
      details: { sqlState: code },
    });
  }
  return new TenantryError(rule.code, rule.message, { cause: error, details: { sqlState: code } });
}

/**
 * Tells whether an error means the unit of work can be retried from the start (serialization
 * failure, deadlock, prepared statement invalidated by a schema change).
 *
 * @example
 * ```ts
 * import { isRetryableError } from 'tenantry';
 * if (isRetryableError(error)) await runAgain();
 * ```
 */
export function isRetryableError(error: unknown): boolean {
  if (!(error instanceof TenantryError)) return false;
  const sqlState = error.details?.sqlState;
  return typeof sqlState === 'string' && sqlStateRules.get(sqlState)?.retryable === true;
}
