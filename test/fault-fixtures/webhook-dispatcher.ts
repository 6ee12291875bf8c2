// A webhook dispatcher in its own process, for the dispatcher-crash fault test: it polls until the
// parent kills it, and reports "started" on stdout once it polls.
// Usage: node --conditions=development webhook-dispatcher.ts '{"adminUrl": "...",
//   "requestTimeoutMs": 5000, "leaseMs": 5500}'
import { createWebhookDispatcher } from 'tenantry/billing';

const { adminUrl, requestTimeoutMs, leaseMs } = JSON.parse(process.argv[2] ?? '{}') as {
  adminUrl: string;
  requestTimeoutMs: number;
  leaseMs: number;
};
const dispatcher = createWebhookDispatcher({
  connectionString: adminUrl,
  pollIntervalMs: 20,
  requestTimeoutMs,
  leaseMs,
  retry: { baseDelayMs: 10, maxDelayMs: 50 },
});
await dispatcher.start();
process.stdout.write('started\n');
