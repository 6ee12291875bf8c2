-- Tenantry jobs on graphile-worker. The runner's own schema (graphile_worker) is installed by
-- its migrator just before this file runs (see src/jobs/migration-source.ts); this file adds
-- what makes its jobs tenant jobs:
-- - the app role never touches graphile_worker: it enqueues through enqueue_job(s), which take
--   the tenant from the transaction's context and write it into the job (payload `tenantId`,
--   flag `tenant:<id>`, key prefix); what the caller passes is kept under payload `data`;
-- - a per-tenant index on the job table, for fair priorities, parking and erasure, and a trigger
--   that keeps the outcome the worker settled (retry time, dead letter, parking) from being
--   overwritten by graphile-worker's own failure update;
-- - complete_job(), sent with each job's COMMIT, so a job's row is deleted in the same
--   transaction as its work: a job whose work committed is never run again;
-- - scheduled_job_runs, one row per tenant, schedule and period, so a fan-out never enqueues a
--   tenant's job twice for the same period;
-- - job_workers, the worker heartbeats that let a live worker release a dead one's jobs.

create index tenantry_jobs_tenant_idx
  on graphile_worker._private_jobs ((payload ->> 'tenantId'));

-- The running jobs, which every worker heartbeat reads (other workers' load per tenant, and the
-- locks of dead workers to release): a handful of rows however long the queue is.
create index tenantry_jobs_locked_idx
  on graphile_worker._private_jobs (locked_by)
  where locked_by is not null;

-- The worker settles a tenant job's outcome itself (retry time, dead letter, parking), then hands
-- the job back to graphile-worker as failed with this message. graphile-worker's own failure
-- update would overwrite that outcome, and would hit the job again if this worker had fetched it
-- anew in the meantime (a retry due in milliseconds), so it is skipped.
create function :"tenantry_schema".skip_settled_job_update()
  returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $fn$
begin
  return null;
end
$fn$;
revoke all on function :"tenantry_schema".skip_settled_job_update() from public;
create trigger tenantry_skip_settled_job_update
  before update on graphile_worker._private_jobs
  for each row when (new.last_error = 'TENANTRY_JOB_SETTLED')
  execute function :"tenantry_schema".skip_settled_job_update();

-- Fair priority: a job's priority is how many jobs its tenant already has waiting (counted up
-- to 1000), and graphile-worker runs lower priorities first, so a tenant with 10 queued jobs
-- interleaves with the head of another tenant's 100,000-job backlog instead of waiting for it.
create function :"tenantry_schema".job_backlog(p_tenant uuid)
  returns integer
  language sql
  stable
  set search_path = pg_catalog, pg_temp
  as $fn$
    select count(*)::integer from (
      select 1 from graphile_worker._private_jobs j
       where j.payload ->> 'tenantId' = p_tenant::text
         and j.attempts < j.max_attempts
         and j.run_at < 'infinity'
       limit 1000) waiting
  $fn$;
revoke all on function :"tenantry_schema".job_backlog(uuid) from public;

create function :"tenantry_schema".check_job_spec(
  p_task text, p_max_attempts integer, p_key text, p_key_mode text)
  returns void
  language plpgsql
  immutable
  set search_path = pg_catalog, pg_temp
  as $fn$
begin
  if p_task is null or p_task !~ '^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*$' or length(p_task) > 100 then
    raise exception 'invalid job task name' using errcode = '22023', hint = 'tenantry:job_task_invalid';
  end if;
  -- Tenantry's own tasks (the schedule fan-out) run with platform rights: a tenant never enqueues them.
  if p_task like 'tenantry.%' then
    raise exception 'job task names starting with "tenantry." are reserved'
      using errcode = '22023', hint = 'tenantry:job_task_invalid';
  end if;
  if p_max_attempts is null or p_max_attempts not between 1 and 100 then
    raise exception 'max attempts must be between 1 and 100'
      using errcode = '22023', hint = 'tenantry:job_spec_invalid';
  end if;
  if p_key is not null and (length(p_key) not between 1 and 200 or p_key ~ '[[:cntrl:]]') then
    raise exception 'a job key has 1 to 200 printable characters'
      using errcode = '22023', hint = 'tenantry:job_spec_invalid';
  end if;
  if p_key_mode is null or p_key_mode not in ('replace', 'preserve_run_at', 'unsafe_dedupe') then
    raise exception 'invalid job key mode' using errcode = '22023', hint = 'tenantry:job_spec_invalid';
  end if;
end
$fn$;
revoke all on function :"tenantry_schema".check_job_spec(text, integer, text, text) from public;

-- A run time of 'infinity' is how the worker marks parked jobs, and '-infinity' would jump every
-- queue: neither is a time a tenant may ask for.
create function :"tenantry_schema".check_job_run_at(p_run_at timestamptz)
  returns void
  language plpgsql
  immutable
  set search_path = pg_catalog, pg_temp
  as $fn$
begin
  if p_run_at is not null and not isfinite(p_run_at) then
    raise exception 'a job run time is a finite timestamp'
      using errcode = '22023', hint = 'tenantry:job_spec_invalid';
  end if;
end
$fn$;
revoke all on function :"tenantry_schema".check_job_run_at(timestamptz) from public;

-- Enqueues one job for the tenant of the current transaction. The job row is written in the
-- caller's transaction: it exists if and only if that transaction commits.
create function :"tenantry_schema".enqueue_job(
  p_task text,
  p_data jsonb,
  p_run_at timestamptz default null,
  p_max_attempts integer default 10,
  p_key text default null,
  p_key_mode text default 'unsafe_dedupe')
  returns bigint
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_tenant uuid := :"tenantry_schema".current_tenant_id();
  v_id bigint;
