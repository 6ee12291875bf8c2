import pg from 'pg';

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
  stream: { cork?: () => void; uncork?: () => void };
  parse(config: { text: string }): void;
  bind(config: { values?: readonly unknown[] }): void;
  describe(config: { type: 'P'; name: string }): void;
  execute(config: Record<string, never>): void;
  sync(): void;
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
  readonly #result: PgResult = new Result();
  readonly #commands: (string | null)[] = [];
  #parseError: unknown;
  callback: ((error: Error | null, result?: ContextStatementResult) => void) | undefined;

  constructor(
    prefix: readonly string[],
    text: string,
    values: readonly unknown[],
    suffix: readonly string[],
  ) {
    this.#prefix = prefix;
    this.#text = text;
    this.#values = values;
    this.#suffix = suffix;
  }

  /** Sends the statement and resolves when the server has answered all of it. */
  run(client: pg.PoolClient): Promise<ContextStatementResult> {
    return new Promise((resolve, reject) => {
      this.callback = (error, result) =>
        error === null ? resolve(result as ContextStatementResult) : reject(error);
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
    const corked = typeof connection.stream.cork === 'function';
    if (corked) connection.stream.cork?.();
    try {
      for (const statement of this.#prefix) this.#simple(connection, statement);
      connection.parse({ text: this.#text });
      connection.bind({ values });
      connection.describe({ type: 'P', name: '' });
      connection.execute({});
      for (const statement of this.#suffix) this.#simple(connection, statement);
      connection.sync();
    } finally {
      if (corked) connection.stream.uncork?.();
    }
    return null;
  }

  #simple(connection: PgConnection, text: string): void {
    connection.parse({ text });
    connection.bind({});
    connection.execute({});
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
