//! The jailer: puts a VMM process where an escape from it reaches as little as possible.
//!
//! The order matters, and is the whole design:
//!
//! 1. [`fork_into_pid_namespace`] (still root, single-threaded): a new PID namespace takes
//!    effect for children only, so the process forks; the parent stays outside as a small
//!    supervisor ([`supervise`]: forwards termination signals, reports the child's exit
//!    status as its own, removes what the jail put in its directory).
//! 2. The child opens what only the host can give it (taps, in the host's network
//!    namespace: see `skiff run`), then [`enter`]s the jail: new mount, network, IPC and UTS
//!    namespaces; a root holding only the files and device nodes of [`JailSpec`] plus a
//!    private /proc and a `run/` directory for its sockets; rlimits; every capability
//!    dropped (bounding and ambient sets too), a dedicated uid and gid, no_new_privs.
//! 3. Only then does the VMM start a thread; each thread then confines itself with seccomp.

mod fs;
mod privileges;
mod process;

use std::io;
use std::path::PathBuf;

pub use fs::{clean, JAIL_RUN_DIR};
pub use process::{fork_into_pid_namespace, supervise, Forked};

/// What goes into a jail and who runs in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailSpec {
    /// The jail's root on the host: an existing or new directory, on a file system that
    /// allows device nodes, owned by root.
    pub dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Host files bind-mounted into the jail's root.
    pub files: Vec<JailFile>,
    /// Device nodes made in the jail's `/dev`, owned by `uid`.
    pub devices: Vec<Device>,
    pub limits: Limits,
}

/// A host file that appears in the jail as `/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailFile {
    pub source: PathBuf,
    pub name: String,
    /// Mounted read-write; otherwise the bind mount is read-only.
    pub writable: bool,
}

/// The device nodes a VMM may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Kvm,
    VhostVsock,
    Urandom,
}

impl Device {
    /// The node's path, on the host and in the jail.
    pub fn path(self) -> &'static str {
        match self {
            Device::Kvm => "/dev/kvm",
            Device::VhostVsock => "/dev/vhost-vsock",
            Device::Urandom => "/dev/urandom",
        }
    }
}

/// Resource limits of the jailed process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open descriptors.
    pub nofile: u64,
    /// Processes and threads of the jail's uid.
    pub nproc: u64,
    /// Largest file the process may write (bytes).
    pub fsize: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("the jailer needs root (it makes namespaces, mounts and device nodes)")]
    NotRoot,
    #[error("the jail's uid and gid must not be 0")]
    RootIds,
    #[error("jail: {what}: {source}")]
    Step {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl JailError {
    fn step(what: impl Into<String>) -> impl FnOnce(io::Error) -> JailError {
        let what = what.into();
        move |source| JailError::Step { what, source }
    }
}

/// A libc call's -1 as the thread's errno.
fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Enters the jail for good (the child of [`fork_into_pid_namespace`]; single-threaded).
pub fn enter(spec: &JailSpec) -> Result<(), JailError> {
    if spec.uid == 0 || spec.gid == 0 {
        return Err(JailError::RootIds);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::NotRoot);
    }
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    // SAFETY: unshare with namespace flags only changes this process's namespaces.
    check(unsafe { libc::unshare(flags) }).map_err(JailError::step("unshare namespaces"))?;
    fs::build_root(spec)?;
    fs::change_root(&spec.dir)?;
    privileges::set_hostname()?;
    privileges::set_limits(&spec.limits)?;
    privileges::drop_to(spec.uid, spec.gid)?;
    // Changing credentials cleared the parent-death signal set after the fork: set it
    // again, or a killed supervisor would leave the VMM running.
    process::die_with_parent()?;
    Ok(())
}
