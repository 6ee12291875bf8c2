import type pg from 'pg';
import {
  defaultTenantrySchema,
  parseIdentifier,
  quoteIdentifier,
  type RoleNames,
  resolveRoleNames,
} from '../config.ts';
import { connectClient } from '../database/client.ts';
import { TenantryError } from '../errors.ts';
import { type DoctorContext, doctorChecks } from './checks.ts';

/** Options for {@link runDoctor}. */
export interface DoctorOptions {
  /** A superuser (or owner) connection to the application database. */
  readonly connectionString: string;
  /** Managed schemas scanned for tenant tables and the objects around them. @defaultValue ['public'] */
  readonly schemas?: readonly string[];
  /** Schema of Tenantry's own objects. @defaultValue 'tenantry' */
  readonly tenantrySchema?: string;
  /**
   * Also audit every tenant's dedicated schema recorded in `tenant_placements` (schema
   * placement), besides `schemas`. @defaultValue true
   */
  readonly placementSchemas?: boolean;
  /** Role names; the audit is about the app role. @defaultValue {@link defaultRoleNames} */
  readonly roles?: Partial<RoleNames>;
}

/**
 * Every finding the doctor can report, in the order reports list them within one object.
 * The ids are stable; `docs/reference/doctor.md` documents each one.
 *
 * @example
 * ```ts
 * import { doctorFindingKinds } from 'tenantry';
 * console.log(doctorFindingKinds.includes('rls_not_forced')); // true
 * ```
 */
export const doctorFindingKinds = Object.freeze([
  'rls_disabled',
  'rls_not_forced',
  'policy_missing',
  'isolation_policy_not_restrictive',
  'policy_without_with_check',
  'extra_permissive_policy',
  'policy_defeats_index',
  'policy_reads_setting_directly',
  'app_role_superuser',
  'app_role_bypassrls',
  'app_role_member_of_privileged_role',
  'app_role_owns_table',
  'app_role_dangerous_privilege',
  'view_without_security_invoker',
  'materialized_view_over_tenant_table',
  'security_definer_function',
  'context_function_wrong_volatility',
  'foreign_key_without_tenant',
  'unique_without_tenant',
  'partition_without_rls',
  'partition_granted_to_app_role',
  'hash_partitions_incomplete',
  'missing_tenant_index',
] as const);

/** The stable id of a kind of finding, such as `rls_not_forced`. */
export type DoctorFindingKind = (typeof doctorFindingKinds)[number];

/** One problem the doctor found, with the fix. */
export interface DoctorFinding {
  readonly kind: DoctorFindingKind;
  /** `error`: tenant isolation is broken or one step from broken; `warning`: weaker or slower. */
  readonly severity: 'error' | 'warning';
  /** The object at fault, e.g. `public.contacts`, `policy p on public.contacts`, `function public.f(uuid)`. */
  readonly object: string;
  readonly message: string;
  /** Concrete SQL (or action) that removes the finding. */
  readonly fix: string;
}

/** What {@link runDoctor} found. */
export interface DoctorReport {
  /** Errors first, then by object and kind; empty when the database follows the convention. */
  readonly findings: readonly DoctorFinding[];
  /** The tenant tables checked (tables with a `tenant_id` column, partitions excluded). */
  readonly tenantTables: readonly string[];
  /** When the audit ran, as an ISO 8601 timestamp. */
  readonly checkedAt: string;
}

/**
 * SECURITY DEFINER functions in the Tenantry schema that were reviewed and may bypass the app
 * role's permissions: the doctor reports every other SECURITY DEFINER function. Names, without
 * schema or arguments. Application functions are never trusted.
 *
 * @example
 * ```ts
 * import { trustedSecurityDefinerFunctions } from 'tenantry';
 * console.log(trustedSecurityDefinerFunctions); // ['create_tenant', 'authenticate_api_key', 'enqueue_job', …]
 * ```
 */
