//! The memory manager: each period it turns the VMs' latest figures into the policy's inputs,
//! runs the policy, and carries out its actions through the VMMs' control sockets and the
//! daemon's own pause and resume.

use std::collections::{BTreeMap, BTreeSet};

use skiff_api::control::{ControlRequest, ControlResponse};
use skiff_api::memory::ReclaimMode;
use skiff_mem_policy::{Action, HostInput, KsmTuning, MemoryPolicy, Plan, VmInput, PAGE_SIZE};

use super::config::MemoryConfig;
use super::gather;
use super::ksm::{KsmTuner, KSM_SYSFS};
use super::ManagedHost;
use crate::model::{HostMemoryStatus, VmInfo, VmMemoryStatus, VmState};
use crate::process;

const MIB: u64 = 1 << 20;

pub(super) struct Manager {
    config: MemoryConfig,
    /// `None` when the configuration is invalid: the daemon then only observes.
    policy: Option<MemoryPolicy>,
    /// VMs this manager paused and has not resumed.
    paused: BTreeSet<String>,
    ksm: KsmTuner,
}

/// One thing to do to one VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Balloon { target_mib: u64 },
    Reclaim { bytes: u64 },
    Pause,
    Resume,
}

impl Manager {
    pub(super) fn new(config: MemoryConfig) -> Self {
        let policy = match MemoryPolicy::new(config.policy.clone()) {
            Ok(policy) => Some(policy),
            Err(e) => {
                log::error!("memory manager off: {e}");
                None
            }
        };
        let ksm = KsmTuner::new(KSM_SYSFS.into(), config.manage_ksm, KsmTuning::default());
        Manager {
            config,
            policy,
            paused: BTreeSet::new(),
            ksm,
        }
    }

    /// One period over the VMs' latest stats (sampled just before).
    pub(super) async fn run_period(&mut self, host: &impl ManagedHost) {
        let vms: Vec<VmInfo> = host
            .vms()
            .into_iter()
            .filter(|vm| matches!(vm.state, VmState::Running | VmState::Paused))
            .filter(|vm| vm.stats.is_some())
            .collect();
        self.keep_one_sharing_domain(host, &vms).await;
        let Some(policy) = self.policy.as_mut() else {
            return;
        };
        // A VM resumed by hand, or gone, is no longer ours to resume.
        self.paused.retain(|name| {
            vms.iter()
                .any(|vm| &vm.name == name && vm.state == VmState::Paused)
        });
        let inputs: Vec<VmInput> = vms
            .iter()
            .filter_map(|vm| {
                let stats = vm.stats.as_ref()?;
                let ours = self.paused.contains(&vm.name);
                Some(gather::vm_input(&vm.name, &vm.spec.memory, stats, ours))
            })
            .collect();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |name| process::meminfo_bytes(&meminfo, name).unwrap_or(0);
        let budget = self.config.budget(field("MemTotal"));
        let host_input =
            gather::host_input(budget, &inputs, field("MemAvailable"), field("SwapFree"));
        let before = policy.state();
        let plan = match policy.plan(&host_input, &inputs) {
            Ok(plan) => plan,
            Err(e) => {
                log::warn!("memory manager: {e}");
                return;
            }
        };
        if plan.state != before {
            log::info!(
                "memory: {:?} → {:?}: {} MiB of the {} MiB budget free",
                before,
                plan.state,
                host_input.free_bytes / MIB,
                budget / MIB
            );
        }
        for (name, step) in steps(&plan, &inputs) {
            self.carry_out(host, &vms, &name, step).await;
        }
        let (mut host_status, vm_status) = status(&plan, &inputs, &host_input, &self.paused);
        let mergeable = inputs
            .iter()
            .map(|vm| vm.allocated_bytes / PAGE_SIZE)
            .fold(0, u64::saturating_add);
        let stats: Vec<_> = vms.iter().filter_map(|vm| vm.stats.as_ref()).collect();
        let shareable = gather::shareable_fraction(&stats);
        host_status.ksm = self.ksm.period(super::SAMPLE_PERIOD, mergeable, shareable);
        host.keep_memory_status(host_status, vm_status);
    }

