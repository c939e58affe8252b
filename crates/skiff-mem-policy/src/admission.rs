//! Admission control: a VM starts only if what it is promised can be kept.
//!
//! Its min plus its overhead must fit in the budget not yet reserved by running VMs (that
//! memory is never reclaimed), and its max − min must fit in the hypervisor's reclaim
//! capacity (host swap or zram) not yet reserved: if every balloon failed, the host could
//! still page each VM down to its min.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::saturating_sum;

/// What admitting a VM reserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub min_bytes: u64,
    pub max_bytes: u64,
    pub overhead_bytes: u64,
}

impl Reservation {
    fn memory(&self) -> u64 {
        self.min_bytes.saturating_add(self.overhead_bytes)
    }

    fn reclaimable(&self) -> u64 {
        self.max_bytes.saturating_sub(self.min_bytes)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCapacity {
    /// Host memory Skiff's VMs may use altogether.
    pub budget_bytes: u64,
    /// Host swap and zram the hypervisor may page guest memory out to.
    pub reclaim_capacity_bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmissionError {
    #[error("the VM's min ({}) is above its max ({})", Mib(*min), Mib(*max))]
    MinAboveMax { min: u64, max: u64 },
    #[error(
        "not enough memory: the VM needs {} reserved (min {} + overhead {}), \
         but only {} of the {} budget is unreserved",
        Mib(*needed), Mib(*min), Mib(*overhead), Mib(*available), Mib(*budget)
    )]
    Memory {
        needed: u64,
        min: u64,
        overhead: u64,
        available: u64,
        budget: u64,
    },
    #[error(
        "not enough reclaim capacity: the VM needs {} of swap for max − min, \
         but only {} of the host's {} is unreserved",
        Mib(*needed), Mib(*available), Mib(*capacity)
    )]
    ReclaimCapacity {
        needed: u64,
        available: u64,
        capacity: u64,
    },
}

/// Whether `candidate` may start next to the `admitted` VMs.
pub fn admit(
    host: &HostCapacity,
    admitted: &[Reservation],
    candidate: &Reservation,
) -> Result<(), AdmissionError> {
    if candidate.min_bytes > candidate.max_bytes {
        return Err(AdmissionError::MinAboveMax {
            min: candidate.min_bytes,
            max: candidate.max_bytes,
        });
    }
    let reserved = saturating_sum(admitted.iter().map(Reservation::memory));
    let available = host.budget_bytes.saturating_sub(reserved);
    if candidate.memory() > available {
        return Err(AdmissionError::Memory {
            needed: candidate.memory(),
            min: candidate.min_bytes,
            overhead: candidate.overhead_bytes,
            available,
            budget: host.budget_bytes,
        });
    }
    let promised = saturating_sum(admitted.iter().map(Reservation::reclaimable));
    let available = host.reclaim_capacity_bytes.saturating_sub(promised);
    if candidate.reclaimable() > available {
        return Err(AdmissionError::ReclaimCapacity {
            needed: candidate.reclaimable(),
            available,
            capacity: host.reclaim_capacity_bytes,
        });
    }
    Ok(())
}

/// Bytes as MiB for messages: whole MiB plainly, otherwise with one decimal.
struct Mib(u64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: u64 = 1 << 20;
        if self.0.is_multiple_of(MIB) {
            write!(f, "{} MiB", self.0 / MIB)
        } else {
            write!(f, "{:.1} MiB", self.0 as f64 / MIB as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn vm(min: u64, max: u64, overhead: u64) -> Reservation {
        Reservation {
            min_bytes: min * MIB,
            max_bytes: max * MIB,
            overhead_bytes: overhead * MIB,
        }
    }

    const HOST: HostCapacity = HostCapacity {
        budget_bytes: 2048 * MIB,
        reclaim_capacity_bytes: 4096 * MIB,
    };

    #[test]
    fn six_overcommitted_vms_fit_a_2_gib_budget() {
        // the overcommit run: max 512, min 128, ~20 MiB of VMM each
        let mut admitted = Vec::new();
        for _ in 0..6 {
            let next = vm(128, 512, 20);
            admit(&HOST, &admitted, &next).expect("fits");
            admitted.push(next);
        }
        // 6 × 148 = 888 MiB reserved, 2304 MiB of swap promised
        admit(&HOST, &admitted, &vm(1000, 1100, 20)).expect("1020 of 1160 MiB");
    }

    #[test]
    fn a_refusal_states_the_numbers() {
        let admitted = [vm(1024, 1024, 24), vm(512, 1024, 24)];
        let err = admit(&HOST, &admitted, &vm(512, 512, 24)).expect_err("no room");
        assert_eq!(
            err.to_string(),
            "not enough memory: the VM needs 536 MiB reserved (min 512 MiB + overhead 24 MiB), \
             but only 464 MiB of the 2048 MiB budget is unreserved"
        );
        let small_swap = HostCapacity {
            reclaim_capacity_bytes: 600 * MIB,
            ..HOST
        };
        let err = admit(&small_swap, &admitted, &vm(64, 256, 8)).expect_err("no swap");
        assert_eq!(
            err.to_string(),
            "not enough reclaim capacity: the VM needs 192 MiB of swap for max − min, \
             but only 88 MiB of the host's 600 MiB is unreserved"
        );
    }

    #[test]
    fn odd_sizes_show_a_decimal_and_bad_specs_are_refused() {
        let err = admit(&HOST, &[], &vm(4096, 4096, 0)).expect_err("too big");
        assert!(err.to_string().contains("4096 MiB"), "{err}");
        let odd = Reservation {
            min_bytes: 3 * MIB,
            max_bytes: 2 * MIB + MIB / 2,
            overhead_bytes: 0,
        };
        let err = admit(&HOST, &[], &odd).expect_err("min above max");
        assert_eq!(
            err.to_string(),
            "the VM's min (3 MiB) is above its max (2.5 MiB)"
        );
    }
}
