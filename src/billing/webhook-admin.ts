import pg from 'pg';
import {
  defaultTenantrySchema,
  parseIdentifier,
  quoteIdentifier,
  type RoleNames,
  resolveRoleNames,
} from '../config.ts';
import { TenantryError } from '../errors.ts';
import { isUuid, parseTenantId, type TenantId } from '../tenant-id.ts';
import {
  generateWebhookSecret,
  webhookInvalidCode,
  webhookNotFoundCode,
} from './webhook-signing.ts';

/** Where a delivery is: waiting for its next attempt, being sent, done, or given up. */
export type WebhookDeliveryStatus = 'pending' | 'delivering' | 'succeeded' | 'failed';

/** An endpoint as operators see it; its secrets are only ever returned when made. */
export interface WebhookEndpoint {
  readonly id: string;
  readonly url: string;
  readonly description: string;
  /** `undefined`: every event type. */
  readonly eventTypes: readonly string[] | undefined;
  readonly enabled: boolean;
  readonly maxAttempts: number;
  /** Until when the previous secret still signs, during a rotation. */
  readonly previousSecretExpiresAt: Date | undefined;
  readonly createdAt: Date;
}

/** A new endpoint and its signing secret, shown this once. */
export interface AddedWebhookEndpoint extends WebhookEndpoint {
  readonly secret: string;
}

/** One event's delivery to one endpoint. */
export interface WebhookDelivery {
  /** The outbox event id, sent as `webhook-id`. */
  readonly eventId: string;
  readonly endpointId: string;
  readonly eventType: string;
  readonly tenantId: TenantId | undefined;
  readonly status: WebhookDeliveryStatus;
  readonly attempts: number;
  readonly maxAttempts: number;
  /** When the next attempt is due (pending) or the current one's lease ends (delivering). */
  readonly nextAttemptAt: Date | undefined;
  readonly lastStatusCode: number | undefined;
  readonly lastError: string | undefined;
  readonly deliveredAt: Date | undefined;
  readonly createdAt: Date;
}

/** One HTTP attempt of a delivery, from the delivery log. */
export interface WebhookAttempt {
  readonly attempt: number;
  readonly startedAt: Date;
  readonly durationMs: number;
  /** `undefined` when no response came (refused, timed out, aborted). */
  readonly statusCode: number | undefined;
  readonly error: string | undefined;
  /** The first kilobyte of the response body. */
  readonly responseExcerpt: string | undefined;
}

/** Options of {@link WebhookAdmin.addEndpoint}. */
export interface AddWebhookEndpointOptions {
  /** An `http:` or `https:` URL. */
  readonly url: string;
  /**
   * Event types to receive: exact types (`quota.exceeded`) or family wildcards (`usage.*`).
   * @defaultValue every type
   */
  readonly eventTypes?: readonly string[];
  /** @defaultValue '' */
  readonly description?: string;
  /** Attempts before a delivery is marked failed (1-100). @defaultValue 12 */
  readonly maxAttempts?: number;
}

/** Filters of {@link WebhookAdmin.listDeliveries}. */
export interface ListWebhookDeliveriesOptions {
  readonly endpointId?: string;
  readonly tenantId?: string;
  readonly eventId?: string;
  readonly status?: WebhookDeliveryStatus;
  /** @defaultValue 100 (at most 1000) */
  readonly limit?: number;
}

/**
 * Which deliveries {@link WebhookAdmin.replay} sends again. At least one of `eventIds`,
 * `endpointId` or `failed` is required; given together they narrow each other.
 */
export interface ReplayWebhooksOptions {
  readonly eventIds?: readonly string[];
  readonly endpointId?: string;
  /** Only deliveries of events created at or after this instant. */
  readonly since?: Date;
  /** Only deliveries that were given up (`failed`). */
  readonly failed?: boolean;
}

/** A delivery put back in the queue by {@link WebhookAdmin.replay}. */
export interface ReplayedWebhookDelivery {
  readonly eventId: string;
  readonly endpointId: string;
}

