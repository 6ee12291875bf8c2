import type { CodedError } from 'tenantry/fastify';

/**
 * The reference app's own error codes (Tenantry's are in `errorCodes`). Documented in
 * docs/reference/reference-app.md; a test keeps the two in sync.
 */
export const appErrorCodes = Object.freeze({
  APP_ERR_AUTH_CREDENTIALS_INVALID: { status: 401, title: 'Email or password is wrong' },
  APP_ERR_AUTH_REFRESH_TOKEN_INVALID: {
    status: 401,
    title: 'Refresh token invalid, used or expired',
  },
  APP_ERR_AUTH_NOT_A_MEMBER: { status: 403, title: 'Not a member of this workspace' },
  APP_ERR_AUTH_EXTERNAL_MODE: {
    status: 404,
    title: 'Local sign-in is off: an external identity provider issues tokens',
  },
  APP_ERR_EMAIL_TAKEN: { status: 409, title: 'A user with this email already exists' },
  APP_ERR_INVITATION_INVALID: { status: 404, title: 'Invitation unknown, used or expired' },
  APP_ERR_LAST_OWNER: { status: 409, title: 'A workspace keeps at least one owner' },
  APP_ERR_CONTACT_HAS_CONVERSATIONS: { status: 409, title: 'Contact still has conversations' },
  APP_ERR_ASSIGNEE_NOT_A_MEMBER: {
    status: 422,
    title: 'Assignee is not a member of this workspace',
  },
  APP_ERR_TEMPLATE_VARIABLES_INVALID: {
    status: 422,
    title: 'Template variables do not fit the template',
  },
  APP_ERR_BROADCAST_NO_RECIPIENTS: {
    status: 422,
    title: 'No contact has any of the broadcast tags',
  },
} as const);

/** A reference-app error code such as `APP_ERR_EMAIL_TAKEN`. */
export type AppErrorCode = keyof typeof appErrorCodes;

/**
 * An error of the reference app: answered as problem+json by the Tenantry plugin's handler like
 * Tenantry's own errors.
 *
 * @example
 * ```ts
 * throw new AppError('APP_ERR_EMAIL_TAKEN', 'Sign in instead, or use another email.');
 * ```
 */
export class AppError extends Error implements CodedError {
  readonly code: AppErrorCode;
  readonly status: number;
  readonly title: string;

  constructor(code: AppErrorCode, message: string, options: { cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'AppError';
    this.code = code;
    this.status = appErrorCodes[code].status;
    this.title = appErrorCodes[code].title;
  }
}
