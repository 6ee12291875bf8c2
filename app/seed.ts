import { isTenantryError, type Tenantry } from 'tenantry';
import { findActiveTenantId } from './auth/auth.repository.ts';
import { createAuthService } from './auth/auth.service.ts';
import type { LocalAuthConfig } from './auth/tokens.ts';
import type { AppDatabase } from './database.ts';
import { AppError } from './errors.ts';

/** The demo account `seedDemo` creates (documented in the README; local development only). */
export const demoCredentials = Object.freeze({
  workspaceSlug: 'demo',
  email: 'demo@tenantry.dev',
  password: 'demo-password-123',
});

const contacts = [
  { name: 'Ada Lovelace', phone: '+15550100001', email: 'ada@example.com', tags: ['vip'] },
  {
    name: 'Grace Hopper',
    phone: '+15550100002',
    email: 'grace@example.com',
    tags: ['vip', 'lead'],
  },
  { name: 'Alan Turing', phone: '+15550100003', email: 'alan@example.com', tags: ['lead'] },
  { name: 'Katherine Johnson', phone: '+15550100004', email: null, tags: [] },
] as const;

const conversations = [
  {
    contact: 0,
    subject: 'Order status',
    messages: [
      { direction: 'inbound', body: 'Hi! Has my order shipped yet?' },
      { direction: 'outbound', body: 'Hello Ada, it left our warehouse this morning.' },
      { direction: 'inbound', body: 'Great, thank you!' },
    ],
  },
  {
    contact: 1,
    subject: 'Pricing question',
    messages: [
      { direction: 'inbound', body: 'Do you offer annual plans?' },
      { direction: 'outbound', body: 'We do: two months free on yearly billing.' },
    ],
  },
  {
    contact: 2,
    subject: null,
    messages: [{ direction: 'inbound', body: 'Can someone call me back?' }],
  },
] as const;

/**
 * Seeds a demo workspace for local development: the user `demo@tenantry.dev`, the workspace
 * `demo` they own, a few contacts, tags, conversations with messages, and a message template.
 * Idempotent: when the workspace exists, nothing is created and the credentials are returned.
 *
 * @example
 * ```ts
 * const demo = await seedDemo(tenantry, config.auth);
 * console.log(`sign in as ${demo.email} / ${demo.password}`);
 * ```
 */
export async function seedDemo(
  tenantry: Tenantry<AppDatabase>,
  auth: LocalAuthConfig,
): Promise<{ workspaceSlug: string; email: string; password: string }> {
  const result = { ...demoCredentials };
  if ((await findActiveTenantId(tenantry.db, demoCredentials.workspaceSlug)) !== undefined) {
    return result;
  }
  let session: Awaited<ReturnType<ReturnType<typeof createAuthService>['signUp']>>;
  try {
    session = await createAuthService(tenantry, auth).signUp({
      email: demoCredentials.email,
      password: demoCredentials.password,
      name: 'Demo User',
      workspaceName: 'Demo Workspace',
      workspaceSlug: demoCredentials.workspaceSlug,
    });
  } catch (error) {
    // Another process seeded concurrently: its data stands.
    if (
      isTenantryError(error, 'TENANTRY_ERR_TENANT_SLUG_TAKEN') ||
      (error instanceof AppError && error.code === 'APP_ERR_EMAIL_TAKEN')
    ) {
      return result;
    }
    throw error;
  }
  const userId = session.user.id;
  await tenantry.withTenant({ tenantId: session.workspace.id, userId }, async (db) => {
    const tagNames = [...new Set(contacts.flatMap((contact) => contact.tags))];
    const tags = await db
      .insertInto('tags')
      .values(tagNames.map((name) => ({ name })))
      .returning(['id', 'name'])
      .execute();
    const tagId = new Map(tags.map((tag) => [tag.name, tag.id]));
    const contactIds: string[] = [];
    for (const contact of contacts) {
      const row = await db
        .insertInto('contacts')
        .values({ name: contact.name, phone: contact.phone, email: contact.email })
        .returning('id')
        .executeTakeFirstOrThrow();
      contactIds.push(row.id);
      for (const tag of contact.tags) {
        await db
          .insertInto('contact_tags')
          .values({ contact_id: row.id, tag_id: tagId.get(tag) as string })
          .execute();
      }
    }
    const start = Date.now() - 3 * 60 * 60 * 1000;
    let minute = 0;
    for (const conversation of conversations) {
      const created = await db
        .insertInto('conversations')
        .values({
          contact_id: contactIds[conversation.contact] as string,
          subject: conversation.subject,
          assignee_id: userId,
        })
        .returning('id')
        .executeTakeFirstOrThrow();
      let last = new Date(start);
      for (const message of conversation.messages) {
        last = new Date(start + minute++ * 60_000);
        await db
          .insertInto('messages')
          .values({
            conversation_id: created.id,
            direction: message.direction,
            body: message.body,
            sender_id: message.direction === 'outbound' ? userId : null,
            status: message.direction === 'outbound' ? 'delivered' : 'received',
            created_at: last,
          })
          .execute();
      }
      await db
        .updateTable('conversations')
        .set({ last_message_at: last, updated_at: last })
        .where('id', '=', created.id)
        .execute();
    }
    await db
      .insertInto('message_templates')
      .values({
        name: 'order_shipped',
        language: 'en',
        category: 'utility',
        body: 'Hi {{1}}, your order {{2}} has shipped and should arrive by {{3}}.',
      })
      .execute();
  });
  return result;
}
