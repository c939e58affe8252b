//! From what the daemon knows of a VM (its spec, its VMM's stats) to the policy's inputs.
//! Pure: the manager does the I/O.

use skiff_api::control::VmStats;
use skiff_api::{MemorySpec, DEFAULT_SHARES};
use skiff_mem_policy::{active_fraction_of_resident, BalloonInput, HostInput, VmInput, PAGE_SIZE};

/// Guest statistics older than this say nothing about the guest now (a guest that stopped
/// sending them is hung or busy beyond answering).
const STALE_GUEST_STATS_MS: u64 = 30_000;

/// The policy's view of one VM. Until its VMM has finished a working-set period the VM counts
/// as fully active; without KSM counters, as sharing nothing.
pub(super) fn vm_input(
    name: &str,
    memory: &MemorySpec,
    stats: &VmStats,
    paused_by_policy: bool,
) -> VmInput {
    let max = memory.size.bytes();
    let min = memory.min.map_or(0, |m| m.bytes()).min(max);
    let balloon = stats.balloon.as_ref();
    VmInput {
        allocated_bytes: stats.guest_resident_bytes,
        balloon: balloon.map(|b| BalloonInput {
            target_bytes: b.target_bytes,
            actual_bytes: b.actual_bytes,
        }),
        guest_free_bytes: balloon
            .and_then(|b| b.guest.as_ref())
            .filter(|g| g.age_ms <= STALE_GUEST_STATS_MS)
            .and_then(|g| g.free_bytes),
        overhead_bytes: stats
            .vmm_rss_bytes
            .saturating_sub(stats.guest_resident_bytes),
        // The VMM samples over all of guest RAM; the policy wants f of resident memory.
        active_fraction: stats
            .working_set
            .as_ref()
            .filter(|w| w.dirty_logging && w.periods > 0)
            .map(|w| {
                active_fraction_of_resident(
                    w.active_fraction,
                    stats.memory_bytes,
                    stats.guest_resident_bytes,
                )
            }),
        shared_bytes: stats
            .sharing
            .ksm
            .merging_pages
            .map_or(0, |pages| pages.saturating_mul(PAGE_SIZE)),
        paused_by_policy,
        ..VmInput::new(name, min, max, memory.shares.unwrap_or(DEFAULT_SHARES))
    }
}

/// The VMMs' sampled estimates of shareable memory, weighted by their resident memory: the
/// fraction of all their resident memory that is shareable. `None` without any estimate.
pub(super) fn shareable_fraction(stats: &[&VmStats]) -> Option<f64> {
    let (shareable, resident) = stats
        .iter()
        .filter_map(|s| {
            let estimate = s.sharing.estimate.as_ref()?;
            let resident = s.guest_resident_bytes as f64;
            Some((estimate.fraction.clamp(0.0, 1.0) * resident, resident))
        })
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    (resident > 0.0).then(|| shareable / resident)
}

