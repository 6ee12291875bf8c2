import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { CompiledQuery, type Kysely, sql } from 'kysely';
import pg from 'pg';
import { createTenantry, isTenantryError, type Tenantry } from 'tenantry';
import {
  dedicatedPartitionName,
  dedicatePartition,
  listPartitions,
  type PartitionProgress,
  undedicatePartition,
} from 'tenantry/platform';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import type { DoctorContext } from '../src/doctor/checks.ts';
import { runDoctor } from '../src/doctor/doctor.ts';
import { checkPartitionLayout } from '../src/doctor/partition-checks.ts';
import { type ReferenceDatabase, type SeededTenant, seedTenant, withClient } from './fixtures.ts';

const partitionedTables = ['public.messages', 'tenantry.usage_events'] as const;
const messagesPerTenant = 120;

let database: TestDatabase;
let tenantry: Tenantry<ReferenceDatabase>;
let tenants: SeededTenant[];

before(async () => {
  database = await createTestDatabase();
  tenantry = await createTenantry<ReferenceDatabase>({ connectionString: database.appUrl });
  tenants = [];
  for (const slug of ['alpha', 'bravo', 'charlie', 'delta']) {
    tenants.push(await seedTenant(database.adminUrl, tenantry, slug));
  }
  // More messages per tenant, through the quota trigger like any write (so usage_events fills).
  await admin(
    `insert into messages (tenant_id, conversation_id, direction, body, created_at)
     select c.tenant_id, c.id, 'outbound', 'bulk ' || g, now() - g * interval '1 minute'
       from conversations c cross join generate_series(1, $1::int) g`,
    [messagesPerTenant],
  );
  await admin('analyze messages; analyze tenantry.usage_events');
});

after(async () => {
  await tenantry?.close();
  await database?.drop();
});

async function admin<R extends pg.QueryResultRow = pg.QueryResultRow>(
  text: string,
  values: unknown[] = [],
): Promise<R[]> {
  return withClient(
    database.adminUrl,
    async (client) => (await client.query<R>(text, values)).rows,
  );
}

function tenantAt(index: number): SeededTenant {
  const tenant = tenants[index];
  assert.ok(tenant !== undefined);
  return tenant;
}

/** Per tenant and table: row count and an md5 over every row, ordered by key. */
async function snapshot(): Promise<Map<string, string>> {
  const rows = await admin<{ key: string; value: string }>(
    `select 'messages/' || tenant_id as key, count(*) || ':' || md5(string_agg(m::text, '|' order by m.id)) as value
       from messages m group by tenant_id
     union all
     select 'usage_events/' || tenant_id, count(*) || ':' || md5(string_agg(e::text, '|' order by e.id))
       from tenantry.usage_events e group by tenant_id
     union all
     select 'message_attachments/' || tenant_id, count(*) || ':' || md5(string_agg(a::text, '|' order by a.message_id))
       from message_attachments a group by tenant_id`,
  );
  return new Map(rows.map((row) => [row.key, row.value]));
}

async function partitionOfRows(table: string, tenantId: string): Promise<string[]> {
  const rows = await admin<{ partition: string }>(
    `select distinct tableoid::regclass::text as partition from ${table} where tenant_id = $1`,
    [tenantId],
  );
  return rows.map((row) => row.partition);
}

interface PlanNode {
  'Relation Name'?: string;
  'Subplans Removed'?: number;
  Plans?: PlanNode[];
}

function scannedRelations(node: PlanNode): string[] {
  return [
    ...(node['Relation Name'] === undefined ? [] : [node['Relation Name']]),
    ...(node.Plans ?? []).flatMap(scannedRelations),
  ];
}

function subplansRemoved(node: PlanNode): number {
  return (
    (node['Subplans Removed'] ?? 0) + (node.Plans ?? []).reduce((n, p) => n + subplansRemoved(p), 0)
  );
}

function newestMessages(db: Kysely<ReferenceDatabase>) {
  return db
    .selectFrom('messages')
    .select(['id', 'body', 'created_at'])
    .orderBy('created_at', 'desc')
    .limit(50);
}

