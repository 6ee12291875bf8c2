import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { isTenantryError } from '../src/errors.ts';
import { createS3StorageDriver } from '../src/storage/s3-driver.ts';
import type { SignedUrl, StorageDriver } from '../src/storage/storage-driver.ts';
import { runDriverContract } from './storage-fixtures/driver-contract.ts';
import { startTestS3Server, type TestS3Server } from './storage-fixtures/s3rver.ts';
import { createSigV4Verifier } from './storage-fixtures/sigv4-verifier.ts';

runDriverContract(
  's3 (s3rver)',
  async () => {
    const s3 = await startTestS3Server();
    const driver = createS3StorageDriver({
      bucket: s3.bucket,
      endpoint: s3.endpoint,
      credentials: s3.credentials,
    });
    return {
      driver,
      async teardown() {
        await driver.close();
        await s3.stop();
      },
    };
  },
  { serverVerifiesSignatures: true },
);

const credentials = { accessKeyId: 'AKIDTENANTRYTEST', secretAccessKey: 'tenantry-test-secret' };
const endpoint = 'http://127.0.0.1:9';
const bucket = 'tenantry-signing';
const region = 'us-east-1';

const verifier = createSigV4Verifier({ credentials, region });

function expectedSignature(
  url: string,
  method: string,
  headers: Readonly<Record<string, string>>,
): Promise<string> {
  return verifier.expectedSignature({ url, method, headers });
}

function withParam(url: string, name: string, value: string): string {
  const parsed = new URL(url);
  parsed.searchParams.set(name, value);
  return parsed.toString();
}

function withPath(url: string, replace: (path: string) => string): string {
  const parsed = new URL(url);
  parsed.pathname = replace(parsed.pathname);
  return parsed.toString();
}

function signatureOf(url: string): string {
  return new URL(url).searchParams.get('X-Amz-Signature') ?? '';
}

describe('s3 driver signatures (recomputed with the SDK signer)', () => {
  const driver = createS3StorageDriver({ bucket, region, endpoint, credentials });
  const tenantA = randomUUID();
  const tenantB = randomUUID();
  const keyA = `tenants/${tenantA}/files/${randomUUID()}`;
  const expiresAt = new Date(Date.now() + 5 * 60_000);
  let upload: SignedUrl;
  let download: SignedUrl;

  before(async () => {
    upload = await driver.signUpload({
      tenantId: tenantA,
      key: keyA,
      size: 2048,
      contentType: 'application/pdf',
      expiresAt,
    });
    download = await driver.signDownload({
      tenantId: tenantA,
      key: keyA,
      expiresAt,
      fileName: 'report.pdf',
    });
  });
  after(() => driver.close());

  test('the verifier accepts the URLs exactly as signed', async () => {
    assert.equal(
      await expectedSignature(upload.url, 'PUT', upload.headers),
      signatureOf(upload.url),
    );
    assert.equal(
      await expectedSignature(download.url, 'GET', download.headers),
      signatureOf(download.url),
    );
  });

  test('upload URLs bind content-type, content-length and host and carry no body checksum', () => {
    const params = new URL(upload.url).searchParams;
    assert.equal(params.get('X-Amz-SignedHeaders'), 'content-length;content-type;host');
    for (const name of params.keys()) {
      assert.doesNotMatch(name.toLowerCase(), /^x-amz-(checksum|sdk-checksum)/);
    }
    assert.deepEqual(upload.headers, {
      'content-type': 'application/pdf',
      'content-length': '2048',
    });
  });

  test('editing the key to reach another tenant breaks the signature', async () => {
    for (const url of [
      withPath(upload.url, (path) => path.replace(tenantA, tenantB)),
      withPath(upload.url, (path) => `${path}x`),
    ]) {
      assert.notEqual(await expectedSignature(url, 'PUT', upload.headers), signatureOf(url));
    }
    const foreign = withPath(download.url, (path) => path.replace(tenantA, tenantB));
    assert.notEqual(
      await expectedSignature(foreign, 'GET', download.headers),
      signatureOf(foreign),
    );
  });

  test('sending another content type or size breaks the signature', async () => {
    for (const headers of [
      { ...upload.headers, 'content-type': 'text/html' },
      { ...upload.headers, 'content-length': '2049' },
      { ...upload.headers, 'content-length': '999999999' },
    ]) {
      assert.notEqual(await expectedSignature(upload.url, 'PUT', headers), signatureOf(upload.url));
    }
  });

  test('extending the expiry or moving the signing date breaks the signature', async () => {
    for (const url of [
      withParam(upload.url, 'X-Amz-Expires', '604800'),
      withParam(download.url, 'X-Amz-Expires', '604800'),
      withParam(upload.url, 'X-Amz-Date', '20991231T000000Z'),
    ]) {
      const method = url.includes('x-id=PutObject') ? 'PUT' : 'GET';
      const headers = method === 'PUT' ? upload.headers : download.headers;
      assert.notEqual(await expectedSignature(url, method, headers), signatureOf(url));
    }
  });

  test('editing the download file name breaks the signature', async () => {
    const url = withParam(
      download.url,
      'response-content-disposition',
      'attachment; filename="evil.html"',
    );
    assert.notEqual(await expectedSignature(url, 'GET', download.headers), signatureOf(url));
  });

  test('a GET URL used to PUT and a PUT URL used to GET do not verify', async () => {
    assert.notEqual(
      await expectedSignature(download.url, 'PUT', upload.headers),
      signatureOf(download.url),
    );
    assert.notEqual(
      await expectedSignature(upload.url, 'GET', upload.headers),
      signatureOf(upload.url),
    );
  });

  test('expiresAt is honoured, rounded down to whole seconds, within SigV4 limits', async () => {
    const requested = new Date(Date.now() + 90_500);
    const signed = await driver.signDownload({
      tenantId: tenantA,
      key: keyA,
      expiresAt: requested,
    });
    const params = new URL(signed.url).searchParams;
    const date = params.get('X-Amz-Date') ?? '';
    const signedAt = Date.UTC(
      Number(date.slice(0, 4)),
      Number(date.slice(4, 6)) - 1,
      Number(date.slice(6, 8)),
      Number(date.slice(9, 11)),
      Number(date.slice(11, 13)),
      Number(date.slice(13, 15)),
    );
    assert.equal(signedAt + Number(params.get('X-Amz-Expires')) * 1000, signed.expiresAt.getTime());
    assert.ok(signed.expiresAt.getTime() <= requested.getTime());
    assert.ok(signed.expiresAt.getTime() > requested.getTime() - 2000);

    for (const bad of [
      new Date(Date.now() - 1000),
      new Date(Date.now() + 8 * 86_400_000),
      new Date(Number.NaN),
    ]) {
      await assert.rejects(
        driver.signDownload({ tenantId: tenantA, key: keyA, expiresAt: bad }),
        (error) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
      );
    }
  });
});

