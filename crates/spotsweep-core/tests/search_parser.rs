//! The MLflow search grammar, from the outside: one table of accepted filters with the AST each
//! means, one table of rejected filters with the message each gets, and property tests that the
//! parser never panics and reads back exactly what a printer wrote for a random AST.

use proptest::prelude::*;
use spotsweep_core::search::{
    DatasetField, ExperimentAttribute, ExperimentOrderBy, ExperimentPredicate, NumOp, RunAttribute,
    RunOrderBy, RunOrderKey, RunPredicate, StrOp, StringCondition, parse_experiment_filter,
    parse_experiment_order_by, parse_run_filter, parse_run_order_by,
};

// ---------------------------------------------------------------------------------------------
// Shorthands for expected ASTs

fn metric(key: &str, op: NumOp, value: f64) -> RunPredicate {
    RunPredicate::Metric {
        key: key.into(),
        op,
        value,
    }
}

fn param(key: &str, op: StrOp, value: &str) -> RunPredicate {
    RunPredicate::Param {
        key: key.into(),
        cond: StringCondition::Compare(op, value.into()),
    }
}

fn tag(key: &str, op: StrOp, value: &str) -> RunPredicate {
    RunPredicate::Tag {
        key: key.into(),
        cond: StringCondition::Compare(op, value.into()),
    }
}

fn attr_str(attr: RunAttribute, op: StrOp, value: &str) -> RunPredicate {
    RunPredicate::AttributeString {
        attr,
        op,
        value: value.into(),
    }
}

