/**
 * A command line the CLI cannot act on (a bad option value, a module that cannot be loaded): the
 * CLI prints its message, which names the fix, and exits with code 2.
 *
 * @example
 * ```ts
 * throw new UsageError('--limit must be an integer from 1 to 1000, got "abc".');
 * ```
 */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}
