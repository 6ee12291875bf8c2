import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  request,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSigV4Verifier } from './sigv4-verifier.ts';

interface S3rverInstance {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
  httpServer?: Server;
}

type S3rverConstructor = new (options: {
  address: string;
  port: number;
  silent: boolean;
  directory: string;
  vhostBuckets: boolean;
  configureBuckets: { name: string }[];
}) => S3rverInstance;

// s3rver is CommonJS without type declarations.
const S3rver = createRequire(import.meta.url)('s3rver') as S3rverConstructor;

const region = 'us-east-1';
const checksumHeader = 'x-amz-checksum-sha256';
/** Where the proxy keeps a verified checksum in s3rver, which has no checksum support. */
const storedChecksumHeader = 'x-amz-meta-tenantry-proxy-checksum-sha256';

/** A running s3rver: an S3-compatible server on loopback, backed by a temporary directory. */
export interface TestS3Server {
  /**
   * `http://127.0.0.1:<port>` of a loopback proxy in front of s3rver that does what AWS S3 does
   * and s3rver does not: it refuses presigned requests whose SigV4 signature does not verify, and
   * a `PUT` whose `x-amz-checksum-sha256` is not the SHA-256 of its body (400 `BadDigest`),
   * keeping a verified checksum with the object and returning it on `HEAD`/`GET` sent with
   * `x-amz-checksum-mode: ENABLED`. Other requests pass through.
   */
  readonly endpoint: string;
  /** s3rver itself, which checks expiry but not SigV4 signatures. */
  readonly unverifiedEndpoint: string;
  readonly bucket: string;
  readonly region: string;
  /** s3rver's built-in account. */
  readonly credentials: { readonly accessKeyId: string; readonly secretAccessKey: string };
  /** Closes the servers and removes the data directory. */
  stop(): Promise<void>;
}

/** Sends `incoming` on to s3rver, checking and keeping an `x-amz-checksum-sha256` as S3 does. */
async function forward(
  incoming: IncomingMessage,
  outgoing: ServerResponse,
  port: number,
): Promise<void> {
  const headers: IncomingHttpHeaders = { ...incoming.headers };
  delete headers[storedChecksumHeader];
  const declared = incoming.headers[checksumHeader];
  let body: Buffer | undefined;
  if (incoming.method === 'PUT' && declared !== undefined) {
    const chunks: Buffer[] = [];
    for await (const chunk of incoming) chunks.push(chunk as Buffer);
    body = Buffer.concat(chunks);
    const actual = createHash('sha256').update(body).digest('base64');
    if (declared !== actual) {
      outgoing.writeHead(400, { 'content-type': 'application/xml' });
      outgoing.end(
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>BadDigest</Code><Message>The sha256 you specified did not match the calculated checksum.</Message></Error>',
      );
      return;
    }
    headers[storedChecksumHeader] = actual;
  }
  const checksumMode = String(incoming.headers['x-amz-checksum-mode'] ?? '').toUpperCase();
  const upstream = request(
    { host: '127.0.0.1', port, method: incoming.method, path: incoming.url, headers },
    (response) => {
      const responseHeaders: IncomingHttpHeaders = { ...response.headers };
      const stored = responseHeaders[storedChecksumHeader];
      delete responseHeaders[storedChecksumHeader];
      if (stored !== undefined && checksumMode === 'ENABLED') {
        responseHeaders[checksumHeader] = stored;
        responseHeaders['x-amz-checksum-type'] = 'FULL_OBJECT';
      }
      outgoing.writeHead(response.statusCode ?? 502, responseHeaders);
      response.pipe(outgoing);
    },
  );
  upstream.on('error', (error) => outgoing.destroy(error));
  if (body === undefined) incoming.pipe(upstream);
  else upstream.end(body);
}

/**
 * Starts s3rver on 127.0.0.1 (a free port), silent, with one bucket created, behind a
 * signature-verifying proxy.
 *
 * @example
 * ```ts
 * const s3 = await startTestS3Server();
 * const driver = createS3StorageDriver({ bucket: s3.bucket, endpoint: s3.endpoint, credentials: s3.credentials });
 * await s3.stop();
 * ```
 */
export async function startTestS3Server(bucket = 'tenantry-test'): Promise<TestS3Server> {
  const credentials = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };
  const directory = await mkdtemp(join(tmpdir(), 'tenantry-s3rver-'));
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    directory,
    vhostBuckets: false,
    configureBuckets: [{ name: bucket }],
  });
  let s3rverAddress: AddressInfo;
  try {
    s3rverAddress = await server.run();
  } catch (error) {
    await rm(directory, { recursive: true, force: true });
    throw error;
  }
  const verifier = createSigV4Verifier({ credentials, region });
  const proxy = createServer((incoming, outgoing) => {
    const url = `http://${incoming.headers.host}${incoming.url}`;
    const presigned = URL.canParse(url) && new URL(url).searchParams.has('X-Amz-Signature');
    const verified = presigned
      ? verifier.matches({ url, method: incoming.method ?? '', headers: incoming.headers })
      : Promise.resolve(true);
    verified.then(
      (ok) => {
        if (!ok) {
          incoming.resume();
          outgoing.writeHead(403, { 'content-type': 'application/xml' });
          outgoing.end(
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch</Code></Error>',
          );
          return;
        }
        forward(incoming, outgoing, s3rverAddress.port).catch((error: unknown) =>
          outgoing.destroy(error instanceof Error ? error : undefined),
        );
      },
      (error: unknown) => outgoing.destroy(error instanceof Error ? error : undefined),
    );
  });
  let proxyAddress: AddressInfo;
  try {
    proxyAddress = await new Promise<AddressInfo>((resolve, reject) => {
      proxy.once('error', reject);
      proxy.listen(0, '127.0.0.1', () => resolve(proxy.address() as AddressInfo));
    });
  } catch (error) {
    await server.close();
    await rm(directory, { recursive: true, force: true });
    throw error;
  }

  let stopped = false;
  return Object.freeze({
    endpoint: `http://127.0.0.1:${proxyAddress.port}`,
    unverifiedEndpoint: `http://127.0.0.1:${s3rverAddress.port}`,
    bucket,
    region,
    credentials: Object.freeze(credentials),
    async stop(): Promise<void> {
      if (stopped) return;
      stopped = true;
      try {
        proxy.closeAllConnections();
        await new Promise<void>((resolve) => proxy.close(() => resolve()));
        server.httpServer?.closeAllConnections();
        await server.close();
      } finally {
        await rm(directory, { recursive: true, force: true });
      }
    },
  });
}
