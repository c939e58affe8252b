//! Per-thread seccomp filters: every thread of the VMM confines itself, before the guest
//! runs, to the system calls (and, for ioctl, madvise, fcntl and the like, the argument
//! values) that its role needs. A guest that takes over a vCPU or a device worker finds
//! no `open`, no `execve`, no `socket`, no new KVM VM there.
//!
//! The filters are per thread (no TSYNC): a vCPU needs KVM_RUN but no `accept4`, the
//! control thread the reverse. [`rules`] holds one list per [`Role`], the one place to
//! extend when a thread's code needs a new call.
//!
//! A violation traps (SIGSYS): [`trap`]'s handler writes one line naming the thread and
//! the call and ends the process with [`EXIT_SECCOMP`]. Trap rather than KILL_PROCESS
//! because the VMM itself can then name the call, whoever started it (a shell, the
//! daemon); a process that is only killed leaves its parent "killed by SIGSYS" and
//! nothing more. The handler cannot be replaced or escaped from inside a filter:
//! `rt_sigaction` is allowed to no thread, and the kernel unblocks a seccomp SIGSYS.

mod ioctls;
mod names;
mod rules;
mod trap;

use std::io;
use std::str::FromStr;
use std::sync::{mpsc, OnceLock};
use std::thread::{self, JoinHandle};

pub use trap::EXIT_SECCOMP;

/// What the filters do with a call outside a thread's list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// Trap: the VMM ends with [`EXIT_SECCOMP`] and a line naming the call.
    #[default]
    Enforce,
    /// Allow it, but the kernel logs it (SECCOMP_RET_LOG: `type=1326` lines in the kernel
    /// log, `syscall=N`): for finding what a filter misses.
    Log,
    /// No filters.
    Off,
}

impl FromStr for SeccompMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" | "enforce" => Ok(SeccompMode::Enforce),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            other => Err(format!("`{other}`: use on, log or off")),
        }
    }
}

/// The kind of work a thread does, which decides its filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The main thread once everything is started: it waits for the exit and ends.
    Main,
    /// A vCPU: KVM_RUN and the port/MMIO emulation, device activation included.
    Vcpu,
    /// A virtio device's worker thread.
    Device(DeviceRole),
    /// Asks the balloon for the guest's statistics at an interval.
    BalloonStats,
    /// Samples the working set through KVM's dirty log.
    Sampler,
    /// Feeds stdin to the serial console.
    Console,
    /// Serves the control socket.
    Control,
    /// Waits for termination signals.
    Signals,
}

/// Which virtio device a worker runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRole {
    Block,
    Net,
    Rng,
    Balloon,
    Vsock,
}

impl Role {
    /// Every role, for tests and the command line's list.
    pub const ALL: [Role; 12] = [
        Role::Main,
        Role::Vcpu,
        Role::Device(DeviceRole::Block),
        Role::Device(DeviceRole::Net),
        Role::Device(DeviceRole::Rng),
        Role::Device(DeviceRole::Balloon),
        Role::Device(DeviceRole::Vsock),
        Role::BalloonStats,
        Role::Sampler,
        Role::Console,
        Role::Control,
        Role::Signals,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Main => "main",
            Role::Vcpu => "vcpu",
            Role::Device(DeviceRole::Block) => "block",
            Role::Device(DeviceRole::Net) => "net",
            Role::Device(DeviceRole::Rng) => "rng",
            Role::Device(DeviceRole::Balloon) => "balloon",
            Role::Device(DeviceRole::Vsock) => "vsock",
            Role::BalloonStats => "balloon-stats",
            Role::Sampler => "sampler",
            Role::Console => "console",
            Role::Control => "control",
            Role::Signals => "signals",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Role::ALL.iter().map(|r| r.name()).collect();
                format!("`{s}` is no thread role (one of {})", names.join(", "))
            })
    }
}

/// The process's seccomp settings, fixed once at start-up by [`init`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub mode: SeccompMode,
    /// Test hook: the thread of this role calls a system call no filter allows right after
    /// confining itself (the e2e tests check that the VMM ends and names it).
    pub test_violation: Option<Role>,
}

static POLICY: OnceLock<Policy> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("the seccomp policy is already set")]
    AlreadySet,
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(io::Error),
    #[error("cannot build the {role} thread's seccomp filter: {source}")]
    Build {
        role: &'static str,
        source: seccompiler::BackendError,
    },
    #[error("cannot install the {role} thread's seccomp filter: {source}")]
    Apply {
        role: &'static str,
        source: seccompiler::Error,
    },
}

/// Sets the process's policy and installs the SIGSYS handler. Call once, before any thread
/// starts; without it, threads run unfiltered (library users, unit tests).
pub fn init(policy: Policy) -> Result<(), SeccompError> {
    if policy.mode == SeccompMode::Enforce {
        trap::install_handler().map_err(SeccompError::Handler)?;
    }
    POLICY.set(policy).map_err(|_| SeccompError::AlreadySet)
}

fn policy() -> Policy {
    POLICY.get().copied().unwrap_or(Policy {
        mode: SeccompMode::Off,
        test_violation: None,
    })
}

/// Confines the calling thread to `role`'s system calls (for good: a filter cannot be
/// removed). Sets no_new_privs for the thread, as seccomp requires without CAP_SYS_ADMIN.
pub fn confine(role: Role) -> Result<(), SeccompError> {
    let policy = policy();
    let mismatch = match policy.mode {
        SeccompMode::Enforce => Some(seccompiler::SeccompAction::Trap),
        SeccompMode::Log => Some(seccompiler::SeccompAction::Log),
        SeccompMode::Off => None,
    };
    if let Some(mismatch) = mismatch {
        let program = rules::program(role, mismatch).map_err(|source| SeccompError::Build {
            role: role.name(),
            source,
        })?;
        trap::remember_thread(role.name());
        seccompiler::apply_filter(&program).map_err(|source| SeccompError::Apply {
            role: role.name(),
            source,
        })?;
    }
    if policy.test_violation == Some(role) {
        trap::call_forbidden_syscall();
    }
    Ok(())
}

/// Starts a named thread that confines itself to `role` before running `body`; returns
/// once it has, so a thread whose filter failed never runs and its error reaches the caller.
pub fn spawn<F>(name: String, role: Role, stack: usize, body: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let (confined_tx, confined_rx) = mpsc::sync_channel(1);
    let handle = thread::Builder::new()
        .name(name)
        .stack_size(stack)
        .spawn(move || {
            let confined = confine(role);
            let ok = confined.is_ok();
            let _ = confined_tx.send(confined);
            if ok {
                body();
            }
        })?;
    match confined_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(io::Error::other(e)),
        Err(_) => Err(io::Error::other("the thread ended before confining itself")),
    }
}

/// [`spawn`] for one role, in the shape `skiff_virtio::worker::Worker::spawn` takes.
pub fn spawner(
    role: Role,
) -> impl Fn(String, usize, Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>> {
    move |name, stack, body| spawn(name, role, stack, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_modes_parse_from_their_names() {
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>(), Ok(role));
        }
        assert!("gpu".parse::<Role>().is_err());
        assert_eq!("on".parse(), Ok(SeccompMode::Enforce));
        assert_eq!("log".parse(), Ok(SeccompMode::Log));
        assert_eq!("off".parse(), Ok(SeccompMode::Off));
        assert!("maybe".parse::<SeccompMode>().is_err());
    }
}
