import { createApiKey, isUuid, listApiKeys, revokeApiKey, TenantryError } from 'tenantry';
import { requireTenant } from 'tenantry/fastify';
import { Type } from 'typebox';
import { Email, Role } from '../auth/auth.schemas.ts';
import { decodeCursor, Page, PageQuery, toPage } from '../http/pagination.ts';
import type { AppInstance, AppServices } from '../http/types.ts';
import {
  deleteInvitation,
  type InvitationRow,
  listInvitations,
  listMembers,
  type MemberRow,
} from './workspaces.repository.ts';
import {
  changeMemberRole,
  inviteMember,
  removeMember,
  rotateWebhookSecret,
} from './workspaces.service.ts';

const managers = ['owner', 'admin'] as const;
const cursorTimePattern = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;

const Member = Type.Object({
  userId: Type.String({ format: 'uuid' }),
  email: Type.String(),
  name: Type.String(),
  role: Role,
  joinedAt: Type.String({ format: 'date-time' }),
});

const InvitedRole = Type.Union([Type.Literal('admin'), Type.Literal('member')]);

const Invitation = Type.Object({
  id: Type.String({ format: 'uuid' }),
  email: Type.String(),
  role: InvitedRole,
  status: Type.Union([Type.Literal('pending'), Type.Literal('accepted'), Type.Literal('expired')]),
  invitedBy: Type.String({ format: 'uuid' }),
  expiresAt: Type.String({ format: 'date-time' }),
  acceptedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  createdAt: Type.String({ format: 'date-time' }),
});

const CreatedInvitation = Type.Object({
  ...Invitation.properties,
  token: Type.String({ description: 'Shown once; the invitee accepts with it' }),
});

const ApiKey = Type.Object({
  id: Type.String({ format: 'uuid' }),
  prefix: Type.String(),
  name: Type.String(),
  scopes: Type.Union([Type.Array(Type.String()), Type.Null()]),
  createdBy: Type.Union([Type.String({ format: 'uuid' }), Type.Null()]),
  createdAt: Type.String({ format: 'date-time' }),
  expiresAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  revokedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  lastUsedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
});

const CreatedApiKey = Type.Object({
  ...ApiKey.properties,
  key: Type.String({ description: 'Shown once; send it as `X-API-Key`' }),
});

const UserIdParams = Type.Object({ userId: Type.String({ format: 'uuid' }) });
const IdParams = Type.Object({ id: Type.String({ format: 'uuid' }) });

function toMember(row: MemberRow) {
  return {
    userId: row.user_id,
    email: row.email,
    name: row.name,
    role: row.role,
    joinedAt: row.created_at.toISOString(),
  };
}

function toInvitation(row: InvitationRow) {
  return {
    id: row.id,
    email: row.email,
    role: row.role,
    status:
      row.accepted_at !== null
        ? ('accepted' as const)
        : row.expires_at <= new Date()
          ? ('expired' as const)
          : ('pending' as const),
    invitedBy: row.invited_by,
    expiresAt: row.expires_at.toISOString(),
    acceptedAt: row.accepted_at?.toISOString() ?? null,
    createdAt: row.created_at.toISOString(),
  };
}

function toApiKey(key: Awaited<ReturnType<typeof listApiKeys>>[number]) {
  return {
    id: key.id,
    prefix: key.prefix,
    name: key.name,
    scopes: key.scopes === null ? null : [...key.scopes],
    createdBy: key.createdBy,
    createdAt: key.createdAt.toISOString(),
    expiresAt: key.expiresAt?.toISOString() ?? null,
    revokedAt: key.revokedAt?.toISOString() ?? null,
    lastUsedAt: key.lastUsedAt?.toISOString() ?? null,
  };
}

/**
 * Workspace management: the current workspace, members and roles, invitations, API keys and
 * the inbound webhook secret. Registered under `/v1` and `/t/<workspace>/v1`; changes need the
 * owner or admin role.
 *
 * @example
 * ```ts
 * await app.register(workspacesRoutes, { ...services, prefix: '/v1' });
 * ```
 */
