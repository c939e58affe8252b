//! The PID namespace and the supervisor that stays outside it.

use crate::{check, JailError};

/// Which side of the fork this is.
#[derive(Debug, PartialEq, Eq)]
pub enum Forked {
    /// The supervisor, outside the jail; the child's PID as the host sees it.
    Parent { child: libc::pid_t },
    /// The process that becomes the jailed VMM (PID 1 of its namespace).
    Child,
}

const FORWARDED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn supervisor_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own with valid signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED.into_iter().chain([libc::SIGCHLD]) {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Forks into a new PID namespace. Call while single-threaded. The termination signals and
/// SIGCHLD are blocked first (the child inherits that; the VMM blocks the termination
/// signals anyway and has no children), so none is lost before [`supervise`] waits.
pub fn fork_into_pid_namespace() -> Result<Forked, JailError> {
    let set = supervisor_signals();
    // SAFETY: changes this thread's mask with an initialised set.
    check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })
        .map_err(JailError::step("block signals"))?;
    // SAFETY: unshare(CLONE_NEWPID) affects the children made from now on.
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) })
        .map_err(JailError::step("unshare the PID namespace"))?;
    // SAFETY: the process is single-threaded, so the child may go on running Rust code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(JailError::step("fork")(std::io::Error::last_os_error())),
        0 => {
            die_with_parent()?;
            Ok(Forked::Child)
        }
        child => Ok(Forked::Parent { child }),
    }
}

/// The jailed VMM must not outlive its supervisor (killed by the daemon or a test harness):
/// SIGKILL when it dies. Credential changes clear this, so [`crate::enter`] sets it again.
pub(crate) fn die_with_parent() -> Result<(), JailError> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })
        .map_err(JailError::step("set the parent-death signal"))
}

/// Waits for the jailed child, forwarding SIGINT, SIGTERM and SIGHUP to it, and returns the
/// exit status to report: the child's, or 128 + the signal that killed it.
pub fn supervise(child: libc::pid_t) -> i32 {
    let set = supervisor_signals();
    loop {
        if let Some(status) = reap(child) {
            return status;
        }
        // SAFETY: the set is initialised; no siginfo is asked for.
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if FORWARDED.contains(&sig) {
            // SAFETY: kill with our own child's PID and a valid signal.
            unsafe { libc::kill(child, sig) };
        }
    }
}

/// The child's exit status once it has ended.
fn reap(child: libc::pid_t) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into our integer.
    let pid = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
    if pid == child {
        if libc::WIFEXITED(status) {
            return Some(libc::WEXITSTATUS(status));
        }
        if libc::WIFSIGNALED(status) {
            return Some(128 + libc::WTERMSIG(status));
        }
        return None;
    }
    if pid < 0 {
        // No such child any more: nothing to wait for.
        return Some(1);
    }
    None
}
