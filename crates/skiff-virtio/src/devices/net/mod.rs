//! virtio-net (virtio ID 1) over a tap interface.
//!
//! Two queues (receive 0, transmit 1) processed on the device's worker thread, which also
//! waits on the tap's file descriptor: frames from the tap go to the receive queue when
//! the driver has buffers, and stay queued in the tap (the kernel's) otherwise. The tap
//! carries the 12-byte `virtio_net_hdr_v1` itself (`IFF_VNET_HDR`), so frames pass
//! between guest and tap without reformatting. Checksum and TSO offloads are offered both
//! ways (the tap is told which ones the driver accepted); mergeable receive buffers are
//! not, so a driver that takes TSO posts 64 KiB receive chains ("big packets").

mod device;
mod rx;
mod tap;

pub use device::{transmit_frame, Net};
pub use rx::{deliver, Pending};
pub use tap::{check_name, Tap, TapError, MAX_IFNAME};

pub const DEVICE_TYPE: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// `virtio_net_hdr_v1`: the header before every frame once VERSION_1 is negotiated.
pub const HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header (always 1: no mergeable receive buffers).
const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest header + frame either direction carries (a 64 KiB IP packet with its
/// Ethernet and VLAN headers); longer transmit chains are dropped.
pub const MAX_FRAME: usize = HDR_LEN + 65550;
/// Descriptors per chain accepted (indirect tables can be longer than the queue).
pub const MAX_CHAIN: usize = QUEUE_SIZE as usize;

/// A locally administered, unicast MAC in QEMU's 52:54:00 range with random low bytes.
pub fn random_mac() -> [u8; 6] {
    let mut low = [0u8; 3];
    if let Err(e) = crate::devices::rng::HostEntropy::fill(&mut low) {
        log::warn!("virtio-net: no entropy for a MAC ({e}); using a fixed one");
        low = [0x12, 0x34, 0x56];
    }
    [0x52, 0x54, 0x00, low[0], low[1], low[2]]
}
