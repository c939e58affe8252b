//! A VMM's memory figures as the daemon may believe them. A VMM is treated as possibly taken
//! over by its guest (docs/security.md), so its stats are its word only: the daemon measures
//! the VMM's resident set itself (`/proc/PID/statm`) and bounds every figure the memory
//! manager uses by that measurement and by the VM's configured size.

use std::fmt::Debug;

use skiff_api::control::VmStats;
use skiff_mem_policy::PAGE_SIZE;

use super::admission::overhead_estimate;

/// How the daemon measures a process's resident memory. The daemon uses [`ProcMeter`];
/// the tests that stand in for a VMM with a process that only sleeps give the figures that
/// process would have.
pub trait ResidentMeter: Send + Sync + Debug {
    /// The resident set of process `pid` in bytes; `None` if it cannot be read.
    fn resident_bytes(&self, pid: i32) -> Option<u64>;
}

/// Reads `/proc/PID/statm` (the resident set, guest RAM included: it is the VMM's own
/// anonymous mapping).
#[derive(Debug, Default)]
pub struct ProcMeter;

impl ResidentMeter for ProcMeter {
    fn resident_bytes(&self, pid: i32) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
        let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages.saturating_mul(PAGE_SIZE))
    }
}

/// `stats` with every figure bounded by what the daemon knows: the VM has `vcpus` vCPUs and
/// `memory_bytes` of guest memory, and its VMM holds `measured` bytes (`None`: could not be
/// measured, so at most its memory plus the overhead admission reserves). A guest-resident
/// figure that cannot be true (above the VM's memory or the VMM's whole resident set) is
/// not believed: the `previous` sample's figure stands, within the same bounds.
pub fn bound(
    stats: VmStats,
    vcpus: u32,
    memory_bytes: u64,
    measured: Option<u64>,
    previous: Option<&VmStats>,
) -> VmStats {
    let rss = measured.unwrap_or_else(|| {
        stats
            .vmm_rss_bytes
            .min(memory_bytes.saturating_add(overhead_estimate(memory_bytes)))
    });
    let limit = memory_bytes.min(rss);
    let resident = match stats.guest_resident_bytes {
        claimed if claimed <= limit => claimed,
        claimed => previous
            .map_or(claimed, |p| p.guest_resident_bytes)
            .min(limit),
    };
    let at_most_memory = |v: u64| v.min(memory_bytes);
    let mut out = VmStats {
        vcpus,
        memory_bytes,
        guest_resident_bytes: resident,
        vmm_rss_bytes: rss,
        ..stats
    };
    if let Some(balloon) = out.balloon.as_mut() {
        balloon.target_bytes = at_most_memory(balloon.target_bytes);
        balloon.actual_bytes = at_most_memory(balloon.actual_bytes);
        if let Some(guest) = balloon.guest.as_mut() {
            for field in [
                &mut guest.total_bytes,
                &mut guest.free_bytes,
                &mut guest.available_bytes,
                &mut guest.disk_caches_bytes,
            ] {
                *field = field.map(at_most_memory);
            }
        }
    }
    if let Some(ws) = out.working_set.as_mut() {
        ws.active_fraction = fraction(ws.active_fraction);
        ws.fast = ws.fast.map(fraction);
        ws.slow = ws.slow.map(fraction);
    }
    let pages = memory_bytes / PAGE_SIZE;
    let ksm = &mut out.sharing.ksm;
    for field in [&mut ksm.merging_pages, &mut ksm.zero_pages] {
        *field = field.map(|p| p.min(pages));
    }
    if let Some(estimate) = out.sharing.estimate.as_mut() {
        estimate.fraction = fraction(estimate.fraction);
    }
    out
}

/// A fraction in [0, 1]; NaN is 1 (no claim that memory is idle or shareable).
fn fraction(f: f64) -> f64 {
    if f.is_nan() {
        1.0
    } else {
        f.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::balloon::{BalloonStats, GuestMemoryStats};
    use skiff_api::memory::{ShareableEstimate, WorkingSetStats};

    const MIB: u64 = 1 << 20;

    fn lying() -> VmStats {
        let mut stats = super::super::gather::tests::stats();
        stats.vcpus = u32::MAX;
        stats.memory_bytes = u64::MAX;
        stats.guest_resident_bytes = u64::MAX;
        stats.vmm_rss_bytes = u64::MAX;
        stats.balloon = Some(BalloonStats {
            target_bytes: u64::MAX,
            actual_bytes: u64::MAX,
            guest: Some(GuestMemoryStats {
                free_bytes: Some(u64::MAX),
                ..GuestMemoryStats::default()
            }),
            ..BalloonStats::default()
        });
        stats.working_set = Some(WorkingSetStats {
            active_fraction: f64::NAN,
            fast: Some(-3.0),
            ..WorkingSetStats::default()
        });
        stats.sharing.ksm.merging_pages = Some(u64::MAX);
        stats.sharing.estimate = Some(ShareableEstimate {
            fraction: 7.0,
            ..ShareableEstimate::default()
        });
        stats
    }

    #[test]
    fn a_lying_vmm_is_bounded_by_the_measurement_and_its_size() {
        let out = bound(lying(), 2, 512 * MIB, Some(100 * MIB), None);
        assert_eq!((out.vcpus, out.memory_bytes), (2, 512 * MIB));
        assert_eq!(
            (out.vmm_rss_bytes, out.guest_resident_bytes),
            (100 * MIB, 100 * MIB)
        );
        // With an earlier, believable sample, its guest figure stands.
        let honest = super::super::gather::tests::stats();
        let out = bound(lying(), 2, 512 * MIB, Some(310 * MIB), Some(&honest));
        assert_eq!(
            (out.vmm_rss_bytes, out.guest_resident_bytes),
            (310 * MIB, 300 * MIB)
        );
        let balloon = out.balloon.expect("balloon");
        assert_eq!(
            (balloon.target_bytes, balloon.actual_bytes),
            (512 * MIB, 512 * MIB)
        );
        assert_eq!(balloon.guest.expect("guest").free_bytes, Some(512 * MIB));
        let ws = out.working_set.expect("working set");
        assert_eq!((ws.active_fraction, ws.fast), (1.0, Some(0.0)));
        assert_eq!(out.sharing.ksm.merging_pages, Some(512 * MIB / PAGE_SIZE));
        assert_eq!(out.sharing.estimate.expect("estimate").fraction, 1.0);
    }

    #[test]
    fn unmeasured_the_vmm_gets_at_most_its_memory_and_overhead() {
        let out = bound(lying(), 1, 512 * MIB, None, None);
        assert_eq!(out.vmm_rss_bytes, 512 * MIB + overhead_estimate(512 * MIB));
        assert_eq!(out.guest_resident_bytes, 512 * MIB);
        // An honest VMM's figures pass unchanged.
        let honest = super::super::gather::tests::stats();
        let out = bound(honest.clone(), 1, 512 * MIB, Some(310 * MIB), None);
        assert_eq!(out, honest);
    }

    #[test]
    fn the_proc_meter_reads_this_process() {
        let rss = ProcMeter
            .resident_bytes(std::process::id() as i32)
            .expect("own statm");
        assert!(rss > MIB, "{rss}");
        assert_eq!(ProcMeter.resident_bytes(-1), None);
    }
}
