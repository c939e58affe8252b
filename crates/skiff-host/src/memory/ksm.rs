//! KSM in the daemon: read ksmd's counters from sysfs each period, report the host's savings,
//! and (with `skiff host --ksm`) start ksmd and set its scan rate with
//! `skiff_mem_policy::tune_ksm`.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use skiff_mem_policy::{tune_ksm, KsmObservation, KsmSettings, KsmTuning};

use crate::model::KsmStatus;

/// Where the kernel exposes KSM.
pub const KSM_SYSFS: &str = "/sys/kernel/mm/ksm";

/// ksmd's counters at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counters {
    pages_shared: u64,
    pages_sharing: u64,
    /// `pages_scanned` (Linux 6.6 and later); `None` on older kernels.
    pages_scanned: Option<u64>,
}

pub(super) struct KsmTuner {
    root: PathBuf,
    /// Start ksmd and set its rate; otherwise only report.
    manage: bool,
    tuning: KsmTuning,
    last: Option<Counters>,
    /// What this tuner last wrote (or found, before its first write).
    settings: Option<KsmSettings>,
    warned: bool,
}

impl KsmTuner {
    pub(super) fn new(root: PathBuf, manage: bool, tuning: KsmTuning) -> Self {
        KsmTuner {
            root,
            manage,
            tuning,
            last: None,
            settings: None,
            warned: false,
        }
    }

    fn read(&self, name: &str) -> io::Result<u64> {
        let text = std::fs::read_to_string(self.root.join(name))?;
        text.trim()
            .parse()
            .map_err(|_| io::Error::other(format!("{name}: `{}` is not a number", text.trim())))
    }

    fn write(&self, name: &str, value: u64) -> io::Result<()> {
        std::fs::write(self.root.join(name), format!("{value}\n"))
    }

    /// `advisor_mode` reads `[none] scan-time` with the selected mode in brackets.
    fn kernel_advisor_on(&self) -> bool {
        std::fs::read_to_string(self.root.join("advisor_mode"))
            .is_ok_and(|mode| !mode.contains("[none]"))
    }

    fn counters(&self) -> io::Result<Counters> {
        Ok(Counters {
            pages_shared: self.read("pages_shared")?,
            pages_sharing: self.read("pages_sharing")?,
            pages_scanned: self.read("pages_scanned").ok(),
        })
    }

    /// One period of `elapsed`: `mergeable_pages` of guest memory are registered with KSM,
    /// `shareable_fraction` is the VMMs' sampled estimate if any. `None` when this host has
    /// no KSM.
    pub(super) fn period(
        &mut self,
        elapsed: Duration,
        mergeable_pages: u64,
        shareable_fraction: Option<f64>,
    ) -> Option<KsmStatus> {
        let now = match self.counters() {
            Ok(now) => now,
            Err(e) => {
                if !self.warned {
                    log::info!("KSM not available ({e}); page sharing is not reported");
                    self.warned = true;
                }
                return None;
            }
        };
        let current = KsmSettings {
            pages_to_scan: self.read("pages_to_scan").unwrap_or(0) as u32,
            sleep_millisecs: self.read("sleep_millisecs").unwrap_or(0) as u32,
        };
        if self.manage {
            self.manage_rate(&now, current, elapsed, mergeable_pages, shareable_fraction);
        }
        self.last = Some(now);
        Some(KsmStatus {
            running: self.read("run").is_ok_and(|run| run == 1),
            managed: self.manage,
            pages_to_scan: self
                .settings
                .map_or(current.pages_to_scan, |s| s.pages_to_scan),
            sleep_millisecs: self
                .settings
                .map_or(current.sleep_millisecs, |s| s.sleep_millisecs),
            pages_shared: now.pages_shared,
            pages_sharing: now.pages_sharing,
            saved_bytes: now.pages_sharing * skiff_mem_policy::PAGE_SIZE,
        })
    }

    fn manage_rate(
        &mut self,
        now: &Counters,
        current: KsmSettings,
        elapsed: Duration,
        mergeable_pages: u64,
        shareable_fraction: Option<f64>,
    ) {
        if self.read("run").is_ok_and(|run| run != 1) {
            match self.write("run", 1) {
                Ok(()) => log::info!("KSM started"),
                Err(e) => log::warn!("cannot start KSM: {e}"),
            }
        }
        if self.kernel_advisor_on() {
            // Linux 6.9's scan-time advisor sets pages_to_scan itself: leave it the rate.
            self.settings = None;
            return;
        }
        let seen = observation(self.last.as_ref(), now, current, elapsed, mergeable_pages);
        let next = tune_ksm(
            &KsmObservation {
                shareable_fraction,
                ..seen
            },
            &self.tuning,
        );
        if next == current {
            self.settings = Some(next);
            return;
        }
        let written = self
            .write("pages_to_scan", u64::from(next.pages_to_scan))
            .and_then(|()| self.write("sleep_millisecs", u64::from(next.sleep_millisecs)));
        match written {
            Ok(()) => self.settings = Some(next),
            Err(e) => log::warn!("cannot set KSM's scan rate: {e}"),
        }
    }
}

