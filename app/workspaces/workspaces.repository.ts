import { type Kysely, sql } from 'kysely';
import type { AppDatabase } from '../database.ts';

type Db = Kysely<AppDatabase>;

/** A workspace role. */
export type Role = 'owner' | 'admin' | 'member';

/** A member of the current workspace with their profile. */
export interface MemberRow {
  readonly user_id: string;
  readonly email: string;
  readonly name: string;
  readonly role: Role;
  readonly created_at: Date;
}

/** An invitation as listed (never its token hash). */
export interface InvitationRow {
  readonly id: string;
  readonly email: string;
  readonly role: 'admin' | 'member';
  readonly invited_by: string;
  readonly expires_at: Date;
  readonly accepted_at: Date | null;
  readonly created_at: Date;
}

const invitationColumns = [
  'id',
  'email',
  'role',
  'invited_by',
  'expires_at',
  'accepted_at',
  'created_at',
] as const;

/**
 * Lists the current workspace's members, oldest first, `limit` rows after the cursor position
 * `(created_at, user_id)`. `cursor_at` is `created_at` with its microseconds, for the next
 * cursor (a JS Date would round them off and repeat or skip rows).
 *
 * @example
 * ```ts
 * const rows = await listMembers(db, 26, undefined);
 * ```
 */
export async function listMembers(
  db: Db,
  limit: number,
  after: { readonly createdAt: string; readonly userId: string } | undefined,
): Promise<(MemberRow & { cursor_at: string })[]> {
  let query = db
    .selectFrom('memberships as m')
    .innerJoin('auth.users as u', 'u.id', 'm.user_id')
    .select(['m.user_id', 'u.email', 'u.name', 'm.role', 'm.created_at'])
    .select(
      sql<string>`to_char(m.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`.as(
        'cursor_at',
      ),
    )
    .orderBy('m.created_at')
    .orderBy('m.user_id')
    .limit(limit);
  if (after !== undefined) {
    const createdAt = sql<Date>`cast(${after.createdAt} as timestamptz)`;
    query = query.where((eb) =>
      eb.or([
        eb('m.created_at', '>', createdAt),
        eb.and([eb('m.created_at', '=', createdAt), eb('m.user_id', '>', after.userId)]),
      ]),
    );
  }
  return query.execute();
}

/**
 * Finds one member of the current workspace.
 *
 * @example
 * ```ts
 * const member = await findMember(db, userId);
 * ```
 */
export async function findMember(db: Db, userId: string): Promise<MemberRow | undefined> {
  return db
    .selectFrom('memberships as m')
    .innerJoin('auth.users as u', 'u.id', 'm.user_id')
    .select(['m.user_id', 'u.email', 'u.name', 'm.role', 'm.created_at'])
    .where('m.user_id', '=', userId)
    .executeTakeFirst();
}

/**
 * Locks the current workspace's owner rows and returns their user ids, so concurrent
 * demotions and removals of owners are decided one after the other.
 *
 * @example
 * ```ts
 * const owners = await lockOwners(db);
 * ```
 */
export async function lockOwners(db: Db): Promise<string[]> {
  const rows = await db
    .selectFrom('memberships')
    .select('user_id')
    .where('role', '=', 'owner')
    .forUpdate()
    .execute();
  return rows.map((row) => row.user_id);
}

/**
 * Changes a member's role; returns whether a row changed.
 *
 * @example
 * ```ts
 * await updateMemberRole(db, userId, 'admin');
 * ```
 */
export async function updateMemberRole(db: Db, userId: string, role: Role): Promise<boolean> {
  const result = await db
    .updateTable('memberships')
    .set({ role })
    .where('user_id', '=', userId)
    .executeTakeFirst();
  return result.numUpdatedRows > 0n;
}

/**
 * Removes a member; returns whether a row was deleted.
 *
 * @example
 * ```ts
 * await deleteMember(db, userId);
 * ```
 */
export async function deleteMember(db: Db, userId: string): Promise<boolean> {
  const result = await db
    .deleteFrom('memberships')
    .where('user_id', '=', userId)
    .executeTakeFirst();
  return result.numDeletedRows > 0n;
}

/**
 * Stores an invitation by its token hash.
 *
 * @example
 * ```ts
 * const invitation = await insertInvitation(db, { email, role, tokenHash, invitedBy, expiresAt });
 * ```
 */
export async function insertInvitation(
  db: Db,
  invitation: {
    email: string;
    role: 'admin' | 'member';
    tokenHash: Buffer;
    invitedBy: string;
    expiresAt: Date;
  },
): Promise<InvitationRow> {
  return db
    .insertInto('invitations')
    .values({
      email: invitation.email,
      role: invitation.role,
      token_hash: invitation.tokenHash,
      invited_by: invitation.invitedBy,
      expires_at: invitation.expiresAt,
    })
    .returning(invitationColumns)
    .executeTakeFirstOrThrow();
}

/**
 * Lists the current workspace's invitations, newest first.
 *
 * @example
 * ```ts
 * const invitations = await listInvitations(db);
 * ```
 */
export async function listInvitations(db: Db): Promise<InvitationRow[]> {
  return db
    .selectFrom('invitations')
    .select(invitationColumns)
    .orderBy('created_at', 'desc')
    .orderBy('id')
    .execute();
}

/**
 * Deletes an invitation; returns whether one was deleted.
 *
 * @example
 * ```ts
 * await deleteInvitation(db, id);
 * ```
 */
export async function deleteInvitation(db: Db, id: string): Promise<boolean> {
  const result = await db.deleteFrom('invitations').where('id', '=', id).executeTakeFirst();
  return result.numDeletedRows > 0n;
}

/**
 * Finds the open (not accepted, not expired) invitation with this token hash and email in the
 * current workspace (emails compare case-insensitively: citext); `lock` locks it for acceptance.
 *
 * @example
 * ```ts
 * const invitation = await findOpenInvitation(db, hashToken(token), email, true);
 * ```
 */
export async function findOpenInvitation(
  db: Db,
  tokenHash: Buffer,
  email: string,
  lock: boolean,
): Promise<InvitationRow | undefined> {
  const query = db
    .selectFrom('invitations')
    .select(invitationColumns)
    .where('token_hash', '=', tokenHash)
    .where('email', '=', email)
    .where('accepted_at', 'is', null)
    .where('expires_at', '>', new Date());
  return (lock ? query.forUpdate() : query).executeTakeFirst();
}

/**
 * Marks an invitation accepted.
 *
 * @example
 * ```ts
 * await markInvitationAccepted(db, invitation.id);
 * ```
 */
export async function markInvitationAccepted(db: Db, id: string): Promise<void> {
  await db
    .updateTable('invitations')
    .set({ accepted_at: new Date() })
    .where('id', '=', id)
    .execute();
}

/**
 * Sets the current workspace's inbound webhook secret, creating its settings row if needed.
 *
 * @example
 * ```ts
 * await upsertWebhookSecret(db, randomBytes(32).toString('hex'));
 * ```
 */
export async function upsertWebhookSecret(db: Db, secret: string): Promise<void> {
  await db
    .insertInto('workspace_settings')
    .values({ inbound_webhook_secret: secret })
    .onConflict((conflict) =>
      conflict.column('tenant_id').doUpdateSet({
        inbound_webhook_secret: secret,
        updated_at: new Date(),
      }),
    )
    .execute();
}
