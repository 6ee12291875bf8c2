import { TenantryError } from './errors.ts';

/** Names of the three database roles Tenantry relies on. */
export interface RoleNames {
  /** Owns the schema and runs migrations; BYPASSRLS. @defaultValue 'tenantry_owner' */
  readonly owner: string;
  /** Used by the API and workers: LOGIN, NOBYPASSRLS, DML only. @defaultValue 'tenantry_app' */
  readonly app: string;
  /** Read-only BYPASSRLS role for platform analytics. @defaultValue 'tenantry_analytics' */
  readonly analytics: string;
}

/**
 * The role names used when none are configured.
 *
 * @example
 * ```ts
 * import { defaultRoleNames } from 'tenantry';
 * console.log(defaultRoleNames.app); // 'tenantry_app'
 * ```
 */
export const defaultRoleNames: RoleNames = Object.freeze({
  owner: 'tenantry_owner',
  app: 'tenantry_app',
  analytics: 'tenantry_analytics',
});

/**
 * The schema that holds Tenantry's own objects when none is configured.
 *
 * @example
 * ```ts
 * import { defaultTenantrySchema } from 'tenantry';
 * console.log(defaultTenantrySchema); // 'tenantry'
 * ```
 */
export const defaultTenantrySchema = 'tenantry';

const identifierPattern = /^[a-z_][a-z0-9_$]{0,62}$/;

/** Validates a SQL identifier Tenantry will create or reference (lowercase, at most 63 bytes). */
export function parseIdentifier(value: unknown, what: string): string {
  if (typeof value !== 'string' || !identifierPattern.test(value)) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `${what} must be a lowercase SQL identifier (letters, digits, _ and $; at most 63), got ${JSON.stringify(value)}.`,
    );
  }
  return value;
}

/** Fills in and validates role names. */
export function resolveRoleNames(roles: Partial<RoleNames> | undefined): RoleNames {
  const resolved = {
    owner: parseIdentifier(roles?.owner ?? defaultRoleNames.owner, 'roles.owner'),
    app: parseIdentifier(roles?.app ?? defaultRoleNames.app, 'roles.app'),
    analytics: parseIdentifier(roles?.analytics ?? defaultRoleNames.analytics, 'roles.analytics'),
  };
  if (new Set(Object.values(resolved)).size !== 3) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'The owner, app and analytics roles must be three different roles.',
    );
  }
  return Object.freeze(resolved);
}

/** Quotes an identifier for SQL (the one place identifiers are escaped). */
export function quoteIdentifier(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** Quotes a string literal for SQL, for the few statements that cannot take parameters. */
export function quoteLiteral(value: string): string {
  if (value.includes('\0')) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'SQL literals cannot contain NUL characters.',
    );
  }
  const body = value.replaceAll("'", "''");
  return value.includes('\\') ? ` E'${body.replaceAll('\\', '\\\\')}'` : `'${body}'`;
}
