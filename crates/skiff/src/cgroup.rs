//! `skiff run --cgroup NAME`: the VMM moves itself into its VM's control group
//! (`skiff/NAME`) before it starts any thread, so every vCPU and device thread is born there
//! and the spec's `cpu` weight and limit cover the whole VM, and its memory is limited to the
//! guest's plus the VMM's overhead bound (`skiff_api::memory::vm_memory_limit`).

use anyhow::{Context, Result};
use clap::Args;
use skiff_api::CpuSpec;
use skiff_cgroups::{Cgroup, CpuQuota, Hierarchy};

#[derive(Args)]
pub struct CgroupArgs {
    /// Run this VMM in the control group skiff/NAME (created if missing; cgroup v1 or v2),
    /// with the spec's `cpu` shares and quota.
    #[arg(long, value_name = "NAME")]
    cgroup: Option<String>,
    /// CPU weight against other VMs, in shares (2 to 262144; a VM with 2000 gets twice the
    /// CPU time of one with 1000 when they compete) [default: 1000].
    #[arg(long, value_name = "N", requires = "cgroup")]
    cpu_shares: Option<u64>,
    /// A hard CPU limit in percent of one host CPU (25 = a quarter, 200 = two CPUs).
    #[arg(long, value_name = "PERCENT", requires = "cgroup")]
    cpu_quota: Option<u32>,
}

impl CgroupArgs {
    /// The flags override the spec's `cpu` fields.
    pub fn apply_to(&self, cpu: &mut CpuSpec) {
        if let Some(shares) = self.cpu_shares {
            cpu.shares = Some(shares);
        }
        if let Some(quota) = self.cpu_quota {
            cpu.quota = Some(quota);
        }
    }
}

/// Creates or re-opens the group, sets its CPU controls and memory limit (for a VM of
/// `memory_bytes`) and moves this process into it. Settings not given are reset to their
/// defaults: a re-used group keeps nothing stale. Done before the jail: a VMM its guest took
/// over has neither the capabilities nor the cgroup file system to undo it.
pub fn join(args: &CgroupArgs, cpu: &CpuSpec, memory_bytes: u64) -> Result<Option<Cgroup>> {
    let Some(name) = &args.cgroup else {
        if *cpu != CpuSpec::default() {
            log::warn!("the spec's cpu shares and quota need --cgroup NAME; not applied");
        }
        return Ok(None);
    };
    let hierarchy = Hierarchy::detect_or_mount().context("no usable cgroup hierarchy")?;
    let group = Cgroup::create(&hierarchy, skiff_cgroups::VM_PARENT, name)?;
    let shares = cpu.shares.unwrap_or(skiff_api::DEFAULT_SHARES);
    group.set_cpu_shares(shares)?;
    let quota = cpu.quota.map(CpuQuota::from_percent).transpose()?;
    group.set_cpu_quota(quota)?;
    let limit = skiff_api::memory::vm_memory_limit(memory_bytes);
    match group.set_memory_limit(Some(limit)) {
        Ok(()) => {}
        // A v1 host without the memory controller mounted: nothing to limit with.
        Err(skiff_cgroups::CgroupError::NoController { .. }) => {
            log::warn!("no memory controller: the VM's memory is not limited")
        }
        Err(e) => return Err(e.into()),
    }
    group.add_process(std::process::id())?;
    log::info!(
        "in cgroup {} ({hierarchy}): {shares} shares, quota {}, memory limit {} MiB",
        group.path().display(),
        quota.map_or("none".to_string(), |q| format!("{:.2} CPUs", q.cpus())),
        limit >> 20
    );
    Ok(Some(group))
}

#[cfg(test)]
mod tests {
    /// The spec refuses what the cgroup library would refuse at start-up.
    #[test]
    fn spec_and_cgroups_agree_on_the_shares_range() {
        assert_eq!(
            skiff_api::CPU_SHARES,
            skiff_cgroups::cpu::MIN_SHARES..=skiff_cgroups::cpu::MAX_SHARES
        );
    }
}
