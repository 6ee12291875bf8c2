-- A file's status only moves forward: pending -> uploaded | deleted, uploaded -> deleted; and
-- a deletion mark is never taken back. The app role may update status and deleted_at (the storage
-- service runs as it), so without this a buggy or hostile path could move an uploaded file back
-- to pending (releasing its storage bytes while the object stays) or revive a purged file.
create function :"tenantry_schema".keep_file_transitions() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $fn$
begin
  if new.status is distinct from old.status and not (
       (old.status = 'pending' and new.status in ('uploaded', 'deleted'))
       or (old.status = 'uploaded' and new.status = 'deleted')) then
    raise exception 'a file cannot go from % to %', old.status, new.status
      using errcode = '42501';
  end if;
  if old.deleted_at is not null and new.deleted_at is distinct from old.deleted_at then
    raise exception 'a deleted file stays deleted' using errcode = '42501';
  end if;
  return new;
end
$fn$;
revoke all on function :"tenantry_schema".keep_file_transitions() from public;
create trigger files_keep_transitions
  before update of status, deleted_at on :"tenantry_schema".files
  for each row execute function :"tenantry_schema".keep_file_transitions();
