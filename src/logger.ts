/**
 * The logging surface Tenantry uses: a subset of pino's, so a pino logger fits as is.
 *
 * @example
 * ```ts
 * import pino from 'pino';
 * const tenantry = await createTenantry({ connectionString, logger: pino() });
 * ```
 */
export interface Logger {
  debug(object: object, message?: string): void;
  info(object: object, message?: string): void;
  warn(object: object, message?: string): void;
  error(object: object, message?: string): void;
}

const ignore = () => {};

/**
 * A logger that discards everything: the library prints nothing unless given a logger.
 *
 * @example
 * ```ts
 * import { silentLogger } from 'tenantry';
 * const tenantry = await createTenantry({ connectionString, logger: silentLogger });
 * ```
 */
export const silentLogger: Logger = Object.freeze({
  debug: ignore,
  info: ignore,
  warn: ignore,
  error: ignore,
});

/**
 * The loggable part of a connection error: `pg` errors carry their client (and its
 * configuration) as enumerable properties, which a logger's error serializer would dump whole.
 */
export function summarizeError(error: unknown): { type: string; message: string; code?: string } {
  if (!(error instanceof Error)) return { type: typeof error, message: String(error) };
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string'
    ? { type: error.name, message: error.message, code }
    : { type: error.name, message: error.message };
}
