import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { errorCodes, isTenantryError, type TenantryErrorCode } from '../errors.ts';

/**
 * An RFC 9457 problem details body. `code` is the stable error code; `errors` lists the
 * individual problems of a validation failure.
 */
export interface ProblemDetails {
  readonly type: string;
  readonly title: string;
  readonly status: number;
  readonly detail: string;
  readonly code: string;
  readonly errors?: readonly { readonly pointer: string; readonly message: string }[];
  readonly [extension: string]: unknown;
}

/**
 * An error an application defines in its own code table (`APP_ERR_*`): the handler answers it
 * like a Tenantry error. Any error with such a `code`, a 4xx/5xx `status` and a `title` counts.
 */
export interface CodedError extends Error {
  readonly code: string;
  readonly status: number;
  readonly title: string;
  readonly details?: Readonly<Record<string, unknown>>;
}

const appCodePattern = /^[A-Z][A-Z0-9]*_ERR_[A-Z0-9_]+$/;

function isCodedError(error: unknown): error is CodedError {
  if (!(error instanceof Error)) return false;
  const candidate = error as Partial<CodedError>;
  return (
    typeof candidate.code === 'string' &&
    appCodePattern.test(candidate.code) &&
    Number.isInteger(candidate.status) &&
    (candidate.status as number) >= 400 &&
    (candidate.status as number) <= 599 &&
    typeof candidate.title === 'string'
  );
}

const fastifyCodes: Readonly<Record<string, TenantryErrorCode>> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'TENANTRY_ERR_HTTP_UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_BODY_TOO_LARGE: 'TENANTRY_ERR_HTTP_PAYLOAD_TOO_LARGE',
  FST_ERR_NOT_FOUND: 'TENANTRY_ERR_HTTP_NOT_FOUND',
};

const statusCodes: Readonly<Record<number, TenantryErrorCode>> = {
  400: 'TENANTRY_ERR_HTTP_BAD_REQUEST',
  404: 'TENANTRY_ERR_HTTP_NOT_FOUND',
  405: 'TENANTRY_ERR_HTTP_METHOD_NOT_ALLOWED',
  413: 'TENANTRY_ERR_HTTP_PAYLOAD_TOO_LARGE',
  415: 'TENANTRY_ERR_HTTP_UNSUPPORTED_MEDIA_TYPE',
};

const retryAfterSeconds: Readonly<Partial<Record<string, number>>> = {
  TENANTRY_ERR_TENANT_MOVING: 5,
  TENANTRY_ERR_DB_UNAVAILABLE: 2,
  TENANTRY_ERR_DB_TIMEOUT: 2,
  TENANTRY_ERR_DB_SERIALIZATION: 1,
  TENANTRY_ERR_AUTH_KEYS_UNAVAILABLE: 5,
  TENANTRY_ERR_STORAGE_UNAVAILABLE: 5,
};

function problem(
  code: string,
  status: number,
  title: string,
  detail: string,
  extensions: Record<string, unknown> = {},
): ProblemDetails {
  // Extensions come first so they can never replace a standard member; a 5xx carries none,
  // since its details describe internals (table names, say) rather than the request.
  return {
    ...(status >= 500 ? {} : extensions),
    type: `urn:tenantry:error:${code}`,
    title,
    status,
    detail,
    code,
  };
}

function fromCode(code: TenantryErrorCode, detail?: string): ProblemDetails {
  const entry = errorCodes[code];
  return problem(code, entry.status, entry.title, detail ?? `${entry.title}.`);
}

/**
 * Turns any error into problem details with a stable code. Tenantry errors keep their code and
 * client-safe message; Fastify's validation and body errors get `HTTP_*` codes; an application's
 * coded errors ({@link CodedError}) keep theirs; anything else is a 500 that says nothing of the
 * cause (log it).
 *
 * @example
 * ```ts
 * import { toProblemDetails } from 'tenantry/fastify';
 * const body = toProblemDetails(new TenantryError('TENANTRY_ERR_TENANT_SUSPENDED', 'Suspended.'));
 * // { type: 'urn:tenantry:error:TENANTRY_ERR_TENANT_SUSPENDED', status: 403, code: ..., ... }
 * ```
 */
export function toProblemDetails(error: unknown): ProblemDetails {
  if (isTenantryError(error)) {
    const entry = errorCodes[error.code];
    const { errors, ...rest } = error.details ?? {};
    const extensions: Record<string, unknown> = {};
    if (Array.isArray(errors)) extensions.errors = errors;
    // sqlState is for logs; everything else in details is client-safe by contract.
    for (const [key, value] of Object.entries(rest)) {
      if (key !== 'sqlState') extensions[key] = value;
    }
    return problem(error.code, entry.status, entry.title, error.message, extensions);
  }
  if (isCodedError(error)) {
    return problem(error.code, error.status, error.title, error.message, {
      ...(error.details ?? {}),
    });
  }
  const fastifyError = error as Partial<FastifyError> | undefined;
  if (fastifyError?.validation !== undefined) {
    const errors = fastifyError.validation.map((issue) => ({
      pointer: `/${fastifyError.validationContext ?? 'body'}${issue.instancePath ?? ''}`,
      message: issue.message ?? 'is invalid',
    }));
    return problem(
      'TENANTRY_ERR_HTTP_VALIDATION',
      400,
      errorCodes.TENANTRY_ERR_HTTP_VALIDATION.title,
      errors.map((issue) => `${issue.pointer} ${issue.message}`).join('; '),
      { errors },
    );
  }
  const byCode =
    typeof fastifyError?.code === 'string' ? fastifyCodes[fastifyError.code] : undefined;
  if (byCode !== undefined) return fromCode(byCode);
  const status = fastifyError?.statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    const code = statusCodes[status] ?? 'TENANTRY_ERR_HTTP_BAD_REQUEST';
    // Fastify's own 4xx messages (bad JSON, bad content length) are safe to repeat.
    const detail = typeof fastifyError?.message === 'string' ? fastifyError.message : undefined;
    return { ...fromCode(code, detail), status };
  }
  return fromCode('TENANTRY_ERR_HTTP_INTERNAL', 'An unexpected error occurred; it was logged.');
}

/**
 * Sends `error` as `application/problem+json` (with `Retry-After` for transient conditions) and
 * logs it: 5xx with the cause at error level, 4xx at info.
 *
 * @example
 * ```ts
 * app.setErrorHandler((error, request, reply) => sendProblem(request, reply, error));
 * ```
 */
export function sendProblem(
  request: FastifyRequest,
  reply: FastifyReply,
  error: unknown,
): FastifyReply {
  const body = toProblemDetails(error);
  if (body.status >= 500) request.log.error({ err: error, code: body.code }, body.title);
  else request.log.info({ code: body.code, status: body.status }, body.detail);
  const retryAfter = retryAfterSeconds[body.code];
  if (retryAfter !== undefined) reply.header('retry-after', String(retryAfter));
  return reply.code(body.status).type('application/problem+json; charset=utf-8').send(body);
}
