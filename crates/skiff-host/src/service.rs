//! The daemon's one action layer: every lifecycle action (create, start, stop, pause,
//! resume, delete, inspect, ...) is a method of [`Host`]; the HTTP routes only translate.
//! The supervisor (`supervisor.rs`) reports VMM exits back here.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use skiff_api::control::{ControlRequest, RunState, VmStats};
use tokio::sync::watch;

use crate::error::HostError;
use crate::jail::{self, JailConfig, JailIds};
use crate::memory::measure::{self, ResidentMeter};
use crate::model::{
    ConsoleFiles, Desired, Event, EventKind, ExitReason, HostMemoryStatus, HostStatus, JailInfo,
    VmInfo, VmMemoryStatus, VmState,
};
use crate::process::{self, PidFd};
use crate::restart::{self, AfterExit};
use crate::store::{ProcessRecord, Store, VmPaths, VmRecord};
use crate::validate;
use crate::vmm::{self, ControlError, VmmClient};

mod exits;
use exits::describe_vmm;

/// How many host-wide events are kept in memory (each VM's are on disk too).
const RECENT_EVENTS: usize = 1000;
/// How often a starting VMM's control socket is tried.
const READY_POLL: Duration = Duration::from_millis(100);
/// After a control `stop`, how long the VMM gets to end before it is killed.
const POWER_CUT_GRACE: Duration = Duration::from_secs(5);
/// After a forced kill, how long the kernel gets to end the process.
const KILL_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct HostConfig {
    pub state_dir: PathBuf,
    /// The `skiff` binary whose `run` starts a VMM.
    pub vmm_bin: PathBuf,
    /// How long a stop waits for the VMM to end before killing it.
    pub stop_timeout: Duration,
    /// How long a start waits for the VMM's control socket to answer.
    pub start_timeout: Duration,
    /// The memory manager's budget and policy.
    pub memory: crate::memory::MemoryConfig,
    /// Jail every VMM (the default of `skiff host`); `None` with `--no-jail`.
    pub jail: Option<JailConfig>,
    /// A VM's console log and VMM log are rotated past this size (`log_rotation`).
    pub log_max_bytes: u64,
    /// Where kernels, initrds and disks may be (`image_dirs`).
    pub image_dirs: crate::image_dirs::ImageDirs,
    /// How the daemon measures a VMM's memory itself (`memory::measure`): a VMM's own
    /// figures are bounded by it.
    pub meter: Arc<dyn ResidentMeter>,
}

/// The host: every VM and what the daemon knows of it.
#[derive(Clone)]
pub struct Host {
    inner: Arc<Inner>,
}

struct Inner {
    config: HostConfig,
    store: Store,
    vms: Mutex<BTreeMap<String, VmEntry>>,
    recent: Mutex<VecDeque<Event>>,
    started: Instant,
    /// The memory manager's latest view of the host.
    memory: Mutex<Option<HostMemoryStatus>>,
    images: crate::images::Images,
    networks: crate::networks::Networks,
}

/// One VM in memory: its persisted record plus what only a running daemon has.
struct VmEntry {
    record: VmRecord,
    paths: VmPaths,
    client: VmmClient,
    /// Bumped at each launch: a watcher or a scheduled restart of an older process sees
    /// that it is stale and does nothing.
    generation: u64,
    pidfd: Option<Arc<PidFd>>,
    /// The VMM's own PID (a jailed one is the watched process's child), once known.
    vmm_pid: Option<i32>,
    state: watch::Sender<VmState>,
    launched_at: Option<Instant>,
    failures_in_a_row: u32,
    /// The latest sample from the VMM's control socket.
    stats: Option<VmStats>,
    /// The memory manager's latest figures.
    memory: Option<VmMemoryStatus>,
}

