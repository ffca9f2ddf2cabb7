//! The search translation shared by both backends: the typed predicates of
//! [`spotsweep_core::search`] as SQL for runs and experiments, with their order (missing keys
//! last, NaN after numbers), the implicit tie-breakers and `limit + 1` rows for paging by
//! offset. Every user-supplied value is a bound parameter; the only text spliced into a
//! statement is chosen here from fixed column names, operators and generated aliases, or is a
//! backend's fixed spelling ([`Dialect`]). SQLite's walk of a metric's order (its
//! `metric_order` table) builds on these pieces in `sqlite::search`.

use sqlx::{Postgres, QueryBuilder, Sqlite};

use spotsweep_core::search::{
    DatasetField, ExperimentAttribute, ExperimentPredicate, NumOp, RunAttribute, RunOrderKey, RunPredicate,
    StrOp, StringCondition,
};

use crate::{ExperimentQuery, RunQuery, ViewType};

/// What a backend spells its own way in a search: booleans, lists of values bound as one
/// parameter, and the collation that makes text sort by bytes (SQLite's order) everywhere.
pub(crate) trait Dialect: sqlx::Database + Sized {
    /// A true boolean column's value (`is_nan = TRUE`).
    const TRUE: &'static str;
    /// A false one.
    const FALSE: &'static str;
    /// Appended to a text sort key so that it sorts by bytes (code points), as SQLite does.
    const TEXT_ORDER: &'static str;
    /// Appended to a `LIKE` pattern so that it has no escape character (SQLite's default):
    /// `\` matches itself.
    const LIKE_ESCAPE: &'static str;
    /// Ends each `EXISTS` subquery of a filter, before its `)`.
    const SUBQUERY_FENCE: &'static str;

    /// Binds an integer.
    fn bind_int(qb: &mut QueryBuilder<Self>, value: i64) -> &mut QueryBuilder<Self>;
    /// Binds a float.
    fn bind_float(qb: &mut QueryBuilder<Self>, value: f64) -> &mut QueryBuilder<Self>;
    /// Binds a string.
    fn bind_text<'a>(qb: &'a mut QueryBuilder<Self>, value: &str) -> &'a mut QueryBuilder<Self>;
    /// `(<the values>)` after `IN` / `NOT IN`, bound as one parameter (the SQL text stays the
    /// same for any number of values).
    fn push_text_list(qb: &mut QueryBuilder<Self>, values: &[String]);
    /// The same for integers.
    fn push_int_list(qb: &mut QueryBuilder<Self>, values: &[i64]);
}

impl Dialect for Sqlite {
    const TRUE: &'static str = "1";
    const FALSE: &'static str = "0";
    // SQLite's default collation (BINARY) compares bytes.
    const TEXT_ORDER: &'static str = "";
    const LIKE_ESCAPE: &'static str = "";
    const SUBQUERY_FENCE: &'static str = "";

    fn bind_int(qb: &mut QueryBuilder<Self>, value: i64) -> &mut QueryBuilder<Self> {
        qb.push_bind(value)
    }

    fn bind_float(qb: &mut QueryBuilder<Self>, value: f64) -> &mut QueryBuilder<Self> {
        qb.push_bind(value)
    }

    fn bind_text<'a>(qb: &'a mut QueryBuilder<Self>, value: &str) -> &'a mut QueryBuilder<Self> {
        qb.push_bind(value.to_owned())
    }

    // A JSON array expanded by `json_each` (SQLite has no array parameters).
    fn push_text_list(qb: &mut QueryBuilder<Self>, values: &[String]) {
        let json = serde_json::to_string(values).unwrap_or_else(|_| "[]".into());
        qb.push("(SELECT value FROM json_each(")
            .push_bind(json)
            .push("))");
    }

    fn push_int_list(qb: &mut QueryBuilder<Self>, values: &[i64]) {
        let json = serde_json::to_string(values).unwrap_or_else(|_| "[]".into());
        qb.push("(SELECT value FROM json_each(")
            .push_bind(json)
            .push("))");
    }
}

