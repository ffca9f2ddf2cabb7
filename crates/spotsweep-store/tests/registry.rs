//! The model registry on a real SQLite file: names, version numbers that are never reused,
//! sources resolved to where the files are, aliases and stages, search with the prompt rule,
//! paging, and persistence across reopen.

use spotsweep_core::registry::{ModelSource, Stage, VersionRef, parse_source};
use spotsweep_core::search::{
    parse_model_version_filter, parse_model_version_order_by, parse_registered_model_filter,
    parse_registered_model_order_by,
};
use spotsweep_store::*;

#[macro_use]
mod common;
use common::{Backend, Close, Stores};

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: v.into(),
    }
}

async fn new_model(store: &impl Stores, name: &str) -> RegisteredModel {
    store
        .create_registered_model(NewRegisteredModel {
            name: name.into(),
            description: None,
            tags: vec![],
        })
        .await
        .unwrap()
}

fn new_version(name: &str, source: &str, run_id: Option<&str>, model_id: Option<&str>) -> NewModelVersion {
    NewModelVersion {
        name: name.into(),
        source: source.into(),
        parsed_source: parse_source(source).unwrap(),
        run_id: run_id.map(Into::into),
        model_id: model_id.map(Into::into),
        run_link: None,
        description: Some(String::new()),
        tags: vec![],
    }
}

async fn add_version(store: &impl Stores, name: &str, source: &str) -> ModelVersion {
    store
        .create_model_version(new_version(name, source, None, None))
        .await
        .unwrap()
}

/// A run "r1" in a new experiment; returns its artifact root.
async fn new_run(store: &impl Stores) -> String {
    let exp = store
        .create_experiment(NewExperiment {
            name: "e".into(),
            artifact_location: None,
            artifact_root: "mlflow-artifacts:".into(),
            tags: vec![],
            now: 1,
        })
        .await
        .unwrap();
    store
        .create_run(NewRun {
            experiment_id: exp,
            run_id: "r1".into(),
            run_name: "r1".into(),
            user_id: "u".into(),
            start_time: 1,
            tags: vec![],
        })
        .await
        .unwrap()
        .info
        .artifact_uri
}

async fn registered_models_are_unique_and_carry_description_and_tags<B: Backend<Store: Stores>>() {
    let db = B::start().await;
    let store = db.open().await;
    let created = store
        .create_registered_model(NewRegisteredModel {
            name: "reg".into(),
            description: Some("d".into()),
            tags: vec![kv("b", "1"), kv("a", "x"), kv("a", "2")],
        })
        .await
        .unwrap();
    assert_eq!(created.tags, vec![kv("a", "2"), kv("b", "1")]);
    assert!(matches!(
        store
            .create_registered_model(NewRegisteredModel {
                name: "reg".into(),
                description: None,
                tags: vec![]
            })
            .await,
        Err(StoreError::AlreadyExists(m)) if m == "Registered Model (name=reg) already exists."
    ));
    let got = store.get_registered_model("reg").await.unwrap();
    assert_eq!(got.description.as_deref(), Some("d"));
    assert_eq!(got.tags, vec![kv("a", "2"), kv("b", "1")]);
    assert!(matches!(
        store.get_registered_model("nope").await,
        Err(StoreError::NotFound(m)) if m == "Registered Model with name=nope not found"
    ));

    let updated = store.update_registered_model("reg", None).await.unwrap();
    assert_eq!(updated.description, None);
    assert!(updated.last_updated_timestamp >= got.last_updated_timestamp);

    store.set_registered_model_tag("reg", "b", "3").await.unwrap();
    store.delete_registered_model_tag("reg", "a").await.unwrap();
    store
        .delete_registered_model_tag("reg", "never-set")
        .await
        .unwrap();
    assert_eq!(
        store.get_registered_model("reg").await.unwrap().tags,
        vec![kv("b", "3")]
    );
    assert!(matches!(
        store.set_registered_model_tag("nope", "k", "v").await,
        Err(StoreError::NotFound(_))
    ));
}

