//! The client against the fake Compute API on loopback, with tokens from the real `gcp_auth`
//! service-account flow (a key file generated here, whose `token_uri` is the fake's).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use spotsweep_gce::{ComputeClient, ComputeError, NewInstance, Retry};
use spotsweep_gce_fake::{FakeCompute, FakeConfig, Fault, Quota, Stockout};

const ZONE: &str = "us-central1-a";
const IMAGE: &str = "projects/deeplearning-platform-release/global/images/family/pytorch-latest-gpu";

async fn setup(config: FakeConfig) -> (FakeCompute, ComputeClient) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeCompute::start(config).await.unwrap();
    let account = gcp_auth::CustomServiceAccount::from_json(
        &fake.service_account_json(&spotsweep_gce_fake::new_private_key().unwrap()),
    )
    .unwrap();
    let retry = Retry {
        attempts: 4,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(40),
        request_timeout: Duration::from_secs(10),
    };
    let client = ComputeClient::new(&fake.base_url(), "fake-project", Arc::new(account), retry).unwrap();
    (fake, client)
}

fn fast() -> FakeConfig {
    FakeConfig {
        op_delay: Duration::from_millis(60),
        boot_delay: Duration::from_millis(100),
        wait_cap: Duration::from_millis(30),
        ..FakeConfig::default()
    }
}