/**
 * The app's "newest 50 messages" query, compiled through the Tenantry guard as the app role,
 * explained with its parameters (custom plan: pruned by the planner) and, as a prepared
 * statement forced to a generic plan, explained while executed (pruned at executor startup).
 */
async function explainNewest(tenantId: string) {
  return tenantry.withTenant(tenantId, async (db) => {
    const compiled = newestMessages(db).compile();
    assert.match(compiled.sql, /"tenant_id" = \$1/);
    const custom = await db.executeQuery<{ 'QUERY PLAN': [{ Plan: PlanNode }] }>(
      CompiledQuery.raw(`explain (format json) ${compiled.sql}`, [...compiled.parameters]),
    );
    await sql`set local plan_cache_mode = force_generic_plan`.execute(db);
    await sql.raw(`prepare newest_messages (uuid, bigint) as ${compiled.sql}`).execute(db);
    const generic = await sql<{
      'QUERY PLAN': [{ Plan: PlanNode }];
    }>`explain (analyze, format json, costs off, timing off, summary off) execute newest_messages(${sql.lit(tenantId)}::uuid, 50)`.execute(
      db,
    );
    await sql`deallocate newest_messages`.execute(db);
    const rows = await newestMessages(db).execute();
    const customPlan = custom.rows[0]?.['QUERY PLAN'][0].Plan;
    const genericPlan = generic.rows[0]?.['QUERY PLAN'][0].Plan;
    assert.ok(customPlan !== undefined && genericPlan !== undefined);
    return { customPlan, genericPlan, rows };
  });
}

async function leafCount(table: string): Promise<number> {
  const rows = await admin<{ n: number }>(
    'select count(*)::int as n from pg_partition_tree($1::regclass) where isleaf',
    [table],
  );
  return rows[0]?.n ?? 0;
}

describe('partition layout', () => {
  test('messages and usage_events are LIST (tenant_id) over a DEFAULT partition HASH (tenant_id) into 16', async () => {
    for (const table of partitionedTables) {
      const rows = await admin<{
        level: number;
        strategy: string | null;
        key: string | null;
        bound: string | null;
      }>(
        `select t.level, p.partstrat as strategy, pg_get_partkeydef(t.relid) as key,
                pg_get_expr(c.relpartbound, c.oid) as bound
           from pg_partition_tree($1::regclass) t
           join pg_class c on c.oid = t.relid
           left join pg_partitioned_table p on p.partrelid = t.relid
          order by t.level, c.relname`,
        [table],
      );
      assert.deepEqual(
        rows.slice(0, 2).map((row) => [row.level, row.key, row.bound]),
        [
          [0, 'LIST (tenant_id)', null],
          [1, 'HASH (tenant_id)', 'DEFAULT'],
        ],
      );
      const hashBounds = rows.slice(2).map((row) => row.bound);
      assert.equal(hashBounds.length, 16);
      for (let remainder = 0; remainder < 16; remainder++) {
        assert.ok(hashBounds.includes(`FOR VALUES WITH (modulus 16, remainder ${remainder})`));
      }
    }
  });

  test('every partition has RLS enabled and forced, both policies, and no app-role privileges', async () => {
    for (const table of partitionedTables) {
      const rows = await admin<{
        name: string;
        level: number;
        rls: boolean;
        forced: boolean;
        policies: string[];
        app_privileges: boolean;
      }>(
        `select c.relname as name, t.level, c.relrowsecurity as rls, c.relforcerowsecurity as forced,
                coalesce((select array_agg(p.polname::text order by p.polname) from pg_policy p where p.polrelid = c.oid), '{}') as policies,
                has_table_privilege('tenantry_app', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') as app_privileges
           from pg_partition_tree($1::regclass) t join pg_class c on c.oid = t.relid`,
        [table],
      );
      assert.equal(rows.length, 18);
      for (const row of rows) {
        assert.ok(row.rls && row.forced, `${row.name}: RLS enabled and forced`);
        assert.deepEqual(
          row.policies,
          ['tenantry_tenant_isolation', 'tenantry_tenant_rows'],
          row.name,
        );
        assert.equal(
          row.app_privileges,
          row.level === 0,
          `${row.name}: app privileges only on the parent`,
        );
      }
    }
  });

  test('the app role cannot read or write a partition directly (permission denied)', async () => {
    const tenant = tenantAt(0);
    const client = new pg.Client({ connectionString: database.appUrl });
    await client.connect();
    try {
      const attempts = [
        'select count(*) from messages_h00',
        'select count(*) from messages_hashed',
        `insert into messages_hashed (conversation_id, direction, body) values ('${tenant.conversationId}', 'inbound', 'x')`,
        'delete from messages_h01',
        'select count(*) from tenantry.usage_events_h00',
        'select count(*) from tenantry.usage_events_hashed',
      ];
      for (const statement of attempts) {
        await client.query('begin');
        await client.query(`select set_config('tenantry.tenant_id', $1, true)`, [tenant.tenantId]);
        await assert.rejects(client.query(statement), { code: '42501' }, statement);
        await client.query('rollback');
      }
      // The parent works, and only shows the tenant's own rows.
      await client.query('begin');
      await client.query(`select set_config('tenantry.tenant_id', $1, true)`, [tenant.tenantId]);
      const visible = await client.query<{ n: number; tenants: number }>(
        'select count(*)::int as n, count(distinct tenant_id)::int as tenants from messages',
      );
      await client.query('rollback');
      assert.deepEqual(visible.rows[0], { n: messagesPerTenant + 1, tenants: 1 });
    } finally {
      await client.end();
    }
  });

  test('the newest 50 messages of a tenant, through the guard as the app role, read one partition', async () => {
    for (const tenant of tenants) {
      const [leaf] = await partitionOfRows('messages', tenant.tenantId);
      assert.ok(leaf?.startsWith('messages_h'));
      const { customPlan, genericPlan, rows } = await explainNewest(tenant.tenantId);
      assert.deepEqual(scannedRelations(customPlan), [leaf]);
      assert.deepEqual(scannedRelations(genericPlan), [leaf]);
      // Generic plan: every other leaf is removed when the executor starts.
      assert.equal(subplansRemoved(genericPlan), (await leafCount('messages')) - 1);
      assert.equal(rows.length, 50);
    }
  });
});

