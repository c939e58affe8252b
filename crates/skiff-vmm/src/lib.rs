//! Skiff's virtual machine monitor: the user-space half of a KVM hypervisor.
//!
//! A straight line from configuration to a running guest: [`host`] checks what the machine
//! can give, [`memory`] maps guest RAM, [`boot`] loads the kernel, initrd and ACPI tables,
//! [`cpu`] configures and runs the vCPUs, [`devices`] answer the guest's I/O, and [`vm`]
//! assembles them. [`exit`] says why a VM stopped.

pub mod boot;
pub mod control;
pub mod cpu;
pub mod devices;
pub mod exit;
pub mod handle;
pub mod host;
pub mod layout;
pub mod memory;
pub mod mmio;
pub mod pci;
pub mod seccomp;
pub mod vm;

/// Thread stack sizes. Below 2 MiB on purpose: with transparent huge pages a 2 MiB stack
/// mapping gets a whole huge page, which would double a small VMM's resident memory.
pub mod stacks {
    /// vCPU threads: KVM_RUN plus the port/MMIO device emulation they call.
    pub const VCPU: usize = 512 * 1024;
    /// Service threads (console, signals, control socket).
    pub const SERVICE: usize = 128 * 1024;
}

pub use exit::{ExitSender, VmExit};
pub use handle::VmHandle;
pub use vm::{RunningVm, Vm, VmConfig};

/// Why a VM could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    DirtyLog(#[from] memory::dirty_log::DirtyLogError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Vcpu(#[from] cpu::VcpuSetupError),
    #[error("cannot {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    IoBus(#[from] devices::iobus::OverlapError),
    #[error(transparent)]
    Devices(#[from] pci::DeviceError),
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(std::io::Error),
    #[error("cannot open the control socket {path}: {source}")]
    ControlSocket {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl VmmError {
    /// Wraps a KVM ioctl failure with what Skiff was doing.
    pub fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmmError {
        move |source| VmmError::Kvm { what, source }
    }
}
