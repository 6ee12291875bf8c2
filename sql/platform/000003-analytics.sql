-- Tenantry platform operations, part 3: what the analytics role may read of the job queue.
-- The runner's schema (graphile_worker, installed by the jobs source) is closed to everyone but
-- the owner, and its job rows carry payloads. The analytics role gets this view instead: each
-- job's tenant, task, state and timing, never its payload, key or error text. Like every view it
-- reads the table with its owner's rights, so no grant on graphile_worker is needed.
--
-- tenant_id stays text (payload ->> 'tenantId'), the expression tenantry_jobs_tenant_idx indexes:
-- compare it with a text parameter and one tenant's jobs are an index scan.
create view :"tenantry_schema".job_states as
  select j.id,
         t.identifier as task,
         j.payload ->> 'tenantId' as tenant_id,
         case
           when j.locked_at is not null then 'running'
           when j.run_at = 'infinity' then 'parked'
           when j.attempts >= j.max_attempts then 'dead'
           else 'waiting'
         end as state,
         j.attempts,
         j.max_attempts,
         j.run_at,
         j.created_at
    from graphile_worker._private_jobs j
    join graphile_worker._private_tasks t on t.id = j.task_id;

revoke all on :"tenantry_schema".job_states from public, :"app_role";
grant select on :"tenantry_schema".job_states to :"analytics_role";
