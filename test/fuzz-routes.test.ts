import assert from 'node:assert/strict';
import { createHash, createHmac, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import type { LightMyRequestResponse } from 'fastify';
import pg from 'pg';
import {
  addMember,
  bodyOf,
  createTestApp,
  createWorkspace,
  type TestApp,
  type TestWorkspace,
} from './app-fixtures.ts';

/**
 * Fuzzed bad input against every operation of the reference app's OpenAPI document: random
 * JSON bodies (wrong types, extra and missing members, deep nesting, huge strings, NUL and lone
 * surrogates), malformed JSON, invalid UTF-8, bodies above the limit, wrong content types,
 * random query strings and path parameters (not UUIDs, too long, encoded traversal, another
 * workspace's ids). Every answer must be below 500, every error problem+json with a `code`, a
 * request that must be refused must get a 4xx, and a 4xx must leave every table as it was.
 *
 * `TENANTRY_LONG=1` runs many more cases per route with a random seed; `TENANTRY_FUZZ_SEED`
 * replays a seed that fast-check printed.
 */

const long = process.env.TENANTRY_LONG === '1';
const runsPerRoute = long ? 200 : 15;
const seedOverride = process.env.TENANTRY_FUZZ_SEED;

interface JsonSchema {
  readonly type?: string | readonly string[];
  readonly properties?: Readonly<Record<string, JsonSchema>>;
  readonly required?: readonly string[];
  readonly additionalProperties?: boolean | JsonSchema;
  readonly items?: JsonSchema;
  readonly anyOf?: readonly JsonSchema[];
  readonly enum?: readonly unknown[];
  readonly const?: unknown;
  readonly minLength?: number;
  readonly maxLength?: number;
  readonly pattern?: string;
  readonly format?: string;
  readonly minimum?: number;
  readonly maximum?: number;
  readonly minItems?: number;
  readonly maxItems?: number;
  readonly uniqueItems?: boolean;
  readonly minProperties?: number;
  readonly maxProperties?: number;
}

interface Operation {
  readonly method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** The OpenAPI path, `{name}` for parameters. */
  readonly path: string;
  readonly pathParams: readonly string[];
  readonly queryParams: readonly string[];
  readonly body: JsonSchema | undefined;
}

/** How a part of a request was made, and whether it alone obliges the server to refuse. */
interface BodyPart {
  readonly kind: string;
  readonly contentType: string | undefined;
  readonly payload: string | Buffer;
  readonly mustReject: boolean;
}

interface RequestParts {
  /** Per path parameter: the real value, or a fuzzed (already percent-encoded) one. */
  readonly params: readonly { readonly name: string; readonly fuzzed: string | undefined }[];
  readonly query: string;
  readonly body: BodyPart | undefined;
  readonly idempotencyKey: string | undefined;
  readonly useEtag: boolean;
}

const methodsWithBody = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const problemCode = /^[A-Z][A-Z0-9]*_ERR_[A-Z0-9_]+$/;

let testApp: TestApp;
let owner: TestWorkspace;
let member: TestWorkspace;
let other: TestWorkspace;
let admin: pg.Client;
let operations: Operation[];
let bodyLimit: number;
/** Ids of the objects seeded in the fuzzed workspace, by kind (`contact`, `tag`, ...). */
const ids = new Map<string, string>();
/** Ids of the other workspace's objects: a fuzzed parameter may name one. */
const foreignIds: string[] = [];
let tables: string[];

function encodeBytes(bytes: Uint8Array): string {
  return [...bytes].map((byte) => `%${byte.toString(16).toUpperCase().padStart(2, '0')}`).join('');
}

/** Percent-encodes every byte of the UTF-8 form (a lone surrogate becomes U+FFFD's bytes). */
function encodeText(text: string): string {
  return encodeBytes(Buffer.from(text, 'utf8'));
}

const hostilePieces = [
  '\u0000',
  '\ud800',
  '\udfff',
  '\ud83d',
  '\u202e',
  '\u200b',
  '\ufeff',
  '\uffff',
  '\u2028',
  '\u0301',
  '\u001b[31m',
  '\x7f',
  '💩',
  'ﷺ',
  "'; drop table contacts; --",
  '" or 1=1 --',
  '\\',
  '%s%n',
  '{{1}}',
  '$1',
  '<script>alert(1)</script>',
  '../../etc/passwd',
  '\r\n',
  '\t',
  ' ',
];

/**
 * Strings of hostile pieces (NUL, lone surrogates, bidi overrides, SQL, templates) and arbitrary
 * code points, sometimes filled up to `maxLength`; never longer, never shorter than `minLength`.
 */
function hostileString(minLength = 0, maxLength = 64): fc.Arbitrary<string> {
  return fc
    .array(
      fc.oneof(
        fc.constantFrom(...hostilePieces),
        fc.string({ unit: 'binary', maxLength: 8 }),
        fc.string({ maxLength: 8 }),
      ),
      { maxLength: 12 },
    )
    .chain((pieces) =>
      fc.oneof(
        { weight: 4, arbitrary: fc.constant(pieces.join('')) },
        // Right at the limit, so length checks and column sizes meet.
        { weight: 1, arbitrary: fc.constant(`${pieces.join('')}${'é'.repeat(maxLength)}`) },
      ),
    )
    .map((text) => {
      const clipped = [...text].slice(0, maxLength);
      while (clipped.length < minLength) clipped.push('x');
      return clipped.join('');
    });
}

function typesOf(schema: JsonSchema): string[] {
  if (schema.type === undefined) return [];
  return typeof schema.type === 'string' ? [schema.type] : [...schema.type];
}

/** Values the schema accepts, made as hostile as the schema allows. */
function validValue(schema: JsonSchema, depth = 0): fc.Arbitrary<unknown> {
  if (schema.anyOf !== undefined) return fc.oneof(...schema.anyOf.map((s) => validValue(s, depth)));
  if (schema.enum !== undefined) return fc.constantFrom(...schema.enum);
  if (schema.const !== undefined) return fc.constant(schema.const);
  const [type] = typesOf(schema);
  switch (type) {
    case 'string':
      if (schema.format === 'uuid') {
        return fc.oneof(
          fc.uuid(),
          fc.constantFrom(...ids.values()),
          fc.constantFrom(...foreignIds),
        );
      }
      if (schema.format === 'email') return fc.emailAddress();
      if (schema.format === 'date-time') {
        return fc
          .date({ min: new Date('1970-01-01'), max: new Date('2200-01-01'), noInvalidDate: true })
          .map((date) => date.toISOString());
      }
      if (schema.pattern !== undefined) return fc.stringMatching(new RegExp(schema.pattern, 'u'));
      return hostileString(schema.minLength ?? 0, schema.maxLength ?? 2000);
    case 'integer':
      return fc.oneof(
        fc.integer({ min: schema.minimum ?? -(2 ** 31), max: schema.maximum ?? 2 ** 31 }),
        fc.constantFrom(schema.minimum ?? 0, schema.maximum ?? Number.MAX_SAFE_INTEGER),
      );
    case 'number':
      return fc.double({ noNaN: true, noDefaultInfinity: true });
    case 'boolean':
      return fc.boolean();
    case 'null':
      return fc.constant(null);
    case 'array': {
      const item = validValue(schema.items ?? {}, depth + 1);
      const constraints = {
        minLength: schema.minItems ?? 0,
        maxLength: Math.min(schema.maxItems ?? 4, Math.max(schema.minItems ?? 0, 4)),
      };
      return schema.uniqueItems === true
        ? fc.uniqueArray(item, { ...constraints, selector: (value) => JSON.stringify(value) })
        : fc.array(item, constraints);
    }
    case 'object':
      return validObject(schema, depth);
    default:
      // No type: the schema leaves the value to the handler.
      return fc.oneof(hostileString(0, 1000), fc.integer(), fc.boolean(), fc.double());
  }
}

function validObject(schema: JsonSchema, depth: number): fc.Arbitrary<Record<string, unknown>> {
  const properties = schema.properties ?? {};
  const model = Object.fromEntries(
    Object.entries(properties).map(([key, value]) => [key, validValue(value, depth + 1)]),
  );
  const record = fc.record(model, { requiredKeys: [...(schema.required ?? [])] });
  const extra = schema.additionalProperties;
  if (typeof extra !== 'object' || depth > 2) return record;
  return fc
    .tuple(
      record,
      fc.dictionary(fc.stringMatching(/^[A-Za-z0-9_]{1,40}$/), validValue(extra, depth + 1), {
        maxKeys: Math.min(schema.maxProperties ?? 5, 5),
      }),
    )
    .map(([fields, additional]) => ({ ...additional, ...fields }));
}

/** A plain value the schema accepts (the base that one hostile member is put into). */
function plainValue(schema: JsonSchema, seed: number): unknown {
  if (schema.anyOf !== undefined) {
    const [first] = schema.anyOf.filter((option) => !typesOf(option).includes('null'));
    return plainValue(first ?? {}, seed);
  }
  if (schema.enum !== undefined) return schema.enum[0];
  if (schema.const !== undefined) return schema.const;
  const [type] = typesOf(schema);
  switch (type) {
    case 'string':
      if (schema.format === 'uuid') return randomUUID();
      if (schema.format === 'email') return `plain-${seed}@fuzz.test`;
      if (schema.format === 'date-time') return new Date(Date.now() + 86_400_000).toISOString();
      if (schema.pattern !== undefined) {
        const [sample] = fc.sample(fc.stringMatching(new RegExp(schema.pattern, 'u')), {
          numRuns: 1,
          seed,
        });
        return sample;
      }
      return `plain${seed}`.padEnd(schema.minLength ?? 1, 'x').slice(0, schema.maxLength ?? 64);
    case 'integer':
    case 'number':
      return schema.minimum ?? 1;
    case 'boolean':
      return true;
    case 'array':
      return Array.from({ length: schema.minItems ?? 0 }, () =>
        plainValue(schema.items ?? {}, seed),
      );
    case 'object':
      return Object.fromEntries(
        (schema.required ?? []).map((key) => [
          key,
          plainValue(schema.properties?.[key] ?? {}, seed),
        ]),
      );
    default:
      return 'plain';
  }
}

/** A value no JSON-schema coercion turns into the scalar or array the schema asks for. */
function deeplyNested(depth: number): unknown {
  let value: unknown = { x: 1 };
  for (let level = 0; level < depth; level++)
    value = level % 2 === 0 ? [value, value] : { a: value };
  return value;
}

function wrongTypeFor(schema: JsonSchema): fc.Arbitrary<unknown> | undefined {
  const types = schema.anyOf?.flatMap(typesOf) ?? typesOf(schema);
  if (types.length === 0) return undefined;
  if (types.includes('object')) return fc.constantFrom('not an object', 42, true, [1, 2]);
  const nested = fc.integer({ min: 2, max: 12 }).map((depth) => deeplyNested(depth));
  // Array items are coerced one by one ([1, 2] is a fine array of strings): objects are not.
  if (types.includes('array')) return fc.oneof(fc.constant({ unexpected: 'object' }), nested);
  return fc.oneof(fc.constant({ unexpected: 'object' }), nested, fc.constant([1, 2, 3]));
}

/**
 * JSON text the operation's body schema refuses by construction, whatever the validator coerces:
 * not an object, an unknown member, a member of a type no coercion reaches, a required member
 * missing, a string or array past its maximum, a number out of range.
 */
function invalidJson(schema: JsonSchema): fc.Arbitrary<{ kind: string; text: string }> {
  const properties = schema.properties ?? {};
  const base = validObject(schema, 0);
  const mutations: fc.Arbitrary<{ kind: string; text: string }>[] = [
    fc
      .oneof(
        fc.string(),
        fc.integer(),
        fc.boolean(),
        fc.constant(null),
        fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 3 }),
        fc
          .integer({ min: 1_000, max: 200_000 })
          .map((depth) => '['.repeat(depth) + ']'.repeat(depth)),
      )
      .map((value) => ({
        kind: 'not an object',
        text: typeof value === 'string' && value.startsWith('[[') ? value : JSON.stringify(value),
      })),
  ];
  if (schema.additionalProperties === false) {
    mutations.push(
      fc
        .tuple(
          base,
          fc.oneof(
            fc.constantFrom(
              'tenant_id',
              'tenantId',
              'id',
              'version',
              'created_at',
              'role',
              'owner',
            ),
            fc.string({ unit: 'binary', minLength: 1, maxLength: 12 }),
          ),
          fc.jsonValue({ maxDepth: 2 }),
        )
        .filter(([, key]) => !(key in properties) && key !== '__proto__')
        .map(([value, key, extra]) => ({
          kind: `unknown member ${JSON.stringify(key)}`,
          text: JSON.stringify({ ...value, [key]: extra }),
        })),
    );
  }
  for (const [key, property] of Object.entries(properties)) {
    const wrong = wrongTypeFor(property);
    if (wrong !== undefined) {
      mutations.push(
        fc.tuple(base, wrong).map(([value, replacement]) => ({
          kind: `${key} of the wrong type`,
          text: JSON.stringify({ ...value, [key]: replacement }),
        })),
      );
    }
    if (typesOf(property).includes('string') && property.maxLength !== undefined) {
      const maxLength = property.maxLength;
      mutations.push(
        fc
          .tuple(base, fc.oneof(fc.integer({ min: 1, max: 50 }), fc.constant(300_000)))
          .map(([value, over]) => ({
            kind: `${key} longer than ${maxLength}`,
            text: JSON.stringify({ ...value, [key]: 'ü'.repeat(maxLength + over) }),
          })),
      );
    }
    if (typesOf(property).includes('integer')) {
      const outside = [0.5];
      if (property.minimum !== undefined) outside.push(property.minimum - 1);
      if (property.maximum !== undefined) outside.push(property.maximum + 1);
      mutations.push(
        fc.tuple(base, fc.constantFrom(...outside)).map(([value, number]) => ({
          kind: `${key} = ${number}`,
          text: JSON.stringify({ ...value, [key]: number }),
        })),
      );
    }
    if (typesOf(property).includes('array') && property.maxItems !== undefined) {
      const maxItems = property.maxItems;
      mutations.push(
        fc
          .tuple(base, fc.array(validValue(property.items ?? {}), { minLength: 1, maxLength: 1 }))
          .map(([value, [item]]) => ({
            kind: `${key} with ${maxItems + 1} items`,
            text: JSON.stringify({
              ...value,
              [key]: Array.from({ length: maxItems + 1 }, (_, index) =>
                typeof item === 'string' && property.items?.format === 'uuid'
                  ? randomUUID()
                  : `${index}`,
              ),
            }),
          })),
      );
    }
  }
  for (const key of schema.required ?? []) {
    mutations.push(
      base.map((value) => {
        const { [key]: _, ...rest } = value;
        return { kind: `without ${key}`, text: JSON.stringify(rest) };
      }),
    );
  }
  if ((schema.minProperties ?? 0) > 0) {
    mutations.push(fc.constant({ kind: 'empty object', text: '{}' }));
  }
  return fc.oneof(...mutations);
}

