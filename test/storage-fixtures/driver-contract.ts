import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import type { SignedUrl, StorageDriver } from '../../src/storage/storage-driver.ts';

/** What a driver under test needs, and what its server can be expected to check. */
export interface DriverContractSetup {
  readonly driver: StorageDriver;
  teardown(): Promise<void>;
}

/** Server checks the contract can only expect from some drivers' test servers. */
export interface DriverContractOptions {
  /**
   * Whether the server behind the signed URLs verifies signatures, so a URL used with the wrong
   * method is refused. s3rver alone does not; `startTestS3Server()` puts a verifying proxy in front.
   * @defaultValue `true`
   */
  readonly serverVerifiesSignatures?: boolean;
}

const oneMinuteMs = 60_000;

/**
 * Registers the tests every {@link StorageDriver} must pass: a real upload and download through
 * the signed URLs, a declared SHA-256 enforced and reported, expiry, wrong-method use, delete,
 * prefix delete and the tenant prefix rule.
 *
 * @example
 * ```ts
 * runDriverContract('s3', async () => {
 *   const s3 = await startTestS3Server();
 *   const driver = createS3StorageDriver({ bucket: s3.bucket, endpoint: s3.endpoint, credentials: s3.credentials });
 *   return { driver, async teardown() { await driver.close(); await s3.stop(); } };
 * });
 * ```
 */
