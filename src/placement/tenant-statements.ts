import { TenantryError } from '../errors.ts';

/** One statement of a migration file and where it runs. */
export interface MigrationStatement {
  /** The statement's text, without its terminating semicolon. */
  readonly sql: string;
  /**
   * `tenant`: tenant DDL, run in the pool and again in every dedicated schema; `shared`: run in
   * the pool only (objects of other schemas, extensions, catalog rows).
   */
  readonly scope: 'tenant' | 'shared';
}

const directivePattern = /^--\s*tenantry:\s*(shared|tenant)\s*$/i;
const name = `(?:"(?:[^"]|"")*"|[a-z_][a-z0-9_$]*)`;
const qualifiedName = String.raw`(${name})(\s*\.\s*${name})?`;

/**
 * Statement shapes that name the object they create or change, and where that name starts.
 * A statement qualifying its object with a schema (`auth.users`, `tenantry.plans`) is shared;
 * one naming it bare is tenant DDL, created wherever the search path points.
 */
const targetPatterns: readonly RegExp[] = [
  new RegExp(
    String.raw`^create\s+(?:unique\s+)?index\s+(?:concurrently\s+)?(?:if\s+not\s+exists\s+)?(?:(?!on\s)\S+\s+)?on\s+(?:only\s+)?${qualifiedName}`,
  ),
  new RegExp(
    String.raw`^create\s+(?:or\s+replace\s+)?(?:constraint\s+)?trigger\s+\S+\s[\s\S]*?\son\s+${qualifiedName}`,
  ),
  new RegExp(String.raw`^(?:create|alter|drop)\s+(?:policy|rule)\s+\S+\s+on\s+${qualifiedName}`),
  new RegExp(
    String.raw`^create\s+(?:or\s+replace\s+)?(?:(?:global|local|temp|temporary|unlogged|recursive|materialized|trusted|procedural)\s+)*(?:table|view|function|procedure|sequence|type|domain|aggregate|collation|operator|cast|conversion|statistics)\s+(?:if\s+not\s+exists\s+)?${qualifiedName}`,
  ),
  new RegExp(
    String.raw`^(?:alter|drop)\s+(?:materialized\s+)?(?:table|index|view|function|procedure|routine|sequence|type|domain|aggregate|collation|statistics)\s+(?:if\s+exists\s+)?(?:only\s+)?${qualifiedName}`,
  ),
  new RegExp(
    String.raw`^comment\s+on\s+(?:materialized\s+)?(?:table|column|index|view|function|procedure|sequence|type|domain|constraint\s+\S+\s+on|trigger\s+\S+\s+on|policy\s+\S+\s+on)\s+${qualifiedName}`,
  ),
  new RegExp(
    String.raw`^(?:grant|revoke)\s[\s\S]*?\son\s+(?:table\s+|function\s+|procedure\s+|routine\s+|sequence\s+|type\s+|domain\s+)?${qualifiedName}`,
  ),
  new RegExp(String.raw`^insert\s+into\s+${qualifiedName}`),
  new RegExp(String.raw`^(?:update|delete\s+from)\s+(?:only\s+)?${qualifiedName}`),
  new RegExp(String.raw`^truncate\s+(?:table\s+)?(?:only\s+)?${qualifiedName}`),
  new RegExp(String.raw`^(?:analyze|vacuum)\s+(?:\([^)]*\)\s*)?${qualifiedName}`),
  new RegExp(String.raw`^refresh\s+materialized\s+view\s+(?:concurrently\s+)?${qualifiedName}`),
  new RegExp(String.raw`^lock\s+(?:table\s+)?(?:only\s+)?${qualifiedName}`),
];

/** Statements that act on the database or other schemas as a whole: always shared. */
const sharedPattern =
  /^(?:create\s+extension|alter\s+extension|drop\s+extension|(?:create|alter|drop)\s+schema|comment\s+on\s+(?:schema|extension)|alter\s+default\s+privileges|(?:grant|revoke)\s[\s\S]*?\son\s+(?:schema|all\s+\w+\s+in\s+schema|database|language|foreign|large\s+object|tablespace)\s|(?:create|alter|drop)\s+(?:role|user|group|database|tablespace|event\s+trigger|publication|subscription|server|foreign\s+data\s+wrapper|user\s+mapping)\b)/;

/** Statements that would move the replay out of the tenant's schema: refused in tenant DDL. */
const searchPathPattern =
  /^(?:set|reset)\s+(?:(?:local|session)\s+)?(?:search_path|role|session\s+authorization)\b/;

