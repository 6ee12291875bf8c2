import pg from 'pg';
import { type Logger, summarizeError } from '../logger.ts';

/** Options of {@link createNotificationListener}. */
export interface NotificationListenerOptions {
  readonly connectionString: string;
  /** The channel, already a valid identifier (`tenantry_tenants`). */
  readonly channel: string;
  /** Named in log lines: "<name> listener failed; reconnecting". */
  readonly name: string;
  readonly logger: Logger;
  readonly onNotification: (message: pg.Notification) => void;
  /**
   * Called each time the listener has (re)connected: changes made while nobody listened are
   * unknown, so a cache starts over.
   */
  readonly onConnected: () => void;
  /** Called when the connection dropped (a reconnection is scheduled). @defaultValue none */
  readonly onDisconnected?: () => void;
  /** Longest wait between reconnection attempts (doubling from 250 ms). @defaultValue 5000 */
  readonly maxReconnectDelayMs?: number;
}

/** A LISTEN connection that reconnects by itself. */
export interface NotificationListener {
  /** Whether it is connected and listening now (caches may keep entries only then). */
  readonly isListening: boolean;
  /** Connects and listens; rejects when the first attempt fails (no retry is scheduled then). */
  start(): Promise<void>;
  /** Stops listening for good. */
  close(): Promise<void>;
}

/**
 * The LISTEN connection the tenant directory and the caches of limits and placements share the
 * shape of: one dedicated client, `onConnected()` each time it (re)connects (the stream may have
 * missed changes), `onDisconnected()` when it drops, and reconnection with backoff (250 ms
 * doubling to `maxReconnectDelayMs`) after a drop.
 *
 * @example
 * ```ts
 * const listener = createNotificationListener({
 *   connectionString, channel: 'tenantry_plans', name: 'plan limit', logger,
 *   onNotification: (message) => cache.delete(message.payload ?? ''),
 *   onConnected: () => cache.clear(),
 * });
 * await listener.start();
 * ```
 */
export function createNotificationListener(
  options: NotificationListenerOptions,
): NotificationListener {
  const { logger, name } = options;
  const maxReconnectDelayMs = options.maxReconnectDelayMs ?? 5_000;
  let client: pg.Client | undefined;
  let listening = false;
  let closed = false;
  let retryTimer: NodeJS.Timeout | undefined;

  const disconnected = (which: pg.Client) => {
    if (client !== which) return;
    client = undefined;
    listening = false;
    options.onDisconnected?.();
    scheduleListen(250);
  };

  const listen = async (): Promise<void> => {
    const next = new pg.Client({ connectionString: options.connectionString });
    next.on('notification', options.onNotification);
    next.on('error', (error) => {
      logger.warn({ err: summarizeError(error) }, `${name} listener failed; reconnecting`);
      disconnected(next);
    });
    next.on('end', () => disconnected(next));
    try {
      await next.connect();
      await next.query(`listen ${options.channel}`);
    } catch (error) {
      await next.end().catch(() => undefined);
      throw error;
    }
    if (closed) {
      await next.end();
      return;
    }
    client = next;
    options.onConnected();
    listening = true;
  };

  const scheduleListen = (delayMs: number) => {
    if (closed || retryTimer !== undefined) return;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      listen().catch((error: unknown) => {
        logger.warn({ err: summarizeError(error) }, `${name} could not listen; retrying`);
        scheduleListen(Math.min(delayMs * 2, maxReconnectDelayMs));
      });
    }, delayMs);
    retryTimer.unref();
  };

  return Object.freeze({
    get isListening() {
      return listening;
    },
    start: listen,
    async close() {
      closed = true;
      listening = false;
      if (retryTimer !== undefined) clearTimeout(retryTimer);
      const current = client;
      client = undefined;
      await current?.end().catch(() => undefined);
    },
  });
}
