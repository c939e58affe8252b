//! Per-VM control groups for Skiff, on cgroup v1 and v2.
//!
//! The host daemon gives each VM a group (`skiff/<vm>`) and runs the VM's VMM process, with
//! all its threads, inside it: the group carries the VM's CPU weight and limit and its memory
//! limits, and reports the CPU time and memory it uses.
//!
//! ```no_run
//! use skiff_cgroups::{Cgroup, CpuQuota, Hierarchy};
//! # fn main() -> Result<(), skiff_cgroups::CgroupError> {
//! let hierarchy = Hierarchy::detect_or_mount()?;
//! let group = Cgroup::create(&hierarchy, "skiff", "web-1")?; // or re-open it
//! group.set_cpu_shares(2048)?;
//! group.set_cpu_quota(Some(CpuQuota::from_cpus(0.5)?))?;
//! let mut vmm = std::process::Command::new("skiff");
//! group.attach_on_spawn(&mut vmm)?; // the child joins before exec
//! # Ok(()) }
//! ```
//!
//! [`hierarchy`] finds the layout (v2, v1, or hybrid), [`Cgroup`] creates, joins and
//! removes a group, and its CPU ([`cpu`]) and memory ([`memory`]) methods translate one API
//! into each version's files.

/// The group under which Skiff puts each VM's group (`skiff/<vm>`), in every tree.
pub const VM_PARENT: &str = "skiff";

mod cgroup;
pub mod cpu;
mod error;
mod files;
pub mod hierarchy;
pub mod memory;
mod mountinfo;
#[cfg(test)]
mod testing;

pub use cgroup::Cgroup;
pub use cpu::{shares_to_weight, CpuQuota, CpuStat};
pub use error::{CgroupError, Result};
pub use hierarchy::{Hierarchy, LegacyMounts};
pub use memory::MemoryStat;
