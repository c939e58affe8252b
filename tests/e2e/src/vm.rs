//! A running VMM process: its console as it comes, signals, and its end.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Error, GuestSpec, RunOutput, TestEnv, GUEST_EXIT, INIT_READY};

/// x86 Linux's COMMAND_LINE_SIZE, including the terminating NUL.
const MAX_CMDLINE: usize = 2048;

/// Signals a test may send to the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
    Int,
    Hup,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Int => libc::SIGINT,
            Signal::Hup => libc::SIGHUP,
        }
    }
}

/// What the console reader learned so far.
#[derive(Default)]
struct Console {
    text: String,
    init_ready: Option<Duration>,
    guest_exit: Option<Duration>,
    guest_status: Option<i32>,
}

/// A VMM process booting or running a guest. Dropping it kills the VMM; the kernel
/// also kills it (PR_SET_PDEATHSIG) if the test process dies, or if the thread that
/// spawned it ends while it still runs — spawn a `Vm` in the thread that owns it.
pub struct Vm {
    child: Child,
    stdin: Option<ChildStdin>,
    command: String,
    started: Instant,
    console: Arc<Mutex<Console>>,
    stderr: Arc<Mutex<String>>,
    lines: Receiver<String>,
    readers: Vec<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Vm {
    pub(crate) fn spawn(spec: &GuestSpec, env: &TestEnv) -> Result<Vm, Error> {
        let cmdline = spec.kernel_cmdline();
        if cmdline.len() >= MAX_CMDLINE {
            return Err(Error::Tool {
                what: "building the kernel command line".into(),
                detail: format!(
                    "{} bytes, x86 Linux takes at most {} (the guest command is base64 in it: \
                     put long scripts on a disk image)",
                    cmdline.len(),
                    MAX_CMDLINE - 1
                ),
            });
        }
        let mut cmd = spec.command(env);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Self::spawn_command(cmd)
    }

    /// Starts an arbitrary VMM command line (stdio is taken over by the harness).
    pub fn spawn_command(mut cmd: Command) -> Result<Vm, Error> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: runs in the child between fork and exec; prctl is async-signal-safe
        // and the closure touches no parent memory.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let command = describe(&cmd);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| Error::Spawn {
            command: command.clone(),
            source: Arc::new(e),
        })?;
        let console = Arc::new(Mutex::new(Console::default()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let console = Arc::clone(&console);
            readers.push(std::thread::spawn(move || {
                read_console(out, started, &console, &tx)
            }));
        }
        if let Some(err) = child.stderr.take() {
            let stderr = Arc::clone(&stderr);
            readers.push(std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut err = err;
                let mut chunk = [0u8; 4096];
                while let Ok(n) = err.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    *lock(&stderr) = String::from_utf8_lossy(&buf).into_owned();
                }
            }));
        }
        Ok(Vm {
            stdin: child.stdin.take(),
            child,
            command,
            started,
            console,
            stderr,
            lines,
            readers,
        })
    }

    /// Time since the VMM was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The VMM's process id (for `/proc/PID/...`). A jailed Skiff (`--jail`) runs as the
    /// only child of the process the harness started (its supervisor): that child's.
    pub fn pid(&self) -> u32 {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse().ok())
            .unwrap_or(pid)
    }

    /// The process the harness started: the VMM, or a jailed VMM's supervisor.
    pub fn spawned_pid(&self) -> u32 {
        self.child.id()
    }

    /// `/proc/PID` of the VMM.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}", self.pid()))
    }

    /// The VMM's resident set size in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> Result<u64, Error> {
        self.proc_kib("status", "VmRSS")
    }

    /// A KiB field of a /proc/PID file with `Name:   N kB` lines, e.g.
    /// `proc_kib("status", "VmHWM")` or `proc_kib("smaps_rollup", "Pss_Anon")`.
    pub fn proc_kib(&self, file: &str, field: &str) -> Result<u64, Error> {
        let path = self.proc_path().join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| Error::Tool {
                what: format!("reading {}", path.display()),
                detail: format!("no `{field}:` line in kB"),
            })
    }

    /// Everything on the console so far.
    pub fn console(&self) -> String {
        lock(&self.console).text.clone()
    }

    /// Everything the VMM wrote to stderr so far.
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// When the guest printed `SKIFF-INIT-READY`, counted from VMM start.
    pub fn init_ready(&self) -> Option<Duration> {
        lock(&self.console).init_ready
    }

    /// The next console line, or `Ok(None)` once the VMM closed its output.
    pub fn next_line(&mut self, timeout: Duration) -> Result<Option<String>, Error> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(Some(line)),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout {
                waiting_for: "a console line".into(),
                after: timeout,
                context: self.context(),
            }),
        }
    }

    /// Reads console lines until one contains `pattern`; returns that line.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(pattern) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::Timeout {
                        waiting_for: format!("`{pattern}` on the console"),
                        after: timeout,
                        context: self.context(),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Exited {
                        waiting_for: format!("`{pattern}` appeared on the console"),
                        context: self.context(),
                    })
                }
            }
        }
    }

    /// Types `line` (plus a newline) on the guest's serial console.
    pub fn send_line(&mut self, line: &str) -> Result<(), Error> {
        let stdin = self.stdin.as_mut().ok_or_else(|| Error::Tool {
            what: "writing to the console".into(),
            detail: "stdin closed".into(),
        })?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| Error::io("cannot write to the VMM's stdin", e))
    }

    /// Sends `signal` to the VMM.
    pub fn signal(&self, signal: Signal) -> Result<(), Error> {
        let pid = libc::pid_t::try_from(self.pid()).map_err(|_| Error::Tool {
            what: "kill".into(),
            detail: "pid out of range".into(),
        })?;
        // SAFETY: kill(2) takes plain integers; `pid` is our own child, not yet reaped
        // (we hold its `Child`), so the pid cannot have been reused.
        if unsafe { libc::kill(pid, signal.raw()) } != 0 {
            return Err(Error::io("kill", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Waits for the VMM to exit; after `timeout` kills it and returns an error that
    /// carries the console.
    pub fn wait(mut self, timeout: Duration) -> Result<RunOutput, Error> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => return Err(Error::io("waiting for the VMM", e)),
            }
            if Instant::now() >= deadline {
                // Where each VMM thread waits says whether the guest or the VMM hung.
                let threads = thread_states(self.child.id());
                self.kill_and_reap();
                return Err(Error::Timeout {
                    waiting_for: "the VMM to exit (it was killed)".into(),
                    after: timeout,
                    context: format!(
                        "{}\nVMM threads before the kill:\n{threads}",
                        self.context()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let total = self.started.elapsed();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let console = lock(&self.console);
        Ok(RunOutput {
            console: console.text.clone(),
            vmm_stderr: lock(&self.stderr).clone(),
            guest_status: console.guest_status,
            vmm_status: status,
            init_ready: console.init_ready,
            guest_exit: console.guest_exit,
            total,
        })
    }

    fn kill_and_reap(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        // A process stuck in the kernel (a KVM ioctl under nested emulation) does not die
        // of SIGKILL: say where it is stuck instead of hanging the whole run.
        let deadline = Instant::now() + REAP_TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                eprintln!(
                    "warning: VMM pid {} still running {REAP_TIMEOUT:?} after SIGKILL; left \
                     behind. {}",
                    self.child.id(),
                    thread_states(self.child.id())
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The command, the console and the VMM's stderr so far, for a failure message.
    pub fn context(&self) -> String {
        format!(
            "command: {}\n----- guest console -----\n{}\n----- VMM stderr -----\n{}\n-------------------------",
            self.command,
            self.console().trim_end(),
            lock(&self.stderr).trim_end()
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

fn read_console(
    out: impl Read,
    started: Instant,
    console: &Mutex<Console>,
    tx: &mpsc::Sender<String>,
) {
    for line in BufReader::new(out).split(b'\n') {
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line)
            .trim_end_matches('\r')
            .to_owned();
        {
            let mut c = lock(console);
            if c.init_ready.is_none() && line.contains(INIT_READY) {
                c.init_ready = Some(started.elapsed());
            }
            if let Some(pos) = line.find(GUEST_EXIT) {
                c.guest_exit = Some(started.elapsed());
                c.guest_status = line[pos + GUEST_EXIT.len()..].trim().parse().ok();
            }
            c.text.push_str(&line);
            c.text.push('\n');
        }
        // The test may not be reading lines; that's fine.
        let _ = tx.send(line);
    }
}

/// How long a killed VMM may take to exit.
const REAP_TIMEOUT: Duration = Duration::from_secs(60);

/// Each thread of `pid` with its state and the kernel function it waits in.
pub fn thread_states(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return String::new();
    };
    let read = |path: PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    tasks
        .flatten()
        .map(|t| {
            let stat = read(t.path().join("stat"));
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            format!(
                "{} ({}) state {} in {}",
                t.file_name().to_string_lossy(),
                read(t.path().join("comm")).trim(),
                state.unwrap_or("?"),
                read(t.path().join("wchan")).trim()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
