import { requireTenant } from 'tenantry/fastify';
import { Type } from 'typebox';
import { AppError } from '../errors.ts';
import type { AppInstance, AppServices } from '../http/types.ts';
import { findUserById, userWorkspaces } from './auth.repository.ts';
import { Email, NewPassword, Session, Slug, WorkspaceSummary } from './auth.schemas.ts';
import { type AuthService, createAuthService } from './auth.service.ts';

const RefreshBody = Type.Object(
  { refreshToken: Type.String({ minLength: 1, maxLength: 256 }) },
  { additionalProperties: false },
);

const Me = Type.Object({
  user: Type.Union([
    Type.Object({
      id: Type.String({ format: 'uuid' }),
      email: Type.Union([Type.String(), Type.Null()]),
      name: Type.Union([Type.String(), Type.Null()]),
    }),
    Type.Null(),
  ]),
  workspace: Type.Object({
    id: Type.String({ format: 'uuid' }),
    slug: Type.String(),
    name: Type.String(),
    role: Type.Union([Type.String(), Type.Null()]),
  }),
  workspaces: Type.Array(WorkspaceSummary),
});

function claim(claims: Readonly<Record<string, unknown>> | undefined, name: string): string | null {
  const value = claims?.[name];
  return typeof value === 'string' ? value : null;
}

/**
 * Sign-up, login, token refresh and logout, workspace switching, invitation acceptance and
 * `/v1/me`. In external identity-provider mode only `/v1/me` answers; the local sign-in routes
 * answer 404 `APP_ERR_AUTH_EXTERNAL_MODE`.
 *
 * @example
 * ```ts
 * await app.register(authRoutes, services);
 * ```
 */
export async function authRoutes(app: AppInstance, options: AppServices): Promise<void> {
  const service: AuthService | undefined =
    options.auth.mode === 'local' ? createAuthService(options.tenantry, options.auth) : undefined;
  const local = (): AuthService => {
    if (service === undefined) {
      throw new AppError(
        'APP_ERR_AUTH_EXTERNAL_MODE',
        'Sign in with the identity provider; this server does not issue tokens.',
      );
    }
    return service;
  };
  // Refused before body validation, so external mode answers the same for any request.
  const localOnly = async () => {
    local();
  };

  app.post(
    '/auth/signup',
    {
      config: { tenant: 'none' },
      onRequest: localOnly,
      schema: {
        tags: ['auth'],
        summary: 'Create an account and its first workspace (you become its owner)',
        security: [],
        body: Type.Object(
          {
            email: Email,
            password: NewPassword,
            name: Type.String({ minLength: 1, maxLength: 200 }),
            workspaceName: Type.String({ minLength: 1, maxLength: 200 }),
            workspaceSlug: Slug,
          },
          { additionalProperties: false },
        ),
        response: { 201: Session },
      },
    },
    async (request, reply) => {
      const session = await local().signUp(request.body);
      return reply.code(201).send(session);
    },
  );

  app.post(
    '/auth/login',
    {
      config: { tenant: 'none' },
      onRequest: localOnly,
      schema: {
        tags: ['auth'],
        summary: 'Sign in with email and password',
        description:
          'Opens a session in the workspace named by `workspace` (a slug), or in the first of your workspaces by name.',
        security: [],
        body: Type.Object(
          {
            email: Type.String({ minLength: 1, maxLength: 320 }),
            password: Type.String({ minLength: 1, maxLength: 256 }),
            workspace: Type.Optional(Slug),
          },
          { additionalProperties: false },
        ),
        response: { 200: Session },
      },
    },
    async (request) => local().login(request.body),
  );

  app.post(
    '/auth/refresh',
    {
      config: { tenant: 'none' },
      onRequest: localOnly,
      schema: {
        tags: ['auth'],
        summary: 'Exchange a refresh token for a new access and refresh token',
        description:
          'Refresh tokens are single-use. Presenting a used one revokes every token of its session. Refused once you are no longer a member of the workspace.',
        security: [],
        body: RefreshBody,
        response: { 200: Session },
      },
    },
    async (request) => local().refresh(request.body.refreshToken),
  );

  app.post(
    '/auth/logout',
    {
      config: { tenant: 'none' },
      onRequest: localOnly,
      schema: {
        tags: ['auth'],
        summary: 'End a session: revoke its refresh tokens',
        security: [],
        body: RefreshBody,
        response: { 204: Type.Null() },
      },
    },
    async (request, reply) => {
      await local().logout(request.body.refreshToken);
      return reply.code(204).send(null);
    },
  );

  app.post(
    '/auth/switch',
    {
      config: { tenant: 'authenticated' },
      onRequest: localOnly,
      schema: {
        tags: ['auth'],
        summary: 'Get tokens for another workspace you belong to',
        body: Type.Object({ workspace: Slug }, { additionalProperties: false }),
        response: { 200: Session },
      },
    },
    async (request) => {
      const tenant = requireTenant(request);
      if (tenant.userId === undefined) {
        throw new AppError(
          'APP_ERR_AUTH_NOT_A_MEMBER',
          'Only a signed-in user can switch workspaces.',
        );
      }
      return local().switchWorkspace(tenant.db, tenant.userId, request.body.workspace);
    },
  );

  app.post(
    '/auth/invitations/accept',
    {
      config: { tenant: 'none' },
      onRequest: localOnly,
      schema: {
        tags: ['auth'],
        summary: 'Join a workspace with an invitation token',
        description:
          'Creates your account when the email is new; otherwise give your current password. The email must be the one invited.',
        security: [],
        body: Type.Object(
          {
            workspace: Slug,
            token: Type.String({ minLength: 1, maxLength: 256 }),
            email: Email,
            password: NewPassword,
            name: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
          },
          { additionalProperties: false },
        ),
        response: { 200: Session },
      },
    },
    async (request) => local().acceptInvitation(request.body),
  );

  app.get(
    '/v1/me',
    {
      config: { tenant: 'authenticated' },
      schema: {
        tags: ['auth'],
        summary: 'Who you are: your profile, the current workspace and all of yours',
        response: { 200: Me },
      },
    },
    async (request) => {
      const tenant = requireTenant(request);
      const workspace = {
        id: tenant.id,
        slug: tenant.slug,
        name: tenant.name,
        role: tenant.role ?? null,
      };
      if (tenant.userId === undefined) return { user: null, workspace, workspaces: [] };
      const user = await findUserById(tenant.db, tenant.userId);
      const claims = tenant.identities.find((identity) => identity.userId !== undefined)?.claims;
      const workspaces = await userWorkspaces(tenant.db, tenant.userId);
      return {
        user: {
          id: tenant.userId,
          email: user?.email ?? claim(claims, 'email'),
          name: user?.name ?? claim(claims, 'name'),
        },
        workspace,
        workspaces: workspaces.map((entry) => ({
          id: entry.tenant_id,
          slug: entry.slug,
          name: entry.name,
          role: entry.role,
        })),
      };
    },
  );
}
