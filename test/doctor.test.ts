import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { after, describe, test } from 'node:test';
import { isTenantryError } from 'tenantry';
import { createTestDatabase, readTestCluster } from 'tenantry/testing';
import {
  type DoctorOptions,
  type DoctorReport,
  doctorFindingKinds,
  formatDoctorReport,
  runDoctor,
  trustedSecurityDefinerFunctions,
} from '../src/doctor/doctor.ts';

import { referenceTenantTables, withClient } from './fixtures.ts';

const referenceTables = referenceTenantTables.map((table) => `public.${table}`).sort();

/** Clones the migrated template, breaks it with `holeSql` as the superuser, audits it, drops it. */
async function audit(holeSql = '', options: Partial<DoctorOptions> = {}): Promise<DoctorReport> {
  const database = await createTestDatabase();
  try {
    if (holeSql !== '') await withClient(database.adminUrl, (client) => client.query(holeSql));
    return await runDoctor({ ...options, connectionString: database.adminUrl });
  } finally {
    await database.drop();
  }
}

const scratchRoles: string[] = [];

/**
 * Creates a throwaway role to stand in as the app role: roles are cluster-wide and other test
 * files share the cluster, so the real Tenantry roles are never altered.
 */
async function createScratchRole(attributes: 'superuser' | 'bypassrls' | 'noinherit') {
  const role = `doctor_${randomBytes(6).toString('hex')}`;
  await withClient(readTestCluster().adminUrl, (client) =>
    client.query(`create role ${role} nologin ${attributes}`),
  );
  scratchRoles.push(role);
  return role;
}

after(async () => {
  await withClient(readTestCluster().adminUrl, async (client) => {
    for (const role of scratchRoles) await client.query(`drop role if exists ${role}`);
  });
});

/** `severity kind object`, sorted: the whole report, so an extra or missing finding fails too. */
function outline(report: DoctorReport): string[] {
  return report.findings.map((finding) => `${finding.severity} ${finding.kind} ${finding.object}`);
}

function findingOf(report: DoctorReport, kind: string, object: string) {
  const found = report.findings.find((item) => item.kind === kind && item.object === object);
  assert.ok(found, `expected ${kind} on ${object}, got ${JSON.stringify(outline(report))}`);
  return found;
}

const tenantCheck = 'tenant_id = tenantry.current_tenant_id()';

const partitionedEvents = `
  create table events (
    tenant_id uuid not null,
    id uuid not null default gen_random_uuid(),
    at date not null,
    primary key (tenant_id, id, at)
  ) partition by range (at);
  create table events_2024 partition of events
    for values from ('2024-01-01') to ('2025-01-01') partition by range (at);
  create table events_2024_h1 partition of events_2024
    for values from ('2024-01-01') to ('2024-07-01');
  select tenantry.enable_tenant_isolation('events');`;

describe('runDoctor on the reference schema', () => {
  test('reports no finding on the clean, migrated schema', async () => {
    const report = await audit();
    assert.deepEqual(report.findings, []);
    assert.deepEqual(report.tenantTables, referenceTables);
    assert.ok(!Number.isNaN(Date.parse(report.checkedAt)));
  });

  test('reports no finding for conventional additions (negative control)', async () => {
    const report = await audit(`
      ${partitionedEvents}
      create view contact_names with (security_invoker = true) as select id, name from contacts;
      create function public.tenant_contacts_count() returns bigint language sql stable
        as $$ select count(*) from contacts where tenant_id = tenantry.current_tenant_id() $$;
      create policy contacts_named on contacts as restrictive for all
        using (name <> '') with check (name <> '');
      create table notes (
        tenant_id uuid not null, id uuid not null, contact_id uuid not null,
        primary key (tenant_id, id)
      );
      select tenantry.add_tenant_foreign_key('notes', 'contact_id', 'contacts');
      select tenantry.enable_tenant_isolation('notes');`);
    assert.deepEqual(outline(report), []);
    assert.deepEqual(
      report.tenantTables,
      [...referenceTables, 'public.events', 'public.notes'].sort(),
    );
  });

  test('scans only the managed schemas it is given', async () => {
    const hole = `
      create schema crm;
      create table crm.deals (tenant_id uuid not null, id uuid not null, primary key (tenant_id, id));`;
    assert.deepEqual(outline(await audit(hole)), []);
    const report = await audit(hole, { schemas: ['public', 'crm'] });
    assert.deepEqual(outline(report), [
      'error rls_disabled crm.deals',
      'error rls_not_forced crm.deals',
      'error policy_missing crm.deals',
    ]);
    assert.ok(report.tenantTables.includes('crm.deals'));
  });
});