describe('dedicated partitions', () => {
  test('dedicate moves one tenant into its own partition, verified, without touching the others', async () => {
    const big = tenantAt(1);
    const before = await snapshot();
    const hashLeaf = (await partitionOfRows('messages', big.tenantId))[0];
    const steps: PartitionProgress[] = [];

    const moved = await dedicatePartition({
      connectionString: database.adminUrl,
      table: 'messages',
      tenantId: big.tenantId,
      onProgress: (step) => steps.push(step),
    });
    const usage = await dedicatePartition({
      connectionString: database.adminUrl,
      table: 'tenantry.usage_events',
      tenantId: big.tenantId,
    });

    const partition = `public.${dedicatedPartitionName('messages', big.tenantId)}`;
    assert.equal(moved.partition, partition);
    assert.equal(moved.hashPartition, `public.${hashLeaf}`);
    assert.equal(moved.rowsMoved, messagesPerTenant + 1);
    assert.ok(usage.rowsMoved >= messagesPerTenant + 1);
    assert.deepEqual(
      [...new Set(steps.map((step) => step.phase))],
      [
        'locking',
        'counting',
        'copying',
        'deleting',
        'attaching',
        'securing',
        'verifying',
        'committed',
      ],
    );
    // Every row of every tenant is still there, once: counts and checksums per tenant and table
    // (the attachments referencing the moved messages included: their cascade did not fire).
    assert.deepEqual(await snapshot(), before);
    assert.deepEqual(await partitionOfRows('messages', big.tenantId), [
      partition.slice('public.'.length),
    ]);
    assert.deepEqual(await partitionOfRows('tenantry.usage_events', big.tenantId), [
      usage.partition,
    ]);
    for (const other of tenants.filter((tenant) => tenant !== big)) {
      assert.ok((await partitionOfRows('messages', other.tenantId))[0]?.startsWith('messages_h'));
    }

    // The new partition follows the convention and is not reachable by the app role.
    const [security] = await admin<{
      rls: boolean;
      forced: boolean;
      policies: number;
      app: boolean;
    }>(
      `select c.relrowsecurity as rls, c.relforcerowsecurity as forced,
              (select count(*)::int from pg_policy p where p.polrelid = c.oid) as policies,
              has_table_privilege('tenantry_app', c.oid, 'SELECT, INSERT, UPDATE, DELETE') as app
         from pg_class c where c.oid = $1::regclass`,
      [partition],
    );
    assert.deepEqual(security, { rls: true, forced: true, policies: 2, app: false });
    const client = new pg.Client({ connectionString: database.appUrl });
    await client.connect();
    try {
      await client.query('begin');
      await client.query(`select set_config('tenantry.tenant_id', $1, true)`, [big.tenantId]);
      await assert.rejects(client.query(`select count(*) from ${partition}`), { code: '42501' });
      await client.query('rollback');
    } finally {
      await client.end();
    }

    // The tenant's queries work through the app role and read the dedicated partition only.
    const { customPlan, genericPlan, rows } = await explainNewest(big.tenantId);
    assert.deepEqual(scannedRelations(customPlan), [partition.slice('public.'.length)]);
    assert.deepEqual(scannedRelations(genericPlan), [partition.slice('public.'.length)]);
    assert.equal(rows.length, 50);
    const other = await explainNewest(tenantAt(2).tenantId);
    assert.deepEqual(
      scannedRelations(other.customPlan),
      await partitionOfRows('messages', tenantAt(2).tenantId),
    );

    // New writes land in the dedicated partition and are still metered.
    const inserted = await tenantry.withTenant(big.tenantId, (db) =>
      db
        .insertInto('messages')
        .values({
          conversation_id: big.conversationId,
          direction: 'inbound',
          body: 'after the move',
        })
        .returning('id')
        .executeTakeFirstOrThrow(),
    );
    const [placed] = await admin<{ partition: string; events: number }>(
      `select m.tableoid::regclass::text as partition,
              (select count(*)::int from tenantry.usage_events e
                where e.tenant_id = m.tenant_id and e.idempotency_key = 'message:' || m.id) as events
         from messages m where m.tenant_id = $1 and m.id = $2`,
      [big.tenantId, inserted.id],
    );
    assert.deepEqual(placed, { partition: partition.slice('public.'.length), events: 1 });

    const listed = await listPartitions({ connectionString: database.adminUrl, table: 'messages' });
    const dedicated = listed.filter((entry) => entry.role === 'dedicated');
    assert.deepEqual(
      dedicated.map((entry) => [entry.name, entry.tenantId]),
      [[partition, big.tenantId]],
    );
    assert.equal(listed.filter((entry) => entry.role === 'hash').length, 16);
    assert.ok(listed.every((entry) => entry.rowSecurity && entry.forceRowSecurity));

    // The doctor finds nothing wrong with the partitions.
    const report = await runDoctor({
      connectionString: database.adminUrl,
      schemas: ['public', 'tenantry'],
    });
    assert.deepEqual(
      report.findings.filter((entry) => /messages|usage_events/.test(entry.object)),
      [],
    );
  });

  test('dedicating twice is refused and changes nothing', async () => {
    const big = tenantAt(1);
    const before = await snapshot();
    await assert.rejects(
      dedicatePartition({
        connectionString: database.adminUrl,
        table: 'messages',
        tenantId: big.tenantId,
      }),
      (error) =>
        isTenantryError(error) && /already has the dedicated partition/.test(error.message),
    );
    assert.deepEqual(await snapshot(), before);
  });

  test('a table outside the layout is refused', async () => {
    await assert.rejects(
      dedicatePartition({
        connectionString: database.adminUrl,
        table: 'contacts',
        tenantId: tenantAt(0).tenantId,
      }),
      (error) =>
        isTenantryError(error, 'TENANTRY_ERR_PARTITION_LAYOUT_INVALID') &&
        /not in the tenant partition layout/.test(error.message),
    );
  });

  test('undedicate moves the rows back into their hash partition and drops the dedicated one', async () => {
    const big = tenantAt(1);
    const before = await snapshot();
    const result = await undedicatePartition({
      connectionString: database.adminUrl,
      table: 'messages',
      tenantId: big.tenantId,
    });
    assert.equal(result.rowsMoved, messagesPerTenant + 2);
    assert.deepEqual(await snapshot(), before);
    assert.deepEqual(await partitionOfRows('messages', big.tenantId), [
      result.hashPartition.slice('public.'.length),
    ]);
    const [gone] = await admin<{ exists: boolean }>(
      'select to_regclass($1) is not null as exists',
      [result.partition],
    );
    assert.equal(gone?.exists, false);
    await assert.rejects(
      undedicatePartition({
        connectionString: database.adminUrl,
        table: 'messages',
        tenantId: big.tenantId,
      }),
      (error) => isTenantryError(error) && /has no dedicated partition/.test(error.message),
    );
  });

  test('a move keeps the app role append-only on usage_events (no INSERT, UPDATE or DELETE)', async () => {
    const privileges = async () =>
      admin<{ privilege: string; granted: boolean }>(
        `select privilege, has_table_privilege('tenantry_app', 'tenantry.usage_events', privilege) as granted
           from unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE']) as privilege order by 1`,
      );
    const before = await privileges();
    assert.deepEqual(
      before.filter((row) => row.granted).map((row) => row.privilege),
      ['SELECT'],
    );
    const tenantId = tenantAt(2).tenantId;
    await dedicatePartition({
      connectionString: database.adminUrl,
      table: 'tenantry.usage_events',
      tenantId,
    });
    assert.deepEqual(await privileges(), before);
    await undedicatePartition({
      connectionString: database.adminUrl,
      table: 'tenantry.usage_events',
      tenantId,
    });
    assert.deepEqual(await privileges(), before);
  });
});