const malformedJson = fc.oneof(
  fc.constantFrom(
    '',
    '   ',
    '{',
    '{"a":1,}',
    "{'a':1}",
    '{"a":NaN}',
    '{"a":undefined}',
    '{"a":1}}',
    '[1,2',
    '{"__proto__":{"polluted":true}}',
    '{"constructor":{"prototype":{"polluted":true}}}',
    '\u0000{}',
    '{}\u0000',
    'null null',
    '{"a":"\\ud800\\u"}',
    '{"a":"\\x41"}',
    '\ufeff\ufeff{}',
  ),
  fc.string({ minLength: 1, maxLength: 30 }).map((text) => `{"a":${text}`),
);

/** Byte sequences that are not UTF-8: bad leads, overlong forms, surrogates, past U+10FFFF. */
const invalidUtf8 = fc.constantFrom(
  [0xff],
  [0xfe, 0xff],
  [0x80],
  [0xc0, 0xae],
  [0xe0, 0x80, 0xaf],
  [0xed, 0xa0, 0x80],
  [0xf4, 0x90, 0x80, 0x80],
  [0xf8, 0x88, 0x80, 0x80, 0x80],
  [0xe2, 0x82],
  [0xc3],
);

/** Content types sent with a body the schema refuses; `parsed` ones reach the validator. */
const contentTypes = [
  { type: 'text/plain', parsed: true },
  { type: 'text/plain; charset=utf-8', parsed: true },
  { type: 'APPLICATION/JSON', parsed: true },
  { type: 'application/json; charset=utf-16', parsed: true },
  { type: 'application/xml', parsed: false },
  { type: 'application/x-www-form-urlencoded', parsed: false },
  { type: 'multipart/form-data; boundary=fuzz', parsed: false },
  { type: 'application/octet-stream', parsed: false },
  { type: 'application/json-patch+json', parsed: false },
  { type: 'application/jsonx', parsed: false },
  { type: 'text/json', parsed: false },
  { type: 'image/png', parsed: false },
] as const;

