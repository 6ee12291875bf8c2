import { randomUUID } from 'node:crypto';
import type { Kysely } from 'kysely';
import { type Tenantry, TenantryError } from 'tenantry';
import type { AppDatabase } from '../database.ts';
import { AppError } from '../errors.ts';
import { findOpenInvitation, markInvitationAccepted } from '../workspaces/workspaces.repository.ts';
import {
  addMembership,
  createTenant,
  findActiveTenantId,
  findUserByEmail,
  findUserById,
  insertRefreshToken,
  insertUser,
  lockRefreshToken,
  markRefreshTokenUsed,
  revokeRefreshFamily,
  revokeRefreshFamilyOf,
  type UserRow,
  type UserWorkspaceRow,
  userWorkspaces,
} from './auth.repository.ts';
import { burnPasswordCheck, hashPassword, verifyPassword } from './password.ts';
import { hashToken, type LocalAuthConfig, newOpaqueToken, signAccessToken } from './tokens.ts';

type Db = Kysely<AppDatabase>;

/** A workspace as sign-in responses list it. */
export interface WorkspaceSummary {
  readonly id: string;
  readonly slug: string;
  readonly name: string;
  readonly role: 'owner' | 'admin' | 'member';
}

/** What sign-up, login, refresh, switch and invitation acceptance answer. */
export interface Session {
  readonly accessToken: string;
  readonly refreshToken: string;
  /** Seconds until the access token expires. */
  readonly expiresIn: number;
  readonly tokenType: 'Bearer';
  readonly user: { readonly id: string; readonly email: string; readonly name: string };
  /** The workspace the access token is for. */
  readonly workspace: WorkspaceSummary;
  /** Every workspace the user belongs to, by name. */
  readonly workspaces: WorkspaceSummary[];
}

/** Input of {@link AuthService.signUp}. */
export interface SignUpInput {
  readonly email: string;
  readonly password: string;
  readonly name: string;
  readonly workspaceName: string;
  readonly workspaceSlug: string;
}

/** Input of {@link AuthService.login}. */
export interface LoginInput {
  readonly email: string;
  readonly password: string;
  /** Slug of the workspace to sign in to; the first by name when omitted. */
  readonly workspace?: string | undefined;
}

/** Input of {@link AuthService.acceptInvitation}. */
export interface AcceptInvitationInput {
  readonly workspace: string;
  readonly token: string;
  readonly email: string;
  readonly password: string;
  readonly name?: string | undefined;
}

/** Local sign-in: users, passwords, sessions (access + rotating refresh tokens). */
export interface AuthService {
  /** Creates a user, a workspace they own, and a session in it. */
  signUp(input: SignUpInput): Promise<Session>;
  /** Checks the password and opens a session in one of the user's workspaces. */
  login(input: LoginInput): Promise<Session>;
  /** Exchanges a refresh token for a new pair; a token presented twice revokes its family. */
  refresh(refreshToken: string): Promise<Session>;
  /** Revokes the family of a refresh token (unknown tokens are ignored). */
  logout(refreshToken: string): Promise<void>;
  /** Opens a session in another workspace of the user, on the request's `db`. */
  switchWorkspace(db: Db, userId: string, slug: string): Promise<Session>;
  /** Joins a workspace with an invitation token, creating the user if the email is new. */
  acceptInvitation(input: AcceptInvitationInput): Promise<Session>;
}

const invalidCredentials = () =>
  new AppError('APP_ERR_AUTH_CREDENTIALS_INVALID', 'The email or the password is wrong.');
const notAMember = () =>
  new AppError('APP_ERR_AUTH_NOT_A_MEMBER', 'You are not a member of this workspace.');
const invalidRefreshToken = () =>
  new AppError(
    'APP_ERR_AUTH_REFRESH_TOKEN_INVALID',
    'The refresh token is unknown, used, revoked or expired; sign in again.',
  );
