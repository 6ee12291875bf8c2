import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyBaseLogger, FastifyInstance, RawServerDefault } from 'fastify';
import type { TenantDirectory, Tenantry } from 'tenantry';
import type { AuthConfig } from '../config.ts';
import type { AppDatabase } from '../database.ts';

/** The app's Fastify instance, with TypeBox schemas typing requests and replies. */
export type AppInstance = FastifyInstance<
  RawServerDefault,
  IncomingMessage,
  ServerResponse,
  FastifyBaseLogger,
  TypeBoxTypeProvider
>;

/** What route modules receive besides the instance (registered as plugin options). */
export interface AppServices {
  readonly tenantry: Tenantry<AppDatabase>;
  readonly directory: TenantDirectory;
  readonly auth: AuthConfig;
  readonly webhookToleranceSec: number;
}
