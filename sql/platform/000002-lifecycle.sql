-- Tenantry platform operations, part 2: the tenant lifecycle.
-- - tenants.status_reason: why an operator suspended a tenant (cleared on resume), carried in
--   the tenant.suspended event;
-- - tenant_erasures: the journal of hard deletes. One row per tenant: written when the erasure
--   starts (in the transaction that marks the tenant deleted), updated as each step commits, and
--   finished with the signed report in the transaction that emits the final tenant.deleted. A
--   crashed erasure resumes from it; a finished one returns its report again.
-- - the lifecycle trigger (000001) learns both: a tenant marked deleted by an erasure emits no
--   event then, because the erasure emits the one tenant.deleted itself, at the end, with its
--   report; and tenant.suspended carries the reason.

alter table :"tenantry_schema".tenants
  add column status_reason text check (length(status_reason) between 1 and 500);

create table :"tenantry_schema".tenant_erasures (
  -- No foreign key to the catalog: the journal must outlive whatever an operator does to it.
  tenant_id uuid primary key,
  started_at timestamptz not null default now(),
  -- The last step that committed: started, jobs, objects, rows, outbox, verified, finished.
  step text not null default 'started'
    check (step in ('started', 'jobs', 'objects', 'rows', 'outbox', 'verified', 'finished')),
  -- Counts so far (rows before and deleted per table, objects, jobs, outbox events), so that a
  -- resumed erasure reports what every run removed, not only the last one.
  progress jsonb not null default '{}' check (jsonb_typeof(progress) = 'object'),
  finished_at timestamptz,
  report jsonb check (jsonb_typeof(report) = 'object'),
  -- HMAC-SHA256 of the report's canonical JSON (sorted keys, no whitespace), hex.
  signature text check (signature ~ '^[0-9a-f]{64}$'),
  check ((finished_at is null) = (report is null) and (report is null) = (signature is null)),
  check ((step = 'finished') = (finished_at is not null))
);
-- A platform table: the tenant_id column is the subject of the erasure, not an owning tenant,
-- so it is not isolated (and not one of the tenant's tables the erasure deletes from).
revoke all on :"tenantry_schema".tenant_erasures from public, :"app_role";
grant select on :"tenantry_schema".tenant_erasures to :"analytics_role";

create or replace function :"tenantry_schema".emit_tenant_lifecycle_event() returns trigger
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
    if new.status = 'deleted' and exists (
      select 1 from :"tenantry_schema".tenant_erasures e where e.tenant_id = new.id
    ) then
      v_type := null;
    end if;
  end if;
  if v_type is not null then
    perform :"tenantry_schema".emit_outbox_event(new.id, v_type, jsonb_build_object(
      'slug', new.slug, 'name', new.name, 'plan', new.plan, 'status', new.status,
      'previousStatus', case when tg_op = 'UPDATE' then old.status end,
      'reason', case when v_type = 'tenant.suspended' then new.status_reason end));
  end if;
  return null;
end
$fn$;
