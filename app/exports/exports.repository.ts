import type { Kysely } from 'kysely';
import type { AppDatabase, ExportStatus } from '../database.ts';

/** An export as stored. */
export interface ExportRow {
  readonly id: string;
  readonly kind: 'contacts';
  readonly status: ExportStatus;
  readonly file_id: string | null;
  readonly row_count: number | null;
  readonly error: string | null;
  readonly created_by: string | null;
  readonly created_at: Date;
  readonly finished_at: Date | null;
}

/** A contact as the export writes it. */
export interface ExportedContact {
  readonly id: string;
  readonly name: string;
  readonly phone: string | null;
  readonly email: string | null;
  readonly attributes: Record<string, unknown>;
  readonly created_at: Date;
}

const exportColumns = [
  'id',
  'kind',
  'status',
  'file_id',
  'row_count',
  'error',
  'created_by',
  'created_at',
  'finished_at',
] as const;

/**
 * Records a queued export in the current workspace.
 *
 * @example
 * ```ts
 * const row = await insertExport(db, 'contacts', userId);
 * ```
 */
export async function insertExport(
  db: Kysely<AppDatabase>,
  kind: 'contacts',
  createdBy: string | null,
): Promise<ExportRow> {
  return db
    .insertInto('exports')
    .values({ kind, created_by: createdBy })
    .returning(exportColumns)
    .executeTakeFirstOrThrow();
}

/**
 * One export of the current workspace, locked for the job that finishes it when `forUpdate`.
 *
 * @example
 * ```ts
 * const row = await findExport(db, exportId);
 * ```
 */
export async function findExport(
  db: Kysely<AppDatabase>,
  id: string,
  forUpdate = false,
): Promise<ExportRow | undefined> {
  const query = db.selectFrom('exports').select(exportColumns).where('id', '=', id);
  return (forUpdate ? query.forUpdate() : query).executeTakeFirst();
}

/**
 * Settles a queued export: `ready` with its file, or `failed` with the reason.
 *
 * @example
 * ```ts
 * await finishExport(db, exportId, { status: 'ready', fileId, rowCount: 42 });
 * ```
 */
export async function finishExport(
  db: Kysely<AppDatabase>,
  id: string,
  outcome:
    | { readonly status: 'ready'; readonly fileId: string; readonly rowCount: number }
    | { readonly status: 'failed'; readonly error: string },
): Promise<void> {
  await db
    .updateTable('exports')
    .set(
      outcome.status === 'ready'
        ? { status: 'ready', file_id: outcome.fileId, row_count: outcome.rowCount }
        : { status: 'failed', error: outcome.error },
    )
    .set({ finished_at: new Date() })
    .where('id', '=', id)
    .where('status', '=', 'queued')
    .execute();
}

/**
 * One page of the current workspace's contacts in id order, after `afterId`.
 *
 * @example
 * ```ts
 * const page = await contactsPage(db, undefined, 1000);
 * ```
 */
export async function contactsPage(
  db: Kysely<AppDatabase>,
  afterId: string | undefined,
  limit: number,
): Promise<ExportedContact[]> {
  let query = db
    .selectFrom('contacts')
    .select(['id', 'name', 'phone', 'email', 'attributes', 'created_at']);
  if (afterId !== undefined) query = query.where('id', '>', afterId);
  return query.orderBy('id').limit(limit).execute();
}
