//! One VMM process: starting `skiff run` for a VM, and the client of its control socket.
//! The client is what every part of the daemon (supervisor, API, memory manager) uses to
//! talk to a running VM.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use skiff_api::control::{ControlRequest, ControlResponse, VmStats};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use skiff_api::memory::RECLAIM_DEADLINE;

use crate::jail::JailIds;
use crate::store::VmPaths;

/// A VMM that does not answer a control request in this time is treated as not answering.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest control answer read (a stats answer is about 2 KiB): a VMM taken over by its
/// guest must not make the root daemon buffer without end.
pub const MAX_ANSWER_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the VMM's control socket {path}: {source}")]
    Unreachable { path: PathBuf, source: io::Error },
    #[error("the VMM did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the VMM refused: {0}")]
    Refused(String),
    #[error("the VMM's answer is not a control response: {0}")]
    BadResponse(String),
}

/// The client of one VMM's control socket (`skiff_api::control`).
#[derive(Clone, Debug)]
pub struct VmmClient {
    socket: PathBuf,
}

impl VmmClient {
    pub fn new(socket: PathBuf) -> Self {
        VmmClient { socket }
    }

    pub async fn request(&self, request: &ControlRequest) -> Result<ControlResponse, ControlError> {
        // A reclaim works for up to its deadline: giving up sooner would leave the VMM busy
        // with it while the next requests (a pause) queue behind it and time out in turn.
        let timeout = match request {
            ControlRequest::Reclaim { .. } => RECLAIM_DEADLINE + REQUEST_TIMEOUT,
            _ => REQUEST_TIMEOUT,
        };
        tokio::time::timeout(timeout, self.exchange(request))
            .await
            .map_err(|_| ControlError::Timeout(timeout))?
    }

    async fn exchange(&self, request: &ControlRequest) -> Result<ControlResponse, ControlError> {
        let unreachable = |source| ControlError::Unreachable {
            path: self.socket.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.socket)
            .await
            .map_err(unreachable)?;
        let mut line =
            serde_json::to_string(request).map_err(|e| ControlError::BadResponse(e.to_string()))?;
        line.push('\n');
        stream
            .write_all(line.as_bytes())
            .await
            .map_err(unreachable)?;
        let mut answer = Vec::new();
        BufReader::new(stream.take(MAX_ANSWER_BYTES))
            .read_until(b'\n', &mut answer)
            .await
            .map_err(unreachable)?;
        if answer.last() != Some(&b'\n') && answer.len() as u64 == MAX_ANSWER_BYTES {
            return Err(ControlError::BadResponse(format!(
                "no end of line within {} KiB",
                MAX_ANSWER_BYTES >> 10
            )));
        }
        serde_json::from_slice(answer.trim_ascii())
            .map_err(|e| ControlError::BadResponse(e.to_string()))
    }

    /// Sends a request that answers with nothing but ok.
    pub async fn command(&self, request: ControlRequest) -> Result<(), ControlError> {
        match self.request(&request).await? {
            ControlResponse::Ok { .. } => Ok(()),
            ControlResponse::Error { message } => Err(ControlError::Refused(message)),
        }
    }

    pub async fn stats(&self) -> Result<VmStats, ControlError> {
        match self.request(&ControlRequest::Stats).await? {
            ControlResponse::Ok {
                stats: Some(stats), ..
            } => Ok(stats),
            ControlResponse::Ok { stats: None, .. } => {
                Err(ControlError::BadResponse("stats missing".into()))
            }
            ControlResponse::Error { message } => Err(ControlError::Refused(message)),
        }
    }

    pub async fn balloon(&self, target_mib: u64) -> Result<(), ControlError> {
        self.command(ControlRequest::Balloon { target_mib }).await
    }
}

