//! How a VM's VMM ends, as the daemon sees it: the supervisor's report of an exit, what the
//! restart policy makes of it, restarts with their delay, and adopting the VMMs of VMs the
//! daemon finds on disk at start (including one started but never recorded). Part of
//! [`Host`], split out of `service.rs` to keep each file to one job.

use std::sync::Arc;
use std::time::Duration;

use super::*;

impl Host {
    // ---- supervision ----

    /// Has the supervisor report the end of the VMM process of `generation`.
    pub(super) fn watch(&self, name: &str, generation: u64, pidfd: Arc<PidFd>) {
        let host = self.clone();
        let vm = name.to_string();
        crate::supervisor::watch(name.to_string(), pidfd, move |pid| {
            host.on_exit(&vm, generation, pid)
        });
    }

    /// Called by the supervisor when a VMM process of `generation` ended.
    pub(super) fn on_exit(&self, name: &str, generation: u64, pid: i32) {
        let status_file = match self.with_vm(name, |e| Ok(e.paths.status_file())) {
            Ok(path) => path,
            Err(_) => {
                process::reap_child(pid);
                return;
            }
        };
        let reason = process::reap_child(pid)
            .or_else(|| vmm::read_status_file(&status_file).map(ExitReason::Code))
            .unwrap_or(ExitReason::Unknown);
        let restart = self
            .with_vm(name, |e| {
                if e.generation != generation {
                    return Ok(None);
                }
                Ok(self.settle_exit(name, e, &reason))
            })
            .ok()
            .flatten();
        if let Some(delay) = restart {
            self.schedule_restart(name.to_string(), generation, delay);
        }
    }

    /// Applies the restart policy to an ended VMM; returns the restart delay if any.
    pub(super) fn settle_exit(
        &self,
        name: &str,
        e: &mut VmEntry,
        reason: &ExitReason,
    ) -> Option<Duration> {
        e.pidfd = None;
        e.vmm_pid = None;
        e.record.process = None;
        e.stats = None;
        e.memory = None;
        if e.launched_at
            .take()
            .is_some_and(|t| t.elapsed() >= restart::HEALTHY_RUN)
        {
            e.failures_in_a_row = 0;
        }
        let mut why = reason.to_string();
        if reason.is_failure() {
            if let Some(line) = vmm::last_log_line(&e.paths.vmm_log()) {
                why = format!("{why}; VMM said: {line}");
            }
        }
        let policy = e.record.spec.restart;
        let decision = restart::after_exit(policy, e.record.desired, reason, e.failures_in_a_row);
        let restart = match decision {
            AfterExit::Stopped => {
                e.record.desired = Desired::Stopped;
                e.record.reason = None;
                e.set_state(VmState::Stopped);
                self.event(name, EventKind::Stopped, why);
                None
            }
            AfterExit::Restart(delay) => {
                if reason.is_failure() || reason.is_reboot() {
                    e.failures_in_a_row += 1;
                }
                e.record.restarts += 1;
                e.record.reason = Some(why.clone());
                e.set_state(VmState::Restarting);
                self.event(
                    name,
                    EventKind::Restarting,
                    format!(
                        "{why}; restart {} in {} ms",
                        e.record.restarts,
                        delay.as_millis()
                    ),
                );
                Some(delay)
            }
            AfterExit::Failed => {
                e.record.reason = Some(why.clone());
                e.set_state(VmState::Failed);
                self.event(name, EventKind::Failed, why);
                None
            }
        };
        self.persist_or_log(name, e);
        restart
    }

