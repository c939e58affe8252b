//! The image store: disk images imported once, read-only, addressed by sha256 with names on
//! top, and thin qcow2 overlays per VM whose backing file is the shared image.
//!
//! Also the cloud-init NoCloud seed disk a VM made from an image gets (`seed.rs`).
//!
//! Pure library (files under one root directory, no daemon): `skiff image …` and the host
//! daemon drive it. Reading and writing qcow2 goes through the `imago` crate.
//!
//! Layout of the store's root:
//!
//! ```text
//! blobs/sha256-HEX.raw    the image's virtual disk, sparse, mode 0444
//! meta/HEX.json           what import learnt about it (size, source format, layout)
//! names/NAME              the digest NAME stands for
//! overlays/VM.qcow2       a VM's disk: qcow2 whose backing file is ../blobs/sha256-HEX.raw
//! tmp/                    imports and overlays being written (emptied when the store opens)
//! ```
//!
//! Which VMs use an image is read from the overlays' own qcow2 headers, so it cannot drift
//! from what the VMs really read.

mod boot;
mod error;
mod gate;
mod import;
mod overlay;
mod probe;
mod seed;
mod store;

pub use boot::{find_boot, BootEntry, BootError, BootFiles};
pub use error::ImageError;
pub use gate::{backing_chain, backing_of, open_qcow2, MAX_CHAIN};
pub use overlay::OVERLAY_EXTENSION;
pub use probe::{Layout, SourceFormat};
pub use seed::{Seed, StaticNetwork, SEED_BYTES};
pub use store::{ImageInfo, Progress, Store};
