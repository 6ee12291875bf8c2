import pg from 'pg';
import { TenantryError } from '../errors.ts';

/** Opens a dedicated client, turning a failed connection into `TENANTRY_ERR_DB_UNAVAILABLE`. */
export async function connectClient(connectionString: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString });
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (error) {
    throw new TenantryError(
      'TENANTRY_ERR_DB_UNAVAILABLE',
      `Cannot connect to PostgreSQL: ${error instanceof Error ? error.message : String(error)}`,
      error instanceof pg.DatabaseError
        ? { cause: error, details: { sqlState: error.code } }
        : { cause: error },
    );
  }
  return client;
}

/** Runs `fn` with a dedicated client that is always closed afterwards. */
export async function withClient<T>(
  connectionString: string,
  fn: (client: pg.Client) => Promise<T>,
): Promise<T> {
  const client = await connectClient(connectionString);
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}
