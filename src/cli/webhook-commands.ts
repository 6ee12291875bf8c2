import { type Command, InvalidArgumentError, Option } from 'commander';
import {
  createWebhookAdmin,
  type WebhookAdmin,
  type WebhookAttempt,
  type WebhookDelivery,
  type WebhookDeliveryStatus,
  type WebhookEndpoint,
} from '../billing/webhook-admin.ts';
import { createWebhookDispatcher } from '../billing/webhook-dispatcher.ts';
import { type Logger, summarizeError } from '../logger.ts';
import { isUuid, type TenantId } from '../tenant-id.ts';
import type { CliConfig } from './config.ts';
import { type PreparedDatabase, prepareDatabase } from './database.ts';
import { integerOption, parseTenantOption, type WithDatabase } from './job-commands.ts';
import { UsageError } from './usage-error.ts';

const deliveryStatuses: readonly WebhookDeliveryStatus[] = [
  'pending',
  'delivering',
  'succeeded',
  'failed',
];

interface DispatchOptions {
  readonly concurrency: number;
  readonly endpointConcurrency?: number;
  readonly pollIntervalMs: number;
  readonly requestTimeoutMs: number;
}

/**
 * Adds `tenantry webhooks add|list|rotate|disable|enable|deliveries|attempts|replay|dispatch`:
 * endpoint management and the delivery log through `createWebhookAdmin()`, and the dispatcher
 * that sends outbox events until SIGINT or SIGTERM, all on the owner connection.
 *
 * @example
 * ```ts
 * const program = new Command('tenantry');
 * addWebhookCommands(program, withDatabase, loadCliConfig(), createConsoleLogger('info'));
 * await program.parseAsync(['node', 'tenantry', 'webhooks', 'deliveries', '--status', 'failed']);
 * ```
 */
