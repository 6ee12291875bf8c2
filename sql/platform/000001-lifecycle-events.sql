-- Tenantry platform operations, part 1: tenant lifecycle events. Every change of a tenant's
-- existence or status, by whatever path (create_tenant(), the CLI, the admin API, psql as the
-- owner), writes its event into the outbox in the same transaction:
--   insert -> tenant.created; status active -> suspended: tenant.suspended;
--   suspended -> active: tenant.resumed; -> deleted: tenant.deleted.
-- (tenant.deleted for a hard delete is emitted by the erasure itself, with its report.)

create function :"tenantry_schema".emit_tenant_lifecycle_event() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_type text;
begin
  if tg_op = 'INSERT' then
    v_type := 'tenant.created';
  elsif new.status is distinct from old.status then
    v_type := case
      when new.status = 'suspended' then 'tenant.suspended'
      when new.status = 'active' and old.status = 'suspended' then 'tenant.resumed'
      when new.status = 'deleted' then 'tenant.deleted'
    end;
  end if;
  if v_type is not null then
    perform :"tenantry_schema".emit_outbox_event(new.id, v_type, jsonb_build_object(
      'slug', new.slug, 'name', new.name, 'plan', new.plan, 'status', new.status,
      'previousStatus', case when tg_op = 'UPDATE' then old.status end));
  end if;
  return null;
end
$fn$;
revoke all on function :"tenantry_schema".emit_tenant_lifecycle_event() from public;

-- SECURITY DEFINER is not needed: the trigger runs in the inserting transaction, and
-- emit_outbox_event() is owned by the owner, but the trigger function itself runs as the role
-- whose statement fired it. create_tenant() (SECURITY DEFINER) inserts as the owner; the owner
-- and superusers update statuses. The app role cannot insert or update tenants directly.
create trigger tenants_lifecycle_event
  after insert or update of status on :"tenantry_schema".tenants
  for each row execute function :"tenantry_schema".emit_tenant_lifecycle_event();
