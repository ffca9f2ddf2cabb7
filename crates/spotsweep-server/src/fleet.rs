//! The spot fleet: for each Compute Engine pool, Spot VMs that follow the pool's work.
//!
//! Every tick, each pool's manager:
//! 1. follows each live VM through its states (requested → provisioning → booting → ready →
//!    deleting → deleted, or preempted / failed) by reading its operation and its instance; a VM
//!    that is gone without the daemon deleting it is preempted when the zone has a
//!    `compute.instances.preempted` operation for it, else failed;
//! 2. scales: wants `ceil((waiting + running trials) / slots_per_vm)` VMs, at most `max_vms`,
//!    and within the budget: a VM starts only if the pool's spending so far plus the expected
//!    cost of every live VM and of the new one fits in `budget_usd` (a VM's share of the work
//!    left at the pool's median attempt length, plus the idle timeout, at most an hour; an hour
//!    before any attempt has ended), and VMs lease no new trial once a typical attempt would
//!    cross the budget; it creates the missing ones in the first zone of the pool's list that
//!    is not backed off; a stockout backs the zone off (doubling, with jitter) and moves on to
//!    the next zone at once, a regional quota backs off the region's zones, `GPUS_ALL_REGIONS`
//!    the whole pool;
//! 3. deletes VMs that have had no running trial for `idle_timeout` while the pool has more VMs
//!    than it needs, and every VM once the budget is spent;
//! 4. now and then reconciles: lists the instances labelled as this daemon's in every zone
//!    (`aggregatedList`) and deletes any that no live VM record owns.
//!
//! A VM is recorded, zone and `requestId` included, before its insert is sent; after a crash the
//! insert is sent again with the same `requestId` and the same name, so the cloud creates it at
//! most once. Every VM is Spot, deletes itself when preempted, and carries a `maxRunDuration`,
//! so that a VM left behind by a dead daemon still ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngExt;
use spotsweep_core::fleet::{BudgetPlan, PoolTerms, typical_attempt_seconds};
use spotsweep_gce::{
    ComputeClient, ComputeError, Metadata, MetadataItem, NewInstance, Retry, ServiceAccount,
};
use spotsweep_store::{FleetStore, NewVm, Outcome, SweepStore, Vm, VmState, VmUpdate, now_ms};
use tokio::sync::watch;

use crate::auth::{Auth, VmScope, hash_token, vm_token};
use crate::pools::GcePool;
use crate::sweeps::Signals;

/// The startup script every VM runs (see `deploy/gce/startup-script.sh`).
pub const STARTUP_SCRIPT: &str = include_str!("../../../deploy/gce/startup-script.sh");

/// The label every VM of spotsweep carries, and the one naming the daemon that owns it.
pub const MANAGED_BY: (&str, &str) = ("managed-by", "spotsweep");
/// The label key of the owning daemon's install id.
pub const DAEMON_LABEL: &str = "spotsweep-daemon";

/// How often the fleet acts.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetTiming {
    /// Between ticks.
    pub tick: Duration,
    /// Between reconciliations.
    pub reconcile: Duration,
    /// A zone's first back-off after a stockout (doubled at each one after, up to 32x).
    pub zone_backoff: Duration,
    /// The client's retry policy.
    pub retry: Retry,
}

impl Default for FleetTiming {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(5),
            reconcile: Duration::from_secs(60),
            zone_backoff: Duration::from_secs(300),
            retry: Retry::default(),
        }
    }
}

