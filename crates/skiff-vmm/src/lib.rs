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
pub mod vm;

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
