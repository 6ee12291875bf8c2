import { AssertionError } from 'node:assert';
import { randomBytes, randomInt, randomUUID } from 'node:crypto';
import { TenantryError } from '../errors.ts';

/** One HTTP request the attack suite sends. `url` is a path with its query string. */
export interface AttackRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: Readonly<Record<string, string>>;
  /** A JSON value, sent as `application/json`; `undefined` sends no body. */
  readonly body?: unknown;
}

/** The answer to an {@link AttackRequest}: header names lowercase, the body as text. */
export interface AttackResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: string;
}

/**
 * Sends one request to the app under test: {@link createInjectRequester} for an in-process
 * Fastify app, {@link createFetchRequester} for a running server, or your own function.
 */
export type AttackRequester = (request: AttackRequest) => Promise<AttackResponse>;

/** A tenant the suite acts as: its credentials and what addresses it. */
export interface AttackTenant {
  /** Headers that authenticate this tenant's user, such as `{ authorization: 'Bearer …' }`. */
  readonly headers: Readonly<Record<string, string>>;
  /** The tenant's id: sent by tenant B as `tenant_id` / `tenantId` in bodies, searched for in responses. */
  readonly tenantId?: string;
  /**
   * Values of path placeholders that address the tenant, such as `{ workspace: 'acme' }` for
   * routes under `/t/{workspace}/v1`. Tenant B also tries tenant A's values with B's credentials.
   */
  readonly pathParameters?: Readonly<Record<string, string>>;
  /** Further values that identify the tenant (its slug, its user's email); searched for in B's responses. */
  readonly values?: readonly string[];
}

/** What a body builder, a creation hook or a fixture receives. */
export interface AttackFixtureContext {
  /** `'a'` (the victim, whose objects are attacked) or `'b'` (the attacker). */
  readonly tenant: 'a' | 'b';
  /** The tenant's credentials and addresses as passed to the suite. */
  readonly credentials: AttackTenant;
  /** The requester passed to the suite (send the tenant's headers yourself). */
  readonly request: AttackRequester;
  /** A fresh value unique to this run and tenant, such as `tntak3f9c2b1d0`; A's are searched for in B's responses. */
  unique(): string;
  /**
   * The ids of this tenant's objects of a kind, named like a property or a collection:
   * `ids('tagIds')`, `ids('tag')` and `ids('tags')` are the same list.
   */
  ids(name: string): readonly string[];
}

/** Per-route settings, keyed by `'METHOD /path'` (the path with or without its prefix). */
export interface AttackRouteOptions {
  /** Do not attack this operation; the reason is kept in the report. */
  readonly skip?: string;
  /** Whether a `POST` creates objects during set-up. @defaultValue true for `POST` */
  readonly create?: boolean;
  /** The JSON body for this route (set-up and attacks), instead of one derived from its schema. */
  readonly body?: (context: AttackFixtureContext) => unknown;
  /** Runs after each object the route created in set-up (to upload a file, for instance). */
  readonly afterCreate?: (created: unknown, context: AttackFixtureContext) => Promise<void> | void;
}

/** An operation the suite must not attack, and why. */
export interface AttackSkip {
  /** Upper-case HTTP method; every method when omitted. */
  readonly method?: string;
  /** The OpenAPI path (exact string), or a pattern tested against it. */
  readonly path: string | RegExp;
  readonly reason: string;
}

/** Options of {@link runTenantAttackSuite}. */
export interface TenantAttackSuiteOptions {
  /** The app's OpenAPI 3 document (an object, such as the body of `GET /openapi.json`). */
  readonly openapi: unknown;
  /** How requests reach the app. */
  readonly request: AttackRequester;
  /** Tenant A is the victim (its objects are attacked), tenant B the attacker. */
  readonly tenants: { readonly a: AttackTenant; readonly b: AttackTenant };
  /**
   * Path prefixes under which the same resources are served, such as
   * `['/v1', '/t/{workspace}/v1']`. Objects are created once (under the first prefix that serves
   * the route) and attacked under every prefix. @defaultValue []
   */
  readonly pathPrefixes?: readonly string[];
  /** Operations to leave out, with a reason. Operations declaring `security: []` are left out on their own. */
  readonly skip?: readonly AttackSkip[];
  /** Per-route bodies, creation hooks and skips, keyed by `'METHOD /path'`. */
  readonly routes?: Readonly<Record<string, AttackRouteOptions>>;
  /**
   * What kind of object a property or parameter names when its name does not say it, such as
   * `{ assigneeId: 'user', attachmentIds: 'file' }`. @defaultValue {}
   */
  readonly references?: Readonly<Record<string, string>>;
  /**
   * Reads tenant A's rows (any JSON value, such as a checksum per table). Called after set-up and
   * after the attacks on each operation; any difference is a finding.
   */
  readonly snapshot?: () => Promise<unknown>;
  /**
   * Text that must never appear in a response (constraint names, internal hostnames), besides the
   * built-in patterns for SQL, PostgreSQL errors, SQLSTATEs and stack traces. @defaultValue []
   */
  readonly forbiddenPatterns?: readonly (string | RegExp)[];
  /** Values of tenant A that may appear in B's responses (shared reference data). @defaultValue [] */
  readonly ignoreValues?: readonly string[];
  /** How many objects tenant A creates per creating route (two give list routes a cursor). @defaultValue 2 */
  readonly objectsPerRoute?: number;
  /** How many of A's ids are tried per parameter or property. @defaultValue 2 */
  readonly maxIdsPerParameter?: number;
  /**
   * Statuses that mean an attack never reached the route (credentials refused, rate limited): a
   * finding of kind `inconclusive`. @defaultValue [401, 429]
   */
  readonly inconclusiveStatuses?: readonly number[];
}

/** How an attack tries to reach tenant A's data. */
export type AttackKind =
  | 'plain'
  | 'path-id'
  | 'tenant-address'
  | 'query-id'
  | 'cursor'
  | 'body-id'
  | 'body-tenant'
  | 'body-address';

/** What a finding is about. */
export type AttackFindingKind =
  | 'leak'
  | 'accepted'
  | 'snapshot-changed'
  | 'hygiene'
  | 'server-error'
  | 'inconclusive'
  | 'request-failed';

/** One problem the suite found. */
export interface AttackFinding {
  readonly kind: AttackFindingKind;
  /** The attacked operation (`'GET /v1/contacts/{id}'`), or `'set-up'`. */
  readonly operation: string;
  readonly attack?: AttackKind;
  /** The request that showed it (`'GET /v1/contacts/…'`). */
  readonly request?: string;
  readonly status?: number;
  readonly message: string;
  /** The part of the response that shows it. */
  readonly evidence?: string;
}

/** One request of an attack and how it ended. */
export interface AttackAttempt {
  readonly kind: AttackKind;
  /** What was substituted: `'path {id}'`, `'query tagId'`, `'body /tagIds'`, … */
  readonly target: string;
  readonly method: string;
  readonly url: string;
  /** The status, or 0 when the request failed. */
  readonly status: number;
  /** `refused` (4xx), `answered` (2xx/3xx revealing nothing), or `finding`. */
  readonly outcome: 'refused' | 'answered' | 'finding';
}

/** A request of tenant B on its own objects, sent before the attacks it vouches for. */
export interface AttackControl {
  /** `'path ids of B'` or the attacked body property, such as `'body /contactId'`. */
  readonly target: string;
  readonly url: string;
  readonly status: number;
}

/** Everything the suite did to one operation of the document. */
export interface AttackOperationReport {
  /** `'GET /v1/contacts/{id}'` */
  readonly operation: string;
  readonly method: string;
  readonly path: string;
  readonly status: 'attacked' | 'skipped';
  /** Why the operation was skipped. */
  readonly reason?: string;
  readonly attempts: readonly AttackAttempt[];
  /**
   * Tenant B's requests on its own objects: the operation with B's ids in the path (`DELETE`
   * aside) and each body attack with B's own id in the attacked property. A 2xx shows the
   * attacks' refusals come from the tenant boundary rather than from a malformed request.
   */
  readonly controls: readonly AttackControl[];
  /** Limits of the coverage of this operation (no value of A for a parameter, …). */
  readonly notes: readonly string[];
  readonly findings: number;
}

/** A creation during set-up. */
export interface AttackSetupStep {
  readonly tenant: 'a' | 'b';
  /** `'POST /v1/contacts'` */
  readonly operation: string;
  /** Objects created. */
  readonly created: number;
  /** Why nothing (or fewer objects than asked) was created. */
  readonly error?: string;
}

/** What {@link runTenantAttackSuite} found. */
export interface TenantAttackReport {
  /** Every operation of the document, attacked or skipped. */
  readonly operations: readonly AttackOperationReport[];
  readonly findings: readonly AttackFinding[];
  readonly setup: readonly AttackSetupStep[];
  /** Attack requests sent as tenant B (set-up and controls excluded). */
  readonly attempts: number;
  /** How many distinct ids and values of tenant A were searched for in B's responses. */
  readonly tenantAValues: number;
  readonly durationMs: number;
}

/** The part of a Fastify instance {@link createInjectRequester} needs. */
export interface InjectTarget {
  inject(options: {
    method: string;
    url: string;
    headers: Record<string, string>;
    payload?: string;
  }): Promise<{
    statusCode: number;
    headers: Record<string, string | string[] | number | undefined>;
    body: string;
  }>;
}

/**
 * An {@link AttackRequester} over Fastify's `app.inject()`: no socket, no port.
 *
 * @example
 * ```ts
 * import { createInjectRequester, runTenantAttackSuite } from 'tenantry/testing';
 * const report = await runTenantAttackSuite({ openapi, request: createInjectRequester(app), tenants });
 * ```
 */
export function createInjectRequester(app: InjectTarget): AttackRequester {
  return async (request) => {
    const headers: Record<string, string> = { ...request.headers };
    let payload: string | undefined;
    if (request.body !== undefined) {
      payload = JSON.stringify(request.body);
      headers['content-type'] ??= 'application/json';
    }
    const response = await app.inject({
      method: request.method,
      url: request.url,
      headers,
      ...(payload === undefined ? {} : { payload }),
    });
    return {
      status: response.statusCode,
      headers: flattenHeaders(response.headers),
      body: response.body,
    };
  };
}

/**
 * An {@link AttackRequester} over `fetch` against a running server.
 *
 * @example
 * ```ts
 * import { createFetchRequester, runTenantAttackSuite } from 'tenantry/testing';
 * const request = createFetchRequester('https://staging.example.com');
 * const openapi = await (await fetch('https://staging.example.com/openapi.json')).json();
 * const report = await runTenantAttackSuite({ openapi, request, tenants });
 * ```
 */