export async function workspacesRoutes(app: AppInstance, _options: AppServices): Promise<void> {
  app.get(
    '/workspace',
    {
      schema: {
        tags: ['workspaces'],
        summary: 'The current workspace and your role in it',
        response: {
          200: Type.Object({
            id: Type.String({ format: 'uuid' }),
            slug: Type.String(),
            name: Type.String(),
            plan: Type.String(),
            role: Type.Union([Type.String(), Type.Null()]),
          }),
        },
      },
    },
    async (request) => {
      const tenant = requireTenant(request);
      return {
        id: tenant.id,
        slug: tenant.slug,
        name: tenant.name,
        plan: tenant.plan,
        role: tenant.role ?? null,
      };
    },
  );

  app.post(
    '/workspace/webhook-secret',
    {
      config: { roles: managers },
      schema: {
        tags: ['workspaces'],
        summary: 'Rotate the inbound webhook secret (shown once)',
        response: { 200: Type.Object({ inboundWebhookSecret: Type.String() }) },
      },
    },
    async (request) => ({
      inboundWebhookSecret: await rotateWebhookSecret(requireTenant(request).db),
    }),
  );

  app.get(
    '/members',
    {
      config: { scope: 'members:read' },
      schema: {
        tags: ['workspaces'],
        summary: 'List the members of the workspace',
        description: 'API keys limited by scopes need `members:read`.',
        querystring: PageQuery,
        response: { 200: Page(Member) },
      },
    },
    async (request) => {
      const limit = request.query.limit ?? 25;
      const cursor = request.query.cursor;
      let after: { createdAt: string; userId: string } | undefined;
      if (cursor !== undefined) {
        const [createdAt, userId] = decodeCursor(cursor, 2);
        if (
          typeof createdAt !== 'string' ||
          !cursorTimePattern.test(createdAt) ||
          typeof userId !== 'string' ||
          !isUuid(userId)
        ) {
          throw new TenantryError('TENANTRY_ERR_HTTP_VALIDATION', 'The cursor is not valid.', {
            details: {
              errors: [
                { pointer: '/querystring/cursor', message: 'is not a cursor from this API' },
              ],
            },
          });
        }
        after = { createdAt, userId };
      }
      const rows = await listMembers(requireTenant(request).db, limit + 1, after);
      const page = toPage(rows, limit, (row) => [row.cursor_at, row.user_id]);
      return { items: page.items.map(toMember), nextCursor: page.nextCursor };
    },
  );

  app.patch(
    '/members/:userId',
    {
      config: { roles: managers },
      schema: {
        tags: ['workspaces'],
        summary: "Change a member's role",
        description:
          'Only owners make or change owners; the last owner cannot be demoted (409 APP_ERR_LAST_OWNER).',
        params: UserIdParams,
        body: Type.Object({ role: Role }, { additionalProperties: false }),
        response: { 200: Member },
      },
    },
    async (request) => {
      const tenant = requireTenant(request);
      const member = await changeMemberRole(
        tenant.db,
        { userId: tenant.userId, role: tenant.role },
        request.params.userId,
        request.body.role,
      );
      return toMember(member);
    },
  );

  app.delete(
    '/members/:userId',
    {
      config: { roles: managers },
      schema: {
        tags: ['workspaces'],
        summary: 'Remove a member',
        description:
          'Their refresh tokens stop working at once; access tokens already issued stay valid until they expire.',
        params: UserIdParams,
        response: { 204: Type.Null() },
      },
    },
    async (request, reply) => {
      const tenant = requireTenant(request);
      await removeMember(
        tenant.db,
        { userId: tenant.userId, role: tenant.role },
        tenant.id,
        request.params.userId,
      );
      return reply.code(204).send(null);
    },
  );

  app.post(
    '/invitations',
    {
      config: { roles: managers },
      schema: {
        tags: ['workspaces'],
        summary: 'Invite someone by email (the token is shown once)',
        body: Type.Object({ email: Email, role: InvitedRole }, { additionalProperties: false }),
        response: { 201: CreatedInvitation },
      },
    },
    async (request, reply) => {
      const tenant = requireTenant(request);
      const invitation = await inviteMember(
        tenant.db,
        { userId: tenant.userId, role: tenant.role },
        request.body,
      );
      return reply.code(201).send({ ...toInvitation(invitation), token: invitation.token });
    },
  );

  app.get(
    '/invitations',
    {
      config: { roles: managers },
      schema: {
        tags: ['workspaces'],
        summary: 'List invitations, newest first',
        response: { 200: Type.Object({ items: Type.Array(Invitation) }) },
      },
    },
    async (request) => ({
      items: (await listInvitations(requireTenant(request).db)).map(toInvitation),
    }),
  );

  app.delete(
    '/invitations/:id',
    {
      config: { roles: managers },
      schema: {
        tags: ['workspaces'],
        summary: 'Withdraw an invitation',
        params: IdParams,
        response: { 204: Type.Null() },
      },
    },
    async (request, reply) => {
      if (!(await deleteInvitation(requireTenant(request).db, request.params.id))) {
        throw new TenantryError('TENANTRY_ERR_HTTP_NOT_FOUND', 'Invitation not found.');
      }
      return reply.code(204).send(null);
    },
  );

  app.post(
    '/api-keys',
    {
      config: { roles: managers },
      schema: {
        tags: ['workspaces'],
        summary: 'Create an API key (the key is shown once)',
        body: Type.Object(
          {
            name: Type.String({ minLength: 1, maxLength: 200 }),
            scopes: Type.Optional(
              Type.Array(Type.String({ pattern: '^[a-z0-9][a-z0-9:._-]{0,63}$' }), {
                maxItems: 64,
              }),
            ),
            expiresAt: Type.Optional(Type.String({ format: 'date-time' })),
          },
          { additionalProperties: false },
        ),
        response: { 201: CreatedApiKey },
      },
    },
    async (request, reply) => {
      const tenant = requireTenant(request);
      const { name, scopes, expiresAt } = request.body;
      const expires = expiresAt === undefined ? undefined : new Date(expiresAt);
      if (expires !== undefined && expires.getTime() <= Date.now()) {
        throw new TenantryError(
          'TENANTRY_ERR_HTTP_VALIDATION',
          'expiresAt must be in the future.',
          {
            details: { errors: [{ pointer: '/body/expiresAt', message: 'must be in the future' }] },
          },
        );
      }
      const created = await createApiKey(tenant.db, {
        name,
        ...(scopes === undefined ? {} : { scopes }),
        ...(expires === undefined ? {} : { expiresAt: expires }),
        ...(tenant.userId === undefined ? {} : { createdBy: tenant.userId }),
      });
      return reply.code(201).send({ ...toApiKey(created), key: created.key });
    },
  );

  app.get(
    '/api-keys',
    {
      config: { roles: managers },
      schema: {
        tags: ['workspaces'],
        summary: 'List API keys (never their secrets)',
        response: { 200: Type.Object({ items: Type.Array(ApiKey) }) },
      },
    },
    async (request) => ({
      items: (await listApiKeys(requireTenant(request).db)).map(toApiKey),
    }),
  );

  app.delete(
    '/api-keys/:id',
    {
      config: { roles: managers },
      schema: {
        tags: ['workspaces'],
        summary: 'Revoke an API key (refused from the next request on)',
        params: IdParams,
        response: { 204: Type.Null() },
      },
    },
    async (request, reply) => {
      if (!(await revokeApiKey(requireTenant(request).db, request.params.id))) {
        throw new TenantryError('TENANTRY_ERR_HTTP_NOT_FOUND', 'API key not found.');
      }
      return reply.code(204).send(null);
    },
  );
}