impl Dialect for Postgres {
    const TRUE: &'static str = "TRUE";
    const FALSE: &'static str = "FALSE";
    // The database's collation may be a language's (`en_US`: case and accents ignored at first).
    const TEXT_ORDER: &'static str = " COLLATE \"C\"";
    // PostgreSQL's LIKE escapes with `\` unless told otherwise.
    const LIKE_ESCAPE: &'static str = " ESCAPE ''";
    // PostgreSQL turns every top-level EXISTS into a semi-join and plans them all together: a
    // filter of 128 subqueries (the hardening suite's 240-clause search) took 7,075 ms to plan
    // and 8 ms to run. `OFFSET 0` keeps each a subquery probed per run by its key's index:
    // 109 ms to plan, 4 ms to run. The first 32 conditions are joins anyway (see `joins`).
    const SUBQUERY_FENCE: &'static str = " OFFSET 0";

    fn bind_int(qb: &mut QueryBuilder<Self>, value: i64) -> &mut QueryBuilder<Self> {
        qb.push_bind(value)
    }

    fn bind_float(qb: &mut QueryBuilder<Self>, value: f64) -> &mut QueryBuilder<Self> {
        qb.push_bind(value)
    }

    fn bind_text<'a>(qb: &'a mut QueryBuilder<Self>, value: &str) -> &'a mut QueryBuilder<Self> {
        qb.push_bind(value.to_owned())
    }

    fn push_text_list(qb: &mut QueryBuilder<Self>, values: &[String]) {
        qb.push("(SELECT UNNEST(")
            .push_bind(values.to_vec())
            .push("::text[]))");
    }

    fn push_int_list(qb: &mut QueryBuilder<Self>, values: &[i64]) {
        qb.push("(SELECT UNNEST(")
            .push_bind(values.to_vec())
            .push("::int8[]))");
    }
}

/// A numeric comparison's operator, with spaces around it.
pub(crate) fn num_op(op: NumOp) -> &'static str {
    match op {
        NumOp::Eq => " = ",
        NumOp::Ne => " != ",
        NumOp::Lt => " < ",
        NumOp::Le => " <= ",
        NumOp::Gt => " > ",
        NumOp::Ge => " >= ",
    }
}

/// Pushes `<column> op ?` for a string comparison. `LIKE` is case-sensitive (on SQLite through
/// `PRAGMA case_sensitive_like`) and has no escape character; `ILIKE` lowers both sides.
pub(crate) fn push_str_cmp<DB: Dialect>(qb: &mut QueryBuilder<DB>, column: &str, op: StrOp, value: &str) {
    match op {
        StrOp::Eq => DB::bind_text(qb.push(column).push(" = "), value),
        StrOp::Ne => DB::bind_text(qb.push(column).push(" != "), value),
        StrOp::Like => DB::bind_text(qb.push(column).push(" LIKE "), value).push(DB::LIKE_ESCAPE),
        StrOp::ILike => DB::bind_text(qb.push("LOWER(").push(column).push(") LIKE LOWER("), value)
            .push(")")
            .push(DB::LIKE_ESCAPE),
    };
}

/// The column of a run attribute (`runs` as `r`).
fn run_attr_column(attr: RunAttribute) -> &'static str {
    match attr {
        RunAttribute::RunId => "r.run_uuid",
        RunAttribute::Status => "r.status",
        RunAttribute::RunName => "r.name",
        RunAttribute::UserId => "r.user_id",
        RunAttribute::ArtifactUri => "r.artifact_uri",
        RunAttribute::StartTime => "r.start_time",
        RunAttribute::EndTime => "r.end_time",
    }
}

fn dataset_column(field: DatasetField) -> &'static str {
    match field {
        DatasetField::Name => "d.name",
        DatasetField::Digest => "d.digest",
        DatasetField::Context => "d.context",
    }
}

