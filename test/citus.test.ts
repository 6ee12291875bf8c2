import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { Command } from 'commander';
import { sql } from 'kysely';
import { createTenantry, isTenantryError, migrate, type Tenantry } from 'tenantry';
import { billingMigrationSource } from 'tenantry/billing';
import { jobsMigrationSource } from 'tenantry/jobs';
import {
  type DistributionCatalogTable,
  type DistributionPlan,
  detectCitus,
  distributeTenantTables,
  planDistribution,
  readDistributionCatalog,
} from 'tenantry/placement';
import { platformMigrationSource } from 'tenantry/platform';
import { storageMigrationSource } from 'tenantry/storage';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import { addCitusCommands } from '../src/cli/citus-commands.ts';
import type { PreparedDatabase } from '../src/cli/database.ts';
import { type ReferenceDatabase, referenceTenantTables, withClient } from './fixtures.ts';

const sources = [
  jobsMigrationSource(),
  storageMigrationSource(),
  billingMigrationSource(),
  platformMigrationSource(),
  { name: 'app', directory: new URL('../app/migrations/', import.meta.url).pathname },
];

let database: TestDatabase;
let catalog: DistributionCatalogTable[];

before(async () => {
  database = await createTestDatabase();
  catalog = await withClient(database.adminUrl, (client) => readDistributionCatalog(client));
});

after(() => database.drop());

/** Everything distribution could change: Citus metadata aside, role settings and table kinds. */
async function snapshot(url: string) {
  return withClient(url, async (client) => {
    const settings = await client.query(
      'select setrole::regrole::text as role, setconfig from pg_db_role_setting order by 1, 2',
    );
    const tables = await client.query(
      `select c.oid::regclass::text as name, c.relkind from pg_class c
        join pg_namespace n on n.oid = c.relnamespace
       where n.nspname in ('public', 'tenantry', 'auth') order by 1`,
    );
    const extensions = await client.query('select extname from pg_extension order by 1');
    return { settings: settings.rows, tables: tables.rows, extensions: extensions.rows };
  });
}

function step(plan: DistributionPlan, table: string) {
  const found = plan.steps.find((candidate) => candidate.table === table);
  assert.ok(found, `no step for ${table}`);
  return found;
}

/** The catalog with `messages` and `usage_events` as Citus needs them (one level, or none). */
function flattened(tables: readonly DistributionCatalogTable[]): DistributionCatalogTable[] {
  return tables.map((table) =>
    table.multiLevelPartitioned ? { ...table, multiLevelPartitioned: false } : table,
  );
}

describe('Citus on plain PostgreSQL (no Citus needed)', () => {
  test('detectCitus reports a plain server as not Citus', async () => {
    const info = await withClient(database.adminUrl, (client) => detectCitus(client));
    assert.deepEqual(info, {
      installed: false,
      version: undefined,
      workers: 0,
      coordinatorInMetadata: false,
    });
  });

  test('distributeTenantTables refuses with a clear error and changes nothing', async () => {
    const before = await snapshot(database.adminUrl);
    await assert.rejects(
      distributeTenantTables({ connectionString: database.adminUrl }),
      (error) =>
        isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID') &&
        /no Citus extension/.test(error.message) &&
        /Nothing was changed/.test(error.message),
    );
    assert.deepEqual(await snapshot(database.adminUrl), before);
  });

  test('tenantry citus status and distribute explain and fail on a plain server', async () => {
    const written = { stdout: '', stderr: '' };
    const output = {
      stdout: { write: (text: string) => (written.stdout += text) },
      stderr: { write: (text: string) => (written.stderr += text) },
    };
    const withDatabase = <T>(fn: (prepared: PreparedDatabase) => Promise<T>) =>
      fn({
        adminUrl: database.adminUrl,
        appUrl: database.appUrl,
        analyticsUrl: database.analyticsUrl,
        embedded: undefined,
        stop: async () => {},
      });
    const program = () => {
      const command = new Command('tenantry').exitOverride();
      addCitusCommands(command, withDatabase, output);
      return command;
    };
    const before = await snapshot(database.adminUrl);
    await assert.rejects(
      program().parseAsync(['node', 'tenantry', 'citus', 'status']),
      (error) =>
        isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID') && /no Citus/.test(error.message),
    );
    assert.match(written.stdout, /citus: not installed/);
    assert.match(written.stdout, /public\.contacts\s+distributed by tenant_id\s+pending/);
    assert.match(written.stdout, /tenantry\.tenants\s+reference\s+pending/);
    assert.match(
      written.stdout,
      /blockers .*\n\s+public\.messages: it is partitioned on more than one level/,
    );
    await assert.rejects(
      program().parseAsync(['node', 'tenantry', 'citus', 'distribute']),
      (error) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
    );
    assert.equal(written.stderr, '', 'no progress: nothing was distributed');
    assert.deepEqual(await snapshot(database.adminUrl), before);
  });
});