/// One Compute Engine pool's manager.
pub struct PoolManager {
    name: String,
    cfg: GcePool,
    client: ComputeClient,
    store: Arc<dyn FleetStore>,
    sweeps: Arc<dyn SweepStore>,
    auth: Arc<Auth>,
    signals: Arc<Signals>,
    daemon_id: String,
    daemon_secret: String,
    public_url: String,
    /// Pools whose budget allows no new lease.
    budget_blocked: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    timing: FleetTiming,
    /// Per zone: backed off until, and the stockouts in a row.
    backoff: HashMap<String, (Instant, u32)>,
    /// The same deadlines as the fleet page shows them, shared with the API.
    shown_backoffs: Arc<std::sync::Mutex<crate::ZoneBackoffs>>,
    last_reconcile: Option<Instant>,
    /// Whether this daemon manages the pool now.
    leadership: Arc<crate::leadership::Leadership>,
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A label value as Compute accepts it: lowercase letters, digits, `_` and `-`, at most 63.
fn label_value(s: &str) -> String {
    s.to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect()
}

impl PoolManager {
    /// A manager for pool `name`; `tokens` authenticate the daemon to Compute. The live VMs'
    /// tokens are let in again (after a restart).
    pub async fn new(
        name: &str,
        cfg: GcePool,
        tokens: Arc<dyn gcp_auth::TokenProvider>,
        state: &crate::AppState,
        public_url: &str,
        timing: FleetTiming,
    ) -> anyhow::Result<Self> {
        let client = ComputeClient::new(&cfg.compute_endpoint, &cfg.project, tokens, timing.retry.clone())?;
        let store = state.fleet.clone();
        for vm in store.list_vms(Some(name), false).await? {
            if let Some(hash) = vm.token_hash {
                state.auth.add_vm(
                    hash,
                    VmScope {
                        name: vm.name,
                        pool: name.to_string(),
                    },
                );
            }
        }
        Ok(Self {
            name: name.to_string(),
            cfg,
            client,
            daemon_id: store.daemon_id().await?,
            daemon_secret: store.daemon_secret().await?,
            store,
            sweeps: state.sweeps.clone(),
            auth: state.auth.clone(),
            signals: state.signals.clone(),
            budget_blocked: state.budget_blocked.clone(),
            leadership: state.leadership.clone(),
            shown_backoffs: state.zone_backoffs.clone(),
            public_url: public_url.to_string(),
            timing,
            backoff: HashMap::new(),
            last_reconcile: None,
        })
    }

    /// Runs ticks until `stop` changes.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        // One daemon manages a pool's VMs (see `leadership`); another takes over, and adopts
        // them from the records, when it goes.
        let mut role = self.leadership.role(&format!("fleet:{}", self.name)).await;
        loop {
            if !crate::leadership::until_held(&mut role, &mut stop).await {
                return;
            }
            let name = self.name.clone();
            match crate::caught("a fleet tick", self.tick()).await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::warn!(pool = %name, error = %e, "fleet tick failed; trying again next tick")
                }
                None => tracing::error!(pool = %name, "the fleet tick panicked; trying again next tick"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timing.tick) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One round: follow the VMs, scale, delete idle ones, reconcile when due.
    pub async fn tick(&mut self) -> anyhow::Result<()> {
        for vm in self.store.list_vms(Some(&self.name), false).await? {
            if let Err(e) = self.follow(&vm).await {
                tracing::warn!(pool = %self.name, vm = %vm.name, error = %e, "cannot read the VM's state");
            }
        }
        self.scale().await?;
        let due = self
            .last_reconcile
            .is_none_or(|t| t.elapsed() >= self.timing.reconcile);
        if due {
            self.reconcile().await?;
            self.last_reconcile = Some(Instant::now());
        }
        Ok(())
    }