describe('s3 driver key rules (the driver never signs outside the tenant prefix)', () => {
  const driver = createS3StorageDriver({ bucket, region, endpoint, credentials });
  after(() => driver.close());
  const tenantA = randomUUID();
  const tenantB = randomUUID();
  const expiresAt = new Date(Date.now() + 60_000);
  const isKeyError = (error: unknown) => isTenantryError(error, 'TENANTRY_ERR_STORAGE_KEY_INVALID');
  const refusals: [string, string][] = [
    ['no prefix', 'uploads/document.pdf'],
    ['another tenant', `tenants/${tenantB}/files/doc`],
    ['tenant prefix without a separator', `tenants/${tenantA}x/files/doc`],
    ['tenant root itself', `tenants/${tenantA}`],
    ['leading slash', `/tenants/${tenantA}/files/doc`],
    ['dot-dot segment', `tenants/${tenantA}/../${tenantB}/files/doc`],
    ['dot segment', `tenants/${tenantA}/./files/doc`],
    ['empty segment', `tenants/${tenantA}//files/doc`],
    ['encoded traversal', `tenants/${tenantA}/files/%2e%2e%2f${tenantB}`],
    ['backslash', `tenants/${tenantA}/files\\..\\..\\${tenantB}`],
    ['NUL', `tenants/${tenantA}/files/doc\u0000.pdf`],
    ['newline', `tenants/${tenantA}/files/doc\n.pdf`],
  ];

  for (const [label, key] of refusals) {
    test(`refuses to sign a key with ${label}`, async () => {
      await assert.rejects(
        driver.signUpload({
          tenantId: tenantA,
          key,
          size: 1,
          contentType: 'text/plain',
          expiresAt,
        }),
        isKeyError,
      );
      await assert.rejects(driver.signDownload({ tenantId: tenantA, key, expiresAt }), isKeyError);
    });
  }

  test('refuses a tenant id that would widen the prefix', async () => {
    for (const tenantId of ['', `${tenantA}/files`]) {
      await assert.rejects(
        driver.signDownload({ tenantId, key: `tenants/${tenantA}/files/doc`, expiresAt }),
        (error) => isTenantryError(error, 'TENANTRY_ERR_STORAGE_KEY_INVALID'),
      );
    }
  });

  test("signs the caller's own keys and every URL path stays under its prefix", async () => {
    const key = `tenants/${tenantA}/files/${randomUUID()}`;
    const upload = await driver.signUpload({
      tenantId: tenantA,
      key,
      size: 1,
      contentType: 'text/plain',
      expiresAt,
    });
    const download = await driver.signDownload({ tenantId: tenantA, key, expiresAt });
    for (const signed of [upload, download]) {
      assert.equal(new URL(signed.url).pathname, `/${bucket}/${key}`);
    }
  });

  test('refuses head, delete and deletePrefix outside tenants/<tenant id>/', async () => {
    await assert.rejects(driver.head('uploads/doc'), isKeyError);
    await assert.rejects(driver.head(`tenants/${tenantA}/../x`), isKeyError);
    await assert.rejects(driver.delete('uploads/doc'), isKeyError);
    for (const prefix of [
      '',
      'tenants/',
      'tenants',
      `tenants/${tenantA}`,
      `tenants/${tenantA}/../`,
      'tenants//',
      'other/',
    ]) {
      await assert.rejects(driver.deletePrefix(prefix), isKeyError, prefix);
    }
  });

  test('refuses an invalid size or content type before signing', async () => {
    const key = `tenants/${tenantA}/files/doc`;
    for (const [size, contentType] of [
      [-1, 'text/plain'],
      [1.5, 'text/plain'],
      [1, ''],
      [1, 'text/plain\r\nx-amz-acl: public-read'],
    ] as const) {
      await assert.rejects(
        driver.signUpload({ tenantId: tenantA, key, size, contentType, expiresAt }),
        (error) => isTenantryError(error, 'TENANTRY_ERR_STORAGE_REQUEST_INVALID'),
      );
    }
  });
});