interface HoleCase {
  readonly name: string;
  readonly kind: (typeof doctorFindingKinds)[number];
  /** Attributes of a scratch role audited as the app role; tenantry_app otherwise. */
  readonly appRole?: 'superuser' | 'bypassrls' | 'noinherit';
  readonly hole: (app: string) => string;
  readonly expected: (app: string) => readonly string[];
  readonly inspect?: (report: DoctorReport, app: string) => void;
}

const holes: readonly HoleCase[] = [
  {
    name: 'RLS disabled on a tenant table',
    kind: 'rls_disabled',
    hole: () => 'alter table contacts disable row level security',
    expected: () => ['error rls_disabled public.contacts'],
  },
  {
    name: 'RLS not forced on a tenant table',
    kind: 'rls_not_forced',
    hole: () => 'alter table contacts no force row level security',
    expected: () => ['error rls_not_forced public.contacts'],
    inspect: (report) =>
      assert.equal(
        findingOf(report, 'rls_not_forced', 'public.contacts').fix,
        'alter table public.contacts force row level security;',
      ),
  },
  {
    name: 'a tenant table without any policy',
    kind: 'policy_missing',
    hole: () => `
      drop policy tenantry_tenant_rows on tags;
      drop policy tenantry_tenant_isolation on tags;`,
    expected: () => ['error policy_missing public.tags'],
  },
  {
    name: 'the restrictive isolation policy dropped',
    kind: 'isolation_policy_not_restrictive',
    hole: () => 'drop policy tenantry_tenant_isolation on messages',
    expected: () => ['error isolation_policy_not_restrictive public.messages'],
  },
  {
    name: 'the isolation policy recreated as permissive',
    kind: 'isolation_policy_not_restrictive',
    hole: () => `
      drop policy tenantry_tenant_isolation on contact_tags;
      create policy tenantry_tenant_isolation on contact_tags as permissive for all
        using (${tenantCheck}) with check (${tenantCheck});`,
    expected: () => [
      'error isolation_policy_not_restrictive public.contact_tags',
      'warning extra_permissive_policy policy tenantry_tenant_isolation on public.contact_tags',
    ],
  },
  {
    name: 'a restrictive isolation policy that does not apply to the app role',
    kind: 'isolation_policy_not_restrictive',
    hole: () => `
      drop policy tenantry_tenant_isolation on contacts;
      create policy tenantry_tenant_isolation on contacts as restrictive for all to tenantry_analytics
        using (${tenantCheck}) with check (${tenantCheck});`,
    expected: () => ['error isolation_policy_not_restrictive public.contacts'],
  },
  {
    name: 'a restrictive isolation policy that does not compare tenant_id',
    kind: 'isolation_policy_not_restrictive',
    hole: () => `
      drop policy tenantry_tenant_isolation on contacts;
      create policy tenantry_tenant_isolation on contacts as restrictive for all
        using (true) with check (true);`,
    expected: () => ['error isolation_policy_not_restrictive public.contacts'],
  },
  {
    name: 'a policy for all commands without WITH CHECK',
    kind: 'policy_without_with_check',
    hole: () => `
      drop policy tenantry_tenant_rows on contacts;
      create policy tenantry_tenant_rows on contacts for all using (${tenantCheck});`,
    expected: () => [
      'warning policy_without_with_check policy tenantry_tenant_rows on public.contacts',
    ],
    inspect: (report) =>
      assert.equal(
        findingOf(
          report,
          'policy_without_with_check',
          'policy tenantry_tenant_rows on public.contacts',
        ).fix,
        `alter policy tenantry_tenant_rows on public.contacts with check (${tenantCheck});`,
      ),
  },
  {
    name: 'an extra permissive policy',
    kind: 'extra_permissive_policy',
    hole: () => 'create policy contacts_read_all on contacts for select using (true)',
    expected: () => ['warning extra_permissive_policy policy contacts_read_all on public.contacts'],
  },
  {
    name: 'a policy that casts tenant_id',
    kind: 'policy_defeats_index',
    hole: () => `
      drop policy tenantry_tenant_rows on messages;
      create policy tenantry_tenant_rows on messages for all
        using (tenant_id::text = tenantry.current_tenant_id()::text)
        with check (tenant_id::text = tenantry.current_tenant_id()::text);`,
    expected: () => ['error policy_defeats_index policy tenantry_tenant_rows on public.messages'],
  },
  {
    name: 'a policy with a subquery',
    kind: 'policy_defeats_index',
    hole: () => `
      drop policy tenantry_tenant_rows on conversations;
      create policy tenantry_tenant_rows on conversations for all
        using (tenant_id in (select t.id from tenantry.tenants t where t.id = tenantry.current_tenant_id()))
        with check (${tenantCheck});`,
    expected: () => [
      'error policy_defeats_index policy tenantry_tenant_rows on public.conversations',
    ],
  },
  {
    name: 'a policy that reads the setting without the helper',
    kind: 'policy_reads_setting_directly',
    hole: () => `
      drop policy tenantry_tenant_rows on tags;
      create policy tenantry_tenant_rows on tags for all
        using (tenant_id = current_setting('tenantry.tenant_id')::uuid)
        with check (tenant_id = current_setting('tenantry.tenant_id')::uuid);`,
    expected: () => [
      'warning policy_reads_setting_directly policy tenantry_tenant_rows on public.tags',
    ],
  },
  {
    name: 'a superuser app role',
    kind: 'app_role_superuser',
    appRole: 'superuser',
    hole: () => '',
    expected: (app) => [`error app_role_superuser role ${app}`],
  },
  {
    name: 'a BYPASSRLS app role',
    kind: 'app_role_bypassrls',
    appRole: 'bypassrls',
    hole: () => '',
    expected: (app) => [`error app_role_bypassrls role ${app}`],
  },
  {
    name: 'an app role that can SET ROLE to the owner',
    kind: 'app_role_member_of_privileged_role',
    appRole: 'noinherit',
    hole: (app) => `grant tenantry_owner to ${app}`,
    expected: (app) => [`error app_role_member_of_privileged_role role ${app}`],
    inspect: (report, app) =>
      assert.equal(
        findingOf(report, 'app_role_member_of_privileged_role', `role ${app}`).fix,
        `revoke tenantry_owner from ${app};`,
      ),
  },
  {
    name: 'an app role that owns a table and a function',
    kind: 'app_role_owns_table',
    appRole: 'noinherit',
    hole: (app) => `
      alter table tags owner to ${app};
      create function public.tag_count() returns bigint language sql stable
        as 'select count(*) from public.tags';
      alter function public.tag_count() owner to ${app};`,
    expected: () => [
      'error app_role_owns_table function public.tag_count()',
      'error app_role_owns_table public.tags',
    ],
    inspect: (report) =>
      assert.equal(
        findingOf(report, 'app_role_owns_table', 'public.tags').fix,
        'alter table public.tags owner to tenantry_owner;',
      ),
  },
  {
    name: 'TRUNCATE and TRIGGER granted to the app role (directly and through PUBLIC)',
    kind: 'app_role_dangerous_privilege',
    hole: () => `
      grant truncate on contacts to tenantry_app;
      grant trigger on tags to public;`,
    expected: () => [
      'error app_role_dangerous_privilege public.contacts',
      'error app_role_dangerous_privilege public.tags',
    ],
    inspect: (report) => {
      assert.equal(
        findingOf(report, 'app_role_dangerous_privilege', 'public.contacts').fix,
        'revoke truncate on public.contacts from tenantry_app;',
      );
      assert.equal(
        findingOf(report, 'app_role_dangerous_privilege', 'public.tags').fix,
        'revoke trigger on public.tags from public;',
      );
    },
  },
  {
    name: 'views that run with their owner’s rights, directly and through another view',
    kind: 'view_without_security_invoker',
    hole: () => `
      create view contact_names as select id, name from contacts;
      create view invoker_over_definer with (security_invoker) as select * from contact_names;
      create view safe_names with (security_invoker = on) as select id, name from contacts;
      create view definer_over_invoker as select * from safe_names;
      create schema reports;
      create view reports.tag_names as select name from public.tags;
      create view unrelated as select 1 as one;`,
    expected: () => [
      'error view_without_security_invoker view public.contact_names',
      'error view_without_security_invoker view public.definer_over_invoker',
      'error view_without_security_invoker view reports.tag_names',
    ],
    inspect: (report) =>
      assert.equal(
        findingOf(report, 'view_without_security_invoker', 'view public.contact_names').fix,
        'alter view public.contact_names set (security_invoker = true);',
      ),
  },
  {
    name: 'a materialized view over a tenant table',
    kind: 'materialized_view_over_tenant_table',
    hole: () => `
      create materialized view contact_counts as
        select tenant_id, count(*) from contacts group by tenant_id;`,
    expected: () => [
      'error materialized_view_over_tenant_table materialized view public.contact_counts',
    ],
  },
  {
    name: 'SECURITY DEFINER functions in the managed and the Tenantry schema',
    kind: 'security_definer_function',
    hole: () => `
      create function public.all_contacts() returns setof contacts language sql stable
        security definer as 'select * from public.contacts';
      create function tenantry.not_reviewed() returns integer language sql immutable
        security definer as 'select 1';`,
    expected: () => [
      'error security_definer_function function public.all_contacts()',
      'error security_definer_function function tenantry.not_reviewed()',
    ],
    inspect: (report) =>
      assert.equal(
        findingOf(report, 'security_definer_function', 'function public.all_contacts()').fix,
        'alter function public.all_contacts() security invoker;',
      ),
  },
  {
    name: 'context functions that are IMMUTABLE or VOLATILE',
    kind: 'context_function_wrong_volatility',
    hole: () => `
      create function public.tenant_immutable() returns uuid language sql immutable
        as $$ select tenantry.current_tenant_id() $$;
      create function public.tenant_volatile() returns text language plpgsql
        as $$ begin return current_setting('tenantry.tenant_id', true); end $$;
      create function public.tenant_stable() returns uuid language sql stable
        as $$ select tenantry.current_tenant_id() $$;`,
    expected: () => [
      'error context_function_wrong_volatility function public.tenant_immutable()',
      'warning context_function_wrong_volatility function public.tenant_volatile()',
    ],
  },
  {
    name: 'foreign keys to a tenant table that do not pair tenant_id with tenant_id',
    kind: 'foreign_key_without_tenant',
    hole: () => `
      alter table conversations add constraint conversations_swapped_fkey
        foreign key (contact_id, tenant_id) references contacts (tenant_id, id);
      create table audit_refs (
        contact_tenant uuid, contact_id uuid,
        constraint audit_refs_contact_fkey
          foreign key (contact_tenant, contact_id) references contacts (tenant_id, id)
      );`,
    expected: () => [
      'error foreign_key_without_tenant constraint audit_refs_contact_fkey on public.audit_refs',
      'error foreign_key_without_tenant constraint conversations_swapped_fkey on public.conversations',
    ],
    inspect: (report) =>
      assert.match(
        findingOf(
          report,
          'foreign_key_without_tenant',
          'constraint conversations_swapped_fkey on public.conversations',
        ).fix,
        /foreign key \(tenant_id, contact_id\) references public\.contacts \(tenant_id, id\);$/,
      ),
  },
  {
    name: 'unique constraints and indexes that omit tenant_id',
    kind: 'unique_without_tenant',
    hole: () => `
      alter table contacts add constraint contacts_email_key unique (email);
      create unique index contacts_lower_email_idx on contacts (lower(email));
      create unique index contacts_name_idx on contacts (name) include (tenant_id);
      create unique index contacts_tenant_lower_email_idx on contacts (tenant_id, lower(email));`,
    expected: () => [
      'error unique_without_tenant constraint contacts_email_key on public.contacts',
      'error unique_without_tenant index public.contacts_lower_email_idx',
      'error unique_without_tenant index public.contacts_name_idx',
    ],
    inspect: (report) => {
      assert.equal(
        findingOf(
          report,
          'unique_without_tenant',
          'constraint contacts_email_key on public.contacts',
        ).fix,
        'alter table public.contacts drop constraint contacts_email_key, add constraint contacts_email_key UNIQUE (tenant_id, email);',
      );
      assert.match(
        findingOf(report, 'unique_without_tenant', 'index public.contacts_lower_email_idx').fix,
        /USING btree \(tenant_id, lower\(email\)\);$/,
      );
    },
  },
  {
    name: 'partitions without RLS, at any level',
    kind: 'partition_without_rls',
    hole: () => `
      ${partitionedEvents}
      create table events_2025 partition of events for values from ('2025-01-01') to ('2026-01-01');
      alter table events_2024_h1 no force row level security;`,
    expected: () => [
      'error partition_without_rls public.events_2024_h1',
      'error partition_without_rls public.events_2025',
    ],
    inspect: (report) =>
      assert.equal(
        findingOf(report, 'partition_without_rls', 'public.events_2025').fix,
        "select tenantry.enable_tenant_isolation('public.events');",
      ),
  },
  {
    name: 'a partition granted directly to the app role',
    kind: 'partition_granted_to_app_role',
    hole: () => `
      ${partitionedEvents}
      grant select on events_2024 to tenantry_app;`,
    expected: () => ['warning partition_granted_to_app_role public.events_2024'],
  },
  {
    name: 'a hash partition set with a gap (remainder 1 of 2 missing)',
    kind: 'hash_partitions_incomplete',
    hole: () => `
      create table ledger (tenant_id uuid not null, id uuid not null, primary key (tenant_id, id))
        partition by hash (tenant_id);
      create table ledger_h0 partition of ledger for values with (modulus 2, remainder 0);
      select tenantry.enable_tenant_isolation('ledger');`,
    expected: () => ['error hash_partitions_incomplete public.ledger'],
  },
  {
    name: 'a tenant table without an index leading with tenant_id',
    kind: 'missing_tenant_index',
    hole: () => `
      create table notes (tenant_id uuid not null, body text not null);
      alter table notes enable row level security;
      alter table notes force row level security;
      create policy tenantry_tenant_rows on notes as permissive for all
        using (${tenantCheck}) with check (${tenantCheck});
      create policy tenantry_tenant_isolation on notes as restrictive for all
        using (${tenantCheck}) with check (${tenantCheck});
      create index notes_body_tenant_idx on notes (body, tenant_id);
      create index notes_tenant_partial_idx on notes (tenant_id) where body <> '';`,
    expected: () => ['warning missing_tenant_index public.notes'],
    inspect: (report) =>
      assert.equal(
        findingOf(report, 'missing_tenant_index', 'public.notes').fix,
        'create index notes_tenant_id_idx on public.notes (tenant_id);',
      ),
  },
];

