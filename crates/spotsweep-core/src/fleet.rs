//! The fleet's rules that need no cloud: the states of a VM and the names VMs get.

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

impl VmState {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Provisioning => "provisioning",
            Self::Booting => "booting",
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::Deleting => "deleting",
            Self::Deleted => "deleted",
            Self::Preempted => "preempted",
            Self::Failed => "failed",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "requested" => Self::Requested,
            "provisioning" => Self::Provisioning,
            "booting" => Self::Booting,
            "ready" => Self::Ready,
            "draining" => Self::Draining,
            "deleting" => Self::Deleting,
            "deleted" => Self::Deleted,
            "preempted" => Self::Preempted,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

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

#[cfg(test)]
mod tests {
    use super::vm_name;

    #[test]
    fn vm_names_are_valid_instance_names() {
        assert_eq!(vm_name("a100", 7), "ss-a100-7");
        assert_eq!(vm_name("A100_Spot!", 12), "ss-a100-spot-12");
        assert_eq!(vm_name("__", 3), "ss-3");
        assert!(vm_name(&"x".repeat(100), 123_456).len() <= 63);
    }
}
