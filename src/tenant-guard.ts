import {
  AliasNode,
  AndNode,
  BinaryOperationNode,
  ColumnNode,
  type ColumnUpdateNode,
  DefaultInsertValueNode,
  type DeleteQueryNode,
  IdentifierNode,
  type InsertQueryNode,
  type JoinNode,
  type KyselyPlugin,
  OnNode,
  type OperationNode,
  OperationNodeTransformer,
  OperatorNode,
  ParensNode,
  type PluginTransformQueryArgs,
  type PluginTransformResultArgs,
  PrimitiveValueListNode,
  type QueryId,
  type QueryResult,
  ReferenceNode,
  type RootOperationNode,
  type SelectQueryNode,
  TableNode,
  type UnknownRow,
  type UpdateQueryNode,
  ValueListNode,
  ValueNode,
  ValuesNode,
  WhereNode,
} from 'kysely';
import { TenantryError } from './errors.ts';

/** Options for {@link createTenantGuardPlugin}. */
export interface TenantGuardOptions {
  /**
   * Tenant tables, as `table` (resolved through the search path) or `schema.table`.
   */
  readonly tenantTables: Iterable<string>;
  /** Returns the current tenant id, or `undefined` outside a tenant context. */
  readonly currentTenantId: () => string | undefined;
}

const tenantColumn = 'tenant_id';

class TenantGuardTransformer extends OperationNodeTransformer {
  readonly #tables: ReadonlySet<string>;
  readonly #tenantId: () => string | undefined;

  constructor(tables: ReadonlySet<string>, tenantId: () => string | undefined) {
    super();
    this.#tables = tables;
    this.#tenantId = tenantId;
  }

  #requireTenant(table: string): string {
    const tenantId = this.#tenantId();
    if (tenantId === undefined) {
      throw new TenantryError(
        'TENANTRY_ERR_CONTEXT_MISSING',
        `Tenant table "${table}" was queried outside a tenant context. Run the query inside ` +
          'tenantry.withTenant(tenantId, fn), or use the platform database for cross-tenant work.',
        { details: { table } },
      );
    }
    return tenantId;
  }

  /** Returns the name to qualify `tenant_id` with when `node` is a tenant table reference. */
  #scopeOf(node: OperationNode): { name: string; reference: TableNode } | undefined {
    let table: OperationNode = node;
    let alias: string | undefined;
    if (AliasNode.is(node)) {
      table = node.node;
      if (IdentifierNode.is(node.alias)) alias = node.alias.name;
    }
    if (!TableNode.is(table)) return undefined;
    const identifier = table.table.identifier.name;
    const schema = table.table.schema?.name;
    const name = schema === undefined ? identifier : `${schema}.${identifier}`;
    if (!this.#tables.has(name)) return undefined;
    const reference =
      alias !== undefined
        ? TableNode.create(alias)
        : schema === undefined
          ? TableNode.create(identifier)
          : TableNode.createWithSchema(schema, identifier);
    return { name, reference };
  }

  #condition(scope: { name: string; reference: TableNode }): OperationNode {
    return BinaryOperationNode.create(
      ReferenceNode.create(ColumnNode.create(tenantColumn), scope.reference),
      OperatorNode.create('='),
      ValueNode.create(this.#requireTenant(scope.name)),
    );
  }

  #scopeTables(tables: readonly OperationNode[]): OperationNode[] {
    const conditions: OperationNode[] = [];
    for (const table of tables) {
      const scope = this.#scopeOf(table);
      if (scope !== undefined) conditions.push(this.#condition(scope));
    }
    return conditions;
  }

  #scopeJoins(
    joins: readonly JoinNode[] | undefined,
    where: OperationNode[],
  ): JoinNode[] | undefined {
    if (joins === undefined) return undefined;
    return joins.map((join) => {
      const scope = this.#scopeOf(join.table);
      if (scope === undefined) return join;
      const condition = this.#condition(scope);
      if (join.on === undefined) {
        where.push(condition);
        return join;
      }
      return { ...join, on: OnNode.create(and(join.on.on, condition)) };
    });
  }

  protected override transformSelectQuery(
    node: SelectQueryNode,
    queryId?: QueryId,
  ): SelectQueryNode {
    const transformed = super.transformSelectQuery(node, queryId);
    const conditions = this.#scopeTables(transformed.from?.froms ?? []);
    const joins = this.#scopeJoins(transformed.joins, conditions);
    if (conditions.length === 0 && joins === transformed.joins) return transformed;
    return { ...transformed, joins, where: withConditions(transformed.where, conditions) };
  }

  protected override transformUpdateQuery(
    node: UpdateQueryNode,
    queryId?: QueryId,
  ): UpdateQueryNode {
    const transformed = super.transformUpdateQuery(node, queryId);
    const targets = transformed.table === undefined ? [] : [transformed.table];
    const conditions = this.#scopeTables([...targets, ...(transformed.from?.froms ?? [])]);
    const joins = this.#scopeJoins(transformed.joins, conditions);
    const target = transformed.table === undefined ? undefined : this.#scopeOf(transformed.table);
    if (target !== undefined) {
      const tenantId = this.#requireTenant(target.name);
      for (const update of transformed.updates ?? []) this.#checkTenantAssignment(update, tenantId);
    }
    if (conditions.length === 0 && joins === transformed.joins) return transformed;
    return { ...transformed, joins, where: withConditions(transformed.where, conditions) };
  }

  protected override transformDeleteQuery(
    node: DeleteQueryNode,
    queryId?: QueryId,
  ): DeleteQueryNode {
    const transformed = super.transformDeleteQuery(node, queryId);
    const conditions = this.#scopeTables([
      ...transformed.from.froms,
      ...(transformed.using?.tables ?? []),
    ]);
    const joins = this.#scopeJoins(transformed.joins, conditions);
    if (conditions.length === 0 && joins === transformed.joins) return transformed;
    return { ...transformed, joins, where: withConditions(transformed.where, conditions) };
  }

  protected override transformInsertQuery(
    node: InsertQueryNode,
    queryId?: QueryId,
  ): InsertQueryNode {
    const transformed = super.transformInsertQuery(node, queryId);
    if (transformed.into === undefined) return transformed;
    const scope = this.#scopeOf(transformed.into);
    if (scope === undefined) return transformed;
    const tenantId = this.#requireTenant(scope.name);
    for (const update of transformed.onConflict?.updates ?? [])
      this.#checkTenantAssignment(update, tenantId);
    const values = transformed.values;
    if (values === undefined || !ValuesNode.is(values)) return transformed;
    const columns = transformed.columns ?? [];
    const index = columns.findIndex((column) => column.column.name === tenantColumn);
    if (index === -1) {
      return {
        ...transformed,
        columns: [...columns, ColumnNode.create(tenantColumn)],
        values: ValuesNode.create(
          values.values.map((row) =>
            PrimitiveValueListNode.is(row)
              ? PrimitiveValueListNode.create([...row.values, tenantId])
              : ValueListNode.create([...row.values, ValueNode.create(tenantId)]),
          ),
        ),
      };
    }
    return {
      ...transformed,
      values: ValuesNode.create(
        values.values.map((row) => {
          if (PrimitiveValueListNode.is(row)) {
            checkTenantValue(row.values[index], tenantId);
            return row;
          }
          const value = row.values[index];
          if (value === undefined || DefaultInsertValueNode.is(value)) {
            const copy = [...row.values];
            copy[index] = ValueNode.create(tenantId);
            return ValueListNode.create(copy);
          }
          if (ValueNode.is(value)) checkTenantValue(value.value, tenantId);
          return row;
        }),
      ),
    };
  }

  #checkTenantAssignment(update: ColumnUpdateNode, tenantId: string): void {
    if (!ColumnNode.is(update.column) || update.column.column.name !== tenantColumn) return;
    if (ValueNode.is(update.value)) checkTenantValue(update.value.value, tenantId);
  }
}

