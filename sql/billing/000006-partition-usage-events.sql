-- The usage ledger, partitioned by tenant: LIST (tenant_id) with a DEFAULT partition that is
-- HASH (tenant_id) into N partitions, so that a large tenant can later be given its own LIST
-- partition (`tenantry partitions dedicate usage_events <tenant>`). See
-- docs/guides/partitioning.md.
--
--   usage_events                   LIST (tenant_id)
--     usage_events_t_<12 hex>      FOR VALUES IN (<tenant>), made by the dedicate command
--     usage_events_hashed          DEFAULT, HASH (tenant_id)
--       usage_events_h00 .. h<N-1> FOR VALUES WITH (MODULUS N, REMAINDER i)
--
-- N comes from the setting tenantry.partition_count when this migration runs (default 16, a
-- power of two from 1 to 1024). Both keys contain tenant_id, the partition key, so the ledger's
-- `on conflict (tenant_id, idempotency_key)` (record_usage, meter_rows) works unchanged.

do $do$
declare
  v_schema text := :'tenantry_schema';
  v_setting text := coalesce(nullif(current_setting('tenantry.partition_count', true), ''), '16');
  v_count integer;
  v_width integer;
begin
  if v_setting !~ '^[0-9]{1,4}$' then
    raise exception 'tenantry.partition_count must be a power of two from 1 to 1024, got %', v_setting;
  end if;
  v_count := v_setting::integer;
  if v_count < 1 or v_count > 1024 or (v_count & (v_count - 1)) <> 0 then
    raise exception 'tenantry.partition_count must be a power of two from 1 to 1024, got %', v_count
      using hint = 'A power of two lets one hash partition be split in two later without a rebuild.';
  end if;
  v_width := greatest(2, length((v_count - 1)::text));

  execute format(
    'create table %1$I.usage_events_partitioned (
       like %1$I.usage_events including defaults including constraints including generated
         including storage including comments including statistics
     ) partition by list (tenant_id)', v_schema);
  execute format(
    'create table %1$I.usage_events_hashed partition of %1$I.usage_events_partitioned default
       partition by hash (tenant_id)', v_schema);
  for i in 0 .. v_count - 1 loop
    execute format(
      'create table %1$I.%2$I partition of %1$I.usage_events_hashed for values with (modulus %3$s, remainder %4$s)',
      v_schema, 'usage_events_h' || lpad(i::text, v_width, '0'), v_count, i);
  end loop;
  execute format('insert into %1$I.usage_events_partitioned select * from %1$I.usage_events', v_schema);
  execute format('drop table %1$I.usage_events', v_schema);
  execute format('alter table %1$I.usage_events_partitioned rename to usage_events', v_schema);
end
$do$;

alter table :"tenantry_schema".usage_events
  add constraint usage_events_pkey primary key (tenant_id, id),
  add constraint usage_events_tenant_id_idempotency_key_key unique (tenant_id, idempotency_key),
  add constraint usage_events_metric_fkey foreign key (metric)
    references :"tenantry_schema".metrics (name) on update cascade;
create index usage_events_period_idx
  on :"tenantry_schema".usage_events (tenant_id, metric, period_start);

-- A row trigger on a partitioned table is cloned onto every partition, present and future.
create trigger usage_events_append_only before update on :"tenantry_schema".usage_events
  for each row execute function :"tenantry_schema".refuse_usage_event_update();

select :"tenantry_schema".enable_tenant_isolation(:'tenantry_schema' || '.usage_events');
revoke insert, update, delete on :"tenantry_schema".usage_events from :"app_role";

analyze :"tenantry_schema".usage_events;
