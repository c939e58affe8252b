//! The periodic loop over running VMs: every period it samples each VMM's figures (memory,
//! balloon) through its control socket, for `inspect`, `ls` and `/metrics`, and runs the
//! memory manager on them: the pure policy (skiff-mem-policy) turns the samples into targets
//! and actions, and the manager sends them back (docs/memory.md).

pub mod admission;
mod config;
mod gather;
mod ksm;
mod manager;

use std::time::Duration;

pub use config::MemoryConfig;
pub use skiff_mem_policy::{FreeState, PolicyConfig};

use crate::service::Host;

/// How often every running VM is sampled and the memory policy runs.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(2);

/// Runs until the runtime ends.
pub async fn sample_forever(host: Host) {
    let mut manager = manager::Manager::new(host.config().memory.clone());
    let mut tick = tokio::time::interval(SAMPLE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (name, client) in host.running_vmms() {
            match client.stats().await {
                Ok(stats) => host.record_stats(&name, stats),
                Err(e) => log::debug!("{name}: no stats: {e}"),
            }
        }
        manager.run_period(&host).await;
    }
}
