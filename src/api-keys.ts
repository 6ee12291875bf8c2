import { createHash, randomBytes } from 'node:crypto';
import { type Kysely, sql } from 'kysely';
import { defaultTenantrySchema, parseIdentifier } from './config.ts';
import { TenantryError } from './errors.ts';
import { isUuid, parseTenantId, type TenantId } from './tenant-id.ts';

/** An API key as listed: never its secret, never its hash. */
export interface ApiKeyInfo {
  readonly id: string;
  /** The public part of the key (`tk_<prefix>_...`), safe to show and log. */
  readonly prefix: string;
  readonly name: string;
  /** Scopes the key is limited to; `null` means not limited. */
  readonly scopes: readonly string[] | null;
  readonly createdBy: string | null;
  readonly createdAt: Date;
  readonly expiresAt: Date | null;
  readonly revokedAt: Date | null;
  readonly lastUsedAt: Date | null;
}

/** A newly created key: `key` is the only time the full secret exists outside the caller. */
export interface CreatedApiKey extends ApiKeyInfo {
  readonly key: string;
}

/** Options for {@link createApiKey}. */
export interface CreateApiKeyOptions {
  readonly name: string;
  /** Scopes (`[a-z0-9:._-]`, up to 64 of them); omit for an unlimited key. */
  readonly scopes?: readonly string[];
  readonly expiresAt?: Date;
  /** The user creating it, for the audit trail. */
  readonly createdBy?: string;
  /** Schema of Tenantry's own objects. @defaultValue 'tenantry' */
  readonly schema?: string;
}

/** The tenant and scopes an API key grants, from {@link authenticateApiKey}. */
export interface AuthenticatedApiKey {
  readonly tenantId: TenantId;
  readonly keyId: string;
  readonly scopes: readonly string[] | null;
}

const keyPattern = /^tk_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$/;
const scopePattern = /^[a-z0-9][a-z0-9:._-]{0,63}$/;
const prefixAlphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';

function schemaOf(schema: string | undefined): string {
  return parseIdentifier(schema ?? defaultTenantrySchema, 'schema');
}

function hashSecret(secret: string): Buffer {
  return createHash('sha256').update(secret).digest();
}

function randomPrefix(): string {
  // 36 does not divide 256: bytes of 252 and above are skipped so every character is equally likely.
  let prefix = '';
  while (prefix.length < 12) {
    for (const byte of randomBytes(16)) {
      if (byte < 252 && prefix.length < 12) prefix += prefixAlphabet[byte % 36];
    }
  }
  return prefix;
}

interface ApiKeyRow {
  id: string;
  prefix: string;
  name: string;
  scopes: string[] | null;
  created_by: string | null;
  created_at: Date;
  expires_at: Date | null;
  revoked_at: Date | null;
  last_used_at: Date | null;
}

function toInfo(row: ApiKeyRow): ApiKeyInfo {
  return Object.freeze({
    id: row.id,
    prefix: row.prefix,
    name: row.name,
    scopes: row.scopes === null ? null : Object.freeze([...row.scopes]),
    createdBy: row.created_by,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    revokedAt: row.revoked_at,
    lastUsedAt: row.last_used_at,
  });
}

const infoColumns = sql.raw(
  'id, prefix, name, scopes, created_by, created_at, expires_at, revoked_at, last_used_at',
);

/**
 * Creates an API key for the current tenant. The key reads `tk_<prefix>_<secret>`: the prefix
 * identifies it (and is indexed), the secret is 256 random bits of which only the SHA-256 is
 * stored. Show `key` to the user once; it cannot be recovered.
 *
 * `db` must be a tenant-scoped executor (inside `withTenant`, or a request's `tenant.db`): the
 * row gets the unit's tenant from the column default and RLS.
 *
 * @example
 * ```ts
 * import { createApiKey } from 'tenantry';
 * const created = await tenantry.withTenant(tenantId, (db) =>
 *   createApiKey(db, { name: 'CI', scopes: ['contacts:read'] }),
 * );
 * console.log(created.key); // tk_3k9x0a1b2c3d_Vq...
 * ```
 */