fn vm(name: &str, zone: &str) -> NewInstance {
    let mut i = NewInstance::spot(name, zone, "a2-highgpu-1g", IMAGE, 150, 86_400);
    i.labels = BTreeMap::from([
        ("managed-by".into(), "spotsweep".into()),
        ("pool".into(), "a100".into()),
    ]);
    i
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn an_instance_is_created_found_relabelled_and_deleted() {
    let (fake, client) = setup(fast()).await;
    let op = client
        .insert_instance(ZONE, &vm("worker-1", ZONE), &request_id())
        .await
        .unwrap();
    assert_eq!(op.operation_type.as_deref(), Some("insert"));
    let done = client
        .wait_operation(ZONE, &op.name, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(done.is_done());
    tokio::time::sleep(Duration::from_millis(120)).await;
    let got = client.get_instance(ZONE, "worker-1").await.unwrap().unwrap();
    assert_eq!(got.status.as_deref(), Some("RUNNING"));
    assert_eq!(got.zone_name(), Some(ZONE));
    let sched = got.scheduling.unwrap();
    assert_eq!(sched.provisioning_model.as_deref(), Some("SPOT"));
    assert_eq!(sched.max_run_duration.unwrap().seconds, "86400");

    // A second one in another zone: the aggregated list finds both by label, a zone's list one.
    let op = client
        .insert_instance("us-central1-b", &vm("worker-2", "us-central1-b"), &request_id())
        .await
        .unwrap();
    client
        .wait_operation("us-central1-b", &op.name, Duration::from_secs(5))
        .await
        .unwrap();
    let ours = client
        .aggregated_instances(Some("labels.managed-by = spotsweep"))
        .await
        .unwrap();
    let mut names: Vec<(String, String)> = ours
        .iter()
        .map(|i| (i.zone_name().unwrap().to_string(), i.name.clone()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            (ZONE.into(), "worker-1".into()),
            ("us-central1-b".into(), "worker-2".into())
        ]
    );
    assert!(
        client
            .aggregated_instances(Some("labels.pool = t4"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        client
            .list_instances(ZONE, Some("labels.pool:*"))
            .await
            .unwrap()
            .len(),
        1
    );

    // setLabels needs the current fingerprint.
    let fp = got.label_fingerprint.unwrap();
    let labels = BTreeMap::from([
        ("managed-by".to_string(), "spotsweep".to_string()),
        ("state".into(), "draining".into()),
    ]);
    client
        .set_labels(ZONE, "worker-1", &labels, &fp, &request_id())
        .await
        .unwrap();
    let stale = client
        .set_labels(ZONE, "worker-1", &labels, &fp, &request_id())
        .await;
    assert!(
        matches!(stale, Err(ComputeError::PreconditionFailed(_))),
        "{stale:?}"
    );

    let op = client
        .delete_instance(ZONE, "worker-1", &request_id())
        .await
        .unwrap();
    client
        .wait_operation(ZONE, &op.name, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(client.get_instance(ZONE, "worker-1").await.unwrap(), None);
    let again = client.delete_instance(ZONE, "worker-1", &request_id()).await;
    assert!(matches!(again, Err(ComputeError::NotFound(_))), "{again:?}");
    assert_eq!(fake.instances().len(), 1);
}

#[tokio::test]
async fn a_repeated_request_id_creates_one_instance() {
    let (fake, client) = setup(fast()).await;
    let id = request_id();
    let first = client
        .insert_instance(ZONE, &vm("worker-1", ZONE), &id)
        .await
        .unwrap();
    let second = client
        .insert_instance(ZONE, &vm("worker-1", ZONE), &id)
        .await
        .unwrap();
    assert_eq!(first.name, second.name);
    assert_eq!(second.client_operation_id.as_deref(), Some(id.as_str()));
    assert_eq!(fake.inserts_executed(), 1);
    // The same name with a new request id is a conflict.
    let other = client
        .insert_instance(ZONE, &vm("worker-1", ZONE), &request_id())
        .await;
    assert!(matches!(other, Err(ComputeError::AlreadyExists(_))), "{other:?}");
}

#[tokio::test]
async fn stockouts_in_both_forms_and_quotas_are_classified() {
    let (fake, client) = setup(fast()).await;
    fake.set_stockout(ZONE, Some(Stockout::Immediate));
    let err = client
        .insert_instance(ZONE, &vm("worker-1", ZONE), &request_id())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ComputeError::Stockout { zone: Some(z), .. } if z == ZONE),
        "{err:?}"
    );

    fake.set_stockout("us-central1-b", Some(Stockout::InOperation));
    let op = client
        .insert_instance("us-central1-b", &vm("worker-2", "us-central1-b"), &request_id())
        .await
        .unwrap();
    let err = client
        .wait_operation("us-central1-b", &op.name, Duration::from_secs(5))
        .await
        .unwrap_err();
    match err {
        ComputeError::Stockout {
            zone,
            zones_available,
            ..
        } => {
            assert_eq!(zone.as_deref(), Some("us-central1-b"));
            // Neither stocked-out zone is suggested.
            assert!(
                !zones_available.is_empty()
                    && !zones_available.iter().any(|z| z == ZONE || z == "us-central1-b")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        fake.instances().is_empty(),
        "a failed insert leaves nothing behind"
    );

    fake.set_quota_exceeded("us-central1-c", Some(Quota::Regional("NVIDIA_A100_GPUS".into())));
    let err = client
        .insert_instance("us-central1-c", &vm("worker-3", "us-central1-c"), &request_id())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ComputeError::Quota { metric, region: Some(r), global: false, .. } if metric == "NVIDIA_A100_GPUS" && r == "us-central1"),
        "{err:?}"
    );
    fake.set_quota_exceeded("us-central1-c", Some(Quota::GpusAllRegions));
    let err = client
        .insert_instance("us-central1-c", &vm("worker-3", "us-central1-c"), &request_id())
        .await
        .unwrap_err();
    assert!(matches!(err, ComputeError::Quota { global: true, .. }), "{err:?}");
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_with_the_same_request_id() {
    let (fake, client) = setup(fast()).await;
    fake.fail_next(2, Fault::ServerError);
    fake.fail_next(1, Fault::RateLimit);
    let id = request_id();
    client
        .insert_instance(ZONE, &vm("worker-1", ZONE), &id)
        .await
        .unwrap();
    let inserts: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(
        inserts.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 403, 200]
    );
    assert!(
        inserts
            .iter()
            .all(|r| r.path.contains(&format!("requestId={id}")))
    );
    assert_eq!(fake.inserts_executed(), 1);

    // A storm longer than the retries: the error comes back, classified.
    fake.fail_next(4, Fault::ServerError);
    let err = client.get_instance(ZONE, "worker-1").await.unwrap_err();
    assert!(matches!(err, ComputeError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn a_preempted_instance_leaves_an_operation_and_goes() {
    let (fake, client) = setup(fast()).await;
    let op = client
        .insert_instance(ZONE, &vm("worker-1", ZONE), &request_id())
        .await
        .unwrap();
    client
        .wait_operation(ZONE, &op.name, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(fake.preempt(ZONE, "worker-1"));
    let preempted = client
        .list_operations(ZONE, Some("operationType = \"compute.instances.preempted\""))
        .await
        .unwrap();
    assert_eq!(preempted.len(), 1);
    assert_eq!(preempted[0].target_name(), Some("worker-1"));
    assert_eq!(
        preempted[0].status_message.as_deref(),
        Some("Instance was preempted.")
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(client.get_instance(ZONE, "worker-1").await.unwrap(), None);
}

#[tokio::test]
async fn a_refused_credential_is_an_auth_error() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeCompute::start(fast()).await.unwrap();
    // The key file's token endpoint is not the fake's: the audience check fails.
    let json = fake
        .service_account_json(&spotsweep_gce_fake::new_private_key().unwrap())
        .replace(&fake.token_uri(), &format!("{}/other", fake.token_uri()));
    let account = gcp_auth::CustomServiceAccount::from_json(&json).unwrap();
    let client = ComputeClient::new(
        &fake.base_url(),
        "fake-project",
        Arc::new(account),
        Retry::default(),
    )
    .unwrap();
    let err = client.get_instance(ZONE, "x").await.unwrap_err();
    assert!(matches!(err, ComputeError::Auth(_)), "{err:?}");
}
