//! Control over a running VM from other threads: pause, resume, stop, its figures, and
//! the memory manager's levers (balloon, sampling, page sharing, reclaim).

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff_api::control::{RunState, VmStats};
use skiff_api::memory::{ReclaimMode, ReclaimReport, SharingStats, WorkingSetSpec};
use skiff_pci::msix::lock;
use skiff_virtio::devices::balloon::{Balloon, BalloonError};

use crate::cpu::run_control::{self, PauseError, Requested, RunControl};
use crate::devices::power::PowerButton;
use crate::exit::{ExitSender, VmExit};
use crate::memory::dirty_log::{DirtyLogError, GuestSlots};
use crate::memory::reclaim::{ReclaimError, Reclaimer};
use crate::memory::sampling::{SamplingError, WorkingSet};
use crate::memory::sharing::{ksm_stats, SharingMonitor};
use crate::memory::{GuestRam, MemoryError};

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
    memory: MemoryServices,
    power_button: Arc<PowerButton>,
}

/// What the VMM measures of guest memory and the reclaim it offers, in one place.
pub struct MemoryServices {
    /// None when this KVM cannot log dirty pages with manual protection.
    working_set: Option<Arc<WorkingSet>>,
    /// Kept even without sampling: the slots must stay registered with KVM.
    _slots: Arc<GuestSlots>,
    sharing: SharingMonitor,
    reclaimer: Reclaimer,
    domain: Option<String>,
    ram: GuestRam,
}

impl MemoryServices {
    pub fn new(
        ram: &GuestRam,
        slots: GuestSlots,
        spec: WorkingSetSpec,
        domain: Option<String>,
    ) -> Self {
        let slots = Arc::new(slots);
        let working_set = slots
            .can_log()
            .then(|| WorkingSet::new(slots.clone(), ram.pages(), spec));
        MemoryServices {
            working_set,
            _slots: slots,
            sharing: SharingMonitor::new(ram.clone()),
            reclaimer: Reclaimer::new(ram.clone()),
            domain,
            ram: ram.clone(),
        }
    }

