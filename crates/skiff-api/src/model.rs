//! The REST API's answers: what the daemon says about a VM, its events and the host. Shared
//! by the server, the CLI and the tests, so a field means the same thing everywhere.

use crate::VmSpec;
use serde::{Deserialize, Serialize};

/// Where a VM is in its life, as the daemon sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Defined, never started or stopped on request (or powered off by its guest).
    Stopped,
    /// The VMM process is starting; its control socket does not answer yet.
    Starting,
    Running,
    Paused,
    /// A stop was asked for; the VMM has not ended yet.
    Stopping,
    /// The VMM ended with a failure; the restart policy starts it again after a delay.
    Restarting,
    /// The VMM ended with a failure and will not be started again by itself.
    Failed,
}

impl VmState {
    /// A VMM process exists (or is about to) in this state.
    pub fn has_process(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Paused | VmState::Stopping
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Restarting => "restarting",
            VmState::Failed => "failed",
        }
    }

    pub const ALL: [VmState; 7] = [
        VmState::Stopped,
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::Stopping,
        VmState::Restarting,
        VmState::Failed,
    ];
}

/// What the user wants: the supervisor works towards it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    Running,
    Stopped,
}

/// How a VMM process ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// Exit status (see docs/architecture.md, "How a VM ends").
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Ended while the daemon was not its parent and left no status file (e.g. SIGKILL).
    Unknown,
}

impl ExitReason {
    /// Status 0 is a clean end (power-off or a stop); everything else is a failure, except a
    /// guest's reboot request, which is its own case.
    pub fn is_failure(&self) -> bool {
        !matches!(self, ExitReason::Code(0) | ExitReason::Code(REBOOT_STATUS))
    }

    pub fn is_reboot(&self) -> bool {
        *self == ExitReason::Code(REBOOT_STATUS)
    }
}

/// `skiff run`'s exit status for a guest's reboot request.
pub const REBOOT_STATUS: i32 = 5;

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Code(0) => write!(f, "exited normally"),
            ExitReason::Code(3) => write!(f, "exit status 3 (guest kernel panic)"),
            ExitReason::Code(4) => write!(f, "exit status 4 (VM crashed)"),
            ExitReason::Code(5) => write!(f, "exit status 5 (guest reboot request)"),
            ExitReason::Code(code) => write!(f, "exit status {code}"),
            ExitReason::Signal(sig) => write!(f, "killed by signal {sig}"),
            ExitReason::Unknown => write!(f, "ended without an exit status (killed)"),
        }
    }
}

/// One VM as `GET /vms/{name}` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub state: VmState,
    pub desired: Desired,
    pub spec: VmSpec,
    /// The process the daemon started and watches, while there is one: the VMM, or a
    /// jailed VMM's supervisor (`skiff run` outside the jail's PID namespace, which reports
    /// the VMM's exit status as its own). Killing it ends the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The VMM itself as the host sees it (its /proc/PID holds the VM's threads and memory):
    /// `pid` unless jailed, else the supervisor's child. Known once the VMM answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_pid: Option<i32>,
    /// Who the VMM runs as and where, when the daemon jails it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<JailInfo>,
    /// Restarts by the restart policy since the last start on request.
    pub restarts: u32,
    /// Why the VM is failed or restarting: how its VMM ended and its last line on stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// From the VMM's control socket, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<crate::control::VmStats>,
    /// The serial console's files on the daemon's host (`skiff vm console` uses them).
    pub console: ConsoleFiles,
    /// The memory manager's latest figures, while the VM runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<VmMemoryStatus>,
    /// Its addresses on managed networks (docs/network.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<crate::network::NicAddress>,
}

/// A jailed VMM's identity and root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailInfo {
    pub uid: u32,
    pub gid: u32,
    /// The jail directory on the host: the VMM's `/`.
    pub root: String,
}

/// One VM as the memory manager saw it in its latest period (docs/memory.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMemoryStatus {
    pub min_bytes: u64,
    pub max_bytes: u64,
    pub shares: u64,
    /// What the policy wants the VM to hold.
    pub target_bytes: u64,
    /// Guest memory backed by host memory.
    pub allocated_bytes: u64,
    /// The part of it the guest actively uses, as the policy counted it (f × allocated).
    pub active_bytes: u64,
    pub ballooned_bytes: u64,
    /// Guest memory merged with other pages by KSM.
    pub shared_bytes: u64,
    /// What the guest would use if left alone.
    pub demand_bytes: u64,
    /// Paused by the memory manager (low state) until it is back under target.
    pub paused_by_manager: bool,
    /// Hypervisor-level reclaim the policy asked for in the latest period.
    pub reclaim_wanted_bytes: u64,
}

/// The host's memory as the memory manager saw it in its latest period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMemoryStatus {
    /// Host memory Skiff's VMs may use altogether.
    pub budget_bytes: u64,
    /// The part of the budget not in use.
    pub free_bytes: u64,
    /// Guest memory the targets share (budget less overheads less the high threshold).
    pub allocatable_bytes: u64,
    pub state: skiff_mem_policy::FreeState,
    pub swap_free_bytes: u64,
    /// The running VMs' mins alone exceed what is allocatable.
    pub mins_exceed_budget: bool,
    /// Page sharing host-wide, when the host has KSM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ksm: Option<KsmStatus>,
}

/// KSM (the kernel's page sharing) as the memory manager saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KsmStatus {
    /// ksmd is scanning.
    pub running: bool,
    /// The daemon starts ksmd and sets its scan rate (`skiff host --ksm`).
    pub managed: bool,
    pub pages_to_scan: u32,
    pub sleep_millisecs: u32,
    /// Distinct pages KSM keeps for the merged ones.
    pub pages_shared: u64,
    /// Pages merged into those: what sharing saves.
    pub pages_sharing: u64,
    /// Host memory saved: pages_sharing × 4 KiB.
    pub saved_bytes: u64,
}

/// The serial console of a VM under the daemon: a FIFO for input and a log of its output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleFiles {
    pub input: String,
    pub log: String,
}

/// One thing that happened to a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub vm: String,
    pub kind: EventKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Started,
    Adopted,
    Stopped,
    Paused,
    Resumed,
    Restarting,
    Failed,
    Deleted,
}

/// `GET /host`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub version: String,
    pub pid: i32,
    pub uptime_secs: u64,
    pub state_dir: String,
    pub vms: u32,
    pub running: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// The memory manager's latest figures (absent before its first period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<HostMemoryStatus>,
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
