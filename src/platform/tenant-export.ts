import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createWriteStream, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { Readable, Transform, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import type pg from 'pg';
import Cursor from 'pg-cursor';
import { defaultTenantrySchema, quoteIdentifier } from '../config.ts';
import { toTenantryError } from '../database-errors.ts';
import { TenantryError } from '../errors.ts';
import type { StorageDriver } from '../storage/storage-driver.ts';
import { parseTenantId } from '../tenant-id.ts';
import { lifecycleErrorCodes, listTenantTablesOf, type TenantTable } from './tenant-tables.ts';

/** The version of Tenantry that wrote an archive (from its package.json). */
export const tenantryVersion: string = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  }
).version;

/** What {@link TenantLifecycle.exportTenant} writes. */
export interface ExportTenantOptions {
  readonly tenantId: string;
  /** Where the `.tar.gz` goes: a stream (ended when done) or a file path (removed on failure). */
  readonly output: Writable | string;
  /** Called after each batch of rows and each file object. */
  readonly onProgress?: (progress: ExportProgress) => void;
  /** Rows fetched per cursor read. @defaultValue 1000 */
  readonly batchRows?: number;
  /**
   * Largest JSONL part held in memory before it becomes one archive entry (a tar entry states its
   * size up front). Together with `batchRows` this bounds the exporter's memory.
   * @defaultValue 8388608 (8 MiB)
   */
  readonly partMaxBytes?: number;
  /** Include the file objects (through the storage driver). @defaultValue true */
  readonly includeFiles?: boolean;
}

/** Progress of an export. */
export type ExportProgress =
  | {
      readonly kind: 'table';
      /** `schema.table`, or `tenantry.outbox_events` for the tenant's events. */
      readonly table: string;
      /** Rows of this table written so far. */
      readonly rows: number;
      /** Rows written so far, every table. */
      readonly totalRows: number;
      /** The table is complete (the last event of each table, also for an empty one). */
      readonly done: boolean;
    }
  | {
      readonly kind: 'files';
      readonly files: number;
      readonly bytes: number;
    };

/** One JSONL part of a table in the archive. */
export interface ExportPart {
  readonly path: string;
  readonly rows: number;
  readonly bytes: number;
  readonly sha256: string;
}

/** The `manifest.json` of a tenant archive. */
export interface TenantExportManifest {
  readonly format: 'tenantry-tenant-export';
  readonly formatVersion: 1;
  readonly tenantryVersion: string;
  readonly createdAt: string;
  readonly tenantId: string;
  /** The catalog row (also in `tenant.json`). */
  readonly tenant: Readonly<Record<string, unknown>>;
  /**
   * Where the tenant's tables were: absent for a pooled tenant, its schema for a tenant placed in
   * one (whose tables are then listed as `<schema>.<table>`).
   */
  readonly placement?: { readonly kind: 'schema'; readonly schema: string };
  /**
   * Every tenant table that can hold the tenant's rows (its placement's, the pool's and
   * Tenantry's; not other tenants' schemas), with its rows (JSON per PostgreSQL's row_to_json).
   */
  readonly tables: readonly {
    readonly table: string;
    readonly columns: readonly string[];
    readonly rows: number;
    readonly parts: readonly ExportPart[];
  }[];
  /** The tenant's outbox events (lifecycle, usage, quota events). */
  readonly events: { readonly rows: number; readonly parts: readonly ExportPart[] };
  /** File objects of the tenant's registry rows, under `files/<file id>`. */
  readonly files: readonly {
    readonly fileId: string;
    readonly objectKey: string;
    readonly status: string;
    /** `undefined` when the object is absent from storage. */
    readonly path: string | undefined;
    readonly bytes: number;
    readonly sha256: string | undefined;
    /** The object's SHA-256 equals the one the registry recorded at upload. */
    readonly matchesRegistry: boolean | undefined;
  }[];
  /** Whether file objects were included (`false`: registry rows only). */
  readonly filesIncluded: boolean;
  /** Rows of the tenant tables (events not included), file objects and their bytes. */
  readonly totals: { readonly rows: number; readonly files: number; readonly fileBytes: number };
}

/** What an export produced. */
export interface ExportTenantResult {
  readonly manifest: TenantExportManifest;
  /** Size of the `.tar.gz` in bytes. */
  readonly bytes: number;
  /** SHA-256 of the `.tar.gz`, hex. */
  readonly sha256: string;
}

/** What the exporter needs from its lifecycle. */
export interface ExportContext {
  readonly pool: pg.Pool;
  readonly storage: StorageDriver | undefined;
  readonly tenantrySchema?: string;
}

/** A driver that can open an object for reading directly (the local driver does). */
interface ReadableDriver {
  readObject(key: string): Promise<{ size: number; stream: Readable } | undefined>;
}