function bodyArbitrary(operation: Operation): fc.Arbitrary<BodyPart | undefined> {
  if (!methodsWithBody.has(operation.method)) return fc.constant(undefined);
  const schema = operation.body;
  const json = 'application/json';
  const choices: (
    | fc.Arbitrary<BodyPart | undefined>
    | fc.WeightedArbitrary<BodyPart | undefined>
  )[] = [
    malformedJson.map((text) => ({
      kind: `malformed JSON ${JSON.stringify(text.slice(0, 40))}`,
      contentType: json,
      payload: text,
      mustReject: true,
    })),
    fc
      .tuple(schema === undefined ? fc.constant({}) : validObject(schema, 0), invalidUtf8)
      .map(([value, bytes]) => {
        const [key] = Object.entries(value).find(([, v]) => typeof v === 'string') ?? ['x'];
        const marker = 'FUZZ-INVALID-UTF8-HERE';
        const [head, tail] = JSON.stringify({ ...value, [key]: marker }).split(marker) as [
          string,
          string,
        ];
        return {
          kind: `invalid UTF-8 ${Buffer.from(bytes).toString('hex')} in ${key}`,
          contentType: json,
          payload: Buffer.concat([Buffer.from(head), Buffer.from(bytes), Buffer.from(tail)]),
          mustReject: true,
        };
      }),
    fc.constantFrom(...contentTypes).chain((contentType) =>
      (schema === undefined
        ? fc.constant({ kind: 'a body', text: '{"x":1}' })
        : invalidJson(schema)
      ).map(({ kind, text }) => ({
        kind: `${kind} as ${contentType.type}`,
        contentType: contentType.type,
        payload: text,
        mustReject: !contentType.parsed || schema !== undefined,
      })),
    ),
  ];
  if (schema !== undefined) {
    choices.push(
      {
        weight: 2,
        arbitrary: invalidJson(schema).map(({ kind, text }) => ({
          kind,
          contentType: json,
          payload: text,
          mustReject: true,
        })),
      },
      validObject(schema, 0).map((value) => ({
        kind: 'hostile values of the right types',
        contentType: json,
        payload: JSON.stringify(value),
        mustReject: false,
      })),
    );
  } else {
    choices.push(fc.constant(undefined));
  }
  return fc.oneof(...choices);
}

