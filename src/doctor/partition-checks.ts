import type { DoctorContext } from './checks.ts';
import type { DoctorFinding } from './doctor.ts';

interface PartitionedRow {
  readonly name: string;
  readonly root: string;
  readonly strategy: string;
  readonly key: string;
  readonly by_tenant: boolean;
  readonly bounds: string[] | null;
}

/**
 * hash_partitions_incomplete: a HASH-partitioned relation whose partitions leave remainders
 * uncovered, so inserts for the tenants hashing there fail.
 *
 * @example
 * ```ts
 * const findings = await checkPartitionLayout(context);
 * ```
 */
export async function checkPartitionLayout(context: DoctorContext): Promise<DoctorFinding[]> {
  const roots = new Map(context.tenantTables.map((table) => [table.oid, table.name]));
  for (const partition of context.partitions) roots.set(partition.oid, partition.root);
  if (roots.size === 0) return [];
  const oids = [...roots.keys()];
  const result = await context.db.query<Omit<PartitionedRow, 'root'> & { oid: number }>(
    `select c.oid, format('%I.%I', n.nspname, c.relname) as name, p.partstrat as strategy,
            pg_get_partkeydef(c.oid) as key,
            exists (
              select 1 from unnest(p.partattrs::int2[]) as k(attnum)
                join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum
               where a.attname = 'tenant_id'
            ) as by_tenant,
            (select array_agg(pg_get_expr(child.relpartbound, child.oid))
               from pg_inherits i join pg_class child on child.oid = i.inhrelid
              where i.inhparent = c.oid) as bounds
       from pg_partitioned_table p
       join pg_class c on c.oid = p.partrelid
       join pg_namespace n on n.oid = c.relnamespace
      where p.partrelid = any($1::oid[])
      order by 2`,
    [oids],
  );
  const findings: DoctorFinding[] = [];
  for (const row of result.rows) {
    const root = roots.get(row.oid) ?? row.name;
    if (row.strategy === 'h') {
      const missing = missingRemainders(row.bounds ?? []);
      if (missing.modulus > 0 && missing.remainders.length > 0) {
        const base = row.name.replace(/"$/, '');
        const quoted = row.name.endsWith('"');
        const create = missing.remainders.map(
          (remainder) =>
            `create table ${base}_gap_${remainder}${quoted ? '"' : ''} partition of ${row.name} for values with (modulus ${missing.modulus}, remainder ${remainder});`,
        );
        findings.push({
          kind: 'hash_partitions_incomplete',
          severity: 'error',
          object: row.name,
          message: `The hash partitions of ${row.name} leave ${missing.remainders.length} of ${missing.modulus} remainders without a partition (${missing.remainders.join(', ')}): inserting a row for a tenant whose tenant_id hashes there fails with "no partition of relation found for row".`,
          fix: [
            ...create,
            `select ${context.sql.tenantrySchema}.enable_tenant_isolation('${root.replaceAll("'", "''")}');`,
          ].join('\n'),
        });
      }
    }
  }
  return findings;
}

/** The remainders, at the largest modulus, that no `FOR VALUES WITH (...)` bound covers. */
function missingRemainders(bounds: readonly string[]): { modulus: number; remainders: number[] } {
  const parsed = bounds.flatMap((bound) => {
    const match = /modulus (\d+), remainder (\d+)/.exec(bound);
    return match === null ? [] : [{ modulus: Number(match[1]), remainder: Number(match[2]) }];
  });
  const modulus = parsed.reduce((largest, bound) => Math.max(largest, bound.modulus), 0);
  const remainders: number[] = [];
  for (let remainder = 0; remainder < modulus; remainder++) {
    if (!parsed.some((bound) => remainder % bound.modulus === bound.remainder)) {
      remainders.push(remainder);
    }
  }
  return { modulus, remainders };
}