export function createFetchRequester(
  baseUrl: string | URL,
  options: {
    /** @defaultValue globalThis.fetch */
    readonly fetch?: typeof fetch;
    /** Headers added to every request (the tenant's own take precedence). @defaultValue {} */
    readonly headers?: Readonly<Record<string, string>>;
  } = {},
): AttackRequester {
  const send = options.fetch ?? globalThis.fetch;
  const base = new URL(baseUrl);
  return async (request) => {
    const url = new URL(
      request.url.replace(/^\/+/, ''),
      base.href.endsWith('/') ? base : `${base.href}/`,
    );
    const headers: Record<string, string> = { ...options.headers, ...request.headers };
    let body: string | undefined;
    if (request.body !== undefined) {
      body = JSON.stringify(request.body);
      headers['content-type'] ??= 'application/json';
    }
    const response = await send(url, {
      method: request.method,
      headers,
      redirect: 'manual',
      ...(body === undefined ? {} : { body }),
    });
    const responseHeaders: Record<string, string> = {};
    response.headers.forEach((value, name) => {
      responseHeaders[name.toLowerCase()] = value;
    });
    return { status: response.status, headers: responseHeaders, body: await response.text() };
  };
}

/**
 * Throws an `AssertionError` listing every finding of a report (none: returns).
 *
 * @example
 * ```ts
 * const report = await runTenantAttackSuite(options);
 * assertNoFindings(report);
 * ```
 */
export function assertNoFindings(
  report: TenantAttackReport,
  options: {
    /** Findings to tolerate (known, documented exceptions). @defaultValue none */
    readonly allow?: (finding: AttackFinding) => boolean;
  } = {},
): void {
  const findings = report.findings.filter((finding) => !(options.allow?.(finding) ?? false));
  if (findings.length === 0) return;
  const lines = findings.map((finding) => `- ${describeFinding(finding)}`);
  throw new AssertionError({
    message: `The tenant attack suite found ${findings.length} problem${findings.length === 1 ? '' : 's'} (${report.attempts} attacks on ${report.operations.filter((operation) => operation.status === 'attacked').length} operations):\n${lines.join('\n')}`,
    actual: findings,
    expected: [],
    operator: 'assertNoFindings',
  });
}

/**
 * One line describing a finding, as {@link assertNoFindings} prints it.
 *
 * @example
 * ```ts
 * for (const finding of report.findings) process.stderr.write(`${describeFinding(finding)}\n`);
 * ```
 */
export function describeFinding(finding: AttackFinding): string {
  const where = [
    `[${finding.kind}]`,
    finding.operation,
    finding.attack === undefined ? undefined : `(${finding.attack})`,
    finding.request === undefined ? undefined : `${finding.request}`,
    finding.status === undefined ? undefined : `-> ${finding.status}`,
  ]
    .filter((part) => part !== undefined)
    .join(' ');
  const evidence = finding.evidence === undefined ? '' : ` Evidence: ${finding.evidence}`;
  return `${where}: ${finding.message}${evidence}`;
}

/**
 * The generic cross-tenant attack suite. Given an app's OpenAPI document, a way to send requests
 * and the credentials of two tenants, it creates objects as tenant A (bodies derived from the
 * request schemas), then attacks every operation as tenant B: A's ids in every path parameter,
 * query parameter (filters, A's own cursors) and id property of bodies (alone and mixed with B's
 * in arrays), children created under A's parents, `tenant_id`/`tenantId` naming A in bodies, and
 * A's address (such as `/t/{workspace}`) with B's credentials. Each answer must be a 4xx, or a
 * 2xx that carries none of A's ids and values (and never a 2xx on a write naming A's objects);
 * A's snapshot must stay the same; and no response may contain SQL, PostgreSQL error text,
 * SQLSTATEs, stack traces or a forbidden pattern. Findings are collected, never thrown: pass the
 * report to {@link assertNoFindings}.
 *
 * @example
 * ```ts
 * import { assertNoFindings, createInjectRequester, runTenantAttackSuite } from 'tenantry/testing';
 *
 * const openapi = (await app.inject({ method: 'GET', url: '/openapi.json' })).json();
 * const report = await runTenantAttackSuite({
 *   openapi,
 *   request: createInjectRequester(app),
 *   tenants: {
 *     a: { headers: { authorization: `Bearer ${tokenA}` }, tenantId: tenantA },
 *     b: { headers: { authorization: `Bearer ${tokenB}` }, tenantId: tenantB },
 *   },
 *   skip: [{ path: /^\/auth\//, reason: 'sign-in routes take no tenant' }],
 *   snapshot: () => checksumOfTenantRows(tenantA),
 * });
 * assertNoFindings(report);
 * ```
 */
export async function runTenantAttackSuite(
  options: TenantAttackSuiteOptions,
): Promise<TenantAttackReport> {
  const started = performance.now();
  const suite = new AttackRun(validateOptions(options));
  await suite.run();
  return suite.report(performance.now() - started);
}

type Schema = Readonly<Record<string, unknown>>;
type BodyLevel = 'full' | 'references' | 'required';
const bodyLevels: readonly BodyLevel[] = ['full', 'references', 'required'];

interface ResolvedOptions {
  readonly openapi: Schema;
  readonly request: AttackRequester;
  readonly a: AttackTenant;
  readonly b: AttackTenant;
  readonly pathPrefixes: readonly string[];
  readonly skip: readonly AttackSkip[];
  readonly routes: Readonly<Record<string, AttackRouteOptions>>;
  readonly references: ReadonlyMap<string, string>;
  readonly snapshot: (() => Promise<unknown>) | undefined;
  readonly forbiddenPatterns: readonly HygienePattern[];
  readonly ignoreValues: ReadonlySet<string>;
  readonly objectsPerRoute: number;
  readonly maxIdsPerParameter: number;
  readonly inconclusiveStatuses: ReadonlySet<number>;
}

function validateOptions(options: TenantAttackSuiteOptions): ResolvedOptions {
  const invalid = (message: string) =>
    new TenantryError('TENANTRY_ERR_CONFIG_INVALID', `runTenantAttackSuite: ${message}`);
  if (!isObject(options.openapi) || !isObject(options.openapi.paths)) {
    throw invalid('openapi must be an OpenAPI document with "paths".');
  }
  if (typeof options.request !== 'function') throw invalid('request must be a function.');
  for (const label of ['a', 'b'] as const) {
    const tenant = options.tenants?.[label];
    if (tenant === undefined || !isObject(tenant.headers)) {
      throw invalid(`tenants.${label}.headers must be an object of header values.`);
    }
  }
  const objectsPerRoute = options.objectsPerRoute ?? 2;
  const maxIdsPerParameter = options.maxIdsPerParameter ?? 2;
  for (const [name, value] of [
    ['objectsPerRoute', objectsPerRoute],
    ['maxIdsPerParameter', maxIdsPerParameter],
  ] as const) {
    if (!Number.isInteger(value) || value < 1 || value > 100) {
      throw invalid(`${name} must be an integer from 1 to 100.`);
    }
  }
  const forbidden = (options.forbiddenPatterns ?? []).map((pattern) => ({
    name:
      typeof pattern === 'string' ? `forbidden text "${pattern}"` : `forbidden pattern ${pattern}`,
    pattern: typeof pattern === 'string' ? new RegExp(escapeRegExp(pattern), 'i') : pattern,
  }));
  return Object.freeze({
    openapi: options.openapi,
    request: options.request,
    a: options.tenants.a,
    b: options.tenants.b,
    pathPrefixes: Object.freeze([...(options.pathPrefixes ?? [])]),
    skip: Object.freeze([...(options.skip ?? [])]),
    routes: Object.freeze({ ...options.routes }),
    references: new Map(
      Object.entries(options.references ?? {}).map(([name, kind]) => [name, stemOf(kind)]),
    ),
    snapshot: options.snapshot,
    forbiddenPatterns: Object.freeze([...builtInHygienePatterns, ...forbidden]),
    ignoreValues: new Set((options.ignoreValues ?? []).map((value) => value.toLowerCase())),
    objectsPerRoute,
    maxIdsPerParameter,
    inconclusiveStatuses: new Set(options.inconclusiveStatuses ?? [401, 429]),
  });
}

interface HygienePattern {
  readonly name: string;
  readonly pattern: RegExp;
}

