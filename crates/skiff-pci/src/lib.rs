//! A PCI root bus for a VMM, independent of KVM: configuration space reached through the
//! legacy 0xCF8/0xCFC ports or ECAM, memory BARs assigned in a host-bridge window, and
//! MSI-X with its table and pending bits. Interrupt delivery is left to an [`MsiRouter`]
//! that the VMM implements (KVM irqfd + GSI routing).

pub mod allocator;
pub mod config;
pub mod device;
pub mod msix;
pub mod root;

pub use allocator::BarAllocator;
pub use config::{BarKind, BarSpec, ConfigSpace, PciHeader};
pub use device::PciDevice;
pub use msix::{MsiMessage, MsiRouter, MsixState};
pub use root::{PciRoot, ECAM_BUS_SIZE};

/// Why a device cannot be put on the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("BAR {0} does not exist or is taken")]
    BarIndex(usize),
    #[error("BAR size {0:#x} is not a power of two of at least 4 KiB")]
    BarSize(u64),
    #[error("the PCI memory window has no room for a BAR of {0:#x} bytes")]
    NoSpace(u64),
    #[error("all 31 device slots on bus 0 are taken")]
    SlotsFull,
    #[error("no room left in configuration space for a {0}-byte capability")]
    CapabilitySpace(usize),
}

/// Standard configuration-space offsets and bits.
pub mod regs {
    pub const VENDOR_ID: usize = 0x00;
    pub const COMMAND: usize = 0x04;
    pub const STATUS: usize = 0x06;
    pub const REVISION: usize = 0x08;
    pub const CACHE_LINE: usize = 0x0c;
    pub const LATENCY_TIMER: usize = 0x0d;
    pub const HEADER_TYPE: usize = 0x0e;
    pub const BAR0: usize = 0x10;
    pub const SUBSYSTEM_VENDOR: usize = 0x2c;
    pub const CAPABILITIES: usize = 0x34;
    pub const INTERRUPT_LINE: usize = 0x3c;
    pub const FIRST_CAPABILITY: usize = 0x40;

    pub const COMMAND_MEMORY: u16 = 1 << 1;
    pub const STATUS_CAP_LIST: u16 = 1 << 4;
    pub const CAP_ID_MSIX: u8 = 0x11;
    pub const CAP_ID_VENDOR: u8 = 0x09;
}