    pub(super) fn schedule_restart(&self, name: String, generation: u64, delay: Duration) {
        let host = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let still_wanted = host
                .with_vm(&name, |e| {
                    Ok(e.generation == generation
                        && e.record.state == VmState::Restarting
                        && e.record.desired == Desired::Running)
                })
                .unwrap_or(false);
            if !still_wanted {
                return;
            }
            match host.launch(&name) {
                Ok(generation) => host.wait_ready(&name, generation).await,
                Err(e) => log::error!("{name}: restart failed: {e}"),
            }
        });
    }

    /// After a daemon restart: adopt a VMM that still runs, or settle one that ended.
    pub(super) async fn recover(&self, name: &str) {
        let Ok((mut process, client, status_file, state)) = self.with_vm(name, |e| {
            Ok((
                e.record.process,
                e.client.clone(),
                e.paths.status_file(),
                e.record.state,
            ))
        }) else {
            return;
        };
        if process.is_none() && matches!(state, VmState::Restarting | VmState::Starting) {
            process = self.find_unrecorded(name);
        }
        match process {
            Some(p) if process::is_same_process(p.pid, p.start_time) => {
                let pidfd = match PidFd::open(p.pid) {
                    Ok(fd) => Arc::new(fd),
                    Err(e) => {
                        log::error!("{name}: cannot watch VMM pid {}: {e}", p.pid);
                        return;
                    }
                };
                let stats = client.stats().await.ok();
                let adopted = self.with_vm(name, |e| {
                    e.generation += 1;
                    e.pidfd = Some(pidfd.clone());
                    e.launched_at = Some(Instant::now());
                    let now = match (&stats, state) {
                        (_, VmState::Stopping) => VmState::Stopping,
                        (Some(s), _) if s.state == RunState::Paused => VmState::Paused,
                        _ => VmState::Running,
                    };
                    e.find_vmm_pid();
                    e.stats = None;
                    if let Some(stats) = stats.clone() {
                        e.keep_stats(stats, self.inner.config.meter.as_ref());
                    }
                    e.set_state(now);
                    self.persist_or_log(name, e);
                    Ok((e.generation, describe_vmm(e)))
                });
                if let Ok((generation, vmm)) = adopted {
                    self.event(name, EventKind::Adopted, format!("{vmm} still running"));
                    self.watch(name, generation, pidfd);
                    if state == VmState::Stopping {
                        let _ = client.command(ControlRequest::Stop).await;
                    }
                }
            }
            Some(_) => {
                let reason = vmm::read_status_file(&status_file)
                    .map(ExitReason::Code)
                    .unwrap_or(ExitReason::Unknown);
                let restart = self
                    .with_vm(name, |e| Ok(self.settle_exit(name, e, &reason)))
                    .ok()
                    .flatten();
                if let Some(delay) = restart {
                    let generation = self.with_vm(name, |e| Ok(e.generation)).unwrap_or(0);
                    self.schedule_restart(name.to_string(), generation, delay);
                }
            }
            None if matches!(state, VmState::Restarting | VmState::Starting) => {
                let generation = self
                    .with_vm(name, |e| {
                        e.set_state(VmState::Restarting);
                        Ok(e.generation)
                    })
                    .unwrap_or(0);
                self.schedule_restart(name.to_string(), generation, Duration::ZERO);
            }
            None => {}
        }
    }
}

impl Host {
    /// A VMM started for `name` whose PID the daemon did not save (it was killed in
    /// between): recorded now, to be adopted like any other.
    pub(super) fn find_unrecorded(&self, name: &str) -> Option<ProcessRecord> {
        let jail = self.inner.config.jail;
        self.with_vm(name, |e| {
            let Some(pid) = crate::orphans::find_unrecorded_vmm(&e.paths.control_socket()) else {
                return Ok(None);
            };
            let process = ProcessRecord {
                pid,
                start_time: process::start_time(pid).unwrap_or(0),
                jail: jail.zip(e.record.jail_index).and_then(|(c, i)| c.ids(i)),
            };
            log::warn!("{name}: found its VMM (pid {pid}), started but never recorded");
            e.record.process = Some(process);
            self.persist_or_log(name, e);
            Ok(Some(process))
        })
        .ok()
        .flatten()
    }
}

/// "VMM pid N" and, jailed, its supervisor and uid: for events.
pub(super) fn describe_vmm(e: &VmEntry) -> String {
    let Some(process) = e.record.process else {
        return "no VMM".to_string();
    };
    let vmm = e
        .vmm_pid
        .map_or_else(|| "unknown".to_string(), |pid| pid.to_string());
    match process.jail {
        Some(ids) => format!(
            "VMM pid {vmm} (supervisor pid {}), jailed as uid {} in {}",
            process.pid,
            ids.uid,
            e.paths.jail().display()
        ),
        None => format!("VMM pid {vmm}"),
    }
}
