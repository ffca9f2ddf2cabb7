//! Where a trial goes on an agent's GPUs: the GPUs with the least free memory that still fit it
//! (best fit), so that big holes stay for big trials.

use serde::{Deserialize, Serialize};

use crate::sweep::Resources;

/// One of an agent's GPUs, as it asks for work.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuFree {
    /// Its id for `CUDA_VISIBLE_DEVICES`.
    pub id: String,
    /// MiB trials may use on it in all.
    pub memory_mib: u64,
    /// MiB not held by the agent's running trials.
    pub free_mib: u64,
}

/// A GPU given to a trial, and the MiB held for it there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuShare {
    /// The GPU's id.
    pub id: String,
    /// MiB held.
    pub memory_mib: u64,
}

/// Places a trial needing `resources` (after `ooms` out-of-memory exits) on `gpus`, taking the
/// memory it holds off them. `None` when it does not fit now.
pub fn place(
    resources: &Resources,
    gpus: &mut [GpuFree],
    overhead_mib: u64,
    ooms: u32,
) -> Option<Vec<GpuShare>> {
    let count = resources.gpu_count() as usize;
    if count == 0 {
        return Some(Vec::new());
    }
    let mut fits: Vec<(u64, usize, u64)> = gpus
        .iter()
        .enumerate()
        .filter_map(|(i, g)| {
            let need = resources.memory_mib(g.memory_mib, overhead_mib, ooms)?;
            (g.free_mib >= need).then(|| (g.free_mib - need, i, need))
        })
        .collect();
    if fits.len() < count {
        return None;
    }
    fits.sort_unstable();
    let mut chosen: Vec<(usize, u64)> = fits[..count].iter().map(|&(_, i, need)| (i, need)).collect();
    chosen.sort_unstable();
    Some(
        chosen
            .into_iter()
            .map(|(i, need)| {
                gpus[i].free_mib -= need;
                GpuShare {
                    id: gpus[i].id.clone(),
                    memory_mib: need,
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(id: &str, memory_gb: u64) -> GpuFree {
        GpuFree {
            id: id.into(),
            memory_mib: memory_gb * 1024,
            free_mib: memory_gb * 1024,
        }
    }

    fn res(gpus: Option<f64>, gb: Option<f64>) -> Resources {
        Resources {
            gpus,
            gpu_memory_gb: gb,
        }
    }

    #[test]
    fn four_trials_of_8_gb_share_a_40_gb_gpu_and_a_fifth_waits() {
        let mut gpus = vec![gpu("0", 40)];
        let r = res(None, Some(8.0));
        for _ in 0..4 {
            let p = place(&r, &mut gpus, 512, 0).expect("fits");
            assert_eq!(
                p,
                vec![GpuShare {
                    id: "0".into(),
                    memory_mib: 8 * 1024 + 512
                }]
            );
        }
        assert_eq!(place(&r, &mut gpus, 512, 0), None);
        assert_eq!(gpus[0].free_mib, 40 * 1024 - 4 * (8 * 1024 + 512));
    }

    #[test]
    fn quarters_fill_a_gpu_exactly_and_a_whole_gpu_needs_it_empty() {
        let mut gpus = vec![gpu("0", 40), gpu("1", 80)];
        let quarter = res(Some(0.25), None);
        for _ in 0..8 {
            assert!(place(&quarter, &mut gpus, 512, 0).is_some());
        }
        assert_eq!(place(&quarter, &mut gpus, 512, 0), None);
        assert_eq!((gpus[0].free_mib, gpus[1].free_mib), (0, 0));
        let mut gpus = vec![gpu("0", 40), gpu("1", 40)];
        let whole = res(Some(1.0), None);
        assert!(place(&quarter, &mut gpus, 512, 0).is_some());
        let p = place(&whole, &mut gpus, 512, 0).unwrap();
        assert_eq!(p[0].id, "1", "the busy GPU is not whole");
        assert_eq!(place(&whole, &mut gpus, 512, 0), None);
    }

    #[test]
    fn best_fit_keeps_the_big_hole() {
        let mut gpus = vec![gpu("0", 40), gpu("1", 40)];
        gpus[1].free_mib = 10 * 1024;
        let p = place(&res(None, Some(8.0)), &mut gpus, 512, 0).unwrap();
        assert_eq!(p[0].id, "1");
        assert_eq!(gpus[0].free_mib, 40 * 1024);
    }

    #[test]
    fn two_gpus_each_and_none() {
        let mut gpus = vec![gpu("0", 40), gpu("1", 40), gpu("2", 40)];
        let p = place(&res(Some(2.0), Some(30.0)), &mut gpus, 0, 0).unwrap();
        assert_eq!(p.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), ["0", "1"]);
        assert_eq!(place(&res(Some(2.0), Some(30.0)), &mut gpus, 0, 0), None);
        assert_eq!(place(&res(Some(0.0), None), &mut gpus, 0, 0), Some(vec![]));
        assert_eq!(place(&res(Some(1.0), None), &mut [], 0, 0), None);
    }

    #[test]
    fn each_out_of_memory_exit_doubles_the_memory_up_to_the_whole_gpu() {
        let r = res(None, Some(8.0));
        let need = |ooms| place(&r, &mut [gpu("0", 40)], 512, ooms).unwrap()[0].memory_mib;
        assert_eq!(need(0), 8704);
        assert_eq!(need(1), 2 * 8704);
        assert_eq!(need(2), 4 * 8704);
        assert_eq!(need(3), 40 * 1024);
        assert_eq!(need(40), 40 * 1024);
    }

    #[test]
    fn a_trial_bigger_than_a_gpu_never_goes_there() {
        let mut gpus = vec![gpu("0", 24), gpu("1", 40)];
        let p = place(&res(None, Some(30.0)), &mut gpus, 512, 0).unwrap();
        assert_eq!(p[0].id, "1");
        assert_eq!(place(&res(None, Some(30.0)), &mut gpus, 512, 0), None);
        assert_eq!(place(&res(None, Some(30.0)), &mut [gpu("0", 24)], 512, 5), None);
        assert_eq!(
            place(&res(None, Some(8.0)), &mut [gpu("0", 24)], u64::MAX, 0),
            None
        );
    }
}