export const trustedSecurityDefinerFunctions: readonly string[] = Object.freeze([
  'create_tenant',
  'authenticate_api_key',
  'enqueue_job',
  'enqueue_jobs',
  'complete_job',
  // tenantry/billing: each takes the tenant from the transaction's context (or, for the row
  // trigger and the webhook fan-out, from the rows being written) and touches only its rows.
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

const severityOrder = { error: 0, warning: 1 } as const;

/**
 * Audits a database for tenant-isolation holes: tenant tables without forced RLS or the two
 * convention policies, an app role that can bypass RLS, views and functions that run with
 * their owner's rights, foreign keys and unique keys that cross tenants, unprotected
 * partitions and policies that cannot use an index. Read-only: it runs catalog queries in one
 * read-only transaction and changes nothing.
 *
 * @example
 * ```ts
 * import { formatDoctorReport, runDoctor } from 'tenantry';
 * const report = await runDoctor({ connectionString: process.env.DATABASE_URL });
 * console.log(formatDoctorReport(report));
 * if (report.findings.some((finding) => finding.severity === 'error')) process.exitCode = 1;
 * ```
 */
export async function runDoctor(options: DoctorOptions): Promise<DoctorReport> {
  const schemas = (options.schemas ?? ['public']).map((schema, index) =>
    parseIdentifier(schema, `schemas[${index}]`),
  );
  if (schemas.length === 0) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'schemas must name at least one schema.',
    );
  }
  const tenantrySchema = parseIdentifier(
    options.tenantrySchema ?? defaultTenantrySchema,
    'tenantrySchema',
  );
  const roles = resolveRoleNames(options.roles);
  const checkedAt = new Date().toISOString();

  const client = await connectClient(options.connectionString);
  try {
    // One snapshot for every check; the pg_catalog-only search path makes pg_get_expr and
    // regprocedure print schema-qualified names, which the checks compare against.
    await client.query(
      'begin transaction isolation level repeatable read, read only; set local search_path = pg_catalog',
    );
    let audited = schemas;
    if (options.placementSchemas !== false) {
      const catalog = await client.query<{ exists: boolean }>(
        `select to_regclass(format('%I.tenant_placements', $1::text)) is not null as exists`,
        [tenantrySchema],
      );
      if (catalog.rows[0]?.exists === true) {
        const placed = await client.query<{ schema_name: string }>(
          `select schema_name from ${quoteIdentifier(tenantrySchema)}.tenant_placements
            where schema_name is not null order by 1`,
        );
        audited = [...new Set([...schemas, ...placed.rows.map((row) => row.schema_name)])];
      }
    }
    const context = await loadContext(client, {
      schemas: audited,
      tenantrySchema,
      roles,
    });
    const findings: DoctorFinding[] = [];
    for (const check of doctorChecks) findings.push(...(await check(context)));
    await client.query('commit');
    return Object.freeze({
      findings: Object.freeze(sortFindings(findings).map((finding) => Object.freeze(finding))),
      tenantTables: Object.freeze(context.tenantTables.map((table) => table.name)),
      checkedAt,
    });
  } catch (error) {
    if (error instanceof TenantryError) throw error;
    throw new TenantryError(
      'TENANTRY_ERR_DB_QUERY_FAILED',
      `The isolation audit failed: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  } finally {
    await client.end().catch(() => undefined);
  }
}

interface ContextSettings {
  readonly schemas: readonly string[];
  readonly tenantrySchema: string;
  readonly roles: RoleNames;
}

async function loadContext(client: pg.Client, settings: ContextSettings): Promise<DoctorContext> {
  const result = await client.query<{
    tenantry_schema: string;
    app_sql: string;
    owner_sql: string;
    database_sql: string;
    app_oid: number | null;
    app_superuser: boolean | null;
    app_bypassrls: boolean | null;
  }>(
    `select quote_ident($1::text) as tenantry_schema,
            quote_ident($2::text) as app_sql,
            quote_ident($3::text) as owner_sql,
            quote_ident(current_database()) as database_sql,
            r.oid as app_oid, r.rolsuper as app_superuser, r.rolbypassrls as app_bypassrls
       from (select 1) as one
       left join pg_roles r on r.rolname = $2::text`,
    [settings.tenantrySchema, settings.roles.app, settings.roles.owner],
  );
  const row = result.rows[0];
  if (row === undefined || row.app_oid === null) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `The app role "${settings.roles.app}" does not exist in this cluster; pass roles.app to audit another role.`,
    );
  }
  const tenantTables = await loadTenantTables(client, settings.schemas);
  const partitions = await loadPartitions(
    client,
    tenantTables.map((table) => table.oid),
  );
  return {
    db: client,
    schemas: settings.schemas,
    tenantrySchema: settings.tenantrySchema,
    appOid: row.app_oid,
    appIsSuperuser: row.app_superuser === true,
    appBypassesRls: row.app_bypassrls === true,
    trustedSecurityDefinerFunctions,
    sql: {
      tenantrySchema: row.tenantry_schema,
      app: row.app_sql,
      owner: row.owner_sql,
      database: row.database_sql,
    },
    tenantTables,
    partitions,
  };
}

async function loadTenantTables(
  client: pg.Client,
  schemas: readonly string[],
): Promise<DoctorContext['tenantTables']> {
  const result = await client.query<{
    oid: number;
    name: string;
    rls: boolean;
    forced: boolean;
  }>(
    `select c.oid, format('%I.%I', n.nspname, c.relname) as name,
            c.relrowsecurity as rls, c.relforcerowsecurity as forced
       from pg_class c
       join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = any($1::text[])
        and c.relkind in ('r', 'p')
        and not c.relispartition
        and exists (
          select 1 from pg_attribute a
           where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped
        )`,
    [schemas],
  );
  return result.rows
    .map((row) => ({ ...row, root: row.name }))
    .sort((a, b) => compareText(a.name, b.name));
}

async function loadPartitions(
  client: pg.Client,
  roots: readonly number[],
): Promise<DoctorContext['partitions']> {
  const result = await client.query<{
    oid: number;
    name: string;
    root: string;
    rls: boolean;
    forced: boolean;
  }>(
    `select c.oid, format('%I.%I', n.nspname, c.relname) as name,
            format('%I.%I', rn.nspname, r.relname) as root,
            c.relrowsecurity as rls, c.relforcerowsecurity as forced
       from unnest($1::oid[]) as roots(oid)
       cross join lateral pg_partition_tree(roots.oid) as tree
       join pg_class c on c.oid = tree.relid
       join pg_namespace n on n.oid = c.relnamespace
       join pg_class r on r.oid = roots.oid
       join pg_namespace rn on rn.oid = r.relnamespace
      where tree.level > 0 and c.relkind in ('r', 'p')`,
    [roots],
  );
  return result.rows.sort((a, b) => compareText(a.name, b.name));
}

function sortFindings(findings: DoctorFinding[]): DoctorFinding[] {
  return findings.sort(
    (a, b) =>
      severityOrder[a.severity] - severityOrder[b.severity] ||
      compareText(a.object, b.object) ||
      doctorFindingKinds.indexOf(a.kind) - doctorFindingKinds.indexOf(b.kind) ||
      compareText(a.message, b.message),
  );
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Renders a report for a terminal or a CI log: one block per finding (severity, kind, object,
 * message and fix), then a summary line.
 *
 * @example
 * ```ts
 * import { formatDoctorReport, runDoctor } from 'tenantry';
 * console.log(formatDoctorReport(await runDoctor({ connectionString })));
 * // error rls_not_forced public.contacts
 * //   Row Level Security is enabled on public.contacts but not forced: ...
 * //   fix: alter table public.contacts force row level security;
 * //
 * // 1 error, 0 warnings in 5 tenant tables.
 * ```
 */
export function formatDoctorReport(report: DoctorReport): string {
  const blocks = report.findings.map((finding) =>
    [
      `${finding.severity} ${finding.kind} ${finding.object}`,
      indent(finding.message, '  '),
      indent(`fix: ${finding.fix}`, '  ', '       '),
    ].join('\n'),
  );
  const errors = report.findings.filter((finding) => finding.severity === 'error').length;
  const warnings = report.findings.length - errors;
  const tables = `${report.tenantTables.length} tenant ${plural(report.tenantTables.length, 'table')}`;
  const summary =
    report.findings.length === 0
      ? `No findings in ${tables} (checked ${report.checkedAt}).`
      : `${errors} ${plural(errors, 'error')}, ${warnings} ${plural(warnings, 'warning')} in ${tables} (checked ${report.checkedAt}).`;
  return [...blocks, summary].join('\n\n');
}

function indent(text: string, first: string, rest = first): string {
  return text
    .split('\n')
    .map((line, index) => (index === 0 ? first : rest) + line)
    .join('\n');
}

function plural(count: number, word: string): string {
  return count === 1 ? word : `${word}s`;
}
