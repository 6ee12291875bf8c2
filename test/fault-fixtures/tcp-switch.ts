import { connect, createServer, type Server, type Socket } from 'node:net';

/**
 * A TCP forwarder on 127.0.0.1 that can be taken down and brought back on the same port: while
 * down, connections are refused and the ones open were cut, as when the server behind it stops.
 */
export interface TcpSwitch {
  /** `http://127.0.0.1:<port>`, stable across {@link TcpSwitch.down} and {@link TcpSwitch.up}. */
  readonly url: string;
  readonly port: number;
  readonly isUp: boolean;
  /** Stops listening and cuts every open connection. */
  down(): Promise<void>;
  /** Listens again on the same port. */
  up(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Starts a switchable forwarder to `target` (`http://host:port`).
 *
 * @example
 * ```ts
 * const s3 = await startTestS3Server();
 * const outage = await startTcpSwitch(s3.endpoint);
 * await outage.down(); // clients of outage.url now get ECONNREFUSED
 * await outage.up();
 * ```
 */
export async function startTcpSwitch(target: string): Promise<TcpSwitch> {
  const { hostname, port: targetPort } = new URL(target);
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;

  function track(socket: Socket): void {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
  }

  async function listen(): Promise<void> {
    const listening = createServer((incoming) => {
      track(incoming);
      const upstream = connect(Number(targetPort), hostname);
      track(upstream);
      incoming.pipe(upstream).pipe(incoming);
      incoming.once('close', () => upstream.destroy());
      upstream.once('close', () => incoming.destroy());
    });
    await new Promise<void>((resolve, reject) => {
      listening.once('error', reject);
      listening.listen(port, '127.0.0.1', () => resolve());
    });
    const address = listening.address();
    if (address === null || typeof address !== 'object') throw new Error('no address');
    port = address.port;
    server = listening;
  }

  async function down(): Promise<void> {
    const closing = server;
    server = undefined;
    if (closing === undefined) return;
    const closed = new Promise<void>((resolve) => closing.close(() => resolve()));
    for (const socket of sockets) socket.destroy();
    await closed;
  }

  await listen();
  return {
    get url() {
      return `http://127.0.0.1:${port}`;
    },
    get port() {
      return port;
    },
    get isUp() {
      return server !== undefined;
    },
    down,
    async up() {
      if (server === undefined) await listen();
    },
    close: down,
  };
}