async fn version_numbers_are_never_reused_until_the_model_is_deleted<B: Backend<Store: Stores>>() {
    let db = B::start().await;
    let store = db.open().await;
    new_model(&store, "reg").await;
    for expected in 1..=3 {
        assert_eq!(
            add_version(&store, "reg", "s3://bucket/m").await.version,
            expected
        );
    }
    store.delete_model_version("reg", 3).await.unwrap();
    assert!(matches!(
        store.resolve_version("reg", &VersionRef::Number(3)).await,
        Err(StoreError::NotFound(m)) if m == "Model Version (name=reg, version=3) not found"
    ));
    assert!(matches!(
        store.delete_model_version("reg", 3).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(add_version(&store, "reg", "s3://bucket/m").await.version, 4);

    // Reopening changes nothing.
    store.close().await;
    let store = db.open().await;
    assert_eq!(add_version(&store, "reg", "s3://bucket/m").await.version, 5);

    // A deleted model takes everything with it; the name starts over at 1.
    store.set_alias("reg", "champ", 5).await.unwrap();
    store.set_model_version_tag("reg", 5, "k", "v").await.unwrap();
    store.delete_registered_model("reg").await.unwrap();
    assert!(matches!(
        store.get_registered_model("reg").await,
        Err(StoreError::NotFound(_))
    ));
    new_model(&store, "reg").await;
    let first = add_version(&store, "reg", "s3://bucket/m").await;
    assert_eq!(first.version, 1);
    assert!(first.tags.is_empty() && first.aliases.is_empty());
}

async fn sources_resolve_to_where_the_files_are<B: Backend<Store: Stores>>() {
    let db = B::start().await;
    let store = db.open().await;
    let run_root = new_run(&store).await;
    new_model(&store, "reg").await;

    // A runs:/ source needs its run named and is stored as given.
    assert!(matches!(
        store
            .create_model_version(new_version("reg", "runs:/r1/model", None, None))
            .await,
        Err(StoreError::Invalid(_))
    ));
    let v1 = store
        .create_model_version(new_version("reg", "runs:/r1/model", Some("r1"), None))
        .await
        .unwrap();
    assert_eq!((v1.version, v1.run_id.as_str()), (1, "r1"));
    assert_eq!(v1.storage_location, "runs:/r1/model");

    // A proxied location must lie under the named run's artifact root.
    let inside = format!("{run_root}/model");
    let v2 = store
        .create_model_version(new_version("reg", &inside, Some("r1"), None))
        .await
        .unwrap();
    assert_eq!(v2.storage_location, inside);
    for (source, run) in [
        ("mlflow-artifacts:/0/other/artifacts/model", Some("r1")),
        (inside.as_str(), Some("no-such-run")),
        (inside.as_str(), None),
    ] {
        assert!(
            matches!(
                store
                    .create_model_version(new_version("reg", source, run, None))
                    .await,
                Err(StoreError::Invalid(_))
            ),
            "{source} {run:?}"
        );
    }

    // A logged model: its artifact root, and its run unless the request names one.
    let experiment_id = store.get_run("r1").await.unwrap().info.experiment_id;
    let logged = store
        .create_logged_model(NewLoggedModel {
            experiment_id,
            name: "model".into(),
            model_type: String::new(),
            source_run_id: "r1".into(),
            params: vec![],
            tags: vec![],
            now: 1,
        })
        .await
        .unwrap();
    let id = logged.model_id.as_str();
    let v3 = store
        .create_model_version(new_version("reg", &format!("models:/{id}"), None, Some(id)))
        .await
        .unwrap();
    assert_eq!(v3.storage_location, logged.artifact_uri);
    assert!(
        v3.storage_location.ends_with(&format!("/models/{id}/artifacts")),
        "{}",
        v3.storage_location
    );
    assert_eq!(v3.run_id, "r1");
    assert_eq!(v3.model_id.as_deref(), Some(id));
    assert!(matches!(
        store.create_model_version(new_version("reg", "models:/m-zzz", None, Some("m-zzz"))).await,
        Err(StoreError::NotFound(m)) if m == "Logged model with ID 'm-zzz' not found."
    ));
    assert!(matches!(
        store
            .create_model_version(new_version("reg", &format!("models:/{id}"), None, None))
            .await,
        Err(StoreError::Invalid(_))
    ));

    // Another version, through an alias: resolved to its number and its location.
    store.set_alias("reg", "champ", 3).await.unwrap();
    new_model(&store, "other").await;
    let copy = store
        .create_model_version(new_version("other", "models:/reg@champ", None, None))
        .await
        .unwrap();
    assert_eq!(copy.source, "models:/reg/3");
    assert_eq!(copy.storage_location, logged.artifact_uri);
    assert_eq!(copy.run_id, "r1");
    // A copy cannot claim another run than its original's.
    assert!(matches!(
        store
            .create_model_version(new_version("other", "models:/reg/3", Some("r9"), None))
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .create_model_version(new_version("other", "models:/nope/1", None, None))
            .await,
        Err(StoreError::NotFound(_))
    ));

    // The registered model does not exist.
    assert!(matches!(
        store.create_model_version(new_version("nope", "s3://b/k", None, None)).await,
        Err(StoreError::NotFound(m)) if m == "Registered Model with name=nope not found"
    ));
    assert!(matches!(
        new_version("reg", "s3://b/k", None, None).parsed_source,
        ModelSource::External
    ));
}

async fn aliases_point_at_live_versions_and_latest_is_reserved_for_the_highest<B: Backend<Store: Stores>>() {
    let db = B::start().await;
    let store = db.open().await;
    new_model(&store, "reg").await;
    for _ in 0..3 {
        add_version(&store, "reg", "s3://b/k").await;
    }
    store.set_alias("reg", "champ", 1).await.unwrap();
    store.set_alias("reg", "also", 1).await.unwrap();
    store.set_alias("reg", "champ", 2).await.unwrap(); // moved
    assert!(matches!(
        store.set_alias("reg", "x", 9).await,
        Err(StoreError::NotFound(_))
    ));

    let champ = store
        .resolve_version("reg", &VersionRef::Alias("champ".into()))
        .await
        .unwrap();
    assert_eq!(
        (champ.version, champ.aliases.clone()),
        (2, vec!["champ".to_owned()])
    );
    let one = store
        .resolve_version("reg", &VersionRef::Number(1))
        .await
        .unwrap();
    assert_eq!(one.aliases, vec!["also".to_owned()]);
    assert!(matches!(
        store.resolve_version("reg", &VersionRef::Alias("nope".into())).await,
        Err(StoreError::Invalid(m)) if m == "Registered model alias nope not found."
    ));
    assert_eq!(
        store
            .resolve_version("reg", &VersionRef::Latest)
            .await
            .unwrap()
            .version,
        3
    );

    let model = store.get_registered_model("reg").await.unwrap();
    assert_eq!(
        model.aliases,
        vec![
            ModelAlias {
                alias: "also".into(),
                version: 1
            },
            ModelAlias {
                alias: "champ".into(),
                version: 2
            },
        ]
    );

    // Deleting a version drops the aliases that pointed at it.
    store.delete_model_version("reg", 2).await.unwrap();
    assert!(matches!(
        store
            .resolve_version("reg", &VersionRef::Alias("champ".into()))
            .await,
        Err(StoreError::Invalid(_))
    ));
    store.delete_alias("reg", "also").await.unwrap();
    store.delete_alias("reg", "never").await.unwrap();
    assert!(
        store
            .get_registered_model("reg")
            .await
            .unwrap()
            .aliases
            .is_empty()
    );
    assert!(matches!(
        store.delete_alias("nope", "a").await,
        Err(StoreError::NotFound(_))
    ));
}

async fn stages_archive_others_and_latest_versions_are_per_stage<B: Backend<Store: Stores>>() {
    let db = B::start().await;
    let store = db.open().await;
    new_model(&store, "reg").await;
    for _ in 0..4 {
        add_version(&store, "reg", "s3://b/k").await;
    }
    store
        .transition_model_version_stage("reg", 1, Stage::Production, false)
        .await
        .unwrap();
    store
        .transition_model_version_stage("reg", 2, Stage::Staging, false)
        .await
        .unwrap();
    let moved = store
        .transition_model_version_stage("reg", 3, Stage::Production, true)
        .await
        .unwrap();
    assert_eq!(moved.current_stage, Stage::Production);
    let stage_of = |v: &ModelVersion| (v.version, v.current_stage);
    let latest = store.latest_versions("reg", &[]).await.unwrap();
    assert_eq!(
        latest.iter().map(stage_of).collect::<Vec<_>>(),
        vec![
            (1, Stage::Archived),
            (2, Stage::Staging),
            (3, Stage::Production),
            (4, Stage::None)
        ]
    );
    let production = store.latest_versions("reg", &[Stage::Production]).await.unwrap();
    assert_eq!(
        production.iter().map(stage_of).collect::<Vec<_>>(),
        vec![(3, Stage::Production)]
    );
    assert_eq!(
        store
            .resolve_version("reg", &VersionRef::Stage(Stage::Staging))
            .await
            .unwrap()
            .version,
        2
    );
    let model = store.get_registered_model("reg").await.unwrap();
    assert_eq!(
        model
            .latest_versions
            .iter()
            .map(stage_of)
            .collect::<Vec<_>>()
            .len(),
        4
    );

    let described = store
        .update_model_version("reg", 4, Some("four".into()))
        .await
        .unwrap();
    assert_eq!(described.description.as_deref(), Some("four"));
    assert_eq!(
        store
            .update_model_version("reg", 4, None)
            .await
            .unwrap()
            .description,
        None
    );
}

async fn renaming_takes_versions_tags_and_aliases_along<B: Backend<Store: Stores>>() {
    let db = B::start().await;
    let store = db.open().await;
    new_model(&store, "old").await;
    new_model(&store, "taken").await;
    add_version(&store, "old", "s3://b/k").await;
    store.set_alias("old", "champ", 1).await.unwrap();
    store.set_registered_model_tag("old", "team", "ml").await.unwrap();
    store.set_model_version_tag("old", 1, "ok", "yes").await.unwrap();
    assert!(matches!(
        store.rename_registered_model("old", "taken").await,
        Err(StoreError::AlreadyExists(_))
    ));
    let renamed = store.rename_registered_model("old", "new").await.unwrap();
    assert_eq!(renamed.name, "new");
    assert_eq!(renamed.tags, vec![kv("team", "ml")]);
    assert_eq!(renamed.aliases.len(), 1);
    assert_eq!(renamed.latest_versions[0].name, "new");
    let v = store
        .resolve_version("new", &VersionRef::Number(1))
        .await
        .unwrap();
    assert_eq!(v.tags, vec![kv("ok", "yes")]);
    assert!(matches!(
        store.get_registered_model("old").await,
        Err(StoreError::NotFound(_))
    ));
}

fn model_query(filter: &str, order_by: &[&str], limit: u32, offset: u64) -> RegisteredModelQuery {
    let parsed = parse_registered_model_filter(filter).unwrap();
    RegisteredModelQuery {
        filter: parsed.predicates,
        exclude_prompts: parsed.exclude_prompts,
        order_by: parse_registered_model_order_by(
            &order_by.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap(),
        limit,
        offset,
    }
}

fn version_query(filter: &str, order_by: &[&str]) -> ModelVersionQuery {
    let parsed = parse_model_version_filter(filter).unwrap();
    ModelVersionQuery {
        filter: parsed.predicates,
        exclude_prompts: parsed.exclude_prompts,
        order_by: parse_model_version_order_by(&order_by.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .unwrap(),
        limit: 100,
        offset: 0,
    }
}

fn names(page: &Page<RegisteredModel>) -> Vec<&str> {
    page.items.iter().map(|m| m.name.as_str()).collect()
}

async fn searching_models_leaves_prompts_out_and_pages_in_name_order<B: Backend<Store: Stores>>() {
    let db = B::start().await;
    let store = db.open().await;
    for name in ["b-model", "a-model", "c-model", "prompt-1"] {
        new_model(&store, name).await;
    }
    store
        .set_registered_model_tag("prompt-1", "mlflow.prompt.is_prompt", "true")
        .await
        .unwrap();
    store
        .set_registered_model_tag("a-model", "team", "ml")
        .await
        .unwrap();
    store
        .set_registered_model_tag("b-model", "mlflow.prompt.is_prompt", "false")
        .await
        .unwrap();

    // The clause the client always appends matches models without the tag.
    let all = store
        .search_registered_models(&model_query(
            "tag.`mlflow.prompt.is_prompt` != 'true'",
            &[],
            100,
            0,
        ))
        .await
        .unwrap();
    assert_eq!(names(&all), vec!["a-model", "b-model", "c-model"]);
    assert_eq!(all.next_offset, None);
    let prompts = store
        .search_registered_models(&model_query(
            "tags.`mlflow.prompt.is_prompt` = 'true'",
            &[],
            100,
            0,
        ))
        .await
        .unwrap();
    assert_eq!(names(&prompts), vec!["prompt-1"]);

    let tagged = store
        .search_registered_models(&model_query(
            "tags.team = 'ml' AND name LIKE '%model'",
            &[],
            100,
            0,
        ))
        .await
        .unwrap();
    assert_eq!(names(&tagged), vec!["a-model"]);
    // Any other tag comparison needs the tag to exist.
    let not_ml = store
        .search_registered_models(&model_query("tags.team != 'ml'", &[], 100, 0))
        .await
        .unwrap();
    assert!(not_ml.items.is_empty());
    let listed = store
        .search_registered_models(&model_query(
            "name IN ('c-model', 'a-model')",
            &["name DESC"],
            100,
            0,
        ))
        .await
        .unwrap();
    assert_eq!(names(&listed), vec!["c-model", "a-model"]);

    let first = store
        .search_registered_models(&model_query("", &[], 2, 0))
        .await
        .unwrap();
    assert_eq!(names(&first), vec!["a-model", "b-model"]);
    assert_eq!(first.next_offset, Some(2));
    let second = store
        .search_registered_models(&model_query("", &[], 2, 2))
        .await
        .unwrap();
    assert_eq!(names(&second), vec!["c-model"]);
    assert_eq!(second.next_offset, None);

    // Newest update first: touching b-model puts it on top (a millisecond later than the rest).
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store
        .update_registered_model("b-model", Some("x".into()))
        .await
        .unwrap();
    let recent = store
        .search_registered_models(&model_query("", &["timestamp DESC"], 1, 0))
        .await
        .unwrap();
    assert_eq!(names(&recent), vec!["b-model"]);
}

async fn searching_versions_filters_on_name_run_number_source_and_tags<B: Backend<Store: Stores>>() {
    let db = B::start().await;
    let store = db.open().await;
    new_run(&store).await;
    new_model(&store, "reg").await;
    new_model(&store, "other").await;
    add_version(&store, "reg", "s3://b/one").await;
    store
        .create_model_version(new_version("reg", "runs:/r1/model", Some("r1"), None))
        .await
        .unwrap();
    add_version(&store, "reg", "s3://b/three").await;
    add_version(&store, "other", "s3://b/x").await;
    store
        .set_model_version_tag("reg", 3, "validated", "yes")
        .await
        .unwrap();
    store.delete_model_version("reg", 1).await.unwrap();

    let versions = |q: ModelVersionQuery| {
        let store = store.clone();
        async move {
            store
                .search_model_versions(&q)
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|v| (v.name, v.version))
                .collect::<Vec<_>>()
        }
    };
    let reg = |n: i64| ("reg".to_owned(), n);
    assert_eq!(
        versions(version_query("name = 'reg'", &["version_number DESC"])).await,
        vec![reg(3), reg(2)]
    );
    assert_eq!(
        versions(version_query("name = 'reg' AND version_number >= 3", &[])).await,
        vec![reg(3)]
    );
    assert_eq!(versions(version_query("run_id = 'r1'", &[])).await, vec![reg(2)]);
    assert_eq!(
        versions(version_query("source_path LIKE 's3://b/t%'", &[])).await,
        vec![reg(3)]
    );
    assert_eq!(
        versions(version_query("tags.validated = 'yes'", &[])).await,
        vec![reg(3)]
    );
    assert_eq!(
        versions(version_query(
            "name IN ('reg', 'other')",
            &["name ASC", "version_number ASC"]
        ))
        .await,
        vec![("other".to_owned(), 1), reg(2), reg(3)]
    );
    // The default order is the most recently updated first.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store
        .update_model_version("reg", 2, Some("touched".into()))
        .await
        .unwrap();
    assert_eq!(
        versions(version_query("name = 'reg'", &[])).await,
        vec![reg(2), reg(3)]
    );

    // Versions of a prompt are left out unless asked for.
    store
        .set_model_version_tag("other", 1, "mlflow.prompt.is_prompt", "true")
        .await
        .unwrap();
    assert_eq!(versions(version_query("name = 'other'", &[])).await, vec![]);
    assert_eq!(
        versions(version_query("tags.`mlflow.prompt.is_prompt` = 'true'", &[])).await,
        vec![("other".to_owned(), 1)]
    );
}

conformance!(sqlite: crate::common::Sqlite;
    registered_models_are_unique_and_carry_description_and_tags,
    version_numbers_are_never_reused_until_the_model_is_deleted,
    sources_resolve_to_where_the_files_are,
    aliases_point_at_live_versions_and_latest_is_reserved_for_the_highest,
    stages_archive_others_and_latest_versions_are_per_stage,
    renaming_takes_versions_tags_and_aliases_along,
    searching_models_leaves_prompts_out_and_pages_in_name_order,
    searching_versions_filters_on_name_run_number_source_and_tags,
);
