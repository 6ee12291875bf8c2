-- Tenantry platform operations, part 5: online moves of a tenant between the pool and a
-- dedicated schema.
--
-- tenant_moves is the journal of moves: one row per move, written when it starts and updated in
-- the transaction that commits each step (provisioned, copied, held, switched, cleaned,
-- finished; or rolled_back). A move that stopped (crash, error) is resumed or rolled back from
-- it. At most one open move per tenant.
--
-- Only the application's tenant tables of `public` (the ones a dedicated schema replicates)
-- move. Tenantry's own tenant rows (files registry, usage counters and events, jobs) stay where
-- they are, in the control database.
--
-- The write fence: while a tenant is held, and until every router has seen its new placement,
-- a statement-level trigger on each source table refuses statements run in that tenant's
-- context (SQLSTATE TM001). Movers run with session_replication_role = replica, which skips it.

create table :"tenantry_schema".tenant_moves (
  id bigint generated always as identity primary key,
  tenant_id uuid not null references :"tenantry_schema".tenants (id) on delete cascade,
  from_placement text not null check (from_placement in ('pool', 'schema')),
  to_placement text not null check (to_placement in ('pool', 'schema')),
  -- `public` for the pool, else the dedicated schema.
  from_schema text not null,
  to_schema text not null,
  step text not null default 'started'
    check (step in ('started', 'provisioned', 'copied', 'held', 'switched', 'cleaned',
                    'finished', 'rolled_back')),
  -- Per table: rows and md5 of the ordered rows at the copy and at the switch, delta counts.
  tables jsonb not null default '{}' check (jsonb_typeof(tables) = 'object'),
  -- Migration files replayed in a schema this move provisioned (recorded for it at the switch).
  migrations jsonb not null default '[]' check (jsonb_typeof(migrations) = 'array'),
  started_at timestamptz not null default now(),
  held_at timestamptz,
  switched_at timestamptz,
  updated_at timestamptz not null default now(),
  finished_at timestamptz,
  check (from_placement <> to_placement),
  check ((finished_at is not null) = (step in ('finished', 'rolled_back')))
);

create unique index tenant_moves_open on :"tenantry_schema".tenant_moves (tenant_id)
  where finished_at is null;

revoke all on :"tenantry_schema".tenant_moves from public, :"app_role";
grant select on :"tenantry_schema".tenant_moves to :"analytics_role";

-- Statement-level, so one call per statement whatever the row count; keyed on the tenant
-- context the unit of work set, so other tenants' statements pass after one comparison.
create function :"tenantry_schema".refuse_moving_tenant_writes() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $fn$
begin
  if lower(current_setting('tenantry.tenant_id', true)) = tg_argv[0] then
    raise exception 'tenant % is being moved; retry shortly', tg_argv[0]
      using errcode = 'TM001',
        hint = 'The tenant''s writes are held while its rows move; retry in a few seconds.';
  end if;
  return null;
end
$fn$;
revoke all on function :"tenantry_schema".refuse_moving_tenant_writes() from public;
