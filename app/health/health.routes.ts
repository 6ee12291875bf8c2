import { sql } from 'kysely';
import type { PendingMigration } from 'tenantry';
import { Type } from 'typebox';
import type { AppInstance, AppServices } from '../http/types.ts';

/** `/healthz` (the process is up) and `/readyz` (database reachable, migrations current). */
export function healthRoutes(
  pendingMigrations: (db: AppServices['tenantry']['db']) => Promise<PendingMigration[]>,
) {
  return async (app: AppInstance, options: AppServices) => {
    app.get(
      '/healthz',
      {
        config: { tenant: 'none' },
        schema: {
          tags: ['health'],
          summary: 'Liveness: the process is up',
          response: { 200: Type.Object({ status: Type.Literal('ok') }) },
        },
      },
      async () => ({ status: 'ok' as const }),
    );

    app.get(
      '/readyz',
      {
        config: { tenant: 'none' },
        schema: {
          tags: ['health'],
          summary: 'Readiness: the database answers and every migration is applied',
          response: {
            200: Type.Object({ status: Type.Literal('ready') }),
            503: Type.Object({
              status: Type.Literal('unavailable'),
              reason: Type.String(),
              pending: Type.Optional(Type.Array(Type.String())),
            }),
          },
        },
      },
      async (_request, reply) => {
        let pending: PendingMigration[];
        try {
          await sql`select 1`.execute(options.tenantry.db);
          pending = await pendingMigrations(options.tenantry.db);
        } catch {
          return reply
            .code(503)
            .send({ status: 'unavailable' as const, reason: 'database unreachable' });
        }
        if (pending.length > 0) {
          return reply.code(503).send({
            status: 'unavailable' as const,
            reason: 'migrations pending',
            pending: pending.map((m) => `${m.source}/${m.version}-${m.name} (${m.state})`),
          });
        }
        return { status: 'ready' as const };
      },
    );
  };
}
