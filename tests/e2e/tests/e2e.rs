//! Skiff's end-to-end tests: one test binary (one libtest summary), one module per
//! feature under `e2e/`. Run them with `cargo xtask e2e [FILTER]` (docs/testing.md).

#[path = "e2e/balloon.rs"]
mod balloon;
#[path = "e2e/balloon_overhead.rs"]
mod balloon_overhead;
#[path = "e2e/block.rs"]
mod block;
#[path = "e2e/boot.rs"]
mod boot;
#[path = "e2e/cgroups.rs"]
mod cgroups;
/// skiff-cgroups' tests against the kernel, here run on the emulated host's cgroup v2.
#[path = "../../../crates/skiff-cgroups/tests/real.rs"]
mod cgroups_real;
#[path = "e2e/daemon.rs"]
mod daemon;
#[path = "e2e/density.rs"]
mod density;
#[path = "e2e/guest_abuse.rs"]
mod guest_abuse;
#[path = "e2e/hardening.rs"]
mod hardening;
#[path = "e2e/harness.rs"]
mod harness;
#[path = "e2e/idle_tax.rs"]
mod idle_tax;
#[path = "e2e/images.rs"]
mod images;
#[path = "e2e/jail.rs"]
mod jail;
#[path = "e2e/memory.rs"]
mod memory;
#[path = "e2e/memory_manager.rs"]
mod memory_manager;
#[path = "e2e/net.rs"]
mod net;
#[path = "e2e/network.rs"]
mod network;
#[path = "e2e/overcommit.rs"]
mod overcommit;
#[path = "e2e/page_sharing.rs"]
mod page_sharing;
#[path = "e2e/qmp.rs"]
mod qmp;
#[path = "e2e/robustness.rs"]
mod robustness;
#[path = "e2e/root.rs"]
mod root;
#[path = "e2e/seccomp.rs"]
mod seccomp;
#[path = "e2e/storage.rs"]
mod storage;
#[path = "e2e/vmm.rs"]
mod vmm;
#[path = "e2e/vsock.rs"]
mod vsock;
