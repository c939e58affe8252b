//! Where guests run: directly on this machine's KVM, or inside the emulated AMD-V host.

use std::path::Path;

use anyhow::{bail, Result};

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum ModeArg {
    Auto,
    Emulated,
    Direct,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Guests run in QEMU/TCG's emulated AMD-V machine (`cargo xtask host`).
    Emulated,
    /// Guests run on this machine's /dev/kvm.
    Direct,
}

impl ModeArg {
    pub fn resolve(self) -> Result<Mode> {
        let support = hardware_kvm();
        match (self, support) {
            (ModeArg::Emulated, _) => Ok(Mode::Emulated),
            (ModeArg::Direct, Ok(())) | (ModeArg::Auto, Ok(())) => Ok(Mode::Direct),
            (ModeArg::Direct, Err(why)) => bail!("--mode direct: {why}"),
            (ModeArg::Auto, Err(why)) => {
                eprintln!("using the emulated AMD-V host: {why}");
                Ok(Mode::Emulated)
            }
        }
    }
}

/// Ok when /dev/kvm is backed by VT-x/AMD-V; otherwise why not.
pub fn hardware_kvm() -> Result<(), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("no /dev/kvm".into());
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Err("/dev/kvm is kvm_pvm (no hardware virtualization)".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !has_flag {
        return Err("the CPU has no vmx/svm flag".into());
    }
    if !Path::new("/sys/module/kvm_intel").exists() && !Path::new("/sys/module/kvm_amd").exists() {
        return Err("neither kvm_intel nor kvm_amd is loaded".into());
    }
    Ok(())
}