describe('planDistribution against the reference schema', () => {
  test('every reference tenant table is distributed by tenant_id, all co-located with one anchor', () => {
    const plan = planDistribution(flattened(catalog));
    assert.deepEqual(plan.blockers, []);
    const distributed = plan.steps.filter((entry) => entry.action === 'distribute');
    for (const table of referenceTenantTables) {
      assert.equal(step(plan, `public.${table}`).action, 'distribute', table);
    }
    for (const table of ['usage_counters', 'usage_events', 'files', 'api_keys']) {
      assert.equal(step(plan, `tenantry.${table}`).action, 'distribute', table);
    }
    assert.ok(plan.anchor);
    const anchor = step(plan, plan.anchor);
    assert.equal(anchor.colocateWith, undefined);
    assert.deepEqual(anchor.values[1], 'none');
    for (const entry of distributed) {
      assert.match(
        entry.text,
        /create_distributed_table\(\$1::regclass, 'tenant_id', colocate_with => \$2\)/,
      );
      if (entry.table === plan.anchor) continue;
      assert.equal(entry.colocateWith, plan.anchor, entry.table);
      assert.equal(entry.values[1], anchor.values[0]);
    }
    assert.ok(plan.steps.every((entry) => entry.status === 'pending'));
  });

  test('the catalog and the global tables tenant tables reference become reference tables', () => {
    const plan = planDistribution(flattened(catalog));
    const reference = plan.steps
      .filter((entry) => entry.action === 'reference')
      .map((entry) => entry.table)
      .sort();
    assert.deepEqual(reference, [
      'auth.users',
      'tenantry.metrics',
      'tenantry.plan_limits',
      'tenantry.plans',
      'tenantry.tenants',
    ]);
    const local = new Map(plan.local.map((entry) => [entry.table, entry.reason]));
    assert.match(local.get('tenantry.outbox_events') ?? '', /platform ledger/);
    assert.match(local.get('graphile_worker._private_jobs') ?? '', /coordinator table/);
    assert.match(local.get('auth.refresh_tokens') ?? '', /Citus local table/);
  });

  test('every table comes after the tables it references, reference tables first', () => {
    const plan = planDistribution(flattened(catalog));
    const position = new Map(plan.steps.map((entry, index) => [entry.table, index]));
    const lastReference = Math.max(
      ...plan.steps.flatMap((entry, index) => (entry.action === 'reference' ? [index] : [])),
    );
    let checked = 0;
    for (const table of catalog) {
      const own = position.get(table.name);
      if (own === undefined) continue;
      if (step(plan, table.name).action === 'distribute') assert.ok(own > lastReference);
      for (const key of table.foreignKeys) {
        const parent = position.get(key.references);
        if (parent === undefined || key.references === table.name) continue;
        assert.ok(parent < own, `${key.references} must come before ${table.name}`);
        checked += 1;
      }
    }
    assert.ok(checked >= 10, `only ${checked} foreign keys checked`);
    assert.ok(
      (position.get('public.conversations') ?? -1) < (position.get('public.messages') ?? -1),
    );
  });

  test('the two-level partitioned tables (messages, usage_events) block distribution as they are', () => {
    const plan = planDistribution(catalog);
    assert.deepEqual(plan.blockers.map((blocker) => blocker.table).sort(), [
      'public.messages',
      'tenantry.usage_events',
    ]);
    assert.ok(plan.blockers.every((blocker) => /more than one level/.test(blocker.problem)));
  });

  test('a second run skips what Citus already holds, and refuses a table held another way', () => {
    const anchorName = planDistribution(flattened(catalog)).anchor;
    const held = flattened(catalog).map((table): DistributionCatalogTable => {
      if (table.name === 'tenantry.tenants') {
        return {
          ...table,
          citus: { type: 'reference', distributionColumn: undefined, colocationId: 1 },
        };
      }
      if (table.name === anchorName || table.name === 'public.contacts') {
        return {
          ...table,
          citus: { type: 'distributed', distributionColumn: 'tenant_id', colocationId: 7 },
        };
      }
      return table;
    });
    const plan = planDistribution(held);
    assert.deepEqual(plan.blockers, []);
    assert.equal(step(plan, 'tenantry.tenants').status, 'done');
    assert.equal(step(plan, 'public.contacts').status, 'done');
    assert.equal(step(plan, 'public.tags').status, 'pending');
    assert.equal(step(plan, 'public.tags').colocateWith, anchorName);

    const split = held.map(
      (table): DistributionCatalogTable =>
        table.name === 'public.contacts'
          ? {
              ...table,
              citus: { type: 'distributed', distributionColumn: 'tenant_id', colocationId: 8 },
            }
          : table.name === 'public.tags'
            ? {
                ...table,
                citus: { type: 'distributed', distributionColumn: 'id', colocationId: 7 },
              }
            : table.name === 'auth.users'
              ? {
                  ...table,
                  citus: { type: 'distributed', distributionColumn: 'id', colocationId: 9 },
                }
              : table,
    );
    const problems = planDistribution(split).blockers.map((blocker) => blocker.problem);
    assert.ok(problems.some((problem) => /different co-location groups/.test(problem)));
    assert.ok(problems.some((problem) => /already distributed by id, not tenant_id/.test(problem)));
    assert.ok(problems.some((problem) => /already holds it as a distributed table/.test(problem)));
  });

  test('unique keys without tenant_id, cross-tenant foreign keys and a reference table pointing at a tenant table are blockers', () => {
    const broken = flattened(catalog).map((table): DistributionCatalogTable => {
      if (table.name === 'public.tags')
        return { ...table, uniqueKeys: [...table.uniqueKeys, ['name']] };
      if (table.name === 'public.contact_tags') {
        return {
          ...table,
          foreignKeys: [
            ...table.foreignKeys,
            {
              name: 'contact_tags_tag_fk',
              columns: ['tag_id'],
              references: 'public.tags',
              referencedColumns: ['id'],
            },
          ],
        };
      }
      if (table.name === 'tenantry.plans') {
        return {
          ...table,
          foreignKeys: [
            ...table.foreignKeys,
            {
              name: 'plans_showcase_fk',
              columns: ['showcase', 'id'],
              references: 'public.contacts',
              referencedColumns: ['tenant_id', 'id'],
            },
          ],
        };
      }
      return table;
    });
    const blockers = planDistribution(broken).blockers;
    const of = (table: string) =>
      blockers.filter((blocker) => blocker.table === table).map((b) => b.problem);
    assert.match(of('public.tags').join(), /unique key \(name\) does not contain tenant_id/);
    assert.match(
      of('public.contact_tags').join(),
      /contact_tags_tag_fk to public.tags does not match tenant_id/,
    );
    assert.match(of('tenantry.plans').join(), /reference table cannot reference a distributed one/);
    assert.equal(blockers.length, 3);
  });

  test('a policy with a subquery, read from a real catalog, is a blocker', async () => {
    await withClient(database.adminUrl, async (client) => {
      await client.query(`
        create table public.citus_probe (
          tenant_id uuid not null references tenantry.tenants (id),
          id uuid not null default gen_random_uuid(),
          primary key (tenant_id, id));
        select tenantry.enable_tenant_isolation('public.citus_probe');
        create policy probe_members on public.citus_probe as restrictive for select
          using (exists (select 1 from public.memberships m where m.tenant_id = citus_probe.tenant_id));`);
    });
    try {
      const plan = planDistribution(
        flattened(await withClient(database.adminUrl, (client) => readDistributionCatalog(client))),
      );
      assert.deepEqual(
        plan.blockers.map((blocker) => [
          blocker.table,
          /policy probe_members contains a subquery/.test(blocker.problem),
        ]),
        [['public.citus_probe', true]],
      );
      assert.equal(step(plan, 'public.citus_probe').action, 'distribute');
    } finally {
      await withClient(database.adminUrl, (client) =>
        client.query('drop table public.citus_probe'),
      );
    }
  });
});