/// `[NOT] EXISTS (SELECT 1 FROM <rows> AND x.key = ? AND <cond>)` for a key-value table (run
/// params and tags, experiment tags); `rows` names the table as `x` and ties it to the outer row.
/// A comparison needs the key to exist, so `!=` never matches an entity without it.
pub(crate) fn push_kv_condition<DB: Dialect>(
    qb: &mut QueryBuilder<DB>,
    rows: &str,
    key: &str,
    cond: &StringCondition,
) {
    let negate = matches!(cond, StringCondition::IsNull);
    qb.push(if negate {
        "NOT EXISTS (SELECT 1 FROM "
    } else {
        "EXISTS (SELECT 1 FROM "
    });
    DB::bind_text(qb.push(rows).push(" AND x.key = "), key);
    if let StringCondition::Compare(op, value) = cond {
        qb.push(" AND ");
        push_str_cmp(qb, "x.value", *op, value);
    }
    qb.push(DB::SUBQUERY_FENCE).push(")");
}

const PARAM_ROWS: &str = "params x WHERE x.run_id = r.id";
const TAG_ROWS: &str = "tags x WHERE x.run_id = r.id";
const EXPERIMENT_TAG_ROWS: &str = "experiment_tags x WHERE x.experiment_id = e.experiment_id";

fn push_run_predicate<DB: Dialect>(qb: &mut QueryBuilder<DB>, predicate: &RunPredicate) {
    match predicate {
        RunPredicate::Param {
            key,
            cond: StringCondition::IsNull,
        } => push_kv_condition(qb, PARAM_ROWS, key, &StringCondition::IsNull),
        RunPredicate::Tag {
            key,
            cond: StringCondition::IsNull,
        } => push_kv_condition(qb, TAG_ROWS, key, &StringCondition::IsNull),
        RunPredicate::Metric { .. } | RunPredicate::Param { .. } | RunPredicate::Tag { .. } => {
            // Normally joined (see `joinable`); as a subquery it means the same.
            let table = joinable(predicate).unwrap_or("params");
            qb.push(format!(
                "EXISTS (SELECT 1 FROM {table} x WHERE x.run_id = r.id AND "
            ));
            push_join_condition(qb, "x", predicate);
            qb.push(DB::SUBQUERY_FENCE).push(")");
        }
        RunPredicate::AttributeString { attr, op, value } => {
            push_str_cmp(qb, run_attr_column(*attr), *op, value)
        }
        RunPredicate::AttributeNumber { attr, op, value } => {
            DB::bind_int(qb.push(run_attr_column(*attr)).push(num_op(*op)), *value);
        }
        RunPredicate::RunIdIn { negated, values } => {
            qb.push(if *negated {
                "r.run_uuid NOT IN "
            } else {
                "r.run_uuid IN "
            });
            DB::push_text_list(qb, values);
        }
        RunPredicate::Dataset { field, cond } => {
            qb.push("EXISTS (SELECT 1 FROM run_inputs d WHERE d.run_id = r.id AND ");
            match cond {
                StringCondition::Compare(op, value) => push_str_cmp(qb, dataset_column(*field), *op, value),
                StringCondition::IsNull => {
                    qb.push(dataset_column(*field)).push(" IS NULL");
                }
                StringCondition::IsNotNull => {
                    qb.push(dataset_column(*field)).push(" IS NOT NULL");
                }
            }
            qb.push(DB::SUBQUERY_FENCE).push(")");
        }
        RunPredicate::DatasetIn {
            field,
            negated,
            values,
        } => {
            qb.push("EXISTS (SELECT 1 FROM run_inputs d WHERE d.run_id = r.id AND ")
                .push(dataset_column(*field))
                .push(if *negated { " NOT IN " } else { " IN " });
            DB::push_text_list(qb, values);
            qb.push(DB::SUBQUERY_FENCE).push(")");
        }
    }
}

/// The table a predicate can be joined with, when it requires its key to exist.
pub(crate) fn joinable(predicate: &RunPredicate) -> Option<&'static str> {
    match predicate {
        RunPredicate::Metric { .. } => Some("latest_metrics"),
        RunPredicate::Param {
            cond: StringCondition::Compare(..) | StringCondition::IsNotNull,
            ..
        } => Some("params"),
        RunPredicate::Tag {
            cond: StringCondition::Compare(..) | StringCondition::IsNotNull,
            ..
        } => Some("tags"),
        _ => None,
    }
}

