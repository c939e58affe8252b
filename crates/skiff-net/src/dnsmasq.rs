//! One supervised dnsmasq per network: started in the foreground as the daemon's child
//! (killed with it, PR_SET_PDEATHSIG), restarted when it ends on its own, told to reread
//! its hosts files with SIGHUP, stopped with SIGTERM. A dnsmasq left by a daemon that died
//! is found by its pid file and ended before a new one starts.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// How long after an unexpected end dnsmasq is started again (doubling up to a minute).
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A running supervisor of one dnsmasq.
pub struct Dnsmasq {
    pid: Arc<AtomicI32>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Dnsmasq {
    /// Starts dnsmasq (`program`, usually `dnsmasq`) with `args`, its output appended to
    /// `log`; a stale one named by `pid_file` is ended first.
    pub fn start(program: PathBuf, args: Vec<OsString>, log: PathBuf, pid_file: &Path) -> Dnsmasq {
        end_stale(pid_file);
        let pid = Arc::new(AtomicI32::new(0));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(supervise(program, args, log, pid.clone(), stopped));
        Dnsmasq { pid, stop, task }
    }

    /// dnsmasq's PID while it runs.
    pub fn pid(&self) -> Option<i32> {
        Some(self.pid.load(Ordering::Relaxed)).filter(|p| *p > 0)
    }

    /// Has dnsmasq reread its DHCP hosts and hosts files.
    pub fn reload(&self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill has no memory effects; the PID is our own child's.
            unsafe { libc::kill(pid, libc::SIGHUP) };
        }
    }

    /// Ends dnsmasq and its supervisor.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn supervise(
    program: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    pid: Arc<AtomicI32>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut child = match spawn(&program, &args, &log) {
            Ok(child) => child,
            Err(e) => {
                log::error!("cannot start {}: {e}", program.display());
                if wait_or_stop(&mut stopped, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        pid.store(child.id().map_or(0, |p| p as i32), Ordering::Relaxed);
        tokio::select! {
            status = child.wait() => {
                pid.store(0, Ordering::Relaxed);
                log::warn!("dnsmasq ended on its own ({status:?}): starting it again in {backoff:?} (log: {})", log.display());
                if wait_or_stop(&mut stopped, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            _ = stopped.changed() => {
                if let Some(p) = child.id() {
                    // SAFETY: kill has no memory effects; the PID is our child's, not reaped yet.
                    unsafe { libc::kill(p as i32, libc::SIGTERM) };
                }
                if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                pid.store(0, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Sleeps `delay` unless a stop comes first (then true).
async fn wait_or_stop(stopped: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stopped.borrow(),
        _ = stopped.changed() => true,
    }
}

fn spawn(program: &Path, args: &[OsString], log: &Path) -> std::io::Result<tokio::process::Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Ends the dnsmasq named by a pid file, if that process is still a dnsmasq.
fn end_stale(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "dnsmasq" {
        log::info!("ending dnsmasq pid {pid} left by an earlier daemon");
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        for _ in 0..50 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}
