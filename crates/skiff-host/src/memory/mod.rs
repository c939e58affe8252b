//! The periodic loop over running VMs: every period it samples each VMM's figures (memory,
//! balloon) through its control socket, for `inspect`, `ls` and `/metrics`, and runs the
//! memory manager on them: the pure policy (skiff-mem-policy) turns the samples into targets
//! and actions, and the manager sends them back (docs/memory.md).

pub mod admission;
mod config;
mod gather;
mod ksm;
mod manager;
pub mod measure;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

pub use config::MemoryConfig;
use skiff_api::control::VmStats;
pub use skiff_mem_policy::{FreeState, PolicyConfig};

use crate::error::HostError;
use crate::model::{HostMemoryStatus, VmInfo, VmMemoryStatus};
use crate::vmm::VmmClient;

/// What the memory manager needs of the daemon (`service::Host`): the VMs with their latest
/// stats and the clients of their VMMs, a place for its figures, and the daemon's own pause
/// and resume (which keep each VM's recorded state true).
pub trait ManagedHost: Clone + Send + Sync + 'static {
    fn memory_config(&self) -> &MemoryConfig;
    fn vms(&self) -> Vec<VmInfo>;
    /// Every VM with a VMM, and the client of its control socket.
    fn vmm_clients(&self) -> Vec<(String, VmmClient)>;
    /// A new sample from a VMM (bounded by what the daemon measures, `measure`).
    fn keep_stats(&self, name: &str, stats: VmStats);
    /// The manager's latest period: the host's figures and each managed VM's.
    fn keep_memory_status(&self, host: HostMemoryStatus, vms: BTreeMap<String, VmMemoryStatus>);
    fn pause_vm(&self, name: &str) -> impl Future<Output = Result<(), HostError>> + Send;
    fn resume_vm(&self, name: &str) -> impl Future<Output = Result<(), HostError>> + Send;
}

/// How often every running VM is sampled and the memory policy runs.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(2);

/// Runs until the runtime ends.
pub async fn sample_forever(host: impl ManagedHost) {
    let mut manager = manager::Manager::new(host.memory_config().clone());
    let mut tick = tokio::time::interval(SAMPLE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // All at once: a VMM that answers slowly (or never) delays no other VM's sample.
        let mut samples = tokio::task::JoinSet::new();
        for (name, client) in host.vmm_clients() {
            samples.spawn(async move { (name, client.stats().await) });
        }
        while let Some(sample) = samples.join_next().await {
            match sample {
                Ok((name, Ok(stats))) => host.keep_stats(&name, stats),
                Ok((name, Err(e))) => log::debug!("{name}: no stats: {e}"),
                Err(e) => log::warn!("a stats request failed: {e}"),
            }
        }
        manager.run_period(&host).await;
    }
}
