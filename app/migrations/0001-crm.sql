-- Reference app: the CRM and messaging core. Every table is tenant-owned and follows the
-- Tenantry convention (see docs/guides/tenant-tables.md).

create table contacts (
  tenant_id uuid not null,
  id uuid not null default gen_random_uuid(),
  name text not null check (length(name) between 1 and 200),
  phone text,
  email text,
  created_at timestamptz not null default now(),
  primary key (tenant_id, id),
  unique (tenant_id, phone)
);
select tenantry.enable_tenant_isolation('contacts');

create table tags (
  tenant_id uuid not null,
  id uuid not null default gen_random_uuid(),
  name text not null check (length(name) between 1 and 60),
  primary key (tenant_id, id),
  unique (tenant_id, name)
);
select tenantry.enable_tenant_isolation('tags');

create table contact_tags (
  tenant_id uuid not null,
  contact_id uuid not null,
  tag_id uuid not null,
  primary key (tenant_id, contact_id, tag_id)
);
select tenantry.add_tenant_foreign_key('contact_tags', 'contact_id', 'contacts', 'cascade');
select tenantry.add_tenant_foreign_key('contact_tags', 'tag_id', 'tags', 'cascade');
select tenantry.enable_tenant_isolation('contact_tags');

create table conversations (
  tenant_id uuid not null,
  id uuid not null default gen_random_uuid(),
  contact_id uuid not null,
  subject text,
  status text not null default 'open' check (status in ('open', 'closed')),
  created_at timestamptz not null default now(),
  primary key (tenant_id, id)
);
select tenantry.add_tenant_foreign_key('conversations', 'contact_id', 'contacts');
select tenantry.enable_tenant_isolation('conversations');

create table messages (
  tenant_id uuid not null,
  id uuid not null default gen_random_uuid(),
  conversation_id uuid not null,
  direction text not null check (direction in ('inbound', 'outbound')),
  body text not null,
  created_at timestamptz not null default now(),
  primary key (tenant_id, id)
);
select tenantry.add_tenant_foreign_key('messages', 'conversation_id', 'conversations', 'cascade');
select tenantry.enable_tenant_isolation('messages');
