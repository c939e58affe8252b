//! How fast KSM should scan, from how much sharing there is left to find.
//!
//! ksmd wakes every `sleep_millisecs` and scans `pages_to_scan` pages, so its rate is
//! pages_to_scan × 1000 / sleep_millisecs pages per second and its CPU use that rate times
//! the cost of scanning a page. The manager picks a rate between a slow background pass
//! (new duplicates still get found) and a fast one, by the *opportunity*: the mergeable
//! memory not yet shared that the VMMs' hashed samples say is shareable, or, lacking
//! estimates, how many merges the last period's scanning yielded. The CPU budget caps it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KsmTuning {
    /// ksmd's share of one CPU at most.
    pub cpu_budget: f64,
    /// What scanning one page costs ksmd, in microseconds (hash, tree walks, compare).
    pub scan_cost_us: f64,
    /// A whole pass over mergeable memory takes this long when there is much to find...
    pub fast_pass_secs: f64,
    /// ...and this long when there is nothing.
    pub slow_pass_secs: f64,
    /// The opportunity (fraction of mergeable memory) at which scanning is at full speed.
    pub saturation: f64,
    pub min_pages_to_scan: u32,
    pub max_pages_to_scan: u32,
    pub min_sleep_millisecs: u32,
    pub max_sleep_millisecs: u32,
}

impl Default for KsmTuning {
    fn default() -> Self {
        KsmTuning {
            cpu_budget: 0.05,
            scan_cost_us: 2.0,
            fast_pass_secs: 60.0,
            slow_pass_secs: 1800.0,
            saturation: 0.1,
            min_pages_to_scan: 16,
            max_pages_to_scan: 10_000,
            min_sleep_millisecs: 20,
            max_sleep_millisecs: 10_000,
        }
    }
}

/// What the manager saw of KSM during the last period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KsmObservation {
    /// Guest memory registered with KSM (MADV_MERGEABLE), in pages.
    pub mergeable_pages: u64,
    /// Host-wide `pages_sharing` now.
    pub pages_sharing: u64,
    /// `pages_sharing` gained during the period (0 if it fell).
    pub pages_sharing_growth: u64,
    /// Pages ksmd scanned during the period.
    pub pages_scanned: u64,
    /// The fraction of mergeable memory the hashed samples found duplicated, weighted by VM
    /// size; `None` when no VMM reported one.
    pub shareable_fraction: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KsmSettings {
    pub pages_to_scan: u32,
    pub sleep_millisecs: u32,
}

impl KsmSettings {
    pub fn pages_per_sec(&self) -> f64 {
        f64::from(self.pages_to_scan) * 1000.0 / f64::from(self.sleep_millisecs.max(1))
    }
}

/// The fraction of mergeable memory worth scanning for, in [0, 1].
pub fn opportunity(seen: &KsmObservation) -> f64 {
    if seen.mergeable_pages == 0 {
        return 0.0;
    }
    let mergeable = seen.mergeable_pages as f64;
    let from_estimate = seen.shareable_fraction.map_or(0.0, |f| {
        let shareable = f.clamp(0.0, 1.0) * mergeable;
        (shareable - seen.pages_sharing as f64).max(0.0) / mergeable
    });
    // Merges per page scanned: the share of what the next pass will find, seen from the
    // last one.
    let from_yield = if seen.pages_scanned == 0 {
        0.0
    } else {
        (seen.pages_sharing_growth as f64 / seen.pages_scanned as f64).min(1.0)
    };
    from_estimate.max(from_yield)
}

