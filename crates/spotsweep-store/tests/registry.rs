//! The model registry on each backend: names, version numbers that are never reused (two
//! daemons creating versions at once included), sources resolved to where the files are,
//! aliases and stages, search with the prompt rule, paging, and persistence across reopen; and
//! MLflow 3's logged models (params, tags, every metric row, search, a run's model inputs and
//! outputs) and traces (upsert, tags, search, deletion by id and by age).

use spotsweep_core::registry::{ModelSource, Stage, VersionRef, parse_source};
use spotsweep_core::search::{
    ModelAttribute, ModelPredicate, StrOp, parse_model_filter, parse_model_order_by,
    parse_model_version_filter, parse_model_version_order_by, parse_registered_model_filter,
    parse_registered_model_order_by, parse_trace_filter, parse_trace_order_by,
};
use spotsweep_store::*;

#[macro_use]
mod common;
use common::{Backend, Close, Models, Registry};

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: v.into(),
    }
}

async fn new_model(store: &impl Registry, name: &str) -> RegisteredModel {
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

async fn add_version(store: &impl Registry, name: &str, source: &str) -> ModelVersion {
    store
        .create_model_version(new_version(name, source, None, None))
        .await
        .unwrap()
}

/// A run "r1" in a new experiment; returns its artifact root.
async fn new_run(store: &impl Models) -> String {
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

async fn registered_models_are_unique_and_carry_description_and_tags<B: Backend<Store: Registry>>() {
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

async fn version_numbers_are_never_reused_until_the_model_is_deleted<B: Backend<Store: Registry>>() {
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

async fn sources_resolve_to_where_the_files_are<B: Backend<Store: Models>>() {
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

async fn aliases_point_at_live_versions_and_latest_is_reserved_for_the_highest<
    B: Backend<Store: Registry>,
>() {
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

async fn stages_archive_others_and_latest_versions_are_per_stage<B: Backend<Store: Registry>>() {
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

async fn renaming_takes_versions_tags_and_aliases_along<B: Backend<Store: Registry>>() {
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

async fn searching_models_leaves_prompts_out_and_pages_in_name_order<B: Backend<Store: Registry>>() {
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

async fn searching_versions_filters_on_name_run_number_source_and_tags<B: Backend<Store: Models>>() {
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

// ---------------------------------------------------------------------------------------------
// Two daemons on one database

async fn two_stores_creating_versions_of_one_model_at_once_never_collide<B: Backend<Store: Registry>>() {
    let db = B::start().await;
    let (a, b) = (db.open().await, db.open().await);
    new_model(&a, "reg").await;
    // Both stores try the same new name too: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let version = add_version(&store, "reg", "s3://bucket/m").await.version;
            let named = store
                .create_registered_model(NewRegisteredModel {
                    name: "contested".into(),
                    description: None,
                    tags: vec![],
                })
                .await;
            (version, named.is_ok())
        }));
    }
    let mut versions = Vec::new();
    let mut named = 0;
    for task in tasks {
        let (version, won) = task.await.unwrap();
        versions.push(version);
        named += usize::from(won);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=24).collect::<Vec<i64>>());
    assert_eq!(named, 1);
    assert_eq!(
        b.resolve_version("reg", &VersionRef::Latest)
            .await
            .unwrap()
            .version,
        24
    );
}

// ---------------------------------------------------------------------------------------------
// Logged models (MLflow 3)

/// An experiment `name` under `mlflow-artifacts:`; returns its id and artifact location.
async fn new_experiment(store: &impl Models, name: &str) -> (i64, String) {
    let id = store
        .create_experiment(NewExperiment {
            name: name.into(),
            artifact_location: None,
            artifact_root: "mlflow-artifacts:".into(),
            tags: vec![],
            now: 1,
        })
        .await
        .unwrap();
    (id, store.get_experiment(id).await.unwrap().artifact_location)
}

fn new_logged_model(experiment_id: i64, name: &str, now: i64) -> NewLoggedModel {
    NewLoggedModel {
        experiment_id,
        name: name.into(),
        model_type: String::new(),
        source_run_id: String::new(),
        params: vec![],
        tags: vec![],
        now,
    }
}

fn metric(key: &str, value: f64, timestamp: i64, step: i64) -> ModelMetric {
    ModelMetric {
        key: key.into(),
        value,
        timestamp,
        step,
        run_id: String::new(),
        dataset_name: None,
        dataset_digest: None,
    }
}

async fn logged_models_are_created_pending_finalized_and_soft_deleted<B: Backend<Store: Models>>() {
    let db = B::start().await;
    let store = db.open().await;
    let (exp, location) = new_experiment(&store, "e").await;
    let created = store
        .create_logged_model(NewLoggedModel {
            experiment_id: exp,
            name: "model".into(),
            model_type: "agent".into(),
            source_run_id: String::new(),
            params: vec![kv("b", "1"), kv("a", "2"), kv("b", "3")],
            tags: vec![kv("t", "x"), kv("s", "y")],
            now: 10,
        })
        .await
        .unwrap();
    let id = created.model_id.clone();
    assert!(
        id.len() == 34 && id.starts_with("m-") && id[2..].chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(created.status, LoggedModelStatus::Pending);
    assert_eq!(created.artifact_uri, format!("{location}/models/{id}/artifacts"));
    assert_eq!(created.lifecycle_stage, LifecycleStage::Active);
    assert_eq!(
        (created.creation_timestamp_ms, created.last_updated_timestamp_ms),
        (10, 10)
    );
    // Params in the order logged (a repeated key keeps its first value), tags by key.
    assert_eq!(created.params, vec![kv("b", "1"), kv("a", "2")]);
    assert_eq!(created.tags, vec![kv("s", "y"), kv("t", "x")]);
    assert_eq!(store.get_logged_model(&id, false).await.unwrap(), created);

    let ready = store
        .set_logged_model_status(&id, LoggedModelStatus::Ready, 20)
        .await
        .unwrap();
    assert_eq!(
        (ready.status, ready.last_updated_timestamp_ms),
        (LoggedModelStatus::Ready, 20)
    );
    store
        .log_logged_model_params(&id, vec![kv("c", "4"), kv("a", "changed")])
        .await
        .unwrap();
    store
        .set_logged_model_tags(&id, vec![kv("t", "z"), kv("u", "1")])
        .await
        .unwrap();
    store.delete_logged_model_tag(&id, "s").await.unwrap();
    assert!(matches!(
        store.delete_logged_model_tag(&id, "s").await,
        Err(StoreError::NotFound(m)) if m == format!("No tag with key 's' found for model with ID '{id}'.")
    ));
    let got = store.get_logged_model(&id, false).await.unwrap();
    assert_eq!(got.params, vec![kv("b", "1"), kv("a", "2"), kv("c", "4")]);
    assert_eq!(got.tags, vec![kv("t", "z"), kv("u", "1")]);

    // Unknown and inactive experiments.
    assert!(matches!(
        store.create_logged_model(new_logged_model(999, "m", 1)).await,
        Err(StoreError::NotFound(m)) if m == "No Experiment with id=999 exists"
    ));
    let (gone, _) = new_experiment(&store, "gone").await;
    store
        .set_experiment_lifecycle(gone, LifecycleStage::Deleted)
        .await
        .unwrap();
    assert!(matches!(
        store.create_logged_model(new_logged_model(gone, "m", 1)).await,
        Err(StoreError::Invalid(m))
            if m == format!("The experiment {gone} must be in the 'active' state. Current state is deleted.")
    ));

    // Deleted: hidden unless asked for, and closed to writes.
    store.delete_logged_model(&id, 30).await.unwrap();
    assert!(matches!(
        store.get_logged_model(&id, false).await,
        Err(StoreError::NotFound(m)) if m == format!("Logged model with ID '{id}' not found.")
    ));
    let deleted = store.get_logged_model(&id, true).await.unwrap();
    assert_eq!(
        (deleted.lifecycle_stage, deleted.last_updated_timestamp_ms),
        (LifecycleStage::Deleted, 30)
    );
    assert!(matches!(
        store.delete_logged_model(&id, 31).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.set_logged_model_tags(&id, vec![kv("k", "v")]).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .set_logged_model_status("m-nope", LoggedModelStatus::Ready, 1)
            .await,
        Err(StoreError::NotFound(m)) if m == "Logged model with ID 'm-nope' not found."
    ));

    // Reopening changes nothing.
    store.close().await;
    let store = db.open().await;
    assert_eq!(store.get_logged_model(&id, true).await.unwrap(), deleted);
}

async fn model_metrics_keep_every_row_once_and_nan_survives<B: Backend<Store: Models>>() {
    let db = B::start().await;
    let store = db.open().await;
    let (exp, _) = new_experiment(&store, "e").await;
    let id = store
        .create_logged_model(new_logged_model(exp, "m", 1))
        .await
        .unwrap()
        .model_id;
    let on_test = ModelMetric {
        run_id: "r1".into(),
        dataset_name: Some("test".into()),
        dataset_digest: Some("d1".into()),
        ..metric("acc", 0.5, 2, 0)
    };
    let rows = vec![
        metric("acc", 0.25, 1, 0),
        metric("acc", 0.25, 1, 0),
        metric("loss", f64::NAN, 1, 0),
        metric("loss", f64::NAN, 1, 0),
        metric("loss", f64::INFINITY, 2, 1),
        on_test.clone(),
        on_test.clone(),
        ModelMetric {
            dataset_digest: Some("d2".into()),
            ..on_test.clone()
        },
    ];
    store
        .log_model_metrics(rows.into_iter().map(|m| (id.clone(), m)).collect())
        .await
        .unwrap();
    // Sent again: nothing new.
    store
        .log_model_metrics(vec![(id.clone(), metric("acc", 0.25, 1, 0))])
        .await
        .unwrap();
    let metrics = store.get_logged_model(&id, false).await.unwrap().metrics;
    let shown: Vec<(&str, String, i64, Option<&str>)> = metrics
        .iter()
        .map(|m| {
            (
                m.key.as_str(),
                format!("{}", m.value),
                m.timestamp,
                m.dataset_digest.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            ("acc", "0.25".into(), 1, None),
            ("loss", "NaN".into(), 1, None),
            ("loss", "inf".into(), 2, None),
            ("acc", "0.5".into(), 2, Some("d1")),
            ("acc", "0.5".into(), 2, Some("d2")),
        ]
    );
    assert_eq!(metrics[3], on_test);

    // All or nothing: a batch naming an unknown model writes none of its rows.
    assert!(matches!(
        store
            .log_model_metrics(vec![
                (id.clone(), metric("new", 1.0, 1, 0)),
                ("m-nope".into(), metric("new", 1.0, 1, 0)),
            ])
            .await,
        Err(StoreError::NotFound(m)) if m == "Logged model with ID 'm-nope' not found."
    ));
    assert_eq!(store.get_logged_model(&id, false).await.unwrap().metrics.len(), 5);
}

fn logged_model_query(
    experiment_ids: Vec<i64>,
    filter: &str,
    order_by: Vec<ModelOrderBy>,
) -> LoggedModelQuery {
    LoggedModelQuery {
        experiment_ids,
        filter: parse_model_filter(filter).unwrap(),
        order_by,
        offset: 0,
        limit: 100,
    }
}

fn by_metric(key: &str, ascending: bool) -> ModelOrderBy {
    ModelOrderBy {
        key: parse_model_order_by(&format!("metrics.{key}"), None, None).unwrap(),
        ascending,
    }
}

async fn searching_logged_models_filters_orders_and_pages<B: Backend<Store: Models>>() {
    let db = B::start().await;
    let store = db.open().await;
    let (exp, _) = new_experiment(&store, "e").await;
    let (other, _) = new_experiment(&store, "other").await;
    // Five models a..e created at 1..5, one more in another experiment and a deleted one.
    let mut ids = Vec::new();
    for (i, name) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        let created = store
            .create_logged_model(NewLoggedModel {
                params: vec![kv("lr", if i % 2 == 0 { "0.1" } else { "0.01" })],
                tags: if i < 2 { vec![kv("team", "ml")] } else { vec![] },
                model_type: if i == 4 { "agent".into() } else { String::new() },
                ..new_logged_model(exp, name, i as i64 + 1)
            })
            .await
            .unwrap();
        ids.push(created.model_id);
    }
    store
        .create_logged_model(new_logged_model(other, "a", 9))
        .await
        .unwrap();
    let deleted = store
        .create_logged_model(new_logged_model(exp, "deleted", 9))
        .await
        .unwrap()
        .model_id;
    store.delete_logged_model(&deleted, 10).await.unwrap();
    store
        .set_logged_model_status(&ids[1], LoggedModelStatus::Ready, 6)
        .await
        .unwrap();
    store
        .set_logged_model_status(&ids[3], LoggedModelStatus::Ready, 7)
        .await
        .unwrap();
    // acc: a 0.9, b NaN, c 0.5 then 0.7 (latest counts for sorting), d none, e 0.1.
    let rows = vec![
        (ids[0].clone(), metric("acc", 0.9, 1, 0)),
        (ids[1].clone(), metric("acc", f64::NAN, 1, 0)),
        (ids[2].clone(), metric("acc", 0.5, 1, 0)),
        (ids[2].clone(), metric("acc", 0.7, 2, 0)),
        (ids[4].clone(), metric("acc", 0.1, 1, 0)),
    ];
    store.log_model_metrics(rows).await.unwrap();

    let names = |models: &[LoggedModel]| models.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
    let search = |q: LoggedModelQuery| {
        let store = store.clone();
        async move { store.search_logged_models(q).await.unwrap() }
    };
    // The default order: newest first; active models of the experiments asked for only.
    let (all, more) = search(logged_model_query(vec![exp], "", vec![])).await;
    assert_eq!(names(&all), vec!["e", "d", "c", "b", "a"]);
    assert!(!more);
    assert_eq!(all[4].params, vec![kv("lr", "0.1")]);
    assert_eq!(all[4].metrics.len(), 1);
    let (both, _) = search(logged_model_query(vec![exp, other], "name = 'a'", vec![])).await;
    assert_eq!(both.len(), 2);
    assert!(search(logged_model_query(vec![], "", vec![])).await.0.is_empty());

    for (filter, expected) in [
        ("name LIKE 'b%'", vec!["b"]),
        ("name != 'a' AND name ILIKE 'B'", vec!["b"]),
        ("status = 'READY'", vec!["d", "b"]),
        ("status != 'LOGGED_MODEL_READY'", vec!["e", "c", "a"]),
        ("status IN ('READY', 'PENDING')", vec!["e", "d", "c", "b", "a"]),
        ("name IN ('a', 'c')", vec!["c", "a"]),
        ("name NOT IN ('a', 'c')", vec!["e", "d", "b"]),
        // An empty list holds nothing.
        ("name IN ()", vec![]),
        ("name NOT IN ()", vec!["e", "d", "c", "b", "a"]),
        ("model_type = 'agent'", vec!["e"]),
        ("params.lr = '0.1'", vec!["e", "c", "a"]),
        ("tags.team = 'ml'", vec!["b", "a"]),
        ("tags.team != 'ml'", vec![]),
        ("metrics.acc > 0.6", vec!["c", "a"]),
        ("metrics.acc != 0.9", vec!["e", "c"]),
        ("creation_time >= 4", vec!["e", "d"]),
    ] {
        let (found, _) = search(logged_model_query(vec![exp], filter, vec![])).await;
        assert_eq!(names(&found), expected, "{filter}");
    }

    // Sorting by a metric: its latest row; models without it (or whose value is NaN) last
    // both ways; then the default order.
    let (up, _) = search(logged_model_query(vec![exp], "", vec![by_metric("acc", true)])).await;
    assert_eq!(names(&up), vec!["e", "c", "a", "d", "b"]);
    let (down, _) = search(logged_model_query(vec![exp], "", vec![by_metric("acc", false)])).await;
    assert_eq!(names(&down), vec!["a", "c", "e", "d", "b"]);
    let (by_name, _) = search(logged_model_query(
        vec![exp],
        "",
        vec![ModelOrderBy {
            key: parse_model_order_by("name", None, None).unwrap(),
            ascending: true,
        }],
    ))
    .await;
    assert_eq!(names(&by_name), vec!["a", "b", "c", "d", "e"]);

    // Pages.
    let (first, more) = search(LoggedModelQuery {
        limit: 2,
        ..logged_model_query(vec![exp], "", vec![])
    })
    .await;
    assert_eq!((names(&first), more), (vec!["e".into(), "d".into()], true));
    let (last, more) = search(LoggedModelQuery {
        limit: 2,
        offset: 4,
        ..logged_model_query(vec![exp], "", vec![])
    })
    .await;
    assert_eq!((names(&last), more), (vec!["a".into()], false));

    // A backslash in a LIKE pattern is an ordinary character (no escapes), on every backend.
    for name in ["x\\y", "x_y"] {
        store
            .create_logged_model(new_logged_model(other, name, 20))
            .await
            .unwrap();
    }
    let (like, _) = search(LoggedModelQuery {
        filter: vec![ModelPredicate::AttributeString {
            attr: ModelAttribute::Name,
            op: StrOp::Like,
            value: "x\\_".into(),
        }],
        ..logged_model_query(vec![other], "", vec![])
    })
    .await;
    assert_eq!(names(&like), vec!["x\\y"]);
}

async fn run_model_inputs_and_outputs_are_recorded_once_in_order<B: Backend<Store: Models>>() {
    let db = B::start().await;
    let store = db.open().await;
    new_run(&store).await;
    store
        .add_run_models(
            "r1",
            ModelDirection::Input,
            vec![("m-2".into(), -1), ("m-1".into(), -1), ("m-2".into(), -1)],
        )
        .await
        .unwrap();
    store
        .add_run_models(
            "r1",
            ModelDirection::Output,
            vec![("m-3".into(), 5), ("m-3".into(), 5), ("m-3".into(), 6)],
        )
        .await
        .unwrap();
    store
        .add_run_models(
            "r1",
            ModelDirection::Input,
            vec![("m-1".into(), -1), ("m-4".into(), -1)],
        )
        .await
        .unwrap();
    assert_eq!(
        store.run_models("r1").await.unwrap(),
        RunModels {
            inputs: vec!["m-2".into(), "m-1".into(), "m-4".into()],
            outputs: vec![("m-3".into(), 5), ("m-3".into(), 6)],
        }
    );
    assert_eq!(store.run_models("nope").await.unwrap(), RunModels::default());
    assert!(matches!(
        store.add_run_models("nope", ModelDirection::Output, vec![("m-1".into(), 0)]).await,
        Err(StoreError::NotFound(m)) if m == "Run with id=nope not found"
    ));
}

// ---------------------------------------------------------------------------------------------
// Traces (MLflow 3)

fn trace(id: &str, experiment_id: i64, request_time_ms: i64) -> TraceInfo {
    TraceInfo {
        trace_id: id.into(),
        experiment_id,
        client_request_id: None,
        request_time_ms,
        execution_duration_ms: None,
        state: "IN_PROGRESS".into(),
        request_preview: None,
        response_preview: None,
        metadata: vec![],
        tags: vec![],
    }
}

async fn traces_are_upserted_with_their_artifact_location_and_keep_their_experiment<
    B: Backend<Store: Models>,
>() {
    let db = B::start().await;
    let store = db.open().await;
    let (exp, location) = new_experiment(&store, "e").await;
    let (other, _) = new_experiment(&store, "other").await;
    let started = store
        .upsert_trace(TraceInfo {
            client_request_id: Some("c1".into()),
            request_preview: Some("{\"q\": 1}".into()),
            metadata: vec![kv("mlflow.sourceRun", "r1"), kv("a", "1")],
            tags: vec![kv("mlflow.traceName", "chat")],
            ..trace("tr-1", exp, 100)
        })
        .await
        .unwrap();
    let artifacts = kv(
        "mlflow.artifactLocation",
        &format!("{location}/traces/tr-1/artifacts"),
    );
    assert_eq!(started.state, "IN_PROGRESS");
    assert_eq!(started.execution_duration_ms, None);
    assert_eq!(started.metadata, vec![kv("a", "1"), kv("mlflow.sourceRun", "r1")]);
    assert_eq!(
        started.tags,
        vec![artifacts.clone(), kv("mlflow.traceName", "chat")]
    );
    assert_eq!(store.get_trace("tr-1").await.unwrap(), started);

    // The client sends it again when it ends: the record is replaced, tags and metadata merge.
    let ended = store
        .upsert_trace(TraceInfo {
            execution_duration_ms: Some(40),
            state: "OK".into(),
            response_preview: Some("done".into()),
            metadata: vec![kv("a", "2")],
            tags: vec![kv("k", "v")],
            ..trace("tr-1", exp, 100)
        })
        .await
        .unwrap();
    assert_eq!(
        (
            ended.state.as_str(),
            ended.execution_duration_ms,
            ended.client_request_id.as_deref()
        ),
        ("OK", Some(40), None)
    );
    assert_eq!(ended.response_preview.as_deref(), Some("done"));
    assert_eq!(ended.metadata, vec![kv("a", "2"), kv("mlflow.sourceRun", "r1")]);
    assert_eq!(
        ended.tags,
        vec![kv("k", "v"), artifacts, kv("mlflow.traceName", "chat")]
    );
    assert!(matches!(
        store.upsert_trace(trace("tr-1", other, 100)).await,
        Err(StoreError::Invalid(m)) if m == "Trace 'tr-1' belongs to another experiment"
    ));
    assert_eq!(store.get_trace("tr-1").await.unwrap(), ended);
    assert!(matches!(
        store.upsert_trace(trace("tr-2", 999, 1)).await,
        Err(StoreError::NotFound(_))
    ));
    store
        .set_experiment_lifecycle(other, LifecycleStage::Deleted)
        .await
        .unwrap();
    assert!(matches!(
        store.upsert_trace(trace("tr-2", other, 1)).await,
        Err(StoreError::Invalid(_))
    ));

    // Tags one by one.
    store.set_trace_tag("tr-1", "k", "w").await.unwrap();
    store.set_trace_tag("tr-1", "n", "1").await.unwrap();
    store.delete_trace_tag("tr-1", "n").await.unwrap();
    assert!(matches!(
        store.delete_trace_tag("tr-1", "n").await,
        Err(StoreError::NotFound(m)) if m == "No trace tag with key 'n' for trace with ID 'tr-1'"
    ));
    assert!(matches!(
        store.set_trace_tag("tr-9", "k", "v").await,
        Err(StoreError::NotFound(m)) if m == "Trace with ID 'tr-9' not found."
    ));
    assert!(matches!(
        store.delete_trace_tag("tr-9", "k").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.get_trace("tr-9").await,
        Err(StoreError::NotFound(m)) if m == "Trace with ID 'tr-9' not found."
    ));
    assert_eq!(store.get_trace("tr-1").await.unwrap().tags[0], kv("k", "w"));
}

fn trace_query(experiment_ids: Vec<i64>, filter: &str, order_by: &[&str]) -> TraceQuery {
    TraceQuery {
        experiment_ids,
        filter: parse_trace_filter(filter).unwrap(),
        order_by: order_by
            .iter()
            .map(|o| parse_trace_order_by(o).unwrap())
            .collect(),
        offset: 0,
        limit: 100,
    }
}

async fn searching_traces_filters_orders_and_pages<B: Backend<Store: Models>>() {
    let db = B::start().await;
    let store = db.open().await;
    let (exp, _) = new_experiment(&store, "e").await;
    let (other, _) = new_experiment(&store, "other").await;
    // t1..t4 at 10..40; t2 still running; t1 and t3 from run r1; t4 has no name.
    for (i, (state, duration)) in [
        ("OK", Some(5)),
        ("IN_PROGRESS", None),
        ("ERROR", Some(1)),
        ("OK", Some(9)),
    ]
    .into_iter()
    .enumerate()
    {
        let n = i + 1;
        let mut metadata = vec![];
        if n % 2 == 1 {
            metadata.push(kv("mlflow.sourceRun", "r1"));
        }
        let mut tags = vec![kv("env", if n <= 2 { "prod" } else { "dev" })];
        if n != 4 {
            tags.push(kv("mlflow.traceName", &format!("name-{}", 4 - n)));
        }
        store
            .upsert_trace(TraceInfo {
                client_request_id: (n != 3).then(|| format!("c{n}")),
                execution_duration_ms: duration,
                state: state.into(),
                metadata,
                tags,
                ..trace(&format!("tr-{n}"), exp, 10 * n as i64)
            })
            .await
            .unwrap();
    }
    store.upsert_trace(trace("tr-9", other, 5)).await.unwrap();

    let ids = |q: TraceQuery| {
        let store = store.clone();
        async move {
            let (found, more) = store.search_traces(q).await.unwrap();
            (found.into_iter().map(|t| t.trace_id).collect::<Vec<_>>(), more)
        }
    };
    let tr = |ns: &[u32]| ns.iter().map(|n| format!("tr-{n}")).collect::<Vec<_>>();
    // The default order: the newest request first.
    assert_eq!(
        ids(trace_query(vec![exp], "", &[])).await,
        (tr(&[4, 3, 2, 1]), false)
    );
    assert_eq!(
        ids(trace_query(vec![exp, other], "", &[])).await.0,
        tr(&[4, 3, 2, 1, 9])
    );
    assert!(ids(trace_query(vec![], "", &[])).await.0.is_empty());
    for (filter, expected) in [
        ("status = 'OK'", tr(&[4, 1])),
        ("attributes.status != 'OK'", tr(&[3, 2])),
        ("status IN ('ERROR', 'IN_PROGRESS')", tr(&[3, 2])),
        ("tags.env = 'prod'", tr(&[2, 1])),
        ("tags.env LIKE 'd%'", tr(&[4, 3])),
        ("metadata.`mlflow.sourceRun` = 'r1'", tr(&[3, 1])),
        ("run_id = 'r1'", tr(&[3, 1])),
        ("name = 'name-2'", tr(&[2])),
        ("name ILIKE 'NAME-%'", tr(&[3, 2, 1])),
        ("client_request_id = 'c2'", tr(&[2])),
        ("client_request_id != 'c2'", tr(&[4, 1])),
        ("timestamp_ms > 15 AND timestamp_ms <= 30", tr(&[3, 2])),
        ("execution_time_ms >= 5", tr(&[4, 1])),
        ("end_time_ms < 32", tr(&[3, 1])),
        ("trace_id = 'tr-3'", tr(&[3])),
    ] {
        assert_eq!(
            ids(trace_query(vec![exp], filter, &[])).await.0,
            expected,
            "{filter}"
        );
    }
    // A trace without the sort value sorts first going up, last going down.
    assert_eq!(
        ids(trace_query(vec![exp], "", &["execution_time_ms ASC"]))
            .await
            .0,
        tr(&[2, 3, 1, 4])
    );
    assert_eq!(
        ids(trace_query(vec![exp], "", &["execution_time_ms DESC"]))
            .await
            .0,
        tr(&[4, 1, 3, 2])
    );
    assert_eq!(
        ids(trace_query(vec![exp], "", &["name ASC"])).await.0,
        tr(&[4, 3, 2, 1])
    );
    assert_eq!(
        ids(trace_query(vec![exp], "", &["timestamp_ms ASC"])).await.0,
        tr(&[1, 2, 3, 4])
    );
    assert_eq!(
        ids(trace_query(vec![exp], "", &["status ASC", "timestamp_ms ASC"]))
            .await
            .0,
        tr(&[3, 2, 1, 4])
    );
    // Pages.
    let page = |offset: u64| TraceQuery {
        limit: 3,
        offset,
        ..trace_query(vec![exp], "", &[])
    };
    assert_eq!(ids(page(0)).await, (tr(&[4, 3, 2]), true));
    assert_eq!(ids(page(3)).await, (tr(&[1]), false));
}

async fn traces_are_deleted_by_id_and_by_age_oldest_first<B: Backend<Store: Models>>() {
    let db = B::start().await;
    let store = db.open().await;
    let (exp, _) = new_experiment(&store, "e").await;
    let (other, _) = new_experiment(&store, "other").await;
    for n in 1..=6 {
        store
            .upsert_trace(TraceInfo {
                tags: vec![kv("k", "v")],
                metadata: vec![kv("m", "1")],
                // tr-5 and tr-6 came at the same time.
                ..trace(&format!("tr-{n}"), exp, 10 * n.min(5))
            })
            .await
            .unwrap();
    }
    store.upsert_trace(trace("tr-9", other, 1)).await.unwrap();
    // By id: unknown ids and other experiments' traces are not counted.
    assert_eq!(
        store
            .delete_traces(
                exp,
                TraceDeletion::Ids(vec![
                    "tr-2".into(),
                    "tr-2".into(),
                    "tr-nope".into(),
                    "tr-9".into()
                ])
            )
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        store.get_trace("tr-2").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.get_trace("tr-9").await.is_ok());
    // By age: the oldest first, at most `max`.
    let older = |max_timestamp_ms: i64, max: u32| TraceDeletion::OlderThan {
        max_timestamp_ms,
        max,
    };
    assert_eq!(store.delete_traces(exp, older(30, 1)).await.unwrap(), 1);
    assert!(matches!(
        store.get_trace("tr-1").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.delete_traces(exp, older(50, 2)).await.unwrap(), 2);
    assert!(matches!(
        store.get_trace("tr-4").await,
        Err(StoreError::NotFound(_))
    ));
    // Ties go by id.
    assert_eq!(store.delete_traces(exp, older(50, 1)).await.unwrap(), 1);
    assert!(matches!(
        store.get_trace("tr-5").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.delete_traces(exp, older(49, 10)).await.unwrap(), 0);
    let (left, _) = store
        .search_traces(trace_query(vec![exp, other], "", &[]))
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|t| t.trace_id.as_str()).collect::<Vec<_>>(),
        vec!["tr-6", "tr-9"]
    );
    // A trace written again after its deletion starts without the old tags and metadata.
    store.upsert_trace(trace("tr-1", exp, 10)).await.unwrap();
    let again = store.get_trace("tr-1").await.unwrap();
    assert!(again.metadata.is_empty());
    assert_eq!(again.tags.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Two daemons on one database, writing MLflow 3's records

async fn two_stores_logging_metrics_of_the_same_models_at_once_never_deadlock<B: Backend<Store: Models>>() {
    let db = B::start().await;
    let (a, b) = (db.open().await, db.open().await);
    let (exp, _) = new_experiment(&a, "e").await;
    let mut ids = Vec::new();
    for name in ["x", "y", "z"] {
        ids.push(
            a.create_logged_model(new_logged_model(exp, name, 1))
                .await
                .unwrap()
                .model_id,
        );
    }
    // Each batch names the models in another order; all of them commit.
    let mut tasks = Vec::new();
    for i in 0..24i64 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let mut order = ids.clone();
        order.rotate_left(i as usize % 3);
        if i % 2 == 1 {
            order.reverse();
        }
        tasks.push(tokio::spawn(async move {
            let rows = order
                .into_iter()
                .map(|id| (id, metric("m", i as f64, i, 0)))
                .collect();
            store.log_model_metrics(rows).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for id in &ids {
        assert_eq!(b.get_logged_model(id, false).await.unwrap().metrics.len(), 24);
    }
}

async fn two_stores_writing_one_trace_to_two_experiments_at_once_leave_it_in_one<
    B: Backend<Store: Models>,
>() {
    let db = B::start().await;
    let (a, b) = (db.open().await, db.open().await);
    let (first, _) = new_experiment(&a, "first").await;
    let (second, _) = new_experiment(&a, "second").await;
    for round in 0..12 {
        let id = format!("tr-{round}");
        let one = tokio::spawn({
            let (a, id) = (a.clone(), id.clone());
            async move { a.upsert_trace(trace(&id, first, 1)).await }
        });
        let other = tokio::spawn({
            let (b, id) = (b.clone(), id.clone());
            async move { b.upsert_trace(trace(&id, second, 1)).await }
        });
        let results = [one.await.unwrap(), other.await.unwrap()];
        let won: Vec<i64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|t| t.experiment_id))
            .collect();
        assert_eq!(won.len(), 1, "{round}: {results:?}");
        assert!(
            results.iter().any(
                |r| matches!(r, Err(StoreError::Invalid(m)) if m.contains("belongs to another experiment"))
            ),
            "{round}: {results:?}"
        );
        assert_eq!(a.get_trace(&id).await.unwrap().experiment_id, won[0]);
    }
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
    two_stores_creating_versions_of_one_model_at_once_never_collide,
    logged_models_are_created_pending_finalized_and_soft_deleted,
    model_metrics_keep_every_row_once_and_nan_survives,
    searching_logged_models_filters_orders_and_pages,
    run_model_inputs_and_outputs_are_recorded_once_in_order,
    traces_are_upserted_with_their_artifact_location_and_keep_their_experiment,
    searching_traces_filters_orders_and_pages,
    traces_are_deleted_by_id_and_by_age_oldest_first,
    two_stores_logging_metrics_of_the_same_models_at_once_never_deadlock,
    two_stores_writing_one_trace_to_two_experiments_at_once_leave_it_in_one,
);

conformance!(postgres: crate::common::Postgres;
    registered_models_are_unique_and_carry_description_and_tags,
    version_numbers_are_never_reused_until_the_model_is_deleted,
    sources_resolve_to_where_the_files_are,
    aliases_point_at_live_versions_and_latest_is_reserved_for_the_highest,
    stages_archive_others_and_latest_versions_are_per_stage,
    renaming_takes_versions_tags_and_aliases_along,
    searching_models_leaves_prompts_out_and_pages_in_name_order,
    searching_versions_filters_on_name_run_number_source_and_tags,
    two_stores_creating_versions_of_one_model_at_once_never_collide,
    logged_models_are_created_pending_finalized_and_soft_deleted,
    model_metrics_keep_every_row_once_and_nan_survives,
    searching_logged_models_filters_orders_and_pages,
    run_model_inputs_and_outputs_are_recorded_once_in_order,
    traces_are_upserted_with_their_artifact_location_and_keep_their_experiment,
    searching_traces_filters_orders_and_pages,
    traces_are_deleted_by_id_and_by_age_oldest_first,
    two_stores_logging_metrics_of_the_same_models_at_once_never_deadlock,
    two_stores_writing_one_trace_to_two_experiments_at_once_leave_it_in_one,
);
