//! The fake refuses what the real API refuses: requests without its token, unknown fields,
//! wrong types, and instance bodies that break the service's rules.

use base64::Engine;
use serde_json::{Value, json};
use spotsweep_gce_fake::{FakeCompute, FakeConfig};

async fn start() -> (FakeCompute, reqwest::Client, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeCompute::start(FakeConfig::default()).await.unwrap();
    let http = reqwest::Client::new();
    // An assertion with the claims the fake reads (it does not check the signature).
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let jwt = format!(
        "{}.{}.sig",
        b64(&json!({"alg": "RS256"})),
        b64(
            &json!({"iss": "a@b", "aud": fake.token_uri(), "scope": "https://www.googleapis.com/auth/cloud-platform"})
        )
    );
    let form = format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}");
    let resp: Value = http
        .post(fake.token_uri())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = resp["access_token"].as_str().unwrap().to_string();
    (fake, http, token)
}

fn body() -> Value {
    json!({
        "name": "worker-1",
        "machineType": "zones/us-central1-a/machineTypes/a2-highgpu-1g",
        "scheduling": {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
                       "onHostMaintenance": "TERMINATE", "automaticRestart": false,
                       "maxRunDuration": {"seconds": "3600"}},
        "disks": [{"boot": true, "autoDelete": true,
                   "initializeParams": {"sourceImage": "projects/x/global/images/family/y", "diskSizeGb": "150"}}],
        "networkInterfaces": [{"network": "global/networks/default"}],
        "labels": {"managed-by": "spotsweep"},
        "metadata": {"items": [{"key": "startup-script", "value": "#!/bin/sh\necho hi"}]}
    })
}

async fn insert(fake: &FakeCompute, http: &reqwest::Client, token: &str, body: &Value) -> (u16, Value) {
    let resp = http
        .post(format!(
            "{}projects/p1/zones/us-central1-a/instances",
            fake.base_url()
        ))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn a_valid_spot_insert_is_accepted() {
    let (fake, http, token) = start().await;
    let (status, op) = insert(&fake, &http, &token, &body()).await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["kind"], "compute#operation");
    assert!(["PENDING", "RUNNING"].contains(&op["status"].as_str().unwrap()));
    assert_eq!(fake.instances()[0].status, "PROVISIONING");
}

#[tokio::test]
async fn requests_without_the_fakes_token_are_refused() {
    let (fake, http, _) = start().await;
    let (status, err) = insert(&fake, &http, "made-up", &body()).await;
    assert_eq!(status, 401, "{err}");
    assert_eq!(err["error"]["errors"][0]["reason"], "required");
}

type Change = Box<dyn Fn(&mut Value)>;

#[tokio::test]
async fn bodies_that_break_the_schema_or_the_rules_are_400s() {
    let (fake, http, token) = start().await;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|b| b["scheduling"]["preemptable"] = json!(true)),
            "Unknown name \"preemptable\"",
        ),
        (
            Box::new(|b| b["scheduling"]["provisioningModel"] = json!("CHEAP")),
            "TYPE_ENUM",
        ),
        (
            Box::new(|b| b["disks"][0]["initializeParams"]["diskSizeGb"] = json!(150)),
            "TYPE_STRING",
        ),
        (
            Box::new(|b| b["scheduling"]["onHostMaintenance"] = json!("MIGRATE")),
            "live migration",
        ),
        (
            Box::new(|b| b["scheduling"]["automaticRestart"] = json!(true)),
            "automaticRestart",
        ),
        (Box::new(|b| b["disks"][0]["boot"] = json!(false)), "boot disk"),
        (
            Box::new(|b| b["networkInterfaces"] = json!([])),
            "network interface",
        ),
        (Box::new(|b| b["name"] = json!("Worker_1")), "resource.name"),
        (Box::new(|b| b["labels"] = json!({"Pool": "a100"})), "labels"),
        (
            Box::new(|b| b["metadata"]["items"][0]["key"] = json!("start up")),
            "metadata key",
        ),
        (
            Box::new(|b| b["metadata"]["items"][0]["value"] = json!("x".repeat(300 * 1024))),
            "over 256 KiB",
        ),
        (
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("machineType");
            }),
            "machineType",
        ),
    ];
    for (change, want) in cases {
        let mut b = body();
        change(&mut b);
        let (status, err) = insert(&fake, &http, &token, &b).await;
        assert_eq!(status, 400, "{want}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{want}: {message}");
    }
    assert!(fake.instances().is_empty());
}

#[tokio::test]
async fn unknown_routes_and_bad_parameters_are_refused() {
    let (fake, http, token) = start().await;
    let status = |path: &'static str| {
        let req = http.get(format!("{}{path}", fake.base_url())).bearer_auth(&token);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("projects/p1/zones/us-central1-a/disks").await, 404);
    assert_eq!(
        status("projects/p1/zones/us-central1-a/instances/Bad_Name").await,
        400
    );
    assert_eq!(
        status("projects/p1/zones/us-central1-a/instances?maxResults=many").await,
        400
    );
    assert_eq!(
        status("projects/p1/zones/us-central1-a/instances?colour=red").await,
        400
    );
    assert_eq!(
        status("projects/p1/zones/us-central1-a/instances?filter=labels.a%20%3E%201").await,
        400
    );
    assert_eq!(
        status("projects/p1/zones/us-central1-a/instances?filter=labels.a%3D1").await,
        200
    );
}