export function addWebhookCommands(
  program: Command,
  withDatabase: WithDatabase,
  config: CliConfig,
  logger: Logger,
): void {
  const withAdmin = <T>(fn: (admin: WebhookAdmin) => Promise<T>): Promise<T> =>
    withDatabase(async (database) => {
      const admin = createWebhookAdmin({ connectionString: database.adminUrl });
      try {
        return await fn(admin);
      } finally {
        await admin.close();
      }
    });
  const write = (text: string) => {
    process.stdout.write(text);
  };

  const webhooks = program
    .command('webhooks')
    .description(
      'Deliver outbox events to HTTP endpoints (Standard Webhooks): endpoints, secrets, the delivery log, replay.',
    );

  webhooks
    .command('add')
    .description('Add an endpoint; it receives events emitted from now on. Prints its secret once.')
    .argument('<url>', 'http:// or https:// URL the events are POSTed to')
    .option('--events <types>', 'comma-separated event types or families (quota.exceeded,usage.*)')
    .option('--description <text>', 'what the endpoint is for')
    .addOption(
      new Option('--max-attempts <n>', 'attempts before a delivery is marked failed')
        .argParser(integerOption('--max-attempts', 1, 100))
        .default(12),
    )
    .option('--json', 'print the endpoint and its secret as JSON')
    .action(
      async (
        url: string,
        options: { events?: string; description?: string; maxAttempts: number; json?: boolean },
      ) => {
        const eventTypes =
          options.events === undefined
            ? undefined
            : options.events
                .split(',')
                .map((type) => type.trim())
                .filter((type) => type !== '');
        const endpoint = await withAdmin((admin) =>
          admin.addEndpoint({
            url,
            maxAttempts: options.maxAttempts,
            ...(eventTypes === undefined ? {} : { eventTypes }),
            ...(options.description === undefined ? {} : { description: options.description }),
          }),
        );
        if (options.json) {
          write(
            `${JSON.stringify({ ...endpointJson(endpoint), secret: endpoint.secret }, null, 2)}\n`,
          );
          return;
        }
        write(
          `added endpoint ${endpoint.id} -> ${endpoint.url} (${formatEventTypes(endpoint)})\n` +
            `secret: ${endpoint.secret}\n` +
            'Store the secret with the receiver now: it is not shown again (rotate to get a new one).\n',
        );
      },
    );

  webhooks
    .command('list')
    .description('List the endpoints (never their secrets).')
    .option('--json', 'print the endpoints as JSON')
    .action(async (options: { json?: boolean }) => {
      const endpoints = await withAdmin((admin) => admin.listEndpoints());
      if (options.json) {
        write(`${JSON.stringify(endpoints.map(endpointJson), null, 2)}\n`);
        return;
      }
      write(
        endpoints.length === 0
          ? 'no endpoints\n'
          : formatTable(
              ['ID', 'ENABLED', 'EVENTS', 'MAX ATTEMPTS', 'URL'],
              endpoints.map((endpoint) => [
                endpoint.id,
                endpoint.enabled ? 'yes' : 'no',
                oneLine(formatEventTypes(endpoint), 40),
                String(endpoint.maxAttempts),
                endpoint.url,
              ]),
            ),
      );
    });

  webhooks
    .command('rotate')
    .description('Give an endpoint a new secret; the old one keeps signing alongside for a while.')
    .argument('<endpoint-id>', 'the endpoint (see `webhooks list`)', parseEndpointId)
    .addOption(
      new Option('--previous-valid-hours <n>', 'hours the old secret still signs (0: stops now)')
        .argParser(integerOption('--previous-valid-hours', 0, 720))
        .default(24),
    )
    .action(async (endpointId: string, options: { previousValidHours: number }) => {
      const rotated = await withAdmin((admin) =>
        admin.rotateSecret(endpointId, {
          previousValidForMs: options.previousValidHours * 60 * 60 * 1000,
        }),
      );
      write(
        `new secret: ${rotated.secret}\n${
          rotated.previousSecretExpiresAt === undefined
            ? 'The previous secret no longer signs.\n'
            : `The previous secret also signs until ${rotated.previousSecretExpiresAt.toISOString()}.\n`
        }`,
      );
    });

  for (const [name, enabled] of [
    ['disable', false],
    ['enable', true],
  ] as const) {
    webhooks
      .command(name)
      .description(
        enabled
          ? 'Resume deliveries to an endpoint, its pending ones included.'
          : 'Stop deliveries to an endpoint; new events skip it, pending ones wait.',
      )
      .argument('<endpoint-id>', 'the endpoint (see `webhooks list`)', parseEndpointId)
      .action(async (endpointId: string) => {
        const endpoint = await withAdmin((admin) =>
          enabled ? admin.enableEndpoint(endpointId) : admin.disableEndpoint(endpointId),
        );
        write(`${enabled ? 'enabled' : 'disabled'} endpoint ${endpoint.id} (${endpoint.url})\n`);
      });
  }

  webhooks
    .command('deliveries')
    .description('List deliveries, newest first.')
    .addOption(
      new Option('--status <status>', 'only deliveries in this state').choices(deliveryStatuses),
    )
    .addOption(new Option('--endpoint <id>', 'only this endpoint').argParser(parseEndpointId))
    .addOption(
      new Option('--tenant <id>', "only this tenant's events").argParser(parseTenantOption),
    )
    .addOption(new Option('--event <id>', 'only this event').argParser(parseEventId))
    .addOption(
      new Option('--limit <n>', 'at most this many deliveries (1-1000)')
        .argParser(integerOption('--limit', 1, 1000))
        .default(100),
    )
    .option('--json', 'print the deliveries as JSON')
    .action(
      async (options: {
        status?: WebhookDeliveryStatus;
        endpoint?: string;
        tenant?: TenantId;
        event?: string;
        limit: number;
        json?: boolean;
      }) => {
        const deliveries = await withAdmin((admin) =>
          admin.listDeliveries({
            limit: options.limit,
            ...(options.status === undefined ? {} : { status: options.status }),
            ...(options.endpoint === undefined ? {} : { endpointId: options.endpoint }),
            ...(options.tenant === undefined ? {} : { tenantId: options.tenant }),
            ...(options.event === undefined ? {} : { eventId: options.event }),
          }),
        );
        write(
          options.json
            ? `${JSON.stringify(deliveries.map(deliveryJson), null, 2)}\n`
            : formatDeliveries(deliveries),
        );
      },
    );

  webhooks
    .command('attempts')
    .description("Show a delivery's attempts, oldest first (the delivery log).")
    .argument('<event-id>', 'the event (webhook-id)', parseEventId)
    .argument('<endpoint-id>', 'the endpoint', parseEndpointId)
    .option('--json', 'print the attempts as JSON')
    .action(async (eventId: string, endpointId: string, options: { json?: boolean }) => {
      const attempts = await withAdmin((admin) => admin.listAttempts(eventId, endpointId));
      write(
        options.json
          ? `${JSON.stringify(attempts.map(attemptJson), null, 2)}\n`
          : formatAttempts(attempts),
      );
    });

  webhooks
    .command('replay')
    .description('Send deliveries again from attempt 1, under the same webhook-id.')
    .option('--event <id...>', 'deliveries of these events', collectEventIds)
    .option('--failed', 'only deliveries that were given up')
    .addOption(new Option('--endpoint <id>', 'only this endpoint').argParser(parseEndpointId))
    .addOption(
      new Option('--since <time>', 'only events created at or after this ISO 8601 time').argParser(
        parseSince,
      ),
    )
    .action(
      async (options: { event?: string[]; failed?: boolean; endpoint?: string; since?: Date }) => {
        if (options.event === undefined && options.endpoint === undefined && !options.failed) {
          throw new UsageError(
            'Say what to replay: --event <id...>, --endpoint <id> (optionally with --since), or --failed.',
          );
        }
        const replayed = await withAdmin((admin) =>
          admin.replay({
            ...(options.event === undefined ? {} : { eventIds: options.event }),
            ...(options.endpoint === undefined ? {} : { endpointId: options.endpoint }),
            ...(options.since === undefined ? {} : { since: options.since }),
            ...(options.failed ? { failed: true } : {}),
          }),
        );
        write(`replayed ${replayed.length} deliveries\n`);
      },
    );

  webhooks
    .command('dispatch')
    .description('Deliver outbox events to the endpoints until SIGINT or SIGTERM.')
    .addOption(
      new Option('--concurrency <n>', 'requests in flight at once')
        .argParser(integerOption('--concurrency', 1, 1000))
        .default(16),
    )
    .addOption(
      new Option(
        '--endpoint-concurrency <n>',
        'requests in flight to one endpoint at once (default: the smaller of 4 and --concurrency)',
      ).argParser(integerOption('--endpoint-concurrency', 1, 1000)),
    )
    .addOption(
      new Option('--poll-interval-ms <n>', 'how often due deliveries are looked for')
        .argParser(integerOption('--poll-interval-ms', 10, 3_600_000))
        .default(1000),
    )
    .addOption(
      new Option('--request-timeout-ms <n>', 'how long one request may take')
        .argParser(integerOption('--request-timeout-ms', 100, 3_600_000))
        .default(15_000),
    )
    .action((options: DispatchOptions) => runDispatcher(options, config, logger));
}

