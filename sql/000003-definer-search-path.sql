-- Functions that run as their owner (SECURITY DEFINER), and the trigger and DDL helpers, pin
-- their search_path. `pg_catalog` alone is not enough: PostgreSQL still searches the caller's
-- temporary schema FIRST for relations and types unless pg_temp is named, so a caller able to
-- create temporary objects could plant a `pg_temp.uuid` domain or a `pg_temp.tenants` table and
-- have it resolved inside the function with the owner's rights. Naming pg_temp last closes that.
alter function :"tenantry_schema".enable_tenant_isolation(regclass)
  set search_path = pg_catalog, pg_temp;
alter function :"tenantry_schema".add_tenant_foreign_key(regclass, name, regclass, text)
  set search_path = pg_catalog, pg_temp;
alter function :"tenantry_schema".notify_tenant_change()
  set search_path = pg_catalog, pg_temp;
alter function :"tenantry_schema".create_tenant(text, text)
  set search_path = pg_catalog, pg_temp;
alter function :"tenantry_schema".keep_api_key_revoked()
  set search_path = pg_catalog, pg_temp;
alter function :"tenantry_schema".authenticate_api_key(text, bytea)
  set search_path = pg_catalog, pg_temp;
-- Separately, `tenantry setup` (bootstrapDatabase) no longer grants the app role TEMPORARY on the
-- database and revokes it where an earlier setup did.
