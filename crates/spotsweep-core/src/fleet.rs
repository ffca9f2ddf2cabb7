//! The fleet's rules that need no cloud: the states of a VM, the names VMs get, how many VMs the
//! work wants and what the budget allows.

/// Where a VM of the fleet is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmState {
    /// Recorded; the insert is being sent.
    Requested,
    /// The insert was accepted; the cloud is creating it.
    Provisioning,
    /// RUNNING at the cloud (billed); its agent has not registered yet.
    Booting,
    /// Its agent registered and leases trials.
    Ready,
    /// Leases no new trials; deleted when its running ones end.
    Draining,
    /// The delete was sent.
    Deleting,
    /// Gone, deleted by the daemon.
    Deleted,
    /// Gone, taken back by the cloud.
    Preempted,
    /// Never came up (stockout, quota, an error), or vanished without a preemption record.
    Failed,
}

crate::words!(VmState, "VM state",
    Requested => "requested",
    Provisioning => "provisioning",
    Booting => "booting",
    Ready => "ready",
    Draining => "draining",
    Deleting => "deleting",
    Deleted => "deleted",
    Preempted => "preempted",
    Failed => "failed",
);

impl VmState {
    /// Whether the VM has ended (nothing of it is left at the cloud).
    pub fn is_ended(self) -> bool {
        matches!(self, Self::Deleted | Self::Preempted | Self::Failed)
    }
}

/// A VM's instance name: `ss-<pool>-<id>`, the pool's name cut down to what an instance name
/// allows.
pub fn vm_name(pool: &str, id: i64) -> String {
    let mut p: String = pool
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    while p.ends_with('-') {
        p.pop();
    }
    if p.is_empty() {
        format!("ss-{id}")
    } else {
        format!("ss-{p}-{id}")
    }
}

/// A pool's prices and limits, as the budget rules need them.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolTerms {
    /// What the pool may spend in all (`None`: no limit).
    pub budget_usd: Option<f64>,
    /// A VM's price.
    pub price_per_hour: f64,
    /// Trials one VM runs at once.
    pub slots_per_vm: u32,
    /// VMs at most.
    pub max_vms: u32,
    /// How long an idle VM is kept.
    pub idle_timeout_s: f64,
}

impl PoolTerms {
    /// The VMs that `waiting` and `running` trials want: one per `slots_per_vm`, at most
    /// `max_vms`.
    pub fn vms_wanted(&self, waiting: u64, running: u64) -> usize {
        (waiting + running)
            .div_ceil(u64::from(self.slots_per_vm.max(1)))
            .min(u64::from(self.max_vms)) as usize
    }
}

/// How many trials of a running sweep want a slot beside its `running` ones: those waiting
/// and those not proposed yet (`unproposed`), up to its parallelism.
pub fn sweep_waiting_demand(parallelism: i64, unproposed: i64, running: i64, waiting: i64) -> u64 {
    let wanted = parallelism
        .min(running + waiting + unproposed.max(0))
        .max(running);
    (wanted - running).max(0) as u64
}

/// The typical length of an attempt on a pool (the median of the attempts that ended; `None`
/// before any).
pub fn typical_attempt_seconds(mut ended: Vec<f64>) -> Option<f64> {
    if ended.is_empty() {
        return None;
    }
    ended.sort_by(f64::total_cmp);
    Some(ended[ended.len() / 2])
}

/// What the budget allows now.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetPlan {
    budget: Option<f64>,
    spent: f64,
    /// What one VM is expected to cost from now: its share of the work left at the typical
    /// attempt length, plus the idle timeout, at most an hour (an hour when no attempt has ended
    /// yet).
    pub per_vm_usd: f64,
    /// A typical attempt on top of what is spent and running would cross the budget: lease no
    /// more trials on the pool.
    pub stop_leases: bool,
}

impl BudgetPlan {
    /// The plan for a pool that has `spent`, with `work` trials waiting or running (`running`
    /// of them running) for `wanted` VMs; `typical` is [`typical_attempt_seconds`].
    pub fn new(
        terms: &PoolTerms,
        spent: f64,
        typical: Option<f64>,
        work: u64,
        running: u64,
        wanted: usize,
    ) -> Self {
        let slots = f64::from(terms.slots_per_vm.max(1));
        let slots_total = wanted.max(1) as f64 * slots;
        let per_vm_seconds = ((work as f64 / slots_total).ceil() * typical.unwrap_or(3600.0)
            + terms.idle_timeout_s)
            .min(3600.0);
        let per_vm_usd = terms.price_per_hour * per_vm_seconds / 3600.0;
        let attempt_usd = terms.price_per_hour / slots * typical.unwrap_or(0.0) / 3600.0;
        let stop_leases = terms
            .budget_usd
            .is_some_and(|b| spent + running as f64 * attempt_usd + attempt_usd > b);
        Self {
            budget: terms.budget_usd,
            spent,
            per_vm_usd,
            stop_leases,
        }
    }

