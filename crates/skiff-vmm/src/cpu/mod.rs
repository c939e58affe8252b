//! vCPUs: their boot configuration and the run loop that turns KVM exits into device I/O.

pub mod cpuid;
pub mod msrs;
pub mod run_control;

use std::sync::Arc;

use kvm_bindings::{kvm_fpu, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::boot::entry::{self, EntryPoint};
use crate::devices::IoBus;
use crate::exit::{ExitSender, VmExit};
use crate::mmio::MmioBus;
use run_control::RunControl;

/// Local APIC register offsets and delivery modes for LINT0/LINT1, as firmware sets them:
/// LINT0 passes the 8259's interrupts through (ExtINT), LINT1 is the NMI line.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;

#[derive(Debug, thiserror::Error)]
#[error("cannot configure vCPU {vcpu}: {what}: {source}")]
pub struct VcpuSetupError {
    pub vcpu: u32,
    pub what: &'static str,
    pub source: kvm_ioctls::Error,
}

pub struct Vcpu {
    id: u32,
    fd: VcpuFd,
    io: Arc<IoBus>,
    mmio: Arc<MmioBus>,
    exits: ExitSender,
    control: Arc<RunControl>,
}

impl Vcpu {
    pub fn new(
        id: u32,
        fd: VcpuFd,
        io: Arc<IoBus>,
        exits: ExitSender,
        control: Arc<RunControl>,
    ) -> Self {
        Vcpu {
            id,
            fd,
            io,
            mmio: Arc::new(MmioBus::default()),
            exits,
            control,
        }
    }

    /// Connects the MMIO bus (PCI ECAM and BARs); without it MMIO reads float high.
    pub fn set_mmio_bus(&mut self, mmio: Arc<MmioBus>) {
        self.mmio = mmio;
    }

    /// Sets CPUID, MSRs, FPU and LAPIC; the boot vCPU also gets the kernel's entry state.
    /// The others wait, as on real hardware, for the boot vCPU's INIT/SIPI.
    pub fn configure(
        &mut self,
        supported_cpuid: &CpuId,
        vcpus: u32,
        entry: Option<&EntryPoint>,
    ) -> Result<(), VcpuSetupError> {
        let err = |what| {
            let vcpu = self.id;
            move |source| VcpuSetupError { vcpu, what, source }
        };
        let cpuid = cpuid::guest_cpuid(supported_cpuid, self.id, vcpus);
        self.fd.set_cpuid2(&cpuid).map_err(err("set CPUID"))?;

        let msrs = msrs::boot_msrs().map_err(|_| VcpuSetupError {
            vcpu: self.id,
            what: "build MSR list",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let written = self.fd.set_msrs(&msrs).map_err(err("set MSRs"))?;
        if written != msrs.as_slice().len() {
            let index = msrs.as_slice().get(written).map_or(0, |m| m.index);
            log::warn!("vCPU {}: KVM refused MSR {index:#x}", self.id);
        }

        let fpu = kvm_fpu {
            fcw: FPU_CONTROL_WORD,
            mxcsr: MXCSR_DEFAULT,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(err("set FPU"))?;

        let mut lapic = self.fd.get_lapic().map_err(err("get LAPIC"))?;
        set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
        self.fd.set_lapic(&lapic).map_err(err("set LAPIC"))?;

        if let Some(entry) = entry {
            let sregs = self.fd.get_sregs().map_err(err("get special registers"))?;
            self.fd
                .set_sregs(&entry::boot_sregs(entry, sregs))
                .map_err(err("set special registers"))?;
            self.fd
                .set_regs(&entry::boot_regs(entry))
                .map_err(err("set registers"))?;
        }
        Ok(())
    }

    /// Runs the vCPU until the guest stops it or something fails; reports why.
    /// Must be called on the vCPU's own thread.
    pub fn run(mut self) {
        run_control::register_vcpu_thread(self.fd.get_kvm_run());
        let exit = loop {
            self.control.park_if_paused();
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => self.io.read(port, data),
                Ok(VcpuExit::IoOut(port, data)) => self.io.write(port, data),
                Ok(VcpuExit::MmioRead(addr, data)) => self.mmio.read(addr, data),
                Ok(VcpuExit::MmioWrite(addr, data)) => self.mmio.write(addr, data),
                Ok(VcpuExit::Hlt) => {}
                Ok(VcpuExit::Shutdown) => {
                    self.log_state("triple fault");
                    break VmExit::TripleFault { vcpu: self.id };
                }
                Ok(VcpuExit::FailEntry(reason, _)) => {
                    break VmExit::FailEntry {
                        vcpu: self.id,
                        reason,
                    }
                }
                Ok(VcpuExit::InternalError) => {
                    break VmExit::KvmInternalError {
                        vcpu: self.id,
                        suberror: self.internal_suberror(),
                    }
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => break VmExit::PowerOff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => break VmExit::Reset,
                    kvm_bindings::KVM_SYSTEM_EVENT_CRASH => break VmExit::Panic,
                    other => log::debug!("vCPU {}: ignored system event {other}", self.id),
                },
                Ok(other) => {
                    break VmExit::VcpuError {
                        vcpu: self.id,
                        error: format!("unexpected KVM exit {other:?}"),
                    }
                }
                // A kick (pause) or another signal: clear the kick and look at the state.
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => {
                    break VmExit::VcpuError {
                        vcpu: self.id,
                        error: format!("KVM_RUN failed: {e}"),
                    }
                }
            }
        };
        self.exits.send(exit);
    }

    /// Logs where the guest was when it stopped abnormally: what a bug report needs.
    fn log_state(&self, what: &str) {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            // KVM on AMD resets a vCPU after a shutdown intercept (the VMCB is undefined
            // then): its registers are the reset vector's, not the fault's.
            (Ok(r), Ok(s)) if r.rip == 0xfff0 && s.cs.selector == 0xf000 => log::error!(
                "vCPU {} {what}; KVM reset the vCPU, so its state at the fault is lost",
                self.id
            ),
            (Ok(r), Ok(s)) => log::error!(
                "vCPU {} {what} at rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} cr0={:#x} \
                 cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} idt={:#x}+{:#x}",
                self.id,
                r.rip,
                r.rsp,
                r.rflags,
                s.cs.selector,
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4,
                s.efer,
                s.idt.base,
                s.idt.limit
            ),
            (Err(e), _) | (_, Err(e)) => {
                log::error!("vCPU {} {what}; cannot read its registers: {e}", self.id)
            }
        }
    }

    fn internal_suberror(&mut self) -> u32 {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM filled the `internal` member of the exit union, as the exit reason
        // (KVM_EXIT_INTERNAL_ERROR) says.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let bytes: [u8; 4] = std::array::from_fn(|i| regs[offset + i] as u8);
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
        regs[offset + i] = b as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_mode_replaces_only_the_delivery_mode() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x30;
        regs[APIC_LVT0 + 1] = 0x01; // fixed mode bits set, vector 0x30, mask bit clear
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        let value = u32::from_le_bytes(std::array::from_fn(|i| regs[APIC_LVT0 + i] as u8));
        assert_eq!(value, 0x730);
    }
}
