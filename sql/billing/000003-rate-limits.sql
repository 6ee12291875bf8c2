-- Tenantry rate limits: the budgets shared by every instance of an application
-- (createPostgresRateLimitStore in tenantry/billing).
--
-- One row per key (`api:<tenant id>` for the API limit) holding its GCRA theoretical arrival
-- time (tat), in epoch milliseconds of the caller's clock, and its interval (window / limit): a
-- request at `now` is admitted when greatest(tat, now) + interval - now <= window, and then moves
-- tat by one interval. Each request
-- is one upsert in autocommit; concurrent upserts of a key serialize on its row, and under READ
-- COMMITTED the guard is re-checked against the row the first one committed, so racing instances
-- never admit more than the budget. A row whose tat has passed is a full budget, the same as no
-- row, so pruning changes no decision. UNLOGGED: budgets are not worth a WAL write per request,
-- and a crash only gives every tenant a full budget again.

create unlogged table :"tenantry_schema".rate_limits (
  key text primary key check (key ~ '^[\x21-\x7e]{1,200}$'),
  tat double precision not null,
  -- window / limit when tat was set: a budget spent under another limit is rescaled.
  interval_ms double precision not null check (interval_ms > 0)
);
revoke all on :"tenantry_schema".rate_limits from public;

-- When a budget is paid back under p_interval_ms: p_now when it is full. A budget spent under
-- another interval (the plan changed) counts as the same number of requests, capped at one
-- window: an upgrade frees capacity at once, a downgrade blocks one window at most.
create function :"tenantry_schema".rate_limit_paid_back_at(
  p_tat double precision,
  p_tat_interval_ms double precision,
  p_now double precision,
  p_interval_ms double precision,
  p_window_ms double precision)
  returns double precision
  language sql immutable
  set search_path = pg_catalog, pg_temp
  as $fn$
  select case when p_tat <= p_now then p_now
              when p_tat_interval_ms = p_interval_ms then p_tat
              else p_now + least((p_tat - p_now) * p_interval_ms / p_tat_interval_ms, p_window_ms)
         end
$fn$;
revoke all on function :"tenantry_schema".rate_limit_paid_back_at(double precision,
  double precision, double precision, double precision, double precision) from public;

-- Spends one request of p_key's budget if it fits. Returns the new tat (null: refused, nothing
-- changed) and when the budget spent before is paid back (as the statement's snapshot saw it), to
-- tell when to retry.
create function :"tenantry_schema".hit_rate_limit(
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
       where p_interval_ms > 0 and p_interval_ms <= p_window_ms + 0.01
    on conflict (key) do update
      set tat = :"tenantry_schema".rate_limit_paid_back_at(r.tat, r.interval_ms, p_now, p_interval_ms, p_window_ms) + p_interval_ms,
          interval_ms = p_interval_ms
      -- 0.01 ms: the float tolerance of toleranceMs in src/billing/rate-limit.ts.
      where :"tenantry_schema".rate_limit_paid_back_at(r.tat, r.interval_ms, p_now, p_interval_ms, p_window_ms) + p_interval_ms - p_now <= p_window_ms + 0.01
    returning r.tat
  )
  select (select h.tat from hit h), coalesce((select p.paid_back_at from previous p), p_now)
$fn$;
revoke all on function :"tenantry_schema".hit_rate_limit(text, double precision, double precision,
  double precision) from public;
-- The app role may spend any key's budget: it already chooses the tenant of every transaction,
-- so this adds no power, and it never reads or writes the table itself.
grant execute on function :"tenantry_schema".hit_rate_limit(text, double precision,
  double precision, double precision) to :"app_role";

-- Deletes the rows of replenished budgets (tat at or before p_now); returns how many.
create function :"tenantry_schema".prune_rate_limits(p_now double precision)
  returns bigint
  language sql
  security definer
  set search_path = pg_catalog, pg_temp
  as $fn$
  with deleted as (
    delete from :"tenantry_schema".rate_limits r where r.tat <= p_now returning 1
  )
  select count(*) from deleted
$fn$;
revoke all on function :"tenantry_schema".prune_rate_limits(double precision) from public;
grant execute on function :"tenantry_schema".prune_rate_limits(double precision) to :"app_role";
