/** What a query needs to run as a named prepared statement on one connection. */
export interface PreparedStatementPlan {
  readonly name: string;
  /** Whether this message must Parse the statement first (first use on this connection). */
  readonly parse: boolean;
  /** Statements evicted from the cache, to Close in the same message. */
  readonly close: readonly string[];
}

/**
 * Names of prepared statements per pooled connection, least recently used evicted first.
 * Statement text is the key: the tenant guard binds the tenant id as a parameter, so one
 * statement serves every tenant.
 */
export class StatementCache {
  readonly #limit: number;
  readonly #byConnection = new WeakMap<
    object,
    { statements: Map<string, string>; pendingClose: string[] }
  >();
  #counter = 0;

  constructor(limit: number) {
    this.#limit = limit;
  }

  plan(connection: object, text: string): PreparedStatementPlan {
    let entry = this.#byConnection.get(connection);
    if (entry === undefined) {
      entry = { statements: new Map(), pendingClose: [] };
      this.#byConnection.set(connection, entry);
    }
    const close = entry.pendingClose;
    entry.pendingClose = [];
    const existing = entry.statements.get(text);
    if (existing !== undefined) {
      entry.statements.delete(text);
      entry.statements.set(text, existing);
      return { name: existing, parse: false, close };
    }
    this.#counter++;
    const name = `tenantry_${this.#counter.toString(36)}`;
    entry.statements.set(text, name);
    if (entry.statements.size > this.#limit) {
      const [oldestText, oldestName] = entry.statements.entries().next().value as [string, string];
      entry.statements.delete(oldestText);
      close.push(oldestName);
    }
    return { name, parse: true, close };
  }

  /** Forgets a statement after an error; it is closed with the connection's next message. */
  forget(connection: object, text: string): void {
    const entry = this.#byConnection.get(connection);
    const name = entry?.statements.get(text);
    if (entry === undefined || name === undefined) return;
    entry.statements.delete(text);
    entry.pendingClose.push(name);
  }
}
