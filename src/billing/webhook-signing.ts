import { createHmac, randomBytes } from 'node:crypto';
import { TenantryError, type TenantryErrorCode } from '../errors.ts';

/** The code of an invalid webhook endpoint, secret, filter or option. */
export const webhookInvalidCode: TenantryErrorCode = 'TENANTRY_ERR_WEBHOOK_INVALID';
/** The code of an unknown webhook endpoint or delivery. */
export const webhookNotFoundCode: TenantryErrorCode = 'TENANTRY_ERR_WEBHOOK_NOT_FOUND';

const secretPrefix = 'whsec_';
const minimumSecretBytes = 24;
const maximumSecretBytes = 64;
const generatedSecretBytes = 32;

/** The headers of a Standard Webhooks request, as {@link signWebhook} returns them. */
export interface WebhookHeaders {
  readonly 'webhook-id': string;
  /** Unix seconds, in decimal. */
  readonly 'webhook-timestamp': string;
  /** One `v1,<base64 HMAC-SHA256>` per secret, separated by spaces. */
  readonly 'webhook-signature': string;
}

/** What {@link signWebhook} signs. */
export interface SignWebhookInput {
  /** The message id, stable across retries (Tenantry sends the outbox event id). */
  readonly id: string;
  /** When the request is sent: a `Date` or unix seconds. */
  readonly timestamp: Date | number;
  /** The exact request body. */
  readonly body: string;
  /** `whsec_` secrets; each adds a `v1` signature (two during a rotation). */
  readonly secrets: readonly string[];
}

/**
 * Signs a webhook per the Standard Webhooks specification: `HMAC-SHA256(key, "<id>.<timestamp>.<body>")`
 * for each secret, where the key is the base64-decoded part of `whsec_<base64>`.
 *
 * @example
 * ```ts
 * import { generateWebhookSecret, signWebhook } from 'tenantry/billing';
 * const body = JSON.stringify({ type: 'quota.exceeded', timestamp: new Date().toISOString(), data: {} });
 * const headers = signWebhook({ id: eventId, timestamp: new Date(), body, secrets: [generateWebhookSecret()] });
 * await fetch(url, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body });
 * ```
 */
export function signWebhook(input: SignWebhookInput): WebhookHeaders {
  if (
    typeof input.id !== 'string' ||
    !/^[\x21-\x7e]{1,256}$/.test(input.id) ||
    input.id.includes('.')
  ) {
    throw new TenantryError(
      webhookInvalidCode,
      'A webhook id is 1-256 printable ASCII characters without spaces or dots, e.g. the event UUID.',
    );
  }
  const seconds =
    input.timestamp instanceof Date
      ? Math.floor(input.timestamp.getTime() / 1000)
      : input.timestamp;
  if (!Number.isSafeInteger(seconds) || seconds < 0) {
    throw new TenantryError(
      webhookInvalidCode,
      'A webhook timestamp is a valid Date or a non-negative integer of unix seconds.',
    );
  }
  if (typeof input.body !== 'string') {
    throw new TenantryError(webhookInvalidCode, 'A webhook body is the request body as a string.');
  }
  if (!Array.isArray(input.secrets) || input.secrets.length === 0) {
    throw new TenantryError(webhookInvalidCode, 'Signing a webhook takes at least one secret.');
  }
  const signed = `${input.id}.${seconds}.${input.body}`;
  const signatures = input.secrets.map(
    (secret) =>
      `v1,${createHmac('sha256', parseWebhookSecret(secret)).update(signed).digest('base64')}`,
  );
  return Object.freeze({
    'webhook-id': input.id,
    'webhook-timestamp': String(seconds),
    'webhook-signature': signatures.join(' '),
  });
}

/**
 * A new signing secret: `whsec_` followed by the base64 of 32 random bytes. Show it to the
 * receiver's operator once; Tenantry stores it to sign.
 *
 * @example
 * ```ts
 * import { generateWebhookSecret } from 'tenantry/billing';
 * const secret = generateWebhookSecret(); // 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw...'
 * ```
 */
export function generateWebhookSecret(): string {
  return `${secretPrefix}${randomBytes(generatedSecretBytes).toString('base64')}`;
}

/**
 * The HMAC key of a `whsec_` secret: its base64 part decoded, 24 to 64 bytes. Anything else
 * (no prefix, non-canonical base64, too short or long) is refused with a `TenantryError` that
 * never repeats the secret.
 *
 * @example
 * ```ts
 * import { parseWebhookSecret } from 'tenantry/billing';
 * const key = parseWebhookSecret(process.env.WEBHOOK_SECRET ?? ''); // Buffer of 24-64 bytes
 * ```
 */
export function parseWebhookSecret(secret: string): Buffer {
  if (typeof secret !== 'string' || !secret.startsWith(secretPrefix)) {
    throw new TenantryError(
      webhookInvalidCode,
      'A webhook secret starts with "whsec_" followed by base64, as generateWebhookSecret() makes.',
    );
  }
  const encoded = secret.slice(secretPrefix.length);
  const key = Buffer.from(encoded, 'base64');
  // Buffer.from ignores what is not base64; a round trip proves the text was canonical base64.
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(encoded) || key.toString('base64') !== encoded) {
    throw new TenantryError(
      webhookInvalidCode,
      'A webhook secret is "whsec_" followed by standard, padded base64.',
    );
  }
  if (key.length < minimumSecretBytes || key.length > maximumSecretBytes) {
    throw new TenantryError(
      webhookInvalidCode,
      `A webhook secret encodes ${minimumSecretBytes} to ${maximumSecretBytes} bytes, got ${key.length}.`,
    );
  }
  return key;
}
