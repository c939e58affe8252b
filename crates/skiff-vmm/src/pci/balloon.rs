//! The balloon's glue: guest pages go back to the host through `GuestRam::discard`, and a
//! timer thread asks the guest for its memory statistics at the configured interval.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use skiff_api::balloon::{BalloonStats, GuestMemoryStats};
use skiff_pci::msix::lock;
use skiff_virtio::devices::balloon::{Balloon, BalloonInfo, BalloonOptions, Discard};

use crate::memory::GuestRam;

/// The balloon as `skiff run` and the VM spec describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalloonSettings {
    pub options: BalloonOptions,
    /// How often the guest is asked for statistics (if `options.stats`).
    pub stats_interval: Duration,
}

impl BalloonSettings {
    pub fn from_spec(spec: &skiff_api::BalloonSpec) -> Option<Self> {
        spec.enabled.then(|| BalloonSettings {
            options: BalloonOptions {
                stats: spec.stats_interval_secs > 0,
                free_page_reporting: spec.free_page_reporting,
                deflate_on_oom: spec.deflate_on_oom,
            },
            stats_interval: Duration::from_secs(u64::from(spec.stats_interval_secs)),
        })
    }
}

/// The one path by which the balloon returns guest pages to the host.
impl Discard for GuestRam {
    fn discard(&self, gpa: u64, len: u64) -> std::io::Result<()> {
        GuestRam::discard(self, gpa, len).map_err(std::io::Error::other)
    }
}

/// Asks the guest for statistics every interval until stopped.
pub struct StatsTimer {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl StatsTimer {
    pub fn spawn(balloon: Arc<Mutex<Balloon>>, interval: Duration) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = crate::seccomp::spawn(
            "balloon-stats".into(),
            crate::seccomp::Role::BalloonStats,
            crate::stacks::SERVICE,
            move || loop {
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => lock(&balloon).request_stats(),
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            },
        )?;
        Ok(StatsTimer { stop, thread })
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// The device's figures in the control protocol's terms.
pub fn stats(info: &BalloonInfo) -> BalloonStats {
    BalloonStats {
        target_bytes: info.target_bytes,
        actual_bytes: info.actual_bytes,
        inflated_bytes: info.inflated_bytes,
        reported_bytes: info.reported_bytes,
        guest: info.guest.as_ref().map(|g| GuestMemoryStats {
            total_bytes: g.total_memory,
            free_bytes: g.free_memory,
            available_bytes: g.available_memory,
            disk_caches_bytes: g.disk_caches,
            swap_in_bytes: g.swap_in,
            swap_out_bytes: g.swap_out,
            major_faults: g.major_faults,
            minor_faults: g.minor_faults,
            age_ms: info
                .stats_updated
                .map_or(0, |t| t.elapsed().as_millis() as u64),
        }),
    }
}