/**
 * Splits a migration file into statements (quotes, dollar quotes, comments and nested block
 * comments understood) and tells which are tenant DDL, to be replayed in every dedicated schema,
 * and which are shared, run only in the pool.
 *
 * The rule: a statement that names its object with a schema (`create table auth.users`,
 * `insert into tenantry.plans`, `grant … on auth.users`), or that acts on a schema, an
 * extension, a role or the database, is shared; everything else (bare `create table contacts`,
 * `select tenantry.enable_tenant_isolation('contacts')`, `do` blocks) is tenant DDL. A comment
 * line `-- tenantry: shared` or `-- tenantry: tenant` right before a statement overrides the rule.
 * A tenant statement that changes the search path or the role is refused: it would run the rest
 * of the replay outside the tenant's schema.
 *
 * @example
 * ```ts
 * const statements = splitMigrationStatements('create schema auth; create table notes (tenant_id uuid);');
 * // [{ sql: 'create schema auth', scope: 'shared' }, { sql: 'create table notes (tenant_id uuid)', scope: 'tenant' }]
 * ```
 */
export function splitMigrationStatements(text: string): MigrationStatement[] {
  const statements: MigrationStatement[] = [];
  let start = 0;
  let masked = '';
  let directive: 'tenant' | 'shared' | undefined;
  let index = 0;
  const flush = (end: number) => {
    const sql = text.slice(start, end).trim();
    const shape = masked.trim().replace(/\s+/g, ' ').toLowerCase();
    if (shape !== '') statements.push(classify(sql, shape, directive));
    masked = '';
    directive = undefined;
    start = end + 1;
  };
  while (index < text.length) {
    const char = text[index] as string;
    const next = text[index + 1];
    if (char === '-' && next === '-') {
      const end = text.indexOf('\n', index);
      const stop = end === -1 ? text.length : end;
      const match = directivePattern.exec(text.slice(index, stop).trim());
      if (match !== null && masked.trim() === '') {
        directive = (match[1] as string).toLowerCase() as 'tenant' | 'shared';
      }
      masked += ' ';
      index = stop;
      continue;
    }
    if (char === '/' && next === '*') {
      let depth = 1;
      index += 2;
      while (index < text.length && depth > 0) {
        if (text.startsWith('/*', index)) {
          depth++;
          index += 2;
        } else if (text.startsWith('*/', index)) {
          depth--;
          index += 2;
        } else index++;
      }
      if (depth > 0) throw unterminated('block comment');
      masked += ' ';
      continue;
    }
    if (char === "'") {
      const escapes = /[eE]$/.test(masked) && !/[a-zA-Z0-9_$][eE]$/.test(masked);
      index++;
      while (index < text.length) {
        const current = text[index];
        if (escapes && current === '\\') index += 2;
        else if (current === "'" && text[index + 1] === "'") index += 2;
        else if (current === "'") break;
        else index++;
      }
      if (index >= text.length) throw unterminated('string literal');
      masked += "''";
      index++;
      continue;
    }
    if (char === '"') {
      const end = findQuoteEnd(text, index);
      masked += text.slice(index, end + 1);
      index = end + 1;
      continue;
    }
    if (char === '$' && !/[a-zA-Z0-9_$]$/.test(masked)) {
      const tag = /^\$([a-zA-Z_][a-zA-Z0-9_]*)?\$/.exec(text.slice(index));
      if (tag !== null) {
        const end = text.indexOf(tag[0], index + tag[0].length);
        if (end === -1) throw unterminated(`dollar-quoted body ${tag[0]}`);
        masked += "''";
        index = end + tag[0].length;
        continue;
      }
    }
    if (char === ';') {
      flush(index);
      index++;
      continue;
    }
    masked += char;
    index++;
  }
  flush(text.length);
  return statements;
}

function findQuoteEnd(text: string, open: number): number {
  let index = open + 1;
  while (index < text.length) {
    if (text[index] === '"' && text[index + 1] === '"') index += 2;
    else if (text[index] === '"') return index;
    else index++;
  }
  throw unterminated('quoted identifier');
}

function unterminated(what: string): TenantryError {
  return new TenantryError(
    'TENANTRY_ERR_MIGRATION_INVALID_FILE',
    `A migration file has an unterminated ${what}.`,
  );
}

function classify(
  sql: string,
  shape: string,
  directive: 'tenant' | 'shared' | undefined,
): MigrationStatement {
  let scope: 'tenant' | 'shared' = directive ?? 'tenant';
  if (directive === undefined) {
    if (sharedPattern.test(shape)) scope = 'shared';
    else {
      for (const pattern of targetPatterns) {
        const match = pattern.exec(shape);
        if (match === null) continue;
        if (match[2] !== undefined) scope = 'shared';
        break;
      }
    }
  }
  if (scope === 'tenant' && searchPathPattern.test(shape)) {
    throw new TenantryError(
      'TENANTRY_ERR_MIGRATION_INVALID_FILE',
      `A tenant statement changes the search path or the role, which would take the rest of its file out of the tenant's schema: ${sql.slice(0, 120)}`,
      { details: { statement: sql.slice(0, 500) } },
    );
  }
  return Object.freeze({ sql, scope });
}