/// Whether a condition is an equality on a param or tag.
pub(crate) fn is_kv_equality(predicate: &RunPredicate) -> bool {
    matches!(
        predicate,
        RunPredicate::Param {
            cond: StringCondition::Compare(StrOp::Eq, _),
            ..
        } | RunPredicate::Tag {
            cond: StringCondition::Compare(StrOp::Eq, _),
            ..
        }
    )
}

/// The `ON` condition (after the run match) of a [`joinable`] predicate on alias `a`.
pub(crate) fn push_join_condition<DB: Dialect>(qb: &mut QueryBuilder<DB>, a: &str, predicate: &RunPredicate) {
    match predicate {
        RunPredicate::Metric { key, op, value } => {
            DB::bind_text(qb.push(format!("{a}.key = ")), key);
            // IEEE rules for NaN, as the reference: it is `!=` to everything and compares
            // false otherwise.
            if *op == NumOp::Ne {
                qb.push(format!(" AND ({a}.is_nan = {} OR {a}.value", DB::TRUE));
            } else {
                qb.push(format!(" AND ({a}.is_nan = {} AND {a}.value", DB::FALSE));
            }
            DB::bind_float(qb.push(num_op(*op)), *value).push(")");
        }
        RunPredicate::Param { key, cond } | RunPredicate::Tag { key, cond } => {
            DB::bind_text(qb.push(format!("{a}.key = ")), key);
            if let StringCondition::Compare(op, value) = cond {
                qb.push(" AND ");
                push_str_cmp(qb, &format!("{a}.value"), *op, value);
            }
        }
        _ => {}
    }
}

/// The table and key a sort key reads its value from; `None` for a run attribute.
fn sort_table(key: &RunOrderKey) -> Option<(&'static str, &String)> {
    match key {
        RunOrderKey::Metric(k) => Some(("latest_metrics", k)),
        RunOrderKey::Param(k) => Some(("params", k)),
        RunOrderKey::Tag(k) => Some(("tags", k)),
        RunOrderKey::Attribute(_) => None,
    }
}

/// Sort keys joined to the runs table; the rest are subqueries (SQLite joins at most 64 tables).
const MAX_JOINED_SORT_KEYS: usize = 24;
/// Conditions joined to the runs table; the rest are `EXISTS` subqueries.
const MAX_JOINED_CONDITIONS: usize = 32;

/// The whole runs search: filter, order (missing keys last in both directions, NaN after
/// numbers), the implicit `start_time DESC, run_uuid ASC` tie-breakers, and `limit + 1` rows.
pub(crate) fn run_search_sql<DB: Dialect>(query: &RunQuery, columns: &str) -> QueryBuilder<DB> {
    run_search_sql_after("SELECT ", query, columns)
}

/// Which sort keys and conditions are joins (SQLite joins at most 64 tables: the first sort
/// keys and conditions are joins (fast), any beyond the budget become correlated subqueries (the
/// same meaning), so that a search takes as many clauses and keys as a client sends).
pub(crate) fn joins(query: &RunQuery) -> (Vec<bool>, Vec<bool>) {
    let sorts = query
        .order_by
        .iter()
        .scan(0usize, |n, o| {
            let join = sort_table(&o.key).is_some() && *n < MAX_JOINED_SORT_KEYS;
            *n += usize::from(join);
            Some(join)
        })
        .collect();
    let filters = query
        .filter
        .iter()
        .scan(0usize, |n, p| {
            let join = joinable(p).is_some() && *n < MAX_JOINED_CONDITIONS;
            *n += usize::from(join);
            Some(join)
        })
        .collect();
    (sorts, filters)
}

