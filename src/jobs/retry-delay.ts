/**
 * The delay before retrying a job that failed its `attempt`-th try: exponential
 * (`baseDelayMs * 2^(attempt-1)`, capped at `maxDelayMs`), then "equal jitter": a uniformly
 * random 50-100 % of it, so jobs that failed together do not retry together.
 *
 * @example
 * ```ts
 * import { retryDelayMs } from 'tenantry/jobs';
 * retryDelayMs(3, { baseDelayMs: 1000, maxDelayMs: 60_000 }); // between 2000 and 4000
 * ```
 */
export function retryDelayMs(
  attempt: number,
  options: { readonly baseDelayMs: number; readonly maxDelayMs: number },
  random: () => number = Math.random,
): number {
  const exponent = Math.min(Math.max(attempt, 1) - 1, 30);
  const ceiling = Math.min(options.maxDelayMs, options.baseDelayMs * 2 ** exponent);
  return Math.round(ceiling / 2 + (ceiling / 2) * random());
}
