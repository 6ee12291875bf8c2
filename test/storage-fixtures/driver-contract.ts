import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
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
 * the signed URLs, expiry, wrong-method use, delete, prefix delete and the tenant prefix rule.
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
