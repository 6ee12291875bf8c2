-- Tenantry storage: the file registry. Objects live in a storage driver (local filesystem or
-- S3-compatible) under `tenants/<tenant id>/<file id>`; this table is the tenant's record of them
-- and the only way to reach one: a URL is signed only for a key read from a visible row.

create table :"tenantry_schema".files (
  tenant_id uuid not null,
  id uuid not null,
  -- Derived from the ids, never from a name: even a buggy code path cannot register a key
  -- outside the tenant's prefix.
  object_key text not null,
  file_name text not null check (length(file_name) between 1 and 255),
  size_bytes bigint not null check (size_bytes >= 0),
  content_type text not null check (content_type ~ '^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$'),
  expected_sha256 text check (expected_sha256 ~ '^[0-9a-f]{64}$'),
  sha256 text check (sha256 ~ '^[0-9a-f]{64}$'),
  status text not null default 'pending' check (status in ('pending', 'uploaded', 'deleted')),
  error text,
  uploaded_by uuid,
  driver text not null check (length(driver) between 1 and 50),
  created_at timestamptz not null default now(),
  uploaded_at timestamptz,
  expires_at timestamptz not null,
  primary key (tenant_id, id),
  unique (tenant_id, object_key),
  constraint files_object_key_in_tenant_prefix
    check (object_key = 'tenants/' || tenant_id::text || '/' || id::text),
  constraint files_uploaded_has_time check (status <> 'uploaded' or uploaded_at is not null)
);
select :"tenantry_schema".enable_tenant_isolation(:'tenantry_schema' || '.files');

create index files_pending_expiry_idx on :"tenantry_schema".files (tenant_id, expires_at)
  where status <> 'uploaded';

-- Within its tenant the app role registers, confirms and removes files, but never registers a
-- file as already uploaded, nor rewrites a file's identity, key, declared size, type or expected
-- checksum.
revoke insert, update on :"tenantry_schema".files from :"app_role";
grant insert (tenant_id, id, object_key, file_name, size_bytes, content_type, expected_sha256,
              uploaded_by, driver, expires_at)
  on :"tenantry_schema".files to :"app_role";
grant update (status, error, sha256, uploaded_at) on :"tenantry_schema".files to :"app_role";