/** What no response may contain: signs of SQL, database errors and stack traces. */
const builtInHygienePatterns: readonly HygienePattern[] = Object.freeze([
  {
    name: 'SQL text',
    pattern:
      /\b(?:select\b[^\n]{1,200}?\bfrom\s+["\w]|insert\s+into\s+["\w]|update\s+["\w.]+\s+set\s+["\w]|delete\s+from\s+["\w])/i,
  },
  {
    name: 'PostgreSQL error text',
    pattern:
      /syntax error at or near|relation "[^"]*" does not exist|column "[^"]*" (?:does not exist|of relation)|violates (?:foreign key|unique|check|not-null|exclusion|row-level security)|duplicate key value|current transaction is aborted|permission denied for (?:table|schema|relation|function|sequence|view)|invalid input syntax for type|null value in column|there is no unique or exclusion constraint|could not serialize access/i,
  },
  {
    name: 'SQLSTATE',
    pattern: /\bSQLSTATE\b|"sql_?state"\s*:|"code"\s*:\s*"[0-9]{2}[0-9A-Z]{3}"/i,
  },
  {
    name: 'stack trace',
    pattern:
      /\n\s*at [^\n]*:\d+:\d+|\bat (?:async )?[\w.$<>[\]]+ \([^)\n]*:\d+:\d+\)|node:internal|\.(?:[cm]?[jt]s):\d+:\d+|"stack"\s*:/,
  },
]);

interface QueryParameter {
  readonly name: string;
  readonly schema: Schema;
}

interface ParsedOperation {
  readonly key: string;
  readonly method: string;
  readonly path: string;
  readonly resourcePath: string;
  readonly resourceKey: string;
  /** True for the first variant (by prefix order) of a method and resource path. */
  readonly primary: boolean;
  readonly placeholders: readonly string[];
  readonly pathSchemas: ReadonlyMap<string, Schema>;
  readonly query: readonly QueryParameter[];
  readonly bodySchema: Schema | undefined;
  readonly otherBody: boolean;
  readonly stem: string;
  readonly route: AttackRouteOptions;
  readonly skipReason: string | undefined;
}

interface TenantState {
  readonly label: 'a' | 'b';
  readonly credentials: AttackTenant;
  readonly idsByStem: Map<string, string[]>;
  readonly ids: Set<string>;
  readonly valuesByProperty: Map<string, Set<string>>;
  readonly generated: Set<string>;
  readonly generatedByStem: Map<string, string[]>;
  readonly secrets: Set<string>;
  readonly etags: Map<string, string>;
  readonly cursors: Map<string, string>;
  readonly bodyLevels: Map<string, BodyLevel>;
  /** Responses to check for the other tenant's values once both exist. */
  readonly responses: { readonly where: string; readonly text: string }[];
}

interface PlannedAttack {
  readonly kind: AttackKind;
  readonly target: string;
  readonly path: Readonly<Record<string, string>>;
  readonly query: readonly [string, string][];
  readonly body: unknown;
  /** Whose ETag goes in `If-Match` (A's when the path names A's object). */
  readonly etagFrom: TenantState;
}

const methodOrder = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'];
const writeMethods = new Set(['POST', 'PUT', 'PATCH']);
const containerKeys = new Set([
  'items',
  'data',
  'results',
  'records',
  'rows',
  'nodes',
  'node',
  'edges',
  'list',
  'page',
  'content',
  'entries',
  'objects',
  'hits',
]);
const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const uuidsInText = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi;
const dateLike = /^\d{4}-\d{2}-\d{2}(?:[T ][\d:.]+(?:Z|[+-]\d{2}:?\d{2})?)?$/;
const secretLikeKey = /secret|token|password|key|url|signature|href|link/i;
const cursorLikeName = /cursor|page_?token|^after$|^before$|continuation|next_?token/i;
const limitLikeName = /^(?:limit|per_?page|page_?size|first|size|max_?results|top)$/i;

class AttackRun {
  readonly #options: ResolvedOptions;
  readonly #operations: ParsedOperation[];
  readonly #a: TenantState;
  readonly #b: TenantState;
  readonly #findings: AttackFinding[] = [];
  readonly #setup: AttackSetupStep[] = [];
  readonly #reports = new Map<
    string,
    {
      attempts: AttackAttempt[];
      controls: AttackControl[];
      notes: string[];
      findings: number;
    }
  >();
  #aValues: string[] = [];
  #bValues: string[] = [];
  #attempts = 0;
  #baseline: string | undefined;

  constructor(options: ResolvedOptions) {
    this.#options = options;
    this.#operations = parseOperations(options);
    this.#a = newTenantState('a', options.a);
    this.#b = newTenantState('b', options.b);
  }

  async run(): Promise<void> {
    const setupB = await this.#createObjects(this.#b, 1);
    const setupBIds = new Set(this.#b.ids);
    const setupBTexts = setupB.join('\n').toLowerCase();
    await this.#createObjects(this.#a, this.#options.objectsPerRoute);
    await this.#harvestReads(this.#a);
    await this.#harvestReads(this.#b);
    this.#aValues = tenantValues(this.#a, this.#options, (value) => {
      return setupBIds.has(value) || setupBTexts.includes(value);
    });
    this.#bValues = tenantValues(this.#b, this.#options, () => false);
    for (const [state, values, other] of [
      [this.#b, this.#aValues, 'A'],
      [this.#a, this.#bValues, 'B'],
    ] as const) {
      for (const response of state.responses) {
        const found = values.find((value) => response.text.includes(value));
        if (found !== undefined) {
          this.#addFinding('set-up', {
            kind: 'leak',
            operation: 'set-up',
            request: response.where,
            message: `tenant ${state.label.toUpperCase()}'s own request answered with tenant ${other}'s value "${found}"`,
            evidence: excerpt(response.text, found),
          });
        }
      }
    }
    if (this.#options.snapshot !== undefined) {
      this.#baseline = canonicalJson(await this.#options.snapshot());
    }
    const attacked = this.#operations
      .filter((operation) => operation.skipReason === undefined)
      .sort(
        (left, right) =>
          methodOrder.indexOf(left.method) - methodOrder.indexOf(right.method) ||
          left.path.localeCompare(right.path),
      );
    for (const operation of attacked) {
      await this.#attackOperation(operation);
      await this.#checkSnapshot(operation.key);
    }
  }

  report(durationMs: number): TenantAttackReport {
    const operations = this.#operations.map((operation): AttackOperationReport => {
      const entry = this.#reports.get(operation.key);
      return Object.freeze({
        operation: operation.key,
        method: operation.method,
        path: operation.path,
        status: operation.skipReason === undefined ? 'attacked' : 'skipped',
        ...(operation.skipReason === undefined ? {} : { reason: operation.skipReason }),
        attempts: Object.freeze([...(entry?.attempts ?? [])]),
        controls: Object.freeze([...(entry?.controls ?? [])]),
        notes: Object.freeze([...(entry?.notes ?? [])]),
        findings: entry?.findings ?? 0,
      });
    });
    return Object.freeze({
      operations: Object.freeze(operations),
      findings: Object.freeze([...this.#findings]),
      setup: Object.freeze([...this.#setup]),
      attempts: this.#attempts,
      tenantAValues: this.#aValues.length,
      durationMs: Math.round(durationMs),
    });
  }

  #entry(key: string) {
    let entry = this.#reports.get(key);
    if (entry === undefined) {
      entry = { attempts: [], controls: [], notes: [], findings: 0 };
      this.#reports.set(key, entry);
    }
    return entry;
  }

  #addFinding(operationKey: string, finding: AttackFinding): void {
    this.#findings.push(Object.freeze(finding));
    if (operationKey !== 'set-up') this.#entry(operationKey).findings += 1;
  }

  #context(state: TenantState): AttackFixtureContext {
    return {
      tenant: state.label,
      credentials: state.credentials,
      request: this.#options.request,
      unique: () => uniqueValue(state),
      ids: (name) => [...(state.idsByStem.get(stemOf(name)) ?? [])],
    };
  }

  async #send(
    state: TenantState,
    operationKey: string,
    request: AttackRequest,
  ): Promise<AttackResponse | undefined> {
    try {
      const response = await this.#options.request(request);
      this.#checkHygiene(operationKey, undefined, request, response);
      if (response.status >= 500) {
        this.#addFinding(operationKey, {
          kind: 'server-error',
          operation: operationKey,
          request: `${request.method} ${request.url}`,
          status: response.status,
          message: `tenant ${state.label.toUpperCase()}'s request failed on the server`,
          evidence: truncate(response.body, 300),
        });
      }
      return response;
    } catch (error) {
      this.#addFinding(operationKey, {
        kind: 'request-failed',
        operation: operationKey,
        request: `${request.method} ${request.url}`,
        message: `the request could not be sent: ${error instanceof Error ? error.message : String(error)}`,
      });
      return undefined;
    }
  }

  #checkHygiene(
    operationKey: string,
    attack: AttackKind | undefined,
    request: AttackRequest,
    response: AttackResponse,
  ): boolean {
    const text = responseText(response);
    for (const { name, pattern } of this.#options.forbiddenPatterns) {
      pattern.lastIndex = 0;
      const match = pattern.exec(text);
      if (match !== null) {
        this.#addFinding(operationKey, {
          kind: 'hygiene',
          operation: operationKey,
          ...(attack === undefined ? {} : { attack }),
          request: `${request.method} ${request.url}`,
          status: response.status,
          message: `the response contains ${name}`,
          evidence: excerpt(text, match[0]),
        });
        return true;
      }
    }
    return false;
  }

  /** Creates objects through every creating route, parents before children. */
  async #createObjects(state: TenantState, count: number): Promise<string[]> {
    const texts: string[] = [];
    const creators = this.#operations.filter(
      (operation) =>
        operation.method === 'POST' &&
        operation.primary &&
        operation.skipReason === undefined &&
        operation.route.create !== false &&
        !operation.otherBody,
    );
    const pending = [...creators];
    const provides = new Map(creators.map((operation) => [operation, operation.stem]));
    while (pending.length > 0) {
      const ready = (operation: ParsedOperation, strict: boolean) => {
        const needs = this.#dependencies(operation);
        if (needs.required.some((stem) => !hasIds(state, stem))) return false;
        if (!strict) return true;
        return !needs.optional.some(
          (stem) =>
            !hasIds(state, stem) &&
            pending.some((other) => other !== operation && provides.get(other) === stem),
        );
      };
      const next =
        pending.find((operation) => ready(operation, true)) ??
        pending.find((operation) => ready(operation, false));
      if (next === undefined) {
        for (const operation of pending) {
          const missing = this.#dependencies(operation).required.filter(
            (stem) => !hasIds(state, stem),
          );
          this.#setup.push({
            tenant: state.label,
            operation: operation.key,
            created: 0,
            error: `no ${missing.join(', ')} of tenant ${state.label.toUpperCase()} to refer to`,
          });
        }
        break;
      }
      pending.splice(pending.indexOf(next), 1);
      texts.push(...(await this.#createThrough(state, next, count)));
    }
    return texts;
  }

  #dependencies(operation: ParsedOperation): { required: string[]; optional: string[] } {
    const required = new Set<string>();
    const optional = new Set<string>();
    for (const name of operation.placeholders) {
      if (this.#isTenantPlaceholder(name)) continue;
      required.add(this.#placeholderStem(operation, name));
    }
    if (operation.bodySchema !== undefined && operation.route.body === undefined) {
      for (const slot of idSlots(this.#options, operation.bodySchema, operation.stem)) {
        (slot.required ? required : optional).add(slot.stem);
      }
    }
    return {
      required: [...required],
      optional: [...optional].filter((stem) => !required.has(stem)),
    };
  }

  async #createThrough(
    state: TenantState,
    operation: ParsedOperation,
    count: number,
  ): Promise<string[]> {
    const texts: string[] = [];
    let created = 0;
    let error: string | undefined;
    const idPlaceholders = operation.placeholders.filter(
      (name) => !this.#isTenantPlaceholder(name),
    );
    // A child route creates `count` children under each of `count` parents, so that one parent
    // has a second page (a cursor) and several parents have children.
    const parents: Record<string, string>[] = [];
    if (idPlaceholders.length === 0) parents.push({});
    else {
      for (let index = 0; index < count; index += 1) {
        const values: Record<string, string> = {};
        for (const name of idPlaceholders) {
          const ids = state.idsByStem.get(this.#placeholderStem(operation, name)) ?? [];
          values[name] = ids[index % ids.length] ?? '';
        }
        if (!parents.some((parent) => canonicalJson(parent) === canonicalJson(values))) {
          parents.push(values);
        }
      }
    }
    let failedParents = 0;
    for (const parent of parents) {
      const url = fillPath(operation.path, { ...state.credentials.pathParameters, ...parent });
      let createdHere = 0;
      for (let index = 0; index < count; index += 1) {
        let succeeded = false;
        for (const level of this.#levelsFor(state, operation)) {
          const body = this.#bodyFor(state, operation, level);
          if (body === unbuildable) continue;
          const request: AttackRequest = {
            method: 'POST',
            url,
            headers: {
              ...state.credentials.headers,
              ...(body === undefined ? {} : { 'content-type': 'application/json' }),
            },
            ...(body === undefined ? {} : { body }),
          };
          const response = await this.#send(state, 'set-up', request);
          if (response === undefined) break;
          const text = responseText(response);
          state.responses.push({ where: `POST ${url}`, text: text.toLowerCase() });
          texts.push(text);
          if (response.status >= 200 && response.status < 300) {
            succeeded = true;
            state.bodyLevels.set(operation.resourceKey, level);
            const parsed = parseJson(response.body);
            harvest(state, parsed, operation.stem, undefined, this.#options);
            harvestHeaders(state, response.headers);
            if (operation.route.afterCreate !== undefined) {
              await operation.route.afterCreate(parsed, this.#context(state));
            }
            break;
          }
          error = `${response.status} ${truncate(response.body, 200)}`;
        }
        if (!succeeded) break;
        createdHere += 1;
      }
      if (createdHere === 0) failedParents += 1;
      created += createdHere;
    }
    if (failedParents === 0) error = undefined;
    this.#setup.push({
      tenant: state.label,
      operation: operation.key,
      created,
      ...(error === undefined ? {} : { error }),
    });
    return texts;
  }

  /** The body levels to try for an operation, the one that last worked first. */
  *#levelsFor(state: TenantState, operation: ParsedOperation): Iterable<BodyLevel> {
    const known = state.bodyLevels.get(operation.resourceKey);
    if (operation.route.body !== undefined || operation.bodySchema === undefined) {
      yield known ?? 'full';
      return;
    }
    if (known !== undefined) yield known;
    for (const level of bodyLevels) if (level !== known) yield level;
  }

  #bodyFor(state: TenantState, operation: ParsedOperation, level: BodyLevel): unknown {
    if (operation.route.body !== undefined) return operation.route.body(this.#context(state));
    if (operation.bodySchema === undefined) return undefined;
    const builder = new BodyBuilder(this.#options, state, level, operation.stem);
    const body = builder.value(
      resolveSchema(this.#options.openapi, operation.bodySchema),
      '',
      true,
    );
    if (body === undefined) return unbuildable;
    for (const value of builder.generated) {
      state.generated.add(value.toLowerCase());
      const list = state.generatedByStem.get(operation.stem) ?? [];
      list.push(value);
      state.generatedByStem.set(operation.stem, list);
    }
    return body;
  }

  /** Reads every readable route as a tenant: its objects, ETags and cursors. */
  async #harvestReads(state: TenantState): Promise<void> {
    const reads = this.#operations.filter(
      (operation) =>
        operation.method === 'GET' && operation.primary && operation.skipReason === undefined,
    );
    for (const operation of reads) {
      const idPlaceholders = operation.placeholders.filter(
        (name) => !this.#isTenantPlaceholder(name),
      );
      const combos: Record<string, string>[] = [];
      if (idPlaceholders.length === 0) combos.push({});
      else {
        const first = idPlaceholders[0] as string;
        const firstValues = this.#valuesOf(state, operation, first, 'path').slice(
          0,
          this.#options.objectsPerRoute,
        );
        for (const value of firstValues) {
          const combo: Record<string, string> = { [first]: value };
          let complete = true;
          for (const name of idPlaceholders.slice(1)) {
            const [other] = this.#valuesOf(state, operation, name, 'path');
            if (other === undefined) complete = false;
            else combo[name] = other;
          }
          if (complete) combos.push(combo);
        }
      }
      for (const combo of combos) {
        const url = fillPath(operation.path, { ...state.credentials.pathParameters, ...combo });
        await this.#read(state, operation, url, combo);
        const limit = operation.query.find((parameter) => limitLikeName.test(parameter.name));
        const cursor = operation.query.find((parameter) => cursorLikeName.test(parameter.name));
        if (limit !== undefined && cursor !== undefined && idPlaceholders.length <= 1) {
          const parsed = await this.#read(state, operation, `${url}?${limit.name}=1`, combo);
          const next = findCursor(parsed);
          if (next !== undefined) state.cursors.set(resourceUrl(operation, combo), next);
        }
      }
    }
  }

  async #read(
    state: TenantState,
    operation: ParsedOperation,
    url: string,
    combo: Record<string, string>,
  ): Promise<unknown> {
    const request: AttackRequest = {
      method: 'GET',
      url,
      headers: { ...state.credentials.headers },
    };
    const response = await this.#send(state, 'set-up', request);
    if (response === undefined) return undefined;
    state.responses.push({ where: `GET ${url}`, text: responseText(response).toLowerCase() });
    if (response.status < 200 || response.status >= 300) return undefined;
    const parsed = parseJson(response.body);
    harvest(state, parsed, operation.stem, undefined, this.#options);
    harvestHeaders(state, response.headers);
    const etag = response.headers.etag;
    if (etag !== undefined && !url.includes('?'))
      state.etags.set(resourceUrl(operation, combo), etag);
    return parsed;
  }

  #isTenantPlaceholder(name: string): boolean {
    return (
      this.#options.a.pathParameters?.[name] !== undefined ||
      this.#options.b.pathParameters?.[name] !== undefined
    );
  }

  #placeholderStem(operation: ParsedOperation, name: string): string {
    return stemForName(this.#options, name, contextStemOf(operation.path, name));
  }

  /** A tenant's values for a path placeholder or query parameter, best first. */
  #valuesOf(
    state: TenantState,
    operation: ParsedOperation,
    name: string,
    where: 'path' | 'query',
  ): string[] {
    const schema =
      where === 'path'
        ? operation.pathSchemas.get(name)
        : operation.query.find((parameter) => parameter.name === name)?.schema;
    const stem =
      where === 'path'
        ? this.#placeholderStem(operation, name)
        : stemForName(this.#options, name, operation.stem);
    const resolved =
      schema === undefined ? undefined : pickBranch(resolveSchema(this.#options.openapi, schema));
    const idLike =
      resolved?.format === 'uuid' || isIdName(name) || this.#options.references.has(name);
    const ids = state.idsByStem.get(stem) ?? [];
    if (idLike && ids.length > 0) return [...ids];
    const property = [...(state.valuesByProperty.get(name) ?? [])].filter(
      (value) => !uuidPattern.test(value) || idLike,
    );
    if (property.length > 0) return property;
    return idLike ? [] : [...ids];
  }

  async #attackOperation(operation: ParsedOperation): Promise<void> {
    const entry = this.#entry(operation.key);
    const a = this.#a;
    const b = this.#b;
    const maxIds = this.#options.maxIdsPerParameter;
    const tenantPlaceholders = operation.placeholders.filter((name) =>
      this.#isTenantPlaceholder(name),
    );
    const idPlaceholders = operation.placeholders.filter(
      (name) => !this.#isTenantPlaceholder(name),
    );
    const bPath: Record<string, string> = { ...b.credentials.pathParameters };
    for (const name of idPlaceholders) {
      const [own] = this.#valuesOf(b, operation, name, 'path');
      if (own === undefined) {
        bPath[name] = randomUUID();
        entry.notes.push(`tenant B has no value for {${name}}: a random UUID stands in`);
      } else bPath[name] = own;
    }
    const aPathValues = new Map<string, string[]>();
    for (const name of idPlaceholders) {
      let values = this.#valuesOf(a, operation, name, 'path').slice(0, maxIds);
      if (values.length === 0 && isIdName(name)) {
        values = [...a.ids].filter((id) => this.#aValues.includes(id)).slice(0, maxIds);
        if (values.length > 0) {
          entry.notes.push(`no object of tenant A matches {${name}}: other ids of A are tried`);
        }
      }
      if (values.length === 0) entry.notes.push(`tenant A has no value for {${name}}`);
      aPathValues.set(name, values);
    }

    let level: BodyLevel = b.bodyLevels.get(operation.resourceKey) ?? 'full';
    const bBody = () => {
      const body = this.#bodyFor(b, operation, level);
      return body === unbuildable ? undefined : body;
    };
    if (operation.bodySchema === undefined && operation.otherBody) {
      entry.notes.push('the request body is not JSON: body attacks are not run');
    }

    if (idPlaceholders.length > 0 && operation.method !== 'DELETE') {
      const url = fillPath(operation.path, bPath);
      let status = 0;
      for (const candidate of this.#levelsFor(b, operation)) {
        level = candidate;
        const body = bBody();
        const headers = this.#headersFor(b, operation, resourceUrl(operation, bPath), body);
        const response = await this.#send(b, operation.key, {
          method: operation.method,
          url,
          headers,
          ...(body === undefined ? {} : { body }),
        });
        status = response?.status ?? 0;
        if (response !== undefined) this.#rememberEtag(b, operation, bPath, response);
        if (status >= 200 && status < 300) break;
      }
      entry.controls.push({ target: 'path ids of B', url, status });
      if (status < 200 || status >= 300) {
        entry.notes.push(
          `tenant B's own request answered ${status}: refusals of this operation may not come from the tenant boundary`,
        );
      }
    }

    const planned: PlannedAttack[] = [];
    const plan = (
      kind: AttackKind,
      target: string,
      path: Record<string, string>,
      query: [string, string][],
      body: unknown,
      etagFrom: TenantState = b,
    ) => {
      planned.push({ kind, target, path, query, body, etagFrom });
    };

    if (idPlaceholders.length === 0) plan('plain', 'tenant B as itself', bPath, [], bBody());
    for (const name of idPlaceholders) {
      for (const value of aPathValues.get(name) ?? []) {
        plan('path-id', `path {${name}}`, { ...bPath, [name]: value }, [], bBody(), a);
      }
    }
    if (idPlaceholders.length > 1) {
      const all: Record<string, string> = { ...bPath };
      let complete = true;
      for (const name of idPlaceholders) {
        const [value] = aPathValues.get(name) ?? [];
        if (value === undefined) complete = false;
        else all[name] = value;
      }
      if (complete) plan('path-id', 'path (every id of A)', all, [], bBody(), a);
    }
    for (const name of tenantPlaceholders) {
      const value = a.credentials.pathParameters?.[name];
      if (value === undefined) continue;
      plan('tenant-address', `path {${name}} of A`, { ...bPath, [name]: value }, [], bBody());
      if (idPlaceholders.length > 0) {
        const withIds: Record<string, string> = { ...bPath, [name]: value };
        for (const idName of idPlaceholders) {
          const [aValue] = aPathValues.get(idName) ?? [];
          if (aValue !== undefined) withIds[idName] = aValue;
        }
        plan('tenant-address', `path {${name}} and ids of A`, withIds, [], bBody(), a);
      }
    }
    const queryBody = () => (writeMethods.has(operation.method) ? bBody() : undefined);
    const cursorKey = resourceUrl(
      operation,
      Object.fromEntries(idPlaceholders.map((name) => [name, aPathValues.get(name)?.[0] ?? ''])),
    );
    for (const parameter of operation.query) {
      if (cursorLikeName.test(parameter.name)) {
        const cursor = a.cursors.get(cursorKey) ?? a.cursors.get(resourceUrl(operation, {}));
        if (cursor === undefined) {
          entry.notes.push(`no cursor of tenant A for "${parameter.name}"`);
          continue;
        }
        plan(
          'cursor',
          `query ${parameter.name} (A's cursor)`,
          bPath,
          [[parameter.name, cursor]],
          queryBody(),
        );
        continue;
      }
      const schema = pickBranch(resolveSchema(this.#options.openapi, parameter.schema));
      const itemSchema =
        schema.type === 'array' && isObject(schema.items)
          ? pickBranch(resolveSchema(this.#options.openapi, schema.items))
          : schema;
      if (itemSchema.enum !== undefined || itemSchema.const !== undefined) continue;
      if (itemSchema.type !== undefined && itemSchema.type !== 'string') continue;
      let values = this.#valuesOf(a, operation, parameter.name, 'query').filter((value) =>
        this.#aValues.includes(value.toLowerCase()),
      );
      if (values.length === 0) {
        values = [
          ...(a.generatedByStem.get(operation.stem) ?? []).slice(0, 1),
          ...[...a.ids].filter((id) => this.#aValues.includes(id)).slice(0, 1),
        ];
      }
      for (const value of values.slice(0, maxIds)) {
        plan('query-id', `query ${parameter.name}`, bPath, [[parameter.name, value]], queryBody());
      }
    }
    if (operation.bodySchema !== undefined) {
      const base = () => {
        const body = bBody();
        return isObject(body) ? body : {};
      };
      for (const slot of idSlots(this.#options, operation.bodySchema, operation.stem)) {
        let aIds = [...(a.idsByStem.get(slot.stem) ?? [])];
        if (aIds.length === 0) aIds = [...a.ids].filter((id) => this.#aValues.includes(id));
        const [aId] = aIds;
        if (aId === undefined) {
          entry.notes.push(`tenant A has no id for body ${slot.pointer.join('/')}`);
          continue;
        }
        const [bId] = b.idsByStem.get(slot.stem) ?? [];
        const target = `body /${slot.pointer.join('/')}`;
        const slotLevel =
          bId === undefined
            ? undefined
            : await this.#bodyControl(operation, bPath, slot, bId, target);
        if (slotLevel === undefined) {
          entry.notes.push(
            `no body carrying tenant B's own ${target} was accepted: the attack may stop at validation`,
          );
        }
        const body = slotLevel === undefined ? base() : this.#bodyFor(b, operation, slotLevel);
        const value = slot.array ? (bId === undefined ? [aId] : [bId, aId]) : aId;
        plan(
          'body-id',
          `${target}${slot.array && bId !== undefined ? " (B's and A's)" : ''}`,
          bPath,
          [],
          withValueAt(isObject(body) ? body : {}, slot.pointer, value),
        );
      }
      const tenantId = a.credentials.tenantId;
      if (tenantId !== undefined) {
        for (const property of ['tenant_id', 'tenantId']) {
          plan('body-tenant', `body /${property}`, bPath, [], { ...base(), [property]: tenantId });
        }
      }
      const properties = bodyProperties(this.#options.openapi, operation.bodySchema);
      for (const [name, value] of Object.entries(a.credentials.pathParameters ?? {})) {
        if (!properties.has(name)) continue;
        plan('body-address', `body /${name} of A`, bPath, [], { ...base(), [name]: value });
      }
    }

    for (const attack of planned) await this.#execute(operation, attack);
  }

  /**
   * Finds a body level at which tenant B's own id in `slot` is accepted (2xx), so that the attack
   * with A's id differs from a working request in that id alone.
   */
  async #bodyControl(
    operation: ParsedOperation,
    path: Record<string, string>,
    slot: IdSlot,
    bId: string,
    target: string,
  ): Promise<BodyLevel | undefined> {
    const b = this.#b;
    const url = fillPath(operation.path, path);
    let status = 0;
    for (const level of this.#levelsFor(b, operation)) {
      const built = this.#bodyFor(b, operation, level);
      if (built === unbuildable || !isObject(built)) continue;
      const body = withValueAt(built, slot.pointer, slot.array ? [bId] : bId);
      const headers = this.#headersFor(b, operation, resourceUrl(operation, path), body);
      const response = await this.#send(b, operation.key, {
        method: operation.method,
        url,
        headers,
        body,
      });
      status = response?.status ?? 0;
      if (response !== undefined) this.#rememberEtag(b, operation, path, response);
      if (status >= 200 && status < 300) {
        this.#entry(operation.key).controls.push({ target, url, status });
        return level;
      }
    }
    this.#entry(operation.key).controls.push({ target, url, status });
    return undefined;
  }

  #headersFor(
    etagOwner: TenantState,
    operation: ParsedOperation,
    resource: string,
    body: unknown,
  ): Record<string, string> {
    const headers: Record<string, string> = { ...this.#b.credentials.headers };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (
      operation.method === 'PATCH' ||
      operation.method === 'PUT' ||
      operation.method === 'DELETE'
    ) {
      const etag = etagOwner.etags.get(resource);
      if (etag !== undefined) headers['if-match'] = etag;
    }
    return headers;
  }

  #rememberEtag(
    state: TenantState,
    operation: ParsedOperation,
    path: Record<string, string>,
    response: AttackResponse,
  ): void {
    const etag = response.headers.etag;
    if (etag !== undefined && response.status >= 200 && response.status < 300) {
      state.etags.set(resourceUrl(operation, path), etag);
    }
  }

  async #execute(operation: ParsedOperation, planned: PlannedAttack): Promise<void> {
    this.#attempts += 1;
    const url = fillPath(operation.path, planned.path) + queryString(planned.query);
    const request: AttackRequest = {
      method: operation.method,
      url,
      headers: this.#headersFor(
        planned.etagFrom,
        operation,
        resourceUrl(operation, planned.path),
        planned.body,
      ),
      ...(planned.body === undefined ? {} : { body: planned.body }),
    };
    const requestText =
      `${url}\n${safeDecode(url)}\n${planned.body === undefined ? '' : JSON.stringify(planned.body)}`.toLowerCase();
    const attack = {
      ...planned,
      carried: new Set(this.#aValues.filter((value) => requestText.includes(value))),
    };
    const findingsBefore = this.#findings.length;
    const where = `${request.method} ${request.url}`;
    let response: AttackResponse;
    try {
      response = await this.#options.request(request);
    } catch (error) {
      this.#addFinding(operation.key, {
        kind: 'request-failed',
        operation: operation.key,
        attack: attack.kind,
        request: where,
        message: `the request could not be sent: ${error instanceof Error ? error.message : String(error)}`,
      });
      this.#entry(operation.key).attempts.push(
        Object.freeze({
          kind: attack.kind,
          target: attack.target,
          method: request.method,
          url: request.url,
          status: 0,
          outcome: 'finding' as const,
        }),
      );
      return;
    }
    const status = response.status;
    const success = status >= 200 && status < 400;
    const base = { operation: operation.key, attack: attack.kind, request: where, status };
    if (status >= 500) {
      this.#addFinding(operation.key, {
        ...base,
        kind: 'server-error',
        message: `tenant B's attack (${attack.target}) failed on the server instead of being refused`,
        evidence: truncate(response.body, 300),
      });
    } else if (this.#options.inconclusiveStatuses.has(status)) {
      this.#addFinding(operation.key, {
        ...base,
        kind: 'inconclusive',
        message: `the attack (${attack.target}) never reached the route: fix tenant B's credentials or limits`,
        evidence: truncate(response.body, 200),
      });
    } else if (
      success &&
      writeMethods.has(operation.method) &&
      attack.kind !== 'body-tenant' &&
      attack.kind !== 'plain' &&
      attack.carried.size > 0
    ) {
      this.#addFinding(operation.key, {
        ...base,
        kind: 'accepted',
        message: `a write naming tenant A's ${[...attack.carried].slice(0, 3).join(', ')} (${attack.target}) succeeded`,
        evidence: truncate(response.body, 300),
      });
    }
    const text = responseText(response).toLowerCase();
    const exempt = attack.kind === 'body-tenant' && success ? new Set<string>() : attack.carried;
    const leaked = this.#aValues.find((value) => !exempt.has(value) && text.includes(value));
    if (leaked !== undefined) {
      this.#addFinding(operation.key, {
        ...base,
        kind: 'leak',
        message: `the response to tenant B (${attack.target}) contains tenant A's value "${leaked}"`,
        evidence: excerpt(responseText(response), leaked),
      });
    }
    this.#checkHygiene(operation.key, attack.kind, request, response);
    this.#entry(operation.key).attempts.push(
      Object.freeze({
        kind: attack.kind,
        target: attack.target,
        method: request.method,
        url: request.url,
        status,
        outcome:
          this.#findings.length > findingsBefore
            ? ('finding' as const)
            : status >= 400
              ? ('refused' as const)
              : ('answered' as const),
      }),
    );
  }

  async #checkSnapshot(operationKey: string): Promise<void> {
    if (this.#options.snapshot === undefined || this.#baseline === undefined) return;
    const current = canonicalJson(await this.#options.snapshot());
    if (current === this.#baseline) return;
    this.#addFinding(operationKey, {
      kind: 'snapshot-changed',
      operation: operationKey,
      message: `tenant A's data changed while tenant B attacked this operation: ${snapshotDifference(this.#baseline, current)}`,
    });
    this.#baseline = current;
  }
}

