-- Tenantry billing: plans and limits, atomic quota counters, the usage ledger, the outbox.
--
-- Every consumption goes through tenantry.consume_usage(), a guarded UPDATE of one counter row:
-- `used = used + n WHERE used + n <= limit`. Under READ COMMITTED a concurrent UPDATE of the same
-- row waits for the first to commit and re-checks the guard against the committed value, so racing
-- transactions can never take a counter past its limit, and a transaction that rolls back takes
-- its consumption with it. Tables attach their counting with tenantry.attach_quota(): statement
-- triggers keep the counter equal to the rows, so a code path that forgets the service layer
-- still cannot exceed a hard limit.

-- Metrics ------------------------------------------------------------------------------------

create table :"tenantry_schema".metrics (
  name text primary key check (name ~ '^[a-z][a-z0-9_]{0,62}$'),
  -- count: a current amount (rows, bytes), released when the rows go;
  -- period: a sum per billing period (usage events), never released;
  -- rate: enforced outside the counters (requests per minute, concurrent jobs).
  kind text not null check (kind in ('count', 'period', 'rate')),
  unit text not null default 'unit' check (length(unit) between 1 and 30),
  description text not null default '' check (length(description) <= 500)
);

insert into :"tenantry_schema".metrics (name, kind, unit, description) values
  ('seats', 'count', 'seat', 'Members of the tenant'),
  ('contacts', 'count', 'contact', 'Contacts stored'),
  ('storage_bytes', 'count', 'byte', 'Bytes of uploaded files'),
  ('messages', 'period', 'message', 'Outbound messages per billing period'),
  ('api_requests_per_minute', 'rate', 'request', 'API requests per minute'),
  ('concurrent_jobs', 'rate', 'job', 'Background jobs running at once');

-- Plans --------------------------------------------------------------------------------------

