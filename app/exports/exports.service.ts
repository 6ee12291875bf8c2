import type { Kysely } from 'kysely';
import { TenantryError } from 'tenantry';
import { enqueueJob, type JobDefinition } from 'tenantry/jobs';
import type { Storage } from 'tenantry/storage';
import type { AppDatabase, ExportStatus } from '../database.ts';
import type { ContactsExportPayload } from './export.jobs.ts';
import { type ExportRow, findExport, insertExport } from './exports.repository.ts';

/** An export as the API returns it. */
export interface Export {
  id: string;
  kind: 'contacts';
  status: ExportStatus;
  fileId: string | null;
  rowCount: number | null;
  error: string | null;
  createdAt: string;
  finishedAt: string | null;
  /** A short-lived download URL while the export is ready and its file exists. */
  download: { url: string; expiresAt: string } | null;
}

/**
 * Records a contacts export and enqueues its `contacts.export` job in the same transaction (the
 * job exists if and only if the export does).
 *
 * @example
 * ```ts
 * const { exportId } = await requestContactsExport(db, userId, jobs.contactsExport);
 * ```
 */
export async function requestContactsExport(
  db: Kysely<AppDatabase>,
  userId: string | undefined,
  job: JobDefinition<ContactsExportPayload, AppDatabase>,
): Promise<{ exportId: string }> {
  const row = await insertExport(db, 'contacts', userId ?? null);
  await enqueueJob(db, job, { exportId: row.id }, { key: `export:${row.id}` });
  return { exportId: row.id };
}

/**
 * Reads an export of the current workspace, with a download URL when it is ready.
 *
 * @throws TenantryError `TENANTRY_ERR_HTTP_NOT_FOUND` (also for another workspace's export).
 * @example
 * ```ts
 * const exported = await getExport(db, storage, exportId);
 * ```
 */
export async function getExport(
  db: Kysely<AppDatabase>,
  storage: Storage,
  id: string,
): Promise<Export> {
  const row = await findExport(db, id);
  if (row === undefined) {
    throw new TenantryError('TENANTRY_ERR_HTTP_NOT_FOUND', 'Export not found.');
  }
  return { ...toExport(row), download: await downloadOf(db, storage, row) };
}

async function downloadOf(db: Kysely<AppDatabase>, storage: Storage, row: ExportRow) {
  if (row.status !== 'ready' || row.file_id === null) return null;
  try {
    const signed = await storage.requestDownload(db, row.file_id);
    return { url: signed.url, expiresAt: signed.expiresAt.toISOString() };
  } catch (error) {
    // The export's file was deleted since: the export stays, without a download.
    if (error instanceof TenantryError && error.code === 'TENANTRY_ERR_STORAGE_FILE_NOT_FOUND') {
      return null;
    }
    throw error;
  }
}

function toExport(row: ExportRow): Omit<Export, 'download'> {
  return {
    id: row.id,
    kind: row.kind,
    status: row.status,
    fileId: row.file_id,
    rowCount: row.row_count,
    error: row.error,
    createdAt: row.created_at.toISOString(),
    finishedAt: row.finished_at === null ? null : row.finished_at.toISOString(),
  };
}
