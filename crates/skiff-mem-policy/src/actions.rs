//! What each free-memory state asks of each VM, given its target.
//!
//! | state | balloon | hypervisor reclaim | pause |
//! | --- | --- | --- | --- |
//! | high | only deflates (towards target) | none | resume all |
//! | soft | set to max − target | VMs above target that have no balloon | resume all |
//! | hard | only inflates (towards target) | every VM above target | resume all |
//! | low | only inflates (towards target) | every VM above target | pause VMs above target that hypervisor reclaim shrinks; resume the others |
//!
//! In hard and low no balloon is deflated: the memory it would give back is what the host is
//! short of. A VM is never pushed below its min: targets are at least the min, a balloon never
//! exceeds max − target, and hypervisor reclaim takes only what is above the target.

use serde::{Deserialize, Serialize};

use crate::input::VmInput;
use crate::state::FreeState;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Ask the guest's balloon to hold this many bytes.
    SetBalloon { bytes: u64 },
    /// Page this many bytes of the VM's guest memory out to host swap or zram.
    HypervisorReclaim { bytes: u64 },
    /// Stop the VM's vCPUs until it is back under target.
    Pause,
    /// Run a VM this manager paused.
    Resume,
}

/// The actions for one VM. `swap_free` is the room left in host swap; hypervisor reclaim
/// takes from it and is limited by it.
pub(crate) fn actions_for(
    vm: &VmInput,
    target: u64,
    state: FreeState,
    swap_free: &mut u64,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let above_target = vm.resident().saturating_sub(target);

    if let Some(balloon) = vm.balloon {
        let wanted = vm.max_bytes.saturating_sub(target);
        let current = balloon.target_bytes;
        let next = match state {
            FreeState::High => current.min(wanted),
            FreeState::Soft => wanted,
            FreeState::Hard | FreeState::Low => current.max(wanted),
        };
        if next != current {
            actions.push(Action::SetBalloon { bytes: next });
        }
    }

    let hypervisor_reclaims = match state {
        FreeState::High => false,
        FreeState::Soft => vm.balloon.is_none(),
        FreeState::Hard | FreeState::Low => true,
    };
    let mut reclaimed = 0;
    if hypervisor_reclaims {
        // Shared pages stay mapped by other VMs: paging this VM's copy out frees nothing.
        let private = vm.resident().saturating_sub(vm.shared_bytes);
        reclaimed = above_target.min(private).min(*swap_free);
        if reclaimed > 0 {
            *swap_free -= reclaimed;
            actions.push(Action::HypervisorReclaim { bytes: reclaimed });
        }
    }

    // A paused guest cannot run its balloon driver: only hypervisor reclaim shrinks it. A VM
    // that nothing can shrink while paused is left running, or it would stay paused.
    let should_block = state == FreeState::Low && above_target > 0 && reclaimed > 0;
    if should_block && !vm.paused_by_policy {
        actions.push(Action::Pause);
    } else if !should_block && vm.paused_by_policy {
        actions.push(Action::Resume);
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::BalloonInput;

    const MIB: u64 = 1 << 20;

    /// A 1 GiB VM holding 800 MiB whose balloon was last asked for 100 MiB.
    fn vm() -> VmInput {
        VmInput {
            allocated_bytes: 800 * MIB,
            balloon: Some(BalloonInput {
                target_bytes: 100 * MIB,
                actual_bytes: 100 * MIB,
            }),
            ..VmInput::new("a", 128 * MIB, 1024 * MIB, 1000)
        }
    }

    fn run(vm: &VmInput, target_mib: u64, state: FreeState) -> Vec<Action> {
        let mut swap = u64::MAX;
        actions_for(vm, target_mib * MIB, state, &mut swap)
    }

    #[test]
    fn high_only_deflates() {
        assert_eq!(run(&vm(), 600, FreeState::High), []);
        assert_eq!(
            run(&vm(), 1000, FreeState::High),
            [Action::SetBalloon { bytes: 24 * MIB }]
        );
    }

    #[test]
    fn soft_balloons_to_target_and_swaps_only_without_a_balloon() {
        assert_eq!(
            run(&vm(), 600, FreeState::Soft),
            [Action::SetBalloon { bytes: 424 * MIB }]
        );
        let no_balloon = VmInput {
            balloon: None,
            ..vm()
        };
        assert_eq!(
            run(&no_balloon, 600, FreeState::Soft),
            [Action::HypervisorReclaim { bytes: 200 * MIB }]
        );
    }

    #[test]
    fn hard_adds_hypervisor_reclaim_of_private_pages_within_swap() {
        let shared = VmInput {
            shared_bytes: 700 * MIB,
            ..vm()
        };
        assert_eq!(
            run(&shared, 600, FreeState::Hard),
            [
                Action::SetBalloon { bytes: 424 * MIB },
                Action::HypervisorReclaim { bytes: 100 * MIB }
            ]
        );
        let mut swap = 30 * MIB;
        let actions = actions_for(&vm(), 600 * MIB, FreeState::Hard, &mut swap);
        assert_eq!(actions[1], Action::HypervisorReclaim { bytes: 30 * MIB });
        assert_eq!(swap, 0);
        // below target: the balloon is not deflated while memory is short
        assert_eq!(run(&vm(), 1000, FreeState::Hard), []);
    }

    #[test]
    fn low_pauses_above_target_and_resumes_once_under() {
        let actions = run(&vm(), 600, FreeState::Low);
        assert_eq!(actions.last(), Some(&Action::Pause));
        let paused = VmInput {
            paused_by_policy: true,
            ..vm()
        };
        assert!(!run(&paused, 600, FreeState::Low).contains(&Action::Pause));
        let under = run(&paused, 800, FreeState::Low);
        assert_eq!(under.last(), Some(&Action::Resume), "{under:?}");
        let relieved = run(&paused, 900, FreeState::Hard);
        assert_eq!(relieved.last(), Some(&Action::Resume), "{relieved:?}");
    }

    #[test]
    fn without_swap_nothing_is_paused() {
        // paused, the balloon cannot work: with no swap the VM would never get under target
        let mut swap = 0;
        let actions = actions_for(&vm(), 600 * MIB, FreeState::Low, &mut swap);
        assert_eq!(actions, [Action::SetBalloon { bytes: 424 * MIB }]);
        let paused = VmInput {
            paused_by_policy: true,
            ..vm()
        };
        let mut swap = 0;
        let actions = actions_for(&paused, 600 * MIB, FreeState::Low, &mut swap);
        assert_eq!(actions.last(), Some(&Action::Resume), "{actions:?}");
        // all of it shared with other VMs: paging out frees nothing either
        let shared = VmInput {
            shared_bytes: 800 * MIB,
            ..vm()
        };
        assert!(!run(&shared, 600, FreeState::Low).contains(&Action::Pause));
    }

    #[test]
    fn never_below_min() {
        // target at min: balloon max − min, reclaim down to min exactly
        let actions = run(&vm(), 128, FreeState::Low);
        assert_eq!(actions[0], Action::SetBalloon { bytes: 896 * MIB });
        assert_eq!(actions[1], Action::HypervisorReclaim { bytes: 672 * MIB });
    }
}