    /// VMs started before (by a daemon with another `--sharing-domain`, or adopted) may be
    /// mergeable outside the host's sharing domain: turn those off first, and only once
    /// none is left turn sharing on for the domain's VMs that lack it, so two domains are
    /// never mergeable at the same time.
    async fn keep_one_sharing_domain(&self, host: &impl ManagedHost, vms: &[VmInfo]) {
        let (off, on) = sharing_changes(&self.config, vms);
        let mut all_off = true;
        for name in off {
            all_off &= set_page_sharing(host, &name, false).await;
        }
        if all_off {
            for name in on {
                set_page_sharing(host, &name, true).await;
            }
        }
    }

    async fn carry_out(&mut self, host: &impl ManagedHost, vms: &[VmInfo], name: &str, step: Step) {
        match step {
            Step::Balloon { target_mib } => {
                if let Some(client) = client_of(host, name) {
                    if let Err(e) = client.balloon(target_mib).await {
                        log::warn!("{name}: balloon to {target_mib} MiB: {e}");
                    }
                }
            }
            Step::Reclaim { bytes } => {
                let Some(client) = client_of(host, name) else {
                    return;
                };
                let request = ControlRequest::Reclaim {
                    bytes,
                    mode: ReclaimMode::Pageout,
                };
                match client.request(&request).await {
                    Ok(ControlResponse::Ok {
                        reclaim: Some(report),
                        ..
                    }) => log::info!(
                        "{name}: paged out {} of {} MiB asked",
                        report.reclaimed_bytes / MIB,
                        bytes / MIB
                    ),
                    Ok(ControlResponse::Error { message }) => {
                        log::warn!("{name}: reclaim refused: {message}")
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!("{name}: reclaim: {e}"),
                }
            }
            Step::Pause => {
                // A VM paused by hand stays so; it is not ours to resume later.
                let running = vms
                    .iter()
                    .any(|vm| vm.name == name && vm.state == VmState::Running);
                if !running {
                    return;
                }
                log::info!("{name}: paused by the memory manager until under its target");
                match host.pause_vm(name).await {
                    Ok(_) => {
                        self.paused.insert(name.to_string());
                    }
                    Err(e) => log::warn!("{name}: cannot pause: {e}"),
                }
            }
            Step::Resume => match host.resume_vm(name).await {
                Ok(_) => {
                    self.paused.remove(name);
                }
                Err(e) => log::warn!("{name}: cannot resume: {e}"),
            },
        }
    }
}

/// The VMs whose page sharing must go off, and those whose may go on, by what each VMM
/// reports and what the host's sharing domain allows.
pub(super) fn sharing_changes(config: &MemoryConfig, vms: &[VmInfo]) -> (Vec<String>, Vec<String>) {
    let mut off = Vec::new();
    let mut on = Vec::new();
    for vm in vms {
        let Some(stats) = &vm.stats else { continue };
        match (stats.sharing.mergeable, config.may_share(&vm.spec.memory)) {
            (true, false) => off.push(vm.name.clone()),
            (false, true) => on.push(vm.name.clone()),
            _ => {}
        }
    }
    (off, on)
}

/// Asks a VMM to turn page sharing on or off; true if it did.
async fn set_page_sharing(host: &impl ManagedHost, name: &str, enabled: bool) -> bool {
    let Some(client) = client_of(host, name) else {
        return false;
    };
    match client
        .request(&ControlRequest::PageSharing { enabled })
        .await
    {
        Ok(ControlResponse::Ok { .. }) => {
            log::info!(
                "{name}: page sharing {}",
                if enabled { "on" } else { "off" }
            );
            true
        }
        Ok(ControlResponse::Error { message }) => {
            log::warn!("{name}: page sharing {enabled}: {message}");
            false
        }
        Err(e) => {
            log::warn!("{name}: page sharing {enabled}: {e}");
            false
        }
    }
}

fn client_of(host: &impl ManagedHost, name: &str) -> Option<crate::vmm::VmmClient> {
    host.vmm_clients()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, client)| client)
}

