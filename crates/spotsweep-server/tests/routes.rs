#![allow(missing_docs)]
//! The daemon's routes over real HTTP: auth, tokens, MLflow wire conventions and errors,
//! artifacts and path safety, graceful shutdown.

mod common;

use common::TestServer;
use serde_json::{Value, json};

async fn new_run(s: &TestServer) -> String {
    let (status, body) = s
        .mlflow("runs/create", json!({"experiment_id": "0", "start_time": 1}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["run"]["info"]["run_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn health_is_open_everything_else_needs_a_live_token() {
    let mut s = TestServer::start().await;
    let plain = reqwest::Client::new();
    let health = plain.get(format!("{}/health", s.url)).send().await.unwrap();
    assert_eq!(health.text().await.unwrap(), "OK");
    assert_eq!(
        plain
            .get(format!("{}/version", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for path in [
        "/api/2.0/mlflow/experiments/get?experiment_id=0",
        "/api/v1/tokens",
        "/api/v1/openapi.json",
    ] {
        let r = plain.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error_code"], "UNAUTHENTICATED");
        let r = plain
            .get(format!("{}{path}", s.url))
            .bearer_auth("ss_wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    // Create, use, list and revoke a token.
    let r = s
        .post("/api/v1/tokens", json!({"name": "ci"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let secret = created["token"].as_str().unwrap();
    let ok = plain
        .get(format!(
            "{}/api/2.0/mlflow/experiments/get?experiment_id=0",
            s.url
        ))
        .bearer_auth(secret);
    assert_eq!(ok.send().await.unwrap().status(), 200);
    let list: Value = s
        .get("/api/v1/tokens")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["tokens"].as_array().unwrap().len(), 2);
    assert!(
        !list.to_string().contains(secret),
        "a listing never shows a secret"
    );
    let id = created["id"].as_str().unwrap();
    let r = s
        .client
        .delete(format!("{}/api/v1/tokens/{id}", s.url))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = plain
        .get(format!(
            "{}/api/2.0/mlflow/experiments/get?experiment_id=0",
            s.url
        ))
        .bearer_auth(secret);
    assert_eq!(r.send().await.unwrap().status(), 401);
    let r = s
        .client
        .delete(format!("{}/api/v1/tokens/{id}", s.url))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let bad = s
        .post("/api/v1/tokens", json!({"nom": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // The token file is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.data_dir.join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    s.stop().await;
}

#[tokio::test]
async fn openapi_document_is_served_and_committed_copy_is_fresh() {
    let mut s = TestServer::start().await;
    let served = s
        .get("/api/v1/openapi.json")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(served, spotsweep_server::api::openapi_json());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi/openapi.json"))
            .unwrap_or_default();
    assert!(
        committed == served,
        "openapi/openapi.json is stale: run `cargo run -p spotsweep-cli -- openapi > openapi/openapi.json`"
    );
    s.stop().await;
}

#[tokio::test]
async fn wire_conventions_and_validation() {
    let mut s = TestServer::start().await;
    let run = new_run(&s).await;
    // Numbers as strings, run_uuid instead of run_id, unknown fields ignored.
    let (st, body) = s
        .mlflow(
            "runs/log-metric",
            json!({"run_uuid": run, "key": "loss", "value": "0.5", "timestamp": "10", "step": "2", "bogus": 1}),
        )
        .await;
    assert_eq!((st, &body), (200, &json!({})));
    s.mlflow(
        "runs/log-metric",
        json!({"run_id": run, "key": "loss", "value": "NaN", "timestamp": 11, "step": 3}),
    )
    .await;
    s.mlflow(
        "runs/log-metric",
        json!({"run_id": run, "key": "big", "value": "Infinity", "timestamp": 1}),
    )
    .await;
    let (_, got) = s
        .mlflow_get(&format!("runs/get?run_id={run}&run_uuid={run}"))
        .await;
    let metrics = got["run"]["data"]["metrics"].as_array().unwrap();
    let loss = metrics.iter().find(|m| m["key"] == "loss").unwrap();
    assert_eq!(loss["value"], "NaN");
    let big = metrics.iter().find(|m| m["key"] == "big").unwrap();
    assert_eq!(big["value"].as_f64().unwrap(), f64::MAX);
    assert!(
        got["run"]["data"].get("params").is_none(),
        "empty fields are omitted"
    );
    // Missing timestamp, bad key, bad value.
    let (st, body) = s
        .mlflow("runs/log-metric", json!({"run_id": run, "key": "m", "value": 1}))
        .await;
    assert_eq!(st, 400);
    assert_eq!(body["error_code"], "INVALID_PARAMETER_VALUE");
    assert!(body["message"].as_str().unwrap().contains("timestamp"));
    for key in ["a//b", "../x", "x*"] {
        let (st, _) = s
            .mlflow(
                "runs/log-parameter",
                json!({"run_id": run, "key": key, "value": "1"}),
            )
            .await;
        assert_eq!(st, 400, "{key}");
    }
    let (st, _) = s
        .mlflow(
            "runs/log-metric",
            json!({"run_id": run, "key": "m", "value": "abc", "timestamp": 1}),
        )
        .await;
    assert_eq!(st, 400);
    // Param immutability, truncation, batch limits.
    assert_eq!(
        s.mlflow(
            "runs/log-parameter",
            json!({"run_id": run, "key": "p", "value": "1"})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.mlflow(
            "runs/log-parameter",
            json!({"run_id": run, "key": "p", "value": "1"})
        )
        .await
        .0,
        200
    );
    let (st, body) = s
        .mlflow(
            "runs/log-parameter",
            json!({"run_id": run, "key": "p", "value": "2"}),
        )
        .await;
    assert_eq!(
        (st, body["error_code"].as_str()),
        (400, Some("INVALID_PARAMETER_VALUE"))
    );
    let long = "x".repeat(7000);
    s.mlflow(
        "runs/log-parameter",
        json!({"run_id": run, "key": "long", "value": long}),
    )
    .await;
    let metrics: Vec<Value> = (0..1001)
        .map(|i| json!({"key": "m", "value": i, "timestamp": 1, "step": i}))
        .collect();
    let (st, body) = s
        .mlflow("runs/log-batch", json!({"run_id": run, "metrics": metrics}))
        .await;
    assert_eq!(st, 400, "{body}");
    let (st, _) = s
        .mlflow(
            "runs/log-batch",
            json!({"run_id": run, "params": [{"key": "d", "value": "1"}, {"key": "d", "value": "1"}]}),
        )
        .await;
    assert_eq!(st, 400);
    let (_, got) = s.mlflow_get(&format!("runs/get?run_id={run}")).await;
    let long_param = got["run"]["data"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "long")
        .unwrap()
        .clone();
    assert_eq!(long_param["value"].as_str().unwrap().len(), 6000);
    // Error codes.
    let (st, body) = s
        .mlflow_get("runs/get?run_id=0123456789abcdef0123456789abcdef")
        .await;
    assert_eq!(
        (st, body["error_code"].as_str()),
        (404, Some("RESOURCE_DOES_NOT_EXIST"))
    );
    let (st, body) = s.mlflow("experiments/create", json!({"name": "Default"})).await;
    assert_eq!(
        (st, body["error_code"].as_str()),
        (400, Some("RESOURCE_ALREADY_EXISTS"))
    );
    let (st, body) = s.mlflow("experiments/create", json!({})).await;
    assert_eq!(
        (st, body["error_code"].as_str()),
        (400, Some("INVALID_PARAMETER_VALUE"))
    );
    let (st, body) = s
        .mlflow(
            "runs/search",
            json!({"experiment_ids": ["0"], "order_by": ["metrics.a", "metrics.a DESC"]}),
        )
        .await;
    assert_eq!(
        (st, body["error_code"].as_str()),
        (400, Some("INVALID_PARAMETER_VALUE"))
    );
    let (st, _) = s
        .mlflow(
            "runs/search",
            json!({"experiment_ids": ["0"], "filter": "a OR b"}),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = s
        .mlflow(
            "runs/search",
            json!({"experiment_ids": ["0"], "page_token": "garbage!"}),
        )
        .await;
    assert_eq!(st, 400);
    let (st, body) = s.mlflow("runs/search", json!({"experiment_ids": []})).await;
    assert_eq!((st, body), (200, json!({})));
    let r = s.get("/api/2.0/mlflow/no/such/route").send().await.unwrap();
    assert_eq!(r.status(), 404);
    // The ajax twin.
    let r = s
        .get(&format!("/ajax-api/2.0/mlflow/runs/get?run_id={run}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn history_paging_and_bulk_interval() {
    let mut s = TestServer::start().await;
    let run = new_run(&s).await;
    for chunk in 0..5 {
        let metrics: Vec<Value> = (0..1000)
            .map(|i| {
                let step = chunk * 1000 + i;
                json!({"key": "loss", "value": 1.0 / (step as f64 + 1.0), "timestamp": step, "step": step})
            })
            .collect();
        assert_eq!(
            s.mlflow("runs/log-batch", json!({"run_id": run, "metrics": metrics}))
                .await
                .0,
            200
        );
    }
    let mut token = String::new();
    let mut total = 0;
    loop {
        let (st, body) = s
            .mlflow_get(&format!(
                "metrics/get-history?run_id={run}&metric_key=loss&max_results=1500&page_token={token}"
            ))
            .await;
        assert_eq!(st, 200);
        let page = body["metrics"].as_array().unwrap();
        assert_eq!(page[0]["step"].as_i64().unwrap(), total as i64, "history order");
        total += page.len();
        match body["next_page_token"].as_str() {
            Some(t) => token = t.to_owned(),
            None => break,
        }
    }
    assert_eq!(total, 5000);
    let (st, body) = s
        .mlflow_get(&format!(
            "metrics/get-history-bulk-interval?run_ids={run}&metric_key=loss&max_results=100"
        ))
        .await;
    assert_eq!(st, 200);
    let points = body["metrics"].as_array().unwrap();
    assert_eq!(points.len(), 100);
    assert_eq!(points[0]["step"], 0);
    assert_eq!(points[99]["step"], 4999);
    assert_eq!(points[0]["run_id"], run.as_str());
    let (st, body) = s
        .mlflow_get("metrics/get-history?run_id=nope&metric_key=loss")
        .await;
    assert_eq!((st, body), (200, json!({})));
    s.stop().await;
}

#[tokio::test]
async fn artifacts_stream_list_delete_and_never_escape_the_root() {
    let mut s = TestServer::start().await;
    let base = format!("{}/api/2.0/mlflow-artifacts/artifacts", s.url);
    let put = |path: &str, body: Vec<u8>| {
        s.client
            .put(format!("{base}/{path}"))
            .bearer_auth(&s.token)
            .body(body)
    };
    assert_eq!(
        put("0/r1/artifacts/a.txt", b"hello".to_vec())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        put("0/r1/artifacts/dir/b.json", b"{}".to_vec())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let got = s
        .client
        .get(format!("{base}/0/r1/artifacts/a.txt"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert!(
        got.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"hello");
    let listing: Value = s
        .client
        .get(format!("{base}?path=0/r1/artifacts"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listing,
        json!({"files": [{"path": "a.txt", "is_dir": false, "file_size": 5}, {"path": "dir", "is_dir": true}]})
    );
    let missing: Value = s
        .client
        .get(format!("{base}?path=0/none"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(missing, json!({}));
    let r = s
        .client
        .get(format!("{base}/0/r1/artifacts/none.txt"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Traversal, however encoded, answers 4xx and writes nothing outside the root.
    for path in [
        "../escape.txt",
        "%2e%2e/escape.txt",
        "..%2fescape.txt",
        "a/%2E%2E/%2E%2E/escape.txt",
        "a%5c..%5cescape.txt",
    ] {
        let r = put(path, b"x".to_vec()).send().await.unwrap();
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
        let r = s
            .client
            .get(format!("{base}/{path}"))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{path}");
    }
    assert!(!s.data_dir.join("escape.txt").exists());
    assert!(!s.data_dir.parent().unwrap().join("escape.txt").exists());
    // Delete a folder.
    let r = s
        .client
        .delete(format!("{base}/0/r1/artifacts/dir"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let listing: Value = s
        .client
        .get(format!("{base}?path=0/r1/artifacts"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listing["files"].as_array().unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_in(dir.path().to_path_buf(), false).await;
    let run = new_run(&s).await;
    for i in 0..50 {
        let (st, _) = s
            .mlflow(
                "runs/log-metric",
                json!({"run_id": run, "key": "m", "value": i, "timestamp": i}),
            )
            .await;
        assert_eq!(st, 200);
    }
    s.stop().await;
    let mut s = TestServer::start_in(dir.path().to_path_buf(), false).await;
    let (_, body) = s
        .mlflow_get(&format!("metrics/get-history?run_id={run}&metric_key=m"))
        .await;
    assert_eq!(body["metrics"].as_array().unwrap().len(), 50);
    s.stop().await;
}

#[tokio::test]
async fn ui_routes_datasets_and_run_artifacts() {
    let mut s = TestServer::start().await;
    let run = new_run(&s).await;
    let dataset = json!({"name": "mnist", "digest": "abc", "source_type": "local", "source": "{}"});
    let inputs = json!({"run_id": run, "datasets": [{"tags": [{"key": "mlflow.data.context", "value": "training"}], "dataset": dataset}]});
    assert_eq!(s.mlflow("runs/log-inputs", inputs).await.0, 200);
    let (_, found) = s
        .mlflow("runs/search", json!({"experiment_ids": ["0"], "filter": "datasets.name = 'mnist' AND datasets.context = 'training'"}))
        .await;
    assert_eq!(found["runs"].as_array().unwrap().len(), 1);
    assert_eq!(
        found["runs"][0]["inputs"]["dataset_inputs"][0]["dataset"]["digest"],
        "abc"
    );
    let r = s
        .post(
            "/ajax-api/2.0/mlflow/experiments/search-datasets",
            json!({"experiment_ids": ["0"]}),
        )
        .send()
        .await
        .unwrap();
    let summaries: Value = r.json().await.unwrap();
    assert_eq!(
        summaries,
        json!({"dataset_summaries": [{"experiment_id": "0", "name": "mnist", "digest": "abc", "context": "training"}]})
    );
    let up = s
        .client
        .post(format!(
            "{}/ajax-api/2.0/mlflow/upload-artifact?run_uuid={run}&path=notes/a.txt",
            s.url
        ))
        .bearer_auth(&s.token)
        .body("note")
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), 200);
    let got = s
        .get(&format!("/get-artifact?run_id={run}&path=notes/a.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.text().await.unwrap(), "note");
    let (_, listing) = s
        .mlflow_get(&format!("artifacts/list?run_id={run}&path=notes"))
        .await;
    assert_eq!(
        listing["files"],
        json!([{"path": "notes/a.txt", "is_dir": false, "file_size": 4}])
    );
    let bad = s
        .get(&format!("/get-artifact?run_id={run}&path=../../x"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    s.stop().await;
}
