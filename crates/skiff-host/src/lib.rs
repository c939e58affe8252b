//! The Skiff host daemon (`skiff host`): a REST API on a unix socket (and optionally TCP with
//! a bearer token) over one action layer ([`service::Host`]), a supervisor that runs one VMM
//! process per VM with a restart policy, state on disk that survives daemon restarts (running
//! VMMs are adopted again), and Prometheus metrics. docs/daemon.md describes it.

pub mod access;
pub mod api;
mod cgroups;
pub mod client;
pub mod connections;
pub mod crash_point;
pub mod disks;
pub mod error;
pub mod image_dirs;
pub mod images;
pub mod jail;
pub mod log_rotation;
pub mod memory;
pub mod metrics;
/// The REST API's answers live in skiff-api, beside the specs they carry.
pub use skiff_api::model;
pub mod network_api;
pub mod networks;
pub mod orphans;
pub mod process;
pub mod restart;
pub mod server;
pub mod service;
pub mod store;
mod supervisor;
pub mod validate;
pub mod vmm;

pub use client::{Client, Endpoint};
pub use error::HostError;
pub use service::{Host, HostConfig};
