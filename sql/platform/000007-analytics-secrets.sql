-- The analytics role reads every tenant table (BYPASSRLS, read-only) for cross-tenant reports, but
-- never a credential: API key secret hashes are withheld column by column (a hash of a 32-byte
-- random secret is not crackable, but it is still a credential's verifier and reports need none).
revoke select on :"tenantry_schema".api_keys from :"analytics_role";
grant select (tenant_id, id, prefix, name, scopes, created_by, created_at, expires_at, revoked_at,
              last_used_at)
  on :"tenantry_schema".api_keys to :"analytics_role";
