//! Properties of the allocation and the plan over random VMs (proptest).

use proptest::prelude::*;
use skiff_mem_policy::{
    allocate, Action, BalloonInput, FreeState, HostInput, MemoryPolicy, PolicyConfig, VmInput,
    PAGE_SIZE,
};

const MIB: u64 = 1 << 20;

/// A VM of up to 2 GiB with everything else random, sizes not always page-aligned.
fn any_vm() -> impl Strategy<Value = VmInput> {
    (
        1u64..=2048 * MIB,
        0.0f64..=1.0,
        0u64..=10_000,
        0.0f64..=1.0,
        proptest::option::of(0.0f64..=1.0),
        proptest::option::of(0.0f64..=1.0),
        proptest::option::of(0.0f64..=1.0),
    )
        .prop_map(
            |(max, min_part, shares, resident_part, f, free_part, balloon_part)| {
                let min = (max as f64 * min_part * 0.5) as u64;
                let balloon = balloon_part.map(|p| (max as f64 * p * 0.5) as u64);
                VmInput {
                    allocated_bytes: (max as f64 * resident_part) as u64,
                    active_fraction: f,
                    guest_free_bytes: free_part.map(|p| (max as f64 * p) as u64),
                    balloon: balloon.map(|b| BalloonInput {
                        target_bytes: b,
                        actual_bytes: b,
                    }),
                    ..VmInput::new("", min, max, shares)
                }
            },
        )
}

/// 1 to 8 VMs named v0, v1, ...
fn any_vms() -> impl Strategy<Value = Vec<VmInput>> {
    proptest::collection::vec(any_vm(), 1..=8).prop_map(|mut vms| {
        for (i, vm) in vms.iter_mut().enumerate() {
            vm.id = format!("v{i}");
        }
        vms
    })
}

fn config(tax_rate: f64) -> PolicyConfig {
    PolicyConfig {
        tax_rate,
        ..PolicyConfig::default()
    }
}

fn targets(vms: &[VmInput], budget: u64, tax_rate: f64) -> Vec<u64> {
    let (targets, _) = allocate(vms, budget, &config(tax_rate));
    targets.iter().map(|t| t.target_bytes).collect()
}

/// The paper's ρ at `bytes` as the allocator extends it (see the crate's `idle_tax`), for the
/// reference implementation below.
fn rho(vm: &VmInput, bytes: u64, k: f64) -> f64 {
    let f = vm.active_fraction.unwrap_or(1.0);
    let p0 = vm.allocated_bytes.min(vm.max_bytes) as f64;
    let active = f * p0;
    let b = bytes as f64;
    let cost = if b <= active {
        b
    } else if b <= p0 {
        active + k * (b - active)
    } else {
        active + k * (p0 - active) + (f + k * (1.0 - f)) * (b - p0)
    };
    vm.shares as f64 / cost
}