const traversalForms = [
  '..%2F..%2F..%2Fetc%2Fpasswd',
  '..%5C..%5Cwindows%5Cwin.ini',
  '%2E%2E%2F%2E%2E%2F',
  '%252E%252E%252F',
  '%C0%AE%C0%AE%C0%AF',
  '..%00',
  '%00',
  '%2F',
  '....%2F%2F',
  '..;',
  '%u002e%u002e',
  '%',
  '%zz',
  '%E0%80',
  '%ED%A0%80',
  '00000000-0000-0000-0000-000000000000',
  'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF',
  '%7B00000000-0000-4000-8000-000000000000%7D',
  '9999-99-99',
  '2026-02-30',
  'null',
  'undefined',
  '-1',
];

/** A path segment that names nothing of the fuzzed workspace. */
function fuzzedSegment(): fc.Arbitrary<string> {
  return fc
    .oneof(
      fc.constantFrom(...traversalForms),
      fc.string({ unit: 'binary', minLength: 1, maxLength: 40 }).map(encodeText),
      fc.uint8Array({ minLength: 1, maxLength: 12 }).map(encodeBytes),
      fc.integer({ min: 101, max: 20_000 }).map((length) => 'a'.repeat(length)),
      fc.uuid(),
      fc.constantFrom(...foreignIds, other.slug, owner.slug.toUpperCase()),
      fc.stringMatching(/^[0-9a-zA-Z_-]{1,100}$/),
    )
    .filter((segment) => !/^(%2e){1,2}$/i.test(segment) && segment !== owner.slug);
}