    async fn scale(&mut self) -> anyhow::Result<()> {
        let demand = self.store.pool_demand(&self.name).await?;
        let terms = self.terms();
        let wanted = terms.vms_wanted(demand.waiting, demand.running);
        // Every VM the pool ever had: what it has spent; the ones not ended: what it has.
        let all = self.store.list_vms(Some(&self.name), true).await?;
        let now = now_ms();
        let spent: f64 = all.iter().map(|v| v.cost(now)).sum();
        let vms: Vec<&Vm> = all.iter().filter(|v| !v.state.is_ended()).collect();
        let live: Vec<&Vm> = vms
            .iter()
            .copied()
            .filter(|v| {
                matches!(
                    v.state,
                    VmState::Requested | VmState::Provisioning | VmState::Booting | VmState::Ready
                )
            })
            .collect();
        let over_budget = self.cfg.budget_usd.is_some_and(|b| spent >= b);
        if over_budget {
            for vm in vms.iter().filter(|v| v.state != VmState::Deleting) {
                tracing::warn!(pool = %self.name, vm = %vm.name, spent, "budget spent: deleting the VM");
                self.delete(vm, "the pool's budget is spent").await?;
            }
            return Ok(());
        }
        // A draining VM (its setup failed) goes once nothing runs on it; `live` leaves it out,
        // so a replacement starts if the work needs one.
        for vm in vms.iter().filter(|v| v.state == VmState::Draining) {
            if self.store.open_leases_of_agent(&vm.name).await?.is_empty() {
                let reason = vm.reason.clone().unwrap_or_else(|| "drained".into());
                tracing::info!(pool = %self.name, vm = %vm.name, %reason, "drained: deleting");
                self.delete(vm, &reason).await?;
            }
        }
        // Idle VMs beyond what the work needs go, oldest idle first.
        if live.len() > wanted {
            let idle_ms = self.cfg.idle_timeout.as_millis() as i64;
            let mut surplus = live.len() - wanted;
            for vm in live
                .iter()
                .filter(|v| matches!(v.state, VmState::Booting | VmState::Ready))
            {
                if surplus == 0 {
                    break;
                }
                let since = vm.busy_at.or(vm.running_at).unwrap_or(vm.created_at);
                // Never one with a running trial.
                if now - since >= idle_ms && self.store.open_leases_of_agent(&vm.name).await?.is_empty() {
                    tracing::info!(pool = %self.name, vm = %vm.name, "idle past the timeout: deleting");
                    self.delete(vm, "idle").await?;
                    surplus -= 1;
                }
            }
        }
        let plan = BudgetPlan::new(
            &terms,
            spent,
            self.typical_attempt_seconds().await?,
            demand.waiting + demand.running,
            demand.running,
            wanted,
        );
        if let Ok(mut blocked) = self.budget_blocked.lock() {
            if plan.stop_leases {
                if blocked.insert(self.name.clone()) {
                    tracing::warn!(pool = %self.name, spent, "budget nearly spent: no new leases");
                }
            } else {
                blocked.remove(&self.name);
            }
        }
        let missing = wanted
            .saturating_sub(live.len())
            .min(plan.vms_affordable(live.len()));
        if missing < wanted.saturating_sub(live.len()) {
            tracing::warn!(pool = %self.name, spent, per_vm_usd = plan.per_vm_usd, "not starting every VM: their expected cost would pass the budget");
        }
        for _ in 0..missing {
            if !self.create().await? {
                break;
            }
        }
        Ok(())
    }

    /// The pool's prices and limits, for the budget rules.
    fn terms(&self) -> PoolTerms {
        PoolTerms {
            budget_usd: self.cfg.budget_usd,
            price_per_hour: self.cfg.spot_price_per_hour,
            slots_per_vm: self.cfg.slots_per_vm,
            max_vms: self.cfg.max_vms,
            idle_timeout_s: self.cfg.idle_timeout.as_secs_f64(),
        }
    }

    /// The typical length of an attempt on this pool's VMs (`None` before any ended).
    async fn typical_attempt_seconds(&self) -> anyhow::Result<Option<f64>> {
        let ended = self
            .store
            .lease_costs(Some(&self.name), None)
            .await?
            .into_iter()
            .filter(|l| l.outcome.is_some())
            .map(|l| l.seconds)
            .collect();
        Ok(typical_attempt_seconds(ended))
    }

    /// The first zone of the pool's list that is not backed off.
    fn zone(&self) -> Option<String> {
        let now = Instant::now();
        self.cfg
            .zones
            .iter()
            .find(|z| self.backoff.get(*z).is_none_or(|(until, _)| *until <= now))
            .cloned()
    }

    fn back_off(&mut self, zone: &str) {
        let entry = self
            .backoff
            .entry(zone.to_string())
            .or_insert((Instant::now(), 0));
        entry.1 += 1;
        let factor = 1u32 << (entry.1 - 1).min(5);
        let base = self.timing.zone_backoff * factor;
        // Up to a quarter more, so that daemons sharing a project do not retry in step.
        let jitter = base.mul_f64(rand::rng().random::<f64>() * 0.25);
        entry.0 = Instant::now() + base + jitter;
        tracing::warn!(pool = %self.name, zone, backoff = ?(base + jitter), "zone backed off");
        if let Ok(mut shown) = self.shown_backoffs.lock() {
            let until = spotsweep_store::now_ms() + (base + jitter).as_millis() as i64;
            shown
                .entry(self.name.clone())
                .or_default()
                .insert(zone.to_string(), until);
        }
        self.signals.changes.fleet();
    }

    /// Records a VM, then asks for it, moving from zone to zone on stockouts. False when no
    /// zone is left to try.
    async fn create(&mut self) -> anyhow::Result<bool> {
        loop {
            let Some(zone) = self.zone() else {
                tracing::warn!(pool = %self.name, "every zone is backed off: no VM for now");
                return Ok(false);
            };
            let vm = self
                .store
                .create_vm(&NewVm {
                    pool: self.name.clone(),
                    zone: zone.clone(),
                    request_id: request_id(),
                    price_per_hour: self.cfg.spot_price_per_hour,
                    slots: self.cfg.slots_per_vm,
                })
                .await?;
            self.signals.changes.fleet();
            tracing::info!(pool = %self.name, vm = %vm.name, zone, "requesting a Spot VM");
            if self.insert(&vm).await? {
                return Ok(true);
            }
        }
    }

