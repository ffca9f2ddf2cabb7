//! The model registry's search grammar from the outside: what each accepted filter and
//! `order_by` means, how the client's prompt clause is read, and what gets rejected.

use spotsweep_core::search::{
    ModelVersionAttribute as A, ModelVersionOrderBy, ModelVersionOrderKey as MK, ModelVersionPredicate as MV,
    NumOp, RegisteredModelOrderBy, RegisteredModelOrderKey as RK, RegisteredModelPredicate as RM, StrOp,
    parse_model_version_filter, parse_model_version_order_by, parse_registered_model_filter,
    parse_registered_model_order_by,
};

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

#[test]
fn the_clients_prompt_clause_means_leave_prompts_out_and_matches_untagged_models() {
    // What MlflowClient.search_registered_models sends for filter_string="name = 'x'".
    let f = parse_registered_model_filter("name = 'x' AND tag.`mlflow.prompt.is_prompt` != 'true'").unwrap();
    assert_eq!(
        f.predicates,
        vec![RM::Name {
            op: StrOp::Eq,
            value: "x".into()
        }]
    );
    assert!(f.exclude_prompts);
    // ... and alone, for an empty filter_string.
    let f = parse_registered_model_filter("tag.`mlflow.prompt.is_prompt` != 'true'").unwrap();
    assert!(f.predicates.is_empty() && f.exclude_prompts);
    // No filter at all also leaves prompts out.
    let f = parse_registered_model_filter("").unwrap();
    assert!(f.predicates.is_empty() && f.exclude_prompts);
}

#[test]
fn asking_for_prompts_keeps_the_clause_as_a_tag_comparison() {
    for filter in [
        "tags.`mlflow.prompt.is_prompt` = 'true'",
        "tags.`mlflow.prompt.is_prompt` = 'TRUE'",
        "tags.`mlflow.prompt.is_prompt` != 'false'",
    ] {
        let f = parse_registered_model_filter(filter).unwrap();
        assert!(!f.exclude_prompts, "{filter}");
        assert_eq!(f.predicates.len(), 1, "{filter}");
    }
    let f = parse_model_version_filter("tag.`mlflow.prompt.is_prompt` = 'true'").unwrap();
    assert!(!f.exclude_prompts);
}

#[test]
fn registered_model_filters_compare_the_name_and_tags() {
    let f =
        parse_registered_model_filter("name LIKE 'reg-%' AND tags.team = 'ml' AND name NOT IN ('a', 'b')")
            .unwrap();
    assert_eq!(
        f.predicates,
        vec![
            RM::Name {
                op: StrOp::Like,
                value: "reg-%".into()
            },
            RM::Tag {
                key: "team".into(),
                op: StrOp::Eq,
                value: "ml".into()
            },
            RM::NameIn {
                negated: true,
                values: strings(&["a", "b"])
            },
        ]
    );
    let f = parse_registered_model_filter("attributes.name ILIKE '%X%' AND tag.`a b` != 'c'").unwrap();
    assert_eq!(f.predicates.len(), 2);
}

#[test]
fn registered_model_filters_reject_other_keys_and_or() {
    let e = parse_registered_model_filter("description = 'x'").unwrap_err().0;
    assert_eq!(
        e,
        "Invalid attribute key 'description' specified. Valid keys are '{'name'}'"
    );
    assert!(parse_registered_model_filter("name = 'a' OR name = 'b'").is_err());
    assert!(parse_registered_model_filter("metrics.x > 1").is_err());
    assert!(parse_registered_model_filter("tags.x IS NULL").is_err());
    assert!(parse_registered_model_filter("tags.x IN ('a')").is_err());
    assert!(parse_registered_model_filter("name > 'a'").is_err());
    assert!(parse_registered_model_filter("name = 3").is_err());
}