function queryArbitrary(operation: Operation): fc.Arbitrary<string> {
  const key = fc.oneof(
    fc.constantFrom(
      ...operation.queryParams,
      ...operation.queryParams.map((name) => `${name}[]`),
      'tenant_id',
      'tenantId',
      '__proto__',
      'constructor',
    ),
    fc.string({ unit: 'binary', minLength: 1, maxLength: 10 }).map(encodeText),
  );
  const value = fc.oneof(
    fc.string({ unit: 'binary', maxLength: 50 }).map(encodeText),
    hostileString(0, 40).map(encodeText),
    fc.uint8Array({ maxLength: 10 }).map(encodeBytes),
    fc.constantFrom('%', '%zz', '%E0%80', '-1', '0', '101', '1e309', '1.5', 'NaN', 'true', '[]'),
    fc.constantFrom('{}', 'null', 'name', '-name', 'created_at', 'me', 'none', 'open', 'x:y', ':'),
    fc.integer({ min: 513, max: 10_000 }).map((length) => 'A'.repeat(length)),
    fc.uuid(),
    fc.constantFrom(...foreignIds),
  );
  return fc
    .array(fc.tuple(key, value), { maxLength: 5 })
    .map((pairs) => pairs.map(([k, v]) => `${k}=${v}`).join('&'));
}

function requestArbitrary(operation: Operation): fc.Arbitrary<RequestParts> {
  const params = fc.tuple(
    ...operation.pathParams.map((name) =>
      fc.option(fuzzedSegment(), { freq: 2, nil: undefined }).map((fuzzed) => ({ name, fuzzed })),
    ),
  );
  return fc
    .record({
      params,
      query: queryArbitrary(operation),
      body: bodyArbitrary(operation),
      idempotencyKey: fc.option(
        fc.oneof(
          fc.string({ unit: 'grapheme-ascii', maxLength: 300 }),
          fc.constant(`${'k'.repeat(10_000)}`),
        ),
        { freq: 4, nil: undefined },
      ),
      useEtag: fc.boolean(),
    })
    .map((parts) => {
      // A DELETE that could succeed would remove the objects the other cases aim at.
      if (operation.method !== 'DELETE' || mustReject(parts) || parts.params.length === 0)
        return parts;
      const last = parts.params.length - 1;
      return {
        ...parts,
        params: parts.params.map((param, index) =>
          index === last ? { ...param, fuzzed: 'not-a-uuid' } : param,
        ),
      };
    });
}

function mustReject(parts: RequestParts): boolean {
  return (
    parts.params.some((param) => param.fuzzed !== undefined) || parts.body?.mustReject === true
  );
}

/** The real value of a path parameter in the fuzzed workspace. */
function realParam(path: string, name: string): string {
  if (name === 'workspace') return owner.slug;
  if (name === 'userId') return member.userId;
  if (name === 'tagId') return required(ids.get('tag'), 'tag');
  if (name === 'day') return '2026-01-01';
  const segments = path.split('/');
  const kind = segments[segments.indexOf(`{${name}}`) - 1] ?? '';
  const byKind: Record<string, string> = {
    contacts: 'contact',
    tags: 'tag',
    conversations: 'conversation',
    templates: 'template',
    invitations: 'invitation',
    'api-keys': 'apiKey',
    broadcasts: 'broadcast',
    files: 'file',
    exports: 'export',
  };
  return required(ids.get(byKind[kind] ?? kind), `${name} in ${path}`);
}

function required<T>(value: T | undefined, what: string): T {
  assert.ok(value !== undefined, `no value for ${what}`);
  return value;
}

function urlOf(operation: Operation, parts: RequestParts): string {
  let path = operation.path;
  for (const param of parts.params) {
    path = path.replace(`{${param.name}}`, param.fuzzed ?? realParam(operation.path, param.name));
  }
  return parts.query === '' ? path : `${path}?${parts.query}`;
}

async function inboundSecret(): Promise<string> {
  const result = await admin.query<{ secret: string }>(
    'select inbound_webhook_secret as secret from workspace_settings where tenant_id = $1',
    [owner.tenantId],
  );
  return required(result.rows[0], 'webhook secret').secret;
}

/** Turns generated parts into an inject request (signing webhook bodies, fetching ETags). */
async function materialize(operation: Operation, parts: RequestParts) {
  const url = urlOf(operation, parts);
  const headers: Record<string, string> = { ...owner.headers };
  const body = parts.body;
  if (body?.contentType !== undefined) headers['content-type'] = body.contentType;
  if (parts.idempotencyKey !== undefined && operation.method === 'POST')
    headers['idempotency-key'] = parts.idempotencyKey;
  if (operation.method === 'PATCH' && parts.useEtag && !mustReject(parts)) {
    const current = await testApp.app.inject({
      method: 'GET',
      url: url.split('?')[0] ?? url,
      headers,
    });
    const etag = current.headers.etag;
    if (typeof etag === 'string') headers['if-match'] = etag;
  }
  if (operation.path.endsWith('/webhooks/inbound') && body !== undefined) {
    const timestamp = Math.floor(Date.now() / 1000);
    const raw = typeof body.payload === 'string' ? Buffer.from(body.payload) : body.payload;
    const signature = createHmac('sha256', await inboundSecret())
      .update(`${timestamp}.`)
      .update(raw)
      .digest('hex');
    headers['x-tenantry-signature'] = `t=${timestamp},v1=${signature}`;
  }
  return {
    method: operation.method,
    url,
    headers,
    ...(body === undefined ? {} : { payload: body.payload }),
  };
}

