//! Watching VMM processes: one task per process waits on its pidfd (a child or an adopted
//! VMM alike) and reports the exit to the host, which applies the restart policy.

use std::sync::Arc;

use crate::process::PidFd;

/// Waits for the process of `pidfd` (VM `name`) to end, then calls `on_exit` with its PID.
pub fn watch(name: String, pidfd: Arc<PidFd>, on_exit: impl FnOnce(i32) + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = pidfd.exited().await {
            // Cannot happen for a valid pidfd; without it the VM would be unsupervised.
            log::error!("{name}: cannot wait for VMM pid {}: {e}", pidfd.pid());
            return;
        }
        on_exit(pidfd.pid());
    });
}