    /// The insert body of a VM, with its token.
    fn instance(&self, vm: &Vm, token: &str) -> NewInstance {
        let mut i = NewInstance::spot(
            &vm.name,
            &vm.zone,
            &self.cfg.machine_type,
            &self.cfg.image,
            self.cfg.disk_gb,
            self.cfg.max_vm_lifetime.as_secs(),
        );
        i.guest_accelerators = self
            .cfg
            .accelerators
            .iter()
            .map(|(kind, count)| spotsweep_gce::Accelerator {
                accelerator_type: format!("zones/{}/acceleratorTypes/{kind}", vm.zone),
                accelerator_count: *count,
            })
            .collect();
        if let Some(email) = &self.cfg.service_account {
            i.service_accounts = vec![ServiceAccount {
                email: email.clone(),
                scopes: self.cfg.scopes.clone(),
            }];
        }
        i.network_interfaces[0].network = self.cfg.network.clone();
        let mut labels: BTreeMap<String, String> = self.cfg.labels.clone();
        labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        labels.insert(DAEMON_LABEL.into(), label_value(&self.daemon_id));
        labels.insert("spotsweep-pool".into(), label_value(&self.name));
        labels.insert("spotsweep-vm".into(), vm.id.to_string());
        i.labels = labels;
        let item = |k: &str, v: String| MetadataItem {
            key: k.to_string(),
            value: v,
        };
        i.metadata = Some(Metadata {
            items: vec![
                item("startup-script", STARTUP_SCRIPT.to_string()),
                item("spotsweep-server", self.public_url.clone()),
                item("spotsweep-pool", self.name.clone()),
                item("spotsweep-slots", self.cfg.slots_per_vm.to_string()),
                item("spotsweep-token", token.to_string()),
            ],
        });
        i
    }

    /// Sends a recorded VM's insert (again, after a crash: same name, same requestId). True
    /// when the cloud took it or may have (an insert without an answer is sent again next
    /// tick); false when it refused.
    async fn insert(&mut self, vm: &Vm) -> anyhow::Result<bool> {
        // The VM's token: the same one if this insert is sent again.
        let token = vm_token(&self.daemon_secret, vm.id, &vm.request_id);
        let hash = hash_token(&token);
        if vm.token_hash.as_deref() != Some(hash.as_str()) {
            self.store
                .update_vm(
                    vm.id,
                    &VmUpdate {
                        token_hash: Some(hash.clone()),
                        ..VmUpdate::default()
                    },
                )
                .await?;
            self.signals.changes.fleet();
        }
        self.auth.add_vm(
            hash,
            VmScope {
                name: vm.name.clone(),
                pool: self.name.clone(),
            },
        );
        self.signals.changes.tell(crate::replicas::News::Vms);
        match self
            .client
            .insert_instance(&vm.zone, &self.instance(vm, &token), &vm.request_id)
            .await
        {
            Ok(op) => {
                self.store
                    .update_vm(
                        vm.id,
                        &VmUpdate {
                            state: Some(VmState::Provisioning),
                            operation: Some(Some(op.name)),
                            ..VmUpdate::default()
                        },
                    )
                    .await?;
                self.signals.changes.fleet();
                Ok(true)
            }
            // Created by an insert whose answer was lost (the name is ours alone).
            Err(ComputeError::AlreadyExists(_)) => {
                self.set_state(vm, VmState::Provisioning, None).await?;
                Ok(true)
            }
            // The request may or may not have reached the cloud: the record stays "requested"
            // and the same insert (same requestId) is sent again next tick.
            Err(e) if e.is_retried() => {
                tracing::warn!(pool = %self.name, vm = %vm.name, error = %e, "insert not answered; sending it again next tick");
                Ok(true)
            }
            Err(e) => {
                self.failed_insert(vm, &e).await?;
                Ok(false)
            }
        }
    }

