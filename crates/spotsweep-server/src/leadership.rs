//! Which of the loops that must run once this daemon runs: lease expiry (`expiry`), each gce
//! pool's fleet manager and reconciler (`fleet:<pool>`) and database upkeep (`upkeep`). Each is
//! a role held through a leader lease in the database (see `spotsweep_core::leader`); a loop
//! works only while its role's watch says so. With several daemons on one database each role
//! has one holder, and a dead holder's roles pass to another daemon within 15 s.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use spotsweep_core::leader::{LEASE_TTL, RENEW_EVERY};
use spotsweep_store::LeaderStore;
use tokio::sync::watch;

/// This daemon's roles.
pub struct Leadership {
    holder: String,
    store: Arc<dyn LeaderStore>,
    roles: Mutex<BTreeMap<String, watch::Sender<bool>>>,
}

impl Leadership {
    /// Leadership as `holder`. A daemon that restarts under the same name takes its roles back
    /// at once (its old leases are its own); one under a new name waits for them to run out.
    pub fn new(store: Arc<dyn LeaderStore>, holder: String) -> Arc<Self> {
        Arc::new(Self {
            holder,
            store,
            roles: Mutex::default(),
        })
    }

    /// Takes part in `role`, trying for it now: the watch says whether this daemon holds it,
    /// from now on.
    pub async fn role(&self, role: &str) -> watch::Receiver<bool> {
        let held = self.try_lead(role).await;
        let (tx, rx) = watch::channel(held);
        if let Ok(mut roles) = self.roles.lock() {
            roles.insert(role.to_owned(), tx);
        }
        rx
    }

    /// Renews the roles held and tries the others every [`RENEW_EVERY`] until `stop`; then
    /// resigns every role, so that another daemon takes them at once.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RENEW_EVERY) => {}
                _ = stop.changed() => break,
            }
            for role in self.names() {
                let held = self.try_lead(&role).await;
                if let Ok(roles) = self.roles.lock()
                    && let Some(tx) = roles.get(&role)
                {
                    tx.send_if_modified(|was| {
                        let changed = *was != held;
                        *was = held;
                        changed
                    });
                }
            }
        }
        for role in self.names() {
            if let Err(e) = self.store.resign(&role, &self.holder).await {
                tracing::warn!(%role, error = %e, "cannot resign the role; another daemon takes it when its lease runs out");
            }
        }
    }

    /// Every role this daemon takes part in.
    fn names(&self) -> Vec<String> {
        self.roles
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// One try at `role`. A database that cannot answer counts as not holding it: a loop that
    /// might run twice is worse than one that waits a few seconds.
    async fn try_lead(&self, role: &str) -> bool {
        match self
            .store
            .lead(role, &self.holder, LEASE_TTL.as_millis() as i64)
            .await
        {
            Ok(held) => {
                let was = self
                    .roles
                    .lock()
                    .ok()
                    .and_then(|r| r.get(role).map(|tx| *tx.borrow()));
                match (was, held) {
                    (Some(false) | None, true) => tracing::info!(%role, holder = %self.holder, "leading"),
                    (Some(true), false) => tracing::warn!(%role, holder = %self.holder, "no longer leading"),
                    _ => {}
                }
                held
            }
            Err(e) => {
                tracing::warn!(%role, error = %e, "cannot renew the role's lease");
                false
            }
        }
    }
}

/// Waits until `role` says this daemon holds it; false when `stop` came first.
pub async fn until_held(role: &mut watch::Receiver<bool>, stop: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *role.borrow_and_update() {
            return true;
        }
        tokio::select! {
            changed = role.changed() => if changed.is_err() { return false },
            _ = stop.changed() => return false,
        }
    }
}
