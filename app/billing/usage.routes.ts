import { sql } from 'kysely';
import { createQuotas } from 'tenantry/billing';
import { requireTenant } from 'tenantry/fastify';
import { Type } from 'typebox';
import { ProblemSchema } from '../conversations/conversations.schemas.ts';
import type { AppInstance, AppServices } from '../http/types.ts';

const Nullable = <T extends ReturnType<typeof Type.Integer>>(schema: T) =>
  Type.Union([schema, Type.Null()]);

const EntitlementSchema = Type.Object({
  metric: Type.String(),
  kind: Type.Union([Type.Literal('count'), Type.Literal('period'), Type.Literal('rate')]),
  unit: Type.String(),
  limit: Nullable(Type.Integer()),
  used: Nullable(Type.Integer()),
  remaining: Nullable(Type.Integer()),
});

const UsageSchema = Type.Object({
  plan: Type.String(),
  periodStart: Type.String({ format: 'date-time' }),
  periodEnd: Type.String({ format: 'date-time' }),
  entitlements: Type.Array(EntitlementSchema),
});

const quotas = createQuotas();

/**
 * The workspace's own plan, limits and usage: `GET /usage` lists every metric with its limit,
 * what is used (count metrics now, period metrics this billing period) and what remains, read in
 * the workspace's transaction (RLS: never another workspace's numbers). API keys need
 * `usage:read`. Operators see every workspace with `tenantry usage`.
 *
 * @example
 * ```ts
 * await app.register(usageRoutes, { ...services, prefix: '/v1' });
 * ```
 */
export async function usageRoutes(app: AppInstance, _options: AppServices): Promise<void> {
  app.get(
    '/usage',
    {
      config: { scope: 'usage:read' },
      schema: {
        tags: ['usage'],
        summary: "The workspace's plan, limits and usage in the current billing period",
        response: { 200: UsageSchema, 401: ProblemSchema, 403: ProblemSchema },
      },
    },
    async (request) => {
      const { db, id: tenantId } = requireTenant(request);
      const entitlements = await quotas.entitlements(db);
      const tenant = await sql<{ plan: string }>`
        select plan from tenantry.tenants where id = ${tenantId}`.execute(db);
      const first = entitlements[0];
      return {
        plan: tenant.rows[0]?.plan ?? 'free',
        periodStart: (first?.periodStart ?? new Date()).toISOString(),
        periodEnd: (first?.periodEnd ?? new Date()).toISOString(),
        entitlements: entitlements.map((entry) => ({
          metric: entry.metric,
          kind: entry.kind,
          unit: entry.unit,
          limit: entry.limit,
          used: entry.used,
          remaining: entry.remaining,
        })),
      };
    },
  );
}
