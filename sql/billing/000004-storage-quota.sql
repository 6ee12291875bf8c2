-- Storage bytes are counted from the file registry when tenantry/storage is installed (its
-- migration source runs before this one): a file counts its size while it is uploaded and not
-- deleted. Confirming an upload that would pass the tenant's storage_bytes limit is refused
-- (TQ001) and the file stays pending; marking a file deleted releases its bytes at once.
do $do$
begin
  if to_regclass(:'tenantry_schema' || '.files') is not null then
    perform :"tenantry_schema".attach_quota(
      (:'tenantry_schema' || '.files')::regclass, 'storage_bytes',
      'n.size_bytes', 'n.status = ''uploaded'' and n.deleted_at is null');
  end if;
end
$do$;