const unbuildable = Symbol('unbuildable');

function newTenantState(label: 'a' | 'b', credentials: AttackTenant): TenantState {
  return {
    label,
    credentials,
    idsByStem: new Map(),
    ids: new Set(),
    valuesByProperty: new Map(),
    generated: new Set(),
    generatedByStem: new Map(),
    secrets: new Set(),
    etags: new Map(),
    cursors: new Map(),
    bodyLevels: new Map(),
    responses: [],
  };
}

/** The ids and values only this tenant has: what must never reach the other one. */
function tenantValues(
  state: TenantState,
  options: ResolvedOptions,
  excluded: (value: string) => boolean,
): string[] {
  const values = new Set<string>();
  const add = (value: string | undefined, minimum: number) => {
    if (value === undefined) return;
    const lower = value.toLowerCase();
    if (lower.length < minimum || options.ignoreValues.has(lower) || excluded(lower)) return;
    values.add(lower);
  };
  for (const id of state.ids) add(id, 36);
  add(state.credentials.tenantId, 1);
  for (const value of Object.values(state.credentials.pathParameters ?? {})) add(value, 3);
  for (const value of state.credentials.values ?? []) add(value, 3);
  for (const value of state.generated) {
    if (!/^[0-9]+$/.test(value)) add(value, 8);
  }
  for (const value of state.secrets) add(value, 16);
  return [...values].sort((left, right) => right.length - left.length);
}

