import { createHmac, timingSafeEqual } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import type pg from 'pg';
import { defaultTenantrySchema, quoteIdentifier } from '../config.ts';
import { toTenantryError } from '../database-errors.ts';
import { TenantryError } from '../errors.ts';
import type { JobAdmin } from '../jobs/job-admin.ts';
import { schemaLockKey } from '../placement/migrate-targets.ts';
import type { StorageDriver } from '../storage/storage-driver.ts';
import { parseTenantId, type TenantId } from '../tenant-id.ts';
import { tenantryVersion } from './tenant-export.ts';
import {
  deletionOrder,
  lifecycleErrorCodes,
  listTenantTablesOf,
  type TenantTable,
} from './tenant-tables.ts';

/** What {@link TenantLifecycle.eraseTenant} is told. */
export interface EraseTenantOptions {
  readonly tenantId: string;
  /** HMAC-SHA256 key the report is signed with: at least 32 bytes. */
  readonly signingKey: string | Uint8Array;
  /** Erase a tenant that is still active (otherwise suspend it first). @defaultValue false */
  readonly force?: boolean;
  /**
   * Called after each step and each batch of deleted rows commits. An exception thrown here
   * stops the erasure where it is, as a crash would; running it again completes it.
   */
  readonly onProgress?: (progress: ErasureProgress) => void;
  /** Rows deleted per transaction. @defaultValue 5000 */
  readonly batchRows?: number;
  /** How long to wait for the tenant's running jobs to finish. @defaultValue 60000 */
  readonly jobsDrainTimeoutMs?: number;
}

/** The steps of an erasure, in order; the journal records the last one committed. */
export type ErasureStep =
  | 'started'
  | 'jobs'
  | 'objects'
  | 'rows'
  | 'outbox'
  | 'verified'
  | 'finished';

/** Progress of an erasure. */
export type ErasureProgress =
  | { readonly kind: 'step'; readonly step: ErasureStep }
  | {
      readonly kind: 'rows';
      readonly table: string;
      /** Rows of this table deleted so far (every run of this erasure). */
      readonly deleted: number;
      /** The table is empty for this tenant. */
      readonly done: boolean;
    };

/** The signed record of a finished erasure. */
export interface ErasureReport {
  readonly format: 'tenantry-erasure-report';
  readonly formatVersion: 1;
  readonly tenantryVersion: string;
  readonly tenantId: string;
  /** The slug the tenant had when the erasure started. */
  readonly slug: string;
  readonly previousStatus: string;
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly tables: readonly {
    readonly table: string;
    readonly rowsBefore: number;
    readonly rowsDeleted: number;
    readonly rowsRemaining: number;
  }[];
  readonly outboxEvents: { readonly deleted: number; readonly remaining: number };
  readonly jobs: { readonly removed: number; readonly remaining: number };
  /** `null` when no storage driver was configured and the tenant had no registered files. */
  readonly objects: {
    readonly driver: string;
    readonly prefix: string;
    readonly deleted: number;
    readonly remaining: number;
  } | null;
  readonly verification: {
    readonly passed: true;
    readonly checkedAt: string;
    readonly rowsRemaining: 0;
    readonly objectsRemaining: 0 | null;
    readonly jobsRemaining: 0;
    readonly outboxEventsRemaining: 0;
  };
  /**
   * For a tenant placed in its own schema (absent for a pooled one): the schema, dropped once its
   * tenant tables held no row, and verified gone; the placement is cleared (`pool`).
   */
  readonly placement?: { readonly schema: string; readonly dropped: true };
  /** The catalog row stays (status `deleted`) so the id is never reused; slug and name are scrubbed. */
  readonly catalog: { readonly kept: true; readonly status: 'deleted'; readonly slug: string };
}

/** A report and its signature, as returned and as carried by the `tenant.deleted` event. */
export interface SignedErasureReport {
  readonly report: ErasureReport;
  /** HMAC-SHA256 over {@link canonicalJson}(report), hex. */
  readonly signature: string;
  /** The erasure had finished before this call, which changed nothing. */
  readonly alreadyFinished: boolean;
}

