//! The periodic loop over running VMs: it samples each VMM's figures (memory, balloon) through
//! its control socket for `inspect`, `ls` and `/metrics`. The memory manager plugs in here:
//! from these samples its pure policy computes targets, sent back with `VmmClient::balloon`.

use std::time::Duration;

use crate::service::Host;

/// How often every running VM is sampled.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(2);

/// Runs until the runtime ends.
pub async fn sample_forever(host: Host) {
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
    }
}
