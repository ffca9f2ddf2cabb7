//! Which sweep an agent's next slot goes to when several could use it.

/// What the queue knows of a running sweep when an agent asks for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepLoad {
    /// The sweep.
    pub sweep_id: i64,
    /// Its trials running now (reruns not counted: they run outside its parallelism).
    pub running: i64,
    /// How many of its trials may run at once.
    pub parallelism: i64,
    /// Whether a trial of it waits to be leased again (retried or preempted).
    pub has_waiting: bool,
    /// Trials proposed so far.
    pub trials_created: i64,
    /// Its budget of trials.
    pub max_trials: i64,
}

impl SweepLoad {
    /// Whether it can take one more trial now: below its parallelism, with a waiting trial or
    /// budget left for a new one.
    pub fn wants_a_slot(&self) -> bool {
        self.running < self.parallelism && (self.has_waiting || self.trials_created < self.max_trials)
    }
}

/// Fair share: among the sweeps that want a slot (and are not in `passed`, the sweeps whose
/// next trial did not fit this agent), the one with the fewest running trials, the oldest on a
/// tie. Returns its index in `loads`.
pub fn next_sweep(loads: &[SweepLoad], passed: &[i64]) -> Option<usize> {
    loads
        .iter()
        .enumerate()
        .filter(|(_, l)| l.wants_a_slot() && !passed.contains(&l.sweep_id))
        .min_by_key(|(_, l)| (l.running, l.sweep_id))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(sweep_id: i64, running: i64, parallelism: i64, created: i64, max: i64) -> SweepLoad {
        SweepLoad {
            sweep_id,
            running,
            parallelism,
            has_waiting: false,
            trials_created: created,
            max_trials: max,
        }
    }

    #[test]
    fn the_sweep_with_the_fewest_running_trials_goes_first_then_the_oldest() {
        let loads = [load(1, 3, 8, 3, 10), load(2, 1, 8, 1, 10), load(3, 1, 8, 1, 10)];
        assert_eq!(next_sweep(&loads, &[]), Some(1));
        assert_eq!(next_sweep(&loads, &[2]), Some(2));
        assert_eq!(next_sweep(&loads, &[2, 3]), Some(0));
        assert_eq!(next_sweep(&loads, &[1, 2, 3]), None);
    }

    #[test]
    fn a_full_or_spent_sweep_takes_no_slot_unless_a_trial_waits() {
        let full = load(1, 2, 2, 2, 10);
        let spent = load(2, 0, 4, 10, 10);
        assert_eq!(next_sweep(&[full, spent], &[]), None);
        let retry = SweepLoad {
            has_waiting: true,
            ..spent
        };
        assert_eq!(next_sweep(&[full, retry], &[]), Some(1));
        let full_with_retry = SweepLoad {
            has_waiting: true,
            ..full
        };
        assert!(
            !full_with_retry.wants_a_slot(),
            "parallelism holds for retries too"
        );
    }
}
