import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isTenantryError, type TenantryErrorCode } from 'tenantry';
import {
  assertKeyInTenant,
  createLocalStorageDriver,
  createLocalStorageHandler,
  createObjectKey,
  type LocalStorageDriver,
  parseFileName,
  parseObjectKey,
  type SignedUrl,
} from 'tenantry/storage';
import { runDriverContract } from './storage-fixtures/driver-contract.ts';

const secret = randomBytes(32);

interface LocalServer {
  readonly driver: LocalStorageDriver;
  readonly root: string;
  readonly port: number;
  stop(): Promise<void>;
}

async function startLocalServer(basePath = '/files'): Promise<LocalServer> {
  const root = await mkdtemp(join(tmpdir(), 'tenantry-storage-'));
  let handle: ReturnType<typeof createLocalStorageHandler> | undefined;
  const server: Server = createServer((req, res) => void handle?.(req, res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const driver = createLocalStorageDriver({
    root: join(root, 'objects'),
    baseUrl: `http://127.0.0.1:${port}${basePath}`,
    secret,
  });
  handle = createLocalStorageHandler(driver);
  return {
    driver,
    root,
    port,
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await driver.close();
      await rm(root, { recursive: true, force: true });
    },
  };
}

runDriverContract('local', async () => {
  const local = await startLocalServer();
  return { driver: local.driver, teardown: () => local.stop() };
});

function code(expected: TenantryErrorCode): (error: unknown) => boolean {
  return (error) => {
    assert.ok(isTenantryError(error, expected), `expected ${expected}, got ${String(error)}`);
    return true;
  };
}

/** A request with the path sent byte for byte (fetch would normalise `..` and `%2e`). */
function rawRequest(
  port: number,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: Buffer,
): Promise<{ status: number; body: string; contentType: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          body: Buffer.concat(chunks).toString('utf8'),
          contentType: res.headers['content-type'],
        }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

function pathOf(signed: SignedUrl): string {
  const url = new URL(signed.url);
  return `${url.pathname}${url.search}`;
}

function problemCode(body: string): unknown {
  return (JSON.parse(body) as { code?: unknown }).code;
}

describe('file names', () => {
  test('are NFC-normalised and kept when plain', () => {
    assert.equal(parseFileName('Re\u0301sume\u0301.pdf'), 'Résumé.pdf');
    assert.equal(parseFileName('report..final v2.csv'), 'report..final v2.csv');
    assert.equal(parseFileName('a'.repeat(255)), 'a'.repeat(255));
    assert.equal(parseFileName('100% sure.txt'), '100% sure.txt');
  });

  test('are refused for every traversal form, control character and over-long name', () => {
    const refused = [
      '',
      '   ',
      '.',
      '..',
      '../etc/passwd',
      '..\\..\\windows\\win.ini',
      '/etc/passwd',
      'a/b.txt',
      'a\\b.txt',
      'C:evil.txt',
      'c:\\evil.txt',
      'nul\u0000.txt',
      'line\nbreak.txt',
      'tab\there.txt',
      'del\u007f.txt',
      'c1\u0085.txt',
      'gpj.\u202eexe',
      '%2e%2e%2fetc',
      '%2E%2E%2Fetc',
      '..%2fetc',
      '%2fetc',
      'a%5cb',
      'a%5Cb',
      '%252e%252e%252f',
      '%25252e',
      'x%00.txt',
      'full\uff0fwidth',
      'division\u2215slash',
      'a'.repeat(256),
      '\ud800broken',
    ];
    for (const name of refused) {
      assert.throws(
        () => parseFileName(name),
        code('TENANTRY_ERR_STORAGE_NAME_INVALID'),
        `accepted ${JSON.stringify(name)}`,
      );
    }
    assert.throws(() => parseFileName(42), code('TENANTRY_ERR_STORAGE_NAME_INVALID'));
  });
});

describe('object keys', () => {
  const tenantA = randomUUID();
  const tenantB = randomUUID();
  const fileId = randomUUID();

  test('are tenants/<tenant id>/<file id> and parse back', () => {
    const key = createObjectKey(tenantA.toUpperCase(), fileId);
    assert.equal(key, `tenants/${tenantA}/${fileId}`);
    assert.deepEqual(parseObjectKey(key), { tenantId: tenantA, fileId });
    assert.deepEqual(assertKeyInTenant(key, tenantA), { tenantId: tenantA, fileId });
  });

  test('anything but that exact shape is refused', () => {
    const refused = [
      `tenants/${tenantA}/${fileId}/`,
      `/tenants/${tenantA}/${fileId}`,
      `tenants/${tenantA}/../${tenantB}/${fileId}`,
      `tenants/${tenantA}/${fileId}/../../${tenantB}/${fileId}`,
      `tenants/${tenantA}/%2e%2e/${fileId}`,
      `tenants/${tenantA}\\${fileId}`,
      `tenants/${tenantA}/${fileId}\u0000`,
      `tenants/${tenantA.toUpperCase()}/${fileId}`,
      `tenants//${fileId}`,
      `uploads/${fileId}`,
      `tenants/${tenantA}`,
      `tenants/${tenantA}/files/${fileId}`,
      '',
    ];
    for (const key of refused) {
      assert.throws(
        () => parseObjectKey(key),
        code('TENANTRY_ERR_STORAGE_KEY_INVALID'),
        `accepted ${JSON.stringify(key)}`,
      );
    }
    assert.throws(() => parseObjectKey(undefined), code('TENANTRY_ERR_STORAGE_KEY_INVALID'));
  });

  test("a key under another tenant's prefix is refused", () => {
    assert.throws(
      () => assertKeyInTenant(`tenants/${tenantB}/${fileId}`, tenantA),
      code('TENANTRY_ERR_STORAGE_KEY_INVALID'),
    );
  });
});

describe('local driver configuration', () => {
  test('refuses a short secret, a relative or query-carrying base URL and a missing root', () => {
    const good = { root: tmpdir(), baseUrl: 'http://127.0.0.1/files', secret };
    assert.throws(
      () => createLocalStorageDriver({ ...good, secret: 'x'.repeat(31) }),
      code('TENANTRY_ERR_CONFIG_INVALID'),
    );
    assert.throws(
      () => createLocalStorageDriver({ ...good, baseUrl: '/files' }),
      code('TENANTRY_ERR_CONFIG_INVALID'),
    );
    assert.throws(
      () => createLocalStorageDriver({ ...good, baseUrl: 'http://h/files?x=1' }),
      code('TENANTRY_ERR_CONFIG_INVALID'),
    );
    assert.throws(
      () => createLocalStorageDriver({ ...good, baseUrl: 'file:///tmp' }),
      code('TENANTRY_ERR_CONFIG_INVALID'),
    );
    assert.throws(
      () => createLocalStorageDriver({ ...good, root: '' }),
      code('TENANTRY_ERR_CONFIG_INVALID'),
    );
  });
});

describe('local handler', () => {
  let local: LocalServer;
  const tenantA = randomUUID();
  const tenantB = randomUUID();
  const inAnHour = () => new Date(Date.now() + 3_600_000);

  before(async () => {
    local = await startLocalServer();
  });
  after(async () => {
    await local.stop();
  });

  async function signedUpload(tenantId: string, size: number, contentType = 'text/plain') {
    const key = createObjectKey(tenantId, randomUUID());
    const upload = await local.driver.signUpload({
      tenantId,
      key,
      size,
      contentType,
      expiresAt: inAnHour(),
    });
    return { key, upload };
  }

  async function stored(tenantId: string, body: Buffer, fileName?: string) {
    const { key, upload } = await signedUpload(tenantId, body.length);
    const response = await fetch(upload.url, { method: 'PUT', headers: upload.headers, body });
    assert.equal(response.status, 204);
    const download = await local.driver.signDownload({
      tenantId,
      key,
      expiresAt: inAnHour(),
      ...(fileName === undefined ? {} : { fileName }),
    });
    return { key, upload, download };
  }

  test('an upload stores the bytes with their SHA-256 and a download returns them', async () => {
    const body = randomBytes(300);
    const { key, download } = await stored(tenantA, body, 'notes "q1".txt');
    const head = await local.driver.head(key);
    assert.deepEqual(head, {
      size: 300,
      contentType: 'text/plain',
      sha256: createHash('sha256').update(body).digest('hex'),
    });
    const response = await fetch(download.url);
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-type'), 'text/plain');
    assert.equal(response.headers.get('x-content-type-options'), 'nosniff');
    assert.equal(
      response.headers.get('content-disposition'),
      `attachment; filename="notes _q1_.txt"; filename*=UTF-8''notes%20%22q1%22.txt`,
    );
    assert.deepEqual(Buffer.from(await response.arrayBuffer()), body);
  });

  test('tampering with any signed field, or adding one, is refused with 403', async () => {
    const { upload } = await signedUpload(tenantA, 10);
    const { download } = await stored(tenantA, randomBytes(10), 'a.txt');
    const body = randomBytes(10);
    const uploadEdits: Record<string, string>[] = [
      { method: 'GET' },
      { tenant: tenantB },
      { expires: String(Math.floor(Date.now() / 1000) + 7200) },
      { size: '11' },
      { size: '9' },
      { type: 'text/html' },
      { signature: 'A'.repeat(43) },
      { signature: '' },
      { name: 'x.txt' },
    ];
    for (const edit of uploadEdits) {
      const url = new URL(upload.url);
      for (const [name, value] of Object.entries(edit)) url.searchParams.set(name, value);
      const headers = { ...upload.headers };
      if (edit.size !== undefined) headers['content-length'] = edit.size;
      if (edit.type !== undefined) headers['content-type'] = edit.type;
      const sent = edit.size === undefined ? body : randomBytes(Number(edit.size));
      const response = await rawRequest(
        local.port,
        'PUT',
        `${url.pathname}${url.search}`,
        headers,
        sent,
      );
      assert.equal(
        response.status,
        403,
        `upload edit ${JSON.stringify(edit)} got ${response.status}`,
      );
      assert.equal(problemCode(response.body), 'TENANTRY_ERR_STORAGE_URL_INVALID');
      assert.equal(response.contentType, 'application/problem+json');
    }
    const downloadEdits: Record<string, string>[] = [
      { method: 'PUT' },
      { tenant: tenantB },
      { expires: String(Math.floor(Date.now() / 1000) + 7200) },
      { name: 'evil.html' },
      { size: '10' },
      { type: 'text/html' },
      { extra: '1' },
    ];
    for (const edit of downloadEdits) {
      const url = new URL(download.url);
      for (const [name, value] of Object.entries(edit)) url.searchParams.set(name, value);
      const response = await rawRequest(local.port, 'GET', `${url.pathname}${url.search}`);
      assert.equal(
        response.status,
        403,
        `download edit ${JSON.stringify(edit)} got ${response.status}`,
      );
    }
    const doubled = `${pathOf(download)}&tenant=${tenantA}`;
    assert.equal((await rawRequest(local.port, 'GET', doubled)).status, 403);
    const unsigned = pathOf(download).replace(/&signature=[^&]*/, '');
    assert.equal((await rawRequest(local.port, 'GET', unsigned)).status, 403);
    assert.equal((await rawRequest(local.port, 'GET', new URL(download.url).pathname)).status, 403);
  });

  test("a URL signed for tenant A edited to B's key (or another A key) is refused", async () => {
    const ofB = await stored(tenantB, randomBytes(20));
    const ofA = await stored(tenantA, randomBytes(20));
    const otherA = await stored(tenantA, randomBytes(20));
    for (const target of [ofB.key, otherA.key]) {
      const url = new URL(ofA.download.url);
      url.pathname = `/files/${target}`;
      const response = await rawRequest(local.port, 'GET', `${url.pathname}${url.search}`);
      assert.equal(response.status, 403);
      const put = new URL(ofA.upload.url);
      put.pathname = `/files/${target}`;
      const overwrite = await rawRequest(
        local.port,
        'PUT',
        `${put.pathname}${put.search}`,
        ofA.upload.headers,
        randomBytes(20),
      );
      assert.equal(overwrite.status, 403);
    }
    assert.equal((await local.driver.head(ofB.key))?.size, 20);
  });

  test('every traversal form in the URL path is refused and nothing lands outside the root', async () => {
    const { upload } = await signedUpload(tenantA, 4);
    const search = new URL(upload.url).search;
    const fileId = randomUUID();
    const paths = [
      `/files/tenants/${tenantA}/../${tenantB}/${fileId}`,
      `/files/tenants/${tenantA}/%2e%2e/${tenantB}/${fileId}`,
      `/files/tenants/${tenantA}/%2E%2E%2F${tenantB}%2F${fileId}`,
      `/files/tenants/${tenantA}/%252e%252e%252f${fileId}`,
      `/files/tenants/${tenantA}/..%5c..%5c${fileId}`,
      `/files/tenants/${tenantA}/..\\..\\${fileId}`,
      `/files//tenants/${tenantA}/${fileId}`,
      `/files/../../../../tmp/${fileId}`,
      `/files/tenants/${tenantA}/${fileId}%00`,
      `/other/tenants/${tenantA}/${fileId}`,
      `/files/tenants/${tenantA}/.${fileId}`,
    ];
    for (const path of paths) {
      const response = await rawRequest(
        local.port,
        'PUT',
        `${path}${search}`,
        upload.headers,
        Buffer.from('evil'),
      );
      assert.equal(response.status, 403, `${path} got ${response.status}`);
      assert.equal(problemCode(response.body), 'TENANTRY_ERR_STORAGE_URL_INVALID');
    }
    const everything = await readdir(local.root, { recursive: true });
    assert.deepEqual(
      everything.filter((entry) => entry.includes(fileId)),
      [],
      'a traversal request wrote a file',
    );
  });

  test('driver calls refuse traversal keys', async () => {
    const expiresAt = inAnHour();
    for (const key of [
      `tenants/${tenantA}/../${tenantB}/x`,
      `tenants/${tenantA}/./x`,
      `tenants/${tenantA}/%2e%2e/x`,
      `tenants/${tenantA}/x/`,
      `tenants/${tenantA}//x`,
    ]) {
      await assert.rejects(
        local.driver.signUpload({
          tenantId: tenantA,
          key,
          size: 1,
          contentType: 'text/plain',
          expiresAt,
        }),
        code('TENANTRY_ERR_STORAGE_KEY_INVALID'),
      );
      await assert.rejects(local.driver.head(key), code('TENANTRY_ERR_STORAGE_KEY_INVALID'));
      await assert.rejects(local.driver.delete(key), code('TENANTRY_ERR_STORAGE_KEY_INVALID'));
    }
    await assert.rejects(
      local.driver.deletePrefix('tenants/../'),
      code('TENANTRY_ERR_STORAGE_KEY_INVALID'),
    );
    await assert.rejects(
      local.driver.deletePrefix(`tenants/${tenantA}/../`),
      code('TENANTRY_ERR_STORAGE_KEY_INVALID'),
    );
  });

  test('expired URLs are refused with 410 and store nothing', async () => {
    const key = createObjectKey(tenantA, randomUUID());
    const past = new Date(Date.now() - 1000);
    const upload = await local.driver.signUpload({
      tenantId: tenantA,
      key,
      size: 5,
      contentType: 'text/plain',
      expiresAt: past,
    });
    const refused = await fetch(upload.url, {
      method: 'PUT',
      headers: upload.headers,
      body: Buffer.from('hello'),
    });
    assert.equal(refused.status, 410);
    assert.equal(refused.headers.get('content-type'), 'application/problem+json');
    assert.equal(problemCode(await refused.text()), 'TENANTRY_ERR_STORAGE_URL_EXPIRED');
    assert.equal(await local.driver.head(key), undefined);

    const { key: storedKey } = await stored(tenantA, randomBytes(5));
    const download = await local.driver.signDownload({
      tenantId: tenantA,
      key: storedKey,
      expiresAt: past,
    });
    const expired = await fetch(download.url);
    assert.equal(expired.status, 410);
    assert.equal(problemCode(await expired.text()), 'TENANTRY_ERR_STORAGE_URL_EXPIRED');
  });

  test('a GET URL cannot PUT and a PUT URL cannot GET', async () => {
    const body = randomBytes(16);
    const { key, upload, download } = await stored(tenantA, body);
    const put = await fetch(download.url, {
      method: 'PUT',
      headers: upload.headers,
      body: randomBytes(16),
    });
    assert.equal(put.status, 403);
    assert.equal(problemCode(await put.text()), 'TENANTRY_ERR_STORAGE_URL_INVALID');
    const get = await fetch(upload.url);
    assert.equal(get.status, 403);
    for (const method of ['DELETE', 'POST', 'HEAD']) {
      assert.equal((await rawRequest(local.port, method, pathOf(download))).status, 403);
    }
    assert.equal(
      (await local.driver.head(key))?.sha256,
      createHash('sha256').update(body).digest('hex'),
    );
  });

  test('an oversized body is refused with 413 and stores nothing', async () => {
    const { key, upload } = await signedUpload(tenantA, 10);
    const response = await rawRequest(
      local.port,
      'PUT',
      pathOf(upload),
      { ...upload.headers, 'content-length': '20' },
      randomBytes(20),
    );
    assert.equal(response.status, 413);
    assert.equal(problemCode(response.body), 'TENANTRY_ERR_STORAGE_TOO_LARGE');
    assert.equal(await local.driver.head(key), undefined);
  });

  test('a short or chunked body is refused with 400 and stores nothing', async () => {
    const { key, upload } = await signedUpload(tenantA, 10);
    const short = await rawRequest(
      local.port,
      'PUT',
      pathOf(upload),
      { ...upload.headers, 'content-length': '5' },
      randomBytes(5),
    );
    assert.equal(short.status, 400);
    assert.equal(problemCode(short.body), 'TENANTRY_ERR_STORAGE_REQUEST_INVALID');
    const chunked = await rawRequest(
      local.port,
      'PUT',
      pathOf(upload),
      { 'content-type': 'text/plain', 'transfer-encoding': 'chunked' },
      randomBytes(10),
    );
    assert.equal(chunked.status, 400);
    assert.equal(await local.driver.head(key), undefined);
  });

  test('the streaming limit refuses more bytes than signed even when the length is not checked first', async () => {
    const key = createObjectKey(tenantA, randomUUID());
    async function* chunks() {
      yield randomBytes(8);
      yield randomBytes(8);
    }
    await assert.rejects(
      local.driver.writeObject(key, chunks(), { size: 10, contentType: 'text/plain' }),
      code('TENANTRY_ERR_STORAGE_TOO_LARGE'),
    );
    assert.equal(await local.driver.head(key), undefined);
    assert.deepEqual(
      await readdir(join(local.root, 'objects', '.tmp')),
      [],
      'a temp file was left',
    );
  });

  test('a wrong content type is refused with 415 and stores nothing', async () => {
    const { key, upload } = await signedUpload(tenantA, 4, 'image/png');
    for (const type of ['text/html', 'image/png; charset=utf-8', 'image/svg+xml']) {
      const response = await rawRequest(
        local.port,
        'PUT',
        pathOf(upload),
        { ...upload.headers, 'content-type': type },
        Buffer.from('<a/>'),
      );
      assert.equal(response.status, 415, `${type} got ${response.status}`);
      assert.equal(problemCode(response.body), 'TENANTRY_ERR_STORAGE_TYPE_NOT_ALLOWED');
    }
    const missing = await rawRequest(
      local.port,
      'PUT',
      pathOf(upload),
      { 'content-length': '4' },
      Buffer.from('<a/>'),
    );
    assert.equal(missing.status, 415);
    assert.equal(await local.driver.head(key), undefined);
  });

  test('an upload URL writes its object once', async () => {
    const first = randomBytes(8);
    const { key, upload } = await stored(tenantA, first);
    const again = await fetch(upload.url, {
      method: 'PUT',
      headers: upload.headers,
      body: randomBytes(8),
    });
    assert.equal(again.status, 409);
    assert.equal(problemCode(await again.text()), 'TENANTRY_ERR_STORAGE_OBJECT_EXISTS');
    assert.equal(
      (await local.driver.head(key))?.sha256,
      createHash('sha256').update(first).digest('hex'),
    );
  });

  test('a download of a missing object is 404', async () => {
    const key = createObjectKey(tenantA, randomUUID());
    const download = await local.driver.signDownload({
      tenantId: tenantA,
      key,
      expiresAt: inAnHour(),
    });
    const response = await fetch(download.url);
    assert.equal(response.status, 404);
    assert.equal(problemCode(await response.text()), 'TENANTRY_ERR_STORAGE_FILE_NOT_FOUND');
  });

  test('a URL signed with another secret is refused', async () => {
    const other = createLocalStorageDriver({
      root: local.root,
      baseUrl: `http://127.0.0.1:${local.port}/files`,
      secret: randomBytes(32),
    });
    const { key } = await stored(tenantA, randomBytes(4));
    const forged = await other.signDownload({ tenantId: tenantA, key, expiresAt: inAnHour() });
    assert.equal((await fetch(forged.url)).status, 403);
  });
});
