/**
 * Runs one benchmark by name: `npm run bench -- context`.
 */
const benchmarks: Record<string, () => Promise<{ run: () => Promise<void> }>> = {
  context: () => import('./context.ts'),
  http: () => import('./http.ts'),
  jobs: () => import('./jobs.ts'),
  quotas: () => import('./quotas.ts'),
  'rate-limit': () => import('./rate-limit.ts'),
  runners: () => import('./runners.ts'),
  scale: () => import('./scale.ts'),
  search: () => import('./search.ts'),
};

const name = process.argv[2];
const load = name === undefined ? undefined : benchmarks[name];
if (load === undefined) {
  console.error(`usage: npm run bench -- <name>   (one of: ${Object.keys(benchmarks).join(', ')})`);
  process.exit(2);
}
await (await load()).run();
