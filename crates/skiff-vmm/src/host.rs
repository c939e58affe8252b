//! What the host can give: a usable KVM, vCPUs and memory. Each refusal is one clear line.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

const KVM_DEVICE: &str = "/dev/kvm";
/// Present when /dev/kvm is the paravirtual KVM, which has no hardware virtualization.
const KVM_PVM_MODULE: &str = "/sys/module/kvm_pvm";

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{KVM_DEVICE} does not exist: this host has no KVM (load kvm-intel or kvm-amd, or run Skiff inside the emulated host: cargo xtask host)")]
    NoKvm,
    #[error("permission denied opening {KVM_DEVICE}: run as root or join the group that owns it")]
    KvmPermission,
    #[error("cannot open {KVM_DEVICE}: {0}")]
    KvmOpen(kvm_ioctls::Error),
    #[error("this host's KVM is kvm_pvm, without hardware virtualization: a stock Linux guest would boot extremely slowly; run Skiff inside the emulated AMD-V host (cargo xtask host) or on a machine with VT-x/AMD-V (--allow-slow-kvm overrides)")]
    NoHardwareVirtualization,
    #[error("this KVM lacks {0}, which Skiff needs")]
    MissingCapability(&'static str),
    #[error("{requested} vCPUs requested, but this host's KVM allows at most {max}")]
    TooManyVcpus { requested: u32, max: u32 },
    #[error("{requested_mib} MiB of guest memory requested, but this host has only {host_mib} MiB of RAM and swap")]
    NotEnoughMemory { requested_mib: u64, host_mib: u64 },
}

/// Opens KVM and checks that it can run a Linux guest at useful speed.
pub fn open_kvm(allow_slow: bool) -> Result<Kvm, HostError> {
    if !allow_slow && Path::new(KVM_PVM_MODULE).exists() {
        return Err(HostError::NoHardwareVirtualization);
    }
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => HostError::NoKvm,
        libc::EACCES | libc::EPERM => HostError::KvmPermission,
        _ => HostError::KvmOpen(e),
    })?;
    let required = [
        (Cap::Irqchip, "an in-kernel irqchip (KVM_CAP_IRQCHIP)"),
        (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
        (Cap::Ioeventfd, "ioeventfd (KVM_CAP_IOEVENTFD)"),
        (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
        (Cap::UserMemory, "user memory slots (KVM_CAP_USER_MEMORY)"),
        (Cap::ExtCpuid, "KVM_GET_SUPPORTED_CPUID (KVM_CAP_EXT_CPUID)"),
        (Cap::SetTssAddr, "KVM_SET_TSS_ADDR"),
    ];
    for (cap, name) in required {
        if !kvm.check_extension(cap) {
            return Err(HostError::MissingCapability(name));
        }
    }
    Ok(kvm)
}

pub fn check_vcpus(kvm: &Kvm, requested: u32) -> Result<(), HostError> {
    let max = kvm.get_max_vcpus() as u32;
    if requested > max {
        return Err(HostError::TooManyVcpus { requested, max });
    }
    Ok(())
}

/// Refuses guests bigger than all the host's RAM and swap together: such a guest could
/// never be backed, however memory is shared or reclaimed.
pub fn check_memory(requested: u64) -> Result<(), HostError> {
    let Some(host) = host_memory_and_swap() else {
        return Ok(()); // no /proc/meminfo: let mmap decide
    };
    if requested > host {
        return Err(HostError::NotEnoughMemory {
            requested_mib: requested >> 20,
            host_mib: host >> 20,
        });
    }
    Ok(())
}

fn host_memory_and_swap() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = meminfo_kib(&text, "MemTotal")?;
    let swap = meminfo_kib(&text, "SwapTotal").unwrap_or(0);
    Some((total + swap) * 1024)
}

/// A field of /proc/meminfo, in KiB.
pub fn meminfo_kib(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meminfo_fields() {
        let text = "MemTotal:       24576000 kB\nMemFree:  100 kB\nSwapTotal:  0 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal"), Some(24_576_000));
        assert_eq!(meminfo_kib(text, "SwapTotal"), Some(0));
        assert_eq!(meminfo_kib(text, "Mem"), None);
    }

    #[test]
    fn absurd_memory_is_refused() {
        let err = check_memory(1 << 60).expect_err("no host has an exabyte");
        assert!(err.to_string().contains("MiB of RAM and swap"), "{err}");
    }
}