    /// Starts the sampling thread.
    pub fn start(&self) -> io::Result<()> {
        match &self.working_set {
            Some(ws) => ws.spawn(),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryRequestError {
    #[error("this KVM cannot sample the working set: it lacks manual dirty log protection")]
    NoSampling,
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    DirtyLog(#[from] DirtyLogError),
    #[error(transparent)]
    Reclaim(#[from] ReclaimError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
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

/// The devices a handle acts on from outside the guest.
pub(crate) struct HandleDevices {
    pub balloon: Option<Arc<Mutex<Balloon>>>,
    pub power_button: Arc<PowerButton>,
}

impl VmHandle {
    pub(crate) fn new(
        control: Arc<RunControl>,
        vcpu_threads: Vec<libc::pthread_t>,
        ram: GuestRam,
        exits: ExitSender,
        vcpus: u32,
        devices: HandleDevices,
        memory: MemoryServices,
    ) -> Self {
        let HandleDevices {
            balloon,
            power_button,
        } = devices;
        VmHandle {
            inner: Arc::new(Inner {
                control,
                vcpu_threads,
                ram,
                exits,
                started: Instant::now(),
                vcpus,
                balloon,
                memory,
                power_button,
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
        if let Some(ws) = &inner.memory.working_set {
            ws.set_paused(true);
        }
        let paused = inner
            .control
            .pause(inner.vcpu_threads.len(), kick, PAUSE_TIMEOUT);
        if paused.is_err() {
            // The vCPUs run on (the pause was withdrawn): so does sampling.
            if let Some(ws) = &inner.memory.working_set {
                ws.set_paused(false);
            }
        }
        paused
    }

    pub fn resume(&self) {
        self.inner.control.resume();
        if let Some(ws) = &self.inner.memory.working_set {
            ws.set_paused(false);
        }
    }

    /// Presses the ACPI power button: the guest's OS shuts down if it handles the button.
    pub fn press_power_button(&self) -> io::Result<()> {
        self.inner.power_button.press()
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

    /// Changes working-set sampling (None keeps a value; period 0 turns it off).
    pub fn set_sampling(
        &self,
        period_secs: Option<u32>,
        pages: Option<u32>,
    ) -> Result<(), MemoryRequestError> {
        let ws = self
            .inner
            .memory
            .working_set
            .as_ref()
            .ok_or(MemoryRequestError::NoSampling)?;
        ws.configure(period_secs, pages)?;
        Ok(())
    }

    /// Hypervisor-level reclaim of about `bytes`, sparing pages the sample saw written.
    pub fn reclaim(
        &self,
        bytes: u64,
        mode: ReclaimMode,
    ) -> Result<ReclaimReport, MemoryRequestError> {
        let memory = &self.inner.memory;
        let hot = memory
            .working_set
            .as_ref()
            .map(|ws| ws.recently_written())
            .unwrap_or_default();
        Ok(memory.reclaimer.reclaim(bytes, mode, &hot)?)
    }

    /// Lets KSM merge this VM's memory, or stops it.
    pub fn set_page_sharing(&self, enabled: bool) -> Result<bool, MemoryRequestError> {
        Ok(self.inner.memory.ram.set_mergeable(enabled)?)
    }

    fn sharing_stats(&self) -> SharingStats {
        let memory = &self.inner.memory;
        SharingStats {
            mergeable: memory.ram.mergeable(),
            domain: memory.domain.clone(),
            ksm: ksm_stats(),
            estimate: match memory.sharing.estimate() {
                Ok(estimate) => Some(estimate),
                Err(e) => {
                    log::debug!("shareable estimate: {e}");
                    None
                }
            },
        }
    }

    pub fn stats(&self) -> io::Result<VmStats> {
        let mut timer = StageTimer::new();
        let guest_resident_bytes = self.inner.ram.resident_bytes()?;
        timer.stage("guest residency");
        let vmm_rss_bytes = process_rss()?;
        timer.stage("VMM RSS");
        let balloon = self
            .inner
            .balloon
            .as_ref()
            .map(|b| crate::pci::balloon::stats(&lock(b).info()));
        timer.stage("balloon");
        let working_set = self.inner.memory.working_set.as_ref().map(|ws| ws.stats());
        timer.stage("working set");
        let sharing = self.sharing_stats();
        timer.stage("sharing");
        let reclaim = self.inner.memory.reclaimer.totals();
        timer.stage("reclaim");
        timer.warn_if_slow("stats");
        Ok(VmStats {
            state: self.state(),
            vcpus: self.inner.vcpus,
            memory_bytes: self.inner.ram.size(),
            guest_resident_bytes,
            vmm_rss_bytes,
            uptime_ms: self.inner.started.elapsed().as_millis() as u64,
            balloon,
            working_set,
            sharing,
            reclaim,
        })
    }
}

/// How long each stage of an answer took, logged when the whole was slow: the control
/// thread should answer at once, and the log says which stage did not.
struct StageTimer {
    started: Instant,
    last: Instant,
    stages: Vec<(&'static str, Duration)>,
}

impl StageTimer {
    fn new() -> Self {
        let now = Instant::now();
        StageTimer {
            started: now,
            last: now,
            stages: Vec::new(),
        }
    }

    fn stage(&mut self, name: &'static str) {
        let now = Instant::now();
        self.stages.push((name, now - self.last));
        self.last = now;
    }

    fn warn_if_slow(&self, what: &str) {
        let total = self.started.elapsed();
        if total < SLOW_STATS {
            return;
        }
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|(name, d)| format!("{name} {} ms", d.as_millis()))
            .collect();
        log::warn!(
            "{what} took {} ms: {}",
            total.as_millis(),
            stages.join(", ")
        );
    }
}

/// Stats slower than this are logged stage by stage.
const SLOW_STATS: Duration = Duration::from_millis(250);

/// This process's resident set size, from /proc/self/status.
fn process_rss() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    crate::host::meminfo_kib(&status, "VmRSS")
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/self/status"))
}
