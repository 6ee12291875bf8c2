import { createHmac, timingSafeEqual } from 'node:crypto';

/** The header carrying an inbound webhook's signature. */
export const signatureHeader = 'x-tenantry-signature';

function digest(secret: string, timestampSec: number, body: Buffer): Buffer {
  return createHmac('sha256', secret).update(`${timestampSec}.`).update(body).digest();
}

/**
 * Signs a webhook body as the channel provider does: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
 * "<t>.<body>">` with the workspace's secret. The value of the `x-tenantry-signature` header.
 *
 * @example
 * ```ts
 * const header = signWebhookPayload(secret, Buffer.from(json), Math.floor(Date.now() / 1000));
 * ```
 */
export function signWebhookPayload(secret: string, body: Buffer, timestampSec: number): string {
  return `t=${timestampSec},v1=${digest(secret, timestampSec, body).toString('hex')}`;
}

/**
 * Checks an `x-tenantry-signature` header against the raw body: a `t` within `toleranceSec` of
 * `nowSec` (replays of old deliveries are refused) and at least one `v1` equal, compared in
 * constant time, to the HMAC made with `secret`. Several `v1` entries allow rotating the secret.
 *
 * @example
 * ```ts
 * const ok = verifyWebhookSignature({ header, body, secret, toleranceSec: 300 });
 * ```
 */
export function verifyWebhookSignature(options: {
  header: string | string[] | undefined;
  body: Buffer;
  secret: string | undefined;
  toleranceSec: number;
  nowSec?: number;
}): boolean {
  const { header, body, secret, toleranceSec } = options;
  if (typeof header !== 'string' || secret === undefined || secret === '') return false;
  let timestamp: number | undefined;
  const candidates: Buffer[] = [];
  for (const part of header.split(',')) {
    const at = part.indexOf('=');
    if (at === -1) return false;
    const key = part.slice(0, at).trim();
    const value = part.slice(at + 1).trim();
    if (key === 't') {
      if (timestamp !== undefined || !/^\d{1,12}$/.test(value)) return false;
      timestamp = Number(value);
    } else if (key === 'v1' && /^[0-9a-f]{64}$/i.test(value)) {
      candidates.push(Buffer.from(value, 'hex'));
    }
  }
  const nowSec = options.nowSec ?? Math.floor(Date.now() / 1000);
  if (timestamp === undefined || Math.abs(nowSec - timestamp) > toleranceSec) return false;
  const expected = digest(secret, timestamp, body);
  let matched = false;
  for (const candidate of candidates) {
    if (timingSafeEqual(candidate, expected)) matched = true;
  }
  return matched;
}
