//! Targets by min-funding revocation, computed in closed form.
//!
//! ESX reclaims memory one page at a time from the VM whose ρ is lowest; taking a page
//! raises that VM's ρ, so reclamation moves on to the next-lowest VM. Run to the end from
//! every VM at its upper bound, this stops with one water level λ: every VM strictly between
//! its bounds has ρ = λ, a VM still at its upper bound has ρ ≥ λ (it was never the lowest),
//! and a VM held at its lower bound has ρ ≤ λ. So each VM gets
//!
//! ```text
//! target = clamp(cost⁻¹(S / λ), lower, upper)      with λ chosen so the targets fill the budget
//! ```
//!
//! where cost(P) charges idle bytes k = 1/(1−τ) times active ones (`idle_tax`). Each
//! target grows with 1/λ piecewise linearly, so λ is found exactly by evaluating the sum at
//! the curves' corners and interpolating; no iteration, no step size.
//!
//! Two rounds make surplus flow to the VMs that want it. A VM's *demand* is what its guest
//! uses plus some headroom (`VmInput::demand_bytes`). Memory above demand is reclaimed before
//! any memory below it: round one fills the budget with bounds [min, demand]; only if every
//! demand fits does round two share the rest with bounds [demand, max]. A VM that needs less
//! than its share thus leaves the difference to the others.
//!
//! Targets are rounded down to whole pages (never below min), so they may leave less than a
//! page per VM of the budget unassigned. Exactly equal VMs get exactly equal targets. Should
//! floating-point error leave the sum over the budget, a page at a time is taken from the VM
//! with the lowest ρ, and between equal ρ from the VM whose name sorts first.

use crate::config::{PolicyConfig, PAGE_SIZE};
use crate::idle_tax::PageCost;
use crate::input::VmInput;
use crate::saturating_sum;

/// One VM's result.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VmTarget {
    pub id: String,
    /// Memory the VM should hold: within [min, max].
    pub target_bytes: u64,
    /// What it would use if left alone (`VmInput::demand_bytes`).
    pub demand_bytes: u64,
    /// f·P, as the policy counted it.
    pub active_bytes: u64,
    /// ρ at its current allocation, shares per page; `None` when it holds nothing.
    pub rho: Option<f64>,
}

/// Targets for `vms` sharing `budget` bytes of guest memory. When the mins alone exceed the
/// budget every VM gets its min and the second value is true.
pub fn allocate(vms: &[VmInput], budget: u64, config: &PolicyConfig) -> (Vec<VmTarget>, bool) {
    let k = config.idle_cost_factor();
    let costs: Vec<PageCost> = vms
        .iter()
        .map(|vm| PageCost::new(vm.active_fraction_or_all(), vm.resident() as f64, k))
        .collect();
    let demands: Vec<u64> = vms
        .iter()
        .map(|vm| vm.demand_bytes(config.demand_headroom))
        .collect();
    let mins_exceed_budget = saturating_sum(vms.iter().map(|vm| vm.min_bytes)) > budget;

    let claims = |lower: &dyn Fn(usize) -> f64, upper: &dyn Fn(usize) -> f64| -> Vec<Claim> {
        (0..vms.len())
            .map(|i| Claim {
                shares: vms[i].shares,
                cost: costs[i],
                lo: lower(i),
                hi: upper(i),
            })
            .collect()
    };
    let budget_f = budget as f64;
    let below_demand = claims(&|i| vms[i].min_bytes as f64, &|i| demands[i] as f64);
    let mut exact = water_fill(&below_demand, budget_f);
    if saturating_sum(demands.iter().copied()) <= budget {
        let above_demand = claims(&|i| demands[i] as f64, &|i| vms[i].max_bytes as f64);
        exact = water_fill(&above_demand, budget_f);
    }

    let mut targets: Vec<u64> = vms
        .iter()
        .zip(&exact)
        .map(|(vm, &x)| {
            // A byte of slack so that 250 MiB computed as 249.999… MiB is still 250 MiB.
            let pages = ((x.max(0.0) + 1.0) as u64) / PAGE_SIZE * PAGE_SIZE;
            pages.clamp(vm.min_bytes, vm.max_bytes)
        })
        .collect();
    if !mins_exceed_budget {
        trim_to_budget(vms, &costs, &mut targets, budget);
    }

    let results = vms
        .iter()
        .zip(targets)
        .zip(demands)
        .zip(&costs)
        .map(|(((vm, target_bytes), demand_bytes), cost)| VmTarget {
            id: vm.id.clone(),
            target_bytes,
            demand_bytes,
            active_bytes: cost.active() as u64,
            rho: cost.rho(vm.shares, vm.resident() as f64),
        })
        .collect();
    (results, mins_exceed_budget)
}

