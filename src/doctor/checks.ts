import type pg from 'pg';
import type { DoctorFinding, DoctorFindingKind } from './doctor.ts';
import { checkPartitionLayout } from './partition-checks.ts';

/** A tenant table, or a partition of one (then `root` names the tenant table). */
export interface TenantRelation {
  readonly oid: number;
  readonly name: string;
  readonly root: string;
  readonly rls: boolean;
  readonly forced: boolean;
}

/** What every check needs: the open read-only transaction and the resolved scope. */
export interface DoctorContext {
  readonly db: pg.ClientBase;
  readonly schemas: readonly string[];
  readonly tenantrySchema: string;
  readonly appOid: number;
  readonly appIsSuperuser: boolean;
  readonly appBypassesRls: boolean;
  readonly trustedSecurityDefinerFunctions: readonly string[];
  /** Identifiers already quoted by the server, for the fix statements. */
  readonly sql: {
    readonly tenantrySchema: string;
    readonly app: string;
    readonly owner: string;
    readonly database: string;
  };
  readonly tenantTables: readonly TenantRelation[];
  readonly partitions: readonly TenantRelation[];
}

type DoctorCheck = (context: DoctorContext) => Promise<DoctorFinding[]>;

const permissivePolicyName = 'tenantry_tenant_rows';
const restrictivePolicyName = 'tenantry_tenant_isolation';
const ddlHelperFunctions = ['enable_tenant_isolation', 'add_tenant_foreign_key'];
/** Reads the tenant or user setting, or calls the helpers that do (POSIX regex, case-insensitive). */
const contextSourcePattern = String.raw`tenantry\.(tenant|user)_id|current_(tenant|user)_id\s*\(`;

function finding(
  kind: DoctorFindingKind,
  severity: DoctorFinding['severity'],
  object: string,
  message: string,
  fix: string,
): DoctorFinding {
  return { kind, severity, object, message, fix };
}

function ownedSchemas(context: DoctorContext): string[] {
  return [...new Set([...context.schemas, context.tenantrySchema])];
}

function tenantExpression(context: DoctorContext): string {
  return `tenant_id = ${context.sql.tenantrySchema}.current_tenant_id()`;
}

function isTenantExpression(context: DoctorContext, expression: string | null): boolean {
  const helper = `${context.sql.tenantrySchema}.current_tenant_id()`;
  return expression === `(tenant_id = ${helper})` || expression === `(${helper} = tenant_id)`;
}

function regclassLiteral(name: string): string {
  return `'${name.replaceAll("'", "''")}'`;
}

function enableIsolationCall(context: DoctorContext, table: string): string {
  return `select ${context.sql.tenantrySchema}.enable_tenant_isolation(${regclassLiteral(table)});`;
}

interface PolicyRow {
  readonly relid: number;
  readonly name: string;
  readonly permissive: boolean;
  readonly cmd: string;
  readonly using: string | null;
  readonly check: string | null;
  readonly applies_to_app: boolean;
}

async function loadPolicies(context: DoctorContext, relations: readonly number[]) {
  const result = await context.db.query<PolicyRow>(
    `select p.polrelid as relid, quote_ident(p.polname) as name, p.polpermissive as permissive,
            p.polcmd as cmd, pg_get_expr(p.polqual, p.polrelid) as using,
            pg_get_expr(p.polwithcheck, p.polrelid) as check,
            exists (
              select 1 from unnest(p.polroles) as r(oid)
               where case when r.oid = 0 then true else pg_has_role($2::oid, r.oid, 'USAGE') end
            ) as applies_to_app
       from pg_policy p
      where p.polrelid = any($1::oid[])
      order by p.polname`,
    [relations, context.appOid],
  );
  return result.rows;
}

function isIsolationPolicy(context: DoctorContext, policy: PolicyRow): boolean {
  return (
    !policy.permissive &&
    policy.cmd === '*' &&
    policy.applies_to_app &&
    isTenantExpression(context, policy.using) &&
    (policy.check === null || isTenantExpression(context, policy.check))
  );
}

