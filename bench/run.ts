/**
 * `npm run bench` runs every benchmark, each in a child process of its own, and writes what they
 * print, the machine's details and the command reproducing each into the generated section of
 * docs/benchmarks.md. `npm run bench -- <name>` runs one benchmark in this process and only
 * prints; `npm run bench -- --write <name>...` runs those and rewrites the section with the last
 * run of every other benchmark (kept in .tenantry/bench-results/). In these runs `scale` loads
 * 1,000,000 messages per database instead of its default 10,000,000 (about 15 minutes per
 * database to load on a 2-core machine): set BENCH_SCALE_MESSAGES to choose.
 */
import { spawn } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  busyMachineNote,
  cpuBusyPercent,
  formatMachine,
  type MachineDetails,
  machineDetails,
  writeDocSection,
} from './report.ts';

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
  /** The machine's 1-minute load average just before it started. */
  readonly loadAverage: number;
  /** Share of the CPUs busy in the second before it started (other work); absent in old results. */
  readonly cpuBusyBefore?: number;
  readonly startedAt: string;
  /** The machine it ran on, without load or date. */
  readonly machine: string;
  readonly stdout: string;
  readonly stderrTail: string;
}

/** The last outcome of each benchmark, kept so a partial run can rewrite the whole section. */
const resultsDirectory = '.tenantry/bench-results';
const usage =
  'usage: npm run bench                          every benchmark, rewrites docs/benchmarks.md\n' +
  '       npm run bench -- <name>                one benchmark, printed only\n' +
  '       npm run bench -- --write <name>...     those benchmarks, then rewrites docs/benchmarks.md\n' +
  `                                              with the last run of the others\n(names: ${Object.keys(benchmarks).join(', ')})`;

const args = process.argv.slice(2);
if (args.length === 0) {
  process.exitCode = await runAndWrite(Object.keys(benchmarks));
} else if (args[0] === '--write') {
  const names = args.slice(1);
  if (names.length === 0 || names.some((benchName) => benchmarks[benchName] === undefined)) {
    console.error(usage);
    process.exit(2);
  }
  process.exitCode = await runAndWrite(names);
} else {
  const benchmark = args.length === 1 ? benchmarks[args[0] as string] : undefined;
  if (benchmark === undefined) {
    console.error(usage);
    process.exit(2);
  }
  await benchmark.load().then((module) => module.run());
}

/**
 * Runs the named benchmarks in turn, each in a child process, keeps their outcomes, then writes
 * the generated section of docs/benchmarks.md from the last outcome of every benchmark; returns
 * the exit code.
 */
async function runAndWrite(names: readonly string[]): Promise<number> {
  const machine = await machineDetails();
  const started = performance.now();
  await mkdir(resultsDirectory, { recursive: true });
  let failed = 0;
  for (const benchName of names) {
    const benchmark = benchmarks[benchName] as Benchmark;
    process.stderr.write(`\n=== bench ${benchName} (${benchmark.command})\n`);
    const outcome = await runChild(benchName, benchmark, machine);
    if (outcome.exitCode !== 0) failed++;
    await writeFile(join(resultsDirectory, `${benchName}.json`), JSON.stringify(outcome));
  }
  const minutes = (performance.now() - started) / 60_000;
  const outcomes = new Map<string, Outcome>();
  for (const benchName of Object.keys(benchmarks)) {
    const stored = await readFile(join(resultsDirectory, `${benchName}.json`), 'utf8').then(
      (text) => JSON.parse(text) as Outcome,
      () => undefined,
    );
    if (stored !== undefined) outcomes.set(benchName, stored);
  }
  await writeDocSection('bench-latest', render(machine, outcomes, names), {
    before: '## `context`: tenant-scoped point lookup',
  });
  process.stderr.write(
    `\nbench: ${names.length - failed} passed, ${failed} failed in ${minutes.toFixed(1)} min; docs/benchmarks.md updated\n`,
  );
  return failed === 0 ? 0 : 1;
}