impl VmEntry {
    fn new(record: VmRecord, paths: VmPaths) -> Self {
        let client = VmmClient::new(paths.control_socket());
        let (state, _) = watch::channel(record.state);
        VmEntry {
            record,
            paths,
            client,
            generation: 0,
            pidfd: None,
            vmm_pid: None,
            state,
            launched_at: None,
            failures_in_a_row: 0,
            stats: None,
            memory: None,
        }
    }

    /// Finds the VMM of the recorded process: itself, or the jailed VMM under it.
    fn find_vmm_pid(&mut self) {
        self.vmm_pid = self.record.process.and_then(|p| match p.jail {
            Some(_) => process::only_child(p.pid),
            None => Some(p.pid),
        });
    }

    /// Keeps a VMM's stats, every figure bounded by what the daemon knows and measures
    /// (`memory::measure`): a VMM's word is not trusted.
    fn keep_stats(&mut self, stats: VmStats, meter: &dyn ResidentMeter) {
        let measured = self.vmm_pid.and_then(|pid| meter.resident_bytes(pid));
        let spec = &self.record.spec;
        self.stats = Some(measure::bound(
            stats,
            spec.vcpus,
            spec.memory.size.bytes(),
            measured,
            self.stats.as_ref(),
        ));
    }

    fn set_state(&mut self, state: VmState) {
        self.record.state = state;
        self.state.send_replace(state);
    }

    fn info(&self, name: &str) -> VmInfo {
        VmInfo {
            name: name.to_string(),
            state: self.record.state,
            desired: self.record.desired,
            spec: self.record.spec.clone(),
            pid: self.record.process.map(|p| p.pid),
            vmm_pid: self.vmm_pid,
            jail: self
                .record
                .process
                .and_then(|p| p.jail)
                .map(|ids| JailInfo {
                    uid: ids.uid,
                    gid: ids.gid,
                    root: self.paths.jail().display().to_string(),
                }),
            restarts: self.record.restarts,
            reason: self.record.reason.clone(),
            stats: self.stats.clone(),
            console: ConsoleFiles {
                input: self.paths.console_in().display().to_string(),
                log: self.paths.console_log().display().to_string(),
            },
            memory: self.memory.clone(),
            addresses: self.record.addresses.clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a VM table half-updated in a way that
    // matters more than stopping the daemon would: keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Host {
    /// Loads the state directory and takes back every VMM still running (without stopping
    /// it); VMs whose VMM ended while the daemon was away are settled by their policy.
    pub async fn open(mut config: HostConfig) -> Result<Host, HostError> {
        let store = Store::open(&config.state_dir)?;
        let images = crate::images::Images::open(&config.state_dir)?;
        config.image_dirs.allow(images.root());
        let networks = crate::networks::Networks::open(&config.state_dir, "dnsmasq".into()).await?;
        let mut vms = BTreeMap::new();
        for (name, record) in store.load_all()? {
            let paths = store.paths(&name);
            vms.insert(name, VmEntry::new(record, paths));
        }
        let names: Vec<String> = vms.keys().cloned().collect();
        let host = Host {
            inner: Arc::new(Inner {
                config,
                store,
                vms: Mutex::new(vms),
                recent: Mutex::new(VecDeque::new()),
                started: Instant::now(),
                memory: Mutex::new(None),
                images,
                networks,
            }),
        };
        for name in names {
            host.recover(&name).await;
        }
        Ok(host)
    }

    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    pub fn images(&self) -> &crate::images::Images {
        &self.inner.images
    }

    /// The managed networks (`networks.rs`).
    pub fn networks(&self) -> &crate::networks::Networks {
        &self.inner.networks
    }

    fn with_vm<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut VmEntry) -> Result<R, HostError>,
    ) -> Result<R, HostError> {
        let mut vms = lock(&self.inner.vms);
        let entry = vms
            .get_mut(name)
            .ok_or_else(|| HostError::NotFound(name.to_string()))?;
        f(entry)
    }

    fn persist(&self, name: &str, entry: &VmEntry) -> Result<(), HostError> {
        self.inner.store.save(name, &entry.record)?;
        Ok(())
    }

