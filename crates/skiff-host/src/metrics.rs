//! Prometheus text exposition (format 0.0.4) of the host and its VMs.

use std::fmt::Write;

use skiff_mem_policy::FreeState;

use crate::model::{HostMemoryStatus, HostStatus, VmInfo, VmMemoryStatus, VmState};

/// Renders one sample per VM and metric; `cpu_seconds` is the VMM's CPU time when it runs.
pub fn render(vms: &[(VmInfo, Option<f64>)], host: &HostStatus) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let vm_label = |vm: &VmInfo| format!("{{vm=\"{}\"}}", vm.name);
    family(
        "skiff_host_memory_total_bytes",
        "gauge",
        "Host memory (MemTotal).",
        vec![(String::new(), host.memory_total_bytes.to_string())],
    );
    family(
        "skiff_host_memory_available_bytes",
        "gauge",
        "Host memory available without swapping (MemAvailable).",
        vec![(String::new(), host.memory_available_bytes.to_string())],
    );
    family(
        "skiff_vm_state",
        "gauge",
        "1 for the VM's current state, 0 for the others.",
        vms.iter()
            .flat_map(|(vm, _)| {
                VmState::ALL.iter().map(move |s| {
                    (
                        format!("{{vm=\"{}\",state=\"{}\"}}", vm.name, s.as_str()),
                        u8::from(vm.state == *s).to_string(),
                    )
                })
            })
            .collect(),
    );
    family(
        "skiff_vm_vcpus",
        "gauge",
        "Configured vCPUs.",
        vms.iter()
            .map(|(vm, _)| (vm_label(vm), vm.spec.vcpus.to_string()))
            .collect(),
    );
    family(
        "skiff_vm_memory_configured_bytes",
        "gauge",
        "Configured guest memory (the most the guest can have).",
        vms.iter()
            .map(|(vm, _)| (vm_label(vm), vm.spec.memory.size.bytes().to_string()))
            .collect(),
    );
    family(
        "skiff_vm_memory_balloon_bytes",
        "gauge",
        "Memory the balloon currently takes from the guest (running VMs with a balloon).",
        vms.iter()
            .filter_map(|(vm, _)| {
                let balloon = vm.stats.as_ref()?.balloon.as_ref()?;
                Some((vm_label(vm), balloon.actual_bytes.to_string()))
            })
            .collect(),
    );
    family(
        "skiff_vm_memory_resident_bytes",
        "gauge",
        "The VMM process's resident set (running VMs).",
        vms.iter()
            .filter_map(|(vm, _)| {
                Some((vm_label(vm), vm.stats.as_ref()?.vmm_rss_bytes.to_string()))
            })
            .collect(),
    );
    let managed = |field: fn(&VmMemoryStatus) -> u64| -> Vec<(String, String)> {
        vms.iter()
            .filter_map(|(vm, _)| Some((vm_label(vm), field(vm.memory.as_ref()?).to_string())))
            .collect()
    };
    type VmField = fn(&VmMemoryStatus) -> u64;
    let vm_memory: [(&str, &str, VmField); 6] = [
        (
            "skiff_vm_memory_target_bytes",
            "What the memory manager wants the VM to hold.",
            |m| m.target_bytes,
        ),
        (
            "skiff_vm_memory_allocated_bytes",
            "Guest memory backed by host memory, as the memory manager counted it.",
            |m| m.allocated_bytes,
        ),
        (
            "skiff_vm_memory_active_bytes",
            "The actively used part of the allocated memory (working-set estimate).",
            |m| m.active_bytes,
        ),
        (
            "skiff_vm_memory_shared_bytes",
            "Guest memory merged with other pages by KSM.",
            |m| m.shared_bytes,
        ),
        (
            "skiff_vm_memory_min_bytes",
            "Memory reserved for the VM, never reclaimed.",
            |m| m.min_bytes,
        ),
        ("skiff_vm_memory_shares", "The VM's memory shares.", |m| {
            m.shares
        }),
    ];
    for (name, help, field) in vm_memory {
        family(name, "gauge", help, managed(field));
    }
    let host_memory = |field: fn(&HostMemoryStatus) -> u64| -> Vec<(String, String)> {
        host.memory
            .iter()
            .map(|m| (String::new(), field(m).to_string()))
            .collect()
    };
    type HostField = fn(&HostMemoryStatus) -> u64;
    let host_fields: [(&str, &str, HostField); 2] = [
        (
            "skiff_host_memory_budget_bytes",
            "Host memory Skiff's VMs may use altogether.",
            |m| m.budget_bytes,
        ),
        (
            "skiff_host_memory_free_bytes",
            "The part of the budget not in use.",
            |m| m.free_bytes,
        ),
    ];
    for (name, help, field) in host_fields {
        family(name, "gauge", help, host_memory(field));
    }
    family(
        "skiff_host_ksm_saved_bytes",
        "gauge",
        "Host memory saved by KSM page sharing (pages_sharing × 4 KiB).",
        host.memory
            .iter()
            .filter_map(|m| Some((String::new(), m.ksm.as_ref()?.saved_bytes.to_string())))
            .collect(),
    );
    family(
        "skiff_host_memory_state",
        "gauge",
        "1 for the memory manager's current free-memory state, 0 for the others.",
        host.memory
            .iter()
            .flat_map(|m| {
                FreeState::ALL.iter().map(move |s| {
                    (
                        format!("{{state=\"{}\"}}", s.as_str()),
                        u8::from(m.state == *s).to_string(),
                    )
                })
            })
            .collect(),
    );
    family(
        "skiff_vm_cpu_seconds_total",
        "counter",
        "CPU time of the VM's VMM process (all threads; jailed, not its supervisor) since it started.",
        vms.iter()
            .filter_map(|(vm, cpu)| Some((vm_label(vm), format!("{:.3}", (*cpu)?))))
            .collect(),
    );
    family(
        "skiff_vm_restarts_total",
        "counter",
        "Restarts by the restart policy since the VM was last started on request.",
        vms.iter()
            .map(|(vm, _)| (vm_label(vm), vm.restarts.to_string()))
            .collect(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Desired;

    #[test]
    fn every_vm_has_its_samples() {
        let spec =
            skiff_api::VmSpec::from_json(r#"{"name":"a","kernel":"/k","memory":"64M","vcpus":2}"#)
                .expect("spec");
        let vm = VmInfo {
            name: "a".into(),
            state: VmState::Running,
            desired: Desired::Running,
            spec,
            pid: Some(10),
            vmm_pid: Some(11),
            jail: None,
            restarts: 1,
            reason: None,
            stats: None,
            console: crate::model::ConsoleFiles {
                input: "/s/in".into(),
                log: "/s/log".into(),
            },
            memory: Some(VmMemoryStatus {
                min_bytes: 16,
                max_bytes: 64,
                shares: 1000,
                target_bytes: 48,
                allocated_bytes: 50,
                active_bytes: 20,
                ballooned_bytes: 16,
                shared_bytes: 4,
                demand_bytes: 64,
                paused_by_manager: false,
                reclaim_wanted_bytes: 0,
            }),
            addresses: Vec::new(),
        };
        let host = HostStatus {
            version: "0".into(),
            pid: 1,
            uptime_secs: 0,
            state_dir: "/s".into(),
            vms: 1,
            running: 1,
            memory_total_bytes: 1000,
            memory_available_bytes: 500,
            memory: Some(HostMemoryStatus {
                budget_bytes: 900,
                free_bytes: 30,
                allocatable_bytes: 800,
                state: FreeState::Soft,
                swap_free_bytes: 0,
                mins_exceed_budget: false,
                ksm: Some(crate::model::KsmStatus {
                    running: true,
                    managed: true,
                    pages_to_scan: 100,
                    sleep_millisecs: 20,
                    pages_shared: 3,
                    pages_sharing: 12,
                    saved_bytes: 12 * 4096,
                }),
            }),
        };
        let text = render(&[(vm, Some(1.5))], &host);
        for line in [
            "skiff_host_memory_total_bytes 1000",
            "skiff_host_memory_available_bytes 500",
            "skiff_vm_state{vm=\"a\",state=\"running\"} 1",
            "skiff_vm_state{vm=\"a\",state=\"stopped\"} 0",
            "skiff_vm_vcpus{vm=\"a\"} 2",
            "skiff_vm_memory_configured_bytes{vm=\"a\"} 67108864",
            "skiff_vm_cpu_seconds_total{vm=\"a\"} 1.500",
            "skiff_vm_restarts_total{vm=\"a\"} 1",
            "# TYPE skiff_vm_cpu_seconds_total counter",
            "skiff_vm_memory_target_bytes{vm=\"a\"} 48",
            "skiff_vm_memory_active_bytes{vm=\"a\"} 20",
            "skiff_vm_memory_shared_bytes{vm=\"a\"} 4",
            "skiff_host_memory_budget_bytes 900",
            "skiff_host_memory_free_bytes 30",
            "skiff_host_memory_state{state=\"soft\"} 1",
            "skiff_host_ksm_saved_bytes 49152",
            "skiff_host_memory_state{state=\"high\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }
}
