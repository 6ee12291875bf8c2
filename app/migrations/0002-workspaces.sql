-- Reference app: users, workspace memberships, invitations and sessions, plus the columns the
-- CRM API needs (versions for ETags, custom attributes, assignees, templates, idempotency).
--
-- Users and refresh tokens are global, not tenant rows: a person signs in before any workspace
-- is chosen. They live in the `auth` schema, which holds no tenant data. Everything that
-- belongs to a workspace is a tenant table in `public`.

create extension if not exists citext;

create schema auth;
grant usage on schema auth to :"app_role";

create table auth.users (
  id uuid primary key default gen_random_uuid(),
  email citext not null unique check (length(email) between 3 and 320),
  name text not null check (length(name) between 1 and 200),
  password_hash text not null,
  created_at timestamptz not null default now()
);
grant select, insert, update on auth.users to :"app_role";

-- One row per issued refresh token. A token is used once: refreshing marks it used and issues
-- the next one in the same family; presenting a used token again revokes the whole family.
create table auth.refresh_tokens (
  id uuid primary key default gen_random_uuid(),
  token_hash bytea not null unique,
  family_id uuid not null,
  user_id uuid not null references auth.users (id) on delete cascade,
  workspace_id uuid not null,
  expires_at timestamptz not null,
  used_at timestamptz,
  revoked_at timestamptz,
  created_at timestamptz not null default now()
);
create index on auth.refresh_tokens (family_id);
grant select, insert, update on auth.refresh_tokens to :"app_role";

create table memberships (
  tenant_id uuid not null,
  user_id uuid not null references auth.users (id) on delete cascade,
  role text not null check (role in ('owner', 'admin', 'member')),
  created_at timestamptz not null default now(),
  primary key (tenant_id, user_id)
);
create index on memberships (user_id);
select tenantry.enable_tenant_isolation('memberships');

-- The workspaces a user belongs to, for sign-in and the workspace switcher: the one read that
-- crosses tenants, so it is SECURITY DEFINER, returns only the caller-named user's own
-- memberships, and is listed in the doctor's trusted functions by the app.
create function auth.user_workspaces(p_user_id uuid)
  returns table (tenant_id uuid, slug text, name text, status text, role text)
  language sql stable security definer
  set search_path = pg_catalog
  as $$
    select t.id, t.slug, t.name, t.status, m.role
      from public.memberships m
      join tenantry.tenants t on t.id = m.tenant_id
     where m.user_id = p_user_id and t.status <> 'deleted'
     order by t.name
  $$;
revoke all on function auth.user_workspaces(uuid) from public;
grant execute on function auth.user_workspaces(uuid) to :"app_role";

create table invitations (
  tenant_id uuid not null,
  id uuid not null default gen_random_uuid(),
  email citext not null,
  role text not null check (role in ('admin', 'member')),
  token_hash bytea not null,
  invited_by uuid not null,
  expires_at timestamptz not null,
  accepted_at timestamptz,
  created_at timestamptz not null default now(),
  primary key (tenant_id, id),
  unique (tenant_id, token_hash)
);
select tenantry.enable_tenant_isolation('invitations');

-- Per-workspace settings; the inbound webhook secret authenticates the channel provider.
create table workspace_settings (
  tenant_id uuid not null primary key,
  inbound_webhook_secret text not null,
  updated_at timestamptz not null default now()
);
select tenantry.enable_tenant_isolation('workspace_settings');

alter table contacts
  add column email_normalized text generated always as (lower(email)) stored,
  add column attributes jsonb not null default '{}'::jsonb
    check (jsonb_typeof(attributes) = 'object'),
  add column version integer not null default 1,
  add column updated_at timestamptz not null default now();
alter table contacts add constraint contacts_tenant_id_email_key unique (tenant_id, email_normalized);
create index contacts_tenant_id_created_at_idx on contacts (tenant_id, created_at, id);
create index contacts_tenant_id_name_idx on contacts (tenant_id, name, id);

alter table conversations
  add column assignee_id uuid,
  add column version integer not null default 1,
  add column updated_at timestamptz not null default now(),
  add column last_message_at timestamptz;
create index conversations_tenant_id_assignee_idx on conversations (tenant_id, assignee_id, status);
create index conversations_tenant_id_updated_at_idx on conversations (tenant_id, updated_at, id);
create index conversations_tenant_id_contact_idx on conversations (tenant_id, contact_id);

-- Messages are the high-volume table. Its primary key carries created_at so the table can
-- later become range-partitioned by time (a partitioned table's unique keys must include the
-- partition key) without changing how rows are addressed.
alter table messages drop constraint messages_pkey;
alter table messages add primary key (tenant_id, id, created_at);
alter table messages
  add column sender_id uuid,
  add column provider_message_id text,
  add column status text not null default 'received'
    check (status in ('received', 'queued', 'sent', 'delivered', 'read', 'failed'));
create unique index messages_tenant_id_provider_message_id_key
  on messages (tenant_id, provider_message_id, created_at);
create index messages_tenant_id_conversation_created_idx
  on messages (tenant_id, conversation_id, created_at, id);

create table message_templates (
  tenant_id uuid not null,
  id uuid not null default gen_random_uuid(),
  name text not null check (name ~ '^[a-z0-9_]{1,64}$'),
  language text not null default 'en' check (language ~ '^[a-z]{2}(_[A-Z]{2})?$'),
  category text not null default 'utility' check (category in ('marketing', 'utility', 'authentication')),
  body text not null check (length(body) between 1 and 1024),
  version integer not null default 1,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, id),
  unique (tenant_id, name, language)
);
select tenantry.enable_tenant_isolation('message_templates');

-- Responses to POSTs that carried an Idempotency-Key, replayed when the key comes again.
create table idempotency_keys (
  tenant_id uuid not null,
  key text not null check (length(key) between 1 and 255),
  request_hash bytea not null,
  status_code integer,
  response jsonb,
  created_at timestamptz not null default now(),
  primary key (tenant_id, key)
);
select tenantry.enable_tenant_isolation('idempotency_keys');