describe('runDoctor finds each hole', () => {
  for (const hole of holes) {
    test(`${hole.kind}: ${hole.name}`, async () => {
      const app =
        hole.appRole === undefined ? 'tenantry_app' : await createScratchRole(hole.appRole);
      const report = await audit(
        hole.hole(app),
        hole.appRole === undefined ? {} : { roles: { app } },
      );
      assert.deepEqual(outline(report).sort(), [...hole.expected(app)].sort());
      for (const finding of report.findings) {
        assert.ok(finding.message.length > 0);
        assert.ok(finding.fix.length > 0);
      }
      hole.inspect?.(report, app);
    });
  }

  test('every finding kind has a hole above', () => {
    assert.deepEqual(
      [...new Set(holes.map((hole) => hole.kind))].sort(),
      [...doctorFindingKinds].sort(),
    );
  });

  test('only the reviewed Tenantry functions are trusted as SECURITY DEFINER', () => {
    assert.deepEqual(trustedSecurityDefinerFunctions, [
      'create_tenant',
      'authenticate_api_key',
      'enqueue_job',
      'enqueue_jobs',
      'complete_job',
      'emit_event',
      'effective_limit',
      'consume_quota',
      'record_usage',
      'entitlements',
      'meter_rows',
      'close_billing_period',
      'note_quota_exceeded',
      'create_webhook_deliveries',
      'hit_rate_limit',
      'prune_rate_limits',
    ]);
    assert.ok(Object.isFrozen(trustedSecurityDefinerFunctions));
  });
});

