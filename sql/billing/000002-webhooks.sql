-- Tenantry webhooks: every outbox event is delivered, at least once and signed per the Standard
-- Webhooks specification, to each HTTP endpoint subscribed to its type.
-- - webhook_endpoints: where to send, which types, the signing secret and, during a rotation,
--   the previous secret until it expires (both sign meanwhile);
-- - webhook_deliveries: one row per event and endpoint, created by a trigger in the transaction
--   that wrote the event (an endpoint added later does not receive older events). The dispatcher
--   claims due rows with FOR UPDATE SKIP LOCKED and marks them 'delivering' with a lease: while
--   delivering, next_attempt_at is the end of the lease, so a crashed dispatcher's deliveries
--   become due again by themselves;
-- - webhook_attempts: the delivery log, one row per HTTP attempt.
-- Platform tables: the owner only. They hold the signing secrets, so no other role keeps
-- anything on them (the analytics role's default SELECT on the schema's tables is revoked).

create table :"tenantry_schema".webhook_endpoints (
  id uuid primary key default gen_random_uuid(),
  url text not null check (url ~ '^https?://[^[:space:]]+$' and length(url) <= 2000),
  description text not null default '' check (length(description) <= 500),
  -- null: every event type. Otherwise exact types or a family wildcard such as 'usage.*'.
  event_types text[] check (
    event_types is null
    or (cardinality(event_types) between 1 and 100
        and array_position(event_types, null) is null
        and array_to_string(event_types, ',')
            ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.([a-z][a-z0-9_]*|\*)(,[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.([a-z][a-z0-9_]*|\*))*$')),
  enabled boolean not null default true,
  secret text not null check (secret ~ '^whsec_[A-Za-z0-9+/]{32,88}={0,2}$'),
  previous_secret text check (previous_secret ~ '^whsec_[A-Za-z0-9+/]{32,88}={0,2}$'),
  previous_expires_at timestamptz,
  max_attempts integer not null default 12 check (max_attempts between 1 and 100),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  check ((previous_secret is null) = (previous_expires_at is null))
);
revoke all on :"tenantry_schema".webhook_endpoints from public, :"app_role", :"analytics_role";

create table :"tenantry_schema".webhook_deliveries (
  event_id uuid not null references :"tenantry_schema".outbox_events (id) on delete cascade,
  endpoint_id uuid not null references :"tenantry_schema".webhook_endpoints (id) on delete cascade,
  status text not null default 'pending'
    check (status in ('pending', 'delivering', 'succeeded', 'failed')),
  attempts integer not null default 0 check (attempts >= 0),
  -- pending: when the next attempt is due; delivering: when the lease ends.
  next_attempt_at timestamptz not null default now(),
  -- Names the claim holding the lease, so an outcome reported after the lease passed to another
  -- dispatcher does not overwrite that dispatcher's state.
  lease_token uuid,
  last_status_code integer,
  last_error text check (length(last_error) <= 1000),
  delivered_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (event_id, endpoint_id)
);
revoke all on :"tenantry_schema".webhook_deliveries from public, :"app_role", :"analytics_role";
-- The dispatcher's claim: per endpoint, the due rows in order, and the endpoint's live leases.
create index webhook_deliveries_due_idx
  on :"tenantry_schema".webhook_deliveries (endpoint_id, next_attempt_at)
  where status in ('pending', 'delivering');
create index webhook_deliveries_status_idx
  on :"tenantry_schema".webhook_deliveries (status, created_at);

create table :"tenantry_schema".webhook_attempts (
  id bigint generated always as identity primary key,
  event_id uuid not null,
  endpoint_id uuid not null,
  attempt integer not null check (attempt >= 1),
  started_at timestamptz not null,
  duration_ms integer not null check (duration_ms >= 0),
  status_code integer,
  error text check (length(error) <= 1000),
  response_excerpt text check (length(response_excerpt) <= 1024),
  foreign key (event_id, endpoint_id)
    references :"tenantry_schema".webhook_deliveries (event_id, endpoint_id) on delete cascade
);
revoke all on :"tenantry_schema".webhook_attempts from public, :"app_role", :"analytics_role";
create index webhook_attempts_delivery_idx
  on :"tenantry_schema".webhook_attempts (event_id, endpoint_id, id);

-- One delivery per enabled endpoint subscribed to the event's type, in the event's transaction.
-- SECURITY DEFINER: whoever manages to write an event, the deliveries are written as the owner.
create function :"tenantry_schema".create_webhook_deliveries() returns trigger
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
  as $fn$
begin
  insert into :"tenantry_schema".webhook_deliveries (event_id, endpoint_id)
    select new.id, e.id
      from :"tenantry_schema".webhook_endpoints e
     where e.enabled
       and (e.event_types is null
            or new.type = any (e.event_types)
            or substr(new.type, 1, length(new.type) - strpos(reverse(new.type), '.') + 1) || '*'
               = any (e.event_types));
  return null;
end
$fn$;
revoke all on function :"tenantry_schema".create_webhook_deliveries() from public;
create trigger outbox_events_webhook_deliveries
  after insert on :"tenantry_schema".outbox_events
  for each row execute function :"tenantry_schema".create_webhook_deliveries();
