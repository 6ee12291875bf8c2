import { isTenantryError, isUuid, TenantryError } from 'tenantry';
import { defineJob, type JobDefinition, type JobSchedule } from 'tenantry/jobs';
import type { AppDatabase } from '../database.ts';
import type { AppStorage } from '../files/app-storage.ts';
import { contactCsvLine, contactsCsvHeader, csvField } from './contacts-csv.ts';
import { contactsPage, findExport, finishExport } from './exports.repository.ts';

/** Payload of `contacts.export`. */
export interface ContactsExportPayload {
  readonly exportId: string;
}

/** The jobs that need the app's storage. */
export interface StorageJobs {
  /** Writes the workspace's contacts to a CSV file and marks the export ready. */
  readonly contactsExport: JobDefinition<ContactsExportPayload, AppDatabase>;
  /** Removes the workspace's uploads that were never confirmed and whose URL expired. */
  readonly cleanupPending: JobDefinition<Record<string, never>, AppDatabase>;
  /** Every hour, one `storage.cleanup-pending` job per active workspace. */
  readonly cleanupSchedule: JobSchedule<Record<string, never>>;
}

// Contacts read per query while the CSV is built.
const pageSize = 1000;

/**
 * Builds the storage jobs on the app's storage. `contacts.export` builds the CSV page by page in
 * the workspace's transaction (RLS limits it to that workspace's contacts), stores it as an
 * uploaded file of the workspace and marks the export ready in the same transaction; on its last
 * attempt a failure marks the export failed instead of retrying.
 *
 * @example
 * ```ts
 * const jobs = createStorageJobs(files);
 * await enqueueJob(db, jobs.contactsExport, { exportId });
 * ```
 */
export function createStorageJobs(files: AppStorage): StorageJobs {
  const contactsExport = defineJob<ContactsExportPayload, AppDatabase>('contacts.export', {
    maxAttempts: 5,
    parse(data) {
      const exportId =
        typeof data === 'object' && data !== null && 'exportId' in data ? data.exportId : undefined;
      if (!isUuid(exportId)) {
        throw new TenantryError(
          'TENANTRY_ERR_JOB_INVALID',
          'The payload of contacts.export needs an exportId UUID.',
        );
      }
      return { exportId };
    },
    async run(payload, ctx) {
      const row = await findExport(ctx.db, payload.exportId, true);
      if (row === undefined || row.status !== 'queued') return;
      try {
        // A savepoint: when the last attempt fails, the export is still marked failed.
        await ctx.db.transaction().execute(async (db) => {
          const chunks: Buffer[] = [
            Buffer.from(`${contactsCsvHeader.map(csvField).join(',')}\r\n`),
          ];
          let count = 0;
          let after: string | undefined;
          for (;;) {
            const page = await contactsPage(db, after, pageSize);
            for (const contact of page) chunks.push(Buffer.from(contactCsvLine(contact)));
            count += page.length;
            const last = page.at(-1);
            if (last === undefined || page.length < pageSize) break;
            after = last.id;
          }
          const file = await files.putFile(db, {
            fileName: `contacts-${row.created_at.toISOString().slice(0, 10)}.csv`,
            contentType: 'text/csv',
            body: Buffer.concat(chunks),
          });
          await finishExport(db, row.id, { status: 'ready', fileId: file.id, rowCount: count });
          ctx.logger.debug({ exportId: row.id, contacts: count }, 'contacts exported');
        });
      } catch (error) {
        if (ctx.attempt < ctx.maxAttempts) throw error;
        ctx.logger.error({ exportId: row.id, err: error }, 'contacts export failed for good');
        await finishExport(ctx.db, row.id, {
          status: 'failed',
          // Shown to the workspace: a coded error's message is written for clients; any other
          // text (a driver's, naming hosts or buckets) stays in the logs.
          error: isTenantryError(error) ? error.message : 'The export file could not be written.',
        });
      }
    },
  });

  const cleanupPending = defineJob<Record<string, never>, AppDatabase>('storage.cleanup-pending', {
    parse: () => ({}),
    maxAttempts: 3,
    async run(_payload, ctx) {
      const removed = await files.storage.removeStalePendingUploads(ctx.db, new Date());
      const purged = await files.storage.purgeDeletedFiles(ctx.db);
      ctx.logger.debug({ removed, purged }, 'stale uploads and deleted files removed');
    },
  });

  return Object.freeze({
    contactsExport,
    cleanupPending,
    cleanupSchedule: Object.freeze({
      name: 'storage-cleanup-pending',
      cron: '41 * * * *',
      job: cleanupPending,
      payload: () => ({}),
    }),
  });
}