/// [`run_search_sql`] after `start` (`EXPLAIN QUERY PLAN SELECT ` in SQLite's plan tests).
pub(crate) fn run_search_sql_after<DB: Dialect>(
    start: &str,
    query: &RunQuery,
    columns: &str,
) -> QueryBuilder<DB> {
    let mut qb: QueryBuilder<DB> = QueryBuilder::new(start);
    qb.push(columns).push(" FROM runs r");
    let (joined_sorts, joined_filters) = joins(query);
    // One LEFT JOIN per sort key on a non-attribute: aliases are o0, o1, ... (generated, not
    // user text).
    push_sort_joins(&mut qb, query, &joined_sorts, 0);
    // Conditions that need a key to exist become inner joins (each key is unique per run, so a
    // join never duplicates a run). Unlike a correlated EXISTS, a join lets SQLite start from
    // the most selective index, e.g. params_by_key for `params.opt = 'adam'`, instead of
    // probing every run of the experiment. Metric comparisons are checked per run on the
    // latest_metrics key: there is no index on latest values (see migration 0016), and none is
    // missed: SQLite's statistics cannot tell how much of a key a range such as `> 0.5` keeps,
    // so when it had one it started from `metrics.m0 > 0.5` (half the runs) instead of
    // `params.p0 = 'v3'` (a tenth): 8.7 ms instead of 1.3 ms on 10,000 runs.
    for (i, predicate) in query.filter.iter().enumerate() {
        if let (true, Some(table)) = (joined_filters[i], joinable(predicate)) {
            qb.push(format!(" JOIN {table} f{i} ON f{i}.run_id = r.id AND "));
            push_join_condition(&mut qb, &format!("f{i}"), predicate);
        }
    }
    qb.push(" WHERE ");
    push_run_conditions(&mut qb, query, &joined_filters);
    qb.push(" ORDER BY ");
    push_order(&mut qb, query, &joined_sorts, false);
    DB::bind_int(qb.push("LIMIT "), i64::from(query.limit) + 1);
    DB::bind_int(qb.push(" OFFSET "), query.offset as i64);
    qb
}

/// The LEFT JOINs of the sort keys from the `first`-th on.
pub(crate) fn push_sort_joins<DB: Dialect>(
    qb: &mut QueryBuilder<DB>,
    query: &RunQuery,
    joined_sorts: &[bool],
    first: usize,
) {
    for (i, order) in query.order_by.iter().enumerate().skip(first) {
        if let (true, Some((table, key))) = (joined_sorts[i], sort_table(&order.key)) {
            let join = format!(" LEFT JOIN {table} o{i} ON o{i}.run_id = r.id AND o{i}.key = ");
            DB::bind_text(qb.push(join), key);
        }
    }
}

/// The experiment, lifecycle and unjoined conditions (after `WHERE` or `AND`).
pub(crate) fn push_run_conditions<DB: Dialect>(
    qb: &mut QueryBuilder<DB>,
    query: &RunQuery,
    joined_filters: &[bool],
) {
    // One experiment (the usual case) is an equality, so that runs_by_experiment yields the
    // runs already in the default order and the LIMIT stops the scan early; with an IN list
    // SQLite sorts every run of the experiment first.
    if let [one] = query.experiment_ids.as_slice() {
        DB::bind_int(qb.push("r.experiment_id = "), *one);
    } else {
        qb.push("r.experiment_id IN ");
        DB::push_int_list(qb, &query.experiment_ids);
    }
    match query.view {
        ViewType::ActiveOnly => {
            qb.push(" AND r.lifecycle_stage = 'active'");
        }
        ViewType::DeletedOnly => {
            qb.push(" AND r.lifecycle_stage = 'deleted'");
        }
        ViewType::All => {}
    }
    for (_, predicate) in query
        .filter
        .iter()
        .enumerate()
        .filter(|(i, _)| !joined_filters[*i])
    {
        qb.push(" AND ");
        push_run_predicate(qb, predicate);
    }
}