function isolationPolicyFix(context: DoctorContext, table: string): string {
  const expression = tenantExpression(context);
  return [
    `drop policy if exists ${restrictivePolicyName} on ${table};`,
    `create policy ${restrictivePolicyName} on ${table} as restrictive for all using (${expression}) with check (${expression});`,
  ].join('\n');
}

function plainPolicyFix(context: DoctorContext, policy: PolicyRow, table: string): string {
  const expression = tenantExpression(context);
  const using = policy.cmd === 'a' ? '' : ` using (${expression})`;
  const check = policy.cmd === 'r' || policy.cmd === 'd' ? '' : ` with check (${expression})`;
  return `alter policy ${policy.name} on ${table}${using}${check};`;
}

function stripOuterParentheses(expression: string): string {
  if (!expression.startsWith('(') || !expression.endsWith(')')) return expression;
  let depth = 0;
  for (let index = 0; index < expression.length; index++) {
    if (expression[index] === '(') depth++;
    else if (expression[index] === ')') depth--;
    if (depth === 0 && index < expression.length - 1) return expression;
  }
  return expression.slice(1, -1);
}

const policyCommands: Readonly<Record<string, string>> = {
  '*': 'all',
  r: 'select',
  a: 'insert',
  w: 'update',
  d: 'delete',
};