fn attr_num(attr: RunAttribute, op: NumOp, value: i64) -> RunPredicate {
    RunPredicate::AttributeNumber { attr, op, value }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

fn run_err(filter: &str) -> String {
    match parse_run_filter(filter) {
        Ok(ast) => panic!("{filter:?} should be rejected, parsed as {ast:?}"),
        Err(e) => e.0,
    }
}

fn experiment_err(filter: &str) -> String {
    match parse_experiment_filter(filter) {
        Ok(ast) => panic!("{filter:?} should be rejected, parsed as {ast:?}"),
        Err(e) => e.0,
    }
}

// ---------------------------------------------------------------------------------------------
// Accepted runs filters

#[test]
fn run_filters_mean_what_the_grammar_says() {
    use NumOp as N;
    use RunAttribute as A;
    use StrOp as S;
    let cases: Vec<(&str, Vec<RunPredicate>)> = vec![
        ("", vec![]),
        ("  \t\n ", vec![]),
        // Metrics: every numeric comparator, number shapes, entity aliases.
        ("metrics.loss < 0.5", vec![metric("loss", N::Lt, 0.5)]),
        ("metric.loss<=1", vec![metric("loss", N::Le, 1.0)]),
        ("metrics.acc>-1.5e-3", vec![metric("acc", N::Gt, -1.5e-3)]),
        ("metrics.acc >= +2E+2", vec![metric("acc", N::Ge, 200.0)]),
        ("metrics.a = .5", vec![metric("a", N::Eq, 0.5)]),
        ("metrics.a != 5.", vec![metric("a", N::Ne, 5.0)]),
        (
            "metrics.a = 99999999999999999999999",
            vec![metric("a", N::Eq, 1e23)],
        ),
        // Keys: dots, dashes, slashes, colons, unicode; back-ticks and double quotes.
        (
            "metrics.val/loss-1:x.y = 1",
            vec![metric("val/loss-1:x.y", N::Eq, 1.0)],
        ),
        ("metrics.損失 = 1", vec![metric("損失", N::Eq, 1.0)]),
        ("metrics.`my loss` > 1", vec![metric("my loss", N::Gt, 1.0)]),
        ("metrics.\"my loss\" > 1", vec![metric("my loss", N::Gt, 1.0)]),
        ("`metrics`.loss > 1", vec![metric("loss", N::Gt, 1.0)]),
        ("`metrics`.`a b` > 1", vec![metric("a b", N::Gt, 1.0)]),
        ("metrics.`a``b` > 1", vec![metric("a`b", N::Gt, 1.0)]),
        ("metrics.`a\\`b` > 1", vec![metric("a`b", N::Gt, 1.0)]),
        // Params and tags: string comparators, both quote styles, escapes, IS [NOT] NULL.
        ("params.lr = '0.1'", vec![param("lr", S::Eq, "0.1")]),
        ("param.lr != \"0.1\"", vec![param("lr", S::Ne, "0.1")]),
        (
            "parameters.opt LIKE 'adam%'",
            vec![param("opt", S::Like, "adam%")],
        ),
        (
            "parameter.opt ilike '%ADAM%'",
            vec![param("opt", S::ILike, "%ADAM%")],
        ),
        ("params.x = ''", vec![param("x", S::Eq, "")]),
        ("params.x = 'it''s'", vec![param("x", S::Eq, "it's")]),
        ("params.x = 'it\\'s'", vec![param("x", S::Eq, "it's")]),
        (
            "params.x = \"say \"\"hi\"\"\"",
            vec![param("x", S::Eq, "say \"hi\"")],
        ),
        ("params.x = 'C:\\tmp\\\\'", vec![param("x", S::Eq, "C:\\tmp\\")]),
        (
            "params.x = 'a AND b OR c'",
            vec![param("x", S::Eq, "a AND b OR c")],
        ),
        (
            "tags.mlflow.runName = 'r1'",
            vec![tag("mlflow.runName", S::Eq, "r1")],
        ),
        ("tag.`my tag` LIKE '%x'", vec![tag("my tag", S::Like, "%x")]),
        (
            "tags.x IS NULL",
            vec![RunPredicate::Tag {
                key: "x".into(),
                cond: StringCondition::IsNull,
            }],
        ),
        (
            "params.x is  not\tnull",
            vec![RunPredicate::Param {
                key: "x".into(),
                cond: StringCondition::IsNotNull,
            }],
        ),
        // Attributes: bare, with each entity alias, every alias name.
        (
            "status = 'FINISHED'",
            vec![attr_str(A::Status, S::Eq, "FINISHED")],
        ),
        (
            "attributes.status != 'FAILED'",
            vec![attr_str(A::Status, S::Ne, "FAILED")],
        ),
        (
            "attribute.run_name LIKE 'a%'",
            vec![attr_str(A::RunName, S::Like, "a%")],
        ),
        (
            "attr.user_id ILIKE 'BOB'",
            vec![attr_str(A::UserId, S::ILike, "BOB")],
        ),
        (
            "run.artifact_uri = 's3://b/x'",
            vec![attr_str(A::ArtifactUri, S::Eq, "s3://b/x")],
        ),
        ("`Run name` = 'x'", vec![attr_str(A::RunName, S::Eq, "x")]),
        ("\"Run Name\" = 'x'", vec![attr_str(A::RunName, S::Eq, "x")]),
        (
            "attributes.`run name` = 'x'",
            vec![attr_str(A::RunName, S::Eq, "x")],
        ),
        ("run_id = 'abc'", vec![attr_str(A::RunId, S::Eq, "abc")]),
        ("run_uuid LIKE 'ab%'", vec![attr_str(A::RunId, S::Like, "ab%")]),
        ("start_time > 5", vec![attr_num(A::StartTime, N::Gt, 5)]),
        (
            "created >= 1700000000000",
            vec![attr_num(A::StartTime, N::Ge, 1_700_000_000_000)],
        ),
        ("Created < -1", vec![attr_num(A::StartTime, N::Lt, -1)]),
        (
            "attributes.end_time <= 9223372036854775807",
            vec![attr_num(A::EndTime, N::Le, i64::MAX)],
        ),
        // Lists.
        (
            "attributes.run_id IN ('a', \"b\")",
            vec![RunPredicate::RunIdIn {
                negated: false,
                values: strings(&["a", "b"]),
            }],
        ),
        (
            "run_id not in ('a',)",
            vec![RunPredicate::RunIdIn {
                negated: true,
                values: strings(&["a"]),
            }],
        ),
        (
            "run_id IN ()",
            vec![RunPredicate::RunIdIn {
                negated: false,
                values: vec![],
            }],
        ),
        (
            "run_id IN('a','b')",
            vec![RunPredicate::RunIdIn {
                negated: false,
                values: strings(&["a", "b"]),
            }],
        ),
        // Datasets.
        (
            "datasets.name = 'mnist'",
            vec![RunPredicate::Dataset {
                field: DatasetField::Name,
                cond: StringCondition::Compare(S::Eq, "mnist".into()),
            }],
        ),
        (
            "dataset.digest LIKE 'ab%'",
            vec![RunPredicate::Dataset {
                field: DatasetField::Digest,
                cond: StringCondition::Compare(S::Like, "ab%".into()),
            }],
        ),
        (
            "datasets.context NOT IN ('training', 'eval')",
            vec![RunPredicate::DatasetIn {
                field: DatasetField::Context,
                negated: true,
                values: strings(&["training", "eval"]),
            }],
        ),
        // AND, in any case, with any whitespace.
        (
            "metrics.a > 1 AND params.b = 'x' and\ntags.c != 'y'   AnD status = 'RUNNING'",
            vec![
                metric("a", N::Gt, 1.0),
                param("b", S::Eq, "x"),
                tag("c", S::Ne, "y"),
                attr_str(A::Status, S::Eq, "RUNNING"),
            ],
        ),
        (
            "params.a='x'AND params.b='y'",
            vec![param("a", S::Eq, "x"), param("b", S::Eq, "y")],
        ),
    ];
    for (filter, expected) in cases {
        assert_eq!(parse_run_filter(filter), Ok(expected), "filter {filter:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Rejected runs filters

#[test]
fn run_filter_errors_name_the_problem() {
    let cases: &[(&str, &[&str])] = &[
        // Joining and grouping.
        (
            "metrics.a > 1 OR metrics.b > 1",
            &["Invalid clause(s) in filter string: 'OR'"],
        ),
        (
            "metrics.a > 1 or metrics.b > 1",
            &["Invalid clause(s) in filter string: 'or'"],
        ),
        (
            "(metrics.a > 1)",
            &["Invalid clause(s) in filter string: '('", "Parentheses"],
        ),
        (
            "metrics.a > 1 AND (metrics.b > 1)",
            &["Invalid clause(s) in filter string: '('"],
        ),
        (
            "metrics.a > 1 metrics.b > 1",
            &["Invalid clause(s) in filter string: 'metrics.b'", "AND"],
        ),
        (
            "params.a = foo bar",
            &["Expected a quoted string value for parameter 'a'", "foo"],
        ),
        ("metrics.a = 1 AND", &["ends with 'AND'"]),
        ("AND", &["Invalid clause(s) in filter string: 'AND'"]),
        ("AND AND", &["Invalid clause(s) in filter string: 'AND'"]),
        ("metrics.a = 1 AND AND metrics.b = 2", &["'AND'"]),
        // Entities and keys.
        ("PARAMS.x = 'a'", &["Invalid entity type 'PARAMS'"]),
        ("Metrics.x = 1", &["Invalid entity type 'Metrics'"]),
        ("foo.x = 1", &["Invalid entity type 'foo'"]),
        ("metrics. = 1", &["Missing key", "metrics."]),
        ("metrics.`` = 1", &["Missing key"]),
        ("metrics.'x' = 1", &["Invalid identifier", "metrics.'x'"]),
        ("metrics.a`b` = 1", &["Invalid identifier"]),
        ("'status' = 'x'", &["Expected an identifier", "'status'"]),
        (
            "foo = 'x'",
            &["Invalid attribute key 'foo' specified. Valid keys are", "run_id"],
        ),
        (
            "attributes.experiment_id = '1'",
            &["Invalid attribute key 'experiment_id'"],
        ),
        ("run name = 'x'", &["Expected a comparator", "'name'"]),
        ("datasets.foo = 'x'", &["Invalid dataset key 'foo'"]),
        // Comparators.
        ("metrics.a == 1", &["Invalid comparator '=='"]),
        ("metrics.a <> 1", &["Invalid comparator '<>'"]),
        ("metrics.a", &["Expected a comparator", "filter ended"]),
        ("metrics.a 1", &["Expected a comparator", "'1'"]),
        ("metrics.a LIKE 1", &["Invalid comparator 'LIKE' for metric 'a'"]),
        (
            "metrics.a IS NULL",
            &["Invalid comparator 'IS NULL' for metric 'a'"],
        ),
        ("metrics.a IN ('1')", &["Invalid comparator 'IN' for metric 'a'"]),
        ("params.a < 'x'", &["Invalid comparator '<' for parameter 'a'"]),
        ("tags.a >= 'x'", &["Invalid comparator '>=' for tag 'a'"]),
        (
            "params.a IN ('x')",
            &["Invalid comparator 'IN' for parameter 'a'"],
        ),
        ("status < 'x'", &["Invalid comparator '<' for attribute 'status'"]),
        (
            "status IS NULL",
            &["Invalid comparator 'IS NULL' for attribute 'status'"],
        ),
        (
            "start_time LIKE 5",
            &["Invalid comparator 'LIKE' for attribute 'start_time'"],
        ),
        (
            "datasets.name > 'x'",
            &["Invalid comparator '>' for dataset field 'name'"],
        ),
        ("datasets.name IS NULL", &["Invalid comparator 'IS NULL'"]),
        ("params.a NOT LIKE 'x'", &["Expected IN after", "'LIKE'"]),
        ("params.a IS 'x'", &["Expected NULL or NOT NULL", "'x'"]),
        (
            "params.a IS NOT",
            &["Expected NULL or NOT NULL", "end of the filter"],
        ),
        // Values.
        (
            "metrics.a > 'x'",
            &["Expected numeric value type for metric 'a'", "'x'"],
        ),
        (
            "metrics.a > abc",
            &["Expected numeric value type for metric", "abc"],
        ),
        (
            "metrics.a > 1.2.3",
            &["Expected numeric value type for metric", "1.2.3"],
        ),
        ("metrics.a > 1e999", &["out of range"]),
        (
            "metrics.a >",
            &["Expected a value after 'metrics.a >'", "filter ended"],
        ),
        ("metrics.a > )", &["Expected a value", "')'"]),
        (
            "params.a = 1",
            &["Expected a quoted string value for param", "Got value 1"],
        ),
        ("tags.a = 1", &["Expected a quoted string value for tag 'a'"]),
        (
            "params.a = `x`",
            &["Expected a quoted string value for parameter", "`x`"],
        ),
        (
            "status = FINISHED",
            &[
                "Expected a quoted string value for attribute 'status'",
                "FINISHED",
            ],
        ),
        (
            "start_time > 'x'",
            &["Expected numeric value type for numeric attribute: start_time"],
        ),
        ("start_time > 1.5", &["integer", "1.5"]),
        ("end_time > 99999999999999999999", &["out of range"]),
        (
            "status IN ('a')",
            &[
                "Only ['run_id'] attributes support comparison with a list",
                "'status'",
            ],
        ),
        (
            "run_name = ('a')",
            &["Only ['run_id'] attributes support comparison with a list"],
        ),
        ("run_id = ('a')", &["cannot compare", "use IN"]),
        ("run_id IN 'a'", &["Expected a parenthesised list", "'a'"]),
        (
            "run_id LIKE 1",
            &["Expected a quoted string value for attribute 'run_id'"],
        ),
        ("run_id IN ('a' 'b')", &["Expected ',' or ')'", "'b'"]),
        (
            "run_id IN ('a', 1)",
            &["Expected a quoted string in the list", "'1'"],
        ),
        ("run_id IN ('a',", &["Unclosed '('"]),
        ("run_id IN (,)", &["Expected a quoted string in the list", "','"]),
        ("datasets.name IN 'x'", &["Expected a parenthesised list"]),
        ("datasets.name = ('x')", &["use IN"]),
        (
            "datasets.name = 1",
            &["Expected a quoted string value for dataset field 'name'"],
        ),
        // Lexing.
        ("params.a = 'x", &["Unterminated string starting at character 12"]),
        ("params.a = \"x", &["Unterminated string"]),
        ("params.`a = 'x'", &["Unterminated back-ticked name"]),
        (
            "params.a = 'x' ; drop table runs",
            &["Unexpected character ';' at character 16"],
        ),
        ("metrics.a+b > 1", &["Unexpected character '+'"]),
        ("metrics.😀 > 1", &["Unexpected character '😀' at character 9"]),
    ];
    for (filter, needles) in cases {
        let message = run_err(filter);
        for needle in *needles {
            assert!(
                message.contains(needle),
                "filter {filter:?}: message {message:?} lacks {needle:?}"
            );
        }
    }
}

#[test]
fn long_values_are_cut_in_messages() {
    let filter = format!("metrics.a > '{}'", "x".repeat(10_000));
    let message = run_err(&filter);
    assert!(message.len() < 400, "{message}");
    assert!(message.contains('…'));
}

// ---------------------------------------------------------------------------------------------
// Experiments filters

#[test]
fn experiment_filters_mean_what_the_grammar_says() {
    use ExperimentPredicate as P;
    let cases: Vec<(&str, Vec<ExperimentPredicate>)> = vec![
        ("", vec![]),
        (
            "name = 'exp'",
            vec![P::Name {
                op: StrOp::Eq,
                value: "exp".into(),
            }],
        ),
        (
            "attributes.name ILIKE '%Exp%'",
            vec![P::Name {
                op: StrOp::ILike,
                value: "%Exp%".into(),
            }],
        ),
        (
            "creation_time > 10 AND last_update_time <= 20",
            vec![
                P::Time {
                    attr: ExperimentAttribute::CreationTime,
                    op: NumOp::Gt,
                    value: 10,
                },
                P::Time {
                    attr: ExperimentAttribute::LastUpdateTime,
                    op: NumOp::Le,
                    value: 20,
                },
            ],
        ),
        (
            "experiment_id = '3'",
            vec![P::ExperimentId {
                op: StrOp::Eq,
                value: "3".into(),
            }],
        ),
        (
            "experiment_id != \"3\"",
            vec![P::ExperimentId {
                op: StrOp::Ne,
                value: "3".into(),
            }],
        ),
        (
            "experiment_id IN ('1', '2')",
            vec![P::ExperimentIdIn {
                negated: false,
                values: strings(&["1", "2"]),
            }],
        ),
        (
            "experiment_id NOT IN ('1')",
            vec![P::ExperimentIdIn {
                negated: true,
                values: strings(&["1"]),
            }],
        ),
        (
            "tags.`team name` = 'ml' AND tags.x IS NULL",
            vec![
                P::Tag {
                    key: "team name".into(),
                    cond: StringCondition::Compare(StrOp::Eq, "ml".into()),
                },
                P::Tag {
                    key: "x".into(),
                    cond: StringCondition::IsNull,
                },
            ],
        ),
    ];
    for (filter, expected) in cases {
        assert_eq!(parse_experiment_filter(filter), Ok(expected), "filter {filter:?}");
    }
}

#[test]
fn experiment_filter_errors_name_the_problem() {
    let cases: &[(&str, &[&str])] = &[
        ("metrics.a > 1", &["Invalid entity type 'metrics'", "experiments"]),
        ("params.a = 'x'", &["Invalid entity type 'params'"]),
        ("datasets.name = 'x'", &["Invalid entity type 'datasets'"]),
        ("TAGS.a = 'x'", &["Invalid entity type 'TAGS'"]),
        (
            "status = 'x'",
            &[
                "Invalid attribute key 'status' specified. Valid keys are",
                "experiment_id",
            ],
        ),
        ("name > 'x'", &["Invalid comparator '>' for attribute 'name'"]),
        (
            "name = 1",
            &["Expected a quoted string value for attribute 'name'"],
        ),
        (
            "name IN ('a')",
            &["Only ['experiment_id'] attributes support comparison with a list"],
        ),
        (
            "creation_time > 'x'",
            &["Expected numeric value type for numeric attribute: creation_time"],
        ),
        ("creation_time LIKE 1", &["Invalid comparator 'LIKE'"]),
        (
            "experiment_id LIKE '1%'",
            &["Invalid comparator 'LIKE' for attribute 'experiment_id'"],
        ),
        (
            "experiment_id = 1",
            &["Expected a quoted string value for attribute 'experiment_id'"],
        ),
        ("experiment_id = ('1')", &["use IN"]),
        ("tags.a = 1", &["Expected a quoted string value for tag 'a'"]),
        (
            "name = 'a' OR name = 'b'",
            &["Invalid clause(s) in filter string: 'OR'"],
        ),
    ];
    for (filter, needles) in cases {
        let message = experiment_err(filter);
        for needle in *needles {
            assert!(
                message.contains(needle),
                "filter {filter:?}: message {message:?} lacks {needle:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// order_by

#[test]
fn run_order_by_entries() {
    let asc = |key| RunOrderBy { key, ascending: true };
    let desc = |key| RunOrderBy {
        key,
        ascending: false,
    };
    let cases: Vec<(&str, RunOrderBy)> = vec![
        ("metrics.loss DESC", desc(RunOrderKey::Metric("loss".into()))),
        ("metric.loss", asc(RunOrderKey::Metric("loss".into()))),
        ("  params.`a b` asc ", asc(RunOrderKey::Param("a b".into()))),
        (
            "tags.mlflow.runName Desc",
            desc(RunOrderKey::Tag("mlflow.runName".into())),
        ),
        ("start_time", asc(RunOrderKey::Attribute(RunAttribute::StartTime))),
        (
            "start_time DESC",
            desc(RunOrderKey::Attribute(RunAttribute::StartTime)),
        ),
        (
            "attributes.end_time",
            asc(RunOrderKey::Attribute(RunAttribute::EndTime)),
        ),
        (
            "attr.run_name desc",
            desc(RunOrderKey::Attribute(RunAttribute::RunName)),
        ),
        ("`Run name`", asc(RunOrderKey::Attribute(RunAttribute::RunName))),
        (
            "Created DESC",
            desc(RunOrderKey::Attribute(RunAttribute::StartTime)),
        ),
        ("created", asc(RunOrderKey::Attribute(RunAttribute::StartTime))),
        ("status", asc(RunOrderKey::Attribute(RunAttribute::Status))),
        ("run_id", asc(RunOrderKey::Attribute(RunAttribute::RunId))),
        ("user_id", asc(RunOrderKey::Attribute(RunAttribute::UserId))),
        (
            "artifact_uri",
            asc(RunOrderKey::Attribute(RunAttribute::ArtifactUri)),
        ),
    ];
    for (entry, expected) in cases {
        assert_eq!(parse_run_order_by(entry), Ok(expected), "entry {entry:?}");
    }

    let errors: &[(&str, &[&str])] = &[
        ("", &["Invalid order_by clause ''", "empty"]),
        ("   ", &["empty"]),
        ("metrics.loss up", &["Invalid ordering key", "'up'"]),
        ("metrics.loss DESC x", &["unexpected 'x'"]),
        ("Run name", &["Invalid ordering key", "'name'"]),
        ("foo", &["Invalid order_by attribute key 'foo'"]),
        ("PARAMS.x", &["Invalid entity type 'PARAMS'"]),
        ("datasets.name", &["Cannot order runs by the dataset field"]),
        ("metrics.", &["Missing key"]),
        ("'start_time'", &["expected a key", "'start_time'"]),
        ("metrics.`loss", &["Unterminated"]),
        ("DESC", &["Invalid order_by attribute key 'DESC'"]),
    ];
    for (entry, needles) in errors {
        let message = parse_run_order_by(entry).expect_err(entry).0;
        for needle in *needles {
            assert!(
                message.contains(needle),
                "entry {entry:?}: message {message:?} lacks {needle:?}"
            );
        }
    }
}

#[test]
fn experiment_order_by_entries() {
    use ExperimentAttribute as A;
    let cases = [
        ("name", A::Name, true),
        ("experiment_id DESC", A::ExperimentId, false),
        ("creation_time desc", A::CreationTime, false),
        ("attributes.last_update_time ASC", A::LastUpdateTime, true),
    ];
    for (entry, key, ascending) in cases {
        assert_eq!(
            parse_experiment_order_by(entry),
            Ok(ExperimentOrderBy { key, ascending }),
            "{entry:?}"
        );
    }
    for (entry, needle) in [
        ("tags.x", "Experiments can be ordered by"),
        ("start_time", "Invalid order_by key 'start_time'"),
        ("metrics.a", "Invalid entity type 'metrics'"),
        ("name sideways", "Invalid ordering key"),
        ("", "empty"),
    ] {
        let message = parse_experiment_order_by(entry).expect_err(entry).0;
        assert!(
            message.contains(needle),
            "entry {entry:?}: message {message:?} lacks {needle:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Printer: AST -> filter text, with randomised spelling (aliases, quoting, case, whitespace)

/// The spelling choices a printed clause makes, drawn at random so the round trip exercises every
/// way of writing the same AST.
#[derive(Debug, Clone)]
struct Style {
    /// Picks among aliases, quote styles and keyword cases; consumed from the low bits up.
    choices: u64,
    /// Whitespace put where the grammar needs (or allows) a separator.
    space: &'static str,
}

impl Style {
    /// The next choice among `n` options.
    fn pick(&mut self, n: u64) -> usize {
        let choice = self.choices % n;
        self.choices = (self.choices / n) ^ (self.choices << 7);
        choice as usize
    }

    fn pick_str(&mut self, options: &[&'static str]) -> &'static str {
        options[self.pick(options.len() as u64)]
    }

    /// A keyword in a random case.
    fn keyword(&mut self, word: &str) -> String {
        match self.pick(3) {
            0 => word.to_uppercase(),
            1 => word.to_lowercase(),
            _ => word
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect(),
        }
    }
}

/// Whether the lexer would read `key` as part of a bare word.
fn bare_safe(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_alphanumeric() || "_.-/:".contains(c))
}

/// `text` in `quote`s, escaping backslashes and the quote (doubled or backslash-escaped).
fn quote(text: &str, quote: char, doubled: bool) -> String {
    let mut out = String::from(quote);
    for c in text.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if c == quote {
            out.push(if doubled { quote } else { '\\' });
            out.push(quote);
        } else {
            out.push(c);
        }
    }
    out.push(quote);
    out
}

fn print_string(style: &mut Style, value: &str) -> String {
    let q = if style.pick(2) == 0 { '\'' } else { '"' };
    quote(value, q, style.pick(2) == 0)
}

fn print_key(style: &mut Style, key: &str) -> String {
    let choice = style.pick(3);
    if choice == 0 && bare_safe(key) {
        key.to_owned()
    } else if choice == 1 {
        quote(key, '"', style.pick(2) == 0)
    } else {
        quote(key, '`', style.pick(2) == 0)
    }
}

fn print_entity_key(style: &mut Style, entities: &[&'static str], key: &str) -> String {
    let entity = style.pick_str(entities);
    format!("{entity}.{}", print_key(style, key))
}

fn num_op(op: NumOp) -> &'static str {
    match op {
        NumOp::Eq => "=",
        NumOp::Ne => "!=",
        NumOp::Lt => "<",
        NumOp::Le => "<=",
        NumOp::Gt => ">",
        NumOp::Ge => ">=",
    }
}

fn str_op(style: &mut Style, op: StrOp) -> String {
    match op {
        StrOp::Eq => "=".into(),
        StrOp::Ne => "!=".into(),
        StrOp::Like => style.keyword("like"),
        StrOp::ILike => style.keyword("ilike"),
    }
}

/// `ident op value`, with symbol operators sometimes written without spaces.
fn join_clause(style: &mut Style, ident: &str, op: &str, value: &str) -> String {
    let symbolic = op.starts_with(['=', '!', '<', '>']);
    let gap = if symbolic && style.pick(3) == 0 {
        ""
    } else {
        style.space
    };
    format!("{ident}{gap}{op}{gap}{value}")
}

fn print_condition(style: &mut Style, ident: &str, cond: &StringCondition) -> String {
    let s = style.space;
    match cond {
        StringCondition::Compare(op, value) => {
            let op = str_op(style, *op);
            let value = print_string(style, value);
            join_clause(style, ident, &op, &value)
        }
        StringCondition::IsNull => format!("{ident}{s}{}{s}{}", style.keyword("is"), style.keyword("null")),
        StringCondition::IsNotNull => format!(
            "{ident}{s}{}{s}{}{s}{}",
            style.keyword("is"),
            style.keyword("not"),
            style.keyword("null")
        ),
    }
}

fn print_list(style: &mut Style, ident: &str, negated: bool, values: &[String]) -> String {
    let s = style.space;
    let op = if negated {
        format!("{}{s}{}", style.keyword("not"), style.keyword("in"))
    } else {
        style.keyword("in")
    };
    let items: Vec<String> = values.iter().map(|v| print_string(style, v)).collect();
    let trailing = if !values.is_empty() && style.pick(4) == 0 {
        ","
    } else {
        ""
    };
    format!("{ident}{s}{op}{s}({}{trailing})", items.join(&format!(",{s}")))
}

fn print_float(style: &mut Style, value: f64) -> String {
    match style.pick(3) {
        0 => format!("{value}"),
        1 => format!("{value:e}"),
        _ => format!("{value:?}"),
    }
}

const METRIC: &[&str] = &["metrics", "metric"];
const PARAM: &[&str] = &["params", "param", "parameters", "parameter"];
const TAG: &[&str] = &["tags", "tag"];
const ATTRIBUTE: &[&str] = &["attributes", "attribute", "attr", "run"];
const DATASET: &[&str] = &["datasets", "dataset"];

fn run_attribute_names(attr: RunAttribute) -> &'static [&'static str] {
    match attr {
        RunAttribute::RunId => &["run_id", "run_uuid"],
        RunAttribute::Status => &["status"],
        RunAttribute::RunName => &["run_name", "Run name", "Run Name", "run name"],
        RunAttribute::UserId => &["user_id"],
        RunAttribute::ArtifactUri => &["artifact_uri"],
        RunAttribute::StartTime => &["start_time", "created", "Created"],
        RunAttribute::EndTime => &["end_time"],
    }
}

/// A run attribute as a bare name or `entity.name`, by any alias.
fn print_run_attribute(style: &mut Style, attr: RunAttribute) -> String {
    let name = style.pick_str(run_attribute_names(attr));
    let key = print_key(style, name);
    if style.pick(2) == 0 {
        key
    } else {
        format!("{}.{key}", style.pick_str(ATTRIBUTE))
    }
}

fn dataset_name(field: DatasetField) -> &'static str {
    match field {
        DatasetField::Name => "name",
        DatasetField::Digest => "digest",
        DatasetField::Context => "context",
    }
}

fn print_run_predicate(style: &mut Style, predicate: &RunPredicate) -> String {
    match predicate {
        RunPredicate::Metric { key, op, value } => {
            let ident = print_entity_key(style, METRIC, key);
            let value = print_float(style, *value);
            join_clause(style, &ident, num_op(*op), &value)
        }
        RunPredicate::Param { key, cond } => {
            let ident = print_entity_key(style, PARAM, key);
            print_condition(style, &ident, cond)
        }
        RunPredicate::Tag { key, cond } => {
            let ident = print_entity_key(style, TAG, key);
            print_condition(style, &ident, cond)
        }
        RunPredicate::AttributeString { attr, op, value } => {
            let ident = print_run_attribute(style, *attr);
            let op = str_op(style, *op);
            let value = print_string(style, value);
            join_clause(style, &ident, &op, &value)
        }
        RunPredicate::AttributeNumber { attr, op, value } => {
            let ident = print_run_attribute(style, *attr);
            join_clause(style, &ident, num_op(*op), &value.to_string())
        }
        RunPredicate::RunIdIn { negated, values } => {
            let ident = print_run_attribute(style, RunAttribute::RunId);
            print_list(style, &ident, *negated, values)
        }
        RunPredicate::Dataset { field, cond } => {
            let ident = print_entity_key(style, DATASET, dataset_name(*field));
            print_condition(style, &ident, cond)
        }
        RunPredicate::DatasetIn {
            field,
            negated,
            values,
        } => {
            let ident = print_entity_key(style, DATASET, dataset_name(*field));
            print_list(style, &ident, *negated, values)
        }
    }
}

fn experiment_attribute_name(attr: ExperimentAttribute) -> &'static str {
    match attr {
        ExperimentAttribute::Name => "name",
        ExperimentAttribute::ExperimentId => "experiment_id",
        ExperimentAttribute::CreationTime => "creation_time",
        ExperimentAttribute::LastUpdateTime => "last_update_time",
    }
}

fn print_experiment_attribute(style: &mut Style, attr: ExperimentAttribute) -> String {
    let key = print_key(style, experiment_attribute_name(attr));
    if style.pick(2) == 0 {
        key
    } else {
        format!("{}.{key}", style.pick_str(ATTRIBUTE))
    }
}

fn print_experiment_predicate(style: &mut Style, predicate: &ExperimentPredicate) -> String {
    match predicate {
        ExperimentPredicate::Name { op, value } => {
            let ident = print_experiment_attribute(style, ExperimentAttribute::Name);
            let op = str_op(style, *op);
            let value = print_string(style, value);
            join_clause(style, &ident, &op, &value)
        }
        ExperimentPredicate::Time { attr, op, value } => {
            let ident = print_experiment_attribute(style, *attr);
            join_clause(style, &ident, num_op(*op), &value.to_string())
        }
        ExperimentPredicate::ExperimentId { op, value } => {
            let ident = print_experiment_attribute(style, ExperimentAttribute::ExperimentId);
            let op = str_op(style, *op);
            let value = print_string(style, value);
            join_clause(style, &ident, &op, &value)
        }
        ExperimentPredicate::ExperimentIdIn { negated, values } => {
            let ident = print_experiment_attribute(style, ExperimentAttribute::ExperimentId);
            print_list(style, &ident, *negated, values)
        }
        ExperimentPredicate::Tag { key, cond } => {
            let ident = print_entity_key(style, TAG, key);
            print_condition(style, &ident, cond)
        }
    }
}

/// Clauses joined by `AND` in a random case, with optional whitespace around the whole filter.
fn join_filter(style: &mut Style, clauses: Vec<String>) -> String {
    let s = style.space;
    let mut out = String::from(style.pick_str(&["", " ", "\n"]));
    for (i, clause) in clauses.iter().enumerate() {
        if i > 0 {
            let and = style.keyword("and");
            out.push_str(&format!("{s}{and}{s}"));
        }
        out.push_str(clause);
    }
    out.push_str(style.pick_str(&["", " ", "\t"]));
    out
}

fn print_run_order_by(style: &mut Style, order: &RunOrderBy) -> String {
    let ident = match &order.key {
        RunOrderKey::Metric(key) => print_entity_key(style, METRIC, key),
        RunOrderKey::Param(key) => print_entity_key(style, PARAM, key),
        RunOrderKey::Tag(key) => print_entity_key(style, TAG, key),
        RunOrderKey::Attribute(attr) => print_run_attribute(style, *attr),
    };
    print_direction(style, ident, order.ascending)
}

fn print_direction(style: &mut Style, ident: String, ascending: bool) -> String {
    let s = style.space;
    if ascending {
        if style.pick(2) == 0 {
            ident
        } else {
            format!("{ident}{s}{}", style.keyword("asc"))
        }
    } else {
        format!("{ident}{s}{}", style.keyword("desc"))
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies

fn style() -> impl Strategy<Value = Style> {
    (
        any::<u64>(),
        prop::sample::select(vec![" ", "  ", "\t", "\n", " \r\n ", "\u{3000}"]),
    )
        .prop_map(|(choices, space)| Style { choices, space })
}

/// Keys of every shape: bare-safe, printable ASCII with quotes and back-ticks, arbitrary unicode.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z_][a-zA-Z0-9_./:-]{0,12}",
        "[0-9.:/-]{1,6}",
        "[ -~]{1,10}",
        "[a-z `'\"\\\\]{1,8}",
        any::<String>().prop_filter("keys are not empty", |k| !k.is_empty()),
    ]
}

/// String values, including the empty string and every quote and escape character.
fn value() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z%_]{0,8}", "[ -~]{0,12}", "['\"`\\\\ ]{0,6}", any::<String>()]
}

fn values() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(value(), 0..4)
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
        (-1000i32..1000).prop_map(f64::from),
        Just(0.0),
    ]
}

fn num_op_s() -> impl Strategy<Value = NumOp> {
    prop::sample::select(vec![
        NumOp::Eq,
        NumOp::Ne,
        NumOp::Lt,
        NumOp::Le,
        NumOp::Gt,
        NumOp::Ge,
    ])
}

fn str_op_s() -> impl Strategy<Value = StrOp> {
    prop::sample::select(vec![StrOp::Eq, StrOp::Ne, StrOp::Like, StrOp::ILike])
}

fn condition() -> impl Strategy<Value = StringCondition> {
    prop_oneof![
        3 => (str_op_s(), value()).prop_map(|(op, v)| StringCondition::Compare(op, v)),
        1 => Just(StringCondition::IsNull),
        1 => Just(StringCondition::IsNotNull),
    ]
}

fn dataset_field() -> impl Strategy<Value = DatasetField> {
    prop::sample::select(vec![
        DatasetField::Name,
        DatasetField::Digest,
        DatasetField::Context,
    ])
}

fn run_predicate() -> impl Strategy<Value = RunPredicate> {
    use RunAttribute as A;
    prop_oneof![
        (key(), num_op_s(), finite()).prop_map(|(key, op, value)| RunPredicate::Metric { key, op, value }),
        (key(), condition()).prop_map(|(key, cond)| RunPredicate::Param { key, cond }),
        (key(), condition()).prop_map(|(key, cond)| RunPredicate::Tag { key, cond }),
        (
            prop::sample::select(vec![A::RunId, A::Status, A::RunName, A::UserId, A::ArtifactUri]),
            str_op_s(),
            value()
        )
            .prop_map(|(attr, op, value)| RunPredicate::AttributeString { attr, op, value }),
        (
            prop::sample::select(vec![A::StartTime, A::EndTime]),
            num_op_s(),
            any::<i64>()
        )
            .prop_map(|(attr, op, value)| RunPredicate::AttributeNumber { attr, op, value }),
        (any::<bool>(), values()).prop_map(|(negated, values)| RunPredicate::RunIdIn { negated, values }),
        (dataset_field(), str_op_s(), value()).prop_map(|(field, op, v)| RunPredicate::Dataset {
            field,
            cond: StringCondition::Compare(op, v)
        }),
        (dataset_field(), any::<bool>(), values()).prop_map(|(field, negated, values)| {
            RunPredicate::DatasetIn {
                field,
                negated,
                values,
            }
        }),
    ]
}

fn experiment_predicate() -> impl Strategy<Value = ExperimentPredicate> {
    use ExperimentAttribute as A;
    prop_oneof![
        (str_op_s(), value()).prop_map(|(op, value)| ExperimentPredicate::Name { op, value }),
        (
            prop::sample::select(vec![A::CreationTime, A::LastUpdateTime]),
            num_op_s(),
            any::<i64>()
        )
            .prop_map(|(attr, op, value)| ExperimentPredicate::Time { attr, op, value }),
        (prop::sample::select(vec![StrOp::Eq, StrOp::Ne]), value())
            .prop_map(|(op, value)| ExperimentPredicate::ExperimentId { op, value }),
        (any::<bool>(), values())
            .prop_map(|(negated, values)| ExperimentPredicate::ExperimentIdIn { negated, values }),
        (key(), condition()).prop_map(|(key, cond)| ExperimentPredicate::Tag { key, cond }),
    ]
}

fn run_order_by() -> impl Strategy<Value = RunOrderBy> {
    use RunAttribute as A;
    let key = prop_oneof![
        key().prop_map(RunOrderKey::Metric),
        key().prop_map(RunOrderKey::Param),
        key().prop_map(RunOrderKey::Tag),
        prop::sample::select(vec![
            A::RunId,
            A::Status,
            A::RunName,
            A::UserId,
            A::ArtifactUri,
            A::StartTime,
            A::EndTime
        ])
        .prop_map(RunOrderKey::Attribute),
    ];
    (key, any::<bool>()).prop_map(|(key, ascending)| RunOrderBy { key, ascending })
}

/// Text made of grammar-ish pieces, mostly well-formed-looking, to reach deep parser states.
fn token_soup() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "metrics.a",
        "metric.`a b`",
        "params.x",
        "tags.\"q\"",
        "tags.",
        "`metrics`",
        ".",
        "..",
        "=",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "==",
        "<>",
        "!",
        "LIKE",
        "ilike",
        "IN",
        "not",
        "NOT",
        "IS",
        "NULL",
        "AND",
        "and",
        "OR",
        "(",
        ")",
        ",",
        "'s'",
        "''",
        "\"d\"",
        "'",
        "\"",
        "`",
        "\\",
        "1",
        "-2.5e3",
        "+1",
        "1e",
        "1e+",
        ".5",
        "1e999",
        "99999999999999999999999",
        "start_time",
        "status",
        "run_id",
        "`Run name`",
        "created",
        "datasets.name",
        "attr.run_id",
        "experiment_id",
        "name",
        "creation_time",
        "asc",
        "DESC",
        "é",
        "😀",
        "\u{0301}",
        "\0",
        "-",
        "+",
        ";",
    ]);
    prop::collection::vec((piece, prop::sample::select(vec!["", " ", "\t"])), 0..12)
        .prop_map(|pieces| pieces.into_iter().flat_map(|(p, s)| [p, s]).collect())
}

// ---------------------------------------------------------------------------------------------
// Properties

fn parse_everything(text: &str) {
    for result in [parse_run_filter(text).err(), parse_experiment_filter(text).err()]
        .into_iter()
        .chain([
            parse_run_order_by(text).err(),
            parse_experiment_order_by(text).err(),
        ])
        .flatten()
    {
        assert!(!result.0.is_empty(), "empty error message for {text:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_on_arbitrary_text(text in any::<String>()) {
        parse_everything(&text);
    }

    #[test]
    fn never_panics_on_token_soup(text in token_soup()) {
        parse_everything(&text);
    }

    #[test]
    fn run_filters_round_trip(predicates in prop::collection::vec(run_predicate(), 0..5), mut style in style()) {
        let clauses = predicates.iter().map(|p| print_run_predicate(&mut style, p)).collect();
        let text = join_filter(&mut style, clauses);
        prop_assert_eq!(parse_run_filter(&text), Ok(predicates), "filter text {:?}", text);
    }

    #[test]
    fn experiment_filters_round_trip(
        predicates in prop::collection::vec(experiment_predicate(), 0..5),
        mut style in style(),
    ) {
        let clauses = predicates.iter().map(|p| print_experiment_predicate(&mut style, p)).collect();
        let text = join_filter(&mut style, clauses);
        prop_assert_eq!(parse_experiment_filter(&text), Ok(predicates), "filter text {:?}", text);
    }

    #[test]
    fn run_order_by_round_trips(order in run_order_by(), mut style in style()) {
        let text = print_run_order_by(&mut style, &order);
        prop_assert_eq!(parse_run_order_by(&text), Ok(order), "order_by text {:?}", text);
    }

    #[test]
    fn experiment_order_by_round_trips(
        key in prop::sample::select(vec![
            ExperimentAttribute::Name,
            ExperimentAttribute::ExperimentId,
            ExperimentAttribute::CreationTime,
            ExperimentAttribute::LastUpdateTime,
        ]),
        ascending in any::<bool>(),
        mut style in style(),
    ) {
        let ident = print_experiment_attribute(&mut style, key);
        let text = print_direction(&mut style, ident, ascending);
        prop_assert_eq!(parse_experiment_order_by(&text), Ok(ExperimentOrderBy { key, ascending }), "{:?}", text);
    }
}
