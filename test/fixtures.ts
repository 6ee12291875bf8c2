import { randomBytes, randomUUID } from 'node:crypto';
import { type Kysely, sql } from 'kysely';
import type { Tenantry } from 'tenantry';
import type { AppDatabase } from '../app/database.ts';
import { withClient } from '../src/database/client.ts';

/** The reference schema's tables, as the tests use them. */
export type ReferenceDatabase = AppDatabase;

/** Every tenant table of the reference schema (public). */
export const referenceTenantTables = Object.freeze([
  'contacts',
  'tags',
  'contact_tags',
  'conversations',
  'messages',
  'message_templates',
  'memberships',
  'invitations',
  'workspace_settings',
  'idempotency_keys',
  'contact_search_terms',
  'contact_attribute_terms',
  'conversation_search_terms',
  'broadcasts',
  'broadcast_recipients',
  'channel_deliveries',
  'conversation_digests',
  'message_attachments',
  'exports',
]);

/** Ids of the rows {@link seedTenant} created. */
export interface SeededTenant {
  readonly tenantId: string;
  readonly userId: string;
  readonly contactId: string;
  readonly tagId: string;
  readonly conversationId: string;
  readonly messageId: string;
}

/** Creates a tenant in the catalog (as the superuser) and one row in every reference table. */
export async function seedTenant(
  adminUrl: string,
  tenantry: Tenantry<ReferenceDatabase>,
  slug: string,
): Promise<SeededTenant> {
  const tenantId = randomUUID();
  const userId = randomUUID();
  await withClient(adminUrl, async (client) => {
    await client.query('insert into tenantry.tenants (id, slug, name) values ($1, $2, $3)', [
      tenantId,
      slug,
      slug,
    ]);
    await client.query(
      `insert into auth.users (id, email, name, password_hash) values ($1, $2, $3, 'x')`,
      [userId, `owner@${slug}.test`, slug],
    );
  });
  return tenantry.withTenant(tenantId, async (db: Kysely<ReferenceDatabase>) => {
    const contact = await db
      .insertInto('contacts')
      .values({
        name: `${slug} contact`,
        phone: `+1555${slug}`,
        attributes: JSON.stringify({ plan: 'gold' }),
      })
      .returning('id')
      .executeTakeFirstOrThrow();
    const tag = await db
      .insertInto('tags')
      .values({ name: `${slug} tag` })
      .returning('id')
      .executeTakeFirstOrThrow();
    await db
      .insertInto('contact_tags')
      .values({ contact_id: contact.id, tag_id: tag.id })
      .execute();
    const conversation = await db
      .insertInto('conversations')
      .values({ contact_id: contact.id, subject: `${slug} subject` })
      .returning('id')
      .executeTakeFirstOrThrow();
    const message = await db
      .insertInto('messages')
      .values({
        conversation_id: conversation.id,
        direction: 'inbound',
        body: `${slug} secret body`,
      })
      .returning('id')
      .executeTakeFirstOrThrow();
    await db.insertInto('memberships').values({ user_id: userId, role: 'owner' }).execute();
    await db
      .insertInto('invitations')
      .values({
        email: `invitee@${slug}.test`,
        role: 'member',
        token_hash: randomBytes(32),
        invited_by: userId,
        expires_at: new Date(Date.now() + 86_400_000),
      })
      .execute();
    await db
      .insertInto('workspace_settings')
      .values({ inbound_webhook_secret: `${slug}-webhook-secret` })
      .execute();
    const template = await db
      .insertInto('message_templates')
      .values({ name: `${slug}_welcome`, body: `Welcome to ${slug}` })
      .returning('id')
      .executeTakeFirstOrThrow();
    const broadcast = await db
      .insertInto('broadcasts')
      .values({
        name: `${slug} broadcast`,
        template_id: template.id,
        body: `Welcome to ${slug}`,
        variables: '[]',
        tag_ids: [tag.id],
        created_by: userId,
      })
      .returning('id')
      .executeTakeFirstOrThrow();
    await db
      .insertInto('broadcast_recipients')
      .values({ broadcast_id: broadcast.id, contact_id: contact.id })
      .execute();
    await db
      .insertInto('channel_deliveries')
      .values({
        idempotency_key: `broadcast:${broadcast.id}:${contact.id}`,
        contact_id: contact.id,
        channel: 'whatsapp',
        to_address: `+1555${slug}`,
        body: `${slug} secret delivery`,
      })
      .execute();
    await db
      .insertInto('conversation_digests')
      .values({
        day: '2026-01-01',
        conversations_opened: 1,
        conversations_active: 1,
        messages_in: 1,
        messages_out: 0,
      })
      .execute();
    const fileId = randomUUID();
    // A pending file is enough to attach: the foreign key checks the tenant, not the status.
    await sql`insert into tenantry.files (tenant_id, id, object_key, file_name, size_bytes,
        content_type, driver, expires_at)
      values (tenantry.current_tenant_id(), ${fileId}::uuid,
        'tenants/' || tenantry.current_tenant_id()::text || '/' || ${fileId}, ${`${slug}.txt`},
        1, 'text/plain', 'local', now() + interval '1 hour')`.execute(db);
    await db
      .insertInto('message_attachments')
      .values({
        message_id: message.id,
        message_created_at: sql<Date>`(select created_at from messages where id = ${message.id})`,
        file_id: fileId,
        position: 0,
      })
      .execute();
    await db.insertInto('exports').values({ kind: 'contacts', created_by: userId }).execute();
    await db
      .insertInto('idempotency_keys')
      .values({
        key: `${slug}-key`,
        request_hash: randomBytes(32),
        status_code: 201,
        response: '{}',
      })
      .execute();
    return {
      tenantId,
      userId,
      contactId: contact.id,
      tagId: tag.id,
      conversationId: conversation.id,
      messageId: message.id,
    };
  });
}

/** Lists the tenant tables of the public schema from the catalog. */
export async function listTenantTables(adminUrl: string): Promise<string[]> {
  return withClient(adminUrl, async (client) => {
    const result = await client.query<{ name: string }>(
      `select c.relname as name from pg_class c
       join pg_namespace n on n.oid = c.relnamespace
       join pg_attribute a on a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped
       where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relispartition
       order by 1`,
    );
    return result.rows.map((row) => row.name);
  });
}

/** Returns the SQLSTATE of a failed query, or 'ok' when it succeeded. */
export async function sqlState(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'ok';
  } catch (error) {
    return String((error as { code?: unknown }).code);
  }
}

export { withClient };