/// Starts `skiff run` for the VM `name` in `paths`, in its own session so that it outlives the
/// daemon, and in its control group skiff/NAME with the spec's cpu shares and quota (the
/// VMM joins it before it starts a thread; see docs/cgroups.md); jailed as `jail` when given.
/// Its serial console is a FIFO (stdin) and a log file (stdout), which need no process on the
/// other side: the console survives a daemon restart. Without `page_sharing` its guest RAM
/// is never mergeable (another sharing domain's VM, or one that opted out). Returns the PID
/// of the process started: the VMM, or (jailed) its supervisor outside the jail's PID
/// namespace. `disks` are the VM's disks, opened by the daemon (`disks`), in spec order:
/// the VMM inherits them (`--disk-fd INDEX=FD`) and never opens the paths.
pub fn launch(
    vmm_bin: &Path,
    name: &str,
    paths: &VmPaths,
    jail: Option<JailIds>,
    page_sharing: bool,
    disks: &[OwnedFd],
) -> io::Result<i32> {
    make_fifo(&paths.console_in())?;
    // Read-write, so the VMM itself holds a writer and never sees end-of-file on its console
    // when an attached client goes away.
    let stdin = OpenOptions::new()
        .read(true)
        .write(true)
        .open(paths.console_in())?;
    let append = |path: PathBuf| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
    };
    let stdout = append(paths.console_log())?;
    let stderr = append(paths.vmm_log())?;
    match std::fs::remove_file(paths.status_file()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut command = command(vmm_bin, name, paths, jail)?;
    if !page_sharing {
        command.arg("--no-page-sharing");
    }
    let fds: Vec<RawFd> = disks.iter().map(AsRawFd::as_raw_fd).collect();
    for (index, fd) in fds.iter().enumerate() {
        command.arg("--disk-fd").arg(format!("{index}={fd}"));
    }
    command
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    // SAFETY: setsid and fcntl are async-signal-safe; the closure reads only its own copy
    // of the descriptor numbers, allocated before the fork.
    // The disks' descriptors are close-on-exec in the daemon (no other child gets them);
    // only this child keeps them across its exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    // The child is reaped through its pidfd (supervisor), not through `Child`.
    Ok(child.id() as i32)
}

/// The `skiff run` command line of a VM.
fn command(
    vmm_bin: &Path,
    name: &str,
    paths: &VmPaths,
    jail: Option<JailIds>,
) -> io::Result<Command> {
    let mut command = Command::new(vmm_bin);
    command
        .arg("run")
        .arg("--config")
        .arg(paths.spec())
        .arg("--control-socket")
        .arg(paths.control_socket())
        .arg("--status-file")
        .arg(paths.status_file())
        .arg("--cgroup")
        .arg(name);
    if let Some(ids) = jail {
        // The jailer wants an absolute root; the state directory may be given relative.
        command
            .arg("--jail")
            .arg(std::path::absolute(paths.jail())?)
            .arg("--uid")
            .arg(ids.uid.to_string())
            .arg("--gid")
            .arg(ids.gid.to_string());
    }
    Ok(command)
}

fn make_fifo(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("path holds a NUL byte"))?;
    // SAFETY: a valid NUL-terminated path and a mode.
    if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    Ok(())
}

/// The last non-empty line of the VMM's stderr log: usually why it ended.
pub fn last_log_line(path: &Path) -> Option<String> {
    let text = crate::log_rotation::read_tail(path, 4096).ok()?;
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// `skiff run --status-file`'s content: the exit status the VMM reported.
pub fn read_status_file(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_and_status_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("vmm.log");
        std::fs::write(&log, "first\nskiff: guest kernel panicked\n\n").expect("write");
        assert_eq!(
            last_log_line(&log).as_deref(),
            Some("skiff: guest kernel panicked")
        );
        assert_eq!(last_log_line(&dir.path().join("none")), None);
        assert_eq!(
            crate::log_rotation::read_tail(&log, 7).expect("tail"),
            "icked\n\n"
        );
        let status = dir.path().join("exit-status");
        assert_eq!(read_status_file(&status), None);
        std::fs::write(&status, "3\n").expect("write");
        assert_eq!(read_status_file(&status), Some(3));
    }

    #[test]
    fn the_command_line_jails_the_vmm_when_asked() {
        let paths = VmPaths {
            dir: PathBuf::from("/state/vms/web"),
        };
        let args = |jail| -> Vec<String> {
            command(Path::new("/bin/skiff"), "web", &paths, jail)
                .expect("command")
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let unjailed = [
            "run",
            "--config",
            "/state/vms/web/spec.json",
            "--control-socket",
            "/state/vms/web/control.sock",
            "--status-file",
            "/state/vms/web/exit-status",
            "--cgroup",
            "web",
        ];
        assert_eq!(args(None), unjailed);
        let ids = JailIds {
            uid: 200_004,
            gid: 200_004,
        };
        let jailed = args(Some(ids));
        assert_eq!(jailed[..unjailed.len()], unjailed);
        assert_eq!(
            jailed[unjailed.len()..],
            [
                "--jail",
                "/state/vms/web/jail",
                "--uid",
                "200004",
                "--gid",
                "200004"
            ]
        );
        let relative = VmPaths {
            dir: PathBuf::from("state/vms/web"),
        };
        let command = command(Path::new("skiff"), "web", &relative, Some(ids)).expect("command");
        let jail = command
            .get_args()
            .skip_while(|a| *a != "--jail")
            .nth(1)
            .expect("--jail DIR");
        assert!(Path::new(jail).is_absolute(), "{jail:?}");
    }

    #[tokio::test]
    async fn client_reports_an_unreachable_socket() {
        let client = VmmClient::new(PathBuf::from("/nonexistent/control.sock"));
        let err = client.stats().await.expect_err("no VMM");
        assert!(matches!(err, ControlError::Unreachable { .. }), "{err}");
    }
}