#[test]
fn model_version_filters_know_four_attributes_and_tags() {
    let f = parse_model_version_filter(
        "name = 'reg' AND version_number >= 2 AND run_id IN ('r1','r2') AND source_path LIKE 'models:/%' \
         AND tags.validated = 'yes' AND version_number != '5'",
    )
    .unwrap();
    assert_eq!(
        f.predicates,
        vec![
            MV::Attribute {
                attr: A::Name,
                op: StrOp::Eq,
                value: "reg".into()
            },
            MV::VersionNumber {
                op: NumOp::Ge,
                value: 2
            },
            MV::AttributeIn {
                attr: A::RunId,
                negated: false,
                values: strings(&["r1", "r2"])
            },
            MV::Attribute {
                attr: A::SourcePath,
                op: StrOp::Like,
                value: "models:/%".into()
            },
            MV::Tag {
                key: "validated".into(),
                op: StrOp::Eq,
                value: "yes".into()
            },
            MV::VersionNumber {
                op: NumOp::Ne,
                value: 5
            },
        ]
    );
    assert!(f.exclude_prompts);
}

#[test]
fn model_version_filters_reject_bad_keys_and_values() {
    assert_eq!(
        parse_model_version_filter("bogus = 'x'").unwrap_err().0,
        "Invalid attribute key 'bogus' specified. Valid keys are '{'name', 'run_id', 'source_path', 'version_number'}'"
    );
    assert_eq!(
        parse_model_version_filter("version_number = 'x'").unwrap_err().0,
        "Invalid value for numeric attribute 'version_number': 'x'"
    );
    assert!(parse_model_version_filter("version_number = 1.5").is_err());
    assert!(parse_model_version_filter("version_number LIKE '1'").is_err());
    assert!(parse_model_version_filter("source_path IN ('a')").is_err());
    assert!(parse_model_version_filter("params.x = 'a'").is_err());
}

#[test]
fn registered_model_order_ends_with_the_name() {
    let entries = |e: &[&str]| parse_registered_model_order_by(&strings(e));
    assert_eq!(
        entries(&[]).unwrap(),
        vec![RegisteredModelOrderBy {
            key: RK::Name,
            ascending: true
        }]
    );
    assert_eq!(
        entries(&["timestamp DESC"]).unwrap(),
        vec![
            RegisteredModelOrderBy {
                key: RK::LastUpdatedTimestamp,
                ascending: false
            },
            RegisteredModelOrderBy {
                key: RK::Name,
                ascending: true
            },
        ]
    );
    assert_eq!(
        entries(&["name DESC"]).unwrap(),
        vec![RegisteredModelOrderBy {
            key: RK::Name,
            ascending: false
        }]
    );
    assert_eq!(
        entries(&["creation_timestamp"]).unwrap_err().0,
        "Invalid order by key 'creation_timestamp' specified. Valid keys are '{'name', 'timestamp'}'"
    );
    assert!(entries(&["timestamp", "last_updated_timestamp"]).is_err());
    assert!(entries(&["name sideways"]).is_err());
}

#[test]
fn model_version_order_has_a_default_and_tie_breakers() {
    let entries = |e: &[&str]| parse_model_version_order_by(&strings(e));
    let by = |key, ascending| ModelVersionOrderBy { key, ascending };
    assert_eq!(
        entries(&[]).unwrap(),
        vec![
            by(MK::LastUpdatedTimestamp, false),
            by(MK::Name, true),
            by(MK::VersionNumber, false)
        ]
    );
    assert_eq!(
        entries(&["version_number ASC"]).unwrap(),
        vec![by(MK::VersionNumber, true), by(MK::Name, true)]
    );
    assert_eq!(
        entries(&["creation_timestamp"]).unwrap(),
        vec![
            by(MK::CreationTimestamp, true),
            by(MK::Name, true),
            by(MK::VersionNumber, false)
        ]
    );
    assert!(entries(&["run_id"]).is_err());
    assert!(entries(&["name", "name DESC"]).is_err());
}
