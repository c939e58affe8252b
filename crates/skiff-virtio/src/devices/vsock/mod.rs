//! virtio-vsock (virtio ID 19) on the host kernel's vhost-vsock.
//!
//! The kernel (`/dev/vhost-vsock`) moves the data of the receive and transmit queues;
//! host programs reach the guest with ordinary `AF_VSOCK` sockets (the guest's CID, any
//! port), and the guest reaches the host at CID 2. The VMM gives vhost the guest's memory
//! table and the rings, forwards the driver's notifications to vhost's kick eventfds and
//! vhost's call eventfds to MSI-X (both on the device's worker, so masking stays in one
//! place). The event queue stays in user space: Skiff never posts events (they report
//! a transport reset, which only live migration needs).

mod device;
mod memory;

pub use device::{Vsock, VsockError};

pub const DEVICE_TYPE: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
pub const QUEUE_SIZE: u16 = 256;
/// Receive and transmit: the queues vhost runs.
pub const VHOST_QUEUES: usize = 2;
/// The event queue (the third) is the VMM's.
pub const QUEUES: usize = 3;
/// CIDs 0-2 are reserved (hypervisor, local, host); u32::MAX is `VMADDR_CID_ANY`.
pub const MIN_CID: u64 = 3;
pub const MAX_CID: u64 = u32::MAX as u64 - 1;
