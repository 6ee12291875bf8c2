-- Reference app: messages, the high-volume table, partitioned by tenant.
--
-- Layout (docs/guides/partitioning.md explains the choice):
--
--   messages                     LIST (tenant_id)
--     messages_t_<12 hex>        FOR VALUES IN (<tenant>): a large tenant's own partition,
--                                made later by `tenantry partitions dedicate messages <tenant>`
--     messages_hashed            DEFAULT, itself HASH (tenant_id)
--       messages_h00 .. h<N-1>   FOR VALUES WITH (MODULUS N, REMAINDER i)
--
-- PostgreSQL cannot mix HASH and LIST bounds at one level, so the hash scheme sits under the
-- list's DEFAULT partition: every tenant lands in one hash partition until it is given its own.
-- A query for one tenant (the Tenantry guard adds tenant_id = $1 to every query, and the RLS
-- policy compares tenant_id to current_tenant_id()) reads exactly one leaf.
--
-- N is read from the setting tenantry.partition_count when this migration runs (default 16, a
-- power of two from 1 to 1024), e.g. `PGOPTIONS='-c tenantry.partition_count=64' tenantry
-- migrate`, or `alter database ... set tenantry.partition_count = 64` before migrating.
-- Changing N later means rebuilding the table.
--
-- Every key keeps tenant_id (a partitioned table's unique keys must contain the partition key,
-- and the convention wants it anyway), and (tenant_id, id, created_at) stays the primary key
-- that message_attachments references.

do $do$
declare
  v_setting text := coalesce(nullif(current_setting('tenantry.partition_count', true), ''), '16');
  v_count integer;
  v_width integer;
  v_references record;
  v_saved text[] := '{}';
begin
  if v_setting !~ '^[0-9]{1,4}$' then
    raise exception 'tenantry.partition_count must be a power of two from 1 to 1024, got %', v_setting;
  end if;
  v_count := v_setting::integer;
  if v_count < 1 or v_count > 1024 or (v_count & (v_count - 1)) <> 0 then
    raise exception 'tenantry.partition_count must be a power of two from 1 to 1024, got %', v_count
      using hint = 'A power of two lets one hash partition be split in two later without a rebuild.';
  end if;
  v_width := greatest(2, length((v_count - 1)::text));

  create table messages_partitioned (
    like messages including defaults including constraints including generated
      including storage including comments including statistics
  ) partition by list (tenant_id);
  create table messages_hashed partition of messages_partitioned default
    partition by hash (tenant_id);
  for i in 0 .. v_count - 1 loop
    execute format(
      'create table %I partition of messages_hashed for values with (modulus %s, remainder %s)',
      'messages_h' || lpad(i::text, v_width, '0'), v_count, i);
  end loop;

  -- The rows, before any index or trigger exists on the new table: the copy is not metered (the
  -- quota trigger counted each message when it was first written) and each index is built once.
  insert into messages_partitioned select * from messages;

  -- Foreign keys that reference messages (message_attachments'), re-created as they were.
  for v_references in
    select c.conrelid::regclass as source, c.conname, pg_get_constraintdef(c.oid) as definition
      from pg_constraint c
     where c.confrelid = 'messages'::regclass and c.contype = 'f' and c.conparentid = 0
  loop
    execute format('alter table %s drop constraint %I', v_references.source, v_references.conname);
    v_saved := v_saved || format('alter table %s add constraint %I %s',
      v_references.source, v_references.conname, v_references.definition);
  end loop;

  drop table messages;
  alter table messages_partitioned rename to messages;

  alter table messages add constraint messages_pkey primary key (tenant_id, id, created_at);
  create unique index messages_tenant_id_provider_message_id_key
    on messages (tenant_id, provider_message_id, created_at);
  create index messages_tenant_id_conversation_created_idx
    on messages (tenant_id, conversation_id, created_at, id);
  create index messages_tenant_id_created_at_idx
    on messages (tenant_id, created_at) include (direction, conversation_id);
  perform tenantry.add_tenant_foreign_key('messages', 'conversation_id', 'conversations', 'cascade');

  for i in 1 .. coalesce(array_length(v_saved, 1), 0) loop
    execute v_saved[i];
  end loop;
end
$do$;

-- RLS enabled and forced with both policies on the parent and on every partition; the app role
-- gets DML on the parent only (its grants on partitions are revoked).
select tenantry.enable_tenant_isolation('messages');
select tenantry.attach_quota('messages', 'messages', '1', 'true', $$'message:' || n.id::text$$);

analyze messages;
