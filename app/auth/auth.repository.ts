import { type Kysely, sql } from 'kysely';
import { isTenantryError, TenantryError } from 'tenantry';
import type { AppDatabase } from '../database.ts';

type Db = Kysely<AppDatabase>;

/** A row of `auth.users`. */
export interface UserRow {
  readonly id: string;
  readonly email: string;
  readonly name: string;
  readonly password_hash: string;
}

/** One of a user's workspaces, from `auth.user_workspaces`. */
export interface UserWorkspaceRow {
  readonly tenant_id: string;
  readonly slug: string;
  readonly name: string;
  readonly status: string;
  readonly role: 'owner' | 'admin' | 'member';
}

/** A row of `auth.refresh_tokens`. */
export interface RefreshTokenRow {
  readonly id: string;
  readonly family_id: string;
  readonly user_id: string;
  readonly workspace_id: string;
  readonly expires_at: Date;
  readonly used_at: Date | null;
  readonly revoked_at: Date | null;
}

/**
 * Finds a user by email (case-insensitive: the column is citext).
 *
 * @example
 * ```ts
 * const user = await findUserByEmail(tenantry.db, 'ada@example.com');
 * ```
 */
export async function findUserByEmail(db: Db, email: string): Promise<UserRow | undefined> {
  return db
    .selectFrom('auth.users')
    .select(['id', 'email', 'name', 'password_hash'])
    .where('email', '=', email)
    .executeTakeFirst();
}

/**
 * Finds a user by id.
 *
 * @example
 * ```ts
 * const user = await findUserById(tenantry.db, userId);
 * ```
 */
export async function findUserById(db: Db, id: string): Promise<UserRow | undefined> {
  return db
    .selectFrom('auth.users')
    .select(['id', 'email', 'name', 'password_hash'])
    .where('id', '=', id)
    .executeTakeFirst();
}

/**
 * Inserts a user; returns `undefined` when the email is taken (without aborting the
 * transaction).
 *
 * @example
 * ```ts
 * const user = await insertUser(trx, { email, name, passwordHash });
 * if (user === undefined) throw new AppError('APP_ERR_EMAIL_TAKEN', '...');
 * ```
 */
export async function insertUser(
  db: Db,
  user: { readonly id?: string; email: string; name: string; passwordHash: string },
): Promise<UserRow | undefined> {
  return db
    .insertInto('auth.users')
    .values({
      ...(user.id === undefined ? {} : { id: user.id }),
      email: user.email,
      name: user.name,
      password_hash: user.passwordHash,
    })
    .onConflict((conflict) => conflict.column('email').doNothing())
    .returning(['id', 'email', 'name', 'password_hash'])
    .executeTakeFirst();
}

/**
 * Creates a workspace through the SECURITY DEFINER `tenantry.create_tenant`, the app role's
 * only write on the tenant catalog.
 *
 * @throws TenantryError `TENANTRY_ERR_TENANT_SLUG_INVALID` or `TENANTRY_ERR_TENANT_SLUG_TAKEN`.
 * @example
 * ```ts
 * const tenantId = await createTenant(trx, 'acme', 'Acme Inc.');
 * ```
 */
export async function createTenant(db: Db, slug: string, name: string): Promise<string> {
  try {
    const result = await sql<{
      id: string;
    }>`select tenantry.create_tenant(${slug}, ${name}) as id`.execute(db);
    const id = result.rows[0]?.id;
    if (id === undefined)
      throw new TenantryError('TENANTRY_ERR_DB_QUERY_FAILED', 'No workspace created.');
    return id;
  } catch (error) {
    if (
      isTenantryError(error, 'TENANTRY_ERR_DB_INVALID_VALUE') &&
      error.details?.sqlState === '22023'
    ) {
      throw new TenantryError(
        'TENANTRY_ERR_TENANT_SLUG_INVALID',
        'A workspace slug is 1 to 63 lowercase letters, digits and inner hyphens.',
        { cause: error },
      );
    }
    if (isTenantryError(error, 'TENANTRY_ERR_DB_CONFLICT')) {
      throw new TenantryError('TENANTRY_ERR_TENANT_SLUG_TAKEN', 'This workspace slug is taken.', {
        cause: error,
      });
    }
    throw error;
  }
}

/**
 * The id of the active workspace with this slug (the app role may read the tenant catalog).
 *
 * @example
 * ```ts
 * const tenantId = await findActiveTenantId(tenantry.db, 'acme');
 * ```
 */
export async function findActiveTenantId(db: Db, slug: string): Promise<string | undefined> {
  const result = await sql<{ id: string }>`
    select id from tenantry.tenants where slug = ${slug} and status = 'active'`.execute(db);
  return result.rows[0]?.id;
}