const invalidInvitation = () =>
  new AppError(
    'APP_ERR_INVITATION_INVALID',
    'The invitation is unknown, already used or expired, or was sent to another email.',
  );

function assertUsable(workspace: UserWorkspaceRow): void {
  if (workspace.status === 'active') return;
  if (workspace.status === 'suspended') {
    throw new TenantryError('TENANTRY_ERR_TENANT_SUSPENDED', 'This workspace is suspended.');
  }
  if (workspace.status === 'moving') {
    throw new TenantryError(
      'TENANTRY_ERR_TENANT_MOVING',
      'This workspace is being moved; retry shortly.',
    );
  }
  throw notAMember();
}

function pickWorkspace(
  workspaces: readonly UserWorkspaceRow[],
  slug: string | undefined,
): UserWorkspaceRow {
  const chosen =
    slug === undefined
      ? (workspaces.find((workspace) => workspace.status === 'active') ?? workspaces[0])
      : workspaces.find((workspace) => workspace.slug === slug);
  if (chosen === undefined) throw notAMember();
  assertUsable(chosen);
  return chosen;
}

function summary(workspace: UserWorkspaceRow): WorkspaceSummary {
  return {
    id: workspace.tenant_id,
    slug: workspace.slug,
    name: workspace.name,
    role: workspace.role,
  };
}

/**
 * Creates the local sign-in service. Password checks cost the same whether or not the email
 * exists; refresh tokens are single-use and stored only as SHA-256.
 *
 * @example
 * ```ts
 * const auth = createAuthService(tenantry, config.auth);
 * const session = await auth.login({ email: 'ada@example.com', password: '...' });
 * ```
 */