function parseOperations(options: ResolvedOptions): ParsedOperation[] {
  const paths = options.openapi.paths as Schema;
  const operations: ParsedOperation[] = [];
  const prefixes = [...options.pathPrefixes].sort((left, right) => right.length - left.length);
  for (const [path, rawItem] of Object.entries(paths)) {
    if (!isObject(rawItem)) continue;
    const item = resolveSchema(options.openapi, rawItem);
    for (const [lowerMethod, rawOperation] of Object.entries(item)) {
      const method = lowerMethod.toUpperCase();
      if (!methodOrder.includes(method) || !isObject(rawOperation)) continue;
      const operation = resolveSchema(options.openapi, rawOperation);
      const prefix = prefixes.find(
        (candidate) => path === candidate || path.startsWith(`${candidate}/`),
      );
      const resourcePath = prefix === undefined ? path : path.slice(prefix.length) || '/';
      const resourceKey = `${method} ${resourcePath}`;
      const key = `${method} ${path}`;
      const parameters = [
        ...(Array.isArray(item.parameters) ? item.parameters : []),
        ...(Array.isArray(operation.parameters) ? operation.parameters : []),
      ]
        .filter(isObject)
        .map((parameter) => resolveSchema(options.openapi, parameter));
      const placeholders = [...path.matchAll(/\{([^}]+)\}/g)].map((match) => match[1] as string);
      const pathSchemas = new Map<string, Schema>();
      const query: QueryParameter[] = [];
      for (const parameter of parameters) {
        if (typeof parameter.name !== 'string') continue;
        const schema = isObject(parameter.schema) ? parameter.schema : {};
        if (parameter.in === 'path') pathSchemas.set(parameter.name, schema);
        else if (parameter.in === 'query') query.push({ name: parameter.name, schema });
      }
      const content = isObject(operation.requestBody)
        ? resolveSchema(options.openapi, operation.requestBody).content
        : undefined;
      let bodySchema: Schema | undefined;
      let otherBody = false;
      if (isObject(content)) {
        const json = Object.entries(content).find(([type]) =>
          /^application\/(?:[\w.+-]+\+)?json\b/.test(type),
        );
        if (json !== undefined && isObject(json[1]) && isObject(json[1].schema))
          bodySchema = json[1].schema;
        else if (Object.keys(content).length > 0) otherBody = true;
      }
      const route = options.routes[key] ?? options.routes[resourceKey] ?? {};
      operations.push({
        key,
        method,
        path,
        resourcePath,
        resourceKey,
        primary: false,
        placeholders,
        pathSchemas,
        query,
        bodySchema,
        otherBody,
        stem: resourceStem(resourcePath),
        route,
        skipReason: skipReasonOf(options, method, path, operation, route),
      });
    }
  }
  // The variant under the first prefix creates and reads; the others are only attacked.
  const rank = (operation: ParsedOperation) => {
    const index = options.pathPrefixes.findIndex(
      (prefix) => operation.path === prefix || operation.path.startsWith(`${prefix}/`),
    );
    return index === -1 ? options.pathPrefixes.length : index;
  };
  const primaries = new Map<string, ParsedOperation>();
  for (const operation of operations) {
    if (operation.skipReason !== undefined) continue;
    const current = primaries.get(operation.resourceKey);
    if (current === undefined || rank(operation) < rank(current)) {
      primaries.set(operation.resourceKey, operation);
    }
  }
  return operations.map((operation) => ({
    ...operation,
    primary: primaries.get(operation.resourceKey) === operation,
  }));
}