/** Runs one benchmark as `node bench/run.ts <name>`, echoing and keeping its output. */
async function runChild(
  benchName: string,
  benchmark: Benchmark,
  machine: MachineDetails,
): Promise<Outcome> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const [key, value] of Object.entries(benchmark.allRunEnv ?? {})) env[key] ??= value;
  const cpuBusyBefore = await cpuBusyPercent(1000);
  const loadAverage = Number((os.loadavg()[0] ?? 0).toFixed(2));
  const startedAt = new Date().toISOString();
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
        cpuBusyBefore,
        startedAt,
        machine: machineWithoutLoad(machine),
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
  const shown =
    entries.length > 0
      ? entries
      : Object.entries(json).filter(
          ([key, value]) =>
            key !== 'bench' &&
            (typeof value === 'number' || (typeof value === 'string' && value.length <= 40)),
        );
  return shown
    .slice(0, 8)
    .map(
      ([key, value]) =>
        `${key} ${typeof value === 'number' ? Number(value.toFixed(3)) : String(value)}`,
    )
    .join(', ');
}

/** The machine line without what changes from one run to the next (load, date). */
function machineWithoutLoad(machine: MachineDetails): string {
  return formatMachine(machine).replace(/, load average .*$/, '');
}

function busyBefore(outcome: Outcome): string {
  return outcome.cpuBusyBefore === undefined ? 'not measured' : `${outcome.cpuBusyBefore} %`;
}

function when(iso: string): string {
  return `${iso.slice(0, 16).replace('T', ' ')} UTC`;
}

function render(
  machine: MachineDetails,
  outcomes: ReadonlyMap<string, Outcome>,
  ranNow: readonly string[],
): string {
  const shown = [...outcomes.values()];
  const all = ranNow.length === Object.keys(benchmarks).length;
  const lines: string[] = [
    '## Latest run of every benchmark',
    '',
    `Generated by \`npm run bench\` on ${when(machine.date)}` +
      (all
        ? ' (every benchmark in turn).'
        : ` (\`--write ${ranNow.join(' ')}\`; the other benchmarks are from their last run, see "run at").`) +
      ' Each benchmark starts its own embedded PostgreSQL and measures Tenantry and its baseline in ' +
      'the same process, in interleaved rounds: compare the ratios within a run; absolute rates move ' +
      'with whatever else the machine is doing ("CPU busy before": the share of the CPUs other work ' +
      'took in the second before the benchmark started; near 0 on a quiet machine).',
    '',
    `Machine: ${machineWithoutLoad(machine)}.`,
    '',
  ];
  // Results kept from before the CPU was sampled: the load average per core stands in.
  const note = busyMachineNote(
    shown.map(
      (outcome) =>
        outcome.cpuBusyBefore ??
        Math.min(100, Math.round((outcome.loadAverage / machine.cores) * 100)),
    ),
  );
  if (note !== undefined) lines.push(note, '');
  lines.push(
    '| benchmark | what | headline (from its JSON line) | run at | time | CPU busy before | reproduce |',
    '| --- | --- | --- | --- | --: | --: | --- |',
  );
  for (const [benchName, benchmark] of Object.entries(benchmarks)) {
    const outcome = outcomes.get(benchName);
    if (outcome === undefined) {
      lines.push(
        `| ${benchName} | ${benchmark.title} | not run yet | | | | \`${benchmark.command}\` |`,
      );
      continue;
    }
    const result =
      outcome.exitCode === 0
        ? headline(lastJson(outcome.stdout))
        : `**failed** (exit ${outcome.exitCode})`;
    lines.push(
      `| [${benchName}](#latest-${benchName}) | ${benchmark.title} | ${result} | ${when(outcome.startedAt)} | ` +
        `${(outcome.seconds / 60).toFixed(1)} min | ${busyBefore(outcome)} | \`${benchmark.command}\` |`,
    );
  }
  for (const [benchName, benchmark] of Object.entries(benchmarks)) {
    const outcome = outcomes.get(benchName);
    if (outcome === undefined) continue;
    lines.push(
      '',
      `<a id="latest-${benchName}"></a>`,
      '',
      `### Latest \`${benchName}\``,
      '',
      `\`${benchmark.command}\` — run at ${when(outcome.startedAt)}, ${(outcome.seconds / 60).toFixed(1)} min, ` +
        `CPU ${busyBefore(outcome)} busy and load average ${outcome.loadAverage} just before it` +
        (outcome.machine === machineWithoutLoad(machine) ? '.' : `, on ${outcome.machine}.`),
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
