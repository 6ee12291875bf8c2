-- Tenantry core: tenant context helpers, the tenant catalog and the tenant-table convention.
-- Variables (psql syntax): :"tenantry_schema", :"owner_role", :"app_role", :"analytics_role",
-- and their literal forms :'app_role', :'analytics_role'.

grant usage on schema :"tenantry_schema" to :"app_role", :"analytics_role";

-- STABLE, never IMMUTABLE: an IMMUTABLE helper is folded into cached plans and would serve one
-- tenant's rows to another. LANGUAGE sql so the planner inlines it and the policy uses indexes.
create function :"tenantry_schema".current_tenant_id() returns uuid
  language sql stable parallel safe
  as $$ select nullif(current_setting('tenantry.tenant_id', true), '')::uuid $$;

create function :"tenantry_schema".current_user_id() returns uuid
  language sql stable parallel safe
  as $$ select nullif(current_setting('tenantry.user_id', true), '')::uuid $$;

grant execute on function :"tenantry_schema".current_tenant_id() to :"app_role", :"analytics_role";
grant execute on function :"tenantry_schema".current_user_id() to :"app_role", :"analytics_role";

create table :"tenantry_schema".tenants (
  id uuid primary key default gen_random_uuid(),
  slug text not null unique
    check (slug ~ '^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$'),
  name text not null check (length(name) between 1 and 200),
  plan text not null default 'free',
  status text not null default 'active'
    check (status in ('active', 'suspended', 'moving', 'deleted')),
  placement text not null default 'pool'
    check (placement in ('pool', 'schema', 'database')),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

grant select on :"tenantry_schema".tenants to :"app_role", :"analytics_role";

-- Applies the tenant-table convention to a table created in a migration, or explains what is
-- missing: tenant_id uuid not null defaulting to the current tenant, a primary key leading with
-- tenant_id, foreign keys and unique constraints that include tenant_id, RLS enabled and
-- forced, the isolation policies, DML grants for the app role (none on partitions).
create function :"tenantry_schema".enable_tenant_isolation(target regclass) returns void
  language plpgsql
  set search_path = pg_catalog
  as $fn$
declare
  tenant_attnum smallint;
  tenant_type regtype;
  constraint_row record;
  part regclass;
  rel_kind "char";
  using_expr text := format('tenant_id = %I.current_tenant_id()', :'tenantry_schema');
begin
  select a.attnum, a.atttypid::regtype into tenant_attnum, tenant_type
    from pg_attribute a
    where a.attrelid = target and a.attname = 'tenant_id' and not a.attisdropped;
  if tenant_attnum is null then
    raise exception 'table % has no tenant_id column', target
      using hint = 'Add "tenant_id uuid not null" and make it the first primary key column.';
  end if;
  if tenant_type <> 'uuid'::regtype then
    raise exception 'tenant_id of % is %, not uuid', target, tenant_type;
  end if;

  select c.relkind into rel_kind from pg_class c where c.oid = target;
  if rel_kind not in ('r', 'p') then
    raise exception '% is not a table', target;
  end if;

  if not exists (
    select 1 from pg_constraint c
    where c.conrelid = target and c.contype = 'p' and c.conkey[1] = tenant_attnum
  ) then
    raise exception 'primary key of % must lead with tenant_id', target
      using hint = 'Declare "primary key (tenant_id, id)".';
  end if;

  for constraint_row in
    select c.conname, c.contype from pg_constraint c
    where c.conrelid = target and c.contype in ('u', 'x') and not (tenant_attnum = any (c.conkey))
  loop
    raise exception 'unique constraint % on % omits tenant_id', constraint_row.conname, target
      using hint = 'Include tenant_id first: one tenant could otherwise probe another''s values.';
  end loop;

  for constraint_row in
    select c.conname from pg_constraint c
    where c.contype = 'f'
      and (c.conrelid = target or c.confrelid = target)
      and exists (
        select 1 from pg_attribute ra
        where ra.attrelid = c.confrelid and ra.attname = 'tenant_id' and not ra.attisdropped
      )
      and not exists (
        select 1
        from unnest(c.conkey, c.confkey) as k(local_col, remote_col)
        join pg_attribute la on la.attrelid = c.conrelid and la.attnum = k.local_col
        join pg_attribute ra on ra.attrelid = c.confrelid and ra.attnum = k.remote_col
        where la.attname = 'tenant_id' and ra.attname = 'tenant_id'
      )
  loop
    raise exception 'foreign key % on % does not match tenant_id', constraint_row.conname, target
      using hint = 'Reference tenant tables with (tenant_id, parent_id) -> (tenant_id, id).';
  end loop;

  execute format('alter table %s alter column tenant_id set not null', target);
  execute format('alter table %s alter column tenant_id set default %I.current_tenant_id()',
    target, :'tenantry_schema');

  for part in
    select target
    union all
    select t.relid from pg_partition_tree(target) t where t.relid <> target
  loop
    execute format('alter table %s enable row level security', part);
    execute format('alter table %s force row level security', part);
    execute format('drop policy if exists tenantry_tenant_rows on %s', part);
    execute format('drop policy if exists tenantry_tenant_isolation on %s', part);
    -- The permissive policy lets rows through at all; the restrictive one is ANDed with every
    -- permissive policy, so a policy a user adds later can never widen access across tenants.
    execute format('create policy tenantry_tenant_rows on %s as permissive for all using (%s) with check (%s)',
      part, using_expr, using_expr);
    execute format('create policy tenantry_tenant_isolation on %s as restrictive for all using (%s) with check (%s)',
      part, using_expr, using_expr);
    execute format('revoke all on %s from public', part);
    execute format('revoke all on %s from %I', part, :'app_role');
    execute format('grant select on %s to %I', part, :'analytics_role');
  end loop;

  execute format('grant select, insert, update, delete on %s to %I', target, :'app_role');
end
$fn$;

-- Adds the composite foreign key (tenant_id, column) -> parent (tenant_id, id), so a row can
-- never reference another tenant's row, plus the index that serves it.
create function :"tenantry_schema".add_tenant_foreign_key(
  target regclass,
  column_name name,
  parent regclass,
  on_delete text default 'restrict'
) returns void
  language plpgsql
  set search_path = pg_catalog
  as $fn$
declare
  table_name name;
begin
  if lower(on_delete) not in ('restrict', 'cascade', 'no action') then
    raise exception 'on_delete must be restrict, cascade or no action, got %', on_delete;
  end if;
  select c.relname into table_name from pg_class c where c.oid = target;
  execute format(
    'alter table %s add constraint %I foreign key (tenant_id, %I) references %s (tenant_id, id) on delete %s',
    target, left(table_name || '_' || column_name || '_fkey', 63), column_name, parent, lower(on_delete));
  execute format('create index if not exists %I on %s (tenant_id, %I)',
    left(table_name || '_' || column_name || '_idx', 63), target, column_name);
end
$fn$;

revoke all on function :"tenantry_schema".enable_tenant_isolation(regclass) from public;
revoke all on function :"tenantry_schema".add_tenant_foreign_key(regclass, name, regclass, text) from public;
