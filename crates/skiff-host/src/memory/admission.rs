//! Admission control in the daemon: what a VM reserves, from its spec, and whether the
//! host can promise it (the rule itself is `skiff_mem_policy::admit`).

use skiff_api::MemorySpec;
use skiff_mem_policy::{admit, AdmissionError, HostCapacity, Reservation};

use super::config::MemoryConfig;

const MIB: u64 = 1 << 20;

/// What a VM costs outside its guest RAM, reserved with its min: Skiff's VMM holds about
/// 2.3 MiB (docs/benchmarks.md) and KVM's page tables about 1/512 of guest memory; twice both.
pub fn overhead_estimate(max_bytes: u64) -> u64 {
    4 * MIB + max_bytes / 256
}

pub fn reservation(memory: &MemorySpec) -> Reservation {
    let max_bytes = memory.size.bytes();
    Reservation {
        min_bytes: memory.min.map_or(0, |m| m.bytes()),
        max_bytes,
        overhead_bytes: overhead_estimate(max_bytes),
    }
}

/// Whether `candidate` may start beside the VMs of `admitted` on a host with `mem_total`
/// bytes of memory and `swap_total` of swap. Without swap, and no reclaim capacity
/// configured, only the memory is checked: there is no capacity to promise.
pub fn check(
    config: &MemoryConfig,
    admitted: &[&MemorySpec],
    candidate: &MemorySpec,
    mem_total: u64,
    swap_total: u64,
) -> Result<(), AdmissionError> {
    let reclaim = match config.reclaim_capacity_bytes.unwrap_or(swap_total) {
        0 => u64::MAX,
        capacity => capacity,
    };
    let host = HostCapacity {
        budget_bytes: config.budget(mem_total),
        reclaim_capacity_bytes: reclaim,
    };
    let admitted: Vec<Reservation> = admitted.iter().map(|m| reservation(m)).collect();
    admit(&host, &admitted, &reservation(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::ByteSize;

    fn vm(min: u64, max: u64) -> MemorySpec {
        MemorySpec {
            size: ByteSize::from_mib(max),
            min: Some(ByteSize::from_mib(min)),
            shares: None,
            sharing_domain: None,
            page_sharing: true,
        }
    }

    fn config(budget_mib: u64, reclaim_mib: Option<u64>) -> MemoryConfig {
        MemoryConfig {
            budget_bytes: Some(budget_mib * MIB),
            reclaim_capacity_bytes: reclaim_mib.map(|r| r * MIB),
            ..MemoryConfig::default()
        }
    }

    #[test]
    fn six_512_mib_vms_with_128_mib_mins_fit_two_gib() {
        let running = vec![vm(128, 512); 5];
        let refs: Vec<&MemorySpec> = running.iter().collect();
        let config = config(2048, Some(4096));
        assert!(check(&config, &refs, &vm(128, 512), 0, 0).is_ok());
    }

    #[test]
    fn refusals_name_the_numbers() {
        let running = [vm(1024, 1024)];
        let refs: Vec<&MemorySpec> = running.iter().collect();
        let err = check(&config(2048, None), &refs, &vm(1024, 1024), 0, 0).expect_err("full");
        // 1024 + 4 + 4 MiB reserved already: 1016 MiB left, 1032 needed
        assert_eq!(
            err.to_string(),
            "not enough memory: the VM needs 1032 MiB reserved (min 1024 MiB + overhead 8 MiB), \
             but only 1016 MiB of the 2048 MiB budget is unreserved"
        );
        let err = check(&config(2048, None), &[], &vm(0, 512), 0, 256 * MIB).expect_err("swap");
        assert!(err.to_string().contains("needs 512 MiB of swap"), "{err}");
    }

    #[test]
    fn without_swap_only_memory_is_checked() {
        assert!(check(&config(2048, None), &[], &vm(0, 1024), 0, 0).is_ok());
    }
}
