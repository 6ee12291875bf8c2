import pg from 'pg';
import { serialize } from 'pg-protocol';
import type { PreparedStatementPlan, StatementCache } from './statement-cache.ts';

interface PgResult {
  command: string | null;
  rowCount: number | null;
  rows: unknown[];
  fields: unknown[];
  addFields(fields: unknown[]): void;
  addRow(row: unknown): void;
  parseRow(fields: unknown[]): unknown;
  addCommandComplete(message: unknown): void;
}

interface PgConnection {
  stream: { write(buffer: Buffer): boolean };
}

const describePortal = serialize.describe({ type: 'P', name: '' });
const executePortal = serialize.execute({});
const syncMessage = serialize.sync();
const constantMessages = new Map<string, Buffer>();

/** Parse, Bind and Execute for a parameterless statement; constant ones are built once. */
function statementMessages(text: string): Buffer {
  const cached = constantMessages.get(text);
  if (cached !== undefined) return cached;
  const messages = Buffer.concat([serialize.parse({ text }), serialize.bind({}), executePortal]);
  if (!text.startsWith('set local')) constantMessages.set(text, messages);
  return messages;
}

const { Result, utils } = pg as unknown as {
  Result: new (rowMode?: string, types?: unknown) => PgResult;
  utils: { prepareValue(value: unknown): unknown };
};

/** The outcome of a {@link ContextStatement}: the query's result and the wrapper's command tags. */
export interface ContextStatementResult {
  readonly result: pg.QueryResult;
  /** Command tags of the statements before and after the query, in order (e.g. BEGIN, SET, COMMIT). */
  readonly commands: readonly (string | null)[];
}

/**
 * A `pg` submittable that sends statements before and after one parameterised query, all in
 * the extended protocol and closed by a single Sync: one round trip and one server flush for
 * `BEGIN; SET LOCAL ...; <query>; COMMIT`. After an error the server skips to the Sync, so a
 * transaction opened by the prefix is left aborted and the caller must roll it back.
 */
export class ContextStatement {
  readonly #prefix: readonly string[];
  readonly #text: string;
  readonly #values: readonly unknown[];
  readonly #suffix: readonly string[];
  readonly #cache: StatementCache | undefined;
  readonly #result: PgResult = new Result();
  readonly #commands: (string | null)[] = [];
  #plan: PreparedStatementPlan | undefined;
  #parseError: unknown;
  callback: ((error: Error | null, result?: ContextStatementResult) => void) | undefined;

  constructor(
    prefix: readonly string[],
    text: string,
    values: readonly unknown[],
    suffix: readonly string[],
    cache?: StatementCache,
  ) {
    this.#prefix = prefix;
    this.#text = text;
    this.#values = values;
    this.#suffix = suffix;
    this.#cache = cache;
  }

  /** Sends the statement and resolves when the server has answered all of it. */
  run(client: pg.PoolClient): Promise<ContextStatementResult> {
    return new Promise((resolve, reject) => {
      // Planned when queued: queries on one client are written in the order they are queued.
      this.#plan = this.#cache?.plan(client, this.#text);
      this.callback = (error, result) => {
        if (error === null) {
          resolve(result as ContextStatementResult);
          return;
        }
        this.#cache?.forget(client, this.#text);
        reject(error);
      };
      client.query(this as unknown as pg.Submittable);
    });
  }

  submit(connection: PgConnection): Error | null {
    let values: unknown[];
    try {
      // Values are converted before anything is written, so a bad value leaves the wire untouched.
      values = this.#values.map((value) => utils.prepareValue(value));
    } catch (error) {
      return error instanceof Error ? error : new Error(String(error));
    }
    const plan = this.#plan;
    const parts: Buffer[] = [];
    for (const name of plan?.close ?? []) parts.push(serialize.close({ type: 'S', name }));
    for (const statement of this.#prefix) parts.push(statementMessages(statement));
    if (plan === undefined) parts.push(serialize.parse({ text: this.#text }));
    else if (plan.parse) parts.push(serialize.parse({ text: this.#text, name: plan.name }));
    parts.push(
      serialize.bind({ statement: plan?.name ?? '', values }),
      describePortal,
      executePortal,
    );
    for (const statement of this.#suffix) parts.push(statementMessages(statement));
    parts.push(syncMessage);
    // One buffer, one write: writev of a dozen small messages costs more than one copy.
    connection.stream.write(Buffer.concat(parts));
    return null;
  }

  get #atQuery(): boolean {
    return this.#commands.length === this.#prefix.length;
  }

  handleRowDescription(message: { fields: unknown[] }): void {
    if (this.#atQuery) this.#result.addFields(message.fields);
  }

  handleDataRow(message: { fields: unknown[] }): void {
    if (!this.#atQuery || this.#parseError !== undefined) return;
    try {
      this.#result.addRow(this.#result.parseRow(message.fields));
    } catch (error) {
      this.#parseError = error;
    }
  }

  handleCommandComplete(message: { text?: string; command?: string }): void {
    if (this.#atQuery) {
      this.#result.addCommandComplete(message);
      this.#commands.push(this.#result.command);
      return;
    }
    const tag = message.text ?? message.command ?? null;
    this.#commands.push(tag === null ? null : (tag.split(' ')[0] ?? null));
  }

  handleEmptyQuery(): void {
    this.#commands.push(null);
  }

  handleError(error: Error): void {
    this.callback?.(error);
    this.callback = undefined;
  }

  handleReadyForQuery(): void {
    const callback = this.callback;
    this.callback = undefined;
    if (callback === undefined) return;
    if (this.#parseError !== undefined) {
      callback(
        this.#parseError instanceof Error ? this.#parseError : new Error(String(this.#parseError)),
      );
      return;
    }
    const commands = [...this.#commands];
    commands.splice(this.#prefix.length, 1);
    callback(null, { result: this.#result as unknown as pg.QueryResult, commands });
  }

  handlePortalSuspended(): void {}

  handleCopyInResponse(connection: { sendCopyFail(message: string): void }): void {
    connection.sendCopyFail('COPY is not supported in a Tenantry unit of work');
  }

  handleCopyData(): void {}
}