async function runDispatcher(
  options: DispatchOptions,
  config: CliConfig,
  logger: Logger,
): Promise<void> {
  if (
    options.endpointConcurrency !== undefined &&
    options.endpointConcurrency > options.concurrency
  ) {
    throw new UsageError('--endpoint-concurrency cannot exceed --concurrency.');
  }
  let database: PreparedDatabase | undefined;
  let stopRequested: (() => void) | undefined;
  const stopSignal = new Promise<void>((resolveSignal) => {
    stopRequested = resolveSignal;
  });
  let signalled = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) {
      logger.warn({ signal }, 'second signal: exiting without waiting for requests in flight');
      void (database?.stop() ?? Promise.resolve()).finally(() => process.exit(130));
      return;
    }
    signalled = true;
    logger.info({ signal }, 'stopping the webhook dispatcher');
    stopRequested?.();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    database = await prepareDatabase({ ...config, stopOnSignal: false }, logger);
    if (signalled) return;
    const dispatcher = createWebhookDispatcher({
      connectionString: database.adminUrl,
      concurrency: options.concurrency,
      endpointConcurrency: options.endpointConcurrency ?? Math.min(4, options.concurrency),
      pollIntervalMs: options.pollIntervalMs,
      requestTimeoutMs: options.requestTimeoutMs,
      logger,
    });
    try {
      await dispatcher.start();
      logger.info({ concurrency: options.concurrency }, 'webhook dispatcher running');
      await stopSignal;
    } finally {
      await dispatcher.stop();
    }
  } finally {
    try {
      await database?.stop();
    } catch (error) {
      logger.error({ resource: 'database', error: summarizeError(error) }, 'closing failed');
    }
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

function parseEndpointId(value: string): string {
  if (!isUuid(value)) {
    throw new InvalidArgumentError(
      'An endpoint id is a UUID, as `tenantry webhooks list` prints it.',
    );
  }
  return value.toLowerCase();
}

function parseEventId(value: string): string {
  if (!isUuid(value)) {
    throw new InvalidArgumentError(
      'An event id is a UUID: the webhook-id header, as `tenantry webhooks deliveries` prints it.',
    );
  }
  return value.toLowerCase();
}

function collectEventIds(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), parseEventId(value)];
}

