-- Tenantry platform operations, part 8: moves into and out of dedicated databases.
--
-- A move's source or target may now be a dedicated database, named by the connection the
-- application reaches it through (`from_connection`, `to_connection`) and its database name, for
-- operators. Its tenant tables are that database's `public` (`from_schema`/`to_schema` say
-- `public`). The migration files a dedicated database has run are recorded in that database too
-- (`tenantry.tenant_migrations`, created by the first placement), in the same transaction as
-- their statements, so a crash between the two databases never leaves a file run twice;
-- `database_placement_migrations` remains the control database's view of them.

alter table :"tenantry_schema".tenant_moves
  drop constraint tenant_moves_from_placement_check,
  drop constraint tenant_moves_to_placement_check,
  add constraint tenant_moves_from_placement_check
    check (from_placement in ('pool', 'schema', 'database')),
  add constraint tenant_moves_to_placement_check
    check (to_placement in ('pool', 'schema', 'database')),
  add column from_connection text,
  add column from_database text,
  add column to_connection text,
  add column to_database text,
  add constraint tenant_moves_connections_check check (
    ((from_placement = 'database') = (from_connection is not null and from_database is not null))
    and ((to_placement = 'database') = (to_connection is not null and to_database is not null))
  );
