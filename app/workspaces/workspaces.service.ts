import { randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import { TenantryError } from 'tenantry';
import { revokeUserRefreshTokens } from '../auth/auth.repository.ts';
import { hashToken, newOpaqueToken } from '../auth/tokens.ts';
import type { AppDatabase } from '../database.ts';
import { AppError } from '../errors.ts';
import {
  deleteMember,
  findMember,
  type InvitationRow,
  insertInvitation,
  lockOwners,
  type MemberRow,
  type Role,
  updateMemberRole,
  upsertWebhookSecret,
} from './workspaces.repository.ts';

type Db = Kysely<AppDatabase>;

/** Who acts: the signed-in user and their role in the workspace (from the access token). */
export interface Actor {
  readonly userId: string | undefined;
  readonly role: string | undefined;
}

/** How long an invitation can be accepted. */
export const invitationTtlMs = 7 * 24 * 60 * 60 * 1000;

const memberNotFound = () => new TenantryError('TENANTRY_ERR_HTTP_NOT_FOUND', 'Member not found.');

async function lockedTarget(db: Db, actor: Actor, userId: string, newRole: Role | undefined) {
  // Owner rows are locked first, so two owners demoting each other cannot both succeed.
  const owners = await lockOwners(db);
  const target = await findMember(db, userId);
  if (target === undefined) throw memberNotFound();
  if (actor.role !== 'owner' && (target.role === 'owner' || newRole === 'owner')) {
    throw new TenantryError(
      'TENANTRY_ERR_AUTH_FORBIDDEN',
      'Only an owner can make someone an owner or change an owner.',
    );
  }
  if (target.role === 'owner' && newRole !== 'owner' && owners.length <= 1) {
    throw new AppError(
      'APP_ERR_LAST_OWNER',
      'This is the only owner: make someone else an owner first.',
    );
  }
  return target;
}

/**
 * Changes a member's role. Only owners make or change owners; the last owner keeps the role.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND` (no such member here),
 *   `TENANTRY_ERR_AUTH_FORBIDDEN`; AppError `APP_ERR_LAST_OWNER`.
 * @example
 * ```ts
 * const member = await changeMemberRole(db, { userId, role: 'owner' }, targetId, 'admin');
 * ```
 */
export async function changeMemberRole(
  db: Db,
  actor: Actor,
  userId: string,
  role: Role,
): Promise<MemberRow> {
  const target = await lockedTarget(db, actor, userId, role);
  if (target.role !== role) await updateMemberRole(db, userId, role);
  return { ...target, role };
}

/**
 * Removes a member and revokes their refresh tokens for this workspace (access tokens already
 * issued stay valid until they expire).
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND`, `TENANTRY_ERR_AUTH_FORBIDDEN`; AppError
 *   `APP_ERR_LAST_OWNER`.
 * @example
 * ```ts
 * await removeMember(db, actor, tenantId, targetId);
 * ```
 */
export async function removeMember(
  db: Db,
  actor: Actor,
  tenantId: string,
  userId: string,
): Promise<void> {
  await lockedTarget(db, actor, userId, undefined);
  await deleteMember(db, userId);
  await revokeUserRefreshTokens(db, userId, tenantId);
}

/**
 * Creates an invitation and returns it with its one-time token (only the token's SHA-256 is
 * stored; the token would be emailed to the invitee).
 *
 * @example
 * ```ts
 * const { token } = await inviteMember(db, actor, { email: 'bo@example.com', role: 'member' });
 * ```
 */
export async function inviteMember(
  db: Db,
  actor: Actor,
  input: { readonly email: string; readonly role: 'admin' | 'member' },
): Promise<InvitationRow & { token: string }> {
  if (actor.userId === undefined) {
    throw new TenantryError('TENANTRY_ERR_AUTH_FORBIDDEN', 'Only a signed-in user can invite.');
  }
  const token = newOpaqueToken();
  const invitation = await insertInvitation(db, {
    email: input.email,
    role: input.role,
    tokenHash: hashToken(token),
    invitedBy: actor.userId,
    expiresAt: new Date(Date.now() + invitationTtlMs),
  });
  return { ...invitation, token };
}

/**
 * Replaces the workspace's inbound webhook secret (32 random bytes, hex) and returns it; the
 * previous one stops verifying at once.
 *
 * @example
 * ```ts
 * const secret = await rotateWebhookSecret(db);
 * ```
 */
export async function rotateWebhookSecret(db: Db): Promise<string> {
  const secret = randomBytes(32).toString('hex');
  await upsertWebhookSecret(db, secret);
  return secret;
}
