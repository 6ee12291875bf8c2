-- Reference app: files attached to messages, and exports written into the workspace's storage.
-- Files themselves live in tenantry.files (the storage registry, installed by
-- storageMigrationSource()).

-- A message's attachments. The messages key carries created_at (see 0002), so the foreign key
-- to the message does too. Deleting a file removes it from the messages it was attached to.
create table message_attachments (
  tenant_id uuid not null,
  message_id uuid not null,
  message_created_at timestamptz not null,
  file_id uuid not null,
  -- Order of the files on the message (the service numbers them from 0).
  position smallint not null check (position between 0 and 9),
  created_at timestamptz not null default now(),
  primary key (tenant_id, message_id, file_id)
);
alter table message_attachments
  add foreign key (tenant_id, message_id, message_created_at)
  references messages (tenant_id, id, created_at) on delete cascade;
select tenantry.add_tenant_foreign_key('message_attachments', 'file_id', 'tenantry.files', 'cascade');
select tenantry.enable_tenant_isolation('message_attachments');

-- Exports run by a job. file_id is not a foreign key: deleting the export's file must not
-- delete the export's record; a deleted file simply has no download any more. The job writes it
-- in the workspace's own transaction, so it always names a file of the same workspace.
create table exports (
  tenant_id uuid not null,
  id uuid not null default gen_random_uuid(),
  kind text not null check (kind in ('contacts')),
  status text not null default 'queued' check (status in ('queued', 'ready', 'failed')),
  file_id uuid,
  row_count integer,
  error text,
  created_by uuid,
  created_at timestamptz not null default now(),
  finished_at timestamptz,
  primary key (tenant_id, id),
  constraint exports_ready_has_file check (status <> 'ready' or file_id is not null)
);
create index exports_tenant_id_created_at_idx on exports (tenant_id, created_at, id);
select tenantry.enable_tenant_isolation('exports');
