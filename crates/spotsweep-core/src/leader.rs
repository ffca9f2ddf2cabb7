//! Leader leases: with several daemons on one database, the loops that must run once (lease
//! expiry, each pool's fleet manager and reconciler, database upkeep) run on the daemon that
//! holds their role's lease. A holder renews it well before it ends; when a holder dies, its
//! lease runs out and the next daemon to try takes the role over.

use std::time::Duration;

/// How long a lease lasts past its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// How often a daemon renews the leases it holds and tries the ones it does not.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

/// The longest a role can go without a leader after its holder dies: the rest of the dead
/// holder's lease (at most a whole `ttl`, renewed just before it died), then up to one try
/// period of the daemon that takes over.
pub fn takeover_within(ttl: Duration, renew_every: Duration) -> Duration {
    ttl + renew_every
}

/// Whether a holder that renews every `renew_every` keeps its lease of `ttl` through a missed
/// renewal (a slow database, a pause): two renewals fit in a lease.
pub fn renewals_fit(ttl: Duration, renew_every: Duration) -> bool {
    renew_every * 2 < ttl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_leader_is_replaced_within_15_s_and_a_slow_renewal_is_not_a_loss() {
        assert!(takeover_within(LEASE_TTL, RENEW_EVERY) <= Duration::from_secs(15));
        assert!(renewals_fit(LEASE_TTL, RENEW_EVERY));
        assert!(!renewals_fit(Duration::from_secs(5), Duration::from_secs(3)));
    }
}
