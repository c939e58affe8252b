//! virtio-blk (virtio ID 2) over a raw image file or a qcow2 image with its backing chain
//! (`qcow2.rs`, through imago).
//!
//! I/O is buffered (through the host page cache) and synchronous on the device's worker
//! thread, with `preadv`/`pwritev` straight between the image and guest memory. A guest FLUSH becomes `fdatasync`, so data the guest wrote and flushed is on
//! stable storage before the guest hears so; data merely written survives a crash of the
//! VMM too (it is in the host's page cache), but not of the host. The page cache of the
//! image is charged to the VMM's memory cgroup: see docs/virtio.md.

mod backend;
mod config;
mod device;
mod disk;
mod qcow2;
mod request;

pub use backend::{open_disk, DiskFormat};
pub use config::BlockConfig;
pub use device::{Block, BlockOptions};
pub use disk::{Disk, DiskError, DiskFile};
pub use qcow2::Qcow2Disk;
pub use request::{execute, RequestContext};

pub const DEVICE_TYPE: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
pub const SECTOR_SIZE: u64 = 512;
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request the driver may use (queue size less header and status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Descriptors per chain accepted (indirect tables can be longer than the queue).
pub const MAX_CHAIN: usize = SEG_MAX as usize + 2;
/// GET_ID answers with this many bytes.
pub const ID_BYTES: usize = virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES as usize;
