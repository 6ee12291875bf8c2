import pg from 'pg';
import {
  defaultTenantrySchema,
  parseIdentifier,
  quoteIdentifier,
  type RoleNames,
  resolveRoleNames,
} from '../config.ts';
import { toTenantryError } from '../database-errors.ts';
import { TenantryError } from '../errors.ts';
import { createJobAdmin, type JobAdmin } from '../jobs/job-admin.ts';
import { runnerSchema } from '../jobs/runner-support.ts';
import { type Logger, silentLogger, summarizeError } from '../logger.ts';
import type { StorageDriver } from '../storage/storage-driver.ts';
import { parseTenantId, type TenantId } from '../tenant-id.ts';
import {
  type EraseTenantOptions,
  eraseTenantData,
  type SignedErasureReport,
} from './tenant-erasure.ts';
import {
  type ExportTenantOptions,
  type ExportTenantResult,
  exportTenantArchive,
} from './tenant-export.ts';
import { lifecycleErrorCodes } from './tenant-tables.ts';

/** Options of {@link createTenantLifecycle}. */
export interface TenantLifecycleOptions {
  /** The owner role's connection (a superuser URL acts as the owner). Never the app role. */
  readonly connectionString: string;
  /**
   * Where the tenants' files live: exports read their objects, erasures delete everything under
   * `tenants/<id>/`. Without it, exports and erasures refuse a tenant that has registered files.
   */
  readonly storage?: { readonly driver: StorageDriver };
  readonly logger?: Logger;
  readonly roles?: Partial<RoleNames>;
  /** @defaultValue 'tenantry' */
  readonly tenantrySchema?: string;
  /** @defaultValue 4 */
  readonly maxConnections?: number;
}

/** A tenant as the catalog holds it. */
export interface TenantRecord {
  readonly id: TenantId;
  readonly slug: string;
  readonly name: string;
  readonly plan: string;
  readonly status: 'active' | 'suspended' | 'moving' | 'deleted';
  /** Why it was suspended (set by {@link TenantLifecycle.suspend}, cleared on resume). */
  readonly statusReason: string | undefined;
  readonly placement: string;
  readonly createdAt: Date;
  readonly updatedAt: Date;
}

/** What a status change did. */
export interface TenantTransition {
  readonly tenant: TenantRecord;
  /** `false` when the tenant already was in the requested status (nothing changed, no event). */
  readonly changed: boolean;
}

/** Creating, suspending, resuming, exporting and erasing tenants, as the owner role. */
export interface TenantLifecycle {
  /** Creates an active tenant; emits `tenant.created`. */
  create(input: {
    readonly slug: string;
    readonly name: string;
    /** @defaultValue the catalog's default plan ('free') */
    readonly plan?: string;
  }): Promise<TenantRecord>;
  get(tenantId: string): Promise<TenantRecord>;
  /**
   * Suspends an active tenant: its API requests are refused (`TENANTRY_ERR_TENANT_SUSPENDED`)
   * and its jobs are parked by the workers. Emits `tenant.suspended` with the reason.
   */
  suspend(tenantId: string, options?: { readonly reason?: string }): Promise<TenantTransition>;
  /** Resumes a suspended tenant and makes its parked jobs runnable; emits `tenant.resumed`. */
  resume(tenantId: string): Promise<TenantTransition & { readonly jobsResumed: number }>;
  /** Writes everything the tenant owns as a `.tar.gz` (see docs/guides/operations.md). */
  exportTenant(options: ExportTenantOptions): Promise<ExportTenantResult>;
  /** Erases everything the tenant owns, verifies it and returns the signed report. */
  eraseTenant(options: EraseTenantOptions): Promise<SignedErasureReport>;
  close(): Promise<void>;
}

const returningTenant =
  'returning id, slug, name, plan, status, status_reason, placement, created_at, updated_at';

const slugPattern = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

interface TenantRow {
  id: TenantId;
  slug: string;
  name: string;
  plan: string;
  status: TenantRecord['status'];
  status_reason: string | null;
  placement: string;
  created_at: Date;
  updated_at: Date;
}

