//! Skiff's one data model: VM specs as read from TOML/JSON spec files, API bodies and CLI
//! flags. The VMM, the daemon and the CLI all use these types, so a field means the same
//! thing everywhere.

pub mod balloon;
pub mod control;
pub mod image;
pub mod memory;
pub mod model;
pub mod net;
pub mod network;
mod size;
mod spec;

pub use balloon::BalloonSpec;
pub use memory::WorkingSetSpec;
pub use net::{MacAddr, NicSpec, VsockSpec};
pub use size::{ByteSize, SizeError};
pub use spec::{
    validate_domain, validate_name, CpuSpec, DiskCache, DiskFormat, DiskSpec, MemorySpec,
    RestartPolicy, SpecError, VmSpec, CPU_SHARES, DEFAULT_SHARES,
};
