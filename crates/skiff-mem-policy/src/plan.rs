//! One period of the memory manager: inputs in, targets, state and actions out.

use serde::{Deserialize, Serialize};

use crate::actions::{actions_for, Action};
use crate::allocation::{allocate, VmTarget};
use crate::config::{ConfigError, PolicyConfig};
use crate::input::{validate_all, HostInput, InputError, VmInput};
use crate::saturating_sum;
use crate::state::FreeState;

/// The policy with its one piece of memory: the free-memory state (for hysteresis).
#[derive(Clone, Debug)]
pub struct MemoryPolicy {
    config: PolicyConfig,
    state: FreeState,
}

/// What one period decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub state: FreeState,
    /// Guest memory the targets share: the budget less the VMs' overheads less the free
    /// memory the high threshold keeps (targets aim to bring free memory back above it).
    pub allocatable_bytes: u64,
    /// The VMs' mins alone exceed what is allocatable: every target is its min.
    pub mins_exceed_budget: bool,
    pub vms: Vec<VmPlan>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmPlan {
    #[serde(flatten)]
    pub target: VmTarget,
    /// In the order they should be carried out.
    pub actions: Vec<Action>,
}

impl MemoryPolicy {
    pub fn new(config: PolicyConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(MemoryPolicy {
            config,
            state: FreeState::High,
        })
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    pub fn state(&self) -> FreeState {
        self.state
    }

    /// Decide this period: move the free-memory state, compute every VM's target and the
    /// actions that bring it there. A bad input changes nothing and is reported.
    pub fn plan(&mut self, host: &HostInput, vms: &[VmInput]) -> Result<Plan, InputError> {
        validate_all(vms)?;
        let state = self
            .state
            .next(host.free_bytes, host.budget_bytes, &self.config.thresholds);
        let allocatable = allocatable_bytes(&self.config, host.budget_bytes, vms);
        let (targets, mins_exceed_budget) = allocate(vms, allocatable, &self.config);

        // Hypervisor reclaim draws on one pool of swap: lowest ρ first, as ESX reclaims.
        let mut order: Vec<usize> = (0..vms.len()).collect();
        order.sort_by(|&a, &b| {
            let rho = |i: usize| targets[i].rho.unwrap_or(f64::INFINITY);
            rho(a)
                .total_cmp(&rho(b))
                .then_with(|| vms[a].id.cmp(&vms[b].id))
        });
        let mut swap_free = host.swap_free_bytes;
        let mut actions = vec![Vec::new(); vms.len()];
        for i in order {
            actions[i] = actions_for(&vms[i], targets[i].target_bytes, state, &mut swap_free);
        }

        self.state = state;
        Ok(Plan {
            state,
            allocatable_bytes: allocatable,
            mins_exceed_budget,
            vms: targets
                .into_iter()
                .zip(actions)
                .map(|(target, actions)| VmPlan { target, actions })
                .collect(),
        })
    }
}

/// The budget less overheads less the high threshold's free memory.
fn allocatable_bytes(config: &PolicyConfig, budget: u64, vms: &[VmInput]) -> u64 {
    let overheads = saturating_sum(vms.iter().map(|vm| vm.overhead_bytes));
    let kept_free = (budget as f64 * config.thresholds.high).ceil() as u64;
    budget.saturating_sub(overheads).saturating_sub(kept_free)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::BalloonInput;

    const MIB: u64 = 1 << 20;

    fn ballooned_vm(id: &str, allocated_mib: u64, f: f64) -> VmInput {
        VmInput {
            allocated_bytes: allocated_mib * MIB,
            active_fraction: Some(f),
            balloon: Some(BalloonInput {
                target_bytes: 0,
                actual_bytes: 0,
            }),
            overhead_bytes: 20 * MIB,
            ..VmInput::new(id, 64 * MIB, 1024 * MIB, 1000)
        }
    }

    #[test]
    fn targets_leave_the_high_thresholds_free_memory() {
        let mut policy = MemoryPolicy::new(PolicyConfig::default()).expect("config");
        let host = HostInput {
            budget_bytes: 1000 * MIB,
            free_bytes: 500 * MIB,
            swap_free_bytes: 0,
        };
        let vms = [ballooned_vm("a", 500, 1.0), ballooned_vm("b", 0, 1.0)];
        let plan = policy.plan(&host, &vms).expect("plan");
        assert_eq!(plan.state, FreeState::High);
        // 1000 − 2·20 overhead − 60 kept free
        assert_eq!(plan.allocatable_bytes, 900 * MIB);
        let sum: u64 = plan.vms.iter().map(|v| v.target.target_bytes).sum();
        assert!(sum <= 900 * MIB && sum > 899 * MIB, "{sum}");
        assert!(plan.vms.iter().all(|v| v.actions.is_empty()));
    }

    #[test]
    fn pressure_turns_into_balloon_requests_and_back() {
        let mut policy = MemoryPolicy::new(PolicyConfig::default()).expect("config");
        let mut host = HostInput {
            budget_bytes: 1000 * MIB,
            free_bytes: 30 * MIB,
            swap_free_bytes: 0,
        };
        let vms = [
            ballooned_vm("idle", 480, 0.05),
            ballooned_vm("busy", 450, 1.0),
        ];
        let plan = policy.plan(&host, &vms).expect("plan");
        assert_eq!(plan.state, FreeState::Soft);
        let idle = &plan.vms[0];
        let busy = &plan.vms[1];
        assert!(idle.target.target_bytes < busy.target.target_bytes);
        assert_eq!(
            idle.actions,
            [Action::SetBalloon {
                bytes: 1024 * MIB - idle.target.target_bytes
            }]
        );
        // free memory back to 5 %: still soft (hysteresis), then 7 %: high
        host.free_bytes = 50 * MIB;
        assert_eq!(
            policy.plan(&host, &vms).expect("plan").state,
            FreeState::Soft
        );
        host.free_bytes = 70 * MIB;
        assert_eq!(
            policy.plan(&host, &vms).expect("plan").state,
            FreeState::High
        );
    }

    #[test]
    fn a_bad_input_leaves_the_state_alone() {
        let mut policy = MemoryPolicy::new(PolicyConfig::default()).expect("config");
        let host = HostInput {
            budget_bytes: 1000 * MIB,
            free_bytes: 0,
            swap_free_bytes: 0,
        };
        let bad = VmInput::new("x", 2, 1, 1);
        assert!(policy.plan(&host, &[bad]).is_err());
        assert_eq!(policy.state(), FreeState::High);
    }

    #[test]
    fn swap_goes_to_the_lowest_rho_first() {
        let mut policy = MemoryPolicy::new(PolicyConfig::default()).expect("config");
        let host = HostInput {
            budget_bytes: 1000 * MIB,
            free_bytes: 5 * MIB,
            swap_free_bytes: 50 * MIB,
        };
        let vms = [
            ballooned_vm("busy", 500, 1.0),
            ballooned_vm("idle", 500, 0.0),
        ];
        let plan = policy.plan(&host, &vms).expect("plan");
        assert_eq!(plan.state, FreeState::Low);
        assert!(plan.vms[1]
            .actions
            .contains(&Action::HypervisorReclaim { bytes: 50 * MIB }));
        assert!(!plan.vms[0]
            .actions
            .iter()
            .any(|a| matches!(a, Action::HypervisorReclaim { .. })));
    }
}
