-- Reference app: the workspaces a user belongs to, wherever each workspace is placed.
--
-- `auth.user_workspaces` read `public.memberships`, so a workspace placed in a dedicated schema
-- was missing from sign-in and the workspace switcher. Each schema's `memberships` now keeps a
-- shared index, `auth.workspace_memberships`, up to date with a row trigger: the trigger is a
-- tenant statement (bare table name), so placing a workspace in a schema, and migrating the
-- dedicated schemas, creates it on that schema's `memberships` too. The index holds ids and the
-- role only, and the app role cannot read it: only `auth.user_workspaces` does.

create table auth.workspace_memberships (
  workspace_id uuid not null,
  user_id uuid not null references auth.users (id) on delete cascade,
  role text not null,
  primary key (workspace_id, user_id)
);
create index on auth.workspace_memberships (user_id);
revoke all on auth.workspace_memberships from public;

-- SECURITY DEFINER because the app role cannot write the index; it indexes the rows being
-- written, which the tenant policies of `memberships` have already confined to the caller's
-- workspace.
create function auth.index_workspace_membership()
  returns trigger
  language plpgsql security definer
  set search_path = pg_catalog
  as $$
  begin
    if tg_op in ('UPDATE', 'DELETE') then
      delete from auth.workspace_memberships
       where workspace_id = old.tenant_id and user_id = old.user_id;
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
      insert into auth.workspace_memberships (workspace_id, user_id, role)
      values (new.tenant_id, new.user_id, new.role)
      on conflict (workspace_id, user_id) do update set role = excluded.role;
    end if;
    return null;
  end
  $$;
revoke all on function auth.index_workspace_membership() from public;

create trigger memberships_workspace_index
  after insert or update or delete on memberships
  for each row execute function auth.index_workspace_membership();

-- Runs in the pool and again in every dedicated schema that already exists, each filling the
-- index from its own `memberships`.
-- tenantry: tenant
insert into auth.workspace_memberships (workspace_id, user_id, role)
select tenant_id, user_id, role from memberships
on conflict (workspace_id, user_id) do update set role = excluded.role;

create or replace function auth.user_workspaces(p_user_id uuid)
  returns table (tenant_id uuid, slug text, name text, status text, role text)
  language sql stable security definer
  set search_path = pg_catalog
  as $$
    select t.id, t.slug, t.name, t.status, m.role
      from auth.workspace_memberships m
      join tenantry.tenants t on t.id = m.workspace_id
     where m.user_id = p_user_id and t.status <> 'deleted'
     order by t.name
  $$;
