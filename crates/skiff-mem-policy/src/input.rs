//! What the policy is told each period: one [`VmInput`] per running VM and one [`HostInput`].
//! All sizes are bytes of guest memory unless a field says otherwise.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmInput {
    /// The VM's name; ties between otherwise equal VMs are broken by it.
    pub id: String,
    /// Never reclaimed below this (reserved at admission).
    pub min_bytes: u64,
    /// The guest's configured memory: it never holds more.
    pub max_bytes: u64,
    /// Its weight when memory is short.
    pub shares: u64,
    /// P: guest memory currently backed by host memory (the VMM's resident guest pages).
    pub allocated_bytes: u64,
    /// f: the fraction of the allocated memory the guest is actively using, from working-set
    /// sampling. `None` (not measured yet) counts all of it as active: a VM the manager knows
    /// nothing about pays no idle tax.
    pub active_fraction: Option<f64>,
    /// The balloon, if the VM has one whose driver answers. Without it, memory above target is
    /// reclaimed by the hypervisor from the soft state on.
    pub balloon: Option<BalloonInput>,
    /// Of the allocated memory, pages merged with other pages by KSM. Paging them out frees
    /// nothing while other VMs still map them, so hypervisor reclaim does not count on them.
    pub shared_bytes: u64,
    /// What the guest reports as completely unused (MemFree from the balloon's stats queue;
    /// page cache is not free). `None` when the guest sends no stats.
    pub guest_free_bytes: Option<u64>,
    /// Host memory the VM costs outside guest RAM (the VMM process, page tables, devices).
    pub overhead_bytes: u64,
    /// The manager paused this VM (low state) and has not resumed it yet.
    pub paused_by_policy: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonInput {
    /// The balloon size the host last asked for.
    pub target_bytes: u64,
    /// What the guest's driver says the balloon holds.
    pub actual_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInput {
    /// The host memory Skiff's VMs may use altogether: guest memory plus overheads.
    pub budget_bytes: u64,
    /// How much of the budget is free now (the daemon's measure: the budget less what the VMs
    /// hold, and no more than the host's own available memory).
    pub free_bytes: u64,
    /// Room left in host swap or zram for hypervisor-level reclaim.
    pub swap_free_bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InputError {
    #[error("VM `{id}`: min {min} bytes is above max {max} bytes")]
    MinAboveMax { id: String, min: u64, max: u64 },
    #[error("VM `{id}`: the active fraction must be in [0, 1], not {value}")]
    ActiveFraction { id: String, value: f64 },
    #[error("VM `{0}` is listed twice")]
    DuplicateId(String),
}

impl VmInput {
    /// A VM with everything unknown or zero but its size and shares: the starting point for
    /// callers (and tests) that fill in the rest.
    pub fn new(id: impl Into<String>, min_bytes: u64, max_bytes: u64, shares: u64) -> Self {
        VmInput {
            id: id.into(),
            min_bytes,
            max_bytes,
            shares,
            allocated_bytes: 0,
            active_fraction: None,
            balloon: None,
            shared_bytes: 0,
            guest_free_bytes: None,
            overhead_bytes: 0,
            paused_by_policy: false,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), InputError> {
        if self.min_bytes > self.max_bytes {
            return Err(InputError::MinAboveMax {
                id: self.id.clone(),
                min: self.min_bytes,
                max: self.max_bytes,
            });
        }
        if let Some(f) = self.active_fraction {
            if !(0.0..=1.0).contains(&f) {
                return Err(InputError::ActiveFraction {
                    id: self.id.clone(),
                    value: f,
                });
            }
        }
        Ok(())
    }

    /// P, capped at max: a resident figure a little above the guest's size (rounding in the
    /// VMM's accounting) must not make the VM look bigger than it can be.
    pub fn resident(&self) -> u64 {
        self.allocated_bytes.min(self.max_bytes)
    }

    /// The balloon's current size, 0 without one.
    pub fn ballooned(&self) -> u64 {
        self.balloon
            .map_or(0, |b| b.actual_bytes.min(self.max_bytes))
    }

    /// f, or 1 when unmeasured (see `active_fraction`).
    pub fn active_fraction_or_all(&self) -> f64 {
        self.active_fraction.unwrap_or(1.0)
    }

    /// How much memory the VM would use if left alone: what its guest uses (its size less the
    /// balloon less its free memory) plus `headroom` of its max to grow into, within
    /// [min, max]. A guest that sends no stats is assumed to want its max.
    pub fn demand_bytes(&self, headroom: f64) -> u64 {
        let Some(free) = self.guest_free_bytes else {
            return self.max_bytes;
        };
        let used = self
            .max_bytes
            .saturating_sub(self.ballooned())
            .saturating_sub(free);
        let slack = (self.max_bytes as f64 * headroom) as u64;
        used.saturating_add(slack)
            .clamp(self.min_bytes, self.max_bytes)
    }
}

/// f as the policy wants it (a fraction of the resident memory) from a sampler that picks
/// pages over all of guest RAM: the pages found written were resident by the end of the
/// period, so the active bytes are `fraction_of_ram` × `guest_bytes`. Capped at 1; 1 when
/// nothing is resident.
pub fn active_fraction_of_resident(
    fraction_of_ram: f64,
    guest_bytes: u64,
    resident_bytes: u64,
) -> f64 {
    if resident_bytes == 0 || fraction_of_ram.is_nan() {
        return 1.0;
    }
    let active = fraction_of_ram.clamp(0.0, 1.0) * guest_bytes as f64;
    (active / resident_bytes as f64).min(1.0)
}

/// Checks every VM and that no name repeats.
pub(crate) fn validate_all(vms: &[VmInput]) -> Result<(), InputError> {
    let mut ids: Vec<&str> = Vec::with_capacity(vms.len());
    for vm in vms {
        vm.validate()?;
        ids.push(&vm.id);
    }
    ids.sort_unstable();
    if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(InputError::DuplicateId(pair[0].to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn demand_follows_what_the_guest_uses() {
        let mut vm = VmInput::new("a", 64 * MIB, 1024 * MIB, 1000);
        assert_eq!(vm.demand_bytes(0.05), 1024 * MIB, "no stats: wants its max");
        vm.guest_free_bytes = Some(824 * MIB);
        // uses 200 MiB, may grow by 5 % of 1 GiB
        assert_eq!(vm.demand_bytes(0.05), 200 * MIB + 1024 * MIB / 20);
        // ballooning takes from the free memory: demand does not move
        vm.balloon = Some(BalloonInput {
            target_bytes: 300 * MIB,
            actual_bytes: 300 * MIB,
        });
        vm.guest_free_bytes = Some(524 * MIB);
        assert_eq!(vm.demand_bytes(0.05), 200 * MIB + 1024 * MIB / 20);
        // an idle guest is held at its min
        vm.guest_free_bytes = Some(724 * MIB);
        assert_eq!(vm.demand_bytes(0.0), 64 * MIB);
    }

    #[test]
    fn unmeasured_memory_is_active() {
        let mut vm = VmInput::new("a", 0, 100 * MIB, 1);
        assert_eq!(vm.active_fraction_or_all(), 1.0);
        vm.active_fraction = Some(0.25);
        assert_eq!(vm.active_fraction_or_all(), 0.25);
    }

    #[test]
    fn a_fraction_of_guest_ram_becomes_one_of_resident_memory() {
        // 10 % of a 1 GiB guest written, 256 MiB resident: 40 % of what it holds is active
        let f = active_fraction_of_resident(0.1, 1024 * MIB, 256 * MIB);
        assert!((f - 0.4).abs() < 1e-12, "{f}");
        assert_eq!(active_fraction_of_resident(0.5, 1024 * MIB, 256 * MIB), 1.0);
        assert_eq!(active_fraction_of_resident(0.5, 1024 * MIB, 0), 1.0);
        assert_eq!(active_fraction_of_resident(f64::NAN, 1024 * MIB, 1), 1.0);
    }

    #[test]
    fn rejects_bad_vms() {
        let vm = VmInput::new("a", 2, 1, 1);
        assert!(matches!(
            validate_all(&[vm]),
            Err(InputError::MinAboveMax { .. })
        ));
        let mut vm = VmInput::new("a", 0, 1, 1);
        vm.active_fraction = Some(f64::NAN);
        assert!(validate_all(&[vm]).is_err());
        let vm = VmInput::new("a", 0, 1, 1);
        assert_eq!(
            validate_all(&[vm.clone(), vm]),
            Err(InputError::DuplicateId("a".into()))
        );
    }
}
