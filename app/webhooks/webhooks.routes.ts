import type { FastifyRequest } from 'fastify';
import { TenantryError } from 'tenantry';
import { requireTenant } from 'tenantry/fastify';
import { Type } from 'typebox';
import { ProblemSchema } from '../conversations/conversations.schemas.ts';
import type { AppInstance, AppServices } from '../http/types.ts';
import { maxMessageLength } from '../messages/messages.service.ts';
import { signatureHeader, verifyWebhookSignature } from './webhook-signature.ts';
import { findInboundWebhookSecret } from './webhooks.repository.ts';
import { receiveInboundMessage } from './webhooks.service.ts';

const InboundMessageBody = Type.Object(
  {
    messageId: Type.String({ minLength: 1, maxLength: 128, description: "The provider's id" }),
    from: Type.String({ pattern: '^\\+[1-9][0-9]{6,14}$', description: 'E.164 phone number' }),
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
    text: Type.String({ minLength: 1, maxLength: maxMessageLength }),
    timestamp: Type.Union([
      Type.Integer({ minimum: 0, maximum: 253_402_300_799, description: 'Unix seconds' }),
      Type.String({ format: 'date-time' }),
    ]),
  },
  { additionalProperties: false },
);

const InboundResultSchema = Type.Object({
  status: Type.Union([Type.Literal('accepted'), Type.Literal('duplicate')]),
  messageId: Type.String({ format: 'uuid', description: 'Our id of the stored message' }),
});

/** Decodes the signed bytes as UTF-8, refusing invalid sequences instead of replacing them. */
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

function signatureInvalid(): TenantryError {
  return new TenantryError(
    'TENANTRY_ERR_WEBHOOK_SIGNATURE_INVALID',
    `The ${signatureHeader} header is missing, stale or does not match this workspace's secret.`,
  );
}

/**
 * The channel provider's inbound webhook, `POST /t/<workspace>/webhooks/inbound`: no token, the
 * workspace comes from the path and the body must carry an HMAC signature made with that
 * workspace's `inbound_webhook_secret`. JSON bodies reach this plugin as raw bytes (its own
 * content-type parser, scoped to it) so the signature is checked over exactly what was sent,
 * before the body is parsed, validated or anything is written.
 *
 * @example
 * ```ts
 * await app.register(webhooksRoutes, services); // at the root, no prefix
 * ```
 */
export async function webhooksRoutes(app: AppInstance, options: AppServices): Promise<void> {
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, body, done) => {
    done(null, body);
  });

  async function verifyAndParse(request: FastifyRequest): Promise<void> {
    const raw = request.body ?? Buffer.alloc(0);
    if (!Buffer.isBuffer(raw)) {
      throw new TenantryError(
        'TENANTRY_ERR_HTTP_UNSUPPORTED_MEDIA_TYPE',
        'Send the webhook body as application/json.',
      );
    }
    const secret = await findInboundWebhookSecret(requireTenant(request).db);
    const valid = verifyWebhookSignature({
      header: request.headers[signatureHeader],
      body: raw,
      secret,
      toleranceSec: options.webhookToleranceSec,
    });
    if (!valid) throw signatureInvalid();
    try {
      request.body = JSON.parse(strictUtf8.decode(raw));
    } catch (error) {
      throw new TenantryError('TENANTRY_ERR_HTTP_BAD_REQUEST', 'The body is not valid JSON.', {
        cause: error,
      });
    }
  }

  app.post(
    '/t/:workspace/webhooks/inbound',
    {
      config: { tenant: 'public' },
      preValidation: verifyAndParse,
      schema: {
        tags: ['webhooks'],
        summary: 'Receive a message from the channel provider',
        description: `Authenticated by the \`${signatureHeader}: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">\` header, made with the workspace's inbound webhook secret; timestamps outside the tolerance are refused. A redelivered messageId is answered \`duplicate\` and stores nothing.`,
        security: [],
        params: Type.Object({ workspace: Type.String({ description: 'Workspace slug' }) }),
        headers: Type.Object({
          [signatureHeader]: Type.Optional(Type.String({ description: 't=<unix>,v1=<hex>' })),
        }),
        body: InboundMessageBody,
        response: {
          200: InboundResultSchema,
          400: ProblemSchema,
          401: ProblemSchema,
          403: ProblemSchema,
          404: ProblemSchema,
          415: ProblemSchema,
        },
      },
    },
    async (request) => {
      const tenant = requireTenant(request);
      return receiveInboundMessage(tenant.db, tenant.id, request.body);
    },
  );
}