create table :"tenantry_schema".plans (
  id text primary key check (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
  name text not null check (length(name) between 1 and 200),
  created_at timestamptz not null default now()
);

-- A metric without a row here is unlimited on that plan; so is a row with a null limit.
create table :"tenantry_schema".plan_limits (
  plan_id text not null references :"tenantry_schema".plans (id) on update cascade on delete cascade,
  metric text not null references :"tenantry_schema".metrics (name) on update cascade,
  limit_value bigint check (limit_value >= 0),
  primary key (plan_id, metric)
);

insert into :"tenantry_schema".plans (id, name) values ('free', 'Free');
insert into :"tenantry_schema".plans (id, name)
  select distinct t.plan, t.plan from :"tenantry_schema".tenants t
  on conflict (id) do nothing;
alter table :"tenantry_schema".tenants
  add constraint tenants_plan_fkey foreign key (plan)
    references :"tenantry_schema".plans (id) on update cascade;
-- Billing periods start on this day of the month (clamped to the month's length), 00:00 UTC.
alter table :"tenantry_schema".tenants
  add column billing_anchor_day smallint not null default 1
    check (billing_anchor_day between 1 and 31);

grant select on :"tenantry_schema".metrics, :"tenantry_schema".plans, :"tenantry_schema".plan_limits
  to :"app_role", :"analytics_role";

-- Per-tenant overrides win over the plan; a null limit_value makes the metric unlimited.
create table :"tenantry_schema".tenant_limit_overrides (
  tenant_id uuid not null references :"tenantry_schema".tenants (id) on delete cascade,
  metric text not null references :"tenantry_schema".metrics (name) on update cascade,
  limit_value bigint check (limit_value >= 0),
  created_at timestamptz not null default now(),
  primary key (tenant_id, metric)
);
select :"tenantry_schema".enable_tenant_isolation(:'tenantry_schema' || '.tenant_limit_overrides');
revoke insert, update, delete on :"tenantry_schema".tenant_limit_overrides from :"app_role";

-- Billing periods ----------------------------------------------------------------------------

-- The anchor instant of the month starting at p_month (UTC): its p_anchor_day, clamped.
create function :"tenantry_schema".anchor_in_month(p_month timestamp, p_anchor_day integer)
  returns timestamp
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
  as $$
    select p_month + make_interval(days => least(p_anchor_day,
      extract(day from p_month + interval '1 month' - interval '1 day')::integer) - 1)
  $$;

-- Start of the billing period containing p_at for a tenant whose periods start on p_anchor_day.
create function :"tenantry_schema".billing_period_start(p_at timestamptz, p_anchor_day integer)
  returns timestamptz
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
  as $$
    select (case
      when (p_at at time zone 'UTC') >= :"tenantry_schema".anchor_in_month(
             date_trunc('month', p_at at time zone 'UTC'), p_anchor_day)
        then :"tenantry_schema".anchor_in_month(date_trunc('month', p_at at time zone 'UTC'), p_anchor_day)
      else :"tenantry_schema".anchor_in_month(
             date_trunc('month', p_at at time zone 'UTC') - interval '1 month', p_anchor_day)
    end) at time zone 'UTC'
  $$;

-- End (exclusive) of the billing period starting at p_start.
create function :"tenantry_schema".billing_period_end(p_start timestamptz, p_anchor_day integer)
  returns timestamptz
  language sql immutable parallel safe
  set search_path = pg_catalog, pg_temp
  as $$
    select :"tenantry_schema".anchor_in_month(
      date_trunc('month', p_start at time zone 'UTC') + interval '1 month', p_anchor_day)
      at time zone 'UTC'
  $$;

grant execute on function :"tenantry_schema".anchor_in_month(timestamp, integer),
  :"tenantry_schema".billing_period_start(timestamptz, integer),
  :"tenantry_schema".billing_period_end(timestamptz, integer)
  to :"app_role", :"analytics_role";

-- Counters and the usage ledger --------------------------------------------------------------

-- One row per tenant, metric and period: count metrics use period_start '-infinity'.
create table :"tenantry_schema".usage_counters (
  tenant_id uuid not null,
  metric text not null references :"tenantry_schema".metrics (name) on update cascade,
  period_start timestamptz not null,
  used bigint not null default 0 check (used >= 0),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, metric, period_start)
);
select :"tenantry_schema".enable_tenant_isolation(:'tenantry_schema' || '.usage_counters');
revoke insert, update, delete on :"tenantry_schema".usage_counters from :"app_role";

-- Append-only: the app role reads its tenant's events and records new ones only through
-- tenantry.record_usage(); nobody updates them (a trigger refuses it, the owner included).
create table :"tenantry_schema".usage_events (
  tenant_id uuid not null,
  id uuid not null default gen_random_uuid(),
  metric text not null references :"tenantry_schema".metrics (name) on update cascade,
  quantity bigint not null check (quantity > 0),
  occurred_at timestamptz not null,
  period_start timestamptz not null,
  idempotency_key text not null check (length(idempotency_key) between 1 and 200),
  properties jsonb not null default '{}'
    check (jsonb_typeof(properties) = 'object' and pg_column_size(properties) <= 4096),
  recorded_at timestamptz not null default now(),
  primary key (tenant_id, id),
  unique (tenant_id, idempotency_key)
);
select :"tenantry_schema".enable_tenant_isolation(:'tenantry_schema' || '.usage_events');
revoke insert, update, delete on :"tenantry_schema".usage_events from :"app_role";
create index usage_events_period_idx
  on :"tenantry_schema".usage_events (tenant_id, metric, period_start);

create function :"tenantry_schema".refuse_usage_event_update() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $fn$
begin
  raise exception 'usage events are append-only' using errcode = '42501';
end
$fn$;
revoke all on function :"tenantry_schema".refuse_usage_event_update() from public;
create trigger usage_events_append_only before update on :"tenantry_schema".usage_events
  for each row execute function :"tenantry_schema".refuse_usage_event_update();

-- Notices already sent, so that each fires once per tenant, metric, period and kind.
create table :"tenantry_schema".usage_notices (
  tenant_id uuid not null,
  metric text not null,
  period_start timestamptz not null,
  kind text not null check (kind in ('threshold_80', 'threshold_100', 'exceeded', 'period_closed')),
  created_at timestamptz not null default now(),
  primary key (tenant_id, metric, period_start, kind)
);
select :"tenantry_schema".enable_tenant_isolation(:'tenantry_schema' || '.usage_notices');
revoke insert, update, delete on :"tenantry_schema".usage_notices from :"app_role";

-- The outbox -----------------------------------------------------------------------------------

-- Events for the billing system and other subscribers, written in the transaction of their cause
-- and delivered (at least once, by id) by the webhook dispatcher. Platform table: no app grants.
create table :"tenantry_schema".outbox_events (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid,
  type text not null check (type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$' and length(type) <= 100),
  data jsonb not null check (jsonb_typeof(data) = 'object'),
  created_at timestamptz not null default now()
);
create index outbox_events_tenant_idx on :"tenantry_schema".outbox_events (tenant_id, created_at);
revoke all on :"tenantry_schema".outbox_events from public;
grant select on :"tenantry_schema".outbox_events to :"analytics_role";

-- Owner-only: writes one event.
create function :"tenantry_schema".emit_outbox_event(p_tenant uuid, p_type text, p_data jsonb)
  returns uuid
  language sql
  set search_path = pg_catalog, pg_temp
  as $$
    insert into :"tenantry_schema".outbox_events (tenant_id, type, data)
      values (p_tenant, p_type, coalesce(p_data, '{}'::jsonb))
      returning id
  $$;
revoke all on function :"tenantry_schema".emit_outbox_event(uuid, text, jsonb) from public;

-- The app's own events for the current tenant; Tenantry's event families are reserved.
create function :"tenantry_schema".emit_event(p_type text, p_data jsonb)
  returns uuid
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_tenant uuid := :"tenantry_schema".current_tenant_id();
begin
  if v_tenant is null then
    raise exception 'an event can only be emitted inside a tenant context'
      using errcode = '42501', hint = 'tenantry:context_missing';
  end if;
  if p_type is null or split_part(p_type, '.', 1) in ('usage', 'quota', 'period', 'tenant', 'tenantry') then
    raise exception 'event type % is reserved', p_type using errcode = '22023';
  end if;
  if p_data is null or jsonb_typeof(p_data) <> 'object' then
    raise exception 'event data is a JSON object' using errcode = '22023';
  end if;
  return :"tenantry_schema".emit_outbox_event(v_tenant, p_type, p_data);
end
$fn$;
revoke all on function :"tenantry_schema".emit_event(text, jsonb) from public;
grant execute on function :"tenantry_schema".emit_event(text, jsonb) to :"app_role";

-- Limits and consumption ---------------------------------------------------------------------

-- The tenant's limit for a metric: its override if any, else its plan's; null is unlimited. A
-- session without BYPASSRLS (the app role) only learns the limits of its context's tenant.
create function :"tenantry_schema".effective_limit(p_tenant uuid, p_metric text)
  returns bigint
  language plpgsql stable
  security definer
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_limit bigint;
begin
  if p_tenant is distinct from :"tenantry_schema".current_tenant_id()
     and not exists (select 1 from pg_catalog.pg_roles r
                      where r.rolname = session_user and (r.rolbypassrls or r.rolsuper)) then
    raise exception 'limits of another tenant are not visible' using errcode = '42501';
  end if;
  select case when o.tenant_id is not null then o.limit_value else pl.limit_value end
    into v_limit
    from :"tenantry_schema".tenants t
    left join :"tenantry_schema".tenant_limit_overrides o
      on o.tenant_id = t.id and o.metric = p_metric
    left join :"tenantry_schema".plan_limits pl
      on pl.plan_id = t.plan and pl.metric = p_metric
   where t.id = p_tenant;
  return v_limit;
end
$fn$;
revoke all on function :"tenantry_schema".effective_limit(uuid, text) from public;
grant execute on function :"tenantry_schema".effective_limit(uuid, text) to :"app_role";

-- The billing period of a tenant at an instant.
create function :"tenantry_schema".tenant_period_start(p_tenant uuid, p_at timestamptz)
  returns timestamptz
  language sql stable
  set search_path = pg_catalog, pg_temp
  as $$
    select :"tenantry_schema".billing_period_start(p_at, t.billing_anchor_day)
      from :"tenantry_schema".tenants t where t.id = p_tenant
  $$;
revoke all on function :"tenantry_schema".tenant_period_start(uuid, timestamptz) from public;

-- Owner-only core: adds p_quantity (negative releases) to a counter under its limit. Returns
-- whether it was applied, the limit and the counter afterwards (before, when refused). p_mode:
-- 'raise' refuses by raising SQLSTATE TQ001 with a JSON detail (the statement fails), 'try'
-- refuses by returning allowed = false, 'force' applies it even over the limit.
-- Crossing 80 % or 100 % of a limit emits usage.threshold_reached once per billing period.
create function :"tenantry_schema".apply_usage(
  p_tenant uuid, p_metric text, p_counter_period timestamptz, p_quantity bigint, p_mode text)
  returns table (allowed boolean, limit_value bigint, used bigint)
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_limit bigint := :"tenantry_schema".effective_limit(p_tenant, p_metric);
  v_used bigint;
  v_billing_period timestamptz;
  v_threshold integer;
  v_mark numeric;
begin
  insert into :"tenantry_schema".usage_counters (tenant_id, metric, period_start)
    values (p_tenant, p_metric, p_counter_period)
    on conflict do nothing;
  if p_quantity <= 0 then
    update :"tenantry_schema".usage_counters c
       set used = greatest(c.used + p_quantity, 0), updated_at = now()
     where c.tenant_id = p_tenant and c.metric = p_metric and c.period_start = p_counter_period
     returning c.used into v_used;
    return query select true, v_limit, v_used;
    return;
  end if;
  update :"tenantry_schema".usage_counters c
     set used = c.used + p_quantity, updated_at = now()
   where c.tenant_id = p_tenant and c.metric = p_metric and c.period_start = p_counter_period
     and (v_limit is null or p_mode = 'force' or c.used + p_quantity <= v_limit)
   returning c.used into v_used;
  if not found then
    select c.used into v_used from :"tenantry_schema".usage_counters c
     where c.tenant_id = p_tenant and c.metric = p_metric and c.period_start = p_counter_period;
    if p_mode = 'raise' then
      raise exception 'quota exceeded for %', p_metric
        using errcode = 'TQ001',
              detail = json_build_object('metric', p_metric, 'limit', v_limit, 'used', v_used,
                                         'requested', p_quantity)::text;
    end if;
    return query select false, v_limit, v_used;
    return;
  end if;
  if v_limit is not null and v_limit > 0 then
    v_billing_period := :"tenantry_schema".tenant_period_start(p_tenant, now());
    foreach v_threshold in array array[80, 100] loop
      v_mark := ceil(v_limit * v_threshold / 100.0);
      if v_used - p_quantity < v_mark and v_used >= v_mark then
        insert into :"tenantry_schema".usage_notices (tenant_id, metric, period_start, kind)
          values (p_tenant, p_metric, v_billing_period, 'threshold_' || v_threshold)
          on conflict do nothing;
        if found then
          perform :"tenantry_schema".emit_outbox_event(p_tenant, 'usage.threshold_reached',
            jsonb_build_object('metric', p_metric, 'threshold', v_threshold, 'limit', v_limit,
                               'used', v_used, 'periodStart', v_billing_period));
        end if;
      end if;
    end loop;
  end if;
  return query select true, v_limit, v_used;
end
$fn$;
revoke all on function :"tenantry_schema".apply_usage(uuid, text, timestamptz, bigint, text) from public;

create function :"tenantry_schema".metric_kind(p_metric text) returns text
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_kind text;
begin
  select m.kind into v_kind from :"tenantry_schema".metrics m where m.name = p_metric;
  if v_kind is null then
    raise exception 'unknown metric %', p_metric using errcode = '22023', hint = 'tenantry:metric_unknown';
  end if;
  return v_kind;
end
$fn$;
revoke all on function :"tenantry_schema".metric_kind(text) from public;

create function :"tenantry_schema".require_context_tenant() returns uuid
  language plpgsql stable
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_tenant uuid := :"tenantry_schema".current_tenant_id();
begin
  if v_tenant is null then
    raise exception 'quotas and usage need a tenant context'
      using errcode = '42501', hint = 'tenantry:context_missing';
  end if;
  return v_tenant;
end
$fn$;
revoke all on function :"tenantry_schema".require_context_tenant() from public;

-- Consumes (or, with a negative quantity, releases) a count metric for the current tenant. With
-- p_raise (the default) going over the limit raises TQ001; without, it reports allowed = false.
create function :"tenantry_schema".consume_quota(
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
  if p_quantity is null then
    raise exception 'quantity is required' using errcode = '22023';
  end if;
  return query select * from :"tenantry_schema".apply_usage(
    v_tenant, p_metric, '-infinity'::timestamptz, p_quantity,
    case when coalesce(p_raise, true) then 'raise' else 'try' end);
end
$fn$;
revoke all on function :"tenantry_schema".consume_quota(text, bigint, boolean) from public;
grant execute on function :"tenantry_schema".consume_quota(text, bigint, boolean) to :"app_role";

-- Records a usage event of a period metric for the current tenant, at most once per idempotency
-- key, and consumes it from the period's counter (refused over the limit with p_enforce). A
-- repeated key records nothing and consumes nothing (recorded = false). Events belong to the
-- period of occurred_at, which must lie in the current period (a closed one is invoiced).
create function :"tenantry_schema".record_usage(
  p_metric text,
  p_quantity bigint,
  p_idempotency_key text,
  p_occurred_at timestamptz default null,
  p_properties jsonb default null,
  p_enforce boolean default true)
  returns table (recorded boolean, allowed boolean, limit_value bigint, used bigint)
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_tenant uuid := :"tenantry_schema".require_context_tenant();
  v_at timestamptz := coalesce(p_occurred_at, now());
  v_period timestamptz;
  v_current timestamptz;
  v_id uuid;
  r record;
begin
  if :"tenantry_schema".metric_kind(p_metric) <> 'period' then
    raise exception 'metric % is not a period metric', p_metric
      using errcode = '22023', hint = 'tenantry:metric_kind';
  end if;
  if p_quantity is null or p_quantity <= 0 then
    raise exception 'quantity must be a positive integer' using errcode = '22023';
  end if;
  v_current := :"tenantry_schema".tenant_period_start(v_tenant, now());
  v_period := :"tenantry_schema".tenant_period_start(v_tenant, v_at);
  if v_at > now() + interval '5 minutes' or v_period < v_current then
    raise exception 'occurred_at must lie in the current billing period'
      using errcode = '22023', hint = 'tenantry:usage_period';
  end if;
  insert into :"tenantry_schema".usage_events
      (tenant_id, metric, quantity, occurred_at, period_start, idempotency_key, properties)
    values (v_tenant, p_metric, p_quantity, v_at, v_period, p_idempotency_key,
            coalesce(p_properties, '{}'::jsonb))
    on conflict (tenant_id, idempotency_key) do nothing
    returning id into v_id;
  if v_id is null then
    select c.used into r from :"tenantry_schema".usage_counters c
     where c.tenant_id = v_tenant and c.metric = p_metric and c.period_start = v_period;
    return query select false, true, :"tenantry_schema".effective_limit(v_tenant, p_metric),
      coalesce(r.used, 0::bigint);
    return;
  end if;
  -- Enforced: over the limit raises and the event goes with the failed statement. Not enforced:
  -- the event happened, so it is counted even past the limit (allowed reports the overage).
  select * into r from :"tenantry_schema".apply_usage(
    v_tenant, p_metric, v_period, p_quantity,
    case when coalesce(p_enforce, true) then 'raise' else 'force' end);
  return query select true, (r.limit_value is null or r.used <= r.limit_value), r.limit_value, r.used;
end
$fn$;
revoke all on function :"tenantry_schema".record_usage(text, bigint, text, timestamptz, jsonb, boolean)
  from public;
grant execute on function :"tenantry_schema".record_usage(text, bigint, text, timestamptz, jsonb, boolean)
  to :"app_role";

-- Entitlements of the current tenant for every metric: limit, used and remaining now.
create function :"tenantry_schema".entitlements()
  returns table (metric text, kind text, unit text, limit_value bigint, used bigint,
                 remaining bigint, period_start timestamptz, period_end timestamptz)
  language plpgsql stable
  security definer
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_tenant uuid := :"tenantry_schema".require_context_tenant();
  v_anchor integer;
  v_start timestamptz;
begin
  select t.billing_anchor_day into v_anchor from :"tenantry_schema".tenants t where t.id = v_tenant;
  v_start := :"tenantry_schema".billing_period_start(now(), v_anchor);
  return query
    select m.name, m.kind, m.unit, l.limit_value,
           case when m.kind = 'rate' then null else coalesce(c.used, 0::bigint) end,
           case when l.limit_value is null or m.kind = 'rate' then null
                else greatest(l.limit_value - coalesce(c.used, 0::bigint), 0::bigint) end,
           v_start, :"tenantry_schema".billing_period_end(v_start, v_anchor)
      from :"tenantry_schema".metrics m
      cross join lateral (select :"tenantry_schema".effective_limit(v_tenant, m.name) as limit_value) l
      left join :"tenantry_schema".usage_counters c
        on c.tenant_id = v_tenant and c.metric = m.name
       and c.period_start = case when m.kind = 'count' then '-infinity'::timestamptz else v_start end
     order by m.name;
end
$fn$;
revoke all on function :"tenantry_schema".entitlements() from public;
grant execute on function :"tenantry_schema".entitlements() to :"app_role";

-- Counting rows: tables attach a metric with tenantry.attach_quota() -------------------------

-- Statement trigger: per tenant, the change in sum(amount) over the rows matching the condition
-- (new rows minus old rows) is consumed (raising TQ001 over the limit) or released. For a period
-- metric, each new matching row also records a usage event keyed by the key expression, and only
-- rows whose event is new are consumed (deleting rows releases nothing). Arguments: metric,
-- amount expression, condition, key expression; all come from attach_quota(), never from a user.
create function :"tenantry_schema".meter_rows() returns trigger
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_metric text := tg_argv[0];
  v_amount text := tg_argv[1];
  v_condition text := tg_argv[2];
  v_key text := tg_argv[3];
  v_kind text := :"tenantry_schema".metric_kind(v_metric);
  v_sql text;
  r record;
begin
  if v_kind = 'period' then
    if tg_op <> 'INSERT' then
      return null;
    end if;
    v_sql := format(
      $q$with candidates as (
           select n.tenant_id, (%1$s)::bigint as quantity, (%2$s)::text as idempotency_key
             from tenantry_new_rows n where %3$s),
         periods as (
           select c.*, %4$I.tenant_period_start(c.tenant_id, now()) as period_start
             from candidates c where c.quantity > 0),
         inserted as (
           insert into %4$I.usage_events
               (tenant_id, metric, quantity, occurred_at, period_start, idempotency_key)
             select p.tenant_id, %5$L, p.quantity, now(), p.period_start, p.idempotency_key
               from periods p
             on conflict (tenant_id, idempotency_key) do nothing
             returning tenant_id, quantity, period_start)
         select tenant_id, period_start, sum(quantity)::bigint as delta
           from inserted group by tenant_id, period_start$q$,
      v_amount, v_key, v_condition, :'tenantry_schema', v_metric);
    for r in execute v_sql loop
      perform :"tenantry_schema".apply_usage(r.tenant_id, v_metric, r.period_start, r.delta, 'raise');
    end loop;
    return null;
  end if;
  if tg_op = 'INSERT' then
    v_sql := format(
      'select n.tenant_id, sum((%1$s)::bigint)::bigint as delta from tenantry_new_rows n where %2$s group by 1',
      v_amount, v_condition);
  elsif tg_op = 'DELETE' then
    v_sql := format(
      'select n.tenant_id, -sum((%1$s)::bigint)::bigint as delta from tenantry_old_rows n where %2$s group by 1',
      v_amount, v_condition);
  else
    v_sql := format(
      $q$select tenant_id, sum(delta)::bigint as delta from (
           select n.tenant_id, (%1$s)::bigint as delta from tenantry_new_rows n where %2$s
           union all
           select n.tenant_id, -(%1$s)::bigint from tenantry_old_rows n where %2$s) d
         group by 1$q$,
      v_amount, v_condition);
  end if;
  -- Releases first, then consumption, each in tenant order: a statement moving usage between
  -- tenants never fails on a limit it frees, and concurrent statements lock counters in one order.
  for r in execute format('select * from (%s) s where delta <> 0 order by delta > 0, tenant_id', v_sql) loop
    perform :"tenantry_schema".apply_usage(r.tenant_id, v_metric, '-infinity'::timestamptz, r.delta, 'raise');
  end loop;
  return null;
end
$fn$;
revoke all on function :"tenantry_schema".meter_rows() from public;

-- Owner-only (migrations): counts p_metric on p_table. Expressions are SQL over the row alias
-- `n` (e.g. amount 'n.size_bytes', condition 'n.status = ''uploaded'''); for a period metric the
-- key expression names each row's usage event (e.g. '''message:'' || n.id'). Count metrics are
-- backfilled from the rows already there, so the counter equals the rows from the start.
create function :"tenantry_schema".attach_quota(
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
  v_name text := 'tenantry_quota_' || p_metric;
  v_function text := format('%I.meter_rows', :'tenantry_schema');
begin
  if v_kind = 'rate' then
    raise exception 'metric % is a rate; it is not counted in rows', p_metric using errcode = '22023';
  end if;
  if v_kind = 'period' and p_key is null then
    raise exception 'a period metric needs a key expression naming each row''s usage event'
      using errcode = '22023';
  end if;
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
revoke all on function :"tenantry_schema".attach_quota(regclass, text, text, text, text) from public;

-- Plans: changes by the platform ---------------------------------------------------------------

create function :"tenantry_schema".notify_plan_change() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $fn$
begin
  if tg_table_name = 'plan_limits' then
    perform pg_notify('tenantry_plans', '*');
  elsif tg_op = 'DELETE' then
    perform pg_notify('tenantry_plans', old.tenant_id::text);
  else
    perform pg_notify('tenantry_plans', new.tenant_id::text);
  end if;
  return null;
end
$fn$;
revoke all on function :"tenantry_schema".notify_plan_change() from public;
create trigger plan_limits_notify after insert or update or delete on :"tenantry_schema".plan_limits
  for each row execute function :"tenantry_schema".notify_plan_change();
create trigger tenant_limit_overrides_notify
  after insert or update or delete on :"tenantry_schema".tenant_limit_overrides
  for each row execute function :"tenantry_schema".notify_plan_change();

-- A tenant's plan changed (whoever changed it): tenant.plan_changed in the same transaction, and
-- a notification so caches of limits drop the tenant at once.
create function :"tenantry_schema".on_tenant_plan_change() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $fn$
begin
  perform :"tenantry_schema".emit_outbox_event(new.id, 'tenant.plan_changed',
    jsonb_build_object('previousPlan', old.plan, 'plan', new.plan));
  perform pg_notify('tenantry_plans', new.id::text);
  return null;
end
$fn$;
revoke all on function :"tenantry_schema".on_tenant_plan_change() from public;
create trigger tenants_plan_changed after update of plan on :"tenantry_schema".tenants
  for each row when (old.plan is distinct from new.plan)
  execute function :"tenantry_schema".on_tenant_plan_change();

-- Billing periods: closing -------------------------------------------------------------------

-- Emits period.closed (the usage summary ready for invoicing) for the current tenant's previous
-- billing period, once; returns the event id, or null when it was already emitted. A platform job
-- runs it daily in every tenant's context.
create function :"tenantry_schema".close_billing_period()
  returns uuid
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_tenant uuid := :"tenantry_schema".require_context_tenant();
  v_anchor integer;
  v_plan text;
  v_current timestamptz;
  v_previous timestamptz;
  v_usage jsonb;
begin
  select t.billing_anchor_day, t.plan into v_anchor, v_plan
    from :"tenantry_schema".tenants t where t.id = v_tenant;
  v_current := :"tenantry_schema".billing_period_start(now(), v_anchor);
  v_previous := :"tenantry_schema".billing_period_start(v_current - interval '1 second', v_anchor);
  insert into :"tenantry_schema".usage_notices (tenant_id, metric, period_start, kind)
    values (v_tenant, '*', v_previous, 'period_closed')
    on conflict do nothing;
  if not found then
    return null;
  end if;
  select coalesce(jsonb_object_agg(m.name, jsonb_build_object(
           'kind', m.kind, 'unit', m.unit,
           'quantity', case when m.kind = 'period' then coalesce(e.quantity, 0) else c.used end,
           'events', case when m.kind = 'period' then coalesce(e.events, 0) end,
           'limit', :"tenantry_schema".effective_limit(v_tenant, m.name))
         ) filter (where m.kind <> 'rate'), '{}'::jsonb)
    into v_usage
    from :"tenantry_schema".metrics m
    left join (
      select ue.metric, sum(ue.quantity)::bigint as quantity, count(*)::bigint as events
        from :"tenantry_schema".usage_events ue
       where ue.tenant_id = v_tenant and ue.period_start = v_previous
       group by ue.metric) e on e.metric = m.name
    left join :"tenantry_schema".usage_counters c
      on c.tenant_id = v_tenant and c.metric = m.name and c.period_start = '-infinity';
  return :"tenantry_schema".emit_outbox_event(v_tenant, 'period.closed', jsonb_build_object(
    'periodStart', v_previous, 'periodEnd', v_current, 'plan', v_plan, 'usage', v_usage));
end
$fn$;
revoke all on function :"tenantry_schema".close_billing_period() from public;
grant execute on function :"tenantry_schema".close_billing_period() to :"app_role";

-- quota.exceeded, once per tenant, metric and billing period. The refused statement rolled back
-- with its transaction, so Tenantry calls this in a transaction of its own afterwards.
create function :"tenantry_schema".note_quota_exceeded(p_metric text, p_requested bigint)
  returns uuid
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_tenant uuid := :"tenantry_schema".require_context_tenant();
  v_period timestamptz := :"tenantry_schema".tenant_period_start(v_tenant, now());
begin
  perform :"tenantry_schema".metric_kind(p_metric);
  insert into :"tenantry_schema".usage_notices (tenant_id, metric, period_start, kind)
    values (v_tenant, p_metric, v_period, 'exceeded')
    on conflict do nothing;
  if not found then
    return null;
  end if;
  -- Limit and usage are read here, never taken from the caller.
  return :"tenantry_schema".emit_outbox_event(v_tenant, 'quota.exceeded', jsonb_build_object(
    'metric', p_metric,
    'limit', :"tenantry_schema".effective_limit(v_tenant, p_metric),
    'used', (select c.used from :"tenantry_schema".usage_counters c
              where c.tenant_id = v_tenant and c.metric = p_metric
                and c.period_start = case when :"tenantry_schema".metric_kind(p_metric) = 'count'
                                          then '-infinity'::timestamptz else v_period end),
    'requested', greatest(coalesce(p_requested, 0), 0),
    'periodStart', v_period));
end
$fn$;
revoke all on function :"tenantry_schema".note_quota_exceeded(text, bigint) from public;
grant execute on function :"tenantry_schema".note_quota_exceeded(text, bigint) to :"app_role";