/** Operator access to webhook endpoints, deliveries and the delivery log (owner role). */
export interface WebhookAdmin {
  /** Adds an endpoint; it receives events emitted from now on. Returns its secret, once. */
  addEndpoint(options: AddWebhookEndpointOptions): Promise<AddedWebhookEndpoint>;
  listEndpoints(): Promise<WebhookEndpoint[]>;
  /** Stops deliveries to the endpoint and its subscription to new events; pending ones wait. */
  disableEndpoint(endpointId: string): Promise<WebhookEndpoint>;
  /** Resumes deliveries, pending ones included, and subscribes the endpoint again. */
  enableEndpoint(endpointId: string): Promise<WebhookEndpoint>;
  /**
   * Replaces the signing secret; the previous one keeps signing alongside it (two `v1`
   * signatures) for `previousValidForMs`. Returns the new secret, once.
   */
  rotateSecret(
    endpointId: string,
    options?: { readonly previousValidForMs?: number },
  ): Promise<{ readonly secret: string; readonly previousSecretExpiresAt: Date | undefined }>;
  /** Deliveries, newest first. */
  listDeliveries(options?: ListWebhookDeliveriesOptions): Promise<WebhookDelivery[]>;
  /** The attempts of one delivery, oldest first. */
  listAttempts(eventId: string, endpointId: string): Promise<WebhookAttempt[]>;
  /**
   * Queues deliveries again from attempt 1, with the same `webhook-id`. Deliveries being sent
   * right now are left alone. With `eventIds`, an id without a matching delivery is refused.
   */
  replay(options: ReplayWebhooksOptions): Promise<ReplayedWebhookDelivery[]>;
  close(): Promise<void>;
}

/** Options of {@link createWebhookAdmin}. */
export interface WebhookAdminOptions {
  /** Owner or superuser connection (a superuser URL acts as the owner). */
  readonly connectionString: string;
  /** Schema of Tenantry's objects. @defaultValue 'tenantry' */
  readonly schema?: string;
  readonly roles?: Partial<RoleNames>;
}

const statuses: readonly WebhookDeliveryStatus[] = ['pending', 'delivering', 'succeeded', 'failed'];
const eventTypePattern = /^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.([a-z][a-z0-9_]*|\*)$/;
const defaultPreviousValidForMs = 24 * 60 * 60 * 1000;
const maximumPreviousValidForMs = 30 * 24 * 60 * 60 * 1000;

/**
 * Opens operator access to webhooks. It connects as the owner role, never as the app role:
 * endpoints and their secrets are platform data no tenant reaches.
 *
 * @example
 * ```ts
 * import { createWebhookAdmin } from 'tenantry/billing';
 * const admin = createWebhookAdmin({ connectionString: ownerUrl });
 * const { id, secret } = await admin.addEndpoint({ url: 'https://billing.example.com/hooks', eventTypes: ['usage.*'] });
 * await admin.replay({ failed: true, endpointId: id });
 * await admin.close();
 * ```
 */