/// One VM in one round: its shares, its cost curve and its bounds.
#[derive(Clone, Copy, Debug)]
struct Claim {
    shares: u64,
    cost: PageCost,
    lo: f64,
    hi: f64,
}

impl Claim {
    /// The VM's size at water level 1/`mu` (μ = 1/λ, so sizes grow with μ).
    fn at(&self, mu: f64) -> f64 {
        if self.shares == 0 {
            return self.lo;
        }
        self.cost
            .bytes_for(self.shares as f64 * mu)
            .clamp(self.lo, self.hi)
    }

    /// The μ where this VM's size curve bends: at lo, at hi and where its cost changes slope.
    fn corners(&self) -> impl Iterator<Item = f64> + '_ {
        let [active, current] = self.cost.bends();
        let inside = self.shares > 0 && self.hi > self.lo;
        [self.lo, active, current, self.hi]
            .into_iter()
            .filter(move |&bytes| inside && self.lo <= bytes && bytes <= self.hi)
            .map(move |bytes| self.cost.of(bytes) / self.shares as f64)
    }
}

/// The sizes at the water level where they add up to `budget` (all at hi when that fits,
/// all at lo when even that does not).
fn water_fill(claims: &[Claim], budget: f64) -> Vec<f64> {
    let sizes_at = |mu: f64| -> Vec<f64> { claims.iter().map(|c| c.at(mu)).collect() };
    let total_at = |mu: f64| -> f64 { claims.iter().map(|c| c.at(mu)).sum() };
    if claims.iter().map(|c| c.hi).sum::<f64>() <= budget {
        return claims.iter().map(|c| c.hi).collect();
    }
    if claims.iter().map(|c| c.lo).sum::<f64>() >= budget {
        return claims.iter().map(|c| c.lo).collect();
    }
    let mut corners: Vec<f64> = claims.iter().flat_map(Claim::corners).collect();
    corners.push(0.0);
    corners.sort_by(f64::total_cmp);
    corners.dedup();
    // The total is linear between neighbouring corners: find the pair that brackets the
    // budget and interpolate.
    let first_full = corners.partition_point(|&mu| total_at(mu) < budget);
    let Some(&upper) = corners.get(first_full) else {
        return claims.iter().map(|c| c.hi).collect();
    };
    let lower = corners[first_full.saturating_sub(1)];
    let (below, above) = (total_at(lower), total_at(upper));
    let mu = if above > below {
        lower + (budget - below) * (upper - lower) / (above - below)
    } else {
        upper
    };
    sizes_at(mu)
}

