//! The Skiff end-to-end test harness: boots real Linux guests with Skiff or with QEMU
//! (the reference VMM) and reports what happened on their serial console.
//!
//! Tests run through `cargo xtask e2e`, which sets the environment described in
//! [`TestEnv`] (inside the emulated AMD-V host, or directly on a machine with hardware
//! virtualization). The guest initramfs's `/init` prints [`INIT_READY`] as soon as it
//! starts, runs the shell command given with [`GuestSpec::cmd`], prints
//! `SKIFF-GUEST-EXIT status=N` and powers off.
//!
//! ```no_run
//! use skiff_e2e::{GuestSpec, Vmm};
//!
//! let out = GuestSpec::new(Vmm::Skiff).vcpus(2).cmd("nproc").run_ok();
//! assert_eq!(out.command_output().trim(), "2");
//! ```
//!
//! See docs/testing.md for the whole picture.

mod ctl;
mod disk;
mod env;
mod error;
mod output;
pub mod retry;
mod smaps;
mod spec;
pub mod tiny_pvh;
mod vm;

pub use ctl::ctl;
pub use disk::make_ext4;
pub use env::TestEnv;
pub use error::Error;
pub use output::{value, RunOutput};
pub use smaps::vmm_overhead_kib;
pub use spec::{GuestSpec, KernelKind, Vmm};
pub use vm::{thread_states, Signal, Vm};

/// Printed by the guest's `/init` as its first action: "the guest is up".
pub const INIT_READY: &str = "SKIFF-INIT-READY";
/// Printed by the guest's `/init` after the command, followed by `status=N`.
pub const GUEST_EXIT: &str = "SKIFF-GUEST-EXIT status=";