export function createWebhookAdmin(options: WebhookAdminOptions): WebhookAdmin {
  const schema = quoteIdentifier(
    parseIdentifier(options.schema ?? defaultTenantrySchema, 'schema'),
  );
  const pool = createOwnerPool(options.connectionString, resolveRoleNames(options.roles).owner, 2);
  const endpoints = `${schema}.webhook_endpoints`;
  const deliveries = `${schema}.webhook_deliveries`;
  const endpointColumns = `e.id, e.url, e.description, e.event_types, e.enabled, e.max_attempts,
    case when e.previous_expires_at > now() then e.previous_expires_at end as previous_expires_at,
    e.created_at`;

  const setEnabled = async (endpointId: string, enabled: boolean) => {
    const id = parseWebhookUuid(endpointId, 'endpoint id');
    const result = await pool.query<EndpointRow>(
      `update ${endpoints} e set enabled = $2, updated_at = now() where e.id = $1
       returning ${endpointColumns}`,
      [id, enabled],
    );
    return toEndpoint(requireRow(result.rows[0], id));
  };

  return Object.freeze({
    async addEndpoint(input: AddWebhookEndpointOptions) {
      const url = parseEndpointUrl(input?.url);
      const eventTypes = parseEventTypes(input.eventTypes);
      const description = input.description ?? '';
      if (typeof description !== 'string' || description.length > 500) {
        throw new TenantryError(
          webhookInvalidCode,
          'description is text of at most 500 characters.',
        );
      }
      const maxAttempts = input.maxAttempts ?? 12;
      if (!Number.isInteger(maxAttempts) || maxAttempts < 1 || maxAttempts > 100) {
        throw new TenantryError(webhookInvalidCode, 'maxAttempts is an integer from 1 to 100.');
      }
      const secret = generateWebhookSecret();
      const result = await pool.query<EndpointRow>(
        `insert into ${endpoints} as e (url, description, event_types, max_attempts, secret)
         values ($1, $2, $3, $4, $5)
         returning ${endpointColumns}`,
        [url, description, eventTypes ?? null, maxAttempts, secret],
      );
      return Object.freeze({ ...toEndpoint(requireRow(result.rows[0], 'new')), secret });
    },

    async listEndpoints() {
      const result = await pool.query<EndpointRow>(
        `select ${endpointColumns} from ${endpoints} e order by e.created_at, e.id`,
      );
      return result.rows.map(toEndpoint);
    },

    disableEndpoint: (endpointId: string) => setEnabled(endpointId, false),
    enableEndpoint: (endpointId: string) => setEnabled(endpointId, true),

    async rotateSecret(endpointId: string, rotation: { previousValidForMs?: number } = {}) {
      const id = parseWebhookUuid(endpointId, 'endpoint id');
      const validForMs = rotation.previousValidForMs ?? defaultPreviousValidForMs;
      if (
        !Number.isInteger(validForMs) ||
        validForMs < 0 ||
        validForMs > maximumPreviousValidForMs
      ) {
        throw new TenantryError(
          webhookInvalidCode,
          `previousValidForMs is an integer from 0 (the old secret stops at once) to ${maximumPreviousValidForMs} (30 days).`,
        );
      }
      const secret = generateWebhookSecret();
      const result = await pool.query<{ previous_expires_at: Date | null }>(
        `update ${endpoints} e
            set previous_secret = case when $3::bigint > 0 then e.secret end,
                previous_expires_at = case when $3::bigint > 0
                  then now() + make_interval(secs => ($3::bigint / 1000.0)::double precision) end,
                secret = $2, updated_at = now()
          where e.id = $1
          returning e.previous_expires_at`,
        [id, secret, validForMs],
      );
      const row = requireRow(result.rows[0], id);
      return Object.freeze({
        secret,
        previousSecretExpiresAt: row.previous_expires_at ?? undefined,
      });
    },

    async listDeliveries(filter: ListWebhookDeliveriesOptions = {}) {
      const limit = filter.limit ?? 100;
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) {
        throw new TenantryError(webhookInvalidCode, 'limit is an integer from 1 to 1000.');
      }
      if (filter.status !== undefined && !statuses.includes(filter.status)) {
        throw new TenantryError(
          webhookInvalidCode,
          `status is one of ${statuses.join(', ')}, got ${JSON.stringify(filter.status)}.`,
        );
      }
      const result = await pool.query<DeliveryRow>(
        `select d.event_id, d.endpoint_id, o.type, o.tenant_id, d.status, d.attempts,
                e.max_attempts, d.next_attempt_at, d.last_status_code, d.last_error,
                d.delivered_at, d.created_at
           from ${deliveries} d
           join ${endpoints} e on e.id = d.endpoint_id
           join ${schema}.outbox_events o on o.id = d.event_id
          where ($1::uuid is null or d.endpoint_id = $1)
            and ($2::uuid is null or o.tenant_id = $2)
            and ($3::uuid is null or d.event_id = $3)
            and ($4::text is null or d.status = $4)
          order by d.created_at desc, d.event_id, d.endpoint_id
          limit $5`,
        [
          filter.endpointId === undefined
            ? null
            : parseWebhookUuid(filter.endpointId, 'endpointId'),
          filter.tenantId === undefined ? null : parseTenantId(filter.tenantId),
          filter.eventId === undefined ? null : parseWebhookUuid(filter.eventId, 'eventId'),
          filter.status ?? null,
          limit,
        ],
      );
      return result.rows.map(toDelivery);
    },

    async listAttempts(eventId: string, endpointId: string) {
      const result = await pool.query<{
        attempt: number;
        started_at: Date;
        duration_ms: number;
        status_code: number | null;
        error: string | null;
        response_excerpt: string | null;
      }>(
        `select a.attempt, a.started_at, a.duration_ms, a.status_code, a.error, a.response_excerpt
           from ${schema}.webhook_attempts a
          where a.event_id = $1 and a.endpoint_id = $2
          order by a.id`,
        [parseWebhookUuid(eventId, 'event id'), parseWebhookUuid(endpointId, 'endpoint id')],
      );
      return result.rows.map(
        (row): WebhookAttempt =>
          Object.freeze({
            attempt: row.attempt,
            startedAt: row.started_at,
            durationMs: row.duration_ms,
            statusCode: row.status_code ?? undefined,
            error: row.error ?? undefined,
            responseExcerpt: row.response_excerpt ?? undefined,
          }),
      );
    },

    async replay(selection: ReplayWebhooksOptions) {
      const eventIds =
        selection?.eventIds === undefined ? undefined : parseEventIds(selection.eventIds);
      const endpointId =
        selection.endpointId === undefined
          ? null
          : parseWebhookUuid(selection.endpointId, 'endpointId');
      if (
        selection.since !== undefined &&
        !(selection.since instanceof Date && Number.isFinite(selection.since.getTime()))
      ) {
        throw new TenantryError(webhookInvalidCode, 'since is a valid Date.');
      }
      if (selection.failed !== undefined && typeof selection.failed !== 'boolean') {
        throw new TenantryError(webhookInvalidCode, 'failed is a boolean.');
      }
      if (eventIds === undefined && endpointId === null && selection.failed !== true) {
        throw new TenantryError(
          webhookInvalidCode,
          'Say what to replay: eventIds, an endpointId (optionally with since), or failed: true.',
        );
      }
      const result = await pool.query<{ event_id: string; endpoint_id: string }>(
        `update ${deliveries} d
            set status = 'pending', attempts = 0, next_attempt_at = now(), lease_token = null,
                updated_at = now()
           from ${schema}.outbox_events o
          where o.id = d.event_id
            and d.status <> 'delivering'
            and ($1::uuid[] is null or d.event_id = any ($1))
            and ($2::uuid is null or d.endpoint_id = $2)
            and ($3::timestamptz is null or o.created_at >= $3)
            and (not $4::boolean or d.status = 'failed')
          returning d.event_id, d.endpoint_id`,
        [eventIds ?? null, endpointId, selection.since ?? null, selection.failed === true],
      );
      if (eventIds !== undefined) {
        const replayed = new Set(result.rows.map((row) => row.event_id));
        const missing = eventIds.filter((id) => !replayed.has(id));
        if (missing.length > 0) {
          throw new TenantryError(
            webhookNotFoundCode,
            `No replayable delivery for event ${missing.join(', ')} (unknown, not subscribed, or being sent right now); the others were replayed.`,
            { details: { missing, replayed: result.rows.length } },
          );
        }
      }
      return result.rows.map((row) =>
        Object.freeze({ eventId: row.event_id, endpointId: row.endpoint_id }),
      );
    },

    close: () => pool.end(),
  });
}

