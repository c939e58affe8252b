//! The working-set estimate from statistical sampling (the paper's §5).
//!
//! Each period the VMM samples n random guest pages and counts the t the guest touched, so
//! t/n estimates the active fraction f. One period's figure is noisy (with n = 100 its
//! standard error is up to 5 %) and a guest's activity comes in bursts, so the estimate is
//! the larger of two exponentially weighted moving averages: a fast one that follows a rise
//! within a period or two, and a slow one that lets the estimate fall only gradually. A VM
//! that turns busy is protected at once from the idle tax; one that turns idle pays it only
//! once it has stayed idle for a while.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkingSetParams {
    /// Weight of the newest period in the fast average, in (0, 1].
    pub fast_gain: f64,
    /// Weight of the newest period in the slow average, in (0, 1], below `fast_gain`.
    pub slow_gain: f64,
}

/// A rise reaches 70 % of its height in one period and 91 % in two; after a fall the slow
/// average sheds 10 % of the difference per period (half of it in about 7 periods, 3.5
/// minutes at ESX's 30 s).
impl Default for WorkingSetParams {
    fn default() -> Self {
        WorkingSetParams {
            fast_gain: 0.7,
            slow_gain: 0.1,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("working-set gains must satisfy 0 < slow ≤ fast ≤ 1, not fast {fast}, slow {slow}")]
pub struct WorkingSetParamsError {
    pub fast: f64,
    pub slow: f64,
}

impl WorkingSetParams {
    pub fn validate(&self) -> Result<(), WorkingSetParamsError> {
        let in_range = |g: f64| g > 0.0 && g <= 1.0;
        if in_range(self.fast_gain) && in_range(self.slow_gain) && self.slow_gain <= self.fast_gain
        {
            Ok(())
        } else {
            Err(WorkingSetParamsError {
                fast: self.fast_gain,
                slow: self.slow_gain,
            })
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct WorkingSetEstimator {
    params: WorkingSetParams,
    /// (fast, slow) once a period with samples was seen.
    averages: Option<(f64, f64)>,
    periods: u64,
}

impl WorkingSetEstimator {
    /// Invalid gains (see [`WorkingSetParams::validate`]) are replaced by the defaults, so a
    /// sampler always has a working estimator; check configuration with `validate` first.
    pub fn new(params: WorkingSetParams) -> Self {
        let params = if params.validate().is_ok() {
            params
        } else {
            WorkingSetParams::default()
        };
        WorkingSetEstimator {
            params,
            averages: None,
            periods: 0,
        }
    }

    /// One finished period: `touched` of `sampled` pages were used. A period without samples
    /// tells nothing and is ignored; `touched` above `sampled` counts as all of them.
    pub fn observe(&mut self, sampled: u32, touched: u32) {
        if sampled == 0 {
            return;
        }
        let fraction = f64::from(touched.min(sampled)) / f64::from(sampled);
        let ewma = |average: f64, gain: f64| average + gain * (fraction - average);
        self.averages = Some(match self.averages {
            // The first period starts both averages at its figure, not at 0 or 1.
            None => (fraction, fraction),
            Some((fast, slow)) => (
                ewma(fast, self.params.fast_gain),
                ewma(slow, self.params.slow_gain),
            ),
        });
        self.periods += 1;
    }

    /// The active fraction f = max(fast, slow), in [0, 1]. Before the first sampled period it
    /// is 1: unmeasured memory counts as active (see `VmInput::active_fraction`).
    pub fn estimate(&self) -> f64 {
        self.averages.map_or(1.0, |(fast, slow)| fast.max(slow))
    }

    pub fn fast(&self) -> Option<f64> {
        self.averages.map(|(fast, _)| fast)
    }

    pub fn slow(&self) -> Option<f64> {
        self.averages.map(|(_, slow)| slow)
    }

    /// Periods with samples seen so far.
    pub fn periods(&self) -> u64 {
        self.periods
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled_at(touched: u32) -> WorkingSetEstimator {
        let mut e = WorkingSetEstimator::new(WorkingSetParams::default());
        for _ in 0..100 {
            e.observe(100, touched);
        }
        e
    }

    #[test]
    fn unmeasured_is_fully_active_and_the_first_period_sets_both() {
        let mut e = WorkingSetEstimator::new(WorkingSetParams::default());
        assert_eq!(e.estimate(), 1.0);
        e.observe(0, 0);
        assert_eq!((e.estimate(), e.periods()), (1.0, 0));
        e.observe(100, 20);
        assert_eq!((e.fast(), e.slow()), (Some(0.2), Some(0.2)));
        assert_eq!(e.estimate(), 0.2);
    }

    #[test]
    fn a_step_up_shows_within_two_periods() {
        let mut e = settled_at(10);
        assert!((e.estimate() - 0.1).abs() < 1e-9);
        e.observe(100, 80);
        assert!(e.estimate() >= 0.5, "one period: {}", e.estimate());
        e.observe(100, 80);
        assert!(e.estimate() >= 0.7, "two periods: {}", e.estimate());
    }

    #[test]
    fn a_step_down_decays_slowly() {
        let mut e = settled_at(80);
        let mut trace = Vec::new();
        for _ in 0..10 {
            e.observe(100, 10);
            trace.push(e.estimate());
        }
        assert!(trace.windows(2).all(|w| w[1] < w[0]), "{trace:?}");
        // after one period it barely moved; after five it is still above the midpoint
        assert!(trace[0] > 0.7, "{trace:?}");
        assert!(trace[4] > 0.45, "{trace:?}");
        for _ in 0..100 {
            e.observe(100, 10);
        }
        assert!((e.estimate() - 0.1).abs() < 1e-3);
    }

    #[test]
    fn odd_counts_and_params_are_tamed() {
        let mut e = WorkingSetEstimator::new(WorkingSetParams {
            fast_gain: 2.0,
            slow_gain: f64::NAN,
        });
        e.observe(10, 50);
        assert_eq!(e.estimate(), 1.0);
        assert!(WorkingSetParams {
            fast_gain: 0.1,
            slow_gain: 0.5
        }
        .validate()
        .is_err());
        assert_eq!(WorkingSetParams::default().validate(), Ok(()));
    }
}