export function runDriverContract(
  name: string,
  setup: () => Promise<DriverContractSetup>,
  options: DriverContractOptions = {},
): void {
  const serverVerifiesSignatures = options.serverVerifiesSignatures ?? true;

  describe(`storage driver contract: ${name}`, () => {
    let context: DriverContractSetup | undefined;
    const driver = (): StorageDriver => {
      assert.ok(context, 'driver contract setup did not run');
      return context.driver;
    };

    before(async () => {
      context = await setup();
    });
    after(async () => {
      await context?.teardown();
    });

    async function put(
      tenantId: string,
      key: string,
      body: Buffer,
      contentType = 'application/octet-stream',
    ): Promise<void> {
      const signed = await driver().signUpload({
        tenantId,
        key,
        size: body.length,
        contentType,
        expiresAt: new Date(Date.now() + oneMinuteMs),
      });
      const response = await send(signed, body);
      assert.ok(response.ok, `upload of ${key} failed with ${response.status}`);
    }

    test('an object uploaded through a signed URL downloads byte for byte', async () => {
      const tenantId = randomUUID();
      const key = `tenants/${tenantId}/files/${randomUUID()}`;
      const body = randomBytes(1031);
      const expiresAt = new Date(Date.now() + oneMinuteMs);

      const upload = await driver().signUpload({
        tenantId,
        key,
        size: body.length,
        contentType: 'image/png',
        expiresAt,
      });
      assert.equal(upload.method, 'PUT');
      assert.ok(upload.expiresAt.getTime() <= expiresAt.getTime(), 'URL outlives its expiry');
      assert.equal(await driver().head(key), undefined, 'object exists before upload');
      const uploaded = await send(upload, body);
      assert.ok(uploaded.ok, `upload failed with ${uploaded.status}`);

      const stored = await driver().head(key);
      assert.ok(stored, 'head found nothing after upload');
      assert.equal(stored.size, body.length);
      assert.equal(stored.contentType, 'image/png');

      const download = await driver().signDownload({
        tenantId,
        key,
        expiresAt,
        fileName: 'Résumé 2026.png',
      });
      assert.equal(download.method, 'GET');
      const downloaded = await send(download);
      assert.equal(downloaded.status, 200);
      assert.deepEqual(Buffer.from(await downloaded.arrayBuffer()), body);
      const disposition = downloaded.headers.get('content-disposition') ?? '';
      assert.match(disposition, /^attachment;/);
      assert.match(disposition, /filename\*=UTF-8''R%C3%A9sum%C3%A9%202026\.png/);

      const plain = await send(await driver().signDownload({ tenantId, key, expiresAt }));
      assert.equal(plain.status, 200);
      assert.deepEqual(Buffer.from(await plain.arrayBuffer()), body);
    });

    test('a declared SHA-256 admits its bytes (head reports it) and refuses other bytes', async () => {
      const tenantId = randomUUID();
      const body = randomBytes(777);
      const sha256 = createHash('sha256').update(body).digest('hex');
      const sign = (key: string) =>
        driver().signUpload({
          tenantId,
          key,
          size: body.length,
          contentType: 'application/pdf',
          expiresAt: new Date(Date.now() + oneMinuteMs),
          sha256,
        });

      const key = `tenants/${tenantId}/files/${randomUUID()}`;
      const uploaded = await send(await sign(key), body);
      assert.ok(uploaded.ok, `upload with its own checksum failed with ${uploaded.status}`);
      assert.deepEqual(await driver().head(key), {
        size: body.length,
        contentType: 'application/pdf',
        sha256,
      });

      const otherKey = `tenants/${tenantId}/files/${randomUUID()}`;
      const other = Buffer.from(body);
      other[0] = (other[0] ?? 0) ^ 1;
      const refused = await send(await sign(otherKey), other);
      assert.ok(refused.status >= 400, `upload of other bytes got ${refused.status}`);
      assert.equal(await driver().head(otherKey), undefined, 'other bytes were stored');

      for (const bad of [sha256.toUpperCase(), sha256.slice(1), `${sha256.slice(1)}g`, '']) {
        await assert.rejects(
          driver().signUpload({
            tenantId,
            key: otherKey,
            size: 1,
            contentType: 'text/plain',
            expiresAt: new Date(Date.now() + oneMinuteMs),
            sha256: bad,
          }),
          `signUpload accepted sha256 ${JSON.stringify(bad)}`,
        );
      }
    });

    test('writeObject stores server bytes with their SHA-256, and refuses wrong size or digest', async () => {
      const tenantId = randomUUID();
      const body = randomBytes(1500);
      const sha256 = createHash('sha256').update(body).digest('hex');
      const key = `tenants/${tenantId}/files/${randomUUID()}`;
      const half = body.length / 2;
      const stored = await driver().writeObject(
        key,
        [body.subarray(0, half), body.subarray(half)],
        {
          size: body.length,
          contentType: 'text/csv',
          sha256,
        },
      );
      assert.deepEqual({ ...stored }, { size: body.length, contentType: 'text/csv', sha256 });
      assert.deepEqual(await driver().head(key), {
        size: body.length,
        contentType: 'text/csv',
        sha256,
      });
      const download = await driver().signDownload({
        tenantId,
        key,
        expiresAt: new Date(Date.now() + oneMinuteMs),
        fileName: 'export.csv',
      });
      const response = await fetch(download.url, { headers: download.headers });
      assert.equal(response.status, 200);
      assert.deepEqual(Buffer.from(await response.arrayBuffer()), body);

      const refused: [Buffer, { size: number; sha256?: string }, string][] = [
        [body, { size: body.length - 1 }, 'TENANTRY_ERR_STORAGE_TOO_LARGE'],
        [body, { size: body.length + 1 }, 'TENANTRY_ERR_STORAGE_REQUEST_INVALID'],
        [
          randomBytes(body.length),
          { size: body.length, sha256 },
          'TENANTRY_ERR_STORAGE_UPLOAD_MISMATCH',
        ],
      ];
      for (const [bytes, expected, errorCode] of refused) {
        const other = `tenants/${tenantId}/files/${randomUUID()}`;
        await assert.rejects(
          driver().writeObject(other, [bytes], { contentType: 'text/csv', ...expected }),
          (error: unknown) => (error as { code?: string }).code === errorCode,
        );
        assert.equal(await driver().head(other), undefined, `${errorCode}: something was stored`);
      }
      await assert.rejects(
        driver().writeObject('tenants/../x', [body], {
          size: body.length,
          contentType: 'text/csv',
        }),
      );
    });

    test('expired upload and download URLs are refused', async () => {
      const tenantId = randomUUID();
      const uploadKey = `tenants/${tenantId}/files/${randomUUID()}`;
      const downloadKey = `tenants/${tenantId}/files/${randomUUID()}`;
      const body = randomBytes(64);
      await put(tenantId, downloadKey, body);

      const soon = new Date(Date.now() + 2000);
      const upload = await driver().signUpload({
        tenantId,
        key: uploadKey,
        size: body.length,
        contentType: 'application/octet-stream',
        expiresAt: soon,
      });
      const download = await driver().signDownload({ tenantId, key: downloadKey, expiresAt: soon });
      await waitUntilPast(upload.expiresAt, download.expiresAt);

      const refusedUpload = await send(upload, body);
      assert.ok(refusedUpload.status >= 400, `expired upload got ${refusedUpload.status}`);
      assert.equal(await driver().head(uploadKey), undefined, 'expired upload stored the object');
      const refusedDownload = await send(download);
      assert.ok(refusedDownload.status >= 400, `expired download got ${refusedDownload.status}`);
      assert.notDeepEqual(Buffer.from(await refusedDownload.arrayBuffer()), body);
    });

    test('a download URL cannot upload and an upload URL cannot download', {
      skip: serverVerifiesSignatures
        ? false
        : 'the test server does not verify signatures; covered by signature recomputation',
    }, async () => {
      const tenantId = randomUUID();
      const key = `tenants/${tenantId}/files/${randomUUID()}`;
      const original = randomBytes(128);
      const upload = await driver().signUpload({
        tenantId,
        key,
        size: original.length,
        contentType: 'application/octet-stream',
        expiresAt: new Date(Date.now() + oneMinuteMs),
      });
      assert.ok((await send(upload, original)).ok);

      const download = await driver().signDownload({
        tenantId,
        key,
        expiresAt: new Date(Date.now() + oneMinuteMs),
      });
      const replacement = randomBytes(128);
      const overwrite = await fetch(download.url, {
        method: 'PUT',
        headers: upload.headers,
        body: replacement,
      });
      assert.ok(overwrite.status >= 400, `PUT with a GET URL got ${overwrite.status}`);

      const read = await fetch(upload.url, { method: 'GET' });
      assert.ok(read.status >= 400, `GET with a PUT URL got ${read.status}`);
      assert.notDeepEqual(Buffer.from(await read.arrayBuffer()), original);

      const check = await send(download);
      assert.deepEqual(Buffer.from(await check.arrayBuffer()), original);
    });

    test('delete removes the object and deleting an absent object succeeds', async () => {
      const tenantId = randomUUID();
      const key = `tenants/${tenantId}/files/${randomUUID()}`;
      await put(tenantId, key, randomBytes(16));
      assert.ok(await driver().head(key));
      await driver().delete(key);
      assert.equal(await driver().head(key), undefined);
      await driver().delete(key);
      assert.equal(await driver().head(`tenants/${tenantId}/files/${randomUUID()}`), undefined);
    });

    test("deletePrefix removes one tenant's objects and leaves another's", async () => {
      const tenantA = randomUUID();
      const tenantB = randomUUID();
      const keysA = [
        `tenants/${tenantA}/files/${randomUUID()}`,
        `tenants/${tenantA}/exports/${randomUUID()}`,
      ];
      const keyB = `tenants/${tenantB}/files/${randomUUID()}`;
      for (const key of keysA) await put(tenantA, key, randomBytes(8));
      await put(tenantB, keyB, randomBytes(8));

      assert.equal(await driver().deletePrefix(`tenants/${tenantA}/`), keysA.length);
      for (const key of keysA) assert.equal(await driver().head(key), undefined);
      assert.equal((await driver().head(keyB))?.size, 8);
      assert.equal(await driver().deletePrefix(`tenants/${tenantA}/`), 0);
    });

    test("signing refuses keys outside tenants/ and outside the caller's tenant", async () => {
      const tenantA = randomUUID();
      const tenantB = randomUUID();
      const expiresAt = new Date(Date.now() + oneMinuteMs);
      const foreignKeys = [
        `tenants/${tenantB}/files/x`,
        'uploads/document.pdf',
        `/tenants/${tenantA}/files/x`,
        `tenants/${tenantA}/../${tenantB}/files/x`,
        `tenants/${tenantA}/files/..\\..\\${tenantB}`,
        `tenants/${tenantA}/files/%2e%2e%2f${tenantB}`,
        `tenants/${tenantA}/files/a\u0000b`,
        `tenants/${tenantA}`,
      ];
      for (const key of foreignKeys) {
        await assert.rejects(
          driver().signUpload({
            tenantId: tenantA,
            key,
            size: 1,
            contentType: 'text/plain',
            expiresAt,
          }),
          `signUpload accepted ${JSON.stringify(key)}`,
        );
        await assert.rejects(
          driver().signDownload({ tenantId: tenantA, key, expiresAt }),
          `signDownload accepted ${JSON.stringify(key)}`,
        );
      }
      await assert.rejects(driver().head('uploads/document.pdf'));
      await assert.rejects(driver().delete('uploads/document.pdf'));
      await assert.rejects(driver().deletePrefix('tenants/'));
      await assert.rejects(driver().deletePrefix(''));
    });
  });
}

function send(signed: SignedUrl, body?: Buffer): Promise<Response> {
  return fetch(signed.url, {
    method: signed.method,
    headers: signed.headers,
    ...(body === undefined ? {} : { body }),
  });
}

async function waitUntilPast(...instants: Date[]): Promise<void> {
  const deadline = Math.max(...instants.map((instant) => instant.getTime()));
  // Polls the clock rather than sleeping a fixed time: the condition is "now is after the expiry".
  while (Date.now() <= deadline) await delay(50);
}
