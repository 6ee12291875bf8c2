import { Type } from 'typebox';

/** An email address as the API accepts it. */
export const Email = Type.String({ format: 'email', minLength: 3, maxLength: 320 });

/** A new password: at least 10 characters. */
export const NewPassword = Type.String({ minLength: 10, maxLength: 256 });

/** A workspace role. */
export const Role = Type.Union([
  Type.Literal('owner'),
  Type.Literal('admin'),
  Type.Literal('member'),
]);

/** A workspace slug as sent (the database decides whether it is valid). */
export const Slug = Type.String({ minLength: 1, maxLength: 63 });

/** A workspace with the caller's role in it. */
export const WorkspaceSummary = Type.Object({
  id: Type.String({ format: 'uuid' }),
  slug: Type.String(),
  name: Type.String(),
  role: Role,
});

/** The answer of sign-up, login, refresh, switch and invitation acceptance. */
export const Session = Type.Object({
  accessToken: Type.String({ description: 'HS256 JWT for `Authorization: Bearer`' }),
  refreshToken: Type.String({ description: 'Single-use; exchange at /auth/refresh' }),
  expiresIn: Type.Integer({ description: 'Seconds until the access token expires' }),
  tokenType: Type.Literal('Bearer'),
  user: Type.Object({
    id: Type.String({ format: 'uuid' }),
    email: Type.String(),
    name: Type.String(),
  }),
  workspace: WorkspaceSummary,
  workspaces: Type.Array(WorkspaceSummary),
});
