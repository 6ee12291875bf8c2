/**
 * `npm run bench` runs every benchmark, each in a child process of its own, and writes what they
 * print, the machine's details and the command reproducing each into the generated section of
 * docs/benchmarks.md. `npm run bench -- <name>` runs one benchmark in this process and only
 * prints. In the run of every benchmark, `scale` loads 1,000,000 messages per database instead
 * of its default 10,000,000 (about 15 minutes per database to load on a 2-core machine): set
 * BENCH_SCALE_MESSAGES to choose.
 */
import { spawn } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { formatMachine, type MachineDetails, machineDetails, writeDocSection } from './report.ts';

interface Benchmark {
  readonly load: () => Promise<{ run: () => Promise<void> }>;
  /** What it measures, one line. */
  readonly title: string;
  /** The command that reproduces its run of every benchmark. */
  readonly command: string;
  /** Its output is markdown (copied as is) rather than text (copied in a code block). */
  readonly markdown?: boolean;
  /** Environment for it in the run of every benchmark (a value already set wins). */
  readonly allRunEnv?: Readonly<Record<string, string>>;
}

const quickScaleMessages = '1000000';

const benchmarks: Record<string, Benchmark> = {
  context: {
    load: () => import('./context.ts'),
    title: 'tenant-scoped point lookup against raw `pg`',
    command: 'npm run bench -- context',
  },
  http: {
    load: () => import('./http.ts'),
    title: 'GET a contact through the whole HTTP stack against a bare Fastify handler',
    command: 'npm run bench -- http',
  },
  peer: {
    load: () => import('./peer.ts'),
    title:
      'Tenantry against the Prisma RLS example pattern and `@usebetterdev/tenant`, reads and writes at 1/8/32 in flight',
    command: 'npm run bench -- peer',
    markdown: true,
  },
  placement: {
    load: () => import('./placement.ts'),
    title:
      'lookups through the placement router (pooled, schema, database tenants) and online moves',
    command: 'npm run bench -- placement',
  },
  jobs: {
    load: () => import('./jobs.ts'),
    title: 'tenant jobs against plain graphile-worker, and fairness',
    command: 'npm run bench -- jobs',
  },
  runners: {
    load: () => import('./runners.ts'),
    title: 'graphile-worker against pg-boss for tenant jobs',
    command: 'npm run bench -- runners',
  },
  quotas: {
    load: () => import('./quotas.ts'),
    title: 'what an exact, database-enforced quota costs a write',
    command: 'npm run bench -- quotas',
  },
  'rate-limit': {
    load: () => import('./rate-limit.ts'),
    title: 'the memory and PostgreSQL rate-limit stores',
    command: 'npm run bench -- rate-limit',
  },
  search: {
    load: () => import('./search.ts'),
    title: 'conversation and contact search under RLS',
    command: 'npm run bench -- search',
  },
  scale: {
    load: () => import('./scale.ts'),
    title: 'newest 50 messages of a tenant, 100 vs 10,000 tenants',
    command: `BENCH_SCALE_MESSAGES=${quickScaleMessages} npm run bench -- scale`,
    allRunEnv: { BENCH_SCALE_MESSAGES: quickScaleMessages },
  },
};

interface Outcome {
  readonly name: string;
  readonly exitCode: number;
  readonly seconds: number;
  readonly loadAverage: number;
  readonly stdout: string;
  readonly stderrTail: string;
}

const name = process.argv[2];
if (name === undefined) {
  process.exitCode = await runAll();
} else {
  const benchmark = benchmarks[name];
  if (benchmark === undefined) {
    console.error(
      `usage: npm run bench [-- <name>]   (every benchmark, or one of: ${Object.keys(benchmarks).join(', ')})`,
    );
    process.exit(2);
  }
  await (await benchmark.load()).run();
}

/** Runs every benchmark in turn, then writes docs/benchmarks.md; returns the exit code. */
async function runAll(): Promise<number> {
  const machine = machineDetails();
  const started = performance.now();
  const outcomes: Outcome[] = [];
  for (const [benchName, benchmark] of Object.entries(benchmarks)) {
    process.stderr.write(`\n=== bench ${benchName} (${benchmark.command})\n`);
    outcomes.push(await runChild(benchName, benchmark));
  }
  const minutes = (performance.now() - started) / 60_000;
  await writeDocSection('bench-latest', render(machine, outcomes, minutes), {
    before: '## `context`: tenant-scoped point lookup',
  });
  const failed = outcomes.filter((outcome) => outcome.exitCode !== 0);
  process.stderr.write(
    `\nbench: ${outcomes.length - failed.length} passed, ${failed.length} failed in ${minutes.toFixed(1)} min; docs/benchmarks.md updated\n`,
  );
  return failed.length === 0 ? 0 : 1;
}