/**
 * Row count and a content checksum (the sum of a 64-bit hash of every row) of every table of the
 * app and of Tenantry, in one statement: no sort, so a few milliseconds per snapshot.
 */
async function snapshot(): Promise<Map<string, string>> {
  const digests = tables.map(
    (table) =>
      `select '${table}' as name, count(*) || ':' || coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) as digest from ${table} t`,
  );
  const result = await admin.query<{ name: string; digest: string }>(digests.join(' union all '));
  return new Map(result.rows.map((row) => [row.name, row.digest]));
}

function changedTables(before: Map<string, string>, after: Map<string, string>): string[] {
  return tables.filter((table) => before.get(table) !== after.get(table));
}

/**
 * Requests that must store nothing are checked in batches (one snapshot per batch); before a
 * request that may legitimately write, the batch is checked and a new baseline taken after it.
 */
class StorageLedger {
  #baseline: Map<string, string> = new Map();
  #pending: string[] = [];

  async start(): Promise<void> {
    this.#baseline = await snapshot();
    this.#pending = [];
  }

  async storesNothing(label: string): Promise<void> {
    this.#pending.push(label);
    if (this.#pending.length >= 40) await this.check();
  }

  async check(): Promise<void> {
    if (this.#pending.length === 0) return;
    const now = await snapshot();
    const changed = changedTables(this.#baseline, now);
    const pending = this.#pending;
    this.#pending = [];
    this.#baseline = now;
    assert.deepEqual(
      changed,
      [],
      `one of these requests (each answered 4xx or a read) changed ${changed.join(', ')}:\n${pending.join('\n')}`,
    );
  }

  /** Runs a request that may write (2xx); its 4xx must not have. */
  async mayWrite(label: string, send: () => Promise<LightMyRequestResponse>) {
    await this.check();
    const response = await send();
    const now = await snapshot();
    const changed = changedTables(this.#baseline, now);
    this.#baseline = now;
    if (response.statusCode >= 400) {
      assert.deepEqual(
        changed,
        [],
        `${label} answered ${response.statusCode} but changed ${changed.join(', ')}`,
      );
    }
    return response;
  }
}

const ledger = new StorageLedger();

function describeRequest(request: { method: string; url: string; headers: object }, kind: string) {
  const url = request.url.length > 300 ? `${request.url.slice(0, 300)}…` : request.url;
  return `${request.method} ${url} [${kind}]`;
}

/** Checks one answer: below 500, a coded problem for every error, a 4xx where one is due. */
function checkAnswer(response: LightMyRequestResponse, label: string, reject: boolean): void {
  const status = response.statusCode;
  const body = response.body.length > 500 ? `${response.body.slice(0, 500)}…` : response.body;
  assert.ok(status < 500, `${label} answered ${status}: ${body}`);
  if (reject) assert.ok(status >= 400, `${label} must be refused, got ${status}: ${body}`);
  if (status >= 400) {
    assert.match(
      String(response.headers['content-type']),
      /^application\/problem\+json/,
      `${label} answered ${status} without problem+json: ${body}`,
    );
    const problem = bodyOf<{ code?: unknown; status?: unknown }>(response);
    assert.ok(
      typeof problem.code === 'string' && problemCode.test(problem.code),
      `${label}: no code in ${body}`,
    );
    assert.equal(problem.status, status, `${label}: status member ${problem.status}`);
  }
}

async function fire(operation: Operation, parts: RequestParts): Promise<void> {
  const request = await materialize(operation, parts);
  const reject = mustReject(parts);
  const label = describeRequest(request, parts.body?.kind ?? 'no body');
  const send = () => testApp.app.inject(request);
  let response: LightMyRequestResponse;
  try {
    if (reject || operation.method === 'GET') {
      response = await send();
      checkAnswer(response, label, reject);
      await ledger.storesNothing(`${label} -> ${response.statusCode}`);
    } else {
      response = await ledger.mayWrite(label, send);
      checkAnswer(response, label, reject);
    }
  } catch (error) {
    // What a failed case wrote is reported with it, not blamed on the next batch.
    await ledger.start();
    throw error;
  }
}

async function seed(): Promise<void> {
  const call = async (method: 'POST' | 'PUT', url: string, payload?: object) => {
    const response = await testApp.app.inject({
      method,
      url,
      headers: owner.headers,
      ...(payload === undefined ? {} : { payload }),
    });
    assert.ok(
      response.statusCode < 300,
      `${method} ${url}: ${response.statusCode} ${response.body}`,
    );
    return response.body === '' ? {} : bodyOf(response);
  };
  const tag = await call('POST', '/v1/tags', { name: 'fuzz' });
  ids.set('tag', tag.id);
  const contact = await call('POST', '/v1/contacts', {
    name: 'Fuzz Target',
    phone: '+5511999990001',
    tagIds: [tag.id],
  });
  ids.set('contact', contact.id);
  const conversation = await call('POST', '/v1/conversations', { contactId: contact.id });
  ids.set('conversation', conversation.id);
  await call('POST', `/v1/conversations/${conversation.id}/messages`, { body: 'hello' });
  const template = await call('POST', '/v1/templates', {
    name: 'fuzz_template',
    language: 'en',
    category: 'utility',
    body: 'Hello {{1}}',
  });
  ids.set('template', template.id);
  const invitation = await call('POST', '/v1/invitations', {
    email: 'invitee@fuzz.test',
    role: 'member',
  });
  ids.set('invitation', invitation.id);
  const apiKey = await call('POST', '/v1/api-keys', { name: 'fuzz key' });
  ids.set('apiKey', apiKey.id);
  const file = await call('POST', '/v1/files', {
    fileName: 'fuzz.txt',
    size: 5,
    contentType: 'text/plain',
  });
  ids.set('file', file.fileId);
  const broadcast = await call('POST', '/v1/broadcasts', {
    name: 'fuzz broadcast',
    templateId: template.id,
    tagIds: [tag.id],
    variables: [{ contact: 'name' }],
  });
  ids.set('broadcast', broadcast.id ?? broadcast.broadcastId);
  const exported = await call('POST', '/v1/exports/contacts');
  ids.set('export', exported.exportId);
  await call('POST', '/v1/workspace/webhook-secret');
  for (const [kind, id] of ids) assert.ok(typeof id === 'string', `seeded ${kind} has no id`);

  const foreign = await testApp.app.inject({
    method: 'POST',
    url: '/v1/tags',
    headers: other.headers,
    payload: { name: 'foreign' },
  });
  foreignIds.push(bodyOf<{ id: string }>(foreign).id);
  const foreignContact = await testApp.app.inject({
    method: 'POST',
    url: '/v1/contacts',
    headers: other.headers,
    payload: { name: 'Foreign' },
  });
  foreignIds.push(bodyOf<{ id: string }>(foreignContact).id, other.userId);
}

function readOperations(document: {
  paths: Record<
    string,
    Record<
      string,
      {
        parameters?: { in: string; name: string }[];
        requestBody?: { content: Record<string, { schema: JsonSchema }> };
      }
    >
  >;
}): Operation[] {
  const found: Operation[] = [];
  for (const [path, methods] of Object.entries(document.paths)) {
    for (const [method, operation] of Object.entries(methods)) {
      const upper = method.toUpperCase();
      if (!['GET', 'POST', 'PUT', 'PATCH', 'DELETE'].includes(upper)) continue;
      found.push({
        method: upper as Operation['method'],
        path,
        // From the template itself: the document leaves some path parameters out.
        pathParams: [...path.matchAll(/\{(\w+)\}/g)].map((match) => match[1] ?? ''),
        queryParams: (operation.parameters ?? [])
          .filter((parameter) => parameter.in === 'query')
          .map((parameter) => parameter.name),
        body: operation.requestBody?.content['application/json']?.schema,
      });
    }
  }
  return found;
}

function seedFor(operation: Operation): number {
  if (seedOverride !== undefined) return Number(seedOverride);
  return createHash('sha256')
    .update(`${operation.method} ${operation.path}`)
    .digest()
    .readInt32LE(0);
}

before(async () => {
  testApp = await createTestApp({ placement: 'pool' });
  owner = await createWorkspace(testApp, 'fuzz');
  member = await addMember(testApp, owner, 'member');
  other = await createWorkspace(testApp, 'fuzz-other');
  admin = new pg.Client({ connectionString: testApp.database.adminUrl });
  await admin.connect();
  // Thousands of requests a minute from one workspace: lift its plan's request rate.
  await admin.query(
    `insert into tenantry.tenant_limit_overrides (tenant_id, metric, limit_value)
     values ($1, 'api_requests_per_minute', 1000000000), ($2, 'api_requests_per_minute', 1000000000)`,
    [owner.tenantId, other.tenantId],
  );
  await seed();
  const tableRows = await admin.query<{ name: string }>(
    `select format('%I.%I', n.nspname, c.relname) as name
     from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname in ('public', 'auth', 'tenantry', 'graphile_worker')
       and c.relkind in ('r', 'p') and not c.relispartition
     order by 1`,
  );
  tables = tableRows.rows.map((row) => row.name);
  const document = await testApp.app.inject({ method: 'GET', url: '/openapi.json' });
  assert.equal(document.statusCode, 200);
  operations = readOperations(bodyOf(document));
  bodyLimit = testApp.app.initialConfig.bodyLimit ?? 1024 * 1024;
  await ledger.start();
});

after(async () => {
  await admin?.end();
  await testApp?.close();
});

describe('fuzzed bad input against every route of the OpenAPI document', () => {
  test('the document lists every route the app serves (both address forms)', () => {
    const listed = new Set(operations.map((operation) => `${operation.method} ${operation.path}`));
    for (const route of [
      'POST /auth/signup',
      'POST /v1/contacts',
      'PATCH /t/{workspace}/v1/contacts/{id}',
      'POST /t/{workspace}/webhooks/inbound',
      'POST /v1/files/{id}/confirm',
      'DELETE /v1/members/{userId}',
    ]) {
      assert.ok(listed.has(route), `${route} missing from the OpenAPI document`);
    }
    assert.ok(operations.length >= 90, `only ${operations.length} operations`);
  });

  test('every route: fuzzed parameters, queries, bodies, encodings and content types', async (t) => {
    for (const operation of operations) {
      await t.test(`${operation.method} ${operation.path}`, async () => {
        await fc.assert(
          fc.asyncProperty(requestArbitrary(operation), (parts) => fire(operation, parts)),
          {
            numRuns: runsPerRoute,
            seed: long && seedOverride === undefined ? undefined : seedFor(operation),
            endOnFailure: true,
          },
        );
        await ledger.check();
      });
    }
  });

  test('every route with a body: one byte past the body limit is refused with 413', async () => {
    for (const operation of operations.filter((o) => methodsWithBody.has(o.method))) {
      const parts: RequestParts = {
        params: operation.pathParams.map((name) => ({ name, fuzzed: undefined })),
        query: '',
        body: {
          kind: 'above the body limit',
          contentType: 'application/json',
          payload: JSON.stringify({ padding: 'x'.repeat(bodyLimit) }),
          mustReject: true,
        },
        idempotencyKey: undefined,
        useEtag: false,
      };
      const request = await materialize(operation, parts);
      const response = await testApp.app.inject(request);
      const label = describeRequest(request, 'above the body limit');
      checkAnswer(response, label, true);
      assert.equal(response.statusCode, 413, label);
      assert.equal(bodyOf(response).code, 'TENANTRY_ERR_HTTP_PAYLOAD_TOO_LARGE', label);
      await ledger.storesNothing(`${label} -> 413`);
    }
    await ledger.check();
  });

  test('every route with a body: invalid UTF-8 in an otherwise valid body is refused', async () => {
    for (const operation of operations.filter((o) => o.body !== undefined)) {
      const [value] = fc.sample(validObject(operation.body ?? {}, 0), {
        numRuns: 1,
        seed: seedFor(operation),
      });
      const [key] = Object.entries(value ?? {}).find(([, v]) => typeof v === 'string') ?? ['x'];
      const marker = 'FUZZ-INVALID-UTF8-HERE';
      const [head, tail] = JSON.stringify({ ...value, [key]: `ok ${marker}` }).split(marker) as [
        string,
        string,
      ];
      await fire(operation, {
        params: operation.pathParams.map((name) => ({ name, fuzzed: undefined })),
        query: '',
        body: {
          kind: `invalid UTF-8 (ff fe) in ${key}`,
          contentType: 'application/json',
          payload: Buffer.concat([Buffer.from(head), Buffer.from([0xff, 0xfe]), Buffer.from(tail)]),
          mustReject: true,
        },
        idempotencyKey: undefined,
        useEtag: true,
      });
    }
    await ledger.check();
  });

  test('every string member and query parameter: NUL, a lone surrogate, control characters', async () => {
    const hostile = ['a\u0000b', '\ud800x', 'x\udc00', '\u0000', 'a\u001b[2Jb\u007f'];
    let seed = 0;
    for (const operation of operations) {
      const params = operation.pathParams.map((name) => ({ name, fuzzed: undefined }));
      for (const name of operation.queryParams) {
        for (const value of hostile) {
          await fire(operation, {
            params,
            query: `${name}=${encodeText(value)}&attribute=${encodeText(`k:${value}`)}`,
            body:
              operation.body === undefined
                ? undefined
                : {
                    kind: 'plain body',
                    contentType: 'application/json',
                    payload: JSON.stringify(plainValue(operation.body, seed)),
                    mustReject: false,
                  },
            idempotencyKey: undefined,
            useEtag: true,
          });
        }
      }
      const schema = operation.body;
      if (schema === undefined) continue;
      for (const [key, property] of Object.entries(schema.properties ?? {})) {
        const freeForm = typeof property.additionalProperties === 'object';
        const takesText =
          (property.anyOf?.flatMap(typesOf) ?? typesOf(property)).includes('string') ||
          typesOf(property.items ?? {}).includes('string');
        if (!freeForm && !takesText) continue;
        const members = hostile.flatMap((value): unknown[] => {
          if (freeForm) return [{ note: value }, { [`k${value}`]: 'v' }];
          return typesOf(property).includes('array') ? [[value]] : [value];
        });
        for (const member of members) {
          seed++;
          const base = plainValue(schema, seed) as Record<string, unknown>;
          await fire(operation, {
            params,
            query: '',
            body: {
              kind: `${key} = ${JSON.stringify(member)}`,
              contentType: 'application/json',
              payload: JSON.stringify({ ...base, [key]: member }),
              mustReject: false,
            },
            idempotencyKey: undefined,
            useEtag: true,
          });
        }
      }
    }
    await ledger.check();
  });

  test('the server stays healthy: probes answer and a normal request still works', async () => {
    const health = await testApp.app.inject({ method: 'GET', url: '/healthz' });
    assert.equal(health.statusCode, 200);
    const ready = await testApp.app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(ready.statusCode, 200, ready.body);
    const created = await testApp.app.inject({
      method: 'POST',
      url: '/v1/tags',
      headers: owner.headers,
      payload: { name: 'after the fuzz' },
    });
    assert.equal(created.statusCode, 201, created.body);
    const read = await testApp.app.inject({
      method: 'GET',
      url: `/v1/tags/${bodyOf<{ id: string }>(created).id}`,
      headers: owner.headers,
    });
    assert.equal(read.statusCode, 200, read.body);
    assert.equal(bodyOf<{ name: string }>(read).name, 'after the fuzz');
    const foreign = await testApp.app.inject({
      method: 'GET',
      url: '/v1/tags?limit=100',
      headers: other.headers,
    });
    assert.equal(foreign.statusCode, 200);
    assert.ok(
      bodyOf<{ items: { id: string }[] }>(foreign).items.every((tag) =>
        foreignIds.includes(tag.id),
      ),
      'the other workspace sees a tag it did not create',
    );
  });
});