describe('s3 driver checksum configuration', () => {
  let s3: TestS3Server;
  let driver: StorageDriver;
  before(async () => {
    s3 = await startTestS3Server();
    driver = createS3StorageDriver({
      bucket: s3.bucket,
      endpoint: s3.endpoint,
      credentials: s3.credentials,
    });
  });
  after(async () => {
    await driver.close();
    await s3.stop();
  });

  test("the SDK's default presigner puts an empty-body checksum in PUT URLs", async () => {
    const client = new S3Client({
      region,
      endpoint: s3.endpoint,
      forcePathStyle: true,
      credentials: { ...s3.credentials },
    });
    try {
      const url = await getSignedUrl(
        client,
        new PutObjectCommand({ Bucket: s3.bucket, Key: 'tenants/x/y', ContentLength: 4 }),
      );
      const names = [...new URL(url).searchParams.keys()].map((name) => name.toLowerCase());
      assert.ok(
        names.some((name) => name.startsWith('x-amz-checksum-')),
        `expected a checksum parameter in ${url}`,
      );
    } finally {
      client.destroy();
    }
  });

  test('a client with the default checksum mode is refused', async () => {
    const client = new S3Client({
      region,
      endpoint: s3.endpoint,
      forcePathStyle: true,
      credentials: { ...s3.credentials },
    });
    const injected = createS3StorageDriver({ bucket: s3.bucket, client });
    try {
      const tenantId = randomUUID();
      await assert.rejects(
        injected.signUpload({
          tenantId,
          key: `tenants/${tenantId}/files/doc`,
          size: 4,
          contentType: 'text/plain',
          expiresAt: new Date(Date.now() + 60_000),
        }),
        (error) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
      );
    } finally {
      await injected.close();
      client.destroy();
    }
  });

  test('a real body uploads through the signed URL and head reads a sha256 metadata entry', async () => {
    const tenantId = randomUUID();
    const key = `tenants/${tenantId}/files/${randomUUID()}`;
    const body = randomBytes(4096);
    const upload = await driver.signUpload({
      tenantId,
      key,
      size: body.length,
      contentType: 'application/octet-stream',
      expiresAt: new Date(Date.now() + 60_000),
    });
    const response = await fetch(upload.url, { method: 'PUT', headers: upload.headers, body });
    assert.equal(response.status, 200);
    assert.equal((await driver.head(key))?.sha256, undefined);

    const digest = createHash('sha256').update(body).digest('hex');
    const client = new S3Client({
      region,
      endpoint: s3.endpoint,
      forcePathStyle: true,
      credentials: { ...s3.credentials },
    });
    try {
      await client.send(
        new PutObjectCommand({
          Bucket: s3.bucket,
          Key: key,
          Body: body,
          Metadata: { sha256: digest },
        }),
      );
    } finally {
      client.destroy();
    }
    assert.equal((await driver.head(key))?.sha256, digest);
  });
});

