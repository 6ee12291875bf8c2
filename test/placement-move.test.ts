import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { createTenantry, isTenantryError, type Tenantry } from 'tenantry';
import {
  createSchemaPlacementRouter,
  defaultTenantSchemaName,
  moveTenant,
  resumeTenantMove,
  rollbackTenantMove,
  type SchemaPlacementRouter,
  type TenantMoveProgress,
  type TenantMoveStep,
} from 'tenantry/placement';
import { createTestDatabase, type TestDatabase } from 'tenantry/testing';
import type { AppDatabase } from '../app/database.ts';
import { withClient } from './fixtures.ts';

const sources = [
  { name: 'app', directory: new URL('../app/migrations/', import.meta.url).pathname },
];

let database: TestDatabase;
let router: SchemaPlacementRouter;
let tenantry: Tenantry<AppDatabase>;
let tenantTables: string[];

async function admin<R extends Record<string, unknown>>(
  text: string,
  values: unknown[] = [],
): Promise<R[]> {
  return withClient(
    database.adminUrl,
    async (client) => (await client.query<R>(text, values)).rows,
  );
}

interface Seeded {
  readonly tenantId: string;
  readonly conversationId: string;
}

/** A pooled tenant with rows in every tenant table of `public`. */
async function seedTenant(slug: string): Promise<Seeded> {
  const tenantId = randomUUID();
  const userId = randomUUID();
  const contactId = randomUUID();
  const tagId = randomUUID();
  const conversationId = randomUUID();
  const messageId = randomUUID();
  const templateId = randomUUID();
  const broadcastId = randomUUID();
  const fileId = randomUUID();
  const sentAt = new Date('2024-05-01T10:00:00Z');
  await admin('insert into tenantry.tenants (id, slug, name) values ($1, $2, $2)', [
    tenantId,
    slug,
  ]);
  await admin(
    `insert into auth.users (id, email, name, password_hash) values ($1, $2, $3, 'unusable')`,
    [userId, `owner@${slug}.test`, slug],
  );
  const statements: [string, unknown[]][] = [
    [
      `insert into public.contacts (tenant_id, id, name, phone, email, attributes)
       values ($1, $2, 'Ada Lovelace', '+15550100001', 'ada@example.com', '{"plan": "gold"}')`,
      [tenantId, contactId],
    ],
    ['insert into public.tags (tenant_id, id, name) values ($1, $2, $3)', [tenantId, tagId, 'vip']],
    ['insert into public.contact_tags values ($1, $2, $3)', [tenantId, contactId, tagId]],
    [
      `insert into public.conversations (tenant_id, id, contact_id, subject) values ($1, $2, $3, 'Order')`,
      [tenantId, conversationId, contactId],
    ],
    [
      `insert into public.messages (tenant_id, id, conversation_id, direction, body, created_at)
       values ($1, $2, $3, 'inbound', 'Has it shipped?', $4)`,
      [tenantId, messageId, conversationId, sentAt],
    ],
    [
      `insert into public.memberships (tenant_id, user_id, role) values ($1, $2, 'owner')`,
      [tenantId, userId],
    ],
    [
      `insert into public.invitations (tenant_id, email, role, token_hash, invited_by, expires_at)
       values ($1, 'new@example.com', 'member', '\\x01', $2, now() + interval '1 day')`,
      [tenantId, userId],
    ],
    [
      `insert into public.workspace_settings (tenant_id, inbound_webhook_secret) values ($1, 'secret')`,
      [tenantId],
    ],
    [
      `insert into public.message_templates (tenant_id, id, name, body) values ($1, $2, 'welcome', 'Hello')`,
      [tenantId, templateId],
    ],
    [
      `insert into public.idempotency_keys (tenant_id, key, request_hash, status_code, response)
       values ($1, 'key-1', '\\x02', 201, '{"ok": true}')`,
      [tenantId],
    ],
    [
      `insert into public.broadcasts (tenant_id, id, name, template_id, body, tag_ids)
       values ($1, $2, 'Launch', $3, 'Hello', array[$4::uuid])`,
      [tenantId, broadcastId, templateId, tagId],
    ],
    [
      'insert into public.broadcast_recipients (tenant_id, broadcast_id, contact_id) values ($1, $2, $3)',
      [tenantId, broadcastId, contactId],
    ],
    [
      `insert into public.channel_deliveries (tenant_id, idempotency_key, contact_id, channel, to_address, body)
       values ($1, 'delivery-1', $2, 'sms', '+15550100001', 'Hello')`,
      [tenantId, contactId],
    ],
    [
      `insert into public.conversation_digests values ($1, date '2024-05-01', 1, 1, 1, 0)`,
      [tenantId],
    ],
    [
      `insert into tenantry.files (tenant_id, id, object_key, file_name, size_bytes, content_type, driver, expires_at)
       values ($1::uuid, $2::uuid, 'tenants/' || $1::text || '/' || $2::text, 'a.txt', 1, 'text/plain', 'local', now() + interval '1 day')`,
      [tenantId, fileId],
    ],
    [
      `insert into public.message_attachments (tenant_id, message_id, message_created_at, file_id, position)
       values ($1, $2, $3, $4, 0)`,
      [tenantId, messageId, sentAt, fileId],
    ],
    [`insert into public.exports (tenant_id, kind) values ($1, 'contacts')`, [tenantId]],
  ];
  for (const [text, values] of statements) await admin(text, values);
  return { tenantId, conversationId };
}

