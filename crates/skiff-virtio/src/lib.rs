//! Virtio devices for Skiff and the virtio-pci (modern, 1.x) transport that puts them on
//! the PCI bus.
//!
//! - [`transport`]: the PCI function: virtio capabilities, common configuration (feature
//!   negotiation, status, queue setup), notifications, ISR and MSI-X.
//! - [`device`]: the [`VirtioDevice`] trait and the explicit [`DeviceState`].
//! - [`queue`] and [`chain`]: queue draining and descriptor-chain validation as pure
//!   functions over guest memory, so that fuzz targets can drive them without KVM.
//! - [`worker`]: the event-loop thread each device runs on (not the vCPU threads).
//! - [`devices`]: one folder per device.

pub mod chain;
pub mod device;
pub mod devices;
pub mod features;
pub mod interrupt;
pub mod memory;
pub mod queue;
pub mod transport;
pub mod worker;

pub use device::{Activation, DeviceState, VirtioDevice};
pub use interrupt::VirtioInterrupt;
pub use memory::{GuestMemoryProvider, SharedMemory};
pub use transport::{NotifyRegistrar, VirtioPciDevice};