    /// An insert that failed, at once or in its operation: back off what the error says, end
    /// the VM's record.
    async fn failed_insert(&mut self, vm: &Vm, e: &ComputeError) -> anyhow::Result<()> {
        match e {
            ComputeError::Stockout { .. } => self.back_off(&vm.zone),
            ComputeError::Quota { global: true, .. } => {
                for z in self.cfg.zones.clone() {
                    self.back_off(&z);
                }
            }
            ComputeError::Quota { region, .. } => {
                let region = region.clone().unwrap_or_else(|| region_of(&vm.zone));
                for z in self.cfg.zones.clone().iter().filter(|z| region_of(z) == region) {
                    self.back_off(z);
                }
            }
            _ => self.back_off(&vm.zone),
        }
        tracing::warn!(pool = %self.name, vm = %vm.name, zone = %vm.zone, error = %e, "the VM could not be created");
        self.end(vm, VmState::Failed, &e.to_string()).await
    }

    async fn set_state(&self, vm: &Vm, state: VmState, running_at: Option<i64>) -> anyhow::Result<()> {
        self.store
            .update_vm(
                vm.id,
                &VmUpdate {
                    state: Some(state),
                    running_at,
                    busy_at: running_at,
                    ..VmUpdate::default()
                },
            )
            .await?;
        self.signals.changes.fleet();
        Ok(())
    }

    /// Ends a VM's record: its token stops working, and the trials its agent held are
    /// preempted (requeued, not counted as failures).
    async fn end(&self, vm: &Vm, state: VmState, reason: &str) -> anyhow::Result<()> {
        self.auth
            .remove_vm(&hash_token(&vm_token(&self.daemon_secret, vm.id, &vm.request_id)));
        self.signals.changes.tell(crate::replicas::News::Vms);
        let leases = self.store.open_leases_of_agent(&vm.name).await?;
        // Its trials' tokens end with their leases.
        self.auth
            .retain_trials(|lease| !leases.iter().any(|l| l == lease));
        for lease in &leases {
            match self.sweeps.complete_trial(lease, Outcome::Preempted).await {
                Ok(t) => {
                    tracing::info!(vm = %vm.name, trial = t.number, sweep = t.sweep_id, "trial requeued: its VM ended")
                }
                Err(e) => tracing::warn!(vm = %vm.name, lease, error = %e, "cannot requeue the VM's trial"),
            }
        }
        if !leases.is_empty() {
            self.signals.work.notify_waiters();
        }
        self.store
            .update_vm(
                vm.id,
                &VmUpdate {
                    state: Some(state),
                    operation: Some(None),
                    ended_at: Some(now_ms()),
                    reason: Some(reason.to_string()),
                    ..VmUpdate::default()
                },
            )
            .await?;
        self.signals.changes.fleet();
        Ok(())
    }