/**
 * A pool whose connections act as the owner role (a superuser URL is narrowed to it), for the
 * webhook tables no other role may touch.
 */
export function createOwnerPool(connectionString: string, ownerRole: string, max: number): pg.Pool {
  const pool = new pg.Pool({
    connectionString,
    max,
    options: `-c role=${parseIdentifier(ownerRole, 'roles.owner')}`,
  });
  // A dropped idle connection must not crash the process; the pool replaces it.
  pool.on('error', () => {});
  pool.on('connect', (client) => {
    client.on('error', () => {});
  });
  return pool;
}

/** Validates a UUID argument of the webhook API and returns it lowercase. */
export function parseWebhookUuid(value: unknown, what: string): string {
  if (!isUuid(value)) {
    throw new TenantryError(
      webhookInvalidCode,
      `${what} is a UUID in its 36-character form, got ${JSON.stringify(String(value).slice(0, 60))}.`,
    );
  }
  return value.toLowerCase();
}

function parseEventIds(ids: unknown): string[] {
  if (!Array.isArray(ids) || ids.length === 0 || ids.length > 1000) {
    throw new TenantryError(webhookInvalidCode, 'eventIds is a list of 1 to 1000 event ids.');
  }
  return [...new Set(ids.map((id) => parseWebhookUuid(id, 'event id')))];
}