/** rls_disabled, rls_not_forced, policy_missing, isolation_policy_not_restrictive, partition_without_rls and the per-policy checks. */
async function checkRowSecurity(context: DoctorContext): Promise<DoctorFinding[]> {
  const relations = [...context.tenantTables, ...context.partitions];
  const names = new Map(relations.map((relation) => [relation.oid, relation.name]));
  const policies = await loadPolicies(
    context,
    relations.map((relation) => relation.oid),
  );
  const policiesOf = (oid: number) => policies.filter((policy) => policy.relid === oid);
  const findings: DoctorFinding[] = [];

  for (const table of context.tenantTables) {
    if (!table.rls) {
      findings.push(
        finding(
          'rls_disabled',
          'error',
          table.name,
          `Row Level Security is disabled on ${table.name}: its policies are ignored and the app role reads and writes every tenant's rows.`,
          `alter table ${table.name} enable row level security;`,
        ),
      );
    }
    if (!table.forced) {
      findings.push(
        finding(
          'rls_not_forced',
          'error',
          table.name,
          `Row Level Security is not forced on ${table.name}: its owner, and every view and SECURITY DEFINER function the owner owns, bypasses the tenant policies.`,
          `alter table ${table.name} force row level security;`,
        ),
      );
    }
    const own = policiesOf(table.oid);
    if (own.length === 0) {
      findings.push(
        finding(
          'policy_missing',
          'error',
          table.name,
          `${table.name} has no policy: with RLS on, the app role sees no row at all; with RLS off, every row. The convention needs ${permissivePolicyName} and ${restrictivePolicyName}.`,
          enableIsolationCall(context, table.name),
        ),
      );
    } else if (!own.some((policy) => isIsolationPolicy(context, policy))) {
      findings.push(
        finding(
          'isolation_policy_not_restrictive',
          'error',
          table.name,
          `${table.name} has no RESTRICTIVE policy for all commands, applying to the app role, with "${tenantExpression(context)}": any permissive policy, present or added later, can widen access to other tenants' rows.`,
          isolationPolicyFix(context, table.name),
        ),
      );
    }
  }

  for (const partition of context.partitions) {
    const missing: string[] = [];
    if (!partition.rls) missing.push('Row Level Security is disabled');
    if (!partition.forced) missing.push('Row Level Security is not forced');
    if (!policiesOf(partition.oid).some((policy) => isIsolationPolicy(context, policy))) {
      missing.push(`the restrictive ${restrictivePolicyName} policy is missing`);
    }
    if (missing.length > 0) {
      findings.push(
        finding(
          'partition_without_rls',
          'error',
          partition.name,
          `${partition.name} is a partition of the tenant table ${partition.root}, but ${missing.join('; ')}: whoever queries the partition directly bypasses the parent's policies.`,
          enableIsolationCall(context, partition.root),
        ),
      );
    }
  }

  for (const policy of policies) {
    const table = names.get(policy.relid) ?? String(policy.relid);
    const object = `policy ${policy.name} on ${table}`;
    if (['*', 'a', 'w'].includes(policy.cmd) && policy.check === null) {
      const check = stripOuterParentheses(policy.using ?? tenantExpression(context));
      findings.push(
        finding(
          'policy_without_with_check',
          'warning',
          object,
          `The ${object} (for ${policyCommands[policy.cmd]}) has no WITH CHECK: PostgreSQL falls back to USING (or rejects inserts), but the convention states the check explicitly so a later USING change cannot silently loosen writes.`,
          `alter policy ${policy.name} on ${table} with check (${check});`,
        ),
      );
    }
    if (policy.permissive && policy.name !== permissivePolicyName) {
      findings.push(
        finding(
          'extra_permissive_policy',
          'warning',
          object,
          `The ${object} is PERMISSIVE: permissive policies are ORed together, so it widens what ${permissivePolicyName} allows; only a restrictive policy such as ${restrictivePolicyName} keeps it inside the tenant.`,
          `drop policy ${policy.name} on ${table};\n-- recreate it AS RESTRICTIVE if it is meant to narrow access, or fold its condition into ${permissivePolicyName}`,
        ),
      );
    }
    const expressions = [policy.using, policy.check].filter((text) => text !== null);
    const defeats: string[] = [];
    if (expressions.some((text) => /\(\s*select\b/i.test(text))) defeats.push('a subquery');
    if (expressions.some((text) => /\btenant_id\)?::/.test(text))) {
      defeats.push('a cast of tenant_id');
    }
    if (defeats.length > 0) {
      findings.push(
        finding(
          'policy_defeats_index',
          'error',
          object,
          `The ${object} uses ${defeats.join(' and ')}: the planner cannot turn it into an index condition on tenant_id, so every query scans all tenants' rows. Use the plain "${tenantExpression(context)}".`,
          plainPolicyFix(context, policy, table),
        ),
      );
    }
    if (expressions.some((text) => /\bcurrent_setting\s*\(/i.test(text))) {
      findings.push(
        finding(
          'policy_reads_setting_directly',
          'warning',
          object,
          `The ${object} calls current_setting() instead of ${context.sql.tenantrySchema}.current_tenant_id(): it fails or compares text when the setting is missing or empty, and drifts from the helper every other policy uses.`,
          plainPolicyFix(context, policy, table),
        ),
      );
    }
  }
  return findings;
}

/** app_role_superuser, app_role_bypassrls, app_role_member_of_privileged_role. */
async function checkAppRoleAttributes(context: DoctorContext): Promise<DoctorFinding[]> {
  const role = `role ${context.sql.app}`;
  const findings: DoctorFinding[] = [];
  if (context.appIsSuperuser) {
    findings.push(
      finding(
        'app_role_superuser',
        'error',
        role,
        `The app role ${context.sql.app} is a superuser: superusers bypass every Row Level Security policy and every privilege check.`,
        `alter role ${context.sql.app} nosuperuser;`,
      ),
    );
  }
  if (context.appBypassesRls) {
    findings.push(
      finding(
        'app_role_bypassrls',
        'error',
        role,
        `The app role ${context.sql.app} has BYPASSRLS: no tenant policy applies to its queries.`,
        `alter role ${context.sql.app} nobypassrls;`,
      ),
    );
  }
  if (context.appIsSuperuser) return findings;
  const result = await context.db.query<{ granted: string; reaches: string[] }>(
    `with privileged as (
       select r.oid, r.rolname,
              concat_ws(', ',
                case when r.rolsuper then 'superuser' end,
                case when r.rolbypassrls then 'BYPASSRLS' end,
                case when exists (
                  select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace
                   where c.relowner = r.oid and n.nspname = any($2::text[])
                ) or exists (
                  select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                   where p.proowner = r.oid and n.nspname = any($2::text[])
                ) or exists (
                  select 1 from pg_namespace n where n.nspowner = r.oid and n.nspname = any($2::text[])
                ) then 'owns managed objects' end
              ) as powers
         from pg_roles r
        where r.oid <> $1::oid
     )
     select quote_ident(g.rolname) as granted,
            array(
              select quote_ident(p.rolname) || ' (' || p.powers || ')'
                from privileged p
               where p.powers <> '' and pg_has_role(m.roleid, p.oid, 'MEMBER')
               order by p.rolname
            ) as reaches
       from pg_auth_members m join pg_roles g on g.oid = m.roleid
      where m.member = $1::oid
      order by g.rolname`,
    [context.appOid, ownedSchemas(context)],
  );
  for (const row of result.rows) {
    if (row.reaches.length === 0) continue;
    const own = row.reaches.filter((reached) => reached.startsWith(`${row.granted} (`));
    const further = row.reaches.filter((reached) => !own.includes(reached));
    const membership = [
      own[0] ?? row.granted,
      ...(further.length > 0 ? [`and through it of ${further.join(', ')}`] : []),
    ].join(', ');
    findings.push(
      finding(
        'app_role_member_of_privileged_role',
        'error',
        role,
        `The app role ${context.sql.app} is a member of ${membership}: "set role" (or inherited rights) escapes tenant isolation, NOINHERIT or not.`,
        `revoke ${row.granted} from ${context.sql.app};`,
      ),
    );
  }
  return findings;
}

/** app_role_owns_table: tables, views, sequences, functions, schemas and the database. */
async function checkAppRoleOwnership(context: DoctorContext): Promise<DoctorFinding[]> {
  const result = await context.db.query<{ kind: string; name: string }>(
    `select case c.relkind
              when 'v' then 'view' when 'm' then 'materialized view' when 'S' then 'sequence'
              when 'f' then 'foreign table' else 'table'
            end as kind,
            format('%I.%I', n.nspname, c.relname) as name
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where c.relowner = $1::oid and n.nspname = any($2::text[])
        and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
     union all
     select case p.prokind when 'p' then 'procedure' when 'a' then 'aggregate' else 'function' end,
            p.oid::regprocedure::text
       from pg_proc p join pg_namespace n on n.oid = p.pronamespace
      where p.proowner = $1::oid and n.nspname = any($2::text[])
     union all
     select 'schema', quote_ident(n.nspname)
       from pg_namespace n
      where n.nspowner = $1::oid and n.nspname = any($2::text[])
     union all
     select 'database', quote_ident(d.datname)
       from pg_database d
      where d.datname = current_database() and d.datdba = $1::oid`,
    [context.appOid, ownedSchemas(context)],
  );
  return result.rows.map((row) =>
    finding(
      'app_role_owns_table',
      'error',
      row.kind === 'table' ? row.name : `${row.kind} ${row.name}`,
      `The app role ${context.sql.app} owns ${row.kind} ${row.name}: an owner can alter or drop it at will, so application code (or an injected statement) could disable RLS, drop policies, redefine functions or read as the owner.`,
      `alter ${row.kind} ${row.name} owner to ${context.sql.owner};`,
    ),
  );
}

const privilegeRisks: Readonly<Record<string, string>> = {
  truncate: "TRUNCATE ignores Row Level Security and empties every tenant's rows",
  references: "REFERENCES lets it create foreign keys that probe other tenants' values",
  trigger: "TRIGGER lets it attach code that runs on every tenant's writes",
};

/** app_role_dangerous_privilege: TRUNCATE (bypasses RLS), REFERENCES, TRIGGER. */
async function checkAppRolePrivileges(context: DoctorContext): Promise<DoctorFinding[]> {
  if (context.appIsSuperuser) return [];
  const result = await context.db.query<{
    name: string;
    privileges: string[];
    grantees: string[];
  }>(
    `select format('%I.%I', n.nspname, c.relname) as name,
            array_remove(array[
              case when has_table_privilege($1::oid, c.oid, 'TRUNCATE') then 'truncate' end,
              case when has_table_privilege($1::oid, c.oid, 'REFERENCES') then 'references' end,
              case when has_table_privilege($1::oid, c.oid, 'TRIGGER') then 'trigger' end
            ], null) as privileges,
            array(
              select distinct case when a.grantee = 0 then 'public' else quote_ident(g.rolname) end
                from aclexplode(c.relacl) as a
                left join pg_roles g on g.oid = a.grantee
               where a.privilege_type in ('TRUNCATE', 'REFERENCES', 'TRIGGER')
                 and case when a.grantee = 0 then true else pg_has_role($1::oid, a.grantee, 'USAGE') end
               order by 1
            ) as grantees
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = any($2::text[])
        and c.relkind in ('r', 'p', 'v', 'm', 'f')
        and c.relowner <> $1::oid
        and has_table_privilege($1::oid, c.oid, 'TRUNCATE, REFERENCES, TRIGGER')`,
    [context.appOid, ownedSchemas(context)],
  );
  return result.rows.map((row) =>
    finding(
      'app_role_dangerous_privilege',
      'error',
      row.name,
      `The app role ${context.sql.app} holds ${row.privileges.join(', ').toUpperCase()} on ${row.name}: ${row.privileges
        .map((privilege) => privilegeRisks[privilege] ?? privilege)
        .join('; ')}.`,
      `revoke ${row.privileges.join(', ')} on ${row.name} from ${
        row.grantees.length > 0 ? row.grantees.join(', ') : context.sql.app
      };`,
    ),
  );
}

/** view_without_security_invoker and materialized_view_over_tenant_table, through views of views. */
async function checkViews(context: DoctorContext): Promise<DoctorFinding[]> {
  const tables = [...context.tenantTables, ...context.partitions].map((table) => table.oid);
  const result = await context.db.query<{
    kind: string;
    name: string;
    security_invoker: boolean;
    sources: string;
  }>(
    `with recursive dependents(oid, source) as (
       select distinct r.ev_class, d.refobjid
         from pg_depend d
         join pg_rewrite r on r.oid = d.objid
         join pg_class v on v.oid = r.ev_class
        where d.classid = 'pg_rewrite'::regclass and d.refclassid = 'pg_class'::regclass
          and d.refobjid = any($1::oid[]) and r.ev_class <> d.refobjid
          and r.ev_type = '1' and v.relkind in ('v', 'm')
       union
       select r.ev_class, dependents.source
         from dependents
         join pg_depend d on d.refobjid = dependents.oid
         join pg_rewrite r on r.oid = d.objid
         join pg_class v on v.oid = r.ev_class
        where d.classid = 'pg_rewrite'::regclass and d.refclassid = 'pg_class'::regclass
          and r.ev_class <> dependents.oid and r.ev_type = '1' and v.relkind in ('v', 'm')
     )
     select c.relkind as kind, format('%I.%I', n.nspname, c.relname) as name,
            coalesce((
              select bool_or(o.option_value ~* '^(t|tr|tru|true|y|ye|yes|on|1)$')
                from pg_options_to_table(c.reloptions) as o
               where o.option_name = 'security_invoker'
            ), false) as security_invoker,
            string_agg(distinct format('%I.%I', sn.nspname, s.relname), ', ') as sources
       from dependents
       join pg_class c on c.oid = dependents.oid
       join pg_namespace n on n.oid = c.relnamespace
       join pg_class s on s.oid = dependents.source
       join pg_namespace sn on sn.oid = s.relnamespace
      group by c.oid, c.relkind, n.nspname, c.relname, c.reloptions`,
    [tables],
  );
  const findings: DoctorFinding[] = [];
  for (const row of result.rows) {
    if (row.kind === 'm') {
      findings.push(
        finding(
          'materialized_view_over_tenant_table',
          'error',
          `materialized view ${row.name}`,
          `The materialized view ${row.name} stores rows of ${row.sources}, but a materialized view has no Row Level Security: whoever can read it reads every tenant's rows.`,
          `drop materialized view ${row.name};\n-- serve the data from an RLS-protected tenant table refreshed by a job, or from a view with security_invoker = true`,
        ),
      );
    } else if (!row.security_invoker) {
      findings.push(
        finding(
          'view_without_security_invoker',
          'error',
          `view ${row.name}`,
          `The view ${row.name} reads ${row.sources} with its owner's rights, not the caller's: the owner bypasses RLS (or is exempt as table owner), so the view returns every tenant's rows.`,
          `alter view ${row.name} set (security_invoker = true);`,
        ),
      );
    }
  }
  return findings;
}

/** security_definer_function and context_function_wrong_volatility. */
async function checkFunctions(context: DoctorContext): Promise<DoctorFinding[]> {
  const result = await context.db.query<{
    kind: string;
    signature: string;
    trusted: boolean;
    ddl_helper: boolean;
    security_definer: boolean;
    volatility: string;
    reads_context: boolean;
  }>(
    `select case p.prokind when 'p' then 'procedure' else 'function' end as kind,
            p.oid::regprocedure::text as signature,
            n.nspname = $2::text and p.proname = any($3::text[]) as trusted,
            n.nspname = $2::text and p.proname = any($4::text[]) as ddl_helper,
            p.prosecdef as security_definer, p.provolatile as volatility,
            p.prokind = 'f' and p.prosrc ~* $5::text as reads_context
       from pg_proc p join pg_namespace n on n.oid = p.pronamespace
      where n.nspname = any($1::text[]) and p.prokind in ('f', 'p')
        -- Trigger functions never run in a policy or a WHERE clause: their volatility is moot.
        and (p.prosecdef or (p.prokind = 'f' and p.provolatile <> 's'
                             and p.prorettype <> 'pg_catalog.trigger'::regtype
                             and p.prosrc ~* $5::text))`,
    [
      ownedSchemas(context),
      context.tenantrySchema,
      context.trustedSecurityDefinerFunctions,
      ddlHelperFunctions,
      contextSourcePattern,
    ],
  );
  const findings: DoctorFinding[] = [];
  for (const row of result.rows) {
    const object = `${row.kind} ${row.signature}`;
    if (row.security_definer && !row.trusted) {
      findings.push(
        finding(
          'security_definer_function',
          'error',
          object,
          `The ${object} is SECURITY DEFINER: it runs with its owner's rights, and the owner bypasses RLS (BYPASSRLS, superuser or table owner), so every caller can reach every tenant's rows through it.`,
          `alter ${row.kind} ${row.signature} security invoker;`,
        ),
      );
    }
    // A trusted function that writes (enqueue_job) is VOLATILE by necessity; an IMMUTABLE one is
    // still reported.
    if (
      row.reads_context &&
      !row.ddl_helper &&
      row.volatility !== 's' &&
      !(row.trusted && row.volatility === 'v')
    ) {
      const immutable = row.volatility === 'i';
      findings.push(
        finding(
          'context_function_wrong_volatility',
          immutable ? 'error' : 'warning',
          object,
          immutable
            ? `The ${object} reads the tenant context but is IMMUTABLE: the planner may fold its result into a cached plan and serve one tenant's value to another.`
            : `The ${object} reads the tenant context but is VOLATILE: in a policy or WHERE clause it is evaluated per row and tenant_id index lookups are impossible. (Ignore if it writes data.)`,
          `alter function ${row.signature} stable;`,
        ),
      );
    }
  }
  return findings;
}

const deleteActions: Readonly<Record<string, string>> = {
  r: ' on delete restrict',
  c: ' on delete cascade',
  n: ' on delete set null',
  d: ' on delete set default',
};

/** foreign_key_without_tenant: every foreign key that references a tenant table. */
async function checkForeignKeys(context: DoctorContext): Promise<DoctorFinding[]> {
  const tables = [...context.tenantTables, ...context.partitions].map((table) => table.oid);
  const result = await context.db.query<{
    name: string;
    table_name: string;
    referenced: string;
    columns: string[];
    referenced_columns: string[];
    has_tenant_id: boolean;
    on_delete: string;
  }>(
    `select quote_ident(c.conname) as name,
            format('%I.%I', ln.nspname, lc.relname) as table_name,
            format('%I.%I', rn.nspname, rc.relname) as referenced,
            array(
              select quote_ident(a.attname)
                from unnest(c.conkey) with ordinality as k(attnum, position)
                join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.attnum
               order by k.position
            ) as columns,
            array(
              select quote_ident(a.attname)
                from unnest(c.confkey) with ordinality as k(attnum, position)
                join pg_attribute a on a.attrelid = c.confrelid and a.attnum = k.attnum
               order by k.position
            ) as referenced_columns,
            exists (
              select 1 from pg_attribute a
               where a.attrelid = c.conrelid and a.attname = 'tenant_id' and not a.attisdropped
            ) as has_tenant_id,
            c.confdeltype as on_delete
       from pg_constraint c
       join pg_class lc on lc.oid = c.conrelid
       join pg_namespace ln on ln.oid = lc.relnamespace
       join pg_class rc on rc.oid = c.confrelid
       join pg_namespace rn on rn.oid = rc.relnamespace
      where c.contype = 'f' and c.conparentid = 0 and c.confrelid = any($1::oid[])`,
    [tables],
  );
  const findings: DoctorFinding[] = [];
  for (const row of result.rows) {
    const pairs = row.columns.map((column, index) => [column, row.referenced_columns[index]]);
    if (pairs.some(([local, remote]) => local === 'tenant_id' && remote === 'tenant_id')) continue;
    const remoteRest = row.referenced_columns.filter((column) => column !== 'tenant_id');
    const pointsAtTenant = new Set(
      pairs.filter(([, remote]) => remote === 'tenant_id').map(([local]) => local),
    );
    const localRest =
      [
        row.columns.filter((column) => column !== 'tenant_id' && !pointsAtTenant.has(column)),
        row.columns.filter((column) => column !== 'tenant_id'),
      ].find((columns) => columns.length === remoteRest.length) ?? row.columns;
    const local = ['tenant_id', ...localRest].join(', ');
    const remote = ['tenant_id', ...remoteRest].join(', ');
    let onDelete = deleteActions[row.on_delete] ?? '';
    if (row.on_delete === 'n' || row.on_delete === 'd') onDelete += ` (${localRest.join(', ')})`;
    const statements = [
      `alter table ${row.table_name} drop constraint ${row.name};`,
      `alter table ${row.table_name} add constraint ${row.name} foreign key (${local}) references ${row.referenced} (${remote})${onDelete};`,
    ];
    if (!row.has_tenant_id) {
      statements.unshift(
        `-- add a tenant_id uuid not null column to ${row.table_name} and backfill it, then:`,
      );
    }
    const object = `constraint ${row.name} on ${row.table_name}`;
    findings.push(
      finding(
        'foreign_key_without_tenant',
        'error',
        object,
        `The foreign key ${row.name} on ${row.table_name} references the tenant table ${row.referenced} without matching tenant_id to tenant_id: a row can point at another tenant's row, and the constraint check reveals whether that row exists.`,
        statements.join('\n'),
      ),
    );
  }
  return findings;
}

/** unique_without_tenant: unique constraints, primary keys, exclusion constraints and unique indexes. */
async function checkUniqueKeys(context: DoctorContext): Promise<DoctorFinding[]> {
  const tables = [...context.tenantTables, ...context.partitions].map((table) => table.oid);
  const result = await context.db.query<{
    index_name: string;
    table_name: string;
    constraint_name: string | null;
    constraint_def: string | null;
    index_def: string;
  }>(
    `select format('%I.%I', n.nspname, ic.relname) as index_name,
            format('%I.%I', tn.nspname, tc.relname) as table_name,
            quote_ident(con.conname) as constraint_name,
            pg_get_constraintdef(con.oid) as constraint_def,
            pg_get_indexdef(i.indexrelid) as index_def
       from pg_index i
       join pg_class ic on ic.oid = i.indexrelid
       join pg_namespace n on n.oid = ic.relnamespace
       join pg_class tc on tc.oid = i.indrelid
       join pg_namespace tn on tn.oid = tc.relnamespace
       left join pg_constraint con
         on con.conindid = i.indexrelid and con.conrelid = i.indrelid and con.contype in ('p', 'u', 'x')
      where i.indrelid = any($1::oid[])
        and (i.indisunique or i.indisexclusion)
        and not exists (select 1 from pg_inherits h where h.inhrelid = i.indexrelid)
        and not exists (
          select 1 from pg_attribute a
           where a.attrelid = i.indrelid and a.attname = 'tenant_id' and not a.attisdropped
             and a.attnum = any ((i.indkey::int2[])[0:i.indnkeyatts - 1])
        )`,
    [tables],
  );
  return result.rows.map((row) => {
    const message = `enforces uniqueness on ${row.table_name} across all tenants: one tenant can probe whether another tenant has a value (a duplicate-key error answers), and two tenants cannot hold the same value.`;
    if (row.constraint_name !== null && row.constraint_def !== null) {
      const definition = row.constraint_def.startsWith('EXCLUDE')
        ? row.constraint_def.replace(/^(EXCLUDE USING \w+ \()/, '$1tenant_id WITH =, ')
        : row.constraint_def.replace('(', '(tenant_id, ');
      return finding(
        'unique_without_tenant',
        'error',
        `constraint ${row.constraint_name} on ${row.table_name}`,
        `The constraint ${row.constraint_name} (${row.constraint_def}) ${message}`,
        `alter table ${row.table_name} drop constraint ${row.constraint_name}, add constraint ${row.constraint_name} ${definition};`,
      );
    }
    return finding(
      'unique_without_tenant',
      'error',
      `index ${row.index_name}`,
      `The unique index ${row.index_name} ${message}`,
      `drop index ${row.index_name};\n${row.index_def.replace(/( USING \w+ \()/, '$1tenant_id, ')};`,
    );
  });
}

/** partition_granted_to_app_role: partitions are reached through their parent only. */
async function checkPartitionGrants(context: DoctorContext): Promise<DoctorFinding[]> {
  if (context.appIsSuperuser || context.partitions.length === 0) return [];
  const byOid = new Map(context.partitions.map((partition) => [partition.oid, partition]));
  const result = await context.db.query<{ oid: number }>(
    `select c.oid
       from pg_class c
      where c.oid = any($1::oid[]) and c.relowner <> $2::oid
        and has_table_privilege($2::oid, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')`,
    [[...byOid.keys()], context.appOid],
  );
  return result.rows.flatMap((row) => {
    const partition = byOid.get(row.oid);
    if (partition === undefined) return [];
    return [
      finding(
        'partition_granted_to_app_role',
        'warning',
        partition.name,
        `The app role ${context.sql.app} has privileges on the partition ${partition.name}: the app should reach it only through ${partition.root}, so that the parent's policies and grants are the single point of control.`,
        `revoke all on ${partition.name} from ${context.sql.app};`,
      ),
    ];
  });
}

/** missing_tenant_index: a valid, non-partial index leading with tenant_id. */
async function checkTenantIndexes(context: DoctorContext): Promise<DoctorFinding[]> {
  const result = await context.db.query<{ name: string; index_name: string }>(
    `select format('%I.%I', n.nspname, c.relname) as name,
            quote_ident(left(c.relname || '_tenant_id_idx', 63)) as index_name
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where c.oid = any($1::oid[])
        and not exists (
          select 1 from pg_index i
            join pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
           where i.indrelid = c.oid and i.indisvalid and i.indpred is null
             and a.attname = 'tenant_id'
        )`,
    [context.tenantTables.map((table) => table.oid)],
  );
  return result.rows.map((row) =>
    finding(
      'missing_tenant_index',
      'warning',
      row.name,
      `${row.name} has no index whose first column is tenant_id: the tenant policy filters every query on tenant_id, so each one scans the rows of all tenants.`,
      `create index ${row.index_name} on ${row.name} (tenant_id);`,
    ),
  );
}

/**
 * The checks `runDoctor()` runs inside its read-only transaction; each returns its findings.
 *
 * @example
 * ```ts
 * const findings = (await Promise.all(doctorChecks.map((check) => check(context)))).flat();
 * ```
 */
export const doctorChecks: readonly DoctorCheck[] = Object.freeze([
  checkRowSecurity,
  checkAppRoleAttributes,
  checkAppRoleOwnership,
  checkAppRolePrivileges,
  checkViews,
  checkFunctions,
  checkForeignKeys,
  checkUniqueKeys,
  checkPartitionGrants,
  checkPartitionLayout,
  checkTenantIndexes,
]);