/** Where the catalog says the tenant's rows are: `public` or its schema. */
async function placementOf(tenantId: string): Promise<{ placement: string; schema: string }> {
  const [row] = await admin<{ placement: string; schema_name: string | null }>(
    `select t.placement, p.schema_name from tenantry.tenants t
       left join tenantry.tenant_placements p on p.tenant_id = t.id where t.id = $1`,
    [tenantId],
  );
  assert.ok(row);
  return { placement: row.placement, schema: row.schema_name ?? 'public' };
}

async function schemaExists(schema: string): Promise<boolean> {
  const rows = await admin('select 1 from pg_namespace where nspname = $1', [schema]);
  return rows.length === 1;
}

/** Rows and md5 of every tenant table of the tenant, in one schema (missing schema: none). */
async function checksums(tenantId: string, schema: string): Promise<Record<string, string>> {
  if (!(await schemaExists(schema))) return {};
  const sums: Record<string, string> = {};
  for (const table of tenantTables) {
    const [row] = await admin<{ rows: string; sum: string }>(
      `select count(*)::text as rows, md5(coalesce(string_agg(r, E'\\n' order by r collate "C"), '')) as sum
         from (select t::text as r from "${schema}"."${table}" t where tenant_id = $1) x`,
      [tenantId],
    );
    if (row !== undefined && row.rows !== '0') sums[table] = `${row.rows}:${row.sum}`;
  }
  return sums;
}

async function rowsIn(tenantId: string, schema: string): Promise<number> {
  const sums = await checksums(tenantId, schema);
  return Object.values(sums).reduce((total, entry) => total + Number(entry.split(':')[0]), 0);
}

function isMovingRefusal(error: unknown): boolean {
  for (let current: unknown = error; current !== undefined && current !== null; ) {
    if (isTenantryError(current, 'TENANTRY_ERR_TENANT_MOVING')) return true;
    if ((current as { code?: unknown }).code === 'TM001') return true;
    current = (current as { cause?: unknown }).cause;
  }
  return false;
}

interface Traffic {
  readonly acknowledged: { contactId: string; messageId: string }[];
  readonly errors: unknown[];
  writes: number;
}