/**
 * The workspaces a user belongs to, by name, through the SECURITY DEFINER
 * `auth.user_workspaces` (the one read that crosses tenants; deleted workspaces left out).
 *
 * @example
 * ```ts
 * const workspaces = await userWorkspaces(tenantry.db, userId);
 * ```
 */
export async function userWorkspaces(db: Db, userId: string): Promise<UserWorkspaceRow[]> {
  const result = await sql<UserWorkspaceRow>`
    select tenant_id, slug, name, status, role from auth.user_workspaces(${userId})`.execute(db);
  return result.rows;
}

/**
 * Adds the user to the current workspace (a tenant-scoped `db`); an existing membership is
 * left as it is. Returns the role the user now has.
 *
 * @example
 * ```ts
 * await tenantry.withTenant({ tenantId, userId }, (db) => addMembership(db, userId, 'owner'));
 * ```
 */
export async function addMembership(
  db: Db,
  userId: string,
  role: 'owner' | 'admin' | 'member',
): Promise<'owner' | 'admin' | 'member'> {
  await db
    .insertInto('memberships')
    .values({ user_id: userId, role })
    .onConflict((conflict) => conflict.columns(['tenant_id', 'user_id']).doNothing())
    .execute();
  const row = await db
    .selectFrom('memberships')
    .select('role')
    .where('user_id', '=', userId)
    .executeTakeFirstOrThrow();
  return row.role;
}

/**
 * Stores a refresh token by its hash.
 *
 * @example
 * ```ts
 * await insertRefreshToken(db, { tokenHash, familyId, userId, workspaceId, expiresAt });
 * ```
 */
export async function insertRefreshToken(
  db: Db,
  token: {
    tokenHash: Buffer;
    familyId: string;
    userId: string;
    workspaceId: string;
    expiresAt: Date;
  },
): Promise<void> {
  await db
    .insertInto('auth.refresh_tokens')
    .values({
      token_hash: token.tokenHash,
      family_id: token.familyId,
      user_id: token.userId,
      workspace_id: token.workspaceId,
      expires_at: token.expiresAt,
    })
    .execute();
}

/**
 * Finds a refresh token by hash and locks its row, so two refreshes with the same token
 * are decided one after the other.
 *
 * @example
 * ```ts
 * const row = await lockRefreshToken(trx, hashToken(presented));
 * ```
 */
export async function lockRefreshToken(
  db: Db,
  tokenHash: Buffer,
): Promise<RefreshTokenRow | undefined> {
  return db
    .selectFrom('auth.refresh_tokens')
    .select(['id', 'family_id', 'user_id', 'workspace_id', 'expires_at', 'used_at', 'revoked_at'])
    .where('token_hash', '=', tokenHash)
    .forUpdate()
    .executeTakeFirst();
}

/**
 * Marks a refresh token used (it was exchanged for the next one).
 *
 * @example
 * ```ts
 * await markRefreshTokenUsed(trx, row.id);
 * ```
 */
export async function markRefreshTokenUsed(db: Db, id: string): Promise<void> {
  await db
    .updateTable('auth.refresh_tokens')
    .set({ used_at: new Date() })
    .where('id', '=', id)
    .execute();
}

/**
 * Revokes every token of a family (reuse detected, logout, membership gone).
 *
 * @example
 * ```ts
 * await revokeRefreshFamily(trx, row.family_id);
 * ```
 */
export async function revokeRefreshFamily(db: Db, familyId: string): Promise<void> {
  await db
    .updateTable('auth.refresh_tokens')
    .set({ revoked_at: new Date() })
    .where('family_id', '=', familyId)
    .where('revoked_at', 'is', null)
    .execute();
}

/**
 * Revokes the family of the token with this hash; does nothing for an unknown token.
 *
 * @example
 * ```ts
 * await revokeRefreshFamilyOf(tenantry.db, hashToken(presented));
 * ```
 */
export async function revokeRefreshFamilyOf(db: Db, tokenHash: Buffer): Promise<void> {
  await db
    .updateTable('auth.refresh_tokens')
    .set({ revoked_at: new Date() })
    .where('revoked_at', 'is', null)
    .where('family_id', 'in', (query) =>
      query
        .selectFrom('auth.refresh_tokens')
        .select('family_id')
        .where('token_hash', '=', tokenHash),
    )
    .execute();
}

/**
 * Revokes a user's refresh tokens for one workspace (the user was removed from it).
 *
 * @example
 * ```ts
 * await revokeUserRefreshTokens(db, userId, tenantId);
 * ```
 */
export async function revokeUserRefreshTokens(
  db: Db,
  userId: string,
  workspaceId: string,
): Promise<void> {
  await db
    .updateTable('auth.refresh_tokens')
    .set({ revoked_at: new Date() })
    .where('user_id', '=', userId)
    .where('workspace_id', '=', workspaceId)
    .where('revoked_at', 'is', null)
    .execute();
}
