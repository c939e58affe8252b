//! virtio-balloon (virtio ID 5): the guest gives pages back on the host's request
//! (inflate), takes them back (deflate), reports its memory statistics (stats queue) and
//! hands over free memory on its own (free page reporting).
//!
//! Pages the guest gives up are returned to the host through a [`Discard`] the VMM
//! passes in (its `GuestRam::discard`, MADV_DONTNEED), so this crate stays KVM-free.
//!
//! Linux numbers the queues by the features negotiated, not by the spec's fixed indices:
//! inflate, deflate, then stats only if negotiated, then free-page-hint only if
//! negotiated, then reporting ([`queue_roles`]).

mod config;
mod device;
mod queues;
mod stats;

pub use config::BalloonConfig;
pub use device::{Balloon, BalloonInfo, BalloonOptions};
pub use queues::{discard_runs, merge_runs, queue_roles, read_pfns, report_ranges, PfnRun, Role};
pub use stats::{parse_stats, GuestStats};

pub const DEVICE_TYPE: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
pub const QUEUE_SIZE: u16 = 256;
/// The balloon's page size: PFNs on the inflate and deflate queues are 4 KiB frames,
/// whatever the guest's own page size.
pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

// Feature bits (virtio 1.2 §5.5.3).
pub const F_MUST_TELL_HOST: u32 = 0;
pub const F_STATS_VQ: u32 = 1;
pub const F_DEFLATE_ON_OOM: u32 = 2;
pub const F_FREE_PAGE_HINT: u32 = 3;
pub const F_PAGE_POISON: u32 = 4;
pub const F_REPORTING: u32 = 5;

/// Returns guest-physical ranges to the host (the VMM's `GuestRam::discard`).
pub trait Discard: Send + Sync {
    /// Gives `len` bytes at guest-physical `gpa` back to the host; both page-aligned.
    fn discard(&self, gpa: u64, len: u64) -> std::io::Result<()>;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BalloonError {
    #[error("a balloon of {target_mib} MiB is more than the guest's {memory_mib} MiB of memory")]
    TargetTooLarge { target_mib: u64, memory_mib: u64 },
}

#[cfg(test)]
mod tests;