const blockSize = 512;

/**
 * Writes a tenant's archive: a gzip'd POSIX tar holding `tenant.json`, every tenant table that
 * can hold its rows (following its placement: a placed tenant's own schema, not other tenants') as
 * JSONL parts, the tenant's outbox events, its file objects, then `manifest.json` and
 * `SHA256SUMS`. Rows come from one REPEATABLE READ, READ ONLY snapshot through a cursor.
 * (Use {@link TenantLifecycle.exportTenant}.)
 */
export async function exportTenantArchive(
  context: ExportContext,
  options: ExportTenantOptions,
): Promise<ExportTenantResult> {
  const tenantId = parseTenantId(options.tenantId);
  const batchRows = positiveInteger(options.batchRows ?? 1000, 'batchRows', 100_000);
  const partMaxBytes = positiveInteger(
    options.partMaxBytes ?? 8 * 1024 * 1024,
    'partMaxBytes',
    1024 * 1024 * 1024,
  );
  const includeFiles = options.includeFiles ?? true;
  const schema = context.tenantrySchema ?? defaultTenantrySchema;
  const client = await context.pool.connect();
  let destroyClient = false;
  let outputPath: string | undefined;
  let sink: ArchiveSink | undefined;
  try {
    await client.query('begin isolation level repeatable read, read only');
    const tenantRow = await client.query<{ tenant: Record<string, unknown> }>(
      `select row_to_json(t) as tenant from ${quoteIdentifier(schema)}.tenants t where t.id = $1`,
      [tenantId],
    );
    const tenant = tenantRow.rows[0]?.tenant;
    if (tenant === undefined) {
      throw new TenantryError('TENANTRY_ERR_TENANT_NOT_FOUND', `No tenant ${tenantId}.`);
    }
    const placed = await listTenantTablesOf(client, tenantId, { tenantrySchema: schema });
    const tables = placed.tables;
    const filesTable = tables.find((table) => table.name === `${schema}.files`);
    if (includeFiles && context.storage === undefined && filesTable !== undefined) {
      const files = await client.query<{ n: number }>(
        `select count(*)::integer as n from ${filesTable.sql} where tenant_id = $1`,
        [tenantId],
      );
      if ((files.rows[0]?.n ?? 0) > 0) {
        throw new TenantryError(
          'TENANTRY_ERR_CONFIG_INVALID',
          `Tenant ${tenantId} has ${files.rows[0]?.n} registered files but no storage driver was given: pass storage: { driver } (or includeFiles: false to export the registry rows only).`,
        );
      }
    }

    let output: Writable;
    if (typeof options.output === 'string') {
      outputPath = options.output;
      output = createWriteStream(outputPath);
    } else {
      output = options.output;
    }
    const archive = createArchiveSink(output);
    sink = archive;
    await archive.addBuffer('tenant.json', Buffer.from(`${JSON.stringify(tenant, null, 2)}\n`));
    const sums: [string, string][] = [];
    let totalRows = 0;
    const dump = async (
      name: string,
      directory: string,
      text: string,
      values: unknown[],
    ): Promise<{ rows: number; parts: ExportPart[] }> => {
      const parts: ExportPart[] = [];
      let rows = 0;
      let chunks: string[] = [];
      let chunkBytes = 0;
      let chunkRows = 0;
      const flush = async () => {
        if (chunkRows === 0) return;
        const body = Buffer.from(chunks.join(''));
        chunks = [];
        const path = `${directory}/part-${String(parts.length + 1).padStart(6, '0')}.jsonl`;
        const sha256 = createHash('sha256').update(body).digest('hex');
        await archive.addBuffer(path, body);
        parts.push(Object.freeze({ path, rows: chunkRows, bytes: body.length, sha256 }));
        sums.push([sha256, path]);
        chunkBytes = 0;
        chunkRows = 0;
      };
      const cursor = client.query(new Cursor<string[]>(text, values, { rowMode: 'array' }));
      try {
        for (;;) {
          const batch = await cursor.read(batchRows);
          if (batch.length === 0) break;
          for (const row of batch) {
            const line = `${row[0]}\n`;
            chunks.push(line);
            chunkBytes += Buffer.byteLength(line);
            chunkRows += 1;
            if (chunkBytes >= partMaxBytes) await flush();
          }
          rows += batch.length;
          totalRows += batch.length;
          options.onProgress?.({ kind: 'table', table: name, rows, totalRows, done: false });
        }
      } finally {
        await cursor.close();
      }
      await flush();
      options.onProgress?.({ kind: 'table', table: name, rows, totalRows, done: true });
      return { rows, parts };
    };

    const tableEntries: TenantExportManifest['tables'][number][] = [];
    for (const table of tables) {
      const dumped = await dump(
        table.name,
        `tables/${table.name}`,
        `select row_to_json(t)::text from ${table.sql} t where t.tenant_id = $1${orderBy(table)}`,
        [tenantId],
      );
      tableEntries.push(
        Object.freeze({
          table: table.name,
          columns: table.columns,
          rows: dumped.rows,
          parts: Object.freeze(dumped.parts),
        }),
      );
    }
    const events = await dump(
      `${schema}.outbox_events`,
      'events',
      `select row_to_json(e)::text from ${quoteIdentifier(schema)}.outbox_events e
        where e.tenant_id = $1 order by e.created_at, e.id`,
      [tenantId],
    );

    const files: TenantExportManifest['files'][number][] = [];
    let fileBytes = 0;
    if (includeFiles && filesTable !== undefined && context.storage !== undefined) {
      const driver = context.storage;
      const cursor = client.query(
        new Cursor<{ id: string; object_key: string; status: string; sha256: string | null }>(
          `select id::text, object_key, status, sha256 from ${filesTable.sql}
            where tenant_id = $1 order by id`,
          [tenantId],
        ),
      );
      try {
        for (;;) {
          const batch = await cursor.read(100);
          if (batch.length === 0) break;
          for (const file of batch) {
            const object = await openObject(driver, tenantId, file.object_key);
            if (object === undefined) {
              files.push(
                Object.freeze({
                  fileId: file.id,
                  objectKey: file.object_key,
                  status: file.status,
                  path: undefined,
                  bytes: 0,
                  sha256: undefined,
                  matchesRegistry: file.sha256 === null ? undefined : false,
                }),
              );
              continue;
            }
            const path = `files/${file.id}`;
            const sha256 = await archive.addStream(path, object.size, object.stream);
            sums.push([sha256, path]);
            fileBytes += object.size;
            files.push(
              Object.freeze({
                fileId: file.id,
                objectKey: file.object_key,
                status: file.status,
                path,
                bytes: object.size,
                sha256,
                matchesRegistry: file.sha256 === null ? undefined : file.sha256 === sha256,
              }),
            );
            options.onProgress?.({ kind: 'files', files: files.length, bytes: fileBytes });
          }
        }
      } finally {
        await cursor.close();
      }
    }
    await client.query('commit');

    const manifest: TenantExportManifest = Object.freeze({
      format: 'tenantry-tenant-export',
      formatVersion: 1,
      tenantryVersion,
      createdAt: new Date().toISOString(),
      tenantId,
      tenant,
      ...(placed.schema === null
        ? {}
        : { placement: Object.freeze({ kind: 'schema' as const, schema: placed.schema }) }),
      tables: Object.freeze(tableEntries),
      events: Object.freeze({ rows: events.rows, parts: Object.freeze(events.parts) }),
      files: Object.freeze(files),
      filesIncluded: includeFiles && context.storage !== undefined,
      totals: Object.freeze({
        rows: tableEntries.reduce((sum, table) => sum + table.rows, 0),
        files: files.length,
        fileBytes,
      }),
    });
    const manifestBody = Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`);
    await archive.addBuffer('manifest.json', manifestBody);
    sums.push([createHash('sha256').update(manifestBody).digest('hex'), 'manifest.json']);
    await archive.addBuffer(
      'SHA256SUMS',
      Buffer.from(sums.map(([sha256, path]) => `${sha256}  ${path}\n`).join('')),
    );
    const written = await archive.finish();
    return Object.freeze({ manifest, bytes: written.bytes, sha256: written.sha256 });
  } catch (error) {
    await client.query('rollback').catch(() => {
      destroyClient = true;
    });
    sink?.abort(error);
    if (outputPath !== undefined) await rm(outputPath, { force: true });
    throw toTenantryError(error);
  } finally {
    client.release(destroyClient);
  }
}

function orderBy(table: TenantTable): string {
  return table.primaryKey.length === 0
    ? ''
    : ` order by ${table.primaryKey.map((column) => `t.${quoteIdentifier(column)}`).join(', ')}`;
}

function positiveInteger(value: number, name: string, max: number): number {
  if (!Number.isInteger(value) || value < 1 || value > max) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `${name} must be an integer from 1 to ${max}, got ${JSON.stringify(value)}.`,
    );
  }
  return value;
}

async function openObject(
  driver: StorageDriver,
  tenantId: string,
  key: string,
): Promise<{ size: number; stream: Readable } | undefined> {
  const readable = driver as StorageDriver & Partial<ReadableDriver>;
  if (typeof readable.readObject === 'function') return readable.readObject(key);
  // Drivers without a direct read (S3): a short-lived signed download URL.
  const signed = await driver.signDownload({
    tenantId,
    key,
    expiresAt: new Date(Date.now() + 5 * 60_000),
  });
  const response = await fetch(signed.url, { method: 'GET', headers: signed.headers });
  if (response.status === 404) {
    await response.body?.cancel();
    return undefined;
  }
  const size = Number(response.headers.get('content-length'));
  if (!response.ok || response.body === null || !Number.isSafeInteger(size)) {
    await response.body?.cancel();
    throw new TenantryError(
      lifecycleErrorCodes.storageUnavailable,
      `Storage answered ${response.status} reading ${key}.`,
    );
  }
  return { size, stream: Readable.fromWeb(response.body as never) };
}

interface ArchiveSink {
  addBuffer(path: string, body: Buffer): Promise<void>;
  /** Streams exactly `size` bytes from `body` into an entry; returns their SHA-256. */
  addStream(path: string, size: number, body: AsyncIterable<Uint8Array>): Promise<string>;
  finish(): Promise<{ bytes: number; sha256: string }>;
  abort(error: unknown): void;
}

/** A minimal POSIX (ustar) tar writer, gzip'd, with backpressure. */
function createArchiveSink(output: Writable): ArchiveSink {
  const gzip = createGzip();
  const hash = createHash('sha256');
  let bytes = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      bytes += chunk.length;
      callback(null, chunk);
    },
  });
  const done = pipeline(gzip, tap, output);
  let failure: unknown;
  done.catch((error: unknown) => {
    failure = error;
  });
  const write = async (chunk: Uint8Array) => {
    if (failure !== undefined) throw failure;
    if (!gzip.write(chunk)) await Promise.race([once(gzip, 'drain'), done]);
  };
  const padding = async (size: number) => {
    const rest = size % blockSize;
    if (rest !== 0) await write(Buffer.alloc(blockSize - rest));
  };
  return {
    async addBuffer(path, body) {
      await write(tarHeader(path, body.length));
      await write(body);
      await padding(body.length);
    },
    async addStream(path, size, body) {
      await write(tarHeader(path, size));
      const digest = createHash('sha256');
      let seen = 0;
      for await (const chunk of body) {
        seen += chunk.length;
        if (seen > size) break;
        digest.update(chunk);
        await write(chunk);
      }
      if (seen !== size) {
        throw new TenantryError(
          'TENANTRY_ERR_STORAGE_UPLOAD_MISMATCH',
          `Object ${path} changed while it was exported: expected ${size} bytes, read ${seen}.`,
        );
      }
      await padding(size);
      return digest.digest('hex');
    },
    async finish() {
      await write(Buffer.alloc(blockSize * 2));
      gzip.end();
      await done;
      return { bytes, sha256: hash.digest('hex') };
    },
    abort(error) {
      gzip.destroy(error instanceof Error ? error : new Error(String(error)));
    },
  };
}

function tarHeader(path: string, size: number): Buffer {
  const header = Buffer.alloc(blockSize);
  const [prefix, name] = splitPath(path);
  header.write(name, 0, 100, 'utf8');
  header.write('0000644\0', 100, 8, 'ascii');
  header.write('0000000\0', 108, 8, 'ascii');
  header.write('0000000\0', 116, 8, 'ascii');
  if (size < 8 ** 11) {
    header.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 12, 'ascii');
  } else {
    // GNU base-256 size for entries of 8 GiB and more.
    header[124] = 0x80;
    let rest = BigInt(size);
    for (let at = 135; at > 124; at--) {
      header[at] = Number(rest & 0xffn);
      rest >>= 8n;
    }
  }
  const mtime = Math.floor(Date.now() / 1000);
  header.write(`${mtime.toString(8).padStart(11, '0')}\0`, 136, 12, 'ascii');
  header.write('        ', 148, 8, 'ascii');
  header.write('0', 156, 1, 'ascii');
  header.write('ustar\0', 257, 6, 'ascii');
  header.write('00', 263, 2, 'ascii');
  header.write(prefix, 345, 155, 'utf8');
  let checksum = 0;
  for (const byte of header) checksum += byte;
  header.write(`${checksum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii');
  return header;
}

function splitPath(path: string): [string, string] {
  if (Buffer.byteLength(path) <= 100) return ['', path];
  for (let at = path.indexOf('/'); at !== -1; at = path.indexOf('/', at + 1)) {
    const prefix = path.slice(0, at);
    const name = path.slice(at + 1);
    if (Buffer.byteLength(prefix) <= 155 && Buffer.byteLength(name) <= 100) return [prefix, name];
  }
  throw new TenantryError(
    'TENANTRY_ERR_CONFIG_INVALID',
    `Archive path too long for a tar header: ${path}.`,
  );
}