/// ESX's loop, literally: start every VM at its max and take one page at a time from the VM
/// whose ρ is lowest, memory above demand before memory below it, until the budget is met.
fn reclaim_page_by_page(vms: &[VmInput], budget: u64, config: &PolicyConfig) -> Vec<u64> {
    let k = config.idle_cost_factor();
    let demand: Vec<u64> = vms
        .iter()
        .map(|vm| vm.demand_bytes(config.demand_headroom))
        .collect();
    let mut sizes: Vec<u64> = vms.iter().map(|vm| vm.max_bytes).collect();
    while sizes.iter().sum::<u64>() > budget {
        let key = |i: usize| (sizes[i] <= demand[i], rho(&vms[i], sizes[i], k));
        let victim = (0..vms.len())
            .filter(|&i| sizes[i] > vms[i].min_bytes)
            .min_by(|&a, &b| {
                let (ka, kb) = (key(a), key(b));
                ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
            });
        let Some(i) = victim else { break };
        // never below demand while some VM is still above its own
        let floor = if sizes[i] > demand[i] {
            demand[i]
        } else {
            vms[i].min_bytes
        };
        sizes[i] -= PAGE_SIZE.min(sizes[i] - floor);
    }
    sizes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_target_is_within_min_and_max(
        vms in any_vms(), budget in 0u64..=16384 * MIB, tau in 0.0f64..0.99
    ) {
        for (vm, target) in vms.iter().zip(targets(&vms, budget, tau)) {
            prop_assert!(vm.min_bytes <= target && target <= vm.max_bytes,
                "{}: {} not in [{}, {}]", vm.id, target, vm.min_bytes, vm.max_bytes);
        }
    }

    #[test]
    fn targets_fit_the_budget_when_the_mins_do(
        vms in any_vms(), budget in 0u64..=16384 * MIB, tau in 0.0f64..0.99
    ) {
        let mins: u64 = vms.iter().map(|vm| vm.min_bytes).sum();
        prop_assume!(mins <= budget);
        let t = targets(&vms, budget, tau);
        let sum: u64 = t.iter().sum();
        prop_assert!(sum <= budget, "{sum} > {budget}");
        // and they use it: at most a page per VM is left over, unless every VM is at max
        let maxes: u64 = vms.iter().map(|vm| vm.max_bytes).sum();
        let slack = PAGE_SIZE * vms.len() as u64;
        prop_assert!(sum + slack >= budget.min(maxes), "{sum} of {budget} used");
    }

    /// τ = 0 and no demand figures: no VM that could still grow holds less per share than a
    /// VM that could still shrink (up to a page of rounding each).
    #[test]
    fn without_tax_allocation_is_proportional_to_shares(
        vms in any_vms(), budget in 0u64..=16384 * MIB
    ) {
        let vms: Vec<VmInput> = vms
            .into_iter()
            .map(|vm| VmInput { guest_free_bytes: None, shares: vm.shares.max(1), ..vm })
            .collect();
        let mins: u64 = vms.iter().map(|vm| vm.min_bytes).sum();
        prop_assume!(mins <= budget);
        let t = targets(&vms, budget, 0.0);
        let per_share = |i: usize, bytes: u64| bytes as f64 / vms[i].shares as f64;
        for i in 0..vms.len() {
            for j in 0..vms.len() {
                let i_can_grow = t[i] + PAGE_SIZE <= vms[i].max_bytes;
                let j_can_shrink = t[j] >= vms[j].min_bytes + PAGE_SIZE;
                if i != j && i_can_grow && j_can_shrink {
                    prop_assert!(
                        per_share(i, t[i] + PAGE_SIZE) >= per_share(j, t[j] - PAGE_SIZE),
                        "{} has {} for {} shares, {} has {} for {}",
                        vms[i].id, t[i], vms[i].shares, vms[j].id, t[j], vms[j].shares
                    );
                }
            }
        }
    }

    #[test]
    fn more_shares_never_mean_a_smaller_target(
        vms in any_vms(), budget in 0u64..=16384 * MIB, tau in 0.0f64..0.99,
        pick in any::<prop::sample::Index>(), extra in 1u64..=10_000
    ) {
        let i = pick.index(vms.len());
        let before = targets(&vms, budget, tau)[i];
        let mut richer = vms.clone();
        richer[i].shares += extra;
        let after = targets(&richer, budget, tau)[i];
        prop_assert!(after >= before, "{before} → {after}");
    }

    /// The closed form lands where the page-by-page loop does, within a few pages per VM.
    #[test]
    fn the_closed_form_matches_reclaiming_page_by_page(
        vms in proptest::collection::vec(any_vm(), 1..=4), budget_pages in 0u64..=1500,
        tau in 0.0f64..0.9
    ) {
        // small VMs (at most 512 pages) so that the loop is quick
        let vms: Vec<VmInput> = vms
            .into_iter()
            .enumerate()
            .map(|(i, vm)| {
                let scale = |b: u64| b / (4 * MIB) * PAGE_SIZE;
                VmInput {
                    id: format!("v{i}"),
                    min_bytes: scale(vm.min_bytes),
                    max_bytes: scale(vm.max_bytes),
                    allocated_bytes: scale(vm.allocated_bytes),
                    guest_free_bytes: vm.guest_free_bytes.map(scale),
                    balloon: vm.balloon.map(|b| BalloonInput {
                        target_bytes: scale(b.target_bytes),
                        actual_bytes: scale(b.actual_bytes),
                    }),
                    ..vm
                }
            })
            .collect();
        let budget = budget_pages * PAGE_SIZE;
        let mins: u64 = vms.iter().map(|vm| vm.min_bytes).sum();
        prop_assume!(mins <= budget);
        let config = config(tau);
        let closed = targets(&vms, budget, tau);
        let looped = reclaim_page_by_page(&vms, budget, &config);
        for (i, (c, l)) in closed.iter().zip(&looped).enumerate() {
            let pages = c.abs_diff(*l).div_ceil(PAGE_SIZE);
            prop_assert!(pages <= 3, "{}: closed form {} vs loop {}", vms[i].id, c, l);
        }
    }

    #[test]
    fn no_action_pushes_a_vm_below_its_min(
        vms in any_vms(), budget in 1u64..=16384 * MIB, free_part in 0.0f64..0.1,
        tau in 0.0f64..0.99
    ) {
        let mut policy = MemoryPolicy::new(config(tau)).expect("config");
        let host = HostInput {
            budget_bytes: budget,
            free_bytes: (budget as f64 * free_part) as u64,
            swap_free_bytes: u64::MAX,
        };
        let plan = policy.plan(&host, &vms).expect("plan");
        for (vm, planned) in vms.iter().zip(&plan.vms) {
            for action in &planned.actions {
                match *action {
                    Action::SetBalloon { bytes } => prop_assert!(bytes <= vm.max_bytes - vm.min_bytes),
                    Action::HypervisorReclaim { bytes } => {
                        prop_assert!(vm.allocated_bytes.min(vm.max_bytes) - bytes >= vm.min_bytes)
                    }
                    Action::Pause => prop_assert_eq!(plan.state, FreeState::Low),
                    Action::Resume => prop_assert!(vm.paused_by_policy),
                }
            }
        }
    }
}
