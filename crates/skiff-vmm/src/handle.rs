//! Control over a running VM from other threads: pause, resume, stop and its figures.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff_api::control::{RunState, VmStats};
use skiff_pci::msix::lock;
use skiff_virtio::devices::balloon::{Balloon, BalloonError};

use crate::cpu::run_control::{self, PauseError, Requested, RunControl};
use crate::exit::{ExitSender, VmExit};
use crate::memory::GuestRam;

/// How long vCPUs get to leave the guest when paused.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct VmHandle {
    inner: Arc<Inner>,
}

struct Inner {
    control: Arc<RunControl>,
    vcpu_threads: Vec<libc::pthread_t>,
    ram: GuestRam,
    exits: ExitSender,
    started: Instant,
    vcpus: u32,
    balloon: Option<Arc<Mutex<Balloon>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BalloonRequestError {
    #[error("this VM has no balloon device")]
    NoBalloon,
    #[error(transparent)]
    Target(#[from] BalloonError),
    #[error("a balloon of {0} MiB is out of range")]
    TooLarge(u64),
}

impl VmHandle {
    pub(crate) fn new(
        control: Arc<RunControl>,
        vcpu_threads: Vec<libc::pthread_t>,
        ram: GuestRam,
        exits: ExitSender,
        vcpus: u32,
        balloon: Option<Arc<Mutex<Balloon>>>,
    ) -> Self {
        VmHandle {
            inner: Arc::new(Inner {
                control,
                vcpu_threads,
                ram,
                exits,
                started: Instant::now(),
                vcpus,
                balloon,
            }),
        }
    }

    pub fn pause(&self) -> Result<(), PauseError> {
        let inner = &self.inner;
        let kick = || {
            for &thread in &inner.vcpu_threads {
                // SAFETY: the thread handles belong to vCPU threads that never exit while
                // the process runs (they are ended with the process), so they are valid.
                let rc = unsafe { libc::pthread_kill(thread, run_control::kick_signal()) };
                if rc != 0 {
                    return Err(io::Error::from_raw_os_error(rc));
                }
            }
            Ok(())
        };
        inner
            .control
            .pause(inner.vcpu_threads.len(), kick, PAUSE_TIMEOUT)
    }

    pub fn resume(&self) {
        self.inner.control.resume();
    }

    /// Ends the VM as if its power were cut.
    pub fn stop(&self, reason: VmExit) {
        self.inner.exits.send(reason);
    }

    pub fn state(&self) -> RunState {
        match self.inner.control.requested() {
            Requested::Running => RunState::Running,
            Requested::Paused => RunState::Paused,
        }
    }

    pub fn ram(&self) -> &GuestRam {
        &self.inner.ram
    }

    /// Sets the balloon's size (memory taken from the guest); 0 deflates it.
    pub fn set_balloon_target(&self, target_mib: u64) -> Result<(), BalloonRequestError> {
        let balloon = self
            .inner
            .balloon
            .as_ref()
            .ok_or(BalloonRequestError::NoBalloon)?;
        let bytes = target_mib
            .checked_mul(1 << 20)
            .ok_or(BalloonRequestError::TooLarge(target_mib))?;
        lock(balloon).set_target(bytes)?;
        Ok(())
    }

    pub fn stats(&self) -> io::Result<VmStats> {
        Ok(VmStats {
            state: self.state(),
            vcpus: self.inner.vcpus,
            memory_bytes: self.inner.ram.size(),
            guest_resident_bytes: self.inner.ram.resident_bytes()?,
            vmm_rss_bytes: process_rss()?,
            uptime_ms: self.inner.started.elapsed().as_millis() as u64,
            balloon: self
                .inner
                .balloon
                .as_ref()
                .map(|b| crate::pci::balloon::stats(&lock(b).info())),
        })
    }
}

/// This process's resident set size, from /proc/self/status.
fn process_rss() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    crate::host::meminfo_kib(&status, "VmRSS")
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/self/status"))
}