/**
 * Opens the tenant lifecycle on the owner role's connection: create, suspend, resume, export and
 * hard-delete (erase) tenants. Every status change writes its `tenant.*` event to the outbox in
 * the same transaction (a trigger on the catalog).
 *
 * @example
 * ```ts
 * import { createTenantLifecycle } from 'tenantry/platform';
 * const lifecycle = createTenantLifecycle({ connectionString: ownerUrl, storage: { driver } });
 * const acme = await lifecycle.create({ slug: 'acme', name: 'Acme Inc.', plan: 'pro' });
 * await lifecycle.suspend(acme.id, { reason: 'unpaid invoice' });
 * await lifecycle.exportTenant({ tenantId: acme.id, output: 'acme.tar.gz' });
 * const { report, signature } = await lifecycle.eraseTenant({ tenantId: acme.id, signingKey });
 * await lifecycle.close();
 * ```
 */
export function createTenantLifecycle(options: TenantLifecycleOptions): TenantLifecycle {
  if (typeof options?.connectionString !== 'string' || options.connectionString === '') {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'connectionString (the owner role) is required.',
    );
  }
  const roles = resolveRoleNames(options.roles);
  const tenantrySchema = parseIdentifier(
    options.tenantrySchema ?? defaultTenantrySchema,
    'tenantrySchema',
  );
  const schema = quoteIdentifier(tenantrySchema);
  const logger = options.logger ?? silentLogger;
  const storage = options.storage?.driver;
  const maxConnections = options.maxConnections ?? 4;
  if (!Number.isInteger(maxConnections) || maxConnections < 2) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'maxConnections must be an integer of at least 2 (an erasure holds one for its lock).',
    );
  }
  const pool = new pg.Pool({
    connectionString: options.connectionString,
    max: maxConnections,
    options: `-c role=${roles.owner}`,
  });
  pool.on('error', (error) =>
    logger.warn({ err: summarizeError(error) }, 'idle lifecycle connection failed'),
  );
  let jobAdmin: Promise<JobAdmin | undefined> | undefined;
  const getJobAdmin = () => {
    jobAdmin ??= pool
      .query<{ installed: boolean }>('select to_regclass($1) is not null as installed', [
        `${runnerSchema}._private_jobs`,
      ])
      .then((result) =>
        result.rows[0]?.installed === true
          ? createJobAdmin({ connectionString: options.connectionString, roles })
          : undefined,
      );
    jobAdmin.catch(() => {
      jobAdmin = undefined;
    });
    return jobAdmin;
  };

  const selectTenant = `select id, slug, name, plan, status, status_reason, placement, created_at, updated_at
    from ${schema}.tenants`;

  const transition = async (
    tenantId: string,
    to: 'suspended' | 'active',
    reason: string | null,
  ): Promise<TenantTransition> => {
    const id = parseTenantId(tenantId);
    const client = await pool.connect();
    let broken = false;
    try {
      await client.query('begin');
      const current = await client.query<TenantRow>(`${selectTenant} where id = $1 for update`, [
        id,
      ]);
      const row = current.rows[0];
      if (row === undefined) {
        throw new TenantryError('TENANTRY_ERR_TENANT_NOT_FOUND', `No tenant ${id}.`);
      }
      if (row.status === to) {
        await client.query('commit');
        return Object.freeze({ tenant: toRecord(row), changed: false });
      }
      const from = to === 'suspended' ? 'active' : 'suspended';
      if (row.status !== from) {
        throw new TenantryError(
          lifecycleErrorCodes.stateConflict,
          `Tenant ${id} is ${row.status}; only ${from === 'active' ? 'an active' : 'a suspended'} tenant can be ${to === 'suspended' ? 'suspended' : 'resumed'}.`,
          { details: { status: row.status } },
        );
      }
      const updated = await client.query<TenantRow>(
        `update ${schema}.tenants set status = $2, status_reason = $3, updated_at = now()
          where id = $1 ${returningTenant}`,
        [id, to, reason],
      );
      await client.query('commit');
      const tenant = toRecord(updated.rows[0] as TenantRow);
      logger.info({ tenantId: id, status: to }, `tenant ${to === 'active' ? 'resumed' : to}`);
      return Object.freeze({ tenant, changed: true });
    } catch (error) {
      await client.query('rollback').catch(() => {
        broken = true;
      });
      throw toTenantryError(error);
    } finally {
      client.release(broken);
    }
  };

  return Object.freeze({
    async create(input: { slug: string; name: string; plan?: string }) {
      const slug = input?.slug;
      if (typeof slug !== 'string' || !slugPattern.test(slug)) {
        throw new TenantryError(
          'TENANTRY_ERR_TENANT_SLUG_INVALID',
          `A slug is 1-63 lowercase letters, digits and inner hyphens, got ${JSON.stringify(slug)}.`,
        );
      }
      const name = input.name;
      if (typeof name !== 'string' || name.trim() === '' || name.length > 200) {
        throw new TenantryError(
          lifecycleErrorCodes.inputInvalid,
          'A tenant name is 1 to 200 characters and not blank.',
        );
      }
      const plan = input.plan;
      if (plan !== undefined && (typeof plan !== 'string' || plan === '')) {
        throw new TenantryError('TENANTRY_ERR_PLAN_NOT_FOUND', 'plan must be a plan id.');
      }
      try {
        const result = await pool.query<TenantRow>(
          plan === undefined
            ? `insert into ${schema}.tenants (slug, name) values ($1, $2) ${returningTenant}`
            : `insert into ${schema}.tenants (slug, name, plan) values ($1, $2, $3) ${returningTenant}`,
          plan === undefined ? [slug, name] : [slug, name, plan],
        );
        const tenant = toRecord(result.rows[0] as TenantRow);
        logger.info({ tenantId: tenant.id, slug }, 'tenant created');
        return tenant;
      } catch (error) {
        const code = (error as { code?: unknown; constraint?: unknown }).code;
        const constraint = (error as { constraint?: unknown }).constraint;
        if (code === '23505' && constraint === 'tenants_slug_key') {
          throw new TenantryError(
            'TENANTRY_ERR_TENANT_SLUG_TAKEN',
            `The slug "${slug}" is taken.`,
            { cause: error },
          );
        }
        if (code === '23503' && constraint === 'tenants_plan_fkey') {
          throw new TenantryError('TENANTRY_ERR_PLAN_NOT_FOUND', `No plan "${plan}".`, {
            cause: error,
          });
        }
        throw toTenantryError(error);
      }
    },

    async get(tenantId: string) {
      const id = parseTenantId(tenantId);
      const result = await pool
        .query<TenantRow>(`${selectTenant} where id = $1`, [id])
        .catch((error: unknown) => {
          throw toTenantryError(error);
        });
      const row = result.rows[0];
      if (row === undefined) {
        throw new TenantryError('TENANTRY_ERR_TENANT_NOT_FOUND', `No tenant ${id}.`);
      }
      return toRecord(row);
    },

    async suspend(tenantId: string, suspendOptions: { reason?: string } = {}) {
      const reason = suspendOptions.reason;
      if (
        reason !== undefined &&
        (typeof reason !== 'string' || reason.trim() === '' || reason.length > 500)
      ) {
        throw new TenantryError(
          lifecycleErrorCodes.inputInvalid,
          'A suspension reason is 1 to 500 characters and not blank.',
        );
      }
      return transition(tenantId, 'suspended', reason ?? null);
    },

    async resume(tenantId: string) {
      const result = await transition(tenantId, 'active', null);
      // Also when the tenant already was active: a resume that stopped before this point left
      // its jobs parked, and running it again makes them runnable.
      const admin = await getJobAdmin();
      const jobsResumed = admin === undefined ? 0 : await admin.resumeParkedJobs(result.tenant.id);
      return Object.freeze({ ...result, jobsResumed });
    },

    exportTenant(exportOptions: ExportTenantOptions) {
      return exportTenantArchive({ pool, storage, tenantrySchema }, exportOptions);
    },

    eraseTenant(eraseOptions: EraseTenantOptions) {
      return eraseTenantData(
        { pool, storage, tenantrySchema, jobAdmin: getJobAdmin },
        eraseOptions,
      );
    },

    async close() {
      const admin = await jobAdmin?.catch(() => undefined);
      await admin?.close();
      if (!pool.ended) await pool.end();
    },
  });
}

function toRecord(row: TenantRow): TenantRecord {
  return Object.freeze({
    id: row.id,
    slug: row.slug,
    name: row.name,
    plan: row.plan,
    status: row.status,
    statusReason: row.status_reason ?? undefined,
    placement: row.placement,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  });
}
