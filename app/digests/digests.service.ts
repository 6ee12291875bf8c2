import type { Kysely } from 'kysely';
import { TenantryError } from 'tenantry';
import type { AppDatabase } from '../database.ts';
import { decodeCursor, toPage } from '../http/pagination.ts';
import * as repository from './digests.repository.ts';

/** A conversation digest as the API returns it. */
export interface Digest {
  /** The UTC day, `YYYY-MM-DD`. */
  readonly day: string;
  readonly conversationsOpened: number;
  readonly conversationsActive: number;
  readonly messagesIn: number;
  readonly messagesOut: number;
  readonly computedAt: string;
}

function toDigest(row: repository.DigestRow): Digest {
  return {
    day: row.day,
    conversationsOpened: row.conversations_opened,
    conversationsActive: row.conversations_active,
    messagesIn: row.messages_in,
    messagesOut: row.messages_out,
    computedAt: row.computed_at.toISOString(),
  };
}

function isCalendarDay(value: string): boolean {
  return (
    /^\d{4}-\d{2}-\d{2}$/.test(value) &&
    !Number.isNaN(Date.parse(`${value}T00:00:00Z`)) &&
    new Date(`${value}T00:00:00Z`).toISOString().startsWith(value)
  );
}

/**
 * Reads the digest of one UTC day.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_VALIDATION` for a day that is not in the calendar,
 *   `TENANTRY_ERR_HTTP_NOT_FOUND` when no digest was computed for it.
 * @example
 * ```ts
 * const digest = await getDigest(db, '2026-03-14');
 * ```
 */
export async function getDigest(db: Kysely<AppDatabase>, day: string): Promise<Digest> {
  if (!isCalendarDay(day)) {
    throw new TenantryError('TENANTRY_ERR_HTTP_VALIDATION', '/params/day is not a calendar day', {
      details: { errors: [{ pointer: '/params/day', message: 'is not a calendar day' }] },
    });
  }
  const row = await repository.findDigest(db, day);
  if (row === undefined) {
    throw new TenantryError('TENANTRY_ERR_HTTP_NOT_FOUND', 'No digest was computed for this day.');
  }
  return toDigest(row);
}

/**
 * Lists a page of digests, latest day first.
 *
 * @example
 * ```ts
 * const page = await listDigests(db, { limit: 31 });
 * ```
 */
export async function listDigests(
  db: Kysely<AppDatabase>,
  query: { readonly limit: number; readonly cursor?: string | undefined },
): Promise<{ items: Digest[]; nextCursor: string | null }> {
  let before: string | undefined;
  if (query.cursor !== undefined) {
    const [day] = decodeCursor(query.cursor, 1);
    if (typeof day !== 'string' || !isCalendarDay(day)) {
      throw new TenantryError('TENANTRY_ERR_HTTP_VALIDATION', 'The cursor is not valid.', {
        details: {
          errors: [{ pointer: '/querystring/cursor', message: 'is not a cursor of this listing' }],
        },
      });
    }
    before = day;
  }
  const rows = await repository.listDigests(db, { limit: query.limit + 1, before });
  const page = toPage(rows, query.limit, (row) => [row.day]);
  return { items: page.items.map(toDigest), nextCursor: page.nextCursor };
}
