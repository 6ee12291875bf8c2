import assert from 'node:assert/strict';
import { createHash, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { createJobWorker, type JobWorker } from 'tenantry/jobs';
import {
  bodyOf,
  createTestApp,
  createWorkspace,
  queryAsAdmin,
  type TestApp,
  type TestWorkspace,
} from './app-fixtures.ts';

let testApp: TestApp;
let a: TestWorkspace;
let b: TestWorkspace;

before(async () => {
  testApp = await createTestApp();
  a = await createWorkspace(testApp, 'files-a');
  b = await createWorkspace(testApp, 'files-b');
});

after(async () => {
  await testApp?.close();
});

function call(
  as: TestWorkspace,
  method: 'GET' | 'POST' | 'DELETE',
  url: string,
  body?: unknown,
): Promise<LightMyRequestResponse> {
  return testApp.app.inject({
    method,
    url,
    headers: as.headers,
    ...(body === undefined ? {} : { payload: body as object }),
  });
}

/** Uses a signed URL through the app's `/files/*` route, with no credentials but the URL. */
function useSignedUrl(
  url: string,
  method: 'GET' | 'PUT',
  options: { headers?: Record<string, string>; body?: Buffer } = {},
): Promise<LightMyRequestResponse> {
  const parsed = new URL(url);
  assert.equal(parsed.origin, 'http://localhost');
  return testApp.app.inject({
    method,
    url: `${parsed.pathname}${parsed.search}`,
    headers: options.headers ?? {},
    ...(options.body === undefined ? {} : { payload: options.body }),
  });
}

function assertProblem(response: LightMyRequestResponse, status: number, code: string) {
  assert.equal(response.statusCode, status, response.body);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
  assert.equal(bodyOf(response).code, code);
}

async function requestUpload(
  as: TestWorkspace,
  bytes: Buffer,
  extra: { fileName?: string; contentType?: string; sha256?: string } = {},
) {
  const response = await call(as, 'POST', '/v1/files', {
    fileName: extra.fileName ?? 'notes.txt',
    size: bytes.byteLength,
    contentType: extra.contentType ?? 'text/plain',
    ...(extra.sha256 === undefined ? {} : { sha256: extra.sha256 }),
  });
  assert.equal(response.statusCode, 201, response.body);
  return bodyOf<{
    fileId: string;
    upload: { url: string; method: string; headers: Record<string, string>; expiresAt: string };
  }>(response);
}

/** Requests, uploads and confirms a file; returns its id. */
async function uploadFile(as: TestWorkspace, bytes: Buffer, fileName = 'notes.txt') {
  const { fileId, upload } = await requestUpload(as, bytes, { fileName });
  const put = await useSignedUrl(upload.url, 'PUT', { headers: upload.headers, body: bytes });
  assert.equal(put.statusCode, 204, put.body);
  const confirmed = await call(as, 'POST', `/v1/files/${fileId}/confirm`);
  assert.equal(confirmed.statusCode, 200, confirmed.body);
  return fileId;
}

async function fileStatus(fileId: string): Promise<string | undefined> {
  const rows = await queryAsAdmin<{ status: string }>(
    testApp,
    'select status from tenantry.files where id = $1',
    [fileId],
  );
  return rows[0]?.status;
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

async function withWorker<T>(fn: (worker: JobWorker) => Promise<T>): Promise<T> {
  const worker = await createJobWorker({
    tenantry: testApp.tenantry,
    connectionString: testApp.database.adminUrl,
    jobs: testApp.jobs.jobs,
    schedules: testApp.jobs.schedules,
    pollIntervalMs: 50,
    retry: { baseDelayMs: 10, maxDelayMs: 50 },
    heartbeatIntervalMs: 200,
    staleWorkerAfterMs: 1000,
  });
  try {
    return await fn(worker);
  } finally {
    await worker.stop();
  }
}

async function openConversation(as: TestWorkspace): Promise<string> {
  const contact = await call(as, 'POST', '/v1/contacts', { name: `Contact ${randomUUID()}` });
  assert.equal(contact.statusCode, 201, contact.body);
  const conversation = await call(as, 'POST', '/v1/conversations', {
    contactId: bodyOf(contact).id,
  });
  assert.equal(conversation.statusCode, 201, conversation.body);
  return bodyOf(conversation).id;
}

describe('files API', () => {
  test('upload, confirm, read, download, usage and delete, end to end', async () => {
    const bytes = Buffer.from('hello, tenantry files\n');
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    const { fileId, upload } = await requestUpload(a, bytes, { fileName: 'héllo.txt', sha256 });
    assert.equal(upload.method, 'PUT');
    assert.ok(new URL(upload.url).pathname.startsWith(`/files/tenants/${a.tenantId}/`));

    const pending = await call(a, 'GET', `/v1/files/${fileId}`);
    assert.equal(bodyOf(pending).status, 'pending');
    assertProblem(
      await call(a, 'GET', `/v1/files/${fileId}/download`),
      404,
      'TENANTRY_ERR_STORAGE_FILE_NOT_FOUND',
    );
    assertProblem(
      await call(a, 'POST', `/v1/files/${fileId}/confirm`),
      409,
      'TENANTRY_ERR_STORAGE_UPLOAD_MISSING',
    );

    const put = await useSignedUrl(upload.url, 'PUT', { headers: upload.headers, body: bytes });
    assert.equal(put.statusCode, 204, put.body);
    const confirmed = await call(a, 'POST', `/v1/files/${fileId}/confirm`);
    assert.equal(confirmed.statusCode, 200, confirmed.body);
    const file = bodyOf(confirmed);
    assert.equal(file.status, 'uploaded');
    assert.equal(file.sizeBytes, bytes.byteLength);
    assert.equal(file.sha256, sha256);
    assert.equal(file.fileName, 'héllo.txt');
    assert.equal(file.uploadedBy, a.userId);

    const usage = bodyOf(await call(a, 'GET', '/v1/files/usage'));
    assert.deepEqual(usage, { files: 1, bytes: bytes.byteLength });
    assert.deepEqual(bodyOf(await call(b, 'GET', '/v1/files/usage')), { files: 0, bytes: 0 });

    const download = await call(a, 'GET', `/v1/files/${fileId}/download`);
    assert.equal(download.statusCode, 200, download.body);
    const { url } = bodyOf(download);
    const got = await useSignedUrl(url, 'GET');
    assert.equal(got.statusCode, 200, got.body);
    assert.deepEqual(got.rawPayload, bytes);
    assert.match(String(got.headers['content-disposition']), /^attachment/);
    // A download URL cannot upload, an upload URL cannot download.
    assertProblem(
      await useSignedUrl(url, 'PUT', { headers: upload.headers, body: bytes }),
      403,
      'TENANTRY_ERR_STORAGE_URL_INVALID',
    );
    assertProblem(await useSignedUrl(upload.url, 'GET'), 403, 'TENANTRY_ERR_STORAGE_URL_INVALID');
    // The upload URL is still within its expiry, but its file is no longer pending.
    assertProblem(
      await useSignedUrl(upload.url, 'PUT', { headers: upload.headers, body: bytes }),
      404,
      'TENANTRY_ERR_STORAGE_FILE_NOT_FOUND',
    );

    const deleted = await call(a, 'DELETE', `/v1/files/${fileId}`);
    assert.equal(deleted.statusCode, 204, deleted.body);
    assertProblem(
      await call(a, 'GET', `/v1/files/${fileId}`),
      404,
      'TENANTRY_ERR_STORAGE_FILE_NOT_FOUND',
    );
    assertProblem(await useSignedUrl(url, 'GET'), 404, 'TENANTRY_ERR_STORAGE_FILE_NOT_FOUND');
    // Marked in the request's transaction; the object and row go with the hourly cleanup.
    assert.equal(await fileStatus(fileId), 'deleted');
    assert.deepEqual(bodyOf(await call(a, 'GET', '/v1/files/usage')), { files: 0, bytes: 0 });
  });

  test('another workspace gets 404 for a file id and cannot reach the object by editing a URL', async () => {
    const fileId = await uploadFile(a, Buffer.from('secret of A'));
    assertProblem(
      await call(b, 'GET', `/v1/files/${fileId}`),
      404,
      'TENANTRY_ERR_STORAGE_FILE_NOT_FOUND',
    );
    assertProblem(
      await call(b, 'GET', `/v1/files/${fileId}/download`),
      404,
      'TENANTRY_ERR_STORAGE_FILE_NOT_FOUND',
    );
    assertProblem(
      await call(b, 'POST', `/v1/files/${fileId}/confirm`),
      404,
      'TENANTRY_ERR_STORAGE_FILE_NOT_FOUND',
    );
    assertProblem(
      await call(b, 'DELETE', `/v1/files/${fileId}`),
      404,
      'TENANTRY_ERR_STORAGE_FILE_NOT_FOUND',
    );
    assert.equal(await fileStatus(fileId), 'uploaded');

    // B's own download URL, edited to name A's object: refused.
    const own = await uploadFile(b, Buffer.from('file of B'));
    const { url } = bodyOf(await call(b, 'GET', `/v1/files/${own}/download`));
    const edited = url.replace(`tenants/${b.tenantId}/${own}`, `tenants/${a.tenantId}/${fileId}`);
    assert.notEqual(edited, url);
    assertProblem(await useSignedUrl(edited, 'GET'), 403, 'TENANTRY_ERR_STORAGE_URL_INVALID');
    const retenanted = edited.replace(`tenant=${b.tenantId}`, `tenant=${a.tenantId}`);
    assertProblem(await useSignedUrl(retenanted, 'GET'), 403, 'TENANTRY_ERR_STORAGE_URL_INVALID');
  });

  test('file names that look like paths are refused with 400', async () => {
    for (const fileName of [
      '../../etc/passwd',
      '..',
      'a/b.txt',
      '..\\x.txt',
      '%2e%2e%2fx',
      'a\u0000b',
    ]) {
      const response = await call(a, 'POST', '/v1/files', {
        fileName,
        size: 1,
        contentType: 'text/plain',
      });
      assertProblem(response, 400, 'TENANTRY_ERR_STORAGE_NAME_INVALID');
    }
    const rows = await queryAsAdmin(
      testApp,
      "select 1 from tenantry.files where file_name like '%..%'",
    );
    assert.equal(rows.length, 0);
  });

  test('a body of another size is refused and the file does not become uploaded', async () => {
    const declared = Buffer.from('0123456789');
    const { fileId, upload } = await requestUpload(a, declared);
    const wrong = Buffer.from('0123');
    const put = await useSignedUrl(upload.url, 'PUT', {
      headers: { ...upload.headers, 'content-length': String(wrong.byteLength) },
      body: wrong,
    });
    assert.equal(put.statusCode, 400, put.body);
    assertProblem(
      await call(a, 'POST', `/v1/files/${fileId}/confirm`),
      409,
      'TENANTRY_ERR_STORAGE_UPLOAD_MISSING',
    );
    assert.equal(await fileStatus(fileId), 'pending');
    assert.equal(bodyOf(await call(a, 'GET', `/v1/files/${fileId}`)).status, 'pending');
  });

  test('an object that does not match the declared checksum is rejected with 422 and stays rejected', async () => {
    const bytes = Buffer.from('the real bytes');
    const other = createHash('sha256').update('other bytes').digest('hex');
    const { fileId, upload } = await requestUpload(a, bytes, { sha256: other });
    // The signed URL binds the declared digest: the upload itself is refused, nothing stored.
    const put = await useSignedUrl(upload.url, 'PUT', { headers: upload.headers, body: bytes });
    assertProblem(put, 422, 'TENANTRY_ERR_STORAGE_UPLOAD_MISMATCH');
    assert.match(bodyOf(put).detail, /SHA-256/);
    const confirmed = await call(a, 'POST', `/v1/files/${fileId}/confirm`);
    assertProblem(confirmed, 409, 'TENANTRY_ERR_STORAGE_UPLOAD_MISSING');
    assert.equal(await fileStatus(fileId), 'pending');
    assertProblem(
      await call(a, 'GET', `/v1/files/${fileId}/download`),
      404,
      'TENANTRY_ERR_STORAGE_FILE_NOT_FOUND',
    );
  });

  test('requests over the size limit are refused with 413', async () => {
    const response = await call(a, 'POST', '/v1/files', {
      fileName: 'big.bin',
      size: 1024 * 1024 + 1,
      contentType: 'application/octet-stream',
    });
    assertProblem(response, 413, 'TENANTRY_ERR_STORAGE_TOO_LARGE');
  });

  test('the hourly job removes expired unconfirmed uploads and purges deleted files', async () => {
    const deleted = await uploadFile(a, Buffer.from('deleted by the user'));
    assert.equal((await call(a, 'DELETE', `/v1/files/${deleted}`)).statusCode, 204);
    const stale = (await requestUpload(a, Buffer.from('never sent'))).fileId;
    const fresh = (await requestUpload(a, Buffer.from('still coming'))).fileId;
    await queryAsAdmin(
      testApp,
      "update tenantry.files set expires_at = now() - interval '1 hour' where id = $1",
      [stale],
    );
    await withWorker(async (worker) => {
      await worker.runSchedule('storage-cleanup-pending', new Date('2026-01-01T10:00:00Z'));
      await waitFor('the stale upload and the deleted file to be removed', async () =>
        (await fileStatus(stale)) === undefined && (await fileStatus(deleted)) === undefined
          ? true
          : undefined,
      );
    });
    assert.equal(await fileStatus(fresh), 'pending');
    assert.equal(
      await testApp.files.storage.driver.head(`tenants/${a.tenantId}/${deleted}`),
      undefined,
    );
  });
});

describe('message attachments', () => {
  test('an uploaded file is attached to an outbound message and listed with it', async () => {
    const fileId = await uploadFile(a, Buffer.from('%PDF-1.7 pretend'), 'invoice.pdf');
    const conversationId = await openConversation(a);
    const sent = await call(a, 'POST', `/v1/conversations/${conversationId}/messages`, {
      body: 'Your invoice',
      attachmentIds: [fileId],
    });
    assert.equal(sent.statusCode, 201, sent.body);
    assert.deepEqual(bodyOf(sent).attachments, [
      { fileId, fileName: 'invoice.pdf', contentType: 'text/plain', sizeBytes: 16 },
    ]);
    const listed = bodyOf(await call(a, 'GET', `/v1/conversations/${conversationId}/messages`));
    assert.deepEqual(
      listed.items.map((message: { attachments: { fileId: string }[] }) =>
        message.attachments.map((attachment) => attachment.fileId),
      ),
      [[fileId]],
    );
    const download = await call(a, 'GET', `/v1/files/${fileId}/download`);
    assert.equal(download.statusCode, 200, download.body);
  });

  test("a workspace cannot attach another workspace's file, nor a file not uploaded", async () => {
    const fileOfA = await uploadFile(a, Buffer.from('belongs to A'));
    const pendingOfB = (await requestUpload(b, Buffer.from('not uploaded'))).fileId;
    const conversationId = await openConversation(b);
    for (const attachmentIds of [[fileOfA], [pendingOfB], [randomUUID()]]) {
      const sent = await call(b, 'POST', `/v1/conversations/${conversationId}/messages`, {
        body: 'with a file',
        attachmentIds,
      });
      assertProblem(sent, 422, 'TENANTRY_ERR_DB_INVALID_REFERENCE');
    }
    const messages = bodyOf(await call(b, 'GET', `/v1/conversations/${conversationId}/messages`));
    assert.equal(messages.items.length, 0);
    const attached = await queryAsAdmin(
      testApp,
      'select 1 from message_attachments where file_id = $1',
      [fileOfA],
    );
    assert.equal(attached.length, 0);
  });

  test("the database refuses an attachment row naming another workspace's file", async () => {
    const fileOfA = await uploadFile(a, Buffer.from('A only'));
    const fileOfB = await uploadFile(b, Buffer.from('B only'));
    const conversationId = await openConversation(b);
    const sent = bodyOf(
      await call(b, 'POST', `/v1/conversations/${conversationId}/messages`, { body: 'hi' }),
    );
    const [message] = await queryAsAdmin<{ created_at: string }>(
      testApp,
      'select created_at::text from messages where id = $1',
      [sent.id],
    );
    assert.ok(message !== undefined);
    const attach = (fileId: string) =>
      testApp.tenantry.withTenant(b.tenantId, (db) =>
        db
          .insertInto('message_attachments')
          .values({
            message_id: sent.id,
            message_created_at: message.created_at,
            file_id: fileId,
            position: fileId === fileOfB ? 0 : 1,
          })
          .execute(),
      );
    await attach(fileOfB);
    await assert.rejects(attach(fileOfA), (error: Error & { cause?: { constraint?: string } }) => {
      assert.equal(error.cause?.constraint, 'message_attachments_file_id_fkey', String(error));
      return true;
    });
  });
});

describe('contacts export', () => {
  test('the job writes a CSV of exactly the workspace contacts, downloadable when ready', async () => {
    const names = ['Ada, "the first"', 'Grace\nHopper', '=HYPERLINK("x")'];
    const idsOfA = new Set<string>();
    for (const name of names) {
      const response = await call(a, 'POST', '/v1/contacts', { name });
      assert.equal(response.statusCode, 201, response.body);
      idsOfA.add(bodyOf(response).id);
    }
    const existing = await queryAsAdmin<{ id: string }>(
      testApp,
      'select id from contacts where tenant_id = $1',
      [a.tenantId],
    );
    for (const row of existing) idsOfA.add(row.id);
    for (const name of ['Bea of B', 'Bob of B']) {
      assert.equal((await call(b, 'POST', '/v1/contacts', { name })).statusCode, 201);
    }

    const started = await call(a, 'POST', '/v1/exports/contacts');
    assert.equal(started.statusCode, 202, started.body);
    const { exportId } = bodyOf(started);
    assert.equal(bodyOf(await call(a, 'GET', `/v1/exports/${exportId}`)).status, 'queued');
    assertProblem(
      await call(b, 'GET', `/v1/exports/${exportId}`),
      404,
      'TENANTRY_ERR_HTTP_NOT_FOUND',
    );

    const ready = await withWorker(() =>
      waitFor('the export to be ready', async () => {
        const body = bodyOf(await call(a, 'GET', `/v1/exports/${exportId}`));
        assert.notEqual(body.status, 'failed', body.error);
        return body.status === 'ready' ? body : undefined;
      }),
    );
    assert.equal(ready.rowCount, idsOfA.size);
    assert.ok(ready.download !== null);
    const file = bodyOf(await call(a, 'GET', `/v1/files/${ready.fileId}`));
    assert.equal(file.contentType, 'text/csv');
    assertProblem(
      await call(b, 'GET', `/v1/files/${ready.fileId}`),
      404,
      'TENANTRY_ERR_STORAGE_FILE_NOT_FOUND',
    );

    const csv = await useSignedUrl(ready.download.url, 'GET');
    assert.equal(csv.statusCode, 200, csv.body);
    const text = csv.body;
    assert.ok(text.startsWith('id,name,phone,email,attributes,created_at\r\n'));
    const ids = new Set(
      [
        ...text.matchAll(
          /(?:^|\r\n)([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}),/g,
        ),
      ].map((match) => match[1]),
    );
    assert.deepEqual(ids, idsOfA);
    assert.ok(text.includes('"Ada, ""the first"""'));
    assert.ok(text.includes('"Grace\nHopper"'));
    assert.ok(text.includes(`"'=HYPERLINK(""x"")"`));
    assert.ok(!text.includes('of B'));
  });
});
