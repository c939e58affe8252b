//! virtio-blk (virtio ID 2) over a raw image file, a host block device, or a qcow2 image
//! with its backing chain (`qcow2.rs`, through imago).
//!
//! Requests run on the disk's I/O threads ([`IoPool`]), several at once, with
//! `preadv`/`pwritev` straight between the disk and guest memory. Writes go through the
//! host page cache (`cache=writeback`, the default) or around it (`cache=direct`,
//! O_DIRECT). A guest FLUSH becomes `fdatasync` either way, so data the guest wrote and
//! flushed is on stable storage before the guest hears so; a failed flush fails every
//! later one. DISCARD punches holes in files (BLKDISCARD on devices), WRITE_ZEROES zeroes
//! or punches ranges (BLKZEROOUT on devices). The page cache of an image is charged to
//! the VMM's memory cgroup: see docs/virtio.md.

mod backend;
mod config;
mod device;
mod disk;
mod file;
mod pool;
mod probe;
mod qcow2;
mod ranges;
mod request;
mod transfer;

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod file_tests;

pub use backend::{open_disk, open_disk_file, DiskFormat};
pub use config::BlockConfig;
pub use device::{Block, BlockOptions};
pub use disk::{Disk, Geometry, MemDisk, StickyFlush};
pub use file::{CacheMode, DiskError, DiskFile, OpenMode};
pub use pool::IoPool;
pub use probe::{DiskKind, Unusable};
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
/// I/O threads per disk, and so requests in flight per disk.
pub const IO_DEPTH: usize = 32;
