-- Tenantry platform operations, part 6: tenants placed in a dedicated database.
--
-- A tenant placed in a dedicated database (on this server or another) keeps its rows in the
-- tenant tables of that database's `public` schema. The catalog names the connection the
-- application reaches it through (`connection_name`, configured in code or the environment,
-- never stored here: no URL, no password) and the database's name, for operators. A placement
-- row holds either a schema or a connection, never both; tenants.placement says which, and the
-- deferred constraint trigger of part 4 keeps the two in agreement.

alter table :"tenantry_schema".tenant_placements
  alter column schema_name drop not null,
  add column connection_name text
    check (connection_name ~ '^[a-z][a-z0-9_-]{0,62}$'),
  add column database_name text
    check (length(database_name) between 1 and 63),
  add constraint tenant_placements_target_check check (
    (schema_name is not null and connection_name is null and database_name is null)
    or (schema_name is null and connection_name is not null and database_name is not null)
  );

create index tenant_placements_connection_idx
  on :"tenantry_schema".tenant_placements (connection_name)
  where connection_name is not null;

-- The migration files whose tenant statements a dedicated database has run, per connection.
create table :"tenantry_schema".database_placement_migrations (
  connection_name text not null,
  database_name text not null,
  source text not null,
  version integer not null,
  name text not null,
  checksum text not null,
  applied_at timestamptz not null default now(),
  primary key (connection_name, database_name, source, version)
);

revoke all on :"tenantry_schema".database_placement_migrations from public;
grant select on :"tenantry_schema".database_placement_migrations to :"analytics_role";

create or replace function :"tenantry_schema".check_tenant_placement() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_tenant uuid;
  v_placement text;
  v_schema text;
  v_connection text;
  v_found boolean;
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
  select p.schema_name, p.connection_name, true into v_schema, v_connection, v_found
    from :"tenantry_schema".tenant_placements p where p.tenant_id = v_tenant;
  if (v_placement = 'schema') <> (v_schema is not null)
     or (v_placement = 'database') <> (v_connection is not null)
     or (v_placement = 'pool' and v_found) then
    raise exception 'tenant % has placement % but its placement row names %', v_tenant, v_placement,
      case when v_found is null then 'nothing'
           when v_schema is not null then 'schema ' || v_schema
           else 'connection ' || v_connection end
      using errcode = '23514',
        hint = 'Place tenants with placeTenantInSchema(), placeTenantInDatabase() or "tenantry placement set".';
  end if;
  return null;
end
$fn$;
revoke all on function :"tenantry_schema".check_tenant_placement() from public;
