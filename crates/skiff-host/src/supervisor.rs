//! Watching VMM processes: one task per process waits on its pidfd (a child or an adopted
//! VMM alike) and reports the exit to the host, which applies the restart policy.

use std::sync::Arc;

use crate::process::PidFd;
use crate::service::Host;

pub fn watch(host: Host, name: String, generation: u64, pidfd: Arc<PidFd>) {
    tokio::spawn(async move {
        if let Err(e) = pidfd.exited().await {
            // Cannot happen for a valid pidfd; without it the VM would be unsupervised.
            log::error!("{name}: cannot wait for VMM pid {}: {e}", pidfd.pid());
            return;
        }
        host.on_exit(&name, generation, pidfd.pid());
    });
}