    /// Same as `persist`, for paths that have nobody to report an error to.
    fn persist_or_log(&self, name: &str, entry: &VmEntry) {
        if let Err(e) = self.persist(name, entry) {
            log::error!("cannot save VM {name}: {e}");
        }
    }

    fn event(&self, name: &str, kind: EventKind, message: impl Into<String>) {
        let event = Event {
            time_ms: now_ms(),
            vm: name.to_string(),
            kind,
            message: message.into(),
        };
        log::info!("{name}: {:?}: {}", event.kind, event.message);
        if kind != EventKind::Deleted {
            if let Err(e) = self.inner.store.append_event(&event) {
                log::warn!("cannot record event for {name}: {e}");
            }
        }
        let mut recent = lock(&self.inner.recent);
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back(event);
    }

    // ---- queries ----

    pub fn list(&self) -> Vec<VmInfo> {
        lock(&self.inner.vms)
            .iter()
            .map(|(name, entry)| entry.info(name))
            .collect()
    }

    /// The VM with fresh figures from its VMM when it runs.
    pub async fn inspect(&self, name: &str) -> Result<VmInfo, HostError> {
        let (client, has_process) = self.with_vm(name, |e| {
            Ok((e.client.clone(), e.record.state.has_process()))
        })?;
        if has_process {
            if let Ok(stats) = client.stats().await {
                self.record_stats(name, stats);
            }
        }
        self.with_vm(name, |e| Ok(e.info(name)))
    }

    /// The VM's events, oldest first.
    pub fn events(&self, name: &str) -> Result<Vec<Event>, HostError> {
        self.with_vm(name, |_| Ok(()))?;
        Ok(self.inner.store.events(name)?)
    }

    /// Recent events of every VM (deletions included), oldest first.
    pub fn recent_events(&self) -> Vec<Event> {
        lock(&self.inner.recent).iter().cloned().collect()
    }

