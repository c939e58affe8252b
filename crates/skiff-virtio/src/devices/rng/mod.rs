//! virtio-rng (entropy device, virtio ID 4): one queue of device-writable buffers that the
//! device fills from the host's `getrandom`.

mod device;
mod request;

pub use device::{HostEntropy, Rng};
pub use request::fill;

pub const DEVICE_TYPE: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
pub const QUEUE_SIZE: u16 = 256;
/// Bytes served per request at most: a driver asking for more gets a short read.
pub const MAX_REQUEST: usize = 64 * 1024;