/** What the eraser needs from its lifecycle. */
export interface ErasureContext {
  readonly pool: pg.Pool;
  readonly storage: StorageDriver | undefined;
  /** The job admin, or `undefined` when the job queue is not installed. */
  readonly jobAdmin: () => Promise<JobAdmin | undefined>;
  readonly tenantrySchema?: string;
}

interface Journal {
  slug: string;
  previousStatus: string;
  storage: string | null;
  before: Record<string, number>;
  deleted: Record<string, number>;
  objectsDeleted: number;
  jobsRemoved: number;
  eventsDeleted: number;
  /** The tenant's dedicated schema when the erasure started (absent for a pooled tenant). */
  placementSchema?: string;
}

const maxVerificationRounds = 3;

/**
 * Serialises JSON with object keys sorted at every level and no whitespace: the bytes an erasure
 * report's signature covers (`jq -cjS .` prints the same for these reports).
 *
 * @example
 * ```ts
 * canonicalJson({ b: 1, a: [{ d: 2, c: 3 }] }); // '{"a":[{"c":3,"d":2}],"b":1}'
 * ```
 */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, entry]) => entry !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([key, entry]) => `${JSON.stringify(key)}:${canonicalJson(entry)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/**
 * Signs an erasure report: HMAC-SHA256 with `signingKey` over its canonical JSON, hex.
 *
 * @example
 * ```ts
 * const signature = signErasureReport(report, process.env.ERASURE_SIGNING_KEY!);
 * ```
 */
export function signErasureReport(report: ErasureReport, signingKey: string | Uint8Array): string {
  return createHmac('sha256', parseSigningKey(signingKey))
    .update(canonicalJson(report))
    .digest('hex');
}

/**
 * Checks an erasure report's signature in constant time: `false` for a report or signature that
 * was changed, or another key.
 *
 * @example
 * ```ts
 * import { verifyErasureReport } from 'tenantry/platform';
 * const { report, signature } = JSON.parse(await readFile('erasure.json', 'utf8'));
 * if (!verifyErasureReport({ report, signature }, process.env.ERASURE_SIGNING_KEY!)) throw new Error('tampered');
 * ```
 */
export function verifyErasureReport(
  signed: { readonly report: unknown; readonly signature: unknown },
  signingKey: string | Uint8Array,
): boolean {
  if (typeof signed.signature !== 'string' || !/^[0-9a-f]{64}$/.test(signed.signature)) {
    return false;
  }
  const expected = createHmac('sha256', parseSigningKey(signingKey))
    .update(canonicalJson(signed.report))
    .digest();
  return timingSafeEqual(expected, Buffer.from(signed.signature, 'hex'));
}

function parseSigningKey(key: string | Uint8Array): Buffer {
  const bytes =
    typeof key === 'string'
      ? Buffer.from(key, 'utf8')
      : key instanceof Uint8Array
        ? Buffer.from(key)
        : undefined;
  if (bytes === undefined || bytes.length < 32) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      'The erasure signing key must be at least 32 bytes (openssl rand -base64 48).',
    );
  }
  return bytes;
}

/**
 * Erases a tenant: journal, mark deleted, jobs, objects, rows, outbox, verification, signed
 * report and `tenant.deleted`. (Use {@link TenantLifecycle.eraseTenant}.)
 */
export async function eraseTenantData(
  context: ErasureContext,
  options: EraseTenantOptions,
): Promise<SignedErasureReport> {
  const tenantId = parseTenantId(options.tenantId);
  parseSigningKey(options.signingKey);
  const batchRows = options.batchRows ?? 5000;
  if (!Number.isInteger(batchRows) || batchRows < 1 || batchRows > 1_000_000) {
    throw new TenantryError(
      'TENANTRY_ERR_CONFIG_INVALID',
      `batchRows must be an integer from 1 to 1000000, got ${JSON.stringify(batchRows)}.`,
    );
  }
  const schema = quoteIdentifier(context.tenantrySchema ?? defaultTenantrySchema);
  const tenantrySchema = context.tenantrySchema ?? defaultTenantrySchema;
  const progress = options.onProgress ?? (() => {});
  // One erasure per tenant at a time: a session advisory lock, released if this process dies.
  const lockClient = await context.pool.connect();
  let lockClientBroken = false;
  try {
    const lock = await lockClient.query<{ locked: boolean }>(
      `select pg_try_advisory_lock(hashtextextended('tenantry.erasure:' || $1, 0)) as locked`,
      [tenantId],
    );
    if (lock.rows[0]?.locked !== true) {
      throw new TenantryError(
        lifecycleErrorCodes.stateConflict,
        `An erasure of tenant ${tenantId} is already running in another session.`,
      );
    }
    try {
      const started = await startErasure(context, schema, tenantrySchema, tenantId, options);
      if ('finished' in started) return started.finished;
      const journal = started.journal;
      progress({ kind: 'step', step: 'started' });

      const prefix = `tenants/${tenantId}/`;
      const verification = {
        rows: 0,
        objects: null as number | null,
        jobs: 0,
        events: 0,
        schema: false,
      };
      const counts: Record<string, number> = {};
      for (let round = 1; ; round++) {
        await removeJobs(context, schema, tenantId, journal, options.jobsDrainTimeoutMs ?? 60_000);
        progress({ kind: 'step', step: 'jobs' });

        if (context.storage !== undefined) {
          const deleted = await context.storage.deletePrefix(prefix);
          journal.objectsDeleted += deleted;
          await recordStep(context.pool, schema, tenantId, 'objects', {
            objectsDeleted: journal.objectsDeleted,
          });
        }
        progress({ kind: 'step', step: 'objects' });

        const placed = await listTenantTablesOf(context.pool, tenantId, { tenantrySchema });
        if (placed.schema !== null && journal.placementSchema === undefined) {
          journal.placementSchema = placed.schema;
          await recordStep(context.pool, schema, tenantId, 'objects', {
            placementSchema: placed.schema,
          });
        }
        // A placed tenant's placement row goes with its schema (releasePlacement), never alone.
        const placementTable = `${tenantrySchema}.tenant_placements`;
        for (const table of deletionOrder(placed.tables, tenantrySchema)) {
          if (placed.schema !== null && table.name === placementTable) continue;
          await deleteRows(context.pool, schema, table, tenantId, batchRows, journal, progress);
        }
        await recordStep(context.pool, schema, tenantId, 'rows', {});
        progress({ kind: 'step', step: 'rows' });

        await deleteOutboxEvents(context.pool, schema, tenantId, batchRows, journal);
        progress({ kind: 'step', step: 'outbox' });

        if (placed.schema !== null) {
          journal.deleted[placementTable] =
            (journal.deleted[placementTable] ?? 0) +
            (await releasePlacement(context.pool, schema, placementTable, tenantId, placed.schema));
        }

        const tables =
          placed.schema === null
            ? placed.tables
            : (await listTenantTablesOf(context.pool, tenantId, { tenantrySchema })).tables;
        verification.rows = 0;
        for (const table of tables) {
          const result = await context.pool.query<{ n: number }>(
            `select count(*)::integer as n from ${table.sql} where tenant_id = $1`,
            [tenantId],
          );
          counts[table.name] = result.rows[0]?.n ?? 0;
          verification.rows += counts[table.name] ?? 0;
        }
        const events = await context.pool.query<{ n: number }>(
          `select count(*)::integer as n from ${schema}.outbox_events where tenant_id = $1`,
          [tenantId],
        );
        verification.events = events.rows[0]?.n ?? 0;
        verification.schema =
          journal.placementSchema === undefined
            ? false
            : await schemaExists(context.pool, journal.placementSchema);
        const admin = await context.jobAdmin();
        const jobs = admin === undefined ? undefined : await admin.countJobs(tenantId);
        verification.jobs =
          jobs === undefined ? 0 : jobs.waiting + jobs.running + jobs.dead + jobs.parked;
        // A second sweep of the prefix: what it finds was left behind (and is gone now).
        verification.objects =
          context.storage === undefined ? null : await context.storage.deletePrefix(prefix);
        journal.objectsDeleted += verification.objects ?? 0;
        const clean =
          verification.rows === 0 &&
          verification.events === 0 &&
          verification.jobs === 0 &&
          !verification.schema &&
          (verification.objects ?? 0) === 0;
        if (clean) break;
        if (round === maxVerificationRounds) {
          throw new TenantryError(
            lifecycleErrorCodes.erasureIncomplete,
            `Erasure of tenant ${tenantId} still found data after ${round} rounds (something keeps writing for it): ` +
              `${verification.rows} rows, ${verification.events} outbox events, ${verification.jobs} jobs, ` +
              `${verification.objects ?? 0} objects${verification.schema ? `, schema ${journal.placementSchema}` : ''}. Run it again once that has stopped.`,
            {
              details: {
                schemaRemaining: verification.schema ? (journal.placementSchema ?? null) : null,
                rowsRemaining: verification.rows,
                outboxEventsRemaining: verification.events,
                jobsRemaining: verification.jobs,
                objectsRemaining: verification.objects,
              },
            },
          );
        }
      }
      const checkedAt = new Date().toISOString();
      await recordStep(context.pool, schema, tenantId, 'verified', {
        objectsDeleted: journal.objectsDeleted,
        verification: { checkedAt, counts },
      });
      progress({ kind: 'step', step: 'verified' });

      const finished = await finishErasure(context, schema, tenantId, journal, {
        checkedAt,
        counts,
        objectsRemaining: verification.objects,
        signingKey: options.signingKey,
        prefix,
      });
      progress({ kind: 'step', step: 'finished' });
      return finished;
    } finally {
      await lockClient
        .query(`select pg_advisory_unlock(hashtextextended('tenantry.erasure:' || $1, 0))`, [
          tenantId,
        ])
        .catch(() => {
          lockClientBroken = true;
        });
    }
  } catch (error) {
    throw toTenantryError(error);
  } finally {
    lockClient.release(lockClientBroken);
  }
}

async function inTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>) {
  const client = await pool.connect();
  let broken = false;
  try {
    await client.query('begin');
    const result = await fn(client);
    await client.query('commit');
    return result;
  } catch (error) {
    await client.query('rollback').catch(() => {
      broken = true;
    });
    throw error;
  } finally {
    client.release(broken);
  }
}

async function startErasure(
  context: ErasureContext,
  schema: string,
  tenantrySchema: string,
  tenantId: TenantId,
  options: EraseTenantOptions,
): Promise<{ journal: Journal } | { finished: SignedErasureReport }> {
  return inTransaction(context.pool, async (client) => {
    const tenant = await client.query<{ slug: string; status: string }>(
      `select slug, status from ${schema}.tenants where id = $1 for update`,
      [tenantId],
    );
    const existing = await client.query<{
      progress: Journal;
      report: ErasureReport | null;
      signature: string | null;
    }>(
      `select progress, report, signature from ${schema}.tenant_erasures where tenant_id = $1 for update`,
      [tenantId],
    );
    const row = existing.rows[0];
    if (row?.report != null && row.signature !== null) {
      return { finished: { report: row.report, signature: row.signature, alreadyFinished: true } };
    }
    if (row !== undefined) {
      if (row.progress.storage !== null && context.storage === undefined) {
        throw new TenantryError(
          'TENANTRY_ERR_CONFIG_INVALID',
          `The erasure of tenant ${tenantId} started with the ${row.progress.storage} storage driver; resume it with that driver.`,
        );
      }
      return { journal: row.progress };
    }
    const current = tenant.rows[0];
    if (current === undefined) {
      throw new TenantryError('TENANTRY_ERR_TENANT_NOT_FOUND', `No tenant ${tenantId}.`);
    }
    if (current.status === 'moving' || (current.status === 'active' && options.force !== true)) {
      throw new TenantryError(
        lifecycleErrorCodes.stateConflict,
        current.status === 'moving'
          ? `Tenant ${tenantId} is being moved; erase it once the move has finished.`
          : `Tenant ${tenantId} is active: suspend it first (tenantry tenants suspend), or pass force.`,
        { details: { status: current.status } },
      );
    }
    const placed = await listTenantTablesOf(client, tenantId, { tenantrySchema });
    const tables = placed.tables;
    const before: Record<string, number> = {};
    for (const table of tables) {
      const result = await client.query<{ n: string }>(
        `select count(*) as n from ${table.sql} where tenant_id = $1`,
        [tenantId],
      );
      before[table.name] = Number(result.rows[0]?.n ?? 0);
    }
    if (context.storage === undefined && (before[`${tenantrySchema}.files`] ?? 0) > 0) {
      throw new TenantryError(
        'TENANTRY_ERR_CONFIG_INVALID',
        `Tenant ${tenantId} has ${before[`${tenantrySchema}.files`]} registered files but no storage driver was given: pass storage: { driver } so their objects are deleted too.`,
      );
    }
    const journal: Journal = {
      slug: current.slug,
      previousStatus: current.status,
      storage: context.storage?.name ?? null,
      before,
      deleted: {},
      objectsDeleted: 0,
      jobsRemoved: 0,
      eventsDeleted: 0,
      ...(placed.schema === null ? {} : { placementSchema: placed.schema }),
    };
    // The journal row first: the lifecycle trigger sees it and leaves tenant.deleted to the end.
    await client.query(
      `insert into ${schema}.tenant_erasures (tenant_id, progress) values ($1, $2::jsonb)`,
      [tenantId, JSON.stringify(journal)],
    );
    await client.query(
      `update ${schema}.tenants set status = 'deleted', status_reason = null, updated_at = now()
        where id = $1 and status <> 'deleted'`,
      [tenantId],
    );
    return { journal };
  });
}

async function recordStep(
  pool: pg.Pool,
  schema: string,
  tenantId: string,
  step: ErasureStep,
  merge: Record<string, unknown>,
): Promise<void> {
  await pool.query(
    `update ${schema}.tenant_erasures set step = $2, progress = progress || $3::jsonb
      where tenant_id = $1 and finished_at is null`,
    [tenantId, step, JSON.stringify(merge)],
  );
}

async function removeJobs(
  context: ErasureContext,
  schema: string,
  tenantId: TenantId,
  journal: Journal,
  drainTimeoutMs: number,
): Promise<void> {
  const admin = await context.jobAdmin();
  if (admin !== undefined) {
    const deadline = Date.now() + drainTimeoutMs;
    for (;;) {
      journal.jobsRemoved += await admin.removeTenantJobs(tenantId);
      const counts = await admin.countJobs(tenantId);
      // A job that was running when the tenant was marked deleted may still enqueue another.
      if (counts.running === 0 && counts.waiting + counts.dead + counts.parked === 0) break;
      if (Date.now() > deadline) {
        throw new TenantryError(
          lifecycleErrorCodes.erasureIncomplete,
          `Tenant ${tenantId} still has ${counts.running} running jobs after ${drainTimeoutMs} ms; run the erasure again once they have finished.`,
          { details: { jobsRunning: counts.running } },
        );
      }
      await delay(200);
    }
  }
  await recordStep(context.pool, schema, tenantId, 'jobs', { jobsRemoved: journal.jobsRemoved });
}

async function deleteRows(
  pool: pg.Pool,
  schema: string,
  table: TenantTable,
  tenantId: TenantId,
  batchRows: number,
  journal: Journal,
  progress: (event: ErasureProgress) => void,
): Promise<void> {
  // Each batch commits with its count in the journal, so a resumed erasure reports every row.
  for (;;) {
    const deleted = await inTransaction(pool, async (client) => {
      const result = await client.query(
        `delete from ${table.sql} where tenant_id = $1
            and ctid = any (array(select ctid from ${table.sql} where tenant_id = $1 limit $2))`,
        [tenantId, batchRows],
      );
      const count = result.rowCount ?? 0;
      if (count > 0) {
        await client.query(
          `update ${schema}.tenant_erasures
              set progress = jsonb_set(progress, array['deleted', $2::text],
                    to_jsonb(coalesce((progress #>> array['deleted', $2::text])::bigint, 0) + $3))
            where tenant_id = $1`,
          [tenantId, table.name, count],
        );
      }
      return count;
    });
    journal.deleted[table.name] = (journal.deleted[table.name] ?? 0) + deleted;
    progress({
      kind: 'rows',
      table: table.name,
      deleted: journal.deleted[table.name] ?? 0,
      done: deleted === 0,
    });
    if (deleted === 0) return;
  }
}

async function schemaExists(pool: pg.Pool, name: string): Promise<boolean> {
  const result = await pool.query('select 1 from pg_catalog.pg_namespace where nspname = $1', [
    name,
  ]);
  return result.rowCount !== 0;
}

const schemaTablesSql = `
  select format('%I.%I', n.nspname, c.relname) as name
    from pg_catalog.pg_class c
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where n.nspname = $1 and c.relkind in ('r', 'p') and not c.relispartition
     and exists (select 1 from pg_catalog.pg_attribute a
                  where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped)
   order by c.relname`;

// Objects outside the schema that a cascading drop would take with it: a foreign key, view rule,
// default, trigger or policy of an outside table, or an outside table, function or type,
// depending on something in the schema.
const outsideDependentsSql = `
  with ns as (select oid from pg_catalog.pg_namespace where nspname = $1),
  inside as (
    select 'pg_catalog.pg_class'::regclass as classid, c.oid
      from pg_catalog.pg_class c join ns on c.relnamespace = ns.oid
    union all
    select 'pg_catalog.pg_proc'::regclass, p.oid
      from pg_catalog.pg_proc p join ns on p.pronamespace = ns.oid
    union all
    select 'pg_catalog.pg_type'::regclass, t.oid
      from pg_catalog.pg_type t join ns on t.typnamespace = ns.oid
  )
  select distinct pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) as object
    from pg_catalog.pg_depend d
    join inside i on i.classid = d.refclassid and i.oid = d.refobjid
    left join pg_catalog.pg_constraint k
      on d.classid = 'pg_catalog.pg_constraint'::regclass and k.oid = d.objid
    left join pg_catalog.pg_rewrite r
      on d.classid = 'pg_catalog.pg_rewrite'::regclass and r.oid = d.objid
    left join pg_catalog.pg_attrdef ad
      on d.classid = 'pg_catalog.pg_attrdef'::regclass and ad.oid = d.objid
    left join pg_catalog.pg_trigger g
      on d.classid = 'pg_catalog.pg_trigger'::regclass and g.oid = d.objid
    left join pg_catalog.pg_policy pl
      on d.classid = 'pg_catalog.pg_policy'::regclass and pl.oid = d.objid
    left join pg_catalog.pg_class c
      on d.classid = 'pg_catalog.pg_class'::regclass and c.oid = d.objid
    left join pg_catalog.pg_proc p
      on d.classid = 'pg_catalog.pg_proc'::regclass and p.oid = d.objid
    left join pg_catalog.pg_type t
      on d.classid = 'pg_catalog.pg_type'::regclass and t.oid = d.objid
   where d.deptype = 'n'
     and coalesce(
           (select o.relnamespace from pg_catalog.pg_class o
             where o.oid = coalesce(nullif(k.conrelid, 0), r.ev_class, ad.adrelid, g.tgrelid,
                                    pl.polrelid)),
           c.relnamespace, p.pronamespace, t.typnamespace, k.connamespace)
         is distinct from (select oid from ns)
   order by 1`;

/**
 * Drops a placed tenant's schema once its rows are gone, and clears its placement, in one
 * transaction. The schema is locked against migrators; every tenant table in it must be empty
 * of every tenant's rows (the drop must never take another tenant's rows); nothing outside it may
 * depend on it. Whatever else the schema holds belonged to the tenant and goes with it.
 */
async function releasePlacement(
  pool: pg.Pool,
  schema: string,
  placementTable: string,
  tenantId: TenantId,
  placementSchema: string,
): Promise<number> {
  return inTransaction(pool, async (client) => {
    const lock = await client.query<{ locked: boolean }>(
      'select pg_try_advisory_xact_lock(hashtextextended($1, 0)) as locked',
      [schemaLockKey(placementSchema)],
    );
    if (lock.rows[0]?.locked !== true) {
      throw new TenantryError(
        lifecycleErrorCodes.stateConflict,
        `Schema ${placementSchema} of tenant ${tenantId} is being migrated; run the erasure again once that has finished.`,
      );
    }
    const placement = await client.query<{ schema_name: string }>(
      `select schema_name from ${schema}.tenant_placements where tenant_id = $1 for update`,
      [tenantId],
    );
    if (placement.rows[0]?.schema_name !== placementSchema) return 0;
    const tables = await client.query<{ name: string }>(schemaTablesSql, [placementSchema]);
    const holding: string[] = [];
    for (const table of tables.rows) {
      const probe = await client.query(`select 1 from ${table.name} limit 1`);
      if (probe.rowCount !== 0) holding.push(table.name);
    }
    if (holding.length > 0) {
      throw new TenantryError(
        lifecycleErrorCodes.erasureIncomplete,
        `Schema ${placementSchema} of tenant ${tenantId} still holds rows (${holding.join(', ')}), so it is kept. Run the erasure again once nothing writes there.`,
        { details: { schema: placementSchema, tables: holding } },
      );
    }
    const dependents = await client.query<{ object: string }>(outsideDependentsSql, [
      placementSchema,
    ]);
    if (dependents.rows.length > 0) {
      const objects = dependents.rows.map((row) => row.object);
      throw new TenantryError(
        lifecycleErrorCodes.stateConflict,
        `Objects outside schema ${placementSchema} depend on it (${objects.slice(0, 5).join('; ')}); drop them, then run the erasure again.`,
        { details: { schema: placementSchema, dependents: objects.slice(0, 50) } },
      );
    }
    await client.query(`drop schema ${quoteIdentifier(placementSchema)} cascade`);
    // The placement row and tenants.placement change together (a deferred trigger checks it).
    const deleted = await client.query(
      `delete from ${schema}.tenant_placements where tenant_id = $1`,
      [tenantId],
    );
    await client.query(
      `update ${schema}.tenants set placement = 'pool', updated_at = now() where id = $1`,
      [tenantId],
    );
    const count = deleted.rowCount ?? 0;
    await client.query(
      `update ${schema}.tenant_erasures
          set progress = jsonb_set(progress, array['deleted', $2::text],
                to_jsonb(coalesce((progress #>> array['deleted', $2::text])::bigint, 0) + $3))
        where tenant_id = $1`,
      [tenantId, placementTable, count],
    );
    return count;
  });
}

async function deleteOutboxEvents(
  pool: pg.Pool,
  schema: string,
  tenantId: TenantId,
  batchRows: number,
  journal: Journal,
): Promise<void> {
  // Webhook deliveries and their attempts go with their events (on delete cascade).
  for (;;) {
    const deleted = await inTransaction(pool, async (client) => {
      const result = await client.query(
        `delete from ${schema}.outbox_events where tenant_id = $1
            and id = any (array(select id from ${schema}.outbox_events where tenant_id = $1 limit $2))`,
        [tenantId, batchRows],
      );
      const count = result.rowCount ?? 0;
      if (count > 0) {
        await client.query(
          `update ${schema}.tenant_erasures
              set progress = jsonb_set(progress, '{eventsDeleted}',
                    to_jsonb(coalesce((progress ->> 'eventsDeleted')::bigint, 0) + $2))
            where tenant_id = $1`,
          [tenantId, count],
        );
      }
      return count;
    });
    journal.eventsDeleted += deleted;
    if (deleted === 0) break;
  }
  await recordStep(pool, schema, tenantId, 'outbox', {});
}

async function finishErasure(
  context: ErasureContext,
  schema: string,
  tenantId: TenantId,
  journal: Journal,
  verified: {
    checkedAt: string;
    counts: Record<string, number>;
    objectsRemaining: number | null;
    signingKey: string | Uint8Array;
    prefix: string;
  },
): Promise<SignedErasureReport> {
  return inTransaction(context.pool, async (client) => {
    const row = await client.query<{
      started_at: Date;
      progress: Journal;
      report: ErasureReport | null;
      signature: string | null;
    }>(
      `select started_at, progress, report, signature from ${schema}.tenant_erasures
        where tenant_id = $1 for update`,
      [tenantId],
    );
    const current = row.rows[0];
    if (current === undefined) {
      throw new TenantryError(
        lifecycleErrorCodes.erasureIncomplete,
        `The erasure journal of tenant ${tenantId} disappeared while it ran.`,
      );
    }
    if (current.report !== null && current.signature !== null) {
      return { report: current.report, signature: current.signature, alreadyFinished: true };
    }
    const stored = current.progress;
    const names = [
      ...new Set([...Object.keys(stored.before), ...Object.keys(verified.counts)]),
    ].sort();
    const slug = `deleted-${tenantId.replaceAll('-', '')}`;
    const report: ErasureReport = {
      format: 'tenantry-erasure-report',
      formatVersion: 1,
      tenantryVersion,
      tenantId,
      slug: stored.slug,
      previousStatus: stored.previousStatus,
      startedAt: current.started_at.toISOString(),
      finishedAt: new Date().toISOString(),
      tables: names.map((name) => ({
        table: name,
        rowsBefore: stored.before[name] ?? 0,
        rowsDeleted: Number(stored.deleted[name] ?? 0),
        rowsRemaining: verified.counts[name] ?? 0,
      })),
      outboxEvents: { deleted: Number(stored.eventsDeleted ?? 0), remaining: 0 },
      jobs: { removed: journal.jobsRemoved, remaining: 0 },
      objects:
        context.storage === undefined
          ? null
          : {
              driver: context.storage.name,
              prefix: verified.prefix,
              deleted: journal.objectsDeleted,
              remaining: 0,
            },
      verification: {
        passed: true,
        checkedAt: verified.checkedAt,
        rowsRemaining: 0,
        objectsRemaining: verified.objectsRemaining === null ? null : 0,
        jobsRemaining: 0,
        outboxEventsRemaining: 0,
      },
      ...(stored.placementSchema === undefined
        ? {}
        : { placement: { schema: stored.placementSchema, dropped: true as const } }),
      catalog: { kept: true, status: 'deleted', slug },
    };
    const signature = signErasureReport(report, verified.signingKey);
    await client.query(
      `update ${schema}.tenants set slug = $2, name = 'Deleted tenant', status = 'deleted',
              status_reason = null, updated_at = now()
        where id = $1`,
      [tenantId, slug],
    );
    await client.query(`select ${schema}.emit_outbox_event($1, 'tenant.deleted', $2::jsonb)`, [
      tenantId,
      JSON.stringify({
        slug: stored.slug,
        status: 'deleted',
        previousStatus: stored.previousStatus,
        erasure: report,
        signature,
      }),
    ]);
    await client.query(
      `update ${schema}.tenant_erasures
          set step = 'finished', finished_at = now(), report = $2::jsonb, signature = $3
        where tenant_id = $1`,
      [tenantId, JSON.stringify(report), signature],
    );
    return { report, signature, alreadyFinished: false };
  });
}
