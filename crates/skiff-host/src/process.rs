//! Processes by their kernel handles: start time and CPU time from /proc, a pidfd to learn
//! when a VMM ends (also one the daemon did not start: an adopted VMM is not its child) and to
//! signal it without racing PID reuse.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

use crate::model::ExitReason;

/// Fields of /proc/PID/stat after the command name (which may hold spaces and parentheses).
fn stat_fields(pid: i32) -> io::Result<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))?;
    Ok(after_comm.split_whitespace().map(str::to_string).collect())
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat, for n >= 3.
fn stat_field(fields: &[String], n: usize) -> io::Result<u64> {
    fields
        .get(n - 3)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no field {n} in /proc/PID/stat")))
}

/// When the process started, in clock ticks since boot: with the PID it names one process
/// for the machine's whole uptime.
pub fn start_time(pid: i32) -> io::Result<u64> {
    stat_field(&stat_fields(pid)?, 22)
}

/// User + system CPU time of the process (all its threads), in seconds.
pub fn cpu_seconds(pid: i32) -> io::Result<f64> {
    let fields = stat_fields(pid)?;
    let ticks = stat_field(&fields, 14)? + stat_field(&fields, 15)?;
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 })
}

/// The one child of a process: a jailed VMM under its supervisor (`skiff run --jail` forks
/// into the jail's PID namespace; the VMM's /proc/PID, with its threads and memory, is the
/// child's). From /proc/PID/task/PID/children (the thread that forked is the main thread),
/// or, on a kernel without that file, the process whose parent it is.
pub fn only_child(pid: i32) -> Option<i32> {
    match std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        Ok(children) => children.split_whitespace().next()?.parse().ok(),
        Err(_) => std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|&candidate| {
                stat_fields(candidate)
                    .ok()
                    .and_then(|fields| stat_field(&fields, 4).ok())
                    == Some(pid as u64)
            }),
    }
}

/// The parent of process `pid`.
pub fn parent(pid: i32) -> Option<i32> {
    stat_field(&stat_fields(pid).ok()?, 4)
        .ok()
        .and_then(|p| i32::try_from(p).ok())
}

/// A process is "the same" if it exists with the recorded start time and is not a zombie.
pub fn is_same_process(pid: i32, recorded_start: u64) -> bool {
    match stat_fields(pid) {
        Ok(fields) => {
            fields.first().is_some_and(|state| state != "Z")
                && stat_field(&fields, 22).ok() == Some(recorded_start)
        }
        Err(_) => false,
    }
}

/// A pidfd: readable once the process has ended.
pub struct PidFd {
    fd: AsyncFd<OwnedFd>,
    pid: i32,
}

impl PidFd {
    /// Must be called inside the tokio runtime.
    pub fn open(pid: i32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: an OwnedFd stays open and returns the same descriptor until the AsyncFd
        // that owns it is dropped.
        let fd = unsafe { AsyncFd::register(owned) }.map_err(|e| e.into_parts().1)?;
        Ok(PidFd { fd, pid })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Returns when the process has ended.
    pub async fn exited(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        guard.retain_ready();
        Ok(())
    }

    /// Signals the process this pidfd refers to (never another one that reused its PID).
    pub fn signal(&self, sig: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with our descriptor, a signal number, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(()); // already gone
            }
            return Err(e);
        }
        Ok(())
    }
}

/// Collects the exit status of an ended child; `None` if it is not our child (an adopted
/// VMM) or has not ended.
pub fn reap_child(pid: i32) -> Option<ExitReason> {
    let mut status = 0;
    // SAFETY: waitpid on a specific pid with a valid out pointer; WNOHANG never blocks.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if rc != pid {
        return None;
    }
    if libc::WIFEXITED(status) {
        Some(ExitReason::Code(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(ExitReason::Signal(libc::WTERMSIG(status)))
    } else {
        Some(ExitReason::Unknown)
    }
}

/// A "Name: N kB" field of /proc/meminfo, in bytes.
pub fn meminfo_bytes(meminfo: &str, field: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// (MemTotal, MemAvailable) of the host in bytes.
pub fn host_memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    (
        meminfo_bytes(&text, "MemTotal").unwrap_or(0),
        meminfo_bytes(&text, "MemAvailable").unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_figures() {
        let me = std::process::id() as i32;
        let start = start_time(me).expect("start time");
        assert!(is_same_process(me, start));
        assert!(
            !is_same_process(me, start + 1),
            "another start time is another process"
        );
        assert!(cpu_seconds(me).expect("cpu") >= 0.0);
    }

    #[test]
    fn the_only_child_is_found() {
        // A supervisor-like parent: sh with one child.
        let mut parent = std::process::Command::new("sh")
            .args(["-c", "sleep 100 & wait"])
            .spawn()
            .expect("spawn");
        let pid = parent.id() as i32;
        let comm = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
        // Until the child has forked and exec'd sleep (its comm is "sh" in between).
        let mut found = None;
        for _ in 0..500 {
            found = only_child(pid);
            if found.and_then(comm).is_some_and(|c| c.trim() == "sleep") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let child = found.expect("sh's child");
        assert_eq!(comm(child).as_deref().map(str::trim), Some("sleep"));
        assert_eq!(only_child(child), None, "sleep has no child");
        // SAFETY: kill with a PID we just found, our grandchild.
        unsafe { libc::kill(child, libc::SIGKILL) };
        parent.wait().expect("wait");
    }

    #[test]
    fn meminfo_parsing() {
        let text = "MemTotal:       16318508 kB\nMemFree: 1 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(meminfo_bytes(text, "MemTotal"), Some(16318508 * 1024));
        assert_eq!(meminfo_bytes(text, "MemAvailable"), Some(12000000 * 1024));
        assert_eq!(meminfo_bytes(text, "Mem"), None);
    }

    #[tokio::test]
    #[allow(clippy::zombie_processes)] // reaped by reap_child, the code under test
    async fn pidfd_sees_a_child_end_and_reaps_its_status() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .expect("spawn");
        let pid = child.id() as i32;
        let pidfd = PidFd::open(pid).expect("pidfd");
        pidfd.exited().await.expect("exited");
        assert_eq!(reap_child(pid), Some(ExitReason::Code(7)));
        assert_eq!(reap_child(pid), None, "reaped once");

        let sleeper = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .expect("spawn");
        let pid = sleeper.id() as i32;
        let pidfd = PidFd::open(pid).expect("pidfd");
        pidfd.signal(libc::SIGKILL).expect("kill");
        pidfd.exited().await.expect("exited");
        assert_eq!(reap_child(pid), Some(ExitReason::Signal(libc::SIGKILL)));
    }
}
