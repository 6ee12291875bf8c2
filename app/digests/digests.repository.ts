import { type Kysely, sql } from 'kysely';
import type { AppDatabase } from '../database.ts';

/** One workspace's conversation digest of one UTC day. */
export interface DigestRow {
  /** `YYYY-MM-DD` */
  readonly day: string;
  readonly conversations_opened: number;
  readonly conversations_active: number;
  readonly messages_in: number;
  readonly messages_out: number;
  readonly computed_at: Date;
}

const columns = [
  sql<string>`day::text`.as('day'),
  'conversations_opened',
  'conversations_active',
  'messages_in',
  'messages_out',
  'computed_at',
] as const;

function dayBounds(day: string): { start: string; end: string } {
  const start = new Date(`${day}T00:00:00.000Z`);
  const end = new Date(start.getTime() + 86_400_000);
  return { start: start.toISOString(), end: end.toISOString() };
}

/**
 * Computes the current workspace's digest of the UTC day `day` from its conversations and
 * messages and stores it, replacing the one stored for that day if any.
 *
 * @example
 * ```ts
 * const digest = await computeDigest(db, '2026-03-14');
 * ```
 */
export async function computeDigest(db: Kysely<AppDatabase>, day: string): Promise<DigestRow> {
  const { start, end } = dayBounds(day);
  const from = sql<Date>`cast(${start} as timestamptz)`;
  const to = sql<Date>`cast(${end} as timestamptz)`;
  const opened = await db
    .selectFrom('conversations')
    .select(sql<number>`count(*)::integer`.as('n'))
    .where('created_at', '>=', from)
    .where('created_at', '<', to)
    .executeTakeFirstOrThrow();
  const traffic = await db
    .selectFrom('messages')
    .select([
      sql<number>`(count(*) filter (where direction = 'inbound'))::integer`.as('inbound'),
      sql<number>`(count(*) filter (where direction = 'outbound'))::integer`.as('outbound'),
      sql<number>`count(distinct conversation_id)::integer`.as('conversations'),
    ])
    .where('created_at', '>=', from)
    .where('created_at', '<', to)
    .executeTakeFirstOrThrow();
  const values = {
    conversations_opened: opened.n,
    conversations_active: traffic.conversations,
    messages_in: traffic.inbound,
    messages_out: traffic.outbound,
  };
  return db
    .insertInto('conversation_digests')
    .values({ day, ...values })
    .onConflict((conflict) =>
      conflict
        .columns(['tenant_id', 'day'])
        .doUpdateSet({ ...values, computed_at: sql<Date>`now()` }),
    )
    .returning(columns)
    .executeTakeFirstOrThrow();
}

/**
 * Finds the current workspace's digest of one day.
 *
 * @example
 * ```ts
 * const digest = await findDigest(db, '2026-03-14'); // undefined when not computed
 * ```
 */
export async function findDigest(
  db: Kysely<AppDatabase>,
  day: string,
): Promise<DigestRow | undefined> {
  return db
    .selectFrom('conversation_digests')
    .select(columns)
    .where('day', '=', sql<string>`cast(${day} as date)`)
    .executeTakeFirst();
}

/**
 * Lists `limit` digests, latest day first, before the day `before`.
 *
 * @example
 * ```ts
 * const rows = await listDigests(db, { limit: 31 });
 * ```
 */
export async function listDigests(
  db: Kysely<AppDatabase>,
  options: { readonly limit: number; readonly before?: string | undefined },
): Promise<DigestRow[]> {
  let query = db
    .selectFrom('conversation_digests')
    .select(columns)
    .orderBy('conversation_digests.day', 'desc')
    .limit(options.limit);
  if (options.before !== undefined) {
    query = query.where(
      'conversation_digests.day',
      '<',
      sql<string>`cast(${options.before} as date)`,
    );
  }
  return query.execute();
}