/// ksmd's settings for the coming period.
pub fn tune_ksm(seen: &KsmObservation, tuning: &KsmTuning) -> KsmSettings {
    let mergeable = seen.mergeable_pages as f64;
    let urgency = if tuning.saturation > 0.0 {
        (opportunity(seen) / tuning.saturation).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let slow = mergeable / tuning.slow_pass_secs.max(1.0);
    let fast = mergeable / tuning.fast_pass_secs.max(1.0);
    let wanted = slow + urgency * (fast - slow).max(0.0);
    let cpu_cap = tuning.cpu_budget.max(0.0) * 1e6 / tuning.scan_cost_us.max(1e-3);
    settings_for_rate(wanted.min(cpu_cap), tuning)
}

/// The (pages, sleep) pair closest to `rate` pages per second within the bounds: the
/// shortest sleep that needs no more than `max_pages_to_scan`, a longer sleep when even
/// `min_pages_to_scan` per wake-up would be too many.
fn settings_for_rate(rate: f64, tuning: &KsmTuning) -> KsmSettings {
    let min_sleep = tuning.min_sleep_millisecs.max(1);
    let max_sleep = tuning.max_sleep_millisecs.max(min_sleep);
    let min_pages = tuning.min_pages_to_scan.max(1);
    let max_pages = tuning.max_pages_to_scan.max(min_pages);
    let per_wake = rate * f64::from(min_sleep) / 1000.0;
    if per_wake >= f64::from(min_pages) {
        return KsmSettings {
            pages_to_scan: (per_wake.round() as u32).clamp(min_pages, max_pages),
            sleep_millisecs: min_sleep,
        };
    }
    let sleep = if rate > 0.0 {
        (f64::from(min_pages) * 1000.0 / rate).round()
    } else {
        f64::INFINITY
    };
    KsmSettings {
        pages_to_scan: min_pages,
        sleep_millisecs: sleep.clamp(f64::from(min_sleep), f64::from(max_sleep)) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 8 GiB of guest memory.
    const MERGEABLE: u64 = 2 << 20;

    fn seen(shareable: Option<f64>, sharing: u64) -> KsmObservation {
        KsmObservation {
            mergeable_pages: MERGEABLE,
            pages_sharing: sharing,
            shareable_fraction: shareable,
            ..KsmObservation::default()
        }
    }

    #[test]
    fn nothing_to_find_scans_slowly() {
        let tuning = KsmTuning::default();
        let s = tune_ksm(&seen(Some(0.0), 0), &tuning);
        let slow = MERGEABLE as f64 / tuning.slow_pass_secs;
        assert!((s.pages_per_sec() - slow).abs() / slow < 0.05, "{s:?}");
        // everything shareable is already shared: same
        assert_eq!(tune_ksm(&seen(Some(0.3), MERGEABLE * 3 / 10), &tuning), s);
    }

    #[test]
    fn much_to_find_scans_as_fast_as_the_cpu_budget_allows() {
        let tuning = KsmTuning::default();
        let s = tune_ksm(&seen(Some(0.6), 0), &tuning);
        // 5 % of a CPU at 2 µs a page: 25,000 pages/s (the fast pass would want ~35,000)
        assert!((s.pages_per_sec() - 25_000.0).abs() < 100.0, "{s:?}");
        let generous = KsmTuning {
            cpu_budget: 0.5,
            ..tuning
        };
        let s = tune_ksm(&seen(Some(0.6), 0), &generous);
        let fast = MERGEABLE as f64 / tuning.fast_pass_secs;
        assert!((s.pages_per_sec() - fast).abs() / fast < 0.01, "{s:?}");
    }

    #[test]
    fn merges_found_count_without_estimates() {
        let quiet = tune_ksm(&seen(None, 0), &KsmTuning::default());
        let fruitful = KsmObservation {
            pages_scanned: 100_000,
            pages_sharing_growth: 5_000,
            ..seen(None, 0)
        };
        let busy = tune_ksm(&fruitful, &KsmTuning::default());
        assert!(busy.pages_per_sec() > 5.0 * quiet.pages_per_sec());
    }

    #[test]
    fn settings_stay_within_bounds() {
        let tuning = KsmTuning::default();
        for rate in [0.0, 0.5, 10.0, 800.0, 1e5, 1e9] {
            let s = settings_for_rate(rate, &tuning);
            assert!((16..=10_000).contains(&s.pages_to_scan), "{rate}: {s:?}");
            assert!((20..=10_000).contains(&s.sleep_millisecs), "{rate}: {s:?}");
        }
        // a slow rate is reached with longer sleeps
        let s = settings_for_rate(100.0, &tuning);
        assert_eq!((s.pages_to_scan, s.sleep_millisecs), (16, 160));
        assert_eq!(
            tune_ksm(&KsmObservation::default(), &tuning).pages_to_scan,
            16
        );
    }

    #[test]
    fn more_opportunity_never_scans_slower() {
        let tuning = KsmTuning::default();
        let mut last = 0.0;
        for percent in 0..=100 {
            let rate =
                tune_ksm(&seen(Some(f64::from(percent) / 100.0), 0), &tuning).pages_per_sec();
            assert!(rate >= last, "{percent}%: {rate} < {last}");
            last = rate;
        }
    }
}