function skipReasonOf(
  options: ResolvedOptions,
  method: string,
  path: string,
  operation: Schema,
  route: AttackRouteOptions,
): string | undefined {
  if (route.skip !== undefined) return route.skip;
  for (const skip of options.skip) {
    if (skip.method !== undefined && skip.method.toUpperCase() !== method) continue;
    const matches = typeof skip.path === 'string' ? skip.path === path : skip.path.test(path);
    if (matches) return skip.reason;
  }
  if (Array.isArray(operation.security) && operation.security.length === 0) {
    return 'declares security: [] (no credentials, so no tenant to act as)';
  }
  return undefined;
}

interface IdSlot {
  readonly pointer: readonly string[];
  readonly stem: string;
  readonly array: boolean;
  readonly required: boolean;
}

/** The properties of a body schema that hold ids (scalars and arrays), nested objects included. */
function idSlots(options: ResolvedOptions, schema: Schema, contextStem: string): IdSlot[] {
  const slots: IdSlot[] = [];
  const walk = (node: Schema, pointer: string[], required: boolean, depth: number) => {
    const resolved = pickBranch(resolveSchema(options.openapi, node));
    if (depth > 4 || !isObject(resolved.properties)) return;
    const requiredNames = Array.isArray(resolved.required) ? resolved.required : [];
    for (const [name, raw] of Object.entries(resolved.properties)) {
      if (!isObject(raw)) continue;
      const property = pickBranch(resolveSchema(options.openapi, raw));
      const isRequired = required && requiredNames.includes(name);
      const stem = stemForName(options, name, contextStem);
      if (isIdSchema(options, property, name)) {
        slots.push({ pointer: [...pointer, name], stem, array: false, required: isRequired });
      } else if (property.type === 'array' && isObject(property.items)) {
        const items = pickBranch(resolveSchema(options.openapi, property.items));
        if (isIdSchema(options, items, name)) {
          slots.push({ pointer: [...pointer, name], stem, array: true, required: isRequired });
        }
      } else if (property.type === 'object' || isObject(property.properties)) {
        walk(property, [...pointer, name], isRequired, depth + 1);
      }
    }
  };
  walk(schema, [], true, 0);
  return slots;
}

function isIdSchema(options: ResolvedOptions, schema: Schema, name: string): boolean {
  if (schema.format === 'uuid') return true;
  return (
    (schema.type === 'string' || schema.type === undefined) &&
    schema.enum === undefined &&
    (isIdName(name) || options.references.has(name))
  );
}

function bodyProperties(openapi: Schema, schema: Schema): Set<string> {
  const resolved = pickBranch(resolveSchema(openapi, schema));
  return new Set(isObject(resolved.properties) ? Object.keys(resolved.properties) : []);
}

/** Builds a JSON value that satisfies a schema, with the tenant's ids where the schema wants ids. */
class BodyBuilder {
  readonly generated: string[] = [];
  readonly #options: ResolvedOptions;
  readonly #state: TenantState;
  readonly #level: BodyLevel;
  readonly #stem: string;

  constructor(options: ResolvedOptions, state: TenantState, level: BodyLevel, stem: string) {
    this.#options = options;
    this.#state = state;
    this.#level = level;
    this.#stem = stem;
  }