export function createAuthService(
  tenantry: Tenantry<AppDatabase>,
  config: LocalAuthConfig,
): AuthService {
  async function issueSession(
    db: Db,
    user: UserRow,
    workspace: UserWorkspaceRow,
    workspaces: readonly UserWorkspaceRow[],
    familyId: string = randomUUID(),
  ): Promise<Session> {
    const refreshToken = newOpaqueToken();
    await insertRefreshToken(db, {
      tokenHash: hashToken(refreshToken),
      familyId,
      userId: user.id,
      workspaceId: workspace.tenant_id,
      expiresAt: new Date(Date.now() + config.refreshTokenTtlSec * 1000),
    });
    const accessToken = await signAccessToken(config, {
      userId: user.id,
      tenantId: workspace.tenant_id,
      role: workspace.role,
    });
    return {
      accessToken,
      refreshToken,
      expiresIn: config.accessTokenTtlSec,
      tokenType: 'Bearer',
      user: { id: user.id, email: user.email, name: user.name },
      workspace: summary(workspace),
      workspaces: workspaces.map(summary),
    };
  }

  return Object.freeze({
    async signUp(input: SignUpInput): Promise<Session> {
      const passwordHash = await hashPassword(input.password);
      // The user and the workspace are created in one transaction, so a taken email or slug
      // leaves neither. The membership needs the new workspace's tenant context, which only
      // exists once the workspace does: it is added in a second unit of work right after.
      const { user, tenantId } = await tenantry.db.transaction().execute(async (trx) => {
        const user = await insertUser(trx, { email: input.email, name: input.name, passwordHash });
        if (user === undefined) {
          throw new AppError('APP_ERR_EMAIL_TAKEN', 'Sign in instead, or use another email.');
        }
        const tenantId = await createTenant(trx, input.workspaceSlug, input.workspaceName);
        return { user, tenantId };
      });
      return tenantry.withTenant({ tenantId, userId: user.id }, async (db) => {
        await addMembership(db, user.id, 'owner');
        const workspaces = await userWorkspaces(db, user.id);
        return issueSession(db, user, pickWorkspace(workspaces, input.workspaceSlug), workspaces);
      });
    },

    async login(input: LoginInput): Promise<Session> {
      const user = await findUserByEmail(tenantry.db, input.email);
      if (user === undefined) {
        await burnPasswordCheck(input.password);
        throw invalidCredentials();
      }
      if (!(await verifyPassword(input.password, user.password_hash))) throw invalidCredentials();
      const workspaces = await userWorkspaces(tenantry.db, user.id);
      return issueSession(
        tenantry.db,
        user,
        pickWorkspace(workspaces, input.workspace),
        workspaces,
      );
    },

    async refresh(refreshToken: string): Promise<Session> {
      const tokenHash = hashToken(refreshToken);
      const outcome = await tenantry.db.transaction().execute(async (trx) => {
        const row = await lockRefreshToken(trx, tokenHash);
        if (row === undefined || row.revoked_at !== null || row.expires_at <= new Date()) {
          return { refused: invalidRefreshToken() } as const;
        }
        if (row.used_at !== null) {
          await revokeRefreshFamily(trx, row.family_id);
          return { refused: invalidRefreshToken() } as const;
        }
        await markRefreshTokenUsed(trx, row.id);
        const workspaces = await userWorkspaces(trx, row.user_id);
        const workspace = workspaces.find((entry) => entry.tenant_id === row.workspace_id);
        const user = await findUserById(trx, row.user_id);
        if (workspace === undefined || user === undefined) {
          await revokeRefreshFamily(trx, row.family_id);
          return { refused: notAMember() } as const;
        }
        assertUsable(workspace);
        return { session: await issueSession(trx, user, workspace, workspaces, row.family_id) };
      });
      // Refusals are returned, not thrown, so the revocations above are committed.
      if ('refused' in outcome) throw outcome.refused;
      return outcome.session;
    },

    async logout(refreshToken: string): Promise<void> {
      await revokeRefreshFamilyOf(tenantry.db, hashToken(refreshToken));
    },

    async switchWorkspace(db: Db, userId: string, slug: string): Promise<Session> {
      const workspaces = await userWorkspaces(db, userId);
      const workspace = pickWorkspace(workspaces, slug);
      const user = await findUserById(db, userId);
      if (user === undefined) throw notAMember();
      return issueSession(db, user, workspace, workspaces);
    },

    async acceptInvitation(input: AcceptInvitationInput): Promise<Session> {
      const tenantId = await findActiveTenantId(tenantry.db, input.workspace);
      if (tenantId === undefined) throw invalidInvitation();
      const tokenHash = hashToken(input.token);
      // Checked before any password work, so without a valid token nothing reveals whether
      // the email has an account.
      const open = await tenantry.withTenant(tenantId, (db) =>
        findOpenInvitation(db, tokenHash, input.email, false),
      );
      if (open === undefined) throw invalidInvitation();

      const existing = await findUserByEmail(tenantry.db, input.email);
      let newUser: { id: string; passwordHash: string } | undefined;
      if (existing === undefined) {
        newUser = { id: randomUUID(), passwordHash: await hashPassword(input.password) };
      } else if (!(await verifyPassword(input.password, existing.password_hash))) {
        throw invalidCredentials();
      }
      const userId = existing?.id ?? (newUser as { id: string }).id;

      return tenantry.withTenant({ tenantId, userId }, async (db) => {
        const invitation = await findOpenInvitation(db, tokenHash, input.email, true);
        if (invitation === undefined) throw invalidInvitation();
        let user = existing;
        if (newUser !== undefined) {
          user = await insertUser(db, {
            id: newUser.id,
            email: input.email,
            name: input.name ?? input.email.slice(0, input.email.indexOf('@')).slice(0, 200),
            passwordHash: newUser.passwordHash,
          });
          if (user === undefined) {
            throw new AppError('APP_ERR_EMAIL_TAKEN', 'This email just got an account; retry.');
          }
        }
        await addMembership(db, userId, invitation.role);
        await markInvitationAccepted(db, invitation.id);
        const workspaces = await userWorkspaces(db, userId);
        return issueSession(
          db,
          user as UserRow,
          pickWorkspace(workspaces, input.workspace),
          workspaces,
        );
      });
    },
  });
}