/// The plan's actions as requests, in the plan's order. A balloon size is rounded *down* to
/// whole MiB (the control protocol's unit), so that a VM never ends below its target, and
/// not sent when that is what the VMM has already been asked for.
pub(super) fn steps(plan: &Plan, inputs: &[VmInput]) -> Vec<(String, Step)> {
    let mut out = Vec::new();
    for (planned, input) in plan.vms.iter().zip(inputs) {
        for action in &planned.actions {
            let step = match *action {
                Action::SetBalloon { bytes } => {
                    let target_mib = bytes / MIB;
                    let asked = input.balloon.map(|b| b.target_bytes);
                    if asked == Some(target_mib * MIB) {
                        continue;
                    }
                    Step::Balloon { target_mib }
                }
                Action::HypervisorReclaim { bytes } => Step::Reclaim { bytes },
                Action::Pause => Step::Pause,
                Action::Resume => Step::Resume,
            };
            out.push((planned.target.id.clone(), step));
        }
    }
    out
}

/// What the API and metrics show of the period.
pub(super) fn status(
    plan: &Plan,
    inputs: &[VmInput],
    host: &HostInput,
    paused: &BTreeSet<String>,
) -> (HostMemoryStatus, BTreeMap<String, VmMemoryStatus>) {
    let host_status = HostMemoryStatus {
        budget_bytes: host.budget_bytes,
        free_bytes: host.free_bytes,
        allocatable_bytes: plan.allocatable_bytes,
        state: plan.state,
        swap_free_bytes: host.swap_free_bytes,
        mins_exceed_budget: plan.mins_exceed_budget,
        ksm: None,
    };
    let vms = plan
        .vms
        .iter()
        .zip(inputs)
        .map(|(planned, input)| {
            let reclaim_wanted_bytes = planned
                .actions
                .iter()
                .map(|a| match a {
                    Action::HypervisorReclaim { bytes } => *bytes,
                    _ => 0,
                })
                .sum();
            let status = VmMemoryStatus {
                min_bytes: input.min_bytes,
                max_bytes: input.max_bytes,
                shares: input.shares,
                target_bytes: planned.target.target_bytes,
                allocated_bytes: input.allocated_bytes,
                active_bytes: planned.target.active_bytes,
                ballooned_bytes: input.ballooned(),
                shared_bytes: input.shared_bytes,
                demand_bytes: planned.target.demand_bytes,
                paused_by_manager: paused.contains(&input.id),
                reclaim_wanted_bytes,
            };
            (input.id.clone(), status)
        })
        .collect();
    (host_status, vms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_mem_policy::{BalloonInput, FreeState, PolicyConfig};

    /// A running VM in `domain` whose VMM reports `mergeable`.
    fn vm_info(name: &str, domain: Option<&str>, page_sharing: bool, mergeable: bool) -> VmInfo {
        let mut spec =
            skiff_api::VmSpec::from_json(r#"{"kernel":"/k","memory":"64M"}"#).expect("spec");
        spec.memory.sharing_domain = domain.map(str::to_string);
        spec.memory.page_sharing = page_sharing;
        let mut stats = super::super::gather::tests::stats();
        stats.sharing.mergeable = mergeable;
        VmInfo {
            name: name.into(),
            state: VmState::Running,
            desired: crate::model::Desired::Running,
            spec,
            pid: Some(10),
            vmm_pid: Some(10),
            jail: None,
            restarts: 0,
            reason: None,
            stats: Some(stats),
            console: crate::model::ConsoleFiles {
                input: "/s/in".into(),
                log: "/s/log".into(),
            },
            memory: None,
            addresses: Vec::new(),
        }
    }

    #[test]
    fn sharing_goes_off_outside_the_host_domain_and_on_inside_it() {
        let config = MemoryConfig {
            sharing_domain: Some("a".into()),
            ..MemoryConfig::default()
        };
        let vms = [
            vm_info("a-on", Some("a"), true, true),
            vm_info("a-off", Some("a"), true, false),
            vm_info("a-opted-out", Some("a"), false, true),
            vm_info("b-on", Some("b"), true, true),
            vm_info("b-off", Some("b"), true, false),
            vm_info("default-on", None, true, true),
        ];
        let (off, on) = sharing_changes(&config, &vms);
        assert_eq!(off, ["a-opted-out", "b-on", "default-on"]);
        assert_eq!(on, ["a-off"]);
        // The default domain: VMs without one share, VMs of any named domain do not.
        let (off, on) = sharing_changes(&MemoryConfig::default(), &vms);
        assert_eq!(off, ["a-on", "a-opted-out", "b-on"]);
        assert!(on.is_empty(), "{on:?}");
    }

    fn vm(name: &str, allocated_mib: u64, asked_mib: u64) -> VmInput {
        VmInput {
            allocated_bytes: allocated_mib * MIB,
            balloon: Some(BalloonInput {
                target_bytes: asked_mib * MIB,
                actual_bytes: asked_mib * MIB,
            }),
            guest_free_bytes: Some(0),
            ..VmInput::new(name, 128 * MIB, 512 * MIB, 1000)
        }
    }

    fn plan_for(inputs: &[VmInput], free_mib: u64) -> (Plan, HostInput) {
        let mut policy = MemoryPolicy::new(PolicyConfig::default()).expect("config");
        let host = gather::host_input(1024 * MIB, inputs, free_mib * MIB, 0);
        (policy.plan(&host, inputs).expect("plan"), host)
    }

    #[test]
    fn balloon_targets_go_out_in_whole_mib_rounded_down() {
        let inputs = [vm("a", 500, 0), vm("b", 500, 0)];
        let (plan, _) = plan_for(&inputs, 100);
        assert_eq!(plan.state, FreeState::Soft);
        let steps = steps(&plan, &inputs);
        assert_eq!(steps.len(), 2, "{steps:?}");
        for ((name, step), planned) in steps.iter().zip(&plan.vms) {
            assert_eq!(name, &planned.target.id);
            let Step::Balloon { target_mib } = *step else {
                panic!("{step:?}")
            };
            // the guest keeps at least its target
            assert!(512 * MIB - target_mib * MIB >= planned.target.target_bytes);
            assert!(512 * MIB - target_mib * MIB < planned.target.target_bytes + MIB);
        }
    }

    #[test]
    fn a_balloon_already_asked_for_is_not_asked_again() {
        let inputs = [vm("a", 500, 0), vm("b", 500, 0)];
        let (plan, _) = plan_for(&inputs, 100);
        let asked: Vec<VmInput> = steps(&plan, &inputs)
            .iter()
            .zip(&inputs)
            .map(|((_, step), input)| match *step {
                Step::Balloon { target_mib } => vm(&input.id, 500, target_mib),
                _ => input.clone(),
            })
            .collect();
        let (plan, _) = plan_for(&asked, 100);
        assert_eq!(steps(&plan, &asked), []);
    }

    #[test]
    fn the_status_carries_the_plan_and_the_inputs() {
        let inputs = [vm("a", 500, 64)];
        let (plan, host) = plan_for(&inputs, 100);
        let paused = BTreeSet::from(["a".to_string()]);
        let (host_status, vms) = status(&plan, &inputs, &host, &paused);
        assert_eq!(host_status.budget_bytes, 1024 * MIB);
        assert_eq!(host_status.state, plan.state);
        let a = &vms["a"];
        assert_eq!(a.target_bytes, plan.vms[0].target.target_bytes);
        assert_eq!(
            (a.ballooned_bytes, a.allocated_bytes),
            (64 * MIB, 500 * MIB)
        );
        assert!(a.paused_by_manager);
    }
}
