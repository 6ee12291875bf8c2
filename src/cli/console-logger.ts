import type { Logger } from '../logger.ts';

const levels = { debug: 10, info: 20, warn: 30, error: 40 } as const;
type Level = keyof typeof levels;

/** A line-per-event logger for the CLI, written to stderr so stdout stays machine-readable. */
export function createConsoleLogger(level: string): Logger {
  const threshold = levels[(level in levels ? level : 'info') as Level];
  const write = (at: Level) => (fields: object, message?: string) => {
    if (levels[at] < threshold) return;
    const detail = Object.entries(fields)
      .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`)
      .join(' ');
    process.stderr.write(
      `${at === 'info' ? '' : `${at}: `}${message ?? ''}${detail === '' ? '' : ` ${detail}`}\n`,
    );
  };
  return Object.freeze({
    debug: write('debug'),
    info: write('info'),
    warn: write('warn'),
    error: write('error'),
  });
}