const citusUrl = process.env.CITUS_URL;
const skipCitus =
  citusUrl === undefined || citusUrl === ''
    ? 'CITUS_URL not set: start a Citus cluster (docs/guides/scale-out-with-citus.md) to run these'
    : false;

/** The app role on the coordinator: CITUS_APP_URL, or CITUS_URL as tenantry_app without a password. */
function citusAppUrl(): string {
  const explicit = process.env.CITUS_APP_URL;
  if (explicit !== undefined && explicit !== '') return explicit;
  const url = new URL(citusUrl ?? '');
  url.username = 'tenantry_app';
  url.password = '';
  return url.toString();
}

describe('on a Citus cluster (CITUS_URL)', () => {
  let tenantry: Tenantry<ReferenceDatabase>;
  const tenantA = randomUUID();
  const tenantB = randomUUID();

  before(async () => {
    if (skipCitus !== false) return;
    await migrate({ connectionString: citusUrl as string, sources });
    await distributeTenantTables({ connectionString: citusUrl as string });
    await withClient(citusUrl as string, async (client) => {
      for (const [id, slug] of [
        [tenantA, `citus-a-${tenantA.slice(0, 8)}`],
        [tenantB, `citus-b-${tenantB.slice(0, 8)}`],
      ]) {
        await client.query('insert into tenantry.tenants (id, slug, name) values ($1, $2, $2)', [
          id,
          slug,
        ]);
      }
    });
    tenantry = await createTenantry<ReferenceDatabase>({ connectionString: citusAppUrl() });
    for (const tenantId of [tenantA, tenantB]) {
      await tenantry.withTenant(tenantId, (db) =>
        db
          .insertInto('contacts')
          .values({ name: `contact of ${tenantId}` })
          .execute(),
      );
    }
  });

  after(async () => {
    if (skipCitus !== false) return;
    await tenantry?.close();
  });

  test('every tenant table is distributed by tenant_id in one co-location group, the catalog is reference', {
    skip: skipCitus,
  }, async () => {
    const rows = await withClient(citusUrl as string, async (client) => {
      const result = await client.query<{
        name: string;
        method: string;
        column: string | null;
        colocation: number;
      }>(
        `select logicalrelid::regclass::text as name, partmethod as method,
                case when partmethod = 'h' then column_to_column_name(logicalrelid, partkey) end as column,
                colocationid as colocation
           from pg_dist_partition`,
      );
      return result.rows;
    });
    const byName = new Map(rows.map((row) => [row.name, row]));
    const colocations = new Set<number>();
    for (const table of referenceTenantTables) {
      const row = byName.get(table);
      assert.equal(row?.method, 'h', table);
      assert.equal(row?.column, 'tenant_id', table);
      colocations.add(row.colocation);
    }
    assert.equal(colocations.size, 1);
    assert.equal(byName.get('tenantry.tenants')?.method, 'n');
    const again = await distributeTenantTables({ connectionString: citusUrl as string });
    assert.deepEqual([again.distributed, again.reference], [[], []]);
  });

  test('tenant A cannot read or write tenant B through Tenantry', { skip: skipCitus }, async () => {
    const seen = await tenantry.withTenant(tenantA, (db) =>
      db.selectFrom('contacts').select('tenant_id').execute(),
    );
    assert.ok(seen.length > 0);
    assert.ok(seen.every((row) => row.tenant_id === tenantA));
    await assert.rejects(
      tenantry.withTenant(tenantA, (db) =>
        db.insertInto('contacts').values({ name: 'forged', tenant_id: tenantB }).execute(),
      ),
    );
  });

  test('SET LOCAL reaches the workers: a query over every shard sees only the tenant in context', {
    skip: skipCitus,
  }, async () => {
    const counts = await withClient(citusAppUrl(), async (client) => {
      await client.query('begin');
      await client.query(`set local tenantry.tenant_id = '${tenantA}'`);
      // No tenant_id filter: Citus fans out to every shard, where only RLS (reading the
      // forwarded setting) keeps tenant B's rows out.
      const result = await client.query<{ tenants: string[]; n: number }>(
        'select array_agg(distinct tenant_id)::text[] as tenants, count(*)::int as n from contacts',
      );
      await client.query('rollback');
      return result.rows[0];
    });
    assert.deepEqual(counts?.tenants, [tenantA]);
  });

  test('a single-tenant query is routed to one worker (one task)', {
    skip: skipCitus,
  }, async () => {
    const plan = await tenantry.withTenant(tenantA, async (db) => {
      const result = await sql<{
        'QUERY PLAN': string;
      }>`explain select * from contacts where tenant_id = ${tenantA}`.execute(db);
      return result.rows.map((row) => row['QUERY PLAN']).join('\n');
    });
    assert.match(plan, /Task Count: 1\b/);
  });
});