function checkTenantValue(value: unknown, tenantId: string): void {
  if (typeof value === 'string' && value.toLowerCase() === tenantId) return;
  throw new TenantryError(
    'TENANTRY_ERR_GUARD_TENANT_MISMATCH',
    'The query writes a tenant_id other than the current tenant.',
  );
}

function and(left: OperationNode, right: OperationNode): OperationNode {
  return AndNode.create(ParensNode.create(left), right);
}

function withConditions(
  where: WhereNode | undefined,
  conditions: readonly OperationNode[],
): WhereNode | undefined {
  let combined: OperationNode | undefined =
    where === undefined ? undefined : ParensNode.create(where.where);
  for (const condition of conditions) {
    combined = combined === undefined ? condition : AndNode.create(combined, condition);
  }
  return combined === undefined ? undefined : WhereNode.create(combined);
}

/**
 * Creates the application guard: a Kysely plugin that scopes every query on a tenant table to
 * the current tenant and throws when there is none.
 *
 * It adds `<table>.tenant_id = $current` to SELECT, UPDATE and DELETE (in `ON` for joined
 * tables, so outer joins keep their meaning), fills `tenant_id` on INSERT, and rejects writes
 * that name another tenant. It is a second wall, not the first: raw SQL (`sql\`...\``) is not
 * inspected, and RLS still applies to everything.
 *
 * @example
 * ```ts
 * import { Kysely, PostgresDialect } from 'kysely';
 * import { createTenantGuardPlugin } from 'tenantry';
 * const db = new Kysely<DB>({
 *   dialect: new PostgresDialect({ pool }),
 *   plugins: [createTenantGuardPlugin({ tenantTables: ['contacts'], currentTenantId: () => tenantId })],
 * });
 * ```
 */
export function createTenantGuardPlugin(options: TenantGuardOptions): KyselyPlugin {
  const transformer = new TenantGuardTransformer(
    new Set(options.tenantTables),
    options.currentTenantId,
  );
  return Object.freeze({
    transformQuery(args: PluginTransformQueryArgs): RootOperationNode {
      return transformer.transformNode(args.node, args.queryId);
    },
    transformResult(args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
      return Promise.resolve(args.result);
    },
  });
}