    /// Moves a live VM along from what the cloud says of it.
    async fn follow(&mut self, vm: &Vm) -> anyhow::Result<()> {
        match vm.state {
            VmState::Requested => {
                self.insert(vm).await?;
            }
            VmState::Provisioning => {
                if let Some(op) = &vm.operation {
                    match self.client.get_operation(&vm.zone, op).await {
                        Ok(op) if !op.is_done() => return Ok(()),
                        Ok(op) => {
                            if let Some(e) = spotsweep_gce::classify_operation(&op) {
                                // A failed create can still leave an instance: delete it.
                                if self.client.get_instance(&vm.zone, &vm.name).await?.is_some() {
                                    let _ = self
                                        .client
                                        .delete_instance(&vm.zone, &vm.name, &request_id())
                                        .await;
                                }
                                return self.failed_insert(vm, &e).await;
                            }
                        }
                        Err(ComputeError::NotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                match self.client.get_instance(&vm.zone, &vm.name).await? {
                    Some(i) if i.status.as_deref() == Some("RUNNING") => {
                        tracing::info!(pool = %self.name, vm = %vm.name, zone = %vm.zone, "VM running");
                        self.set_state(vm, VmState::Booting, Some(now_ms())).await?;
                    }
                    Some(_) => {}
                    None if vm.operation.is_some() => self.gone(vm).await?,
                    None => {}
                }
            }
            VmState::Booting | VmState::Ready | VmState::Draining => {
                match self.client.get_instance(&vm.zone, &vm.name).await? {
                    None => self.gone(vm).await?,
                    // A Spot VM stopped by a preemption (termination action STOP) bills its
                    // disk: delete it.
                    Some(i) if matches!(i.status.as_deref(), Some("STOPPING" | "TERMINATED")) => {
                        self.end(vm, VmState::Preempted, "stopped by the cloud").await?;
                        let _ = self
                            .client
                            .delete_instance(&vm.zone, &vm.name, &request_id())
                            .await;
                    }
                    // Up: busy while its agent holds a lease (and ready once it has had one).
                    Some(_) => {
                        if !self.store.open_leases_of_agent(&vm.name).await?.is_empty() {
                            self.store
                                .update_vm(
                                    vm.id,
                                    &VmUpdate {
                                        state: (vm.state == VmState::Booting).then_some(VmState::Ready),
                                        busy_at: Some(now_ms()),
                                        ..VmUpdate::default()
                                    },
                                )
                                .await?;
                            self.signals.changes.fleet();
                        }
                    }
                }
            }
            VmState::Deleting => {
                let done = match &vm.operation {
                    Some(op) => match self.client.get_operation(&vm.zone, op).await {
                        Ok(op) => op.is_done(),
                        Err(ComputeError::NotFound(_)) => true,
                        Err(e) => return Err(e.into()),
                    },
                    None => true,
                };
                if done && self.client.get_instance(&vm.zone, &vm.name).await?.is_none() {
                    self.end(vm, VmState::Deleted, vm.reason.as_deref().unwrap_or("deleted"))
                        .await?;
                }
            }
            VmState::Deleted | VmState::Preempted | VmState::Failed => {}
        }
        Ok(())
    }

    /// A VM the daemon did not delete is gone: preempted if the zone says so, else failed.
    async fn gone(&self, vm: &Vm) -> anyhow::Result<()> {
        let filter = "operationType = \"compute.instances.preempted\"";
        let preempted = self
            .client
            .list_operations(&vm.zone, Some(filter))
            .await?
            .iter()
            .any(|op| op.target_name() == Some(vm.name.as_str()));
        if preempted {
            tracing::warn!(pool = %self.name, vm = %vm.name, zone = %vm.zone, "VM preempted");
            self.end(vm, VmState::Preempted, "preempted").await
        } else {
            tracing::warn!(pool = %self.name, vm = %vm.name, zone = %vm.zone, "VM vanished");
            self.end(
                vm,
                VmState::Failed,
                "the instance vanished without a preemption record",
            )
            .await
        }
    }

    async fn delete(&self, vm: &Vm, reason: &str) -> anyhow::Result<()> {
        if vm.state == VmState::Requested {
            // Never sent, or its answer lost: the insert may still land; reconcile deletes it.
            return self.end(vm, VmState::Deleted, reason).await;
        }
        match self
            .client
            .delete_instance(&vm.zone, &vm.name, &request_id())
            .await
        {
            Ok(op) => {
                self.store
                    .update_vm(
                        vm.id,
                        &VmUpdate {
                            state: Some(VmState::Deleting),
                            operation: Some(Some(op.name)),
                            reason: Some(reason.to_string()),
                            ..VmUpdate::default()
                        },
                    )
                    .await?;
                self.signals.changes.fleet();
                Ok(())
            }
            Err(ComputeError::NotFound(_)) => self.end(vm, VmState::Deleted, reason).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every instance labelled as this daemon's that no live VM record owns.
    async fn reconcile(&self) -> anyhow::Result<()> {
        let filter = format!(
            "labels.{} = {} AND labels.{DAEMON_LABEL} = {} AND labels.spotsweep-pool = {}",
            MANAGED_BY.0,
            MANAGED_BY.1,
            label_value(&self.daemon_id),
            label_value(&self.name)
        );
        let instances = self.client.aggregated_instances(Some(&filter)).await?;
        let live: std::collections::HashSet<String> = self
            .store
            .list_vms(Some(&self.name), false)
            .await?
            .into_iter()
            .map(|v| v.name)
            .collect();
        for i in instances.iter().filter(|i| !live.contains(&i.name)) {
            let Some(zone) = i.zone_name() else { continue };
            if matches!(i.status.as_deref(), Some("STOPPING")) {
                continue;
            }
            tracing::warn!(pool = %self.name, instance = %i.name, zone, "an instance of ours no VM record owns: deleting it");
            match self.client.delete_instance(zone, &i.name, &request_id()).await {
                Ok(_) | Err(ComputeError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// `us-central1` of `us-central1-a`.
fn region_of(zone: &str) -> String {
    zone.rsplit_once('-').map_or(zone, |(r, _)| r).to_string()
}
