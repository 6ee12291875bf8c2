import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Kysely, sql } from 'kysely';
import { createTenantry, isTenantryError, type Tenantry, type TenantryErrorCode } from 'tenantry';
import {
  createLocalStorageDriver,
  createLocalStorageHandler,
  createStorage,
  type LocalStorageDriver,
  type SignedUrl,
  type Storage,
} from 'tenantry/storage';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { type ReferenceDatabase, withClient } from './fixtures.ts';

let database: TestDatabase;
let tenantry: Tenantry<ReferenceDatabase>;
let driver: LocalStorageDriver;
let storage: Storage;
let server: Server;
let root: string;
let tenantA: string;
let tenantB: string;
const maxUploadBytes = 1024;

async function createTenant(slug: string): Promise<string> {
  const id = randomUUID();
  await withClient(database.adminUrl, (client) =>
    client.query('insert into tenantry.tenants (id, slug, name) values ($1, $2, $2)', [id, slug]),
  );
  return id;
}

before(async () => {
  database = await createTestDatabase();
  tenantry = await createTenantry<ReferenceDatabase>({
    connectionString: database.appUrl,
    maxConnections: 4,
  });
  root = await mkdtemp(join(tmpdir(), 'tenantry-storage-'));
  let handle: ReturnType<typeof createLocalStorageHandler> | undefined;
  server = createServer((req, res) => void handle?.(req, res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  driver = createLocalStorageDriver({
    root,
    baseUrl: `http://127.0.0.1:${port}/files`,
    secret: randomBytes(32),
  });
  handle = createLocalStorageHandler(driver);
  storage = createStorage({ driver, maxUploadBytes });
  tenantA = await createTenant(`storage-a-${randomBytes(3).toString('hex')}`);
  tenantB = await createTenant(`storage-b-${randomBytes(3).toString('hex')}`);
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await tenantry.close();
  await database.drop();
  await rm(root, { recursive: true, force: true });
});

function code(expected: TenantryErrorCode): (error: unknown) => boolean {
  return (error) => {
    assert.ok(isTenantryError(error, expected), `expected ${expected}, got ${String(error)}`);
    return true;
  };
}

function inTenant<T>(
  tenantId: string,
  fn: (db: Kysely<ReferenceDatabase>) => Promise<T>,
): Promise<T> {
  return tenantry.withTenant(tenantId, fn);
}

function put(
  upload: SignedUrl,
  body: Buffer,
  headers: Record<string, string> = {},
): Promise<Response> {
  return fetch(upload.url, { method: 'PUT', headers: { ...upload.headers, ...headers }, body });
}

function sha256(body: Buffer): string {
  return createHash('sha256').update(body).digest('hex');
}

/** The SQLSTATE a statement failed with (Tenantry keeps it in `details.sqlState`), or 'ok'. */
async function sqlState(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'ok';
  } catch (error) {
    assert.ok(isTenantryError(error), String(error));
    return String(error.details?.sqlState);
  }
}

/** Every registry row, read as the superuser (no RLS). */
async function registry(): Promise<
  { id: string; tenant_id: string; status: string; error: string | null }[]
> {
  return withClient(database.adminUrl, async (client) => {
    const result = await client.query('select id, tenant_id, status, error from tenantry.files');
    return result.rows;
  });
}

async function rowOf(fileId: string) {
  return (await registry()).find((row) => row.id === fileId);
}

async function uploadedFile(tenantId: string, body: Buffer, fileName = 'file.bin') {
  const { fileId, upload } = await inTenant(tenantId, (db) =>
    storage.requestUpload(db, {
      fileName,
      size: body.length,
      contentType: 'application/octet-stream',
    }),
  );
  assert.equal((await put(upload, body)).status, 204);
  const file = await inTenant(tenantId, (db) => storage.confirmUpload(db, fileId));
  assert.equal(file.status, 'uploaded');
  return { fileId, upload, file };
}

describe('storage service', () => {
  test('upload flow: request, upload, confirm, download', async () => {
    const body = randomBytes(700);
    const { fileId, upload } = await inTenant(tenantA, (db) =>
      storage.requestUpload(db, {
        fileName: 'Re\u0301sume\u0301 2026.pdf',
        size: body.length,
        contentType: 'application/pdf',
        sha256: sha256(body),
      }),
    );
    assert.equal(upload.method, 'PUT');
    assert.deepEqual(upload.headers, {
      'content-type': 'application/pdf',
      'content-length': '700',
    });
    assert.match(upload.url, new RegExp(`/files/tenants/${tenantA}/${fileId}\\?`));
    const pending = await inTenant(tenantA, (db) => storage.getFile(db, fileId));
    assert.equal(pending.status, 'pending');
    assert.equal(pending.fileName, 'Résumé 2026.pdf');
    assert.equal(pending.objectKey, `tenants/${tenantA}/${fileId}`);
    await assert.rejects(
      inTenant(tenantA, (db) => storage.requestDownload(db, fileId)),
      code('TENANTRY_ERR_STORAGE_FILE_NOT_FOUND'),
    );
    await assert.rejects(
      inTenant(tenantA, (db) => storage.confirmUpload(db, fileId)),
      code('TENANTRY_ERR_STORAGE_UPLOAD_MISSING'),
    );

    assert.equal((await put(upload, body)).status, 204);
    const file = await inTenant(tenantA, (db) => storage.confirmUpload(db, fileId));
    assert.equal(file.status, 'uploaded');
    assert.equal(file.sha256, sha256(body));
    assert.equal(file.sizeBytes, 700);
    assert.ok(file.uploadedAt instanceof Date);
    const again = await inTenant(tenantA, (db) => storage.confirmUpload(db, fileId));
    assert.equal(again.status, 'uploaded');

    const download = await inTenant(tenantA, (db) => storage.requestDownload(db, fileId));
    assert.equal(download.method, 'GET');
    const response = await fetch(download.url);
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-type'), 'application/pdf');
    assert.match(response.headers.get('content-disposition') ?? '', /R%C3%A9sum%C3%A9%202026\.pdf/);
    assert.deepEqual(Buffer.from(await response.arrayBuffer()), body);
  });

  test("tenant A gets 404 for B's file id in every call, and B's file survives", async () => {
    const body = randomBytes(50);
    const ofB = await uploadedFile(tenantB, body);
    const pendingOfB = await inTenant(tenantB, (db) =>
      storage.requestUpload(db, { fileName: 'p.txt', size: 3, contentType: 'text/plain' }),
    );
    for (const fileId of [ofB.fileId, pendingOfB.fileId]) {
      await assert.rejects(
        inTenant(tenantA, (db) => storage.requestDownload(db, fileId)),
        code('TENANTRY_ERR_STORAGE_FILE_NOT_FOUND'),
      );
      await assert.rejects(
        inTenant(tenantA, (db) => storage.getFile(db, fileId)),
        code('TENANTRY_ERR_STORAGE_FILE_NOT_FOUND'),
      );
      await assert.rejects(
        inTenant(tenantA, (db) => storage.confirmUpload(db, fileId)),
        code('TENANTRY_ERR_STORAGE_FILE_NOT_FOUND'),
      );
      await assert.rejects(
        inTenant(tenantA, (db) => storage.deleteFile(db, fileId)),
        code('TENANTRY_ERR_STORAGE_FILE_NOT_FOUND'),
      );
    }
    await assert.rejects(
      inTenant(tenantA, (db) => storage.requestDownload(db, 'not-a-uuid')),
      code('TENANTRY_ERR_STORAGE_FILE_NOT_FOUND'),
    );
    const download = await inTenant(tenantB, (db) => storage.requestDownload(db, ofB.fileId));
    assert.deepEqual(Buffer.from(await (await fetch(download.url)).arrayBuffer()), body);
  });

  test("a URL signed for tenant A cannot be edited to reach B's key", async () => {
    const ofB = await uploadedFile(tenantB, randomBytes(30));
    const ofA = await uploadedFile(tenantA, randomBytes(30));
    const downloadA = await inTenant(tenantA, (db) => storage.requestDownload(db, ofA.fileId));
    const keyOfB = `tenants/${tenantB}/${ofB.fileId}`;
    const edited = downloadA.url.replace(`tenants/${tenantA}/${ofA.fileId}`, keyOfB);
    assert.notEqual(edited, downloadA.url);
    const read = await fetch(edited);
    assert.equal(read.status, 403);
    const retargeted = new URL(edited);
    retargeted.searchParams.set('tenant', tenantB);
    assert.equal((await fetch(retargeted)).status, 403);

    const pendingA = await inTenant(tenantA, (db) =>
      storage.requestUpload(db, {
        fileName: 'x.bin',
        size: 30,
        contentType: 'application/octet-stream',
      }),
    );
    const overwrite = await fetch(
      pendingA.upload.url.replace(`tenants/${tenantA}/${pendingA.fileId}`, keyOfB),
      {
        method: 'PUT',
        headers: pendingA.upload.headers,
        body: randomBytes(30),
      },
    );
    assert.equal(overwrite.status, 403);
    assert.equal((await driver.head(keyOfB))?.sha256, ofB.file.sha256);
  });

  test('traversal names are refused and register nothing', async () => {
    const before = (await registry()).length;
    for (const fileName of [
      '../x',
      '..\\x',
      '/etc/passwd',
      'C:x',
      '%2e%2e%2fx',
      '%252e%252e',
      'a\u0000b',
      '..',
    ]) {
      await assert.rejects(
        inTenant(tenantA, (db) =>
          storage.requestUpload(db, { fileName, size: 1, contentType: 'text/plain' }),
        ),
        code('TENANTRY_ERR_STORAGE_NAME_INVALID'),
        `accepted ${JSON.stringify(fileName)}`,
      );
    }
    assert.equal((await registry()).length, before);
  });

  test('requests over the size limit, of a type not allowed or malformed are refused', async () => {
    const before = (await registry()).length;
    await assert.rejects(
      inTenant(tenantA, (db) =>
        storage.requestUpload(db, {
          fileName: 'big',
          size: maxUploadBytes + 1,
          contentType: 'text/plain',
        }),
      ),
      code('TENANTRY_ERR_STORAGE_TOO_LARGE'),
    );
    for (const request of [
      { fileName: 'a', size: -1, contentType: 'text/plain' },
      { fileName: 'a', size: 1.5, contentType: 'text/plain' },
      { fileName: 'a', size: 1, contentType: 'Text/Plain' },
      { fileName: 'a', size: 1, contentType: 'text/plain; charset=utf-8' },
      { fileName: 'a', size: 1, contentType: 'text/plain', sha256: 'abc' },
      { fileName: 'a', size: 1, contentType: 'text/plain', uploadedBy: 'me' },
    ]) {
      await assert.rejects(
        inTenant(tenantA, (db) => storage.requestUpload(db, request)),
        code('TENANTRY_ERR_STORAGE_REQUEST_INVALID'),
        JSON.stringify(request),
      );
    }
    const imagesOnly = createStorage({
      driver,
      maxUploadBytes,
      allowedContentTypes: ['image/png'],
    });
    await assert.rejects(
      inTenant(tenantA, (db) =>
        imagesOnly.requestUpload(db, { fileName: 'a', size: 1, contentType: 'text/html' }),
      ),
      code('TENANTRY_ERR_STORAGE_TYPE_NOT_ALLOWED'),
    );
    assert.equal((await registry()).length, before);
  });

  test('outside a tenant unit of work nothing is registered', async () => {
    await assert.rejects(
      storage.requestUpload(tenantry.db, { fileName: 'a', size: 1, contentType: 'text/plain' }),
      code('TENANTRY_ERR_CONTEXT_MISSING'),
    );
    await assert.rejects(storage.storageUsage(tenantry.db), code('TENANTRY_ERR_CONTEXT_MISSING'));
  });

  test('oversized or wrong-type uploads are refused and the row never becomes uploaded', async () => {
    const { fileId, upload } = await inTenant(tenantA, (db) =>
      storage.requestUpload(db, { fileName: 'a.png', size: 10, contentType: 'image/png' }),
    );
    const tooBig = await fetch(upload.url, {
      method: 'PUT',
      headers: { 'content-type': 'image/png' },
      body: randomBytes(20),
    });
    assert.equal(tooBig.status, 413);
    assert.equal(
      ((await tooBig.json()) as { code: string }).code,
      'TENANTRY_ERR_STORAGE_TOO_LARGE',
    );
    const wrongType = await put(upload, randomBytes(10), { 'content-type': 'text/html' });
    assert.equal(wrongType.status, 415);
    await assert.rejects(
      inTenant(tenantA, (db) => storage.confirmUpload(db, fileId)),
      code('TENANTRY_ERR_STORAGE_UPLOAD_MISSING'),
    );
    assert.equal((await rowOf(fileId))?.status, 'pending');
    await assert.rejects(
      inTenant(tenantA, (db) => storage.requestDownload(db, fileId)),
      code('TENANTRY_ERR_STORAGE_FILE_NOT_FOUND'),
    );
  });

  test('confirmation rejects a checksum or size mismatch, deletes the object and keeps the reason', async () => {
    const declared = randomBytes(40);
    const sent = randomBytes(40);
    const checksum = await inTenant(tenantA, (db) =>
      storage.requestUpload(db, {
        fileName: 'c.bin',
        size: 40,
        contentType: 'application/octet-stream',
        sha256: sha256(declared),
      }),
    );
    // The signed URL binds the declared digest: other bytes are refused and nothing is stored.
    assert.equal((await put(checksum.upload, sent)).status, 422);
    assert.equal(await driver.head(`tenants/${tenantA}/${checksum.fileId}`), undefined);
    // A server that does not enforce it (written directly here): confirmation catches it.
    await driver.writeObject(`tenants/${tenantA}/${checksum.fileId}`, [sent], {
      size: 40,
      contentType: 'application/octet-stream',
    });
    const rejected = await inTenant(tenantA, (db) => storage.confirmUpload(db, checksum.fileId));
    assert.equal(rejected.status, 'deleted');
    assert.match(rejected.error ?? '', /SHA-256/);
    assert.equal(await driver.head(`tenants/${tenantA}/${checksum.fileId}`), undefined);
    assert.equal((await rowOf(checksum.fileId))?.status, 'deleted');
    await assert.rejects(
      inTenant(tenantA, (db) => storage.requestDownload(db, checksum.fileId)),
      code('TENANTRY_ERR_STORAGE_FILE_NOT_FOUND'),
    );

    // A driver whose server does not enforce the signed size (S3 without a length condition).
    const sized = await inTenant(tenantA, (db) =>
      storage.requestUpload(db, {
        fileName: 's.bin',
        size: 40,
        contentType: 'application/octet-stream',
      }),
    );
    const key = `tenants/${tenantA}/${sized.fileId}`;
    await driver.writeObject(key, [randomBytes(39)], {
      size: 39,
      contentType: 'application/octet-stream',
    });
    const short = await inTenant(tenantA, (db) => storage.confirmUpload(db, sized.fileId));
    assert.equal(short.status, 'deleted');
    assert.match(short.error ?? '', /size 39/);
    assert.equal(await driver.head(key), undefined);
  });

  test('storage usage counts uploaded files per tenant', async () => {
    const tenantC = await createTenant(`storage-c-${randomBytes(3).toString('hex')}`);
    const tenantD = await createTenant(`storage-d-${randomBytes(3).toString('hex')}`);
    assert.deepEqual(await inTenant(tenantC, (db) => storage.storageUsage(db)), {
      files: 0,
      bytes: 0,
    });
    await uploadedFile(tenantC, randomBytes(100));
    const second = await uploadedFile(tenantC, randomBytes(250));
    await uploadedFile(tenantD, randomBytes(7));
    await inTenant(tenantC, (db) =>
      storage.requestUpload(db, { fileName: 'pending', size: 500, contentType: 'text/plain' }),
    );
    assert.deepEqual(await inTenant(tenantC, (db) => storage.storageUsage(db)), {
      files: 2,
      bytes: 350,
    });
    assert.deepEqual(await inTenant(tenantD, (db) => storage.storageUsage(db)), {
      files: 1,
      bytes: 7,
    });
    await inTenant(tenantC, (db) => storage.deleteFile(db, second.fileId));
    assert.deepEqual(await inTenant(tenantC, (db) => storage.storageUsage(db)), {
      files: 1,
      bytes: 100,
    });
  });

  test('deleting a file hides it at once; purge removes the object and the row after commit', async () => {
    const { fileId } = await uploadedFile(tenantA, randomBytes(12));
    const key = `tenants/${tenantA}/${fileId}`;
    await inTenant(tenantA, (db) => storage.deleteFile(db, fileId));
    // Gone for the tenant: not found, not downloadable, not counted, not deletable twice.
    for (const call of [
      (db: Kysely<ReferenceDatabase>): Promise<unknown> => storage.getFile(db, fileId),
      (db: Kysely<ReferenceDatabase>) => storage.requestDownload(db, fileId),
      (db: Kysely<ReferenceDatabase>) => storage.deleteFile(db, fileId),
    ]) {
      await assert.rejects(inTenant(tenantA, call), code('TENANTRY_ERR_STORAGE_FILE_NOT_FOUND'));
    }
    // The object stays until the purge, which runs in a unit of work of its own.
    assert.ok(await driver.head(key));
    assert.equal((await rowOf(fileId))?.status, 'deleted');
    // Another tenant's purge does not touch it.
    assert.equal(await inTenant(tenantB, (db) => storage.purgeDeletedFiles(db)), 0);
    assert.ok(await driver.head(key));
    assert.equal(await inTenant(tenantA, (db) => storage.purgeDeletedFiles(db)), 1);
    assert.equal(await driver.head(key), undefined);
    assert.equal(await rowOf(fileId), undefined);
    assert.equal(await inTenant(tenantA, (db) => storage.purgeDeletedFiles(db)), 0);
  });

  test('allowsSignedAccess follows the registry: GET uploaded, PUT pending, never deleted or foreign', async () => {
    const pending = await inTenant(tenantA, (db) =>
      storage.requestUpload(db, { fileName: 'p', size: 3, contentType: 'text/plain' }),
    );
    const pendingKey = `tenants/${tenantA}/${pending.fileId}`;
    const { fileId } = await uploadedFile(tenantA, randomBytes(4));
    const key = `tenants/${tenantA}/${fileId}`;
    const allows = (tenantId: string, method: 'GET' | 'PUT', objectKey: string) =>
      inTenant(tenantId, (db) => storage.allowsSignedAccess(db, method, objectKey));
    assert.equal(await allows(tenantA, 'PUT', pendingKey), true);
    assert.equal(await allows(tenantA, 'GET', pendingKey), false);
    assert.equal(await allows(tenantA, 'GET', key), true);
    assert.equal(await allows(tenantA, 'PUT', key), false);
    assert.equal(await allows(tenantB, 'GET', key), false);
    assert.equal(await allows(tenantB, 'PUT', pendingKey), false);
    await inTenant(tenantA, (db) => storage.deleteFile(db, fileId));
    assert.equal(await allows(tenantA, 'GET', key), false);
  });

  test('a delete whose unit of work rolls back leaves the file downloadable', async () => {
    const tenantF = await createTenant(`storage-f-${randomBytes(3).toString('hex')}`);
    const body = randomBytes(9);
    const { fileId } = await uploadedFile(tenantF, body);
    await assert.rejects(
      inTenant(tenantF, async (db) => {
        await storage.deleteFile(db, fileId);
        // Misuse, purging in the deleting unit of work: it skips files deleted in this one.
        assert.equal(await storage.purgeDeletedFiles(db), 0);
        throw new Error('rolled back');
      }),
      /rolled back/,
    );
    const download = await inTenant(tenantF, (db) => storage.requestDownload(db, fileId));
    const response = await fetch(download.url);
    assert.equal(response.status, 200);
    assert.deepEqual(Buffer.from(await response.arrayBuffer()), body);
    assert.equal((await rowOf(fileId))?.status, 'uploaded');
  });

  test('putObject stores server bytes as an uploaded file of the current tenant', async () => {
    const body = Buffer.from('id,name\r\n1,Ada\r\n');
    const file = await inTenant(tenantA, (db) =>
      storage.putObject(db, { fileName: 'export.csv', contentType: 'text/csv', body }),
    );
    assert.equal(file.status, 'uploaded');
    assert.equal(file.tenantId, tenantA);
    assert.equal(file.sizeBytes, body.length);
    assert.equal(file.sha256, sha256(body));
    assert.equal(file.objectKey, `tenants/${tenantA}/${file.id}`);
    assert.deepEqual(await driver.head(file.objectKey), {
      size: body.length,
      contentType: 'text/csv',
      sha256: sha256(body),
    });
    const download = await inTenant(tenantA, (db) => storage.requestDownload(db, file.id));
    assert.deepEqual(Buffer.from(await (await fetch(download.url)).arrayBuffer()), body);
    await assert.rejects(
      inTenant(tenantB, (db) => storage.getFile(db, file.id)),
      code('TENANTRY_ERR_STORAGE_FILE_NOT_FOUND'),
    );
  });

  test('putObject refuses bad input and stores nothing', async () => {
    const before = (await registry()).length;
    const cases: [Record<string, unknown>, TenantryErrorCode][] = [
      [
        { fileName: '../x.csv', contentType: 'text/csv', body: Buffer.from('x') },
        'TENANTRY_ERR_STORAGE_NAME_INVALID',
      ],
      [
        { fileName: 'x.csv', contentType: 'text/csv', body: 'x' },
        'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
      ],
      [
        { fileName: 'x.bin', contentType: 'text/csv', body: Buffer.alloc(maxUploadBytes + 1) },
        'TENANTRY_ERR_STORAGE_TOO_LARGE',
      ],
      [
        {
          fileName: 'x.csv',
          contentType: 'text/csv; charset=utf-8\r\nx: y',
          body: Buffer.from('x'),
        },
        'TENANTRY_ERR_STORAGE_REQUEST_INVALID',
      ],
    ];
    for (const [request, expected] of cases) {
      await assert.rejects(
        inTenant(tenantA, (db) => storage.putObject(db, request as never)),
        code(expected),
      );
    }
    await assert.rejects(
      storage.putObject(tenantry.db, {
        fileName: 'x.csv',
        contentType: 'text/csv',
        body: Buffer.from('x'),
      }),
      code('TENANTRY_ERR_CONTEXT_MISSING'),
    );
    assert.equal((await registry()).length, before);
  });

  test('stale pending uploads are removed with their objects, only in the current tenant', async () => {
    const tenantE = await createTenant(`storage-e-${randomBytes(3).toString('hex')}`);
    const kept = await uploadedFile(tenantE, randomBytes(5));
    const neverUploaded = await inTenant(tenantE, (db) =>
      storage.requestUpload(db, { fileName: 'n', size: 5, contentType: 'text/plain' }),
    );
    const uploadedNotConfirmed = await inTenant(tenantE, (db) =>
      storage.requestUpload(db, { fileName: 'u', size: 5, contentType: 'text/plain' }),
    );
    assert.equal((await put(uploadedNotConfirmed.upload, randomBytes(5))).status, 204);
    const otherTenant = await inTenant(tenantB, (db) =>
      storage.requestUpload(db, { fileName: 'b', size: 5, contentType: 'text/plain' }),
    );

    assert.equal(
      await inTenant(tenantE, (db) => storage.removeStalePendingUploads(db, new Date())),
      0,
    );
    const afterExpiry = new Date(Date.now() + 3_600_000);
    assert.equal(
      await inTenant(tenantE, (db) => storage.removeStalePendingUploads(db, afterExpiry)),
      2,
    );
    assert.equal(await rowOf(neverUploaded.fileId), undefined);
    assert.equal(await rowOf(uploadedNotConfirmed.fileId), undefined);
    assert.equal(await driver.head(`tenants/${tenantE}/${uploadedNotConfirmed.fileId}`), undefined);
    assert.equal((await rowOf(kept.fileId))?.status, 'uploaded');
    assert.ok(await driver.head(`tenants/${tenantE}/${kept.fileId}`));
    assert.equal((await rowOf(otherTenant.fileId))?.status, 'pending');
  });
});

describe('file registry in SQL', () => {
  test('is isolated by RLS', async () => {
    const ofB = await uploadedFile(tenantB, randomBytes(3));
    const visible = await inTenant(tenantA, async (db) =>
      (await sql<{ id: string }>`select id from tenantry.files`.execute(db)).rows.map(
        (row) => row.id,
      ),
    );
    assert.ok(visible.length > 0);
    assert.ok(!visible.includes(ofB.fileId));
  });

  test("refuses a key outside the row's tenant prefix, even from a buggy insert", async () => {
    const fileId = randomUUID();
    const insert = (key: string) =>
      inTenant(tenantA, (db) =>
        sql`insert into tenantry.files (id, object_key, file_name, size_bytes, content_type, driver, expires_at)
            values (${fileId}::uuid, ${key}, 'x', 1, 'text/plain', 'local', now())`.execute(db),
      );
    assert.equal(await sqlState(insert(`tenants/${tenantB}/${fileId}`)), '23514');
    assert.equal(await sqlState(insert(`tenants/${tenantA}/../${tenantB}/${fileId}`)), '23514');
    assert.equal(await sqlState(insert(`tenants/${tenantA}/${randomUUID()}`)), '23514');
    assert.equal(await sqlState(insert(`tenants/${tenantA}/${fileId}`)), 'ok');
  });

  test('the app role cannot register a file as already uploaded', async () => {
    const fileId = randomUUID();
    const state = await sqlState(
      inTenant(tenantA, (db) =>
        sql`insert into tenantry.files (id, object_key, file_name, size_bytes, content_type, driver,
              expires_at, status, sha256, uploaded_at)
            values (${fileId}::uuid, ${`tenants/${tenantA}/${fileId}`}, 'x', 1, 'text/plain', 'local',
              now(), 'uploaded', ${'0'.repeat(64)}, now())`.execute(db),
      ),
    );
    assert.equal(state, '42501');
    assert.equal(await rowOf(fileId), undefined);
  });

  test('the app role cannot rewrite a key, size or type', async () => {
    const { fileId } = await uploadedFile(tenantA, randomBytes(3));
    for (const assignment of [
      sql`object_key = object_key`,
      sql`size_bytes = 1`,
      sql`content_type = 'text/html'`,
      sql`tenant_id = tenant_id`,
    ]) {
      const state = await sqlState(
        inTenant(tenantA, (db) =>
          sql`update tenantry.files set ${assignment} where id = ${fileId}::uuid`.execute(db),
        ),
      );
      assert.equal(state, '42501');
    }
  });
});