  value(raw: Schema, name: string, topLevel = false, depth = 0): unknown {
    if (depth > 6) return undefined;
    const schema = pickBranch(resolveSchema(this.#options.openapi, raw));
    if (schema.const !== undefined) return schema.const;
    if (Array.isArray(schema.enum)) return schema.enum.find((value) => value !== null);
    if (isIdSchema(this.#options, schema, name) && name !== '') {
      const [id] = this.#state.idsByStem.get(stemForName(this.#options, name, this.#stem)) ?? [];
      return id;
    }
    const type = schemaType(schema);
    switch (type) {
      case 'object':
        return this.#object(schema, topLevel, depth);
      case 'array':
        return this.#array(schema, name, depth);
      case 'string':
        return this.#string(schema);
      case 'integer':
      case 'number':
        return numberFor(schema, type === 'integer');
      case 'boolean':
        return typeof schema.default === 'boolean' ? schema.default : false;
      case 'null':
        return null;
      default:
        return undefined;
    }
  }

  #object(schema: Schema, topLevel: boolean, depth: number): unknown {
    const properties = isObject(schema.properties) ? schema.properties : {};
    const required = new Set(
      Array.isArray(schema.required)
        ? schema.required.filter((name) => typeof name === 'string')
        : [],
    );
    const result: Record<string, unknown> = {};
    for (const [name, raw] of Object.entries(properties)) {
      if (!isObject(raw)) continue;
      const isRequired = required.has(name);
      const isReference = this.#isReference(raw, name);
      const wanted =
        isRequired || this.#level === 'full' || (this.#level === 'references' && isReference);
      if (!wanted) continue;
      const value = this.value(raw, name, false, depth + 1);
      if (value === undefined) {
        if (isRequired) return undefined;
        continue;
      }
      result[name] = value;
    }
    const minProperties = typeof schema.minProperties === 'number' ? schema.minProperties : 0;
    if (
      Object.keys(result).length < Math.max(minProperties, topLevel && required.size === 0 ? 1 : 0)
    ) {
      for (const [name, raw] of Object.entries(properties)) {
        if (name in result || !isObject(raw)) continue;
        const value = this.value(raw, name, false, depth + 1);
        if (value === undefined) continue;
        result[name] = value;
        if (Object.keys(result).length >= Math.max(minProperties, 1)) break;
      }
    }
    return result;
  }

  #isReference(raw: Schema, name: string): boolean {
    const schema = pickBranch(resolveSchema(this.#options.openapi, raw));
    if (isIdSchema(this.#options, schema, name)) return true;
    if (schema.type === 'array' && isObject(schema.items)) {
      return isIdSchema(
        this.#options,
        pickBranch(resolveSchema(this.#options.openapi, schema.items)),
        name,
      );
    }
    return false;
  }

  #array(schema: Schema, name: string, depth: number): unknown {
    const minItems = typeof schema.minItems === 'number' ? schema.minItems : 0;
    const maxItems =
      typeof schema.maxItems === 'number' ? schema.maxItems : Number.POSITIVE_INFINITY;
    if (!isObject(schema.items)) return minItems === 0 ? [] : undefined;
    const items = pickBranch(resolveSchema(this.#options.openapi, schema.items));
    if (isIdSchema(this.#options, items, name)) {
      const ids = this.#state.idsByStem.get(stemForName(this.#options, name, this.#stem)) ?? [];
      const chosen = ids.slice(
        0,
        Math.min(maxItems, Math.max(minItems, this.#options.objectsPerRoute)),
      );
      return chosen.length === 0 || chosen.length < minItems ? undefined : chosen;
    }
    const count = Math.min(maxItems, Math.max(minItems, this.#level === 'full' ? 1 : 0));
    const values: unknown[] = [];
    for (let index = 0; index < count; index += 1) {
      const value = this.value(items, '', false, depth + 1);
      if (value === undefined) return minItems === 0 ? [] : undefined;
      values.push(value);
    }
    return values;
  }

  #string(schema: Schema): string | undefined {
    const value = stringFor(schema, this.#state);
    if (value !== undefined && value.length >= 8 && !dateLike.test(value)) {
      this.generated.push(value);
    }
    return value;
  }
}

function schemaType(schema: Schema): string | undefined {
  if (typeof schema.type === 'string') return schema.type;
  if (Array.isArray(schema.type)) {
    return schema.type.find((type) => type !== 'null') ?? schema.type[0];
  }
  if (isObject(schema.properties)) return 'object';
  if (isObject(schema.items)) return 'array';
  return undefined;
}

function numberFor(schema: Schema, integer: boolean): number {
  let low = typeof schema.minimum === 'number' ? schema.minimum : Number.NEGATIVE_INFINITY;
  if (typeof schema.exclusiveMinimum === 'number')
    low = Math.max(low, schema.exclusiveMinimum + (integer ? 1 : 0.001));
  let high = typeof schema.maximum === 'number' ? schema.maximum : Number.POSITIVE_INFINITY;
  if (typeof schema.exclusiveMaximum === 'number')
    high = Math.min(high, schema.exclusiveMaximum - (integer ? 1 : 0.001));
  let value = Math.min(Math.max(1, low), high);
  if (typeof schema.default === 'number') value = schema.default;
  if (typeof schema.multipleOf === 'number' && schema.multipleOf > 0) {
    value = Math.ceil(value / schema.multipleOf) * schema.multipleOf;
  }
  return integer ? Math.ceil(value) : value;
}

function uniqueValue(state: TenantState): string {
  return `tnt${state.label}${randomBytes(5).toString('hex')}`;
}

/** A string for a schema: a unique marker when the schema allows one, else a sample of its pattern. */
function stringFor(schema: Schema, state: TenantState): string | undefined {
  const minLength = typeof schema.minLength === 'number' ? schema.minLength : 0;
  const maxLength = typeof schema.maxLength === 'number' ? schema.maxLength : 10_000;
  const marker = uniqueValue(state);
  const fits = (value: string) =>
    value.length >= minLength &&
    value.length <= maxLength &&
    (typeof schema.pattern !== 'string' || testPattern(schema.pattern, value));
  const candidates: string[] = [];
  switch (schema.format) {
    case 'uuid':
      candidates.push(randomUUID());
      break;
    case 'email':
      candidates.push(`${marker}@example.test`);
      break;
    case 'date-time':
      candidates.push(new Date(Date.now() + 86_400_000).toISOString());
      break;
    case 'date':
      candidates.push(new Date().toISOString().slice(0, 10));
      break;
    case 'time':
      candidates.push('12:00:00Z');
      break;
    case 'uri':
    case 'url':
    case 'iri':
      candidates.push(`https://example.test/${marker}`);
      break;
    case 'hostname':
      candidates.push(`${marker}.example.test`);
      break;
    case 'ipv4':
      candidates.push('192.0.2.10');
      break;
    case 'ipv6':
      candidates.push('2001:db8::10');
      break;
  }
  candidates.push(marker, marker.replace(/[^a-z0-9]/g, ''), `${marker}_x`, marker.toUpperCase());
  if (minLength > marker.length) candidates.push(marker.padEnd(minLength, 'x'));
  if (typeof schema.pattern === 'string') {
    for (let attempt = 0; attempt < 5; attempt += 1) {
      const sample = samplePattern(schema.pattern, minLength, maxLength);
      if (sample !== undefined) candidates.push(sample);
    }
  }
  for (const example of [
    ...(Array.isArray(schema.examples) ? schema.examples : []),
    schema.example,
    schema.default,
  ]) {
    if (typeof example === 'string') candidates.push(example);
  }
  if (maxLength < marker.length)
    candidates.push(randomBytes(maxLength).toString('hex').slice(0, maxLength));
  return candidates.find(fits);
}

function testPattern(pattern: string, value: string): boolean {
  try {
    return new RegExp(pattern, 'u').test(value);
  } catch {
    try {
      return new RegExp(pattern).test(value);
    } catch {
      return false;
    }
  }
}

type PatternNode =
  | { readonly type: 'chars'; readonly chars: readonly string[] }
  | { readonly type: 'sequence'; readonly items: readonly PatternNode[] }
  | { readonly type: 'choice'; readonly options: readonly PatternNode[] }
  | {
      readonly type: 'repeat';
      readonly node: PatternNode;
      readonly min: number;
      readonly max: number;
    };

const printable = Array.from({ length: 0x7e - 0x20 }, (_, index) =>
  String.fromCharCode(0x21 + index),
);
const classEscapes: Readonly<Record<string, (char: string) => boolean>> = {
  d: (char) => /[0-9]/.test(char),
  w: (char) => /\w/.test(char),
  s: (char) => char === ' ',
};

/**
 * A random string matching a regular expression of the common subset (classes, groups,
 * alternation, quantifiers); `undefined` for anything else (lookarounds, back-references).
 */
function samplePattern(pattern: string, minLength: number, maxLength: number): string | undefined {
  let position = 0;
  const unsupported = new Error('unsupported pattern');
  const peek = () => pattern[position];
  const escapeChars = (char: string): readonly string[] => {
    const lower = char.toLowerCase();
    const test = classEscapes[lower];
    if (test !== undefined) {
      const negate = char !== lower;
      return [...printable, ' '].filter((candidate) => test(candidate) !== negate);
    }
    if (/[1-9]/.test(char) || char === 'b' || char === 'B' || char === 'k') throw unsupported;
    if (char === 'n') return ['\n'];
    if (char === 't') return ['\t'];
    return [char];
  };
  const parseClass = (): PatternNode => {
    let negate = false;
    if (peek() === '^') {
      negate = true;
      position += 1;
    }
    const members = new Set<string>();
    let first = true;
    while (position < pattern.length && (peek() !== ']' || first)) {
      first = false;
      let char = pattern[position++] as string;
      let set: readonly string[];
      if (char === '\\') {
        set = escapeChars(pattern[position++] ?? '');
        if (set.length > 1) {
          for (const member of set) members.add(member);
          continue;
        }
        char = set[0] as string;
      }
      if (peek() === '-' && pattern[position + 1] !== ']' && pattern[position + 1] !== undefined) {
        position += 1;
        let end = pattern[position++] as string;
        if (end === '\\') end = pattern[position++] ?? '';
        for (let code = char.charCodeAt(0); code <= end.charCodeAt(0); code += 1) {
          members.add(String.fromCharCode(code));
        }
      } else members.add(char);
    }
    if (peek() !== ']') throw unsupported;
    position += 1;
    const chars = negate ? printable.filter((char) => !members.has(char)) : [...members];
    return { type: 'chars', chars };
  };
  const parseAtom = (): PatternNode | undefined => {
    const char = pattern[position++] as string;
    switch (char) {
      case '^':
      case '$':
        return undefined;
      case '(': {
        if (peek() === '?') {
          if (pattern[position + 1] === ':') position += 2;
          else if (pattern[position + 1] === '<' && /[A-Za-z]/.test(pattern[position + 2] ?? '')) {
            position = pattern.indexOf('>', position) + 1;
            if (position === 0) throw unsupported;
          } else throw unsupported;
        }
        const inner = parseChoice();
        if (peek() !== ')') throw unsupported;
        position += 1;
        return inner;
      }
      case '[':
        return parseClass();
      case '.':
        return { type: 'chars', chars: printable };
      case '\\':
        return { type: 'chars', chars: escapeChars(pattern[position++] ?? '') };
      case '*':
      case '+':
      case '?':
      case ')':
      case '|':
        throw unsupported;
      default:
        return { type: 'chars', chars: [char] };
    }
  };
  const parseQuantifier = (node: PatternNode): PatternNode => {
    const char = peek();
    let min: number;
    let max: number;
    if (char === '?') [min, max] = [0, 1];
    else if (char === '*') [min, max] = [0, Number.POSITIVE_INFINITY];
    else if (char === '+') [min, max] = [1, Number.POSITIVE_INFINITY];
    else if (char === '{') {
      const match = /^\{(\d+)(,(\d*))?\}/.exec(pattern.slice(position));
      if (match === null) return node;
      min = Number(match[1]);
      max =
        match[2] === undefined
          ? min
          : match[3] === ''
            ? Number.POSITIVE_INFINITY
            : Number(match[3]);
      position += match[0].length - 1;
    } else return node;
    position += 1;
    if (peek() === '?' || peek() === '+') position += 1;
    return { type: 'repeat', node, min, max };
  };
  const parseSequence = (): PatternNode => {
    const items: PatternNode[] = [];
    while (position < pattern.length && peek() !== '|' && peek() !== ')') {
      const atom = parseAtom();
      if (atom !== undefined) items.push(parseQuantifier(atom));
    }
    return { type: 'sequence', items };
  };
  const parseChoice = (): PatternNode => {
    const options = [parseSequence()];
    while (peek() === '|') {
      position += 1;
      options.push(parseSequence());
    }
    return options.length === 1 ? (options[0] as PatternNode) : { type: 'choice', options };
  };
  let tree: PatternNode;
  try {
    tree = parseChoice();
    if (position !== pattern.length) return undefined;
  } catch {
    return undefined;
  }
  const target = Math.min(Math.max(minLength, 10), maxLength);
  const render = (node: PatternNode): string => {
    switch (node.type) {
      case 'chars': {
        const preferred = node.chars.filter((char) => /[a-z0-9]/i.test(char));
        const from = preferred.length > 0 ? preferred : node.chars;
        return from.length === 0 ? '' : (from[randomInt(from.length)] as string);
      }
      case 'sequence':
        return node.items.map(render).join('');
      case 'choice':
        return render(node.options[randomInt(node.options.length)] as PatternNode);
      case 'repeat': {
        const count = Math.min(
          node.max,
          Math.max(node.min, node.max === 1 ? 1 : Math.min(8, target)),
        );
        let text = '';
        for (let index = 0; index < count; index += 1) text += render(node.node);
        return text;
      }
    }
  };
  return render(tree);
}

function resolveSchema(openapi: Schema, schema: Schema, depth = 0): Schema {
  let current = schema;
  while (typeof current.$ref === 'string' && depth < 32) {
    const target = resolvePointer(openapi, current.$ref);
    if (target === undefined) return {};
    const { $ref: _ref, ...rest } = current;
    current = { ...target, ...rest };
    depth += 1;
  }
  if (Array.isArray(current.allOf)) {
    const merged: Record<string, unknown> = { ...current };
    delete merged.allOf;
    const properties: Record<string, unknown> = isObject(current.properties)
      ? { ...current.properties }
      : {};
    const required = new Set<unknown>(Array.isArray(current.required) ? current.required : []);
    for (const part of current.allOf) {
      if (!isObject(part)) continue;
      const resolved = resolveSchema(openapi, part, depth + 1);
      Object.assign(properties, isObject(resolved.properties) ? resolved.properties : {});
      for (const name of Array.isArray(resolved.required) ? resolved.required : [])
        required.add(name);
      for (const [key, value] of Object.entries(resolved)) {
        if (key !== 'properties' && key !== 'required' && merged[key] === undefined)
          merged[key] = value;
      }
    }
    if (Object.keys(properties).length > 0) merged.properties = properties;
    if (required.size > 0) merged.required = [...required];
    return merged;
  }
  return current;
}

function resolvePointer(openapi: Schema, ref: string): Schema | undefined {
  if (!ref.startsWith('#/')) return undefined;
  let node: unknown = openapi;
  for (const raw of ref.slice(2).split('/')) {
    const key = decodeURIComponent(raw).replaceAll('~1', '/').replaceAll('~0', '~');
    if (!isObject(node)) return undefined;
    node = node[key];
  }
  return isObject(node) ? node : undefined;
}

/** The branch of an `anyOf`/`oneOf` to generate: the first that is not `null`. */
function pickBranch(schema: Schema): Schema {
  const branches = Array.isArray(schema.anyOf)
    ? schema.anyOf
    : Array.isArray(schema.oneOf)
      ? schema.oneOf
      : undefined;
  if (branches === undefined) return schema;
  const { anyOf: _anyOf, oneOf: _oneOf, ...rest } = schema;
  const chosen =
    branches.find((branch) => isObject(branch) && branch.type !== 'null') ?? branches[0];
  return isObject(chosen) ? { ...rest, ...chosen } : rest;
}

function harvest(
  state: TenantState,
  value: unknown,
  stem: string,
  property: string | undefined,
  options: ResolvedOptions,
): void {
  if (typeof value === 'string') {
    if (uuidPattern.test(value)) {
      const id = value.toLowerCase();
      state.ids.add(id);
      if (property !== undefined && (isIdName(property) || options.references.has(property))) {
        addId(state, stemForName(options, property, stem), id);
      }
    } else if (
      property !== undefined &&
      secretLikeKey.test(property) &&
      value.length >= 16 &&
      !dateLike.test(value)
    ) {
      state.secrets.add(value.toLowerCase());
    }
    if (property !== undefined && value.length <= 200) {
      const values = state.valuesByProperty.get(property) ?? new Set<string>();
      values.add(value);
      state.valuesByProperty.set(property, values);
    }
    return;
  }
  if (Array.isArray(value)) {
    for (const item of value) harvest(state, item, stem, property, options);
    return;
  }
  if (!isObject(value)) return;
  if (typeof value.id === 'string' && uuidPattern.test(value.id))
    addId(state, stem, value.id.toLowerCase());
  for (const [key, child] of Object.entries(value)) {
    if (key === 'id') {
      if (typeof child === 'string' && uuidPattern.test(child)) state.ids.add(child.toLowerCase());
      continue;
    }
    const nested = isObject(child) || (Array.isArray(child) && child.some(isObject));
    const childStem = nested ? (containerKeys.has(key.toLowerCase()) ? stem : stemOf(key)) : stem;
    harvest(state, child, childStem, key, options);
  }
}

function harvestHeaders(state: TenantState, headers: Readonly<Record<string, string>>): void {
  for (const [name, value] of Object.entries(headers)) {
    if (name === 'location' || name === 'content-location' || name === 'link') {
      for (const match of value.matchAll(uuidsInText)) state.ids.add(match[0].toLowerCase());
    }
  }
}

function addId(state: TenantState, stem: string, id: string): void {
  const ids = state.idsByStem.get(stem) ?? [];
  if (!ids.includes(id)) ids.push(id);
  state.idsByStem.set(stem, ids);
}

function hasIds(state: TenantState, stem: string): boolean {
  return (state.idsByStem.get(stem)?.length ?? 0) > 0;
}

function isIdName(name: string): boolean {
  return /^(?:id|ids|uuid)$/i.test(name) || /[a-z0-9](?:Ids?|IDs?|_ids?|_IDS?)$/.test(name);
}

/** The kind of object a property or parameter name refers to: `tagIds` → `tag`, `id` → the context. */
function stemForName(options: ResolvedOptions, name: string, contextStem: string): string {
  const reference = options.references.get(name);
  if (reference !== undefined) return reference;
  if (/^(?:id|ids|uuid)$/i.test(name)) return contextStem;
  const match = /^(.*[a-z0-9])(?:Ids?|IDs?|_ids?|_IDS?)$/.exec(name);
  return stemOf(match === null ? name : (match[1] as string));
}

/** Normalises a kind name: lower case, letters and digits only, singular. */
function stemOf(name: string): string {
  const word = name.toLowerCase().replace(/[^a-z0-9]/g, '');
  if (word.endsWith('ies') && word.length > 4) return `${word.slice(0, -3)}y`;
  if (/(?:sses|xes|ches|shes)$/.test(word)) return word.slice(0, -2);
  if (word.endsWith('s') && !word.endsWith('ss') && word.length > 1) return word.slice(0, -1);
  return word;
}

function resourceStem(resourcePath: string): string {
  const segments = resourcePath
    .split('/')
    .filter((segment) => segment !== '' && !segment.startsWith('{'));
  return stemOf(segments.at(-1) ?? 'root');
}

/** The kind a path placeholder names by position: `/contacts/{id}` → `contact`. */
function contextStemOf(path: string, placeholder: string): string {
  const segments = path.split('/');
  const index = segments.indexOf(`{${placeholder}}`);
  for (let cursor = index - 1; cursor >= 0; cursor -= 1) {
    const segment = segments[cursor] as string;
    if (segment !== '' && !segment.startsWith('{')) return stemOf(segment);
  }
  return 'root';
}

/** A key for one concrete object behind an operation, the same under every prefix. */
function resourceUrl(operation: ParsedOperation, values: Readonly<Record<string, string>>): string {
  return operation.resourcePath.replace(
    /\{([^}]+)\}/g,
    (_, name: string) => values[name] ?? `{${name}}`,
  );
}

function fillPath(path: string, values: Readonly<Record<string, string>>): string {
  return path.replace(/\{([^}]+)\}/g, (_, name: string) => encodeURIComponent(values[name] ?? ''));
}

function queryString(entries: readonly [string, string][]): string {
  if (entries.length === 0) return '';
  return `?${new URLSearchParams(entries).toString()}`;
}

function findCursor(value: unknown, depth = 0): string | undefined {
  if (!isObject(value) || depth > 2) return undefined;
  for (const [key, child] of Object.entries(value)) {
    if (
      typeof child === 'string' &&
      child !== '' &&
      /^(?:next_?cursor|cursor|next|next_?page_?token|end_?cursor|continuation_?token)$/i.test(
        key,
      ) &&
      !child.includes('://') &&
      !child.startsWith('/')
    ) {
      return child;
    }
  }
  for (const child of Object.values(value)) {
    const found = findCursor(child, depth + 1);
    if (found !== undefined) return found;
  }
  return undefined;
}

function withValueAt(
  body: Record<string, unknown>,
  pointer: readonly string[],
  value: unknown,
): unknown {
  const copy: Record<string, unknown> = structuredClone(body);
  let node = copy;
  for (const key of pointer.slice(0, -1)) {
    const next = node[key];
    node[key] = isObject(next) ? { ...next } : {};
    node = node[key] as Record<string, unknown>;
  }
  node[pointer.at(-1) as string] = value;
  return copy;
}

function responseText(response: AttackResponse): string {
  const headers = Object.entries(response.headers)
    .filter(([name]) => name !== 'date' && name !== 'content-length')
    .map(([name, value]) => `${name}: ${value}`)
    .join('\n');
  return `${headers}\n\n${response.body}`;
}

function flattenHeaders(
  headers: Record<string, string | string[] | number | undefined>,
): Record<string, string> {
  const flat: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    flat[name.toLowerCase()] = Array.isArray(value) ? value.join(', ') : String(value);
  }
  return flat;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, child: unknown) => {
    if (!isObject(child)) return child;
    return Object.fromEntries(
      Object.entries(child).sort(([left], [right]) => left.localeCompare(right)),
    );
  });
}

function snapshotDifference(before: string, after: string): string {
  const left = parseJson(before);
  const right = parseJson(after);
  if (isObject(left) && isObject(right)) {
    const keys = [...new Set([...Object.keys(left), ...Object.keys(right)])].filter(
      (key) => canonicalJson(left[key]) !== canonicalJson(right[key]),
    );
    if (keys.length > 0) return `changed: ${keys.join(', ')}`;
  }
  return `before ${truncate(before, 120)}, after ${truncate(after, 120)}`;
}

function excerpt(text: string, needle: string): string {
  const index = text.toLowerCase().indexOf(needle.toLowerCase());
  if (index === -1) return truncate(text, 160);
  const start = Math.max(0, index - 60);
  const end = Math.min(text.length, index + needle.length + 60);
  return `${start > 0 ? '…' : ''}${text.slice(start, end).replace(/\s+/g, ' ')}${end < text.length ? '…' : ''}`;
}

function truncate(text: string, length: number): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length <= length ? flat : `${flat.slice(0, length)}…`;
}

function safeDecode(url: string): string {
  try {
    return decodeURIComponent(url.replaceAll('+', ' '));
  } catch {
    return url;
  }
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function isObject(value: unknown): value is Readonly<Record<string, unknown>> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