/// Floating-point rounding may leave the targets a few bytes over the budget: take the excess
/// from the lowest ρ first (equal ρ: the name that sorts first), never below a min.
fn trim_to_budget(vms: &[VmInput], costs: &[PageCost], targets: &mut [u64], budget: u64) {
    loop {
        let excess = saturating_sum(targets.iter().copied()).saturating_sub(budget);
        if excess == 0 {
            return;
        }
        let victim = (0..vms.len())
            .filter(|&i| targets[i] > vms[i].min_bytes)
            .min_by(|&a, &b| {
                let rho = |i: usize| costs[i].rho(vms[i].shares, targets[i] as f64);
                rho(a)
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&rho(b).unwrap_or(f64::INFINITY))
                    .then_with(|| vms[a].id.cmp(&vms[b].id))
            });
        let Some(i) = victim else { return };
        targets[i] -= excess
            .next_multiple_of(PAGE_SIZE)
            .min(targets[i] - vms[i].min_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn vm(id: &str, min: u64, max: u64, shares: u64, allocated: u64, f: f64) -> VmInput {
        VmInput {
            allocated_bytes: allocated * MIB,
            active_fraction: Some(f),
            ..VmInput::new(id, min * MIB, max * MIB, shares)
        }
    }

    fn targets_mib(vms: &[VmInput], budget_mib: u64, tau: f64) -> Vec<u64> {
        let config = PolicyConfig {
            tax_rate: tau,
            ..PolicyConfig::default()
        };
        let (targets, _) = allocate(vms, budget_mib * MIB, &config);
        targets.iter().map(|t| t.target_bytes / MIB).collect()
    }

    #[test]
    fn without_tax_memory_follows_shares() {
        let vms = [
            vm("a", 0, 4096, 1000, 1024, 0.0),
            vm("b", 0, 4096, 3000, 1024, 1.0),
        ];
        assert_eq!(targets_mib(&vms, 1024, 0.0), [256, 768]);
    }

    #[test]
    fn the_tax_moves_idle_memory_to_the_active_vm() {
        // Equal shares, equal sizes: A's 1000 MiB is 10 % active, B's fully active.
        let vms = [
            vm("a", 0, 1000, 1000, 1000, 0.1),
            vm("b", 0, 1000, 1000, 1000, 1.0),
        ];
        assert_eq!(targets_mib(&vms, 1000, 0.0), [500, 500]);
        // k = 4: A pays 100 + 4·(P − 100) = P_B and P_A + P_B = 1000 → P_A = 260.
        let t = targets_mib(&vms, 1000, 0.75);
        assert!(
            (259..=260).contains(&t[0]) && (739..=740).contains(&t[1]),
            "{t:?}"
        );
    }

    #[test]
    fn a_busy_vm_is_not_taxed_for_growing() {
        // B holds 200 MiB, all active: memory beyond that costs it f + k(1−f) = 1 a byte.
        // A: 25 + 4·(P_A − 25) = P_B and P_A + P_B = 900 → P_A = 195.
        let vms = [
            vm("a", 0, 1000, 1000, 500, 0.05),
            vm("b", 0, 1000, 1000, 200, 1.0),
        ];
        let t = targets_mib(&vms, 900, 0.75);
        assert!(
            (194..=195).contains(&t[0]) && (704..=705).contains(&t[1]),
            "{t:?}"
        );
    }

    #[test]
    fn bounds_hold_and_the_rest_is_shared() {
        let vms = [
            vm("a", 600, 1000, 1000, 1000, 1.0),
            vm("b", 0, 150, 1000, 150, 1.0),
            vm("c", 0, 1000, 1000, 1000, 1.0),
        ];
        // a is held at its min 600, b capped at 150, c gets the remaining 250.
        assert_eq!(targets_mib(&vms, 1000, 0.0), [600, 150, 250]);
        // everything fits: everyone at max
        assert_eq!(targets_mib(&vms, 3000, 0.75), [1000, 150, 1000]);
    }

    #[test]
    fn mins_that_do_not_fit_are_kept_and_flagged() {
        let vms = [vm("a", 600, 1000, 1, 0, 1.0), vm("b", 600, 1000, 1, 0, 1.0)];
        let (targets, flagged) = allocate(&vms, 1000 * MIB, &PolicyConfig::default());
        assert!(flagged);
        assert!(targets.iter().all(|t| t.target_bytes == 600 * MIB));
    }

    #[test]
    fn a_vm_needing_less_than_its_share_leaves_the_surplus() {
        let mut idle = vm("c", 0, 1000, 1000, 100, 1.0);
        // the guest uses 100 MiB of its 1000 and may grow by 5 %: demand 150 MiB
        idle.guest_free_bytes = Some(900 * MIB);
        let vms = [
            vm("a", 0, 1000, 1000, 1000, 1.0),
            vm("b", 0, 1000, 1000, 1000, 1.0),
            idle,
        ];
        assert_eq!(targets_mib(&vms, 1200, 0.0), [525, 525, 150]);
        // with room for every demand the rest goes out by shares again
        assert_eq!(targets_mib(&vms, 2400, 0.0), [1000, 1000, 400]);
    }

    #[test]
    fn zero_shares_are_reclaimed_first() {
        let vms = [
            vm("a", 100, 1000, 0, 1000, 1.0),
            vm("b", 0, 1000, 1, 1000, 1.0),
        ];
        assert_eq!(targets_mib(&vms, 1000, 0.75), [100, 900]);
    }

    #[test]
    fn equal_vms_get_equal_targets() {
        let vms: Vec<VmInput> = (0..3)
            .map(|i| vm(&format!("v{i}"), 0, 1000, 7, 1000, 0.5))
            .collect();
        let t = targets_mib(&vms, 1000, 0.75);
        assert!(t.iter().all(|&x| x == t[0]), "{t:?}");
    }
}
