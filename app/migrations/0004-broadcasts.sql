-- Reference app: broadcasts (a message template sent to every contact with some tags, by
-- background jobs), what the default channel provider delivered, and the nightly conversation
-- digest. Every table is a tenant table.

-- A broadcast keeps the template body and variables it was created with, so editing or deleting
-- the template later changes nothing it sends; template_id is a plain reference for that reason
-- (a foreign key would forbid deleting a template that was ever broadcast). The counters are
-- kept in the transactions that change the recipients; when the last recipient is done they are
-- recounted from broadcast_recipients.
create table broadcasts (
  tenant_id uuid not null,
  id uuid not null default gen_random_uuid(),
  name text not null check (length(name) between 1 and 200),
  template_id uuid not null,
  body text not null check (length(body) between 1 and 1024),
  variables jsonb not null default '[]'::jsonb check (jsonb_typeof(variables) = 'array'),
  tag_ids uuid[] not null check (cardinality(tag_ids) between 1 and 50),
  status text not null default 'queued'
    check (status in ('queued', 'sending', 'completed', 'failed')),
  created_by uuid,
  recipient_count integer not null default 0,
  sent_count integer not null default 0,
  failed_count integer not null default 0,
  created_at timestamptz not null default now(),
  started_at timestamptz,
  completed_at timestamptz,
  primary key (tenant_id, id)
);
create index broadcasts_tenant_id_created_at_idx on broadcasts (tenant_id, created_at, id);
select tenantry.enable_tenant_isolation('broadcasts');

-- The contacts a broadcast goes to, taken when it is created. Deleting a contact removes it from
-- every broadcast. `attempts` is the job attempt that settled the recipient.
create table broadcast_recipients (
  tenant_id uuid not null,
  broadcast_id uuid not null,
  contact_id uuid not null,
  status text not null default 'pending' check (status in ('pending', 'sent', 'failed')),
  attempts integer not null default 0,
  provider_message_id text,
  last_error text,
  sent_at timestamptz,
  primary key (tenant_id, broadcast_id, contact_id)
);
-- The primary key serves this foreign key; add_tenant_foreign_key() would add a second index.
alter table broadcast_recipients
  add foreign key (tenant_id, broadcast_id) references broadcasts (tenant_id, id) on delete cascade;
select tenantry.add_tenant_foreign_key('broadcast_recipients', 'contact_id', 'contacts', 'cascade');
-- Pending recipients of a broadcast, and the recipient list filtered by status.
create index broadcast_recipients_status_idx
  on broadcast_recipients (tenant_id, broadcast_id, status, contact_id);
select tenantry.enable_tenant_isolation('broadcast_recipients');

-- What the default channel provider (app/channels/channel-provider.ts) delivered. It stands for
-- an external system: it writes through its own connection pool, commits on its own, and
-- refuses a second delivery with the same idempotency key. contact_id is not a foreign key for
-- that reason (the external system does not share the app's constraints).
create table channel_deliveries (
  tenant_id uuid not null,
  id uuid not null default gen_random_uuid(),
  idempotency_key text not null check (length(idempotency_key) between 1 and 255),
  contact_id uuid not null,
  channel text not null check (length(channel) between 1 and 32),
  to_address text not null check (length(to_address) between 1 and 320),
  body text not null,
  created_at timestamptz not null default now(),
  primary key (tenant_id, id),
  unique (tenant_id, idempotency_key)
);
select tenantry.enable_tenant_isolation('channel_deliveries');

-- One row per workspace and UTC day, written by the nightly digest job (recomputed, not added
-- to, when it runs again for the same day).
create table conversation_digests (
  tenant_id uuid not null,
  day date not null,
  conversations_opened integer not null,
  conversations_active integer not null,
  messages_in integer not null,
  messages_out integer not null,
  computed_at timestamptz not null default now(),
  primary key (tenant_id, day)
);
select tenantry.enable_tenant_isolation('conversation_digests');

-- The digest reads one day of conversations and messages per workspace; without these it would
-- scan every row the workspace has. (Built inside the migration's transaction, so writes to the
-- two tables wait for it on a large database.)
create index conversations_tenant_id_created_at_idx on conversations (tenant_id, created_at);
create index messages_tenant_id_created_at_idx
  on messages (tenant_id, created_at) include (direction, conversation_id);
