//! The control plane's records on every backend: API tokens (live, expired, revoked, the admin
//! reset), the fleet's (the daemon's id and secret, VM records, a pool's work when idle), and
//! leader leases, with several stores on one database as several daemons are.

use spotsweep_store::*;

#[macro_use]
mod common;
use common::{Backend, Close};

/// A moment, so that records made one after the other have different times (lists are oldest
/// first, ties by id).
async fn tick() {
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
}

fn new_token<'a>(name: &'a str, hash: &'a str, role: TokenRole, expires_at: Option<i64>) -> NewToken<'a> {
    NewToken {
        name,
        hash,
        role,
        scope: TokenScope::Write,
        expires_at,
    }
}

async fn tokens_live_expire_and_revoke<B: Backend<Store: TokenStore>>() {
    let db = B::start().await;
    let store = db.open().await;
    let admin = store
        .create_token(new_token("admin", "h-admin", TokenRole::Admin, None))
        .await
        .unwrap();
    tick().await;
    let reader = store
        .create_token(NewToken {
            scope: TokenScope::Read,
            ..new_token("reader", "h-reader", TokenRole::User, Some(now_ms() + 3_600_000))
        })
        .await
        .unwrap();
    tick().await;
    let expired = store
        .create_token(new_token("old", "h-old", TokenRole::User, Some(now_ms() - 1)))
        .await
        .unwrap();
    tick().await;
    assert_eq!(admin.id.len(), 32);
    assert_ne!(admin.id, reader.id);

    let names: Vec<String> = store
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["admin", "reader"]);
    let got = store.get_token(&reader.id).await.unwrap();
    assert_eq!(
        (got.role, got.scope, got.expires_at),
        (TokenRole::User, TokenScope::Read, reader.expires_at)
    );
    assert!(matches!(
        store.get_token(&expired.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.get_token("nope").await,
        Err(StoreError::NotFound(_))
    ));
    let live = store.live_tokens().await.unwrap();
    let hashes: Vec<&str> = live.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(hashes, ["h-admin", "h-reader"]);

    store.revoke_token(&reader.id).await.unwrap();
    assert!(matches!(
        store.revoke_token(&reader.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.get_token(&reader.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.list_tokens().await.unwrap().len(), 1);
    // A hash is unique: the same secret cannot be stored twice.
    assert!(
        store
            .create_token(new_token("again", "h-admin", TokenRole::User, None))
            .await
            .is_err()
    );
    store.close().await;
}

async fn an_admin_reset_revokes_every_admin_and_makes_one<B: Backend<Store: TokenStore>>() {
    let db = B::start().await;
    let store = db.open().await;
    let first = store
        .create_token(new_token("admin", "h1", TokenRole::Admin, None))
        .await
        .unwrap();
    tick().await;
    let user = store
        .create_token(new_token("user", "h2", TokenRole::User, None))
        .await
        .unwrap();
    tick().await;
    let fresh = store.reset_admin_token("h3").await.unwrap();
    assert_eq!((fresh.role, fresh.name.as_str()), (TokenRole::Admin, "admin"));
    assert!(matches!(
        store.get_token(&first.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.get_token(&user.id).await.unwrap().role, TokenRole::User);
    let live: Vec<(String, TokenRole)> = store
        .live_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|(h, t)| (h, t.role))
        .collect();
    assert_eq!(
        live,
        [
            ("h2".to_owned(), TokenRole::User),
            ("h3".to_owned(), TokenRole::Admin)
        ]
    );
    store.close().await;
}

async fn the_daemon_s_id_and_secret_are_made_once_and_kept<B: Backend<Store: FleetStore>>() {
    let db = B::start().await;
    let store = db.open().await;
    let id = store.daemon_id().await.unwrap();
    let secret = store.daemon_secret().await.unwrap();
    assert_eq!(id.len(), 12);
    assert_eq!(secret.len(), 64);
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(id, secret[..12]);
    // Asked at once, by several callers (several daemons): one answer.
    let answers = futures::future::join_all((0..8).map(|_| store.daemon_id())).await;
    assert!(answers.into_iter().all(|a| a.unwrap() == id));
    store.close().await;
    let store = db.open().await;
    assert_eq!(store.daemon_id().await.unwrap(), id);
    assert_eq!(store.daemon_secret().await.unwrap(), secret);
    store.close().await;
}

fn new_vm(pool: &str, zone: &str) -> NewVm {
    NewVm {
        pool: pool.into(),
        zone: zone.into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        price_per_hour: 1.8,
        slots: 2,
    }
}

async fn vm_records_move_through_their_states<B: Backend<Store: FleetStore>>() {
    let db = B::start().await;
    let store = db.open().await;
    let a = store.create_vm(&new_vm("a100", "us-central1-a")).await.unwrap();
    let b = store.create_vm(&new_vm("a100", "us-central1-b")).await.unwrap();
    let other = store
        .create_vm(&new_vm("t4 spot", "europe-west4-a"))
        .await
        .unwrap();
    assert_eq!(a.name, spotsweep_core::fleet::vm_name("a100", a.id));
    assert_eq!(other.name, spotsweep_core::fleet::vm_name("t4 spot", other.id));
    assert_eq!(
        (a.state, a.slots, a.zone.as_str()),
        (VmState::Requested, 2, "us-central1-a")
    );
    assert!(a.operation.is_none() && a.running_at.is_none() && a.ended_at.is_none());

    // Each field changes only when the update names it; the first running and end times stay.
    let a = store
        .update_vm(
            a.id,
            &VmUpdate {
                state: Some(VmState::Provisioning),
                operation: Some(Some("op-1".into())),
                token_hash: Some("th".into()),
                ..VmUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (a.state, a.operation.as_deref(), a.token_hash.as_deref()),
        (VmState::Provisioning, Some("op-1"), Some("th"))
    );
    let a = store
        .update_vm(
            a.id,
            &VmUpdate {
                state: Some(VmState::Booting),
                running_at: Some(1_000),
                busy_at: Some(1_000),
                ..VmUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(a.operation.as_deref(), Some("op-1"), "not named: kept");
    let a = store
        .update_vm(
            a.id,
            &VmUpdate {
                operation: Some(None),
                running_at: Some(5_000),
                busy_at: Some(500),
                ..VmUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (a.operation, a.running_at, a.busy_at),
        (None, Some(1_000), Some(1_000)),
        "cleared; the first running time and the latest busy time"
    );
    let a = store
        .update_vm(
            a.id,
            &VmUpdate {
                state: Some(VmState::Preempted),
                ended_at: Some(9_000),
                reason: Some("preempted".into()),
                ..VmUpdate::default()
            },
        )
        .await
        .unwrap();
    let a = store
        .update_vm(
            a.id,
            &VmUpdate {
                ended_at: Some(12_000),
                ..VmUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (a.state, a.ended_at, a.reason.as_deref()),
        (VmState::Preempted, Some(9_000), Some("preempted"))
    );
    assert!(matches!(
        store.update_vm(a.id + 100, &VmUpdate::default()).await,
        Err(StoreError::NotFound(_))
    ));

    let names = |vms: Vec<Vm>| vms.into_iter().map(|v| v.name).collect::<Vec<_>>();
    assert_eq!(
        names(store.list_vms(Some("a100"), false).await.unwrap()),
        [b.name.as_str()]
    );
    assert_eq!(
        names(store.list_vms(Some("a100"), true).await.unwrap()),
        [a.name.clone(), b.name.clone()]
    );
    assert_eq!(
        names(store.list_vms(None, false).await.unwrap()),
        [b.name.clone(), other.name.clone()]
    );
    // Recorded for good: a restart finds them as they were.
    store.close().await;
    let store = db.open().await;
    let again = store.list_vms(None, true).await.unwrap();
    assert_eq!(again.len(), 3);
    assert_eq!(again[0].ended_at, Some(9_000));
    store.close().await;
}

async fn an_idle_pool_wants_nothing_and_has_cost_nothing<B: Backend<Store: FleetStore>>() {
    let db = B::start().await;
    let store = db.open().await;
    let demand = store.pool_demand("a100").await.unwrap();
    assert_eq!((demand.waiting, demand.running), (0, 0));
    assert!(store.lease_costs(None, None).await.unwrap().is_empty());
    assert!(store.lease_costs(Some("a100"), Some(1)).await.unwrap().is_empty());
    assert!(store.open_lease_runs().await.unwrap().is_empty());
    assert!(store.open_leases_of_agent("ss-a100-1").await.unwrap().is_empty());
    assert_eq!(store.lease_agent_name("no-such-lease").await.unwrap(), None);
    assert!(!store.agent_runs_trial("ss-a100-1", "run").await.unwrap());
    store.close().await;
}

async fn one_daemon_leads_a_role_until_it_resigns_or_its_lease_runs_out<B: Backend<Store: LeaderStore>>() {
    let db = B::start().await;
    // Two daemons on one database.
    let (one, two) = (db.open().await, db.open().await);
    assert_eq!(one.leader("expiry").await.unwrap(), None);
    assert!(one.lead("expiry", "daemon-1", 60_000).await.unwrap());
    assert!(one.lead("expiry", "daemon-1", 60_000).await.unwrap(), "a renewal");
    assert!(!two.lead("expiry", "daemon-2", 60_000).await.unwrap());
    assert_eq!(two.leader("expiry").await.unwrap().as_deref(), Some("daemon-1"));
    // Roles are apart.
    assert!(two.lead("fleet:a100", "daemon-2", 60_000).await.unwrap());
    assert!(!one.lead("fleet:a100", "daemon-1", 60_000).await.unwrap());
    // A resignation frees the role at once; another's resignation changes nothing.
    two.resign("expiry", "daemon-2").await.unwrap();
    assert_eq!(one.leader("expiry").await.unwrap().as_deref(), Some("daemon-1"));
    one.resign("expiry", "daemon-1").await.unwrap();
    assert_eq!(two.leader("expiry").await.unwrap(), None);
    assert!(two.lead("expiry", "daemon-2", 60_000).await.unwrap());
    // A holder that stops renewing loses the role when its lease runs out.
    assert!(one.lead("upkeep", "daemon-1", 300).await.unwrap());
    assert!(!two.lead("upkeep", "daemon-2", 60_000).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(two.leader("upkeep").await.unwrap(), None);
    assert!(two.lead("upkeep", "daemon-2", 60_000).await.unwrap());
    assert!(!one.lead("upkeep", "daemon-1", 300).await.unwrap(), "taken over");
    one.close().await;
    two.close().await;
}

async fn of_daemons_that_try_at_once_one_leads<B: Backend<Store: LeaderStore>>() {
    let db = B::start().await;
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(db.open().await);
    }
    for round in 0..5 {
        let role = format!("role-{round}");
        let tries = stores.iter().enumerate().flat_map(|(i, s)| {
            let role = role.clone();
            (0..4).map(move |j| {
                let (s, role) = (s.clone(), role.clone());
                async move { s.lead(&role, &format!("d{i}-{j}"), 60_000).await.unwrap() }
            })
        });
        let won = futures::future::join_all(tries)
            .await
            .into_iter()
            .filter(|w| *w)
            .count();
        assert_eq!(won, 1, "round {round}");
    }
    for s in stores {
        s.close().await;
    }
}

conformance!(sqlite: crate::common::Sqlite;
    tokens_live_expire_and_revoke,
    an_admin_reset_revokes_every_admin_and_makes_one,
    the_daemon_s_id_and_secret_are_made_once_and_kept,
    vm_records_move_through_their_states,
    an_idle_pool_wants_nothing_and_has_cost_nothing,
    one_daemon_leads_a_role_until_it_resigns_or_its_lease_runs_out,
    of_daemons_that_try_at_once_one_leads,
);

conformance!(postgres: crate::common::Postgres;
    tokens_live_expire_and_revoke,
    an_admin_reset_revokes_every_admin_and_makes_one,
    the_daemon_s_id_and_secret_are_made_once_and_kept,
    vm_records_move_through_their_states,
    an_idle_pool_wants_nothing_and_has_cost_nothing,
    one_daemon_leads_a_role_until_it_resigns_or_its_lease_runs_out,
    of_daemons_that_try_at_once_one_leads,
);