/** Writes a contact and a message per unit of work through Tenantry and the router until stopped. */
function startTraffic(
  seeded: Seeded,
  stop: { done: boolean },
): { traffic: Traffic; done: Promise<void> } {
  const traffic: Traffic = { acknowledged: [], errors: [], writes: 0 };
  const done = (async () => {
    while (!stop.done) {
      const contactId = randomUUID();
      const messageId = randomUUID();
      traffic.writes++;
      try {
        await tenantry.withTenant(seeded.tenantId, async (db) => {
          await db
            .insertInto('contacts')
            .values({ id: contactId, name: 'Traffic', phone: contactId } as never)
            .execute();
          await db
            .insertInto('messages')
            .values({
              id: messageId,
              conversation_id: seeded.conversationId,
              direction: 'inbound',
              body: 'traffic',
            } as never)
            .execute();
        });
        traffic.acknowledged.push({ contactId, messageId });
      } catch (error) {
        traffic.errors.push(error);
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
  })();
  return { traffic, done };
}

/** Every acknowledged write is in the tenant's current place exactly once, and nowhere else. */
async function assertLedger(tenantId: string, traffic: Traffic): Promise<void> {
  const { schema } = await placementOf(tenantId);
  const contactIds = traffic.acknowledged.map((write) => write.contactId);
  const messageIds = traffic.acknowledged.map((write) => write.messageId);
  const [contacts] = await admin<{ found: string; distinct: string }>(
    `select count(*)::text as found, count(distinct id)::text as distinct
       from "${schema}".contacts where tenant_id = $1 and id = any($2::uuid[])`,
    [tenantId, contactIds],
  );
  const [messages] = await admin<{ found: string; distinct: string }>(
    `select count(*)::text as found, count(distinct id)::text as distinct
       from "${schema}".messages where tenant_id = $1 and id = any($2::uuid[])`,
    [tenantId, messageIds],
  );
  assert.deepEqual(contacts, {
    found: String(contactIds.length),
    distinct: String(contactIds.length),
  });
  assert.deepEqual(messages, {
    found: String(messageIds.length),
    distinct: String(messageIds.length),
  });
  const other = schema === 'public' ? defaultTenantSchemaName(tenantId) : 'public';
  assert.equal(await rowsIn(tenantId, other), 0, `no rows of the tenant are left in ${other}`);
}

before(async () => {
  database = await createTestDatabase();
  router = await createSchemaPlacementRouter({ connectionString: database.appUrl });
  tenantry = await createTenantry<AppDatabase>({
    connectionString: database.appUrl,
    tenantSchema: router.schemaFor,
  });
  const rows = await admin<{ relname: string }>(
    `select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relispartition
        and exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant_id')
      order by 1`,
  );
  tenantTables = rows.map((row) => row.relname);
});

after(async () => {
  await tenantry?.close();
  await router?.close();
  await database?.drop();
});

describe('online tenant moves', () => {
  test('the seed fills every tenant table of the pool', async () => {
    const seeded = await seedTenant('seed-check');
    const sums = await checksums(seeded.tenantId, 'public');
    assert.deepEqual(Object.keys(sums).sort(), [...tenantTables].sort());
  });

  test('pool -> schema -> pool under concurrent traffic: nothing lost or doubled, others untouched', async () => {
    const moving = await seedTenant('mover');
    const other = await seedTenant('neighbour');
    const idle = await seedTenant('idle');
    const idleBefore = await checksums(idle.tenantId, 'public');
    const moverBefore = await checksums(moving.tenantId, 'public');
    const schema = defaultTenantSchemaName(moving.tenantId);

    const stop = { done: false };
    const mover = startTraffic(moving, stop);
    const neighbour = startTraffic(other, stop);
    const waitForWrites = async (count: number) => {
      const deadline = Date.now() + 20_000;
      const target = mover.traffic.acknowledged.length + count;
      while (mover.traffic.acknowledged.length < target) {
        if (Date.now() > deadline) {
          assert.fail(
            `the moving tenant made no progress (${mover.traffic.acknowledged.length} ok, ${events.length} events): ${String(mover.traffic.errors.at(-1))} ${String((mover.traffic.errors.at(-1) as Error | undefined)?.cause)}`,
          );
        }
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    };
    const events: TenantMoveProgress[] = [];
    try {
      await waitForWrites(20);
      const toSchema = await moveTenant({
        connectionString: database.adminUrl,
        tenantId: moving.tenantId,
        to: 'schema',
        sources,
        fenceGraceMs: 500,
        onProgress: async (event) => {
          events.push(event);
          // Writes land between the snapshot copy and the hold: the delta must carry them.
          if (event.step === 'copied' && event.table === undefined) await waitForWrites(10);
        },
      });
      assert.equal(toSchema.step, 'finished');
      assert.equal(toSchema.toSchema, schema);
      assert.ok(toSchema.holdMs !== null && toSchema.holdMs >= 0);
      assert.ok(
        toSchema.tables.some((table) => table.table === 'contacts' && table.deltaInserted > 0),
        'rows written after the snapshot were caught up in the hold',
      );
      assert.deepEqual(await placementOf(moving.tenantId), { placement: 'schema', schema });
      await waitForWrites(20);

      const toPool = await moveTenant({
        connectionString: database.adminUrl,
        tenantId: moving.tenantId,
        to: 'pool',
        onProgress: async (event) => {
          events.push(event);
          if (event.step === 'copied' && event.table === undefined) await waitForWrites(10);
        },
      });
      assert.equal(toPool.step, 'finished');
      assert.equal(await schemaExists(schema), false);
      await waitForWrites(20);
    } finally {
      stop.done = true;
      await Promise.all([mover.done, neighbour.done]);
    }

    assert.deepEqual(await placementOf(moving.tenantId), { placement: 'pool', schema: 'public' });
    assert.deepEqual(neighbour.traffic.errors, [], 'the other tenant saw no error at all');
    assert.ok(neighbour.traffic.acknowledged.length > 0);
    const unexpected = mover.traffic.errors.filter((error) => !isMovingRefusal(error));
    assert.deepEqual(unexpected, [], 'the moved tenant saw only "moving" refusals');
    await assertLedger(moving.tenantId, mover.traffic);
    await assertLedger(other.tenantId, neighbour.traffic);
    assert.deepEqual(await checksums(idle.tenantId, 'public'), idleBefore);

    // Tables the traffic did not touch came back identical, row for row.
    const moverAfter = await checksums(moving.tenantId, 'public');
    for (const table of tenantTables) {
      if (['contacts', 'messages', 'contact_search_terms'].includes(table)) continue;
      assert.equal(moverAfter[table], moverBefore[table], `${table} unchanged by the round trip`);
    }
    assert.ok(events.some((event) => event.phase === 'copy' && event.table === 'contacts'));
    const fences = await admin(
      `select 1 from pg_trigger where tgname like 'tenantry_move_fence_%'`,
    );
    assert.equal(fences.length, 0, 'the write fences are gone');
    const [status] = await admin<{ status: string }>(
      'select status from tenantry.tenants where id = $1',
      [moving.tenantId],
    );
    assert.equal(status?.status, 'active');
  });

  test('a crash at each step leaves the tenant served from one place; resume completes and rollback restores', async () => {
    const seeded = await seedTenant('crashy');
    const other = await seedTenant('crashy-neighbour');
    const original = await checksums(seeded.tenantId, 'public');
    const steps: TenantMoveStep[] = [
      'started',
      'provisioned',
      'copied',
      'held',
      'switched',
      'cleaned',
    ];
    let index = 0;
    for (const direction of ['schema', 'pool'] as const) {
      for (const crashAt of steps) {
        index++;
        const before = await placementOf(seeded.tenantId);
        const crash = new Error(`crash after ${crashAt}`);
        await assert.rejects(
          moveTenant({
            connectionString: database.adminUrl,
            tenantId: seeded.tenantId,
            to: before.placement === 'pool' ? 'schema' : 'pool',
            sources,
            fenceGraceMs: 0,
            onProgress: (event) => {
              if (event.step === crashAt && event.table === undefined) throw crash;
            },
          }),
          (error) => error === crash,
        );
        const switched = crashAt === 'switched' || crashAt === 'cleaned';
        const served = await placementOf(seeded.tenantId);
        assert.equal(
          served.placement,
          switched ? (before.placement === 'pool' ? 'schema' : 'pool') : before.placement,
          `placement after a crash at ${crashAt}`,
        );
        assert.deepEqual(
          await checksums(seeded.tenantId, served.schema),
          original,
          `served rows intact after a crash at ${crashAt}`,
        );
        const [status] = await admin<{ status: string }>(
          'select status from tenantry.tenants where id = $1',
          [seeded.tenantId],
        );
        assert.equal(status?.status, crashAt === 'held' ? 'moving' : 'active');
        if (crashAt === 'held') {
          // The fence: the held tenant's writes are refused at the database, its reads and other
          // tenants' writes go through.
          await assert.rejects(
            tenantry.withTenant(seeded.tenantId, (db) =>
              db
                .insertInto('tags')
                .values({ name: 'during-hold' } as never)
                .execute(),
            ),
            (error) => isMovingRefusal(error),
          );
          const read = await tenantry.withTenant(seeded.tenantId, (db) =>
            db.selectFrom('tags').select('name').execute(),
          );
          assert.deepEqual(
            read.map((row) => row.name),
            ['vip'],
          );
          await tenantry.withTenant(other.tenantId, (db) =>
            db
              .insertInto('tags')
              .values({ name: `during-hold-${index}` } as never)
              .execute(),
          );
        }
        const read = await tenantry.withTenant(seeded.tenantId, (db) =>
          db.selectFrom('contacts').select('id').execute(),
        );
        assert.equal(read.length, 1, `the tenant reads its contact after a crash at ${crashAt}`);

        const rollback = !switched && (index + (direction === 'pool' ? 1 : 0)) % 2 === 1;
        if (switched) {
          await assert.rejects(
            rollbackTenantMove({ connectionString: database.adminUrl, tenantId: seeded.tenantId }),
            (error) => isTenantryError(error, 'TENANTRY_ERR_TENANT_STATE_CONFLICT'),
          );
        }
        const finished = rollback
          ? await rollbackTenantMove({
              connectionString: database.adminUrl,
              tenantId: seeded.tenantId,
            })
          : await resumeTenantMove({
              connectionString: database.adminUrl,
              tenantId: seeded.tenantId,
              sources,
              fenceGraceMs: 0,
            });
        assert.equal(finished.step, rollback ? 'rolled_back' : 'finished');
        const now = await placementOf(seeded.tenantId);
        const expected = rollback ? before : { placement: direction, schema: now.schema };
        assert.equal(now.placement, expected.placement, `${direction} ${crashAt}`);
        assert.deepEqual(await checksums(seeded.tenantId, now.schema), original);
        const elsewhere =
          now.schema === 'public' ? defaultTenantSchemaName(seeded.tenantId) : 'public';
        assert.equal(await rowsIn(seeded.tenantId, elsewhere), 0, `nothing left in ${elsewhere}`);
        if (now.schema === 'public') assert.equal(await schemaExists(elsewhere), false);
        const [active] = await admin<{ status: string }>(
          'select status from tenantry.tenants where id = $1',
          [seeded.tenantId],
        );
        assert.equal(active?.status, 'active');
        // Rolled back: move it the intended way before the next crash of this direction.
        if (rollback) {
          await moveTenant({
            connectionString: database.adminUrl,
            tenantId: seeded.tenantId,
            to: direction,
            sources,
            fenceGraceMs: 0,
          });
        }
        // Back to the start of this direction for the next crash.
        if (crashAt !== 'cleaned') {
          await moveTenant({
            connectionString: database.adminUrl,
            tenantId: seeded.tenantId,
            to: direction === 'schema' ? 'pool' : 'schema',
            sources,
            fenceGraceMs: 0,
          });
        }
      }
    }
    const fences = await admin(
      `select 1 from pg_trigger where tgname like 'tenantry_move_fence_%'`,
    );
    assert.equal(fences.length, 0);
  });

  test('a second move of the same tenant and a move to its own placement are refused', async () => {
    const seeded = await seedTenant('refusals');
    await assert.rejects(
      moveTenant({ connectionString: database.adminUrl, tenantId: seeded.tenantId, to: 'pool' }),
      (error) => isTenantryError(error, 'TENANTRY_ERR_TENANT_STATE_CONFLICT'),
    );
    await assert.rejects(
      resumeTenantMove({ connectionString: database.adminUrl, tenantId: seeded.tenantId }),
      (error) => isTenantryError(error, 'TENANTRY_ERR_TENANT_STATE_CONFLICT'),
    );
    await assert.rejects(
      moveTenant({
        connectionString: database.adminUrl,
        tenantId: seeded.tenantId,
        to: 'schema',
        sources,
        onProgress: (event) => {
          if (event.step === 'copied' && event.table === undefined) throw new Error('stop');
        },
      }),
      /stop/,
    );
    await assert.rejects(
      moveTenant({
        connectionString: database.adminUrl,
        tenantId: seeded.tenantId,
        to: 'schema',
        sources,
      }),
      (error) => isTenantryError(error, 'TENANTRY_ERR_TENANT_STATE_CONFLICT'),
    );
    const rolledBack = await rollbackTenantMove({
      connectionString: database.adminUrl,
      tenantId: seeded.tenantId,
    });
    assert.equal(rolledBack.step, 'rolled_back');
    assert.equal(await schemaExists(defaultTenantSchemaName(seeded.tenantId)), false);
  });
});