function parseSince(value: string): Date {
  const since = /^\d{4}-\d{2}-\d{2}/.test(value) ? new Date(value) : new Date(Number.NaN);
  if (!Number.isFinite(since.getTime())) {
    throw new InvalidArgumentError('--since takes an ISO 8601 time, e.g. 2025-01-31T12:00:00Z.');
  }
  return since;
}

function formatEventTypes(endpoint: WebhookEndpoint): string {
  return endpoint.eventTypes === undefined ? 'all events' : endpoint.eventTypes.join(',');
}

function endpointJson(endpoint: WebhookEndpoint) {
  return {
    id: endpoint.id,
    url: endpoint.url,
    description: endpoint.description,
    eventTypes: endpoint.eventTypes ?? null,
    enabled: endpoint.enabled,
    maxAttempts: endpoint.maxAttempts,
    previousSecretExpiresAt: endpoint.previousSecretExpiresAt?.toISOString() ?? null,
    createdAt: endpoint.createdAt.toISOString(),
  };
}

function deliveryJson(delivery: WebhookDelivery) {
  return {
    eventId: delivery.eventId,
    endpointId: delivery.endpointId,
    eventType: delivery.eventType,
    tenantId: delivery.tenantId ?? null,
    status: delivery.status,
    attempts: delivery.attempts,
    maxAttempts: delivery.maxAttempts,
    nextAttemptAt: delivery.nextAttemptAt?.toISOString() ?? null,
    lastStatusCode: delivery.lastStatusCode ?? null,
    lastError: delivery.lastError ?? null,
    deliveredAt: delivery.deliveredAt?.toISOString() ?? null,
    createdAt: delivery.createdAt.toISOString(),
  };
}

function attemptJson(attempt: WebhookAttempt) {
  return {
    attempt: attempt.attempt,
    startedAt: attempt.startedAt.toISOString(),
    durationMs: attempt.durationMs,
    statusCode: attempt.statusCode ?? null,
    error: attempt.error ?? null,
    responseExcerpt: attempt.responseExcerpt ?? null,
  };
}

function formatDeliveries(deliveries: readonly WebhookDelivery[]): string {
  if (deliveries.length === 0) return 'no deliveries\n';
  return formatTable(
    ['EVENT', 'ENDPOINT', 'TYPE', 'TENANT', 'STATUS', 'ATTEMPTS', 'NEXT', 'LAST ERROR'],
    deliveries.map((delivery) => [
      delivery.eventId,
      delivery.endpointId,
      delivery.eventType,
      delivery.tenantId ?? '-',
      delivery.status,
      `${delivery.attempts}/${delivery.maxAttempts}`,
      delivery.nextAttemptAt === undefined ? '-' : isoSeconds(delivery.nextAttemptAt),
      oneLine(delivery.lastError ?? '-', 60),
    ]),
  );
}

function formatAttempts(attempts: readonly WebhookAttempt[]): string {
  if (attempts.length === 0) return 'no attempts\n';
  return formatTable(
    ['ATTEMPT', 'STARTED', 'MS', 'STATUS', 'ERROR', 'RESPONSE'],
    attempts.map((attempt) => [
      String(attempt.attempt),
      isoSeconds(attempt.startedAt),
      String(attempt.durationMs),
      attempt.statusCode === undefined ? '-' : String(attempt.statusCode),
      oneLine(attempt.error ?? '-', 50),
      oneLine(attempt.responseExcerpt ?? '-', 60),
    ]),
  );
}

function isoSeconds(date: Date): string {
  return `${date.toISOString().slice(0, 19)}Z`;
}

function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((title, column) =>
    Math.max(title.length, ...rows.map((row) => row[column]?.length ?? 0)),
  );
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, column) =>
        column === cells.length - 1 ? cell : cell.padEnd(widths[column] ?? 0),
      )
      .join('  ');
  return `${[header, ...rows].map(line).join('\n')}\n`;
}

function oneLine(text: string, max: number): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length <= max ? flat : `${flat.slice(0, max - 1)}…`;
}
