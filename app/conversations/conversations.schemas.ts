import { Type } from 'typebox';

/** An RFC 9457 problem+json body as every error route answers it. */
export const ProblemSchema = Type.Object(
  {
    type: Type.String(),
    title: Type.String(),
    status: Type.Integer(),
    detail: Type.String(),
    code: Type.String(),
    errors: Type.Optional(
      Type.Array(Type.Object({ pointer: Type.String(), message: Type.String() })),
    ),
  },
  { additionalProperties: true, description: 'RFC 9457 problem details' },
);

/** `:id` of a conversation route. */
export const ConversationParams = Type.Object({ id: Type.String({ format: 'uuid' }) });

/** A conversation in API responses. */
export const ConversationSchema = Type.Object({
  id: Type.String({ format: 'uuid' }),
  contactId: Type.String({ format: 'uuid' }),
  contactName: Type.String(),
  subject: Type.Union([Type.String(), Type.Null()]),
  status: Type.Union([Type.Literal('open'), Type.Literal('closed')]),
  assigneeId: Type.Union([Type.String({ format: 'uuid' }), Type.Null()]),
  version: Type.Integer({ description: 'Incremented by every update; the ETag carries it.' }),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
  lastMessageAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
});
