-- Deletion in two steps: deleteFile() sets deleted_at in the caller's unit of work (the file is
-- gone for the tenant at once, and a rollback brings it back intact); purgeDeletedFiles() removes
-- the object and then the row in a later one. A purge skips marks newer than its own transaction
-- start, so it never removes the object of a delete that could still roll back.
alter table :"tenantry_schema".files add column deleted_at timestamptz;
alter table :"tenantry_schema".files add constraint files_deleted_is_deleted
  check (deleted_at is null or status = 'deleted');

create index files_deleted_idx on :"tenantry_schema".files (tenant_id, deleted_at)
  where deleted_at is not null;

grant update (deleted_at) on :"tenantry_schema".files to :"app_role";
