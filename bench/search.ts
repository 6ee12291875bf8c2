/**
 * Conversation and contact search under RLS: the naive design (pg_trgm GIN indexes for
 * `ILIKE '%word%'`, a jsonb_path_ops GIN index for `attributes @> filter`, plus their btree_gin
 * composites that lead with tenant_id) against the term tables of
 * `app/migrations/0003-search.sql`, queried through `app/search/search.repository.ts`. Each
 * search shape runs as the app role under RLS in the big tenant and in a small one, and the
 * naive query also runs as the owner (BYPASSRLS) with an explicit `tenant_id = $1`: what its
 * indexes give when no policy stands in the way. Same process, same server, same data,
 * interleaved runs, medians. The last line printed is one JSON object.
 */
import { createHash } from 'node:crypto';
import os from 'node:os';
import {
  CompiledQuery,
  type Kysely,
  type KyselyPlugin,
  PostgresQueryCompiler,
  type RawBuilder,
  RawNode,
  sql,
} from 'kysely';
import pg from 'pg';
import {
  bootstrapDatabase,
  createTenantry,
  type EmbeddedPostgresServer,
  isTenantryError,
  migrate,
  startEmbeddedPostgres,
  type Tenantry,
} from 'tenantry';
import type { AppDatabase } from '../app/database.ts';
import { searchContacts, searchConversations } from '../app/search/search.repository.ts';
import { referenceAppSources } from './sources.ts';

const bigContacts = Number(process.env.BENCH_SEARCH_BIG_CONTACTS ?? 200_000);
const smallTenants = Number(process.env.BENCH_SEARCH_SMALL_TENANTS ?? 199);
const smallContacts = Number(process.env.BENCH_SEARCH_SMALL_CONTACTS ?? 500);
const messagesPerConversation = 5;
const runs = Number(process.env.BENCH_SEARCH_RUNS ?? 15);
const writeRuns = Number(process.env.BENCH_SEARCH_WRITE_RUNS ?? 40);
const explain = process.env.BENCH_SEARCH_EXPLAIN === '1';
const sharedBuffers = '1GB';
const database = 'tenantry_bench_search';
const directory = '.tenantry/bench-search-postgres';
const bigTenant = '00000000-0000-4000-8000-000000000001';
const pageSize = 50;
/** Bump when the generated data changes, so a kept cluster is reloaded. */
const dataVersion = 1;

type Row = { readonly id: string };

/** One search the app makes, written the naive way (raw SQL) and through the repository. */
interface Shape {
  readonly name: string;
  /** The naive query, with the explicit tenant condition the guard would add anyway. */
  readonly naive: (tenantId: string) => RawBuilder<Row>;
  readonly terms: (db: Kysely<AppDatabase>) => Promise<readonly Row[]>;
  /** Whether both designs must return the same page (same semantics on this data). */
  readonly sameResults: boolean;
}

interface Variant {
  readonly name: string;
  readonly run: (tenantId: string) => Promise<readonly Row[]>;
}

/**
 * A conversation whose contact (name or email) or subject contains `pattern`, written so that
 * without RLS each side is a bitmap scan of the trigram indexes.
 */
function naiveConversationMatch(tenantId: string, pattern: string) {
  return sql`(c.contact_id in (
      select k2.id from contacts k2
       where k2.tenant_id = ${tenantId} and (k2.name ilike ${pattern} or k2.email ilike ${pattern}))
    or c.id in (
      select c2.id from conversations c2
       where c2.tenant_id = ${tenantId} and c2.subject ilike ${pattern}))`;
}

function naiveConversations(tenantId: string, conditions: RawBuilder<unknown>[]) {
  return sql<Row>`select c.id, c.contact_id, k.name as contact_name, c.subject, c.status,
      c.assignee_id, c.updated_at
    from conversations c join contacts k on k.tenant_id = c.tenant_id and k.id = c.contact_id
    where c.tenant_id = ${tenantId} and ${sql.join(conditions, sql` and `)}
    order by c.updated_at desc, c.id desc limit ${pageSize}`;
}

function naiveContacts(tenantId: string, condition: RawBuilder<unknown>) {
  return sql<Row>`select k.id, k.name, k.phone, k.email, k.attributes, k.updated_at
    from contacts k where k.tenant_id = ${tenantId} and ${condition}
    order by k.updated_at desc, k.id desc limit ${pageSize}`;
}