    /// How many more VMs may start beside `live` ones.
    pub fn vms_affordable(&self, live: usize) -> usize {
        match self.budget {
            None => usize::MAX,
            Some(b) => {
                let left = b - self.spent - live as f64 * self.per_vm_usd;
                if left <= 0.0 || self.per_vm_usd <= 0.0 {
                    0
                } else {
                    (left / self.per_vm_usd).floor() as usize
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names_are_valid_instance_names() {
        assert_eq!(vm_name("a100", 7), "ss-a100-7");
        assert_eq!(vm_name("A100_Spot!", 12), "ss-a100-spot-12");
        assert_eq!(vm_name("__", 3), "ss-3");
        assert!(vm_name(&"x".repeat(100), 123_456).len() <= 63);
    }

    #[test]
    fn vm_states_have_one_spelling_each() {
        crate::words::assert_round_trips::<VmState>();
    }

    fn terms(budget: Option<f64>) -> PoolTerms {
        PoolTerms {
            budget_usd: budget,
            price_per_hour: 1.80,
            slots_per_vm: 2,
            max_vms: 8,
            idle_timeout_s: 60.0,
        }
    }

    #[test]
    fn the_work_wants_a_vm_per_slots_up_to_the_pool_s_limit() {
        let t = terms(None);
        assert_eq!(t.vms_wanted(0, 0), 0);
        assert_eq!(t.vms_wanted(1, 0), 1);
        assert_eq!(t.vms_wanted(2, 1), 2);
        assert_eq!(t.vms_wanted(100, 4), 8);
    }

    #[test]
    fn a_sweep_wants_slots_for_its_waiting_and_unproposed_trials_up_to_its_parallelism() {
        assert_eq!(sweep_waiting_demand(4, 10, 1, 0), 3);
        assert_eq!(sweep_waiting_demand(4, 0, 1, 1), 1);
        assert_eq!(sweep_waiting_demand(4, 0, 0, 0), 0);
        // More running than its parallelism (it was lowered): none more.
        assert_eq!(sweep_waiting_demand(2, 5, 3, 2), 0);
        // A grid that proposed past its end counts nothing unproposed.
        assert_eq!(sweep_waiting_demand(4, -2, 0, 1), 1);
    }

    #[test]
    fn the_typical_attempt_is_the_median_of_the_ended_ones() {
        assert_eq!(typical_attempt_seconds(Vec::new()), None);
        assert_eq!(typical_attempt_seconds(vec![30.0, 10.0, 20.0]), Some(20.0));
        assert_eq!(typical_attempt_seconds(vec![5.0, 1000.0]), Some(1000.0));
    }

    #[test]
    fn before_any_attempt_a_vm_counts_an_hour() {
        let plan = BudgetPlan::new(&terms(Some(5.0)), 0.0, None, 16, 0, 8);
        assert!((plan.per_vm_usd - 1.80).abs() < 1e-12);
        assert_eq!(plan.vms_affordable(0), 2);
        assert_eq!(plan.vms_affordable(2), 0);
        assert!(!plan.stop_leases);
        assert_eq!(
            BudgetPlan::new(&terms(None), 100.0, None, 16, 0, 8).vms_affordable(50),
            usize::MAX
        );
    }

    #[test]
    fn with_a_typical_attempt_a_vm_counts_its_share_of_the_work() {
        // 40 trials of 90 s on 4 VMs of 2 slots: 5 rounds each, 450 s + 60 s idle = 0.255 USD.
        let plan = BudgetPlan::new(&terms(Some(1.0)), 0.0, Some(90.0), 40, 8, 4);
        assert!(
            (plan.per_vm_usd - 1.80 * 510.0 / 3600.0).abs() < 1e-12,
            "{plan:?}"
        );
        assert_eq!(plan.vms_affordable(0), 3);
        assert!(!plan.stop_leases);
    }

    #[test]
    fn leases_stop_before_an_attempt_would_cross_the_budget() {
        // An attempt on a slot: 1.80 / 2 * 3600 s / 3600 = 0.90 USD; 3 running and one more
        // on 1.00 spent is 4.60.
        let t = terms(Some(4.5));
        assert!(BudgetPlan::new(&t, 1.0, Some(3600.0), 10, 3, 4).stop_leases);
        assert!(!BudgetPlan::new(&t, 0.9, Some(3600.0), 10, 3, 4).stop_leases);
        assert_eq!(
            BudgetPlan::new(&t, 4.6, Some(3600.0), 10, 3, 4).vms_affordable(0),
            0
        );
    }
}
