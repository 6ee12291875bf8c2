-- Tenantry core: what request identification needs from the database. Tenant catalog changes
-- are announced so slug caches can drop stale entries; API keys are tenant rows whose lookup
-- by public prefix goes through one narrow SECURITY DEFINER function; self-service sign-up
-- creates tenants through another.

-- Readiness probes compare the applied migrations with the files they were deployed with.
grant select on :"tenantry_schema".migrations to :"app_role";

-- Every change to the catalog is announced on channel `tenantry_tenants` with the tenant id
-- and its old and new slugs, after commit (NOTIFY is transactional).
create function :"tenantry_schema".notify_tenant_change() returns trigger
  language plpgsql
  set search_path = pg_catalog
  as $fn$
begin
  perform pg_notify('tenantry_tenants', json_build_object(
    'id', coalesce(new.id, old.id),
    'slugs', array_remove(array[old.slug, new.slug], null))::text);
  return null;
end
$fn$;

create trigger tenants_notify_change
  after insert or update or delete on :"tenantry_schema".tenants
  for each row execute function :"tenantry_schema".notify_tenant_change();

-- Creates an active tenant on the default plan. The app role may call it (self-service sign-up)
-- but has no other write on the catalog; status, plan and deletion belong to the platform roles.
create function :"tenantry_schema".create_tenant(p_slug text, p_name text)
  returns uuid
  language plpgsql
  security definer
  set search_path = pg_catalog
  as $fn$
declare
  created uuid;
begin
  if p_slug is null or p_slug !~ '^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$' then
    raise exception 'invalid tenant slug' using errcode = '22023', hint = 'tenantry:slug_invalid';
  end if;
  insert into :"tenantry_schema".tenants (slug, name) values (p_slug, p_name)
    returning id into created;
  return created;
end
$fn$;
revoke all on function :"tenantry_schema".create_tenant(text, text) from public;
grant execute on function :"tenantry_schema".create_tenant(text, text) to :"app_role";

-- API keys: `tk_<prefix>_<secret>`. The prefix is public and indexed; only SHA-256(secret) is
-- stored (the secret is 256 random bits, so a slow password hash would add nothing).
create table :"tenantry_schema".api_keys (
  tenant_id uuid not null,
  id uuid not null default gen_random_uuid(),
  prefix text not null check (prefix ~ '^[a-z0-9]{12}$'),
  secret_hash bytea not null check (length(secret_hash) = 32),
  name text not null check (length(name) between 1 and 200),
  scopes text[],
  created_by uuid,
  created_at timestamptz not null default now(),
  expires_at timestamptz,
  revoked_at timestamptz,
  last_used_at timestamptz,
  primary key (tenant_id, id),
  unique (tenant_id, prefix)
);
create index api_keys_prefix_idx on :"tenantry_schema".api_keys (prefix);
select :"tenantry_schema".enable_tenant_isolation(:'tenantry_schema' || '.api_keys');

-- Within its tenant the app role lists keys and revokes them, but never reads a hash, changes a
-- secret or takes a revocation back.
revoke select, update on :"tenantry_schema".api_keys from :"app_role";
grant select (tenant_id, id, prefix, name, scopes, created_by, created_at, expires_at, revoked_at,
              last_used_at)
  on :"tenantry_schema".api_keys to :"app_role";
grant update (revoked_at) on :"tenantry_schema".api_keys to :"app_role";

create function :"tenantry_schema".keep_api_key_revoked() returns trigger
  language plpgsql
  set search_path = pg_catalog
  as $fn$
begin
  if old.revoked_at is not null and new.revoked_at is distinct from old.revoked_at then
    raise exception 'an API key revocation cannot be undone' using errcode = '42501';
  end if;
  return new;
end
$fn$;

create trigger api_keys_keep_revoked
  before update on :"tenantry_schema".api_keys
  for each row execute function :"tenantry_schema".keep_api_key_revoked();

-- Resolves a presented key before any tenant context exists. It returns a row only when the
-- secret's hash matches, so the app role can neither list keys nor read any hash through it,
-- and it records use at most once a minute per key.
create function :"tenantry_schema".authenticate_api_key(p_prefix text, p_secret_hash bytea)
  returns table (tenant_id uuid, key_id uuid, scopes text[], state text)
  language plpgsql
  security definer
  set search_path = pg_catalog
  as $fn$
declare
  key_row record;
begin
  select k.tenant_id, k.id, k.scopes, k.revoked_at, k.expires_at, k.last_used_at into key_row
    from :"tenantry_schema".api_keys k
   where k.prefix = p_prefix and k.secret_hash = p_secret_hash;
  if not found then
    return;
  end if;
  if key_row.revoked_at is null and (key_row.expires_at is null or key_row.expires_at > now())
     and (key_row.last_used_at is null or key_row.last_used_at < now() - interval '1 minute') then
    update :"tenantry_schema".api_keys k set last_used_at = now()
     where k.tenant_id = key_row.tenant_id and k.id = key_row.id;
  end if;
  tenant_id := key_row.tenant_id;
  key_id := key_row.id;
  scopes := key_row.scopes;
  state := case
    when key_row.revoked_at is not null then 'revoked'
    when key_row.expires_at is not null and key_row.expires_at <= now() then 'expired'
    else 'active' end;
  return next;
end
$fn$;
revoke all on function :"tenantry_schema".authenticate_api_key(text, bytea) from public;
grant execute on function :"tenantry_schema".authenticate_api_key(text, bytea) to :"app_role";
