import { TenantryError } from 'tenantry';
import { Type } from 'typebox';

/** Query parameters of a cursor-paginated list. */
export const PageQuery = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 25 })),
  cursor: Type.Optional(
    Type.String({ maxLength: 512, description: 'nextCursor of the previous page' }),
  ),
});

/** A page of results and the cursor of the next one (`null` on the last page). */
export function Page<T extends ReturnType<typeof Type.Object>>(item: T) {
  return Type.Object({
    items: Type.Array(item),
    nextCursor: Type.Union([Type.String(), Type.Null()]),
  });
}

/**
 * Encodes the sort key of the last row of a page as an opaque cursor. The cursor only says
 * where to continue; it grants nothing (the next query runs under the same tenant's RLS).
 * Timestamps must keep PostgreSQL's microseconds: select them as text for the key (a JS `Date`
 * drops them, and rows that differ only there would repeat or be skipped).
 *
 * @example
 * ```ts
 * // created_at_key: to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
 * const next = encodeCursor([row.created_at_key, row.id]);
 * ```
 */
export function encodeCursor(values: readonly (string | number)[]): string {
  return Buffer.from(JSON.stringify(values)).toString('base64url');
}

/**
 * Decodes a cursor made by {@link encodeCursor}, checking it has `size` string/number parts.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_VALIDATION` for a cursor that was not ours.
 * @example
 * ```ts
 * const [createdAt, id] = decodeCursor(query.cursor, 2);
 * ```
 */
export function decodeCursor(cursor: string, size: number): (string | number)[] {
  try {
    const values: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    if (
      Array.isArray(values) &&
      values.length === size &&
      values.every((value) => typeof value === 'string' || typeof value === 'number')
    ) {
      return values as (string | number)[];
    }
  } catch {}
  throw new TenantryError('TENANTRY_ERR_HTTP_VALIDATION', 'The cursor is not valid.', {
    details: {
      errors: [{ pointer: '/querystring/cursor', message: 'is not a cursor from this API' }],
    },
  });
}

/**
 * Splits `limit + 1` fetched rows into a page and the cursor of the next page.
 *
 * @example
 * ```ts
 * const rows = await query.limit(limit + 1).execute();
 * return toPage(rows, limit, (row) => [row.created_at_key, row.id]);
 * ```
 */
export function toPage<T>(
  rows: readonly T[],
  limit: number,
  keyOf: (row: T) => readonly (string | number)[],
): { items: T[]; nextCursor: string | null } {
  const items = rows.slice(0, limit);
  const last = items.at(-1);
  return {
    items,
    nextCursor: rows.length > limit && last !== undefined ? encodeCursor(keyOf(last)) : null,
  };
}
