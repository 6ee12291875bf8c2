-- Reference app: its plans, and the tables that count against them. Tenantry's billing source
-- (installed before the app's migrations) provides the plan catalog, the counters and
-- tenantry.attach_quota(); storage bytes are counted by Tenantry itself from tenantry.files.
--
-- Limits (null or absent: unlimited). New workspaces start on 'free' (tenantry.create_tenant).
insert into tenantry.plans (id, name) values
  ('free', 'Free'), ('pro', 'Pro'), ('enterprise', 'Enterprise')
  on conflict (id) do update set name = excluded.name;
insert into tenantry.plan_limits (plan_id, metric, limit_value) values
  ('free', 'seats', 3),
  ('free', 'contacts', 1000),
  ('free', 'storage_bytes', 104857600),
  ('free', 'messages', 2000),
  ('free', 'api_requests_per_minute', 1200),
  ('free', 'concurrent_jobs', 2),
  ('pro', 'seats', 25),
  ('pro', 'contacts', 100000),
  ('pro', 'storage_bytes', 10737418240),
  ('pro', 'messages', 100000),
  ('pro', 'api_requests_per_minute', 6000),
  ('pro', 'concurrent_jobs', 10)
  on conflict (plan_id, metric) do update set limit_value = excluded.limit_value;

-- Seats: members of the workspace. Contacts: every contact row.
select tenantry.attach_quota('memberships', 'seats');
select tenantry.attach_quota('contacts', 'contacts');
-- Messages per billing period: every message stored, sent or received, whichever path wrote it
-- (API, broadcast jobs, inbound webhooks); each is one usage event keyed by the message id.
select tenantry.attach_quota('messages', 'messages', '1', 'true', $$'message:' || n.id::text$$);