/// The sort keys and the tie-breakers (after `ORDER BY`, ending with a space). With
/// `numbers_first`, the first key is a metric whose runs all have a number: its value alone.
pub(crate) fn push_order<DB: Dialect>(
    qb: &mut QueryBuilder<DB>,
    query: &RunQuery,
    joined_sorts: &[bool],
    numbers_first: bool,
) {
    for (i, order) in query.order_by.iter().enumerate() {
        let dir = if order.ascending { " ASC" } else { " DESC" };
        if i == 0 && numbers_first {
            qb.push(format!("o0.value{dir}, "));
            continue;
        }
        match (&order.key, sort_table(&order.key)) {
            (_, Some((table, key))) if !joined_sorts[i] => {
                // Past the join budget: the same value, looked up per run.
                let value = |qb: &mut QueryBuilder<DB>, column: &str| {
                    let lookup =
                        format!("(SELECT x.{column} FROM {table} x WHERE x.run_id = r.id AND x.key = ");
                    DB::bind_text(qb.push(lookup), key).push(")");
                };
                value(qb, "value");
                qb.push(" IS NULL, ");
                if table == "latest_metrics" {
                    value(qb, "is_nan");
                    qb.push(", ");
                }
                value(qb, "value");
                let collate = if table == "latest_metrics" {
                    ""
                } else {
                    DB::TEXT_ORDER
                };
                qb.push(format!("{collate}{dir}, "));
            }
            (RunOrderKey::Metric(_), _) => {
                qb.push(format!("o{i}.value IS NULL, o{i}.is_nan, o{i}.value{dir}, "));
            }
            (RunOrderKey::Param(_) | RunOrderKey::Tag(_), _) => {
                qb.push(format!("o{i}.value IS NULL, o{i}.value{}{dir}, ", DB::TEXT_ORDER));
            }
            (RunOrderKey::Attribute(attr), _) => {
                let col = run_attr_column(*attr);
                let collate = if attr.is_numeric() { "" } else { DB::TEXT_ORDER };
                qb.push(format!("{col} IS NULL, {col}{collate}{dir}, "));
            }
        }
    }
    qb.push(format!("r.start_time DESC, r.run_uuid{} ASC ", DB::TEXT_ORDER));
}

fn experiment_attr_column(attr: ExperimentAttribute) -> &'static str {
    match attr {
        ExperimentAttribute::Name => "e.name",
        ExperimentAttribute::ExperimentId => "e.experiment_id",
        ExperimentAttribute::CreationTime => "e.creation_time",
        ExperimentAttribute::LastUpdateTime => "e.last_update_time",
    }
}

/// The whole experiments search; the default order is `creation_time DESC, experiment_id ASC`.
pub(crate) fn experiment_search_sql<DB: Dialect>(query: &ExperimentQuery, columns: &str) -> QueryBuilder<DB> {
    let mut qb: QueryBuilder<DB> = QueryBuilder::new("SELECT ");
    let columns: Vec<String> = columns.split(", ").map(|c| format!("e.{c}")).collect();
    qb.push(columns.join(", ")).push(" FROM experiments e WHERE ");
    qb.push(match query.view {
        ViewType::ActiveOnly => "e.lifecycle_stage = 'active'",
        ViewType::DeletedOnly => "e.lifecycle_stage = 'deleted'",
        ViewType::All => "1 = 1",
    });
    for predicate in &query.filter {
        qb.push(" AND ");
        match predicate {
            ExperimentPredicate::Name { op, value } => push_str_cmp(&mut qb, "e.name", *op, value),
            ExperimentPredicate::Time { attr, op, value } => {
                DB::bind_int(qb.push(experiment_attr_column(*attr)).push(num_op(*op)), *value);
            }
            ExperimentPredicate::ExperimentId { op, value } => {
                push_str_cmp(&mut qb, "CAST(e.experiment_id AS TEXT)", *op, value);
            }
            ExperimentPredicate::ExperimentIdIn { negated, values } => {
                qb.push(if *negated {
                    "CAST(e.experiment_id AS TEXT) NOT IN "
                } else {
                    "CAST(e.experiment_id AS TEXT) IN "
                });
                DB::push_text_list(&mut qb, values);
            }
            ExperimentPredicate::Tag { key, cond } => {
                push_kv_condition(&mut qb, EXPERIMENT_TAG_ROWS, key, cond)
            }
        }
    }
    qb.push(" ORDER BY ");
    if query.order_by.is_empty() {
        qb.push("e.creation_time DESC, ");
    }
    for order in &query.order_by {
        let dir = if order.ascending { " ASC" } else { " DESC" };
        let collate = if order.key == ExperimentAttribute::Name {
            DB::TEXT_ORDER
        } else {
            ""
        };
        qb.push(experiment_attr_column(order.key))
            .push(collate)
            .push(dir)
            .push(", ");
    }
    DB::bind_int(qb.push("e.experiment_id ASC LIMIT "), i64::from(query.limit) + 1);
    DB::bind_int(qb.push(" OFFSET "), query.offset as i64);
    qb
}