/** Runs one benchmark as `node bench/run.ts <name>`, echoing and keeping its output. */
function runChild(benchName: string, benchmark: Benchmark): Promise<Outcome> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const [key, value] of Object.entries(benchmark.allRunEnv ?? {})) env[key] ??= value;
  const loadAverage = Number((os.loadavg()[0] ?? 0).toFixed(2));
  const started = performance.now();
  const child = spawn(
    process.execPath,
    [...process.execArgv, fileURLToPath(import.meta.url), benchName],
    { env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const stdout: Buffer[] = [];
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => {
    stdout.push(chunk);
    process.stdout.write(chunk);
  });
  child.stderr.on('data', (chunk: Buffer) => {
    process.stderr.write(chunk);
    stderr = (stderr + chunk.toString('utf8')).slice(-8000);
  });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      resolve({
        name: benchName,
        exitCode: code ?? (signal === null ? 1 : 128),
        seconds: (performance.now() - started) / 1000,
        loadAverage,
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderrTail: stderr.split('\n').slice(-30).join('\n'),
      });
    });
  });
}

/** The last line a benchmark printed, when it is the JSON object they all end with. */
function lastJson(stdout: string): Record<string, unknown> | undefined {
  const last = stdout.trimEnd().split('\n').at(-1) ?? '';
  if (!last.startsWith('{')) return undefined;
  try {
    return JSON.parse(last) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

/** The headline numbers of a benchmark's JSON line: its ratios, growth and speedups. */
function headline(json: Record<string, unknown> | undefined): string {
  if (json === undefined) return 'no JSON summary';
  const entries = Object.entries(json).filter(([key, value]) => {
    return typeof value === 'number' && /ratio|growth|speedup|_vs_/i.test(key);
  });
  const shown = entries.length > 0 ? entries : Object.entries(json).filter(([k]) => k !== 'bench');
  return shown
    .slice(0, 8)
    .map(([key, value]) => `${key} ${String(value)}`)
    .join(', ');
}

function render(machine: MachineDetails, outcomes: readonly Outcome[], minutes: number): string {
  const lines: string[] = [
    '## Latest run of every benchmark',
    '',
    `Generated by \`npm run bench\` (every benchmark in turn, ${minutes.toFixed(0)} min). ` +
      'Each benchmark starts its own embedded PostgreSQL and measures Tenantry and its baseline in ' +
      'the same process, in interleaved rounds: compare the ratios within a run; absolute rates move ' +
      'with whatever else the machine is doing (the 1-minute load average before each benchmark is ' +
      'given; on an idle 2-core machine it is below 0.5).',
    '',
    `Machine: ${formatMachine(machine)}.`,
    '',
    '| benchmark | what | headline (from its JSON line) | time | load before | reproduce |',
    '| --- | --- | --- | --: | --: | --- |',
  ];
  for (const outcome of outcomes) {
    const benchmark = benchmarks[outcome.name] as Benchmark;
    const result =
      outcome.exitCode === 0
        ? headline(lastJson(outcome.stdout))
        : `**failed** (exit ${outcome.exitCode})`;
    lines.push(
      `| [${outcome.name}](#latest-${outcome.name}) | ${benchmark.title} | ${result} | ` +
        `${(outcome.seconds / 60).toFixed(1)} min | ${outcome.loadAverage} | \`${benchmark.command}\` |`,
    );
  }
  for (const outcome of outcomes) {
    const benchmark = benchmarks[outcome.name] as Benchmark;
    lines.push(
      '',
      `<a id="latest-${outcome.name}"></a>`,
      '',
      `### Latest \`${outcome.name}\``,
      '',
      `\`${benchmark.command}\` — ${(outcome.seconds / 60).toFixed(1)} min, load average ${outcome.loadAverage} before it.`,
      '',
    );
    const output = outcome.stdout.trimEnd();
    if (benchmark.markdown === true && outcome.exitCode === 0) {
      const body = output.split('\n');
      const json = body.at(-1)?.startsWith('{') === true ? body.pop() : undefined;
      lines.push(...body);
      if (json !== undefined) lines.push('', '```json', json, '```');
    } else {
      lines.push('```text', output === '' ? '(nothing printed)' : output, '```');
    }
    if (outcome.exitCode !== 0) {
      lines.push('', `Exit code ${outcome.exitCode}; the end of its stderr:`, '', '```text');
      lines.push(outcome.stderrTail.trimEnd(), '```');
    }
  }
  return lines.join('\n');
}