export async function createApiKey(
  db: Kysely<any>,
  options: CreateApiKeyOptions,
): Promise<CreatedApiKey> {
  const schema = schemaOf(options.schema);
  if (typeof options.name !== 'string' || options.name.length < 1 || options.name.length > 200) {
    throw new TenantryError(
      'TENANTRY_ERR_HTTP_VALIDATION',
      'An API key needs a name of 1 to 200 characters.',
    );
  }
  const scopes = options.scopes === undefined ? null : [...new Set(options.scopes)];
  if (
    scopes !== null &&
    (scopes.length > 64 || !scopes.every((scope) => scopePattern.test(scope)))
  ) {
    throw new TenantryError(
      'TENANTRY_ERR_HTTP_VALIDATION',
      'Scopes are up to 64 names of lowercase letters, digits and ":._-".',
    );
  }
  const prefix = randomPrefix();
  const secret = randomBytes(32).toString('base64url');
  const result = await sql<ApiKeyRow>`
    insert into ${sql.id(schema, 'api_keys')} (prefix, secret_hash, name, scopes, expires_at, created_by)
    values (${prefix}, ${hashSecret(secret)}, ${options.name}, ${scopes}, ${options.expiresAt ?? null},
            ${options.createdBy ?? null})
    returning ${infoColumns}`.execute(db);
  const row = result.rows[0];
  if (row === undefined) throw new TenantryError('TENANTRY_ERR_DB_QUERY_FAILED', 'No key created.');
  return Object.freeze({ ...toInfo(row), key: `tk_${prefix}_${secret}` });
}

/**
 * Lists the current tenant's API keys, newest first (never secrets or hashes).
 *
 * @example
 * ```ts
 * const keys = await tenantry.withTenant(tenantId, (db) => listApiKeys(db));
 * ```
 */
export async function listApiKeys(
  db: Kysely<any>,
  options: { readonly schema?: string } = {},
): Promise<ApiKeyInfo[]> {
  const result = await sql<ApiKeyRow>`
    select ${infoColumns} from ${sql.id(schemaOf(options.schema), 'api_keys')}
    order by created_at desc, id`.execute(db);
  return result.rows.map(toInfo);
}

/**
 * Revokes one of the current tenant's keys; returns whether a key was revoked. Requests with
 * the key are refused from the next request on (the lookup is not cached).
 *
 * @example
 * ```ts
 * await tenantry.withTenant(tenantId, (db) => revokeApiKey(db, keyId));
 * ```
 */
export async function revokeApiKey(
  db: Kysely<any>,
  id: string,
  options: { readonly schema?: string } = {},
): Promise<boolean> {
  if (!isUuid(id)) return false;
  const keyId = id.toLowerCase();
  const result = await sql`
    update ${sql.id(schemaOf(options.schema), 'api_keys')} set revoked_at = now()
    where id = ${keyId} and revoked_at is null`.execute(db);
  return (result.numAffectedRows ?? 0n) > 0n;
}

/**
 * Resolves a presented key to its tenant, outside any tenant context (the lookup function is
 * the one SECURITY DEFINER path to the keys table, and answers only when the hash matches).
 *
 * @throws TenantryError `TENANTRY_ERR_AUTH_API_KEY_INVALID` for a malformed or unknown key,
 *   `TENANTRY_ERR_AUTH_API_KEY_REVOKED` for a revoked or expired one.
 * @example
 * ```ts
 * const { tenantId, scopes } = await authenticateApiKey(tenantry.db, request.headers['x-api-key']);
 * ```
 */
export async function authenticateApiKey(
  db: Kysely<any>,
  key: unknown,
  options: { readonly schema?: string } = {},
): Promise<AuthenticatedApiKey> {
  const match = typeof key === 'string' ? keyPattern.exec(key) : null;
  if (match === null) {
    throw new TenantryError('TENANTRY_ERR_AUTH_API_KEY_INVALID', 'The API key is malformed.');
  }
  const [, prefix, secret] = match as unknown as [string, string, string];
  const result = await sql<{
    tenant_id: string;
    key_id: string;
    scopes: string[] | null;
    state: string;
  }>`
    select tenant_id, key_id, scopes, state
    from ${sql.id(schemaOf(options.schema), 'authenticate_api_key')}(${prefix}, ${hashSecret(secret)})`.execute(
    db,
  );
  const row = result.rows[0];
  if (row === undefined) {
    throw new TenantryError('TENANTRY_ERR_AUTH_API_KEY_INVALID', 'The API key is not valid.');
  }
  if (row.state !== 'active') {
    throw new TenantryError(
      'TENANTRY_ERR_AUTH_API_KEY_REVOKED',
      `The API key was ${row.state === 'expired' ? 'valid until a date that has passed' : 'revoked'}.`,
    );
  }
  return Object.freeze({
    tenantId: parseTenantId(row.tenant_id),
    keyId: row.key_id,
    scopes: row.scopes === null ? null : Object.freeze([...row.scopes]),
  });
}