const shapes: readonly Shape[] = [
  {
    name: 'contacts: name/email word "garcia"',
    naive: (t) =>
      naiveContacts(t, sql`(k.name ilike ${'%garcia%'} or k.email ilike ${'%garcia%'})`),
    terms: (db) => searchContacts(db, { query: 'garcia', limit: pageSize }),
    sameResults: true,
  },
  {
    name: 'contacts: phone ends with "4242"',
    naive: (t) => naiveContacts(t, sql`k.phone like ${'%4242'}`),
    terms: (db) => searchContacts(db, { query: '4242', limit: pageSize }),
    sameResults: false,
  },
  {
    name: 'contacts: attributes plan=gold, region=eu-west',
    naive: (t) =>
      naiveContacts(t, sql`k.attributes @> ${'{"plan":"gold","region":"eu-west"}'}::jsonb`),
    terms: (db) =>
      searchContacts(db, { attributes: { plan: 'gold', region: 'eu-west' }, limit: pageSize }),
    sameResults: true,
  },
  {
    name: 'contacts: attributes seats=123, plan=pro',
    naive: (t) => naiveContacts(t, sql`k.attributes @> ${'{"seats":123,"plan":"pro"}'}::jsonb`),
    terms: (db) => searchContacts(db, { attributes: { seats: 123, plan: 'pro' }, limit: pageSize }),
    sameResults: true,
  },
  {
    name: 'conversations: rare word "zenithlabs"',
    naive: (t) => naiveConversations(t, [naiveConversationMatch(t, '%zenithlabs%')]),
    terms: (db) => searchConversations(db, { query: 'zenithlabs', limit: pageSize }),
    sameResults: true,
  },
  {
    name: 'conversations: common word "refund"',
    naive: (t) => naiveConversations(t, [naiveConversationMatch(t, '%refund%')]),
    terms: (db) => searchConversations(db, { query: 'refund', limit: pageSize }),
    sameResults: true,
  },
  {
    name: 'conversations: "maria garcia"',
    naive: (t) =>
      naiveConversations(t, [
        naiveConversationMatch(t, '%maria%'),
        naiveConversationMatch(t, '%garcia%'),
      ]),
    terms: (db) => searchConversations(db, { query: 'maria garcia', limit: pageSize }),
    sameResults: false,
  },
  {
    name: 'conversations: open, contact plan=gold',
    naive: (t) =>
      naiveConversations(t, [
        sql`c.status = 'open'`,
        sql`c.contact_id in (select a.id from contacts a
              where a.tenant_id = ${t} and a.attributes @> ${'{"plan":"gold"}'}::jsonb)`,
      ]),
    terms: (db) =>
      searchConversations(db, { status: 'open', attributes: { plan: 'gold' }, limit: pageSize }),
    sameResults: true,
  },
];

export async function run(): Promise<void> {
  let server = await startEmbeddedPostgres({ directory, durability: 'fast' });
  try {
    server = await ensureSharedBuffers(server);
    await prepareDatabase(server);
    await measureAll(server);
  } finally {
    await server.stop();
  }
}

/**
 * Bootstraps, migrates and loads the database once. A migration changed since, another data
 * version or a load that did not finish rebuilds it from scratch.
 */
async function prepareDatabase(server: EmbeddedPostgresServer): Promise<void> {
  const adminUrl = server.connectionString('postgres');
  await bootstrapDatabase({
    adminConnectionString: adminUrl,
    database,
    passwords: { app: server.secrets.appPassword, owner: server.secrets.ownerPassword },
  });
  try {
    await migrate({
      connectionString: server.connectionString(database),
      sources: referenceAppSources(),
    });
  } catch (error) {
    if (!isTenantryError(error) || error.code !== 'TENANTRY_ERR_MIGRATION_CHANGED') throw error;
    console.error('a migration changed since the data was loaded: rebuilding the database');
    await dropDatabase(adminUrl);
    return prepareDatabase(server);
  }
  const client = new pg.Client({ connectionString: server.connectionString(database) });
  await client.connect();
  let rebuild = false;
  try {
    // A run stopped during the write measurements would leave them disabled.
    await client.query('alter table contacts enable trigger user');
    await client.query('alter table conversations enable trigger user');
    const loaded = await readMeta(client);
    if (loaded === expectedMeta()) return;
    const rows = await client.query('select 1 from contacts limit 1');
    if (rows.rowCount === 0) await loadData(client);
    else rebuild = true;
  } finally {
    await client.end();
  }
  if (rebuild) {
    console.error('the data was loaded with other settings or not completely: rebuilding');
    await dropDatabase(adminUrl);
    return prepareDatabase(server);
  }
}