function parseEndpointUrl(value: unknown): string {
  let url: URL;
  try {
    url = new URL(String(value));
  } catch (error) {
    throw new TenantryError(webhookInvalidCode, 'url is an absolute http: or https: URL.', {
      cause: error,
    });
  }
  if (typeof value !== 'string' || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
    throw new TenantryError(webhookInvalidCode, 'url is an absolute http: or https: URL.');
  }
  if (url.hash !== '' || url.href.length > 2000) {
    throw new TenantryError(
      webhookInvalidCode,
      'url has no #fragment and is at most 2000 characters long.',
    );
  }
  // fetch() refuses URLs with credentials; the signature authenticates the sender instead.
  if (url.username !== '' || url.password !== '') {
    throw new TenantryError(
      webhookInvalidCode,
      'url cannot carry credentials (user:password@): receivers authenticate requests by their signature.',
    );
  }
  return url.href;
}

function parseEventTypes(value: unknown): string[] | undefined {
  if (value === undefined) return undefined;
  if (!Array.isArray(value) || value.length > 100) {
    throw new TenantryError(webhookInvalidCode, 'eventTypes is a list of at most 100 event types.');
  }
  for (const type of value) {
    if (typeof type !== 'string' || type.length > 100 || !eventTypePattern.test(type)) {
      throw new TenantryError(
        webhookInvalidCode,
        `An event type is dotted lowercase words such as quota.exceeded, or a family wildcard such as usage.*; got ${JSON.stringify(String(type).slice(0, 100))}.`,
      );
    }
  }
  return value.length === 0 ? undefined : [...new Set(value as string[])];
}

function requireRow<T>(row: T | undefined, id: string): T {
  if (row === undefined) {
    throw new TenantryError(webhookNotFoundCode, `No webhook endpoint ${id}.`);
  }
  return row;
}

interface EndpointRow {
  readonly id: string;
  readonly url: string;
  readonly description: string;
  readonly event_types: string[] | null;
  readonly enabled: boolean;
  readonly max_attempts: number;
  readonly previous_expires_at: Date | null;
  readonly created_at: Date;
}

interface DeliveryRow {
  readonly event_id: string;
  readonly endpoint_id: string;
  readonly type: string;
  readonly tenant_id: string | null;
  readonly status: WebhookDeliveryStatus;
  readonly attempts: number;
  readonly max_attempts: number;
  readonly next_attempt_at: Date;
  readonly last_status_code: number | null;
  readonly last_error: string | null;
  readonly delivered_at: Date | null;
  readonly created_at: Date;
}

function toEndpoint(row: EndpointRow): WebhookEndpoint {
  return Object.freeze({
    id: row.id,
    url: row.url,
    description: row.description,
    eventTypes: row.event_types === null ? undefined : Object.freeze([...row.event_types]),
    enabled: row.enabled,
    maxAttempts: row.max_attempts,
    previousSecretExpiresAt: row.previous_expires_at ?? undefined,
    createdAt: row.created_at,
  });
}

function toDelivery(row: DeliveryRow): WebhookDelivery {
  const status = row.status;
  return Object.freeze({
    eventId: row.event_id,
    endpointId: row.endpoint_id,
    eventType: row.type,
    tenantId: (row.tenant_id ?? undefined) as TenantId | undefined,
    status,
    attempts: row.attempts,
    maxAttempts: row.max_attempts,
    nextAttemptAt:
      status === 'pending' || status === 'delivering' ? row.next_attempt_at : undefined,
    lastStatusCode: row.last_status_code ?? undefined,
    lastError: row.last_error ?? undefined,
    deliveredAt: row.delivered_at ?? undefined,
    createdAt: row.created_at,
  });
}