/// What the last period showed. Without the kernel's `pages_scanned`, the pages scanned are
/// what the settings in force allowed.
fn observation(
    last: Option<&Counters>,
    now: &Counters,
    current: KsmSettings,
    elapsed: Duration,
    mergeable_pages: u64,
) -> KsmObservation {
    let growth = last.map_or(0, |l| now.pages_sharing.saturating_sub(l.pages_sharing));
    let scanned = match (last.and_then(|l| l.pages_scanned), now.pages_scanned) {
        (Some(before), Some(after)) => after.saturating_sub(before),
        _ if last.is_some() => (current.pages_per_sec() * elapsed.as_secs_f64()) as u64,
        _ => 0,
    };
    KsmObservation {
        mergeable_pages,
        pages_sharing: now.pages_sharing,
        pages_sharing_growth: growth,
        pages_scanned: scanned,
        shareable_fraction: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysfs(files: &[(&str, u64)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, value) in files {
            std::fs::write(dir.path().join(name), format!("{value}\n")).expect("write");
        }
        dir
    }

    fn value(dir: &tempfile::TempDir, name: &str) -> u64 {
        let text = std::fs::read_to_string(dir.path().join(name)).expect("read");
        text.trim().parse().expect("number")
    }

    const KERNEL_DEFAULTS: [(&str, u64); 6] = [
        ("run", 0),
        ("pages_to_scan", 100),
        ("sleep_millisecs", 20),
        ("pages_shared", 10),
        ("pages_sharing", 40),
        ("pages_scanned", 0),
    ];

    #[test]
    fn reports_savings_without_touching_ksm_unless_managing() {
        let dir = sysfs(&KERNEL_DEFAULTS);
        let mut tuner = KsmTuner::new(dir.path().into(), false, KsmTuning::default());
        let status = tuner
            .period(Duration::from_secs(2), 1 << 18, Some(0.5))
            .expect("ksm");
        assert_eq!(status.saved_bytes, 40 * 4096);
        assert!(!status.running && !status.managed);
        assert_eq!((status.pages_to_scan, status.sleep_millisecs), (100, 20));
        assert_eq!(value(&dir, "run"), 0);
        assert_eq!(value(&dir, "pages_to_scan"), 100);
    }

    #[test]
    fn managing_starts_ksm_and_follows_the_opportunity() {
        let dir = sysfs(&KERNEL_DEFAULTS);
        let mut tuner = KsmTuner::new(dir.path().into(), true, KsmTuning::default());
        // 1 GiB of guest memory, half of it shareable: scan fast (within the CPU budget)
        let busy = tuner
            .period(Duration::from_secs(2), 1 << 18, Some(0.5))
            .expect("ksm");
        assert_eq!(value(&dir, "run"), 1);
        let busy_rate = f64::from(busy.pages_to_scan) * 1000.0 / f64::from(busy.sleep_millisecs);
        // everything found: back to the slow pass
        std::fs::write(dir.path().join("pages_sharing"), format!("{}\n", 1 << 17)).expect("write");
        let calm = tuner
            .period(Duration::from_secs(2), 1 << 18, Some(0.5))
            .expect("ksm");
        let calm_rate = f64::from(calm.pages_to_scan) * 1000.0 / f64::from(calm.sleep_millisecs);
        assert!(busy_rate > 10.0 * calm_rate, "{busy:?} vs {calm:?}");
        assert_eq!(value(&dir, "pages_to_scan"), u64::from(calm.pages_to_scan));
        assert_eq!(
            value(&dir, "sleep_millisecs"),
            u64::from(calm.sleep_millisecs)
        );
    }

    #[test]
    fn the_kernels_own_advisor_is_left_alone() {
        let dir = sysfs(&KERNEL_DEFAULTS);
        std::fs::write(dir.path().join("advisor_mode"), "none [scan-time]\n").expect("write");
        let mut tuner = KsmTuner::new(dir.path().into(), true, KsmTuning::default());
        tuner.period(Duration::from_secs(2), 1 << 18, Some(0.5));
        assert_eq!(value(&dir, "pages_to_scan"), 100);
        assert_eq!(value(&dir, "run"), 1, "started all the same");
    }

    #[test]
    fn no_ksm_is_no_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut tuner = KsmTuner::new(dir.path().join("absent"), true, KsmTuning::default());
        assert_eq!(tuner.period(Duration::from_secs(2), 1, None), None);
    }

    #[test]
    fn without_pages_scanned_the_settings_say_what_was_scanned() {
        let last = Counters {
            pages_shared: 0,
            pages_sharing: 100,
            pages_scanned: None,
        };
        let now = Counters {
            pages_sharing: 150,
            ..last
        };
        let settings = KsmSettings {
            pages_to_scan: 100,
            sleep_millisecs: 20,
        };
        let seen = observation(Some(&last), &now, settings, Duration::from_secs(2), 1000);
        assert_eq!(
            (seen.pages_scanned, seen.pages_sharing_growth),
            (10_000, 50)
        );
        assert_eq!(
            observation(None, &now, settings, Duration::from_secs(2), 1000).pages_scanned,
            0
        );
    }
}