async function dropDatabase(adminUrl: string): Promise<void> {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`drop database if exists ${database} with (force)`);
  } finally {
    await admin.end();
  }
}

function expectedMeta(): string {
  return JSON.stringify({ dataVersion, bigContacts, smallTenants, smallContacts });
}

async function readMeta(client: pg.Client): Promise<string | undefined> {
  const exists = await client.query(
    "select to_regclass('public.bench_search_meta') is not null as e",
  );
  if (exists.rows[0]?.e !== true) return undefined;
  const meta = await client.query<{ value: string }>('select value from bench_search_meta');
  return meta.rows[0]?.value;
}

/**
 * Loads the tenants as the superuser. Every value derives from a hash of the row's position, so
 * two loads give the same data.
 */
async function loadData(client: pg.Client): Promise<void> {
  const started = performance.now();
  const step = async (label: string, text: string, values: unknown[] = []) => {
    const t0 = performance.now();
    await client.query(text, values);
    console.error(`  ${label}: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  };
  console.error(
    `loading 1 tenant x ${bigContacts} + ${smallTenants} tenants x ${smallContacts} contacts, one conversation each, ${messagesPerConversation} messages per conversation...`,
  );
  await step('vocabulary', vocabularySql);
  await step(
    'tenants',
    `create temporary table bench_tenants as
       select 0 as seed, $1::uuid as tenant_id, $2::int as contacts
       union all
       select n, md5('bench-search-small-' || n)::uuid, $4::int from generate_series(1, $3::int) n`,
    [bigTenant, bigContacts, smallTenants, smallContacts],
  );
  // Replica mode (superuser only) skips triggers and foreign key checks: the rows are generated
  // consistent, and their terms are then inserted in one statement per table, the way the
  // migration backfills them, with the same functions the triggers use. The trigger path itself
  // is what the write measurements exercise.
  await client.query('set session_replication_role = replica');
  await step('contacts', contactsSql);
  await step('conversations', conversationsSql);
  await step('messages', messagesSql, [messagesPerConversation]);
  await step('analyze', 'analyze contacts, conversations');
  await step('contact terms', contactTermsSql);
  await step('conversation terms', conversationTermsSql);
  await client.query('reset session_replication_role');
  await step('naive indexes', naiveIndexesSql);
  await step('vacuum analyze', 'vacuum analyze');
  await client.query('create table bench_search_meta (value text not null)');
  await client.query('insert into bench_search_meta values ($1)', [expectedMeta()]);
  console.error(`loaded in ${((performance.now() - started) / 1000).toFixed(0)} s`);
}

const contactTermsSql = `
  insert into contact_search_terms (tenant_id, contact_id, term)
  select c.tenant_id, c.id, t.term
    from contacts c cross join lateral contact_text_terms(c.name, c.email, c.phone) as t(term)
   order by 1, 2, 3;
  insert into contact_attribute_terms (tenant_id, contact_id, term)
  select c.tenant_id, c.id, t.term
    from contacts c cross join lateral search_attribute_terms(c.attributes) as t(term)
   order by 1, 2, 3`;

const conversationTermsSql = `
  insert into conversation_search_terms (tenant_id, conversation_id, term)
  select v.tenant_id, v.id, t.term
    from conversations v
    join contacts c on c.tenant_id = v.tenant_id and c.id = v.contact_id
    cross join lateral (
      select search_words(v.subject)
      union select contact_text_terms(c.name, c.email, c.phone)
    ) as t(term)
   order by 1, 2, 3`;

const vocabularySql = `
  create temporary table bench_vocabulary as select
    array['maria','jose','ana','juan','luis','carlos','sofia','lucia','pedro','miguel','james','mary',
      'john','patricia','robert','jennifer','michael','linda','william','elizabeth','david','barbara',
      'richard','susan','joseph','jessica','thomas','sarah','charles','karen','daniel','nancy',
      'matthew','lisa','anthony','betty','mark','margaret','donald','sandra','steven','ashley','paul',
      'kimberly','andrew','emily','joshua','donna','kenneth','michelle','kevin','dorothy','brian',
      'carol','george','amanda','timothy','melissa','ronald','deborah','olga','ivan','yuki','hiroshi',
      'wei','li','fatima','ahmed','priya','arjun','chen','mei','omar','layla','noah','emma','liam',
      'olivia','lucas','mia','hugo','chloe','leon','clara','felix','ines','mateo','valentina','thiago',
      'camila','diego','isabella','pablo','elena','marco','giulia','lars','freya','nils','astrid'] as first,
    array['garcia','smith','johnson','williams','brown','jones','miller','davis','rodriguez','martinez',
      'hernandez','lopez','gonzalez','wilson','anderson','thomas','taylor','moore','jackson','martin',
      'lee','perez','thompson','white','harris','sanchez','clark','ramirez','lewis','robinson','walker',
      'young','allen','king','wright','scott','torres','nguyen','hill','flores','green','adams','nelson',
      'baker','hall','rivera','campbell','mitchell','carter','roberts','silva','santos','oliveira',
      'souza','costa','pereira','ferreira','almeida','kowalski','novak','muller','schmidt','schneider',
      'fischer','weber','meyer','wagner','becker','schulz','hoffmann','rossi','russo','ferrari',
      'esposito','bianchi','romano','colombo','ricci','marino','greco','tanaka','suzuki','sato',
      'watanabe','ito','kim','park','choi','wang','zhang','liu','yang','singh','kumar','patel','shah',
      'khan','ali','hassan','okafor'] as last,
    array['acme','globex','initech','umbrella','hooli','vandelay','wayne','stark','wonka','tyrell',
      'cyberdyne','soylent','oscorp','aperture','blackmesa','massive','dunder','sterling','pied',
      'nakatomi'] as company,
    array['us-east','us-west','eu-west','eu-central','ap-south','ap-east','sa-east','af-south',
      'me-central','ca-central'] as region,
    array['web','whatsapp','import','api'] as source,
    array['refund','invoice','order','delivery','late','password','reset','account','billing',
      'upgrade','plan','question','issue','problem','help','urgent','cancel','subscription','payment',
      'failed','shipping','address','change','update','request','feature','bug','error','login',
      'access','integration','api','webhook','export','import','report','dashboard','mobile','app',
      'android','iphone','sync','calendar','email','notification','settings','team','member','invite',
      'role','permission','security','privacy','data','delete','backup','restore','migration',
      'pricing','discount','coupon','trial','demo','onboarding','training','documentation','support',
      'ticket','feedback','review','complaint','return','exchange','warranty','damaged','missing',
      'package','tracking','courier','pickup','appointment','booking','reschedule','confirm',
      'reminder','schedule','meeting','call','callback','voicemail','sms','message','template',
      'campaign','broadcast','contact','lead','customer','partner','contract','renewal','quote',
      'proposal','purchase','receipt','tax','vat','currency','bank','transfer','card','declined',
      'charge','dispute','chargeback','credit','balance','limit','quota','performance','slow',
      'timeout','outage','downtime','status','incident','maintenance','release','version'] as word`;

const contactsSql = `
  insert into contacts (tenant_id, id, name, phone, email, attributes, created_at, updated_at)
  select t.tenant_id,
         md5(t.tenant_id::text || ':contact:' || g)::uuid,
         initcap(first_name) || ' ' || initcap(last_name),
         '+1555' || lpad(((g::bigint * 7919) % 10000000)::text, 7, '0'),
         first_name || '.' || last_name || g || '@' ||
           case when g % 1000 = 7 then 'zenithlabs' else v.company[1 + h[3] % 20] end || '.com',
         jsonb_build_object(
           'plan', case when h[4] % 100 < 5 then 'gold' when h[4] % 100 < 30 then 'pro' else 'free' end,
           'seats', 1 + h[5] % 500,
           'region', v.region[1 + h[6] % 10],
           'vip', h[7] % 50 = 0,
           'source', v.source[1 + h[8] % 4]),
         timestamptz '2024-01-01' + h[9] % 31536000 * interval '1 second',
         timestamptz '2025-01-01' + h[10] % 31536000 * interval '1 second'
    from bench_tenants t
   cross join lateral generate_series(1, t.contacts) as g
   cross join bench_vocabulary v
   cross join lateral (select t.seed::bigint * 10000000 + g as position) as p
   cross join lateral (
     select array[hashint8extended(p.position, 1) & 2147483647,
                  hashint8extended(p.position, 2) & 2147483647,
                  hashint8extended(p.position, 3) & 2147483647,
                  hashint8extended(p.position, 4) & 2147483647,
                  hashint8extended(p.position, 5) & 2147483647,
                  hashint8extended(p.position, 6) & 2147483647,
                  hashint8extended(p.position, 7) & 2147483647,
                  hashint8extended(p.position, 8) & 2147483647,
                  hashint8extended(p.position, 9) & 2147483647,
                  hashint8extended(p.position, 10) & 2147483647] as h) as hashes
   cross join lateral (
     select v.first[1 + h[1] % cardinality(v.first)] as first_name,
            v.last[1 + h[2] % cardinality(v.last)] as last_name) as names`;

const conversationsSql = `
  insert into conversations
    (tenant_id, id, contact_id, subject, status, assignee_id, created_at, updated_at, last_message_at)
  select k.tenant_id,
         md5(k.id::text || ':conversation')::uuid,
         k.id,
         initcap(v.word[1 + floor(n * u[1] ^ 2)::int]) || ' ' || v.word[1 + floor(n * u[2])::int] ||
           ' ' || v.word[1 + floor(n * u[3] ^ 2)::int] ||
           case when u[4] < 0.5 then ' ' || v.word[1 + floor(n * u[5])::int] else '' end,
         case when u[6] < 0.3 then 'open' else 'closed' end,
         case when u[7] < 0.9 then md5(k.tenant_id::text || ':agent:' || floor(u[8] * 20))::uuid end,
         k.created_at,
         timestamptz '2025-01-01' + u[9] * interval '365 days',
         timestamptz '2025-01-01' + u[9] * interval '365 days'
    from contacts k
   cross join bench_vocabulary v
   cross join lateral (select cardinality(v.word) as n) as size
   cross join lateral (select k.id::text as key) as k2
   cross join lateral (
     select array[(hashtextextended(k2.key, 1) & 1048575) / 1048576.0,
                  (hashtextextended(k2.key, 2) & 1048575) / 1048576.0,
                  (hashtextextended(k2.key, 3) & 1048575) / 1048576.0,
                  (hashtextextended(k2.key, 4) & 1048575) / 1048576.0,
                  (hashtextextended(k2.key, 5) & 1048575) / 1048576.0,
                  (hashtextextended(k2.key, 6) & 1048575) / 1048576.0,
                  (hashtextextended(k2.key, 7) & 1048575) / 1048576.0,
                  (hashtextextended(k2.key, 8) & 1048575) / 1048576.0,
                  (hashtextextended(k2.key, 9) & 1048575) / 1048576.0] as u) as uniform`;

const messagesSql = `
  insert into messages (tenant_id, id, conversation_id, direction, body, created_at)
  select c.tenant_id,
         md5(c.id::text || ':message:' || m)::uuid,
         c.id,
         case when m % 2 = 1 then 'inbound' else 'outbound' end,
         'Hello, about the ' || v.word[1 + (hashtextextended(c.id::text, m * 4) & 1048575) % n] ||
           ' and the ' || v.word[1 + (hashtextextended(c.id::text, m * 4 + 1) & 1048575) % n] ||
           ', please ' || v.word[1 + (hashtextextended(c.id::text, m * 4 + 2) & 1048575) % n] ||
           ' my ' || v.word[1 + (hashtextextended(c.id::text, m * 4 + 3) & 1048575) % n] || '. Thanks',
         c.created_at + m * interval '1 minute'
    from conversations c
   cross join bench_vocabulary v
   cross join lateral (select cardinality(v.word) as n) as size
   cross join generate_series(1, $1::int) as m
   order by c.tenant_id, c.id, m`;

/** The naive design: GIN indexes the app role cannot use under RLS (the bench owns them). */
const naiveIndexesSql = `
  create extension if not exists pg_trgm;
  create extension if not exists btree_gin;
  create index bench_naive_contacts_name_trgm on contacts using gin (name gin_trgm_ops);
  create index bench_naive_contacts_email_trgm on contacts using gin (email gin_trgm_ops);
  create index bench_naive_contacts_phone_trgm on contacts using gin (phone gin_trgm_ops);
  create index bench_naive_conversations_subject_trgm on conversations using gin (subject gin_trgm_ops);
  create index bench_naive_contacts_attributes on contacts using gin (attributes jsonb_path_ops);
  create index bench_naive_contacts_tenant_name_trgm on contacts using gin (tenant_id, name gin_trgm_ops);
  create index bench_naive_contacts_tenant_attributes
    on contacts using gin (tenant_id, attributes jsonb_path_ops)`;

/**
 * The default 128 MB of shared buffers would hold less than the search tables, and the naive
 * scans would then measure the page cache; production servers get more. Restarts once.
 */
async function ensureSharedBuffers(
  server: EmbeddedPostgresServer,
): Promise<EmbeddedPostgresServer> {
  const client = new pg.Client({ connectionString: server.connectionString('postgres') });
  await client.connect();
  let current: string | undefined;
  try {
    current = (await client.query<{ s: string }>('show shared_buffers')).rows[0]?.s;
    if (current !== sharedBuffers) {
      await client.query(`alter system set shared_buffers = '${sharedBuffers}'`);
    }
  } finally {
    await client.end();
  }
  if (current === sharedBuffers) return server;
  await server.stop();
  return startEmbeddedPostgres({ directory, durability: 'fast' });
}

async function measureAll(server: EmbeddedPostgresServer): Promise<void> {
  const appUrl = server.connectionString(database, 'tenantry_app', server.secrets.appPassword);
  const ownerUrl = server.connectionString(
    database,
    'tenantry_owner',
    server.secrets.ownerPassword,
  );
  const app = await createTenantry<AppDatabase>({
    connectionString: appUrl,
    maxConnections: 2,
    plugins: explain ? [captureQueries] : [],
  });
  // The owner bypasses RLS; it runs the naive SQL through the same unit-of-work path.
  const owner = await createTenantry<AppDatabase>({
    connectionString: ownerUrl,
    maxConnections: 2,
    guard: 'off',
  });
  const admin = new pg.Client({ connectionString: server.connectionString(database) });
  await admin.connect();
  try {
    const smallTenant = md5Uuid('bench-search-small-1');
    const facts = await admin.query<{ version: string; sizes: string }>(
      `select version() as version,
              (select string_agg(format('%s %s', relname, pg_size_pretty(pg_total_relation_size(oid))), ', ' order by relname)
                 from pg_class
                where relname in ('contacts', 'conversations', 'messages', 'contact_search_terms',
                                  'contact_attribute_terms', 'conversation_search_terms')) as sizes`,
    );
    const results: Result[] = [];
    for (const shape of shapes) {
      for (const [label, tenantId] of [
        ['big', bigTenant],
        ['small', smallTenant],
      ] as const) {
        const variants: Variant[] = [
          {
            name: 'naive_rls',
            run: (t) => app.withTenant(t, async (db) => (await shape.naive(t).execute(db)).rows),
          },
          {
            name: 'naive_bypass',
            run: (t) => owner.withTenant(t, async (db) => (await shape.naive(t).execute(db)).rows),
          },
          { name: 'terms_rls', run: (t) => app.withTenant(t, shape.terms) },
          {
            name: 'terms_rls_generic',
            run: (t) => app.withTenant(t, (db) => shape.terms(db.withPlugin(genericPlans))),
          },
        ];
        results.push(await measureShape(shape, label, tenantId, variants));
        if (explain && label === 'big') await printPlans(app, owner, shape, tenantId);
      }
    }
    const writes = await measureWrites(app, admin);
    report(results, writes, facts.rows[0]);
  } finally {
    await admin.end();
    await Promise.all([app.close(), owner.close()]);
  }
}

/**
 * Turns the repository's `plan_cache_mode` setting from `force_custom_plan` into
 * `force_generic_plan`: what the searches would cost if prepared statements went generic.
 */
const genericPlans: KyselyPlugin = {
  transformQuery(args) {
    const node = args.node;
    if (RawNode.is(node) && node.sqlFragments.some((part) => part.includes('force_custom_plan'))) {
      return RawNode.create(
        node.sqlFragments.map((part) => part.replace('force_custom_plan', 'force_generic_plan')),
        node.parameters,
      );
    }
    return node;
  },
  transformResult: (args) => Promise.resolve(args.result),
};

function md5Uuid(text: string): string {
  // Same as md5(text)::uuid in SQL.
  const hex = createHash('md5').update(text).digest('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

interface Result {
  readonly shape: string;
  readonly tenant: 'big' | 'small';
  readonly medians: Record<string, number>;
  readonly rows: number;
  readonly same: boolean | undefined;
}

async function measureShape(
  shape: Shape,
  tenant: 'big' | 'small',
  tenantId: string,
  variants: readonly Variant[],
): Promise<Result> {
  const samples = new Map<string, number[]>(variants.map((variant) => [variant.name, []]));
  const pages = new Map<string, readonly Row[]>();
  for (let round = -2; round < runs; round++) {
    for (const variant of variants) {
      const started = performance.now();
      const rows = await variant.run(tenantId);
      const elapsed = performance.now() - started;
      if (round >= 0) samples.get(variant.name)?.push(elapsed);
      pages.set(variant.name, rows);
    }
  }
  const ids = (name: string) => (pages.get(name) ?? []).map((row) => row.id).join();
  const same = shape.sameResults ? ids('terms_rls') === ids('naive_bypass') : undefined;
  if (ids('naive_rls') !== ids('naive_bypass')) {
    throw new Error(`${shape.name}: the naive query returns other rows under RLS`);
  }
  if (ids('terms_rls') !== ids('terms_rls_generic')) {
    throw new Error(`${shape.name}: the generic plan returns other rows`);
  }
  const medians: Record<string, number> = {};
  for (const [name, values] of samples) medians[name] = median(values);
  return { shape: shape.name, tenant, medians, rows: pages.get('terms_rls')?.length ?? 0, same };
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[middle] as number)
    : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}

/**
 * Prints EXPLAIN (ANALYZE, BUFFERS) of the naive SQL under RLS and as the owner, and of the
 * query the repository builds (BENCH_SEARCH_EXPLAIN=1). `captured` holds the last query the
 * app's Kysely compiled (see {@link captureQueries}).
 */
async function printPlans(
  app: Tenantry<AppDatabase>,
  owner: Tenantry<AppDatabase>,
  shape: Shape,
  tenantId: string,
): Promise<void> {
  const plan = (tenantry: Tenantry<AppDatabase>, compiled: CompiledQuery) =>
    tenantry.withTenant(tenantId, async (db) => {
      const result = await db.executeQuery<{ 'QUERY PLAN': string }>(
        CompiledQuery.raw(`explain (analyze, buffers, costs off) ${compiled.sql}`, [
          ...compiled.parameters,
        ]),
      );
      return result.rows.map((row) => row['QUERY PLAN']).join('\n');
    });
  const naive = await app.withTenant(tenantId, async (db) => shape.naive(tenantId).compile(db));
  console.log(`\n=== ${shape.name}: naive SQL, app role under RLS\n`);
  console.log(await plan(app, naive));
  console.log(`\n=== ${shape.name}: naive SQL, owner (BYPASSRLS)\n`);
  console.log(await plan(owner, naive));
  await app.withTenant(tenantId, shape.terms);
  if (captured.last !== undefined) {
    console.log(`\n=== ${shape.name}: terms, app role under RLS\n`);
    console.log(await plan(app, captured.last));
  }
}

const captured: { last: CompiledQuery | undefined } = { last: undefined };

/** A plugin that keeps the last query it sees, compiled, for {@link printPlans}. */
const captureQueries: KyselyPlugin = {
  transformQuery(args) {
    captured.last = new PostgresQueryCompiler().compileQuery(args.node, args.queryId);
    return args.node;
  },
  transformResult: (args) => Promise.resolve(args.result),
};

interface WriteResult {
  readonly name: string;
  readonly withTriggers: number;
  readonly withoutTriggers: number;
}

/**
 * The price of the terms on the write path: each statement as the app role, rolled back, with
 * the term triggers and with them disabled (ALTER TABLE ... DISABLE TRIGGER USER, by the
 * superuser, between the two series; foreign key checks stay on).
 */
async function measureWrites(app: Tenantry<AppDatabase>, admin: pg.Client): Promise<WriteResult[]> {
  const target = await app.withTenant(bigTenant, (db) =>
    db
      .selectFrom('conversations')
      .select(['id', 'contact_id'])
      .orderBy('id')
      .limit(1)
      .executeTakeFirstOrThrow(),
  );
  const operations: Record<string, (db: Kysely<AppDatabase>, i: number) => Promise<unknown>> = {
    'insert contact + conversation': async (db, i) => {
      const contact = await db
        .insertInto('contacts')
        .values({
          name: `Bench Person ${i}`,
          phone: `+1999${String(i).padStart(7, '0')}`,
          email: `bench.person${i}@example.org`,
          attributes: JSON.stringify({ plan: 'pro', seats: i }),
        })
        .returning('id')
        .executeTakeFirstOrThrow();
      await db
        .insertInto('conversations')
        .values({ contact_id: contact.id, subject: 'Refund for a late delivery' })
        .execute();
    },
    'update contact name': (db, i) =>
      db
        .updateTable('contacts')
        .set({ name: `Renamed ${i}` })
        .where('id', '=', target.contact_id)
        .execute(),
    'update contact attributes': (db, i) =>
      db
        .updateTable('contacts')
        .set({ attributes: JSON.stringify({ plan: 'gold', seats: i }) })
        .where('id', '=', target.contact_id)
        .execute(),
    'update conversation subject': (db, i) =>
      db
        .updateTable('conversations')
        .set({ subject: `Subject ${i}` })
        .where('id', '=', target.id)
        .execute(),
    'update conversation status': (db) =>
      db
        .updateTable('conversations')
        .set({ status: 'open', updated_at: new Date() })
        .where('id', '=', target.id)
        .execute(),
  };
  const series = async (operation: (db: Kysely<AppDatabase>, i: number) => Promise<unknown>) => {
    const values: number[] = [];
    for (let i = -3; i < writeRuns; i++) {
      const started = performance.now();
      await app
        .withTenant(bigTenant, async (db) => {
          await operation(db, i + 1000);
          throw rollback;
        })
        .catch((error: unknown) => {
          if (error !== rollback) throw error;
        });
      if (i >= 0) values.push(performance.now() - started);
    }
    return median(values);
  };
  const results: WriteResult[] = [];
  for (const [name, operation] of Object.entries(operations)) {
    const withTriggers = await series(operation);
    await admin.query('alter table contacts disable trigger user');
    await admin.query('alter table conversations disable trigger user');
    try {
      results.push({ name, withTriggers, withoutTriggers: await series(operation) });
    } finally {
      await admin.query('alter table contacts enable trigger user');
      await admin.query('alter table conversations enable trigger user');
    }
  }
  return results;
}

const rollback = new Error('rollback');

function report(
  results: readonly Result[],
  writes: readonly WriteResult[],
  facts: { version: string; sizes: string } | undefined,
): void {
  const cpu = os.cpus()[0]?.model ?? 'unknown cpu';
  console.log(
    `\nsearch benchmark: 1 tenant x ${bigContacts} contacts + ${smallTenants} x ${smallContacts}, one conversation per contact, ${messagesPerConversation} messages each; page of ${pageSize}; median of ${runs} interleaved runs`,
  );
  console.log(`node ${process.version}, ${os.cpus().length} x ${cpu}, ${os.totalmem() >> 30} GiB`);
  console.log(`${facts?.version ?? ''}; shared_buffers ${sharedBuffers}`);
  console.log(`sizes: ${facts?.sizes ?? ''}\n`);
  const ms = (value: number | undefined) => (value === undefined ? '' : value.toFixed(2));
  console.log(
    `${'shape'.padEnd(48)} ${'tenant'.padEnd(6)} ${'naive RLS'.padStart(10)} ${'naive BYPASS'.padStart(12)} ${'terms RLS'.padStart(10)} ${'generic'.padStart(9)} ${'speedup'.padStart(8)} ${'rows'.padStart(5)} same`,
  );
  for (const result of results) {
    const m = result.medians;
    console.log(
      `${result.shape.padEnd(48)} ${result.tenant.padEnd(6)} ${ms(m.naive_rls).padStart(10)} ${ms(m.naive_bypass).padStart(12)} ${ms(m.terms_rls).padStart(10)} ${ms(m.terms_rls_generic).padStart(9)} ${((m.naive_rls ?? 0) / (m.terms_rls ?? 1)).toFixed(1).padStart(8)} ${String(result.rows).padStart(5)} ${result.same === undefined ? '-' : result.same ? 'yes' : 'NO'}`,
    );
  }
  console.log('\nwrite path (app role, rolled back), median ms:');
  console.log(`${'statement'.padEnd(32)} ${'terms'.padStart(8)} ${'no triggers'.padStart(12)}`);
  for (const write of writes) {
    console.log(
      `${write.name.padEnd(32)} ${ms(write.withTriggers).padStart(8)} ${ms(write.withoutTriggers).padStart(12)}`,
    );
  }
  const ratio = (value: number) => Number(value.toFixed(2));
  const big = results.filter((result) => result.tenant === 'big');
  const small = results.filter((result) => result.tenant === 'small');
  const speedups = big.map((r) => (r.medians.naive_rls ?? 0) / (r.medians.terms_rls ?? 1));
  console.log(
    JSON.stringify({
      bench: 'search',
      big_speedup_min: ratio(Math.min(...speedups)),
      big_speedup_median: ratio(median(speedups)),
      big_terms_vs_bypass_max: ratio(
        Math.max(...big.map((r) => (r.medians.terms_rls ?? 0) / (r.medians.naive_bypass ?? 1))),
      ),
      small_terms_vs_naive_max: ratio(
        Math.max(...small.map((r) => (r.medians.terms_rls ?? 0) / (r.medians.naive_rls ?? 1))),
      ),
      big_generic_vs_custom_max: ratio(
        Math.max(
          ...big.map((r) => (r.medians.terms_rls_generic ?? 0) / (r.medians.terms_rls ?? 1)),
        ),
      ),
      write_overhead_max_ms: ratio(
        Math.max(...writes.map((w) => w.withTriggers - w.withoutTriggers)),
      ),
    }),
  );
}
