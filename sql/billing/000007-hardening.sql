-- Hardening from the adversarial review (test/billing-attacks.test.ts):
-- - consume_quota() refuses a metric that a table counts from its rows (attach_quota): a manual
--   release would part the counter from the rows and lift the limit for good; a manual
--   consume would count rows twice.
-- - hit_rate_limit() refuses a non-finite clock, interval or window (NaN sorts above Infinity),
--   which would otherwise store a time that refuses the key for ever.
-- - attach_quota() names its triggers within PostgreSQL's 63-byte identifiers.

create or replace function :"tenantry_schema".consume_quota(
  p_metric text, p_quantity bigint, p_raise boolean default true)
  returns table (allowed boolean, limit_value bigint, used bigint)
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_tenant uuid := :"tenantry_schema".require_context_tenant();
begin
  if :"tenantry_schema".metric_kind(p_metric) <> 'count' then
    raise exception 'metric % is not a count metric; record period usage with record_usage()', p_metric
      using errcode = '22023', hint = 'tenantry:metric_kind';
  end if;
  -- A metric counted from rows follows its rows alone: consuming or releasing it by hand would
  -- part the counter from the rows (a release lifts the limit for good).
  if exists (select 1 from pg_catalog.pg_trigger t
              where t.tgfoid = (:'tenantry_schema' || '.meter_rows')::regproc
                and pg_catalog.split_part(pg_catalog.encode(t.tgargs, 'escape'), '\000', 1) = p_metric) then
    raise exception 'metric % is counted from table rows; write or delete the rows instead', p_metric
      using errcode = '22023', hint = 'tenantry:metric_kind';
  end if;
  if p_quantity is null then
    raise exception 'quantity is required' using errcode = '22023';
  end if;
  return query select * from :"tenantry_schema".apply_usage(
    v_tenant, p_metric, '-infinity'::timestamptz, p_quantity,
    case when coalesce(p_raise, true) then 'raise' else 'try' end);
end
$fn$;

create or replace function :"tenantry_schema".hit_rate_limit(
  p_key text,
  p_now double precision,
  p_interval_ms double precision,
  p_window_ms double precision)
  returns table (tat double precision, paid_back_at double precision)
  language sql
  security definer
  set search_path = pg_catalog, pg_temp
  as $fn$
  with previous as (
    select :"tenantry_schema".rate_limit_paid_back_at(r.tat, r.interval_ms, p_now, p_interval_ms, p_window_ms) as paid_back_at
      from :"tenantry_schema".rate_limits r where r.key = p_key
  ), hit as (
    insert into :"tenantry_schema".rate_limits as r (key, tat, interval_ms)
      select p_key, p_now + p_interval_ms, p_interval_ms
       -- NaN sorts above Infinity in PostgreSQL: `< 'Infinity'` refuses both.
       where p_now > '-Infinity'::float8 and p_now < 'Infinity'::float8
         and p_window_ms > 0 and p_window_ms < 'Infinity'::float8
         and p_interval_ms > 0 and p_interval_ms <= p_window_ms + 0.01
    on conflict (key) do update
      set tat = :"tenantry_schema".rate_limit_paid_back_at(r.tat, r.interval_ms, p_now, p_interval_ms, p_window_ms) + p_interval_ms,
          interval_ms = p_interval_ms
      where :"tenantry_schema".rate_limit_paid_back_at(r.tat, r.interval_ms, p_now, p_interval_ms, p_window_ms) + p_interval_ms - p_now <= p_window_ms + 0.01
    returning r.tat
  )
  select (select h.tat from hit h), coalesce((select p.paid_back_at from previous p), p_now)
$fn$;

create or replace function :"tenantry_schema".attach_quota(
  p_table regclass,
  p_metric text,
  p_amount text default '1',
  p_condition text default 'true',
  p_key text default null)
  returns void
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_kind text := :"tenantry_schema".metric_kind(p_metric);
  -- Identifiers stop at 63 bytes: a long metric name is shortened and made unique by a hash.
  v_name text := 'tq_' || left(p_metric, 44) || '_' || left(md5(p_metric), 8);
  v_legacy text := 'tenantry_quota_' || p_metric;
  v_function text := format('%I.meter_rows', :'tenantry_schema');
begin
  if v_kind = 'rate' then
    raise exception 'metric % is a rate; it is not counted in rows', p_metric using errcode = '22023';
  end if;
  if v_kind = 'period' and p_key is null then
    raise exception 'a period metric needs a key expression naming each row''s usage event'
      using errcode = '22023';
  end if;
  -- Triggers attached by 000001 under the former names are replaced too.
  execute format('drop trigger if exists %I on %s', v_legacy || '_insert', p_table);
  execute format('drop trigger if exists %I on %s', v_legacy || '_update', p_table);
  execute format('drop trigger if exists %I on %s', v_legacy || '_delete', p_table);
  execute format('drop trigger if exists %I on %s', v_name || '_insert', p_table);
  execute format('drop trigger if exists %I on %s', v_name || '_update', p_table);
  execute format('drop trigger if exists %I on %s', v_name || '_delete', p_table);
  execute format(
    'create trigger %I after insert on %s referencing new table as tenantry_new_rows for each statement execute function %s(%L, %L, %L, %L)',
    v_name || '_insert', p_table, v_function, p_metric, p_amount, p_condition, coalesce(p_key, ''));
  if v_kind = 'count' then
    execute format(
      'create trigger %I after delete on %s referencing old table as tenantry_old_rows for each statement execute function %s(%L, %L, %L, %L)',
      v_name || '_delete', p_table, v_function, p_metric, p_amount, p_condition, '');
    -- A row's amount or condition can change only if they read a column: '1' over 'true' cannot.
    if p_amount <> '1' or p_condition <> 'true' then
      execute format(
        'create trigger %I after update on %s referencing old table as tenantry_old_rows new table as tenantry_new_rows for each statement execute function %s(%L, %L, %L, %L)',
        v_name || '_update', p_table, v_function, p_metric, p_amount, p_condition, '');
    end if;
    execute format(
      $q$insert into %1$I.usage_counters (tenant_id, metric, period_start, used)
           select n.tenant_id, %2$L, '-infinity', coalesce(sum((%3$s)::bigint) filter (where %4$s), 0)
             from %5$s n group by n.tenant_id
         on conflict (tenant_id, metric, period_start) do update set used = excluded.used, updated_at = now()$q$,
      :'tenantry_schema', p_metric, p_amount, p_condition, p_table);
  end if;
end
$fn$;