/// The host: free memory is what the budget has left after the VMs (guest memory and
/// overheads), and never more than the host really has available.
pub(super) fn host_input(
    budget: u64,
    vms: &[VmInput],
    mem_available: u64,
    swap_free: u64,
) -> HostInput {
    let used = vms
        .iter()
        .map(|vm| vm.allocated_bytes.saturating_add(vm.overhead_bytes))
        .fold(0, u64::saturating_add);
    HostInput {
        budget_bytes: budget,
        free_bytes: budget.saturating_sub(used).min(mem_available),
        swap_free_bytes: swap_free,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use skiff_api::balloon::{BalloonStats, GuestMemoryStats};
    use skiff_api::control::RunState;
    use skiff_api::memory::{ShareableEstimate, WorkingSetStats};
    use skiff_api::ByteSize;

    const MIB: u64 = 1 << 20;

    /// A running VMM's stats as the manager gets them (the manager's tests use it too).
    pub(in crate::memory) fn stats() -> VmStats {
        VmStats {
            state: RunState::Running,
            vcpus: 1,
            memory_bytes: 512 * MIB,
            guest_resident_bytes: 300 * MIB,
            vmm_rss_bytes: 310 * MIB,
            uptime_ms: 1000,
            balloon: Some(BalloonStats {
                target_bytes: 100 * MIB,
                actual_bytes: 90 * MIB,
                guest: Some(GuestMemoryStats {
                    free_bytes: Some(50 * MIB),
                    age_ms: 1000,
                    ..GuestMemoryStats::default()
                }),
                ..BalloonStats::default()
            }),
            working_set: None,
            sharing: Default::default(),
            reclaim: Default::default(),
        }
    }

    #[test]
    fn a_vm_as_the_policy_sees_it() {
        let memory = MemorySpec {
            size: ByteSize::from_mib(512),
            min: Some(ByteSize::from_mib(128)),
            shares: None,
            sharing_domain: None,
            page_sharing: true,
        };
        let vm = vm_input("a", &memory, &stats(), true);
        assert_eq!((vm.min_bytes, vm.max_bytes), (128 * MIB, 512 * MIB));
        assert_eq!(vm.shares, DEFAULT_SHARES);
        assert_eq!(vm.allocated_bytes, 300 * MIB);
        assert_eq!(vm.overhead_bytes, 10 * MIB);
        assert_eq!(vm.guest_free_bytes, Some(50 * MIB));
        assert_eq!(
            vm.balloon,
            Some(BalloonInput {
                target_bytes: 100 * MIB,
                actual_bytes: 90 * MIB
            })
        );
        assert!(vm.paused_by_policy);
        assert_eq!(vm.active_fraction, None);
        assert_eq!(vm.shared_bytes, 0);
    }

    #[test]
    fn working_set_and_sharing_figures_from_the_vmm() {
        let mut s = stats();
        s.working_set = Some(WorkingSetStats {
            dirty_logging: true,
            periods: 3,
            active_fraction: 0.15,
            ..WorkingSetStats::default()
        });
        s.sharing.ksm.merging_pages = Some(256);
        let vm = vm_input(
            "a",
            &MemorySpec::of_size(ByteSize::from_mib(512)),
            &s,
            false,
        );
        // 15 % of 512 MiB written: 76.8 MiB of the 300 MiB resident
        let f = vm.active_fraction.expect("measured");
        assert!((f - 0.256).abs() < 1e-9, "{f}");
        assert_eq!(vm.shared_bytes, MIB);
        // no finished period yet: unmeasured
        if let Some(w) = s.working_set.as_mut() {
            w.periods = 0;
        }
        let vm = vm_input(
            "a",
            &MemorySpec::of_size(ByteSize::from_mib(512)),
            &s,
            false,
        );
        assert_eq!(vm.active_fraction, None);
    }

    #[test]
    fn shareable_estimates_weigh_by_resident_memory() {
        let estimate = |fraction| ShareableEstimate {
            fraction,
            ..ShareableEstimate::default()
        };
        let (mut a, mut b, none) = (stats(), stats(), stats());
        a.sharing.estimate = Some(estimate(0.6));
        b.sharing.estimate = Some(estimate(0.2));
        b.guest_resident_bytes = 100 * MIB;
        // (0.6 × 300 + 0.2 × 100) / 400
        let f = shareable_fraction(&[&a, &b, &none]).expect("estimates");
        assert!((f - 0.5).abs() < 1e-9, "{f}");
        assert_eq!(shareable_fraction(&[&none]), None);
    }

    #[test]
    fn stale_guest_figures_are_dropped() {
        let mut old = stats();
        if let Some(guest) = old.balloon.as_mut().and_then(|b| b.guest.as_mut()) {
            guest.age_ms = 60_000;
        }
        let vm = vm_input(
            "a",
            &MemorySpec::of_size(ByteSize::from_mib(512)),
            &old,
            false,
        );
        assert_eq!(vm.guest_free_bytes, None);
        assert_eq!(vm.min_bytes, 0);
    }

    #[test]
    fn free_memory_is_the_budgets_rest_within_what_the_host_has() {
        let memory = MemorySpec::of_size(ByteSize::from_mib(512));
        let vms = [
            vm_input("a", &memory, &stats(), false),
            vm_input("b", &memory, &stats(), false),
        ];
        let host = host_input(1024 * MIB, &vms, u64::MAX, 7);
        assert_eq!(host.free_bytes, 1024 * MIB - 620 * MIB);
        assert_eq!(host.swap_free_bytes, 7);
        assert_eq!(host_input(1024 * MIB, &vms, MIB, 0).free_bytes, MIB);
        assert_eq!(host_input(100 * MIB, &vms, u64::MAX, 0).free_bytes, 0);
    }
}