describe('doctor: partition layout', () => {
  async function auditLayout(holeSql: string) {
    const scratch = await createTestDatabase();
    try {
      return await withClient(scratch.adminUrl, async (client) => {
        if (holeSql !== '') await client.query(holeSql);
        const tables = await client.query<{ oid: number; name: string }>(
          `select c.oid, format('%I.%I', n.nspname, c.relname) as name
             from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname in ('public', 'tenantry') and c.relkind in ('r', 'p') and not c.relispartition
              and exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant_id')`,
        );
        const partitions = await client.query<{ oid: number; name: string; root: string }>(
          `select t.relid::oid as oid, t.relid::regclass::text as name, r.name as root
             from unnest($1::oid[], $2::text[]) as r(oid, name)
             cross join lateral pg_partition_tree(r.oid) t
            where t.level > 0`,
          [tables.rows.map((row) => row.oid), tables.rows.map((row) => row.name)],
        );
        const relation = (row: { oid: number; name: string; root?: string }) => ({
          oid: row.oid,
          name: row.name,
          root: row.root ?? row.name,
          rls: true,
          forced: true,
        });
        const context = {
          db: client,
          schemas: ['public'],
          tenantrySchema: 'tenantry',
          appOid: 0,
          appIsSuperuser: false,
          appBypassesRls: false,
          trustedSecurityDefinerFunctions: [],
          sql: {
            tenantrySchema: 'tenantry',
            app: 'tenantry_app',
            owner: 'tenantry_owner',
            database: '',
          },
          tenantTables: tables.rows.map(relation),
          partitions: partitions.rows.map(relation),
        } satisfies DoctorContext;
        return checkPartitionLayout(context);
      });
    } finally {
      await scratch.drop();
    }
  }

  test('the migrated layout has no finding', async () => {
    assert.deepEqual(await auditLayout(''), []);
  });

  test('a hash partition set with a gap is an error, with the partition to create', async () => {
    const findings = await auditLayout('alter table messages_hashed detach partition messages_h03');
    assert.deepEqual(
      findings.map((entry) => [entry.kind, entry.severity, entry.object]),
      [['hash_partitions_incomplete', 'error', 'public.messages_hashed']],
    );
    assert.match(findings[0]?.fix ?? '', /for values with \(modulus 16, remainder 3\)/);
  });

  test('a tenant table partitioned by time (a conventional layout) is no finding', async () => {
    const findings = await auditLayout(
      `create table events (tenant_id uuid not null, id uuid not null, at timestamptz not null,
         primary key (tenant_id, id, at)) partition by range (at);
       create table events_2026 partition of events for values from ('2026-01-01') to ('2027-01-01');
       select tenantry.enable_tenant_isolation('events');`,
    );
    assert.deepEqual(findings, []);
  });
});