begin
  if v_tenant is null then
    raise exception 'a tenant job can only be enqueued inside a tenant context'
      using errcode = '42501', hint = 'tenantry:context_missing';
  end if;
  perform :"tenantry_schema".check_job_spec(p_task, p_max_attempts, p_key, p_key_mode);
  perform :"tenantry_schema".check_job_run_at(p_run_at);
  if p_data is null or jsonb_typeof(p_data) <> 'object' then
    raise exception 'a job payload is a JSON object' using errcode = '22023', hint = 'tenantry:job_spec_invalid';
  end if;
  select (graphile_worker.add_job(
      identifier => p_task,
      payload => json_build_object('tenantId', v_tenant, 'data', p_data),
      run_at => p_run_at,
      max_attempts => p_max_attempts,
      job_key => case when p_key is null then null else v_tenant::text || '/' || p_key end,
      priority => :"tenantry_schema".job_backlog(v_tenant),
      flags => array['tenant:' || v_tenant::text],
      job_key_mode => p_key_mode)).id
    into v_id;
  return v_id;
end
$fn$;
revoke all on function :"tenantry_schema".enqueue_job(text, jsonb, timestamptz, integer, text, text) from public;
grant execute on function :"tenantry_schema".enqueue_job(text, jsonb, timestamptz, integer, text, text)
  to :"app_role";

-- Enqueues many jobs of one task for the current tenant in one statement (fan-out inside a
-- job, bulk imports). Priorities continue from the tenant's backlog, one step per job.
create function :"tenantry_schema".enqueue_jobs(
  p_task text,
  p_data jsonb[],
  p_run_at timestamptz default null,
  p_max_attempts integer default 10)
  returns bigint[]
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $fn$
declare
  v_tenant uuid := :"tenantry_schema".current_tenant_id();
  v_backlog integer;
  v_ids bigint[];
begin
  if v_tenant is null then
    raise exception 'a tenant job can only be enqueued inside a tenant context'
      using errcode = '42501', hint = 'tenantry:context_missing';
  end if;
  perform :"tenantry_schema".check_job_spec(p_task, p_max_attempts, null, 'replace');
  perform :"tenantry_schema".check_job_run_at(p_run_at);
  if p_data is null or cardinality(p_data) > 10000 then
    raise exception 'enqueue between 0 and 10000 jobs at a time'
      using errcode = '22023', hint = 'tenantry:job_spec_invalid';
  end if;
  if exists (select 1 from unnest(p_data) d where d is null or jsonb_typeof(d) <> 'object') then
    raise exception 'a job payload is a JSON object' using errcode = '22023', hint = 'tenantry:job_spec_invalid';
  end if;
  v_backlog := :"tenantry_schema".job_backlog(v_tenant);
  select coalesce(array_agg(j.id), '{}') into v_ids
    from graphile_worker.add_jobs(array(
      select row(p_task,
                 json_build_object('tenantId', v_tenant, 'data', d.data),
                 null, p_run_at, p_max_attempts, null,
                 least(v_backlog + d.position - 1, 1000),
                 array['tenant:' || v_tenant::text])::graphile_worker.job_spec
        from unnest(p_data) with ordinality as d(data, position)
       order by d.position)) j;
  return v_ids;
end
$fn$;
revoke all on function :"tenantry_schema".enqueue_jobs(text, jsonb[], timestamptz, integer) from public;
grant execute on function :"tenantry_schema".enqueue_jobs(text, jsonb[], timestamptz, integer)
  to :"app_role";

-- Completes a job inside its own tenant transaction: the worker sends it with the job's COMMIT,
-- so the job row disappears if and only if the job's work commits. It refuses (and so aborts the
-- COMMIT) when the job is no longer held by that worker: a worker taken for dead, whose job was
-- released and picked up again, cannot commit the same work a second time; the lock time tells two
-- runs apart even when the same worker fetched its released job again (to the millisecond, the
-- precision the worker reads it with). The app role can only remove a job of its current tenant
-- that the named worker holds since that time.
create function :"tenantry_schema".complete_job(p_job_id bigint, p_worker text, p_locked_at timestamptz)
  returns void
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $fn$
begin
  delete from graphile_worker._private_jobs j
   where j.id = p_job_id
     and j.locked_by = p_worker
     and abs(extract(epoch from j.locked_at - p_locked_at)) < 0.001
     and j.payload ->> 'tenantId' = :"tenantry_schema".current_tenant_id()::text;
  if not found then
    raise exception 'job % is not held by worker %', p_job_id, p_worker
      using errcode = '55000', hint = 'tenantry:job_not_held';
  end if;
end
$fn$;
revoke all on function :"tenantry_schema".complete_job(bigint, text, timestamptz) from public;
grant execute on function :"tenantry_schema".complete_job(bigint, text, timestamptz) to :"app_role";

create table :"tenantry_schema".scheduled_job_runs (
  tenant_id uuid not null,
  schedule text not null check (length(schedule) between 1 and 100),
  period timestamptz not null,
  job_id bigint,
  created_at timestamptz not null default now(),
  primary key (tenant_id, schedule, period)
);
select :"tenantry_schema".enable_tenant_isolation(:'tenantry_schema' || '.scheduled_job_runs');
revoke delete on :"tenantry_schema".scheduled_job_runs from :"app_role";

create table :"tenantry_schema".job_workers (
  worker_id text primary key,
  host text not null,
  pid integer not null,
  started_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now()
);