describe('runDoctor errors', () => {
  test('an unreachable server is TENANTRY_ERR_DB_UNAVAILABLE', async () => {
    await assert.rejects(
      runDoctor({ connectionString: 'postgres://nobody:secret@127.0.0.1:1/tenantry' }),
      (error) => isTenantryError(error, 'TENANTRY_ERR_DB_UNAVAILABLE'),
    );
  });

  test('an app role that does not exist is TENANTRY_ERR_CONFIG_INVALID', async () => {
    await assert.rejects(
      audit('', { roles: { app: `doctor_missing_${randomBytes(6).toString('hex')}` } }),
      (error) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
    );
  });

  test('a schema that is not an identifier is rejected before connecting', async () => {
    await assert.rejects(
      runDoctor({ connectionString: 'postgres://127.0.0.1:1/x', schemas: ['public; drop'] }),
      (error) => isTenantryError(error, 'TENANTRY_ERR_CONFIG_INVALID'),
    );
  });
});

describe('formatDoctorReport', () => {
  test('prints each finding with its fix, then a summary line', async () => {
    const report = await audit(`
      alter table contacts no force row level security;
      create policy contacts_read_all on contacts for select using (true);`);
    const text = formatDoctorReport(report);
    assert.match(text, /^error rls_not_forced public\.contacts\n/);
    assert.ok(text.includes('\n  fix: alter table public.contacts force row level security;\n'));
    assert.ok(
      text.includes(
        '\n  fix: drop policy contacts_read_all on public.contacts;\n       -- recreate it AS RESTRICTIVE',
      ),
    );
    assert.equal(
      text.split('\n').at(-1),
      `1 error, 1 warning in ${referenceTables.length} tenant tables (checked ${report.checkedAt}).`,
    );
  });

  test('says so when there is nothing to fix', () => {
    const text = formatDoctorReport({
      findings: [],
      tenantTables: ['public.contacts'],
      checkedAt: '2026-01-01T00:00:00.000Z',
    });
    assert.equal(text, 'No findings in 1 tenant table (checked 2026-01-01T00:00:00.000Z).');
  });
});

describe('docs/reference/doctor.md', () => {
  test('documents every finding kind exactly once', async () => {
    const markdown = await readFile(
      new URL('../docs/reference/doctor.md', import.meta.url),
      'utf8',
    );
    const section = markdown.slice(markdown.indexOf('## Finding kinds'));
    const table = section.slice(0, section.indexOf('\n## ', 1));
    const documented = [...table.matchAll(/^\|\s*`([a-z_]+)`\s*\|/gm)].map((match) => match[1]);
    assert.deepEqual(documented.sort(), [...doctorFindingKinds].sort());
  });
});