    /// The tail of the guest's serial console.
    pub fn console_log(&self, name: &str, max_bytes: u64) -> Result<String, HostError> {
        let path = self.with_vm(name, |e| Ok(e.paths.console_log()))?;
        match crate::log_rotation::read_tail(&path, max_bytes) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(HostError::Store(crate::store::StoreError::Io {
                path,
                source: e,
            })),
        }
    }

    pub fn status(&self) -> HostStatus {
        let (total, available) = process::host_memory();
        let vms = lock(&self.inner.vms);
        HostStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id() as i32,
            uptime_secs: self.inner.started.elapsed().as_secs(),
            state_dir: self.inner.config.state_dir.display().to_string(),
            vms: vms.len() as u32,
            running: vms
                .values()
                .filter(|e| e.record.state == VmState::Running)
                .count() as u32,
            memory_total_bytes: total,
            memory_available_bytes: available,
            memory: lock(&self.inner.memory).clone(),
        }
    }

    /// Every VM's console log and VMM log, with the VM's name.
    pub fn log_files(&self) -> Vec<(String, PathBuf)> {
        lock(&self.inner.vms)
            .iter()
            .flat_map(|(name, e)| {
                [e.paths.console_log(), e.paths.vmm_log()].map(|path| (name.clone(), path))
            })
            .collect()
    }

    /// Every VM with a VMM, and the client of its control socket: for the periodic
    /// sampling (and the memory manager).
    pub fn running_vmms(&self) -> Vec<(String, VmmClient)> {
        lock(&self.inner.vms)
            .iter()
            .filter(|(_, e)| matches!(e.record.state, VmState::Running | VmState::Paused))
            .map(|(name, e)| (name.clone(), e.client.clone()))
            .collect()
    }

    pub fn record_stats(&self, name: &str, stats: VmStats) {
        if let Some(entry) = lock(&self.inner.vms).get_mut(name) {
            if entry.record.state.has_process() {
                entry.keep_stats(stats, self.inner.config.meter.as_ref());
            }
        }
    }

    /// The memory manager's latest period: the host's figures and each managed VM's.
    pub fn record_memory(&self, host: HostMemoryStatus, vms: BTreeMap<String, VmMemoryStatus>) {
        for (name, entry) in lock(&self.inner.vms).iter_mut() {
            entry.memory = vms.get(name).cloned();
        }
        *lock(&self.inner.memory) = Some(host);
    }

    /// For metrics: each VM's info and its VMM's CPU time in seconds (the VMM's own: a
    /// jailed VMM's supervisor uses next to none).
    pub fn metric_samples(&self) -> Vec<(VmInfo, Option<f64>)> {
        self.list()
            .into_iter()
            .map(|info| {
                let cpu = info.vmm_pid.and_then(|pid| process::cpu_seconds(pid).ok());
                (info, cpu)
            })
            .collect()
    }

    // ---- actions ----

    /// Defines a VM from a JSON spec; starts it too when `start` is set.
    pub async fn create(&self, body: &[u8], start: bool) -> Result<VmInfo, HostError> {
        let mut spec = validate::parse_spec(body)?;
        let name = validate::check_spec(&spec, &self.inner.config.state_dir)?;
        self.inner.config.image_dirs.check_spec(&spec)?;
        {
            let mut vms = lock(&self.inner.vms);
            if vms.contains_key(&name) {
                return Err(HostError::Duplicate(name));
            }
            let paths = match self.inner.store.create_dir(&name) {
                Ok(paths) => paths,
                Err(crate::store::StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    return Err(HostError::Duplicate(name));
                }
                Err(e) => return Err(e.into()),
            };
            let addresses = match self.inner.networks.attach(&name, &mut spec) {
                Ok(addresses) => addresses,
                Err(e) => {
                    let _ = self.inner.store.remove(&name);
                    return Err(e);
                }
            };
            let record = VmRecord {
                spec,
                desired: Desired::Stopped,
                state: VmState::Stopped,
                reason: None,
                restarts: 0,
                process: None,
                jail_index: None,
                addresses,
            };
            let entry = VmEntry::new(record, paths);
            if let Err(e) = self.persist(&name, &entry) {
                let _ = self.inner.store.remove(&name);
                let _ = self.inner.networks.release(&name);
                return Err(e);
            }
            vms.insert(name.clone(), entry);
        }
        self.event(&name, EventKind::Created, "created");
        if start {
            return self.start(&name).await;
        }
        self.with_vm(&name, |e| Ok(e.info(&name)))
    }

    pub async fn start(&self, name: &str) -> Result<VmInfo, HostError> {
        {
            // Admission and the reservation (state `starting`) under one lock: two starts
            // at once cannot both fit into what only one of them fits.
            let mut vms = lock(&self.inner.vms);
            self.admit(&vms, name)?;
            let e = vms
                .get_mut(name)
                .ok_or_else(|| HostError::NotFound(name.to_string()))?;
            if e.record.state.has_process() {
                return Err(HostError::Conflict(format!(
                    "VM `{name}` is already {}",
                    e.record.state.as_str()
                )));
            }
            e.record.desired = Desired::Running;
            e.record.restarts = 0;
            e.record.reason = None;
            e.failures_in_a_row = 0;
            e.set_state(VmState::Starting);
            self.persist(name, e)?;
        }
        let generation = self.launch(name)?;
        self.wait_ready(name, generation).await;
        self.with_vm(name, |e| Ok(e.info(name)))
    }

    /// Admission control: the VM's min and overhead must fit beside the VMs that have (or
    /// are about to have) a VMM (docs/memory.md).
    fn admit(&self, vms: &BTreeMap<String, VmEntry>, name: &str) -> Result<(), HostError> {
        let candidate = vms
            .get(name)
            .ok_or_else(|| HostError::NotFound(name.to_string()))?;
        if candidate.record.state.has_process() {
            return Ok(()); // refused below as already running
        }
        let admitted: Vec<&skiff_api::MemorySpec> = vms
            .iter()
            .filter(|(n, e)| {
                *n != name
                    && (e.record.state.has_process() || e.record.state == VmState::Restarting)
            })
            .map(|(_, e)| &e.record.spec.memory)
            .collect();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |f| process::meminfo_bytes(&meminfo, f).unwrap_or(0);
        crate::memory::admission::check(
            &self.inner.config.memory,
            &admitted,
            &candidate.record.spec.memory,
            field("MemTotal"),
            field("SwapTotal"),
        )
        .map_err(|source| HostError::Admission {
            name: name.to_string(),
            source,
        })
    }

    /// Starts the VMM process of a VM in state `starting` or `restarting`.
    fn launch(&self, name: &str) -> Result<u64, HostError> {
        let (paths, generation, spec) = self.with_vm(name, |e| {
            e.generation += 1;
            e.set_state(VmState::Starting);
            Ok((e.paths.clone(), e.generation, e.record.spec.clone()))
        })?;
        let launched = self.jail_ids(name).and_then(|jail| {
            self.inner.config.image_dirs.check_spec(&spec)?;
            self.prepare_jail(&spec, jail)?;
            let disks = crate::disks::open_all(&spec, &self.inner.config.image_dirs)?;
            let sharing = self.inner.config.memory.may_share(&spec.memory);
            let vmm_bin = &self.inner.config.vmm_bin;
            let pid = vmm::launch(vmm_bin, name, &paths, jail, sharing, &disks)
                .and_then(|pid| Ok((pid, PidFd::open(pid)?)))
                .map_err(|source| HostError::Launch {
                    name: name.to_string(),
                    source,
                })?;
            Ok((pid, jail))
        });
        let ((pid, pidfd), jail) = match launched {
            Ok(launched) => launched,
            Err(error) => {
                let _ = self.with_vm(name, |e| {
                    e.record.reason = Some(error.to_string());
                    e.set_state(VmState::Failed);
                    self.persist(name, e)
                });
                self.event(name, EventKind::Failed, error.to_string());
                return Err(error);
            }
        };
        crate::crash_point::hit("after-spawn");
        let pidfd = Arc::new(pidfd);
        let start_time = process::start_time(pid).unwrap_or(0);
        self.with_vm(name, |e| {
            e.record.process = Some(ProcessRecord {
                pid,
                start_time,
                jail,
            });
            // A jailed VMM is forked by its supervisor: found once it answers.
            e.vmm_pid = jail.is_none().then_some(pid);
            e.pidfd = Some(pidfd.clone());
            e.launched_at = Some(Instant::now());
            if e.record.desired == Desired::Stopped {
                // Stopped (or deleted) while starting: it has not booted anything yet.
                let _ = pidfd.signal(libc::SIGKILL);
            }
            self.persist(name, e)
        })?;
        self.watch(name, generation, pidfd);
        Ok(generation)
    }

    /// The uid and gid the VM's VMM is jailed as (`None` unjailed). A VM's first jailed
    /// start gives it the lowest index no other VM holds, kept in its record until deleted.
    fn jail_ids(&self, name: &str) -> Result<Option<JailIds>, HostError> {
        let Some(config) = self.inner.config.jail else {
            return Ok(None);
        };
        let mut vms = lock(&self.inner.vms);
        let recorded = vms
            .get(name)
            .ok_or_else(|| HostError::NotFound(name.to_string()))?
            .record
            .jail_index;
        let index = match recorded {
            Some(index) => index,
            None => {
                let held = vms.values().filter_map(|e| e.record.jail_index);
                let index = jail::allocate_index(held).ok_or_else(|| {
                    HostError::Conflict(format!(
                        "no jail uid left: {} VMs hold one each",
                        jail::MAX_VMS
                    ))
                })?;
                let entry = vms
                    .get_mut(name)
                    .ok_or_else(|| HostError::NotFound(name.to_string()))?;
                entry.record.jail_index = Some(index);
                self.persist(name, entry)?;
                index
            }
        };
        config.ids(index).map(Some).ok_or_else(|| {
            HostError::Conflict(format!(
                "VM `{name}`: jail index {index} is outside the uid range"
            ))
        })
    }

    /// Checks that the VM's jailed VMM can read its kernel and initrd (its disks are
    /// handed to it open: `disks`).
    fn prepare_jail(
        &self,
        spec: &skiff_api::VmSpec,
        jail: Option<JailIds>,
    ) -> Result<(), HostError> {
        match jail {
            Some(ids) => jail::prepare_files(spec, ids),
            None => Ok(()),
        }
    }

    /// Waits for a starting VMM's control socket, then calls it running.
    async fn wait_ready(&self, name: &str, generation: u64) {
        let deadline = Instant::now() + self.inner.config.start_timeout;
        while Instant::now() < deadline {
            let Ok((client, current, state)) = self.with_vm(name, |e| {
                Ok((e.client.clone(), e.generation, e.record.state))
            }) else {
                return;
            };
            if current != generation || state != VmState::Starting {
                return; // ended, stopped or started again meanwhile
            }
            if let Ok(stats) = client.stats().await {
                let _ = self.with_vm(name, |e| {
                    if e.generation == generation && e.record.state == VmState::Starting {
                        e.set_state(match stats.state {
                            RunState::Running => VmState::Running,
                            RunState::Paused => VmState::Paused,
                        });
                        e.find_vmm_pid();
                        e.keep_stats(stats, self.inner.config.meter.as_ref());
                        self.persist_or_log(name, e);
                        self.event(name, EventKind::Started, describe_vmm(e));
                    }
                    Ok(())
                });
                return;
            }
            tokio::time::sleep(READY_POLL).await;
        }
        log::warn!("{name}: the VMM's control socket did not answer in time");
    }

    /// Stops the VM. Gracefully: the guest's ACPI power button is pressed and the guest gets
    /// `timeout` to shut down. Then (or at once with `force`) the VMM is told to stop, as if
    /// its power were cut, and killed if even that does not end it.
    pub async fn stop(
        &self,
        name: &str,
        timeout: Option<Duration>,
        force: bool,
    ) -> Result<VmInfo, HostError> {
        let waiting = self.with_vm(name, |e| {
            e.record.desired = Desired::Stopped;
            if !e.record.state.has_process() {
                if matches!(e.record.state, VmState::Restarting | VmState::Failed) {
                    e.set_state(VmState::Stopped);
                    e.generation += 1; // cancels a scheduled restart
                }
                self.persist(name, e)?;
                return Ok(None);
            }
            e.set_state(VmState::Stopping);
            self.persist(name, e)?;
            Ok(Some((e.client.clone(), e.state.subscribe())))
        })?;
        let Some((client, mut state)) = waiting else {
            return self.with_vm(name, |e| Ok(e.info(name)));
        };
        let mut ended = async |within: Duration| {
            tokio::time::timeout(within, state.wait_for(|s| !s.has_process()))
                .await
                .is_ok()
        };
        if !force {
            let timeout = timeout.unwrap_or(self.inner.config.stop_timeout);
            match client.command(ControlRequest::PowerButton).await {
                Ok(()) if ended(timeout).await => return self.with_vm(name, |e| Ok(e.info(name))),
                Ok(()) => log::info!("{name}: guest did not shut down within {timeout:?}"),
                Err(e) => log::info!("{name}: power button not pressed: {e}"),
            }
        }
        let power_cut = client.command(ControlRequest::Stop).await.is_ok();
        if !(power_cut && ended(POWER_CUT_GRACE).await) {
            if let Some(pidfd) = self.with_vm(name, |e| Ok(e.pidfd.clone()))? {
                log::warn!("{name}: killing its VMM");
                let _ = pidfd.signal(libc::SIGKILL);
            }
            if !ended(KILL_GRACE).await {
                return Err(HostError::Conflict(format!(
                    "VM `{name}`: its VMM did not end even when killed"
                )));
            }
        }
        self.with_vm(name, |e| Ok(e.info(name)))
    }

    pub async fn pause(&self, name: &str) -> Result<VmInfo, HostError> {
        self.pause_or_resume(name, true).await
    }

    pub async fn resume(&self, name: &str) -> Result<VmInfo, HostError> {
        self.pause_or_resume(name, false).await
    }

    async fn pause_or_resume(&self, name: &str, pause: bool) -> Result<VmInfo, HostError> {
        let (from, to, request, kind) = if pause {
            (
                VmState::Running,
                VmState::Paused,
                ControlRequest::Pause,
                EventKind::Paused,
            )
        } else {
            (
                VmState::Paused,
                VmState::Running,
                ControlRequest::Resume,
                EventKind::Resumed,
            )
        };
        let client = self.with_vm(name, |e| {
            if e.record.state != from {
                return Err(HostError::Conflict(format!(
                    "VM `{name}` is {}, not {}",
                    e.record.state.as_str(),
                    from.as_str()
                )));
            }
            Ok(e.client.clone())
        })?;
        if let Err(source) = client.command(request).await {
            if pause
                && matches!(
                    source,
                    ControlError::Timeout(_) | ControlError::BadResponse(_)
                )
            {
                // The VMM may still carry the pause out after we stopped waiting (its control
                // thread can be busy, e.g. with a reclaim of up to 20 s), and the VM stays
                // recorded as running: nothing would ever resume it. Withdraw the pause.
                if let Err(e) = client.command(ControlRequest::Resume).await {
                    log::warn!("{name}: cannot withdraw an unanswered pause: {e}");
                }
            }
            return Err(HostError::Vmm {
                name: name.to_string(),
                source,
            });
        }
        let info = self.with_vm(name, |e| {
            if e.record.state == from {
                e.set_state(to);
                self.persist(name, e)?;
            }
            Ok(e.info(name))
        })?;
        self.event(name, kind, to.as_str());
        Ok(info)
    }

    /// Stops the VM if it runs, then forgets it and its files.
    pub async fn delete(&self, name: &str) -> Result<(), HostError> {
        for _ in 0..3 {
            let removed = {
                let mut vms = lock(&self.inner.vms);
                let entry = vms
                    .get(name)
                    .ok_or_else(|| HostError::NotFound(name.to_string()))?;
                if entry.record.state.has_process() {
                    false
                } else {
                    self.inner.store.remove(name)?;
                    vms.remove(name);
                    if let Err(e) = self.inner.networks.release(name) {
                        log::error!("{name}: cannot free its network addresses: {e}");
                    }
                    true
                }
            };
            if removed {
                self.inner.images.remove_overlay(name);
                let group = name.to_string();
                let _ = tokio::task::spawn_blocking(move || crate::cgroups::remove(&group)).await;
                self.event(name, EventKind::Deleted, "deleted");
                return Ok(());
            }
            self.stop(name, None, true).await?;
        }
        Err(HostError::Conflict(format!(
            "VM `{name}` keeps being started; not deleted"
        )))
    }
}

impl crate::memory::ManagedHost for Host {
    fn memory_config(&self) -> &crate::memory::MemoryConfig {
        &self.inner.config.memory
    }

    fn vms(&self) -> Vec<VmInfo> {
        self.list()
    }

    fn vmm_clients(&self) -> Vec<(String, VmmClient)> {
        self.running_vmms()
    }

    fn keep_stats(&self, name: &str, stats: VmStats) {
        self.record_stats(name, stats)
    }

    fn keep_memory_status(&self, host: HostMemoryStatus, vms: BTreeMap<String, VmMemoryStatus>) {
        self.record_memory(host, vms)
    }

    async fn pause_vm(&self, name: &str) -> Result<(), HostError> {
        self.pause(name).await.map(|_| ())
    }

    async fn resume_vm(&self, name: &str) -> Result<(), HostError> {
        self.resume(name).await.map(|_| ())
    }
}