describe('s3 driver against a verifying server (s3rver behind the SigV4 proxy)', () => {
  let s3: TestS3Server;
  let driver: StorageDriver;
  const tenantA = randomUUID();
  const tenantB = randomUUID();
  const keyB = `tenants/${tenantB}/files/${randomUUID()}`;
  const bodyB = randomBytes(256);

  before(async () => {
    s3 = await startTestS3Server();
    driver = createS3StorageDriver({
      bucket: s3.bucket,
      endpoint: s3.endpoint,
      credentials: s3.credentials,
    });
    const upload = await driver.signUpload({
      tenantId: tenantB,
      key: keyB,
      size: bodyB.length,
      contentType: 'application/octet-stream',
      expiresAt: new Date(Date.now() + 60_000),
    });
    const response = await fetch(upload.url, {
      method: 'PUT',
      headers: upload.headers,
      body: bodyB,
    });
    assert.equal(response.status, 200);
  });
  after(async () => {
    await driver.close();
    await s3.stop();
  });

  async function readB(): Promise<Buffer> {
    const download = await driver.signDownload({
      tenantId: tenantB,
      key: keyB,
      expiresAt: new Date(Date.now() + 60_000),
    });
    const response = await fetch(download.url);
    assert.equal(response.status, 200);
    return Buffer.from(await response.arrayBuffer());
  }

  test("a URL signed for tenant A, edited to B's key, neither reads nor overwrites B's object", async () => {
    const keyA = `tenants/${tenantA}/files/${keyB.split('/').at(-1)}`;
    const upload = await driver.signUpload({
      tenantId: tenantA,
      key: keyA,
      size: 256,
      contentType: 'application/octet-stream',
      expiresAt: new Date(Date.now() + 60_000),
    });
    const download = await driver.signDownload({
      tenantId: tenantA,
      key: keyA,
      expiresAt: new Date(Date.now() + 60_000),
    });
    const toB = (url: string) => withPath(url, (path) => path.replace(tenantA, tenantB));

    const overwrite = await fetch(toB(upload.url), {
      method: 'PUT',
      headers: upload.headers,
      body: randomBytes(256),
    });
    assert.equal(overwrite.status, 403);
    const read = await fetch(toB(download.url));
    assert.equal(read.status, 403);
    assert.notDeepEqual(Buffer.from(await read.arrayBuffer()), bodyB);
    assert.deepEqual(await readB(), bodyB);
  });

  test('an upload with another content type, another size or a longer expiry is refused', async () => {
    const tenantId = randomUUID();
    const key = `tenants/${tenantId}/files/${randomUUID()}`;
    const upload = await driver.signUpload({
      tenantId,
      key,
      size: 64,
      contentType: 'image/png',
      expiresAt: new Date(Date.now() + 60_000),
    });
    const attempts: [string, RequestInit][] = [
      [
        upload.url,
        {
          method: 'PUT',
          headers: { ...upload.headers, 'content-type': 'text/html' },
          body: randomBytes(64),
        },
      ],
      [
        upload.url,
        { method: 'PUT', headers: { 'content-type': 'image/png' }, body: randomBytes(65) },
      ],
      [
        withParam(upload.url, 'X-Amz-Expires', '604800'),
        { method: 'PUT', headers: upload.headers, body: randomBytes(64) },
      ],
    ];
    for (const [url, init] of attempts) {
      const response = await fetch(url, init);
      assert.equal(response.status, 403);
    }
    assert.equal(await driver.head(key), undefined);

    const honest = await fetch(upload.url, {
      method: 'PUT',
      headers: upload.headers,
      body: randomBytes(64),
    });
    assert.equal(honest.status, 200);
    assert.deepEqual(await driver.head(key), {
      size: 64,
      contentType: 'image/png',
      sha256: undefined,
    });
  });

  test('s3rver alone does not verify signatures (why the proxy exists)', async () => {
    const download = await driver.signDownload({
      tenantId: tenantA,
      key: `tenants/${tenantA}/files/x`,
      expiresAt: new Date(Date.now() + 60_000),
    });
    const tampered = new URL(
      withPath(download.url, (path) => path.replace(`tenants/${tenantA}/files/x`, keyB)),
    );
    const direct = new URL(s3.unverifiedEndpoint);
    tampered.port = direct.port;
    const response = await fetch(tampered);
    assert.equal(response.status, 200, 's3rver started verifying SigV4: the proxy can go');
    assert.deepEqual(Buffer.from(await response.arrayBuffer()), bodyB);
  });
});
