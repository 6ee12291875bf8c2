-- Tenantry platform operations, part 4: tenants placed in a dedicated schema of the pool database.
--
-- A tenant's placement is `pool` (its rows in the shared tables of `public`) or `schema` (its
-- own schema holding the same tenant tables, with the same RLS policies kept as a second wall).
-- tenants.placement says which; tenant_placements names the schema. Both are written together,
-- by the owner, in the transaction that provisions the schema (placeTenantInSchema()).
--
-- The app role reads a tenant's schema name to route its units of work (names are not secret);
-- every change is announced on channel `tenantry_placements` with the tenant id, so routers drop
-- their cached entry at once.

create table :"tenantry_schema".tenant_placements (
  tenant_id uuid primary key references :"tenantry_schema".tenants (id) on delete cascade,
  schema_name text not null unique
    check (schema_name ~ '^[a-z_][a-z0-9_]{0,62}$'
      and schema_name !~ '^pg_'
      and schema_name not in ('public', 'information_schema')),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

revoke all on :"tenantry_schema".tenant_placements from public;
grant select on :"tenantry_schema".tenant_placements to :"app_role", :"analytics_role";

-- The migration files applied to each dedicated schema, tracked per schema: a file is applied to
-- a schema once the pool has applied it (same source, version and checksum).
create table :"tenantry_schema".placement_migrations (
  schema_name text not null
    references :"tenantry_schema".tenant_placements (schema_name) on update cascade on delete cascade,
  source text not null,
  version integer not null,
  name text not null,
  checksum text not null,
  applied_at timestamptz not null default now(),
  primary key (schema_name, source, version)
);

revoke all on :"tenantry_schema".placement_migrations from public;
grant select on :"tenantry_schema".placement_migrations to :"analytics_role";

create function :"tenantry_schema".notify_placement_change() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $fn$
begin
  if tg_op = 'DELETE' then
    perform pg_notify('tenantry_placements', old.tenant_id::text);
  else
    perform pg_notify('tenantry_placements', new.tenant_id::text);
    if tg_op = 'UPDATE' and old.tenant_id <> new.tenant_id then
      perform pg_notify('tenantry_placements', old.tenant_id::text);
    end if;
  end if;
  return null;
end
$fn$;
revoke all on function :"tenantry_schema".notify_placement_change() from public;

create trigger tenant_placements_notify
  after insert or update or delete on :"tenantry_schema".tenant_placements
  for each row execute function :"tenantry_schema".notify_placement_change();

-- A tenant whose placement changes without its row here (or the reverse) would be routed to the
-- wrong tables: the two must agree when the transaction commits.
create function :"tenantry_schema".check_tenant_placement() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_tenant uuid;
  v_placement text;
  v_schema text;
begin
  if tg_table_name = 'tenants' then
    v_tenant := new.id;
  elsif tg_op = 'DELETE' then
    v_tenant := old.tenant_id;
  else
    v_tenant := new.tenant_id;
  end if;
  select t.placement into v_placement from :"tenantry_schema".tenants t where t.id = v_tenant;
  if v_placement is null then
    return null;
  end if;
  select p.schema_name into v_schema
    from :"tenantry_schema".tenant_placements p where p.tenant_id = v_tenant;
  if (v_placement = 'schema') <> (v_schema is not null) then
    raise exception 'tenant % has placement % but % schema row', v_tenant, v_placement,
      case when v_schema is null then 'no' else 'a' end
      using errcode = '23514',
        hint = 'Place tenants with placeTenantInSchema() or "tenantry placement set".';
  end if;
  return null;
end
$fn$;
revoke all on function :"tenantry_schema".check_tenant_placement() from public;

create constraint trigger tenants_placement_consistent
  after insert or update of placement on :"tenantry_schema".tenants
  deferrable initially deferred
  for each row execute function :"tenantry_schema".check_tenant_placement();

create constraint trigger tenant_placements_consistent
  after insert or update or delete on :"tenantry_schema".tenant_placements
  deferrable initially deferred
  for each row execute function :"tenantry_schema".check_tenant_placement();
