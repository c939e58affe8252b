//! The emulated AMD-V host: an initramfs with Debian's kernel, KVM modules, QEMU,
//! mke2fs, the guest assets and (per run) Skiff's binaries and test executables, booted
//! in QEMU with TCG (`-cpu max` exposes SVM with nested paging, so KVM works inside).
//!
//! The initramfs is two concatenated cpio archives: a cached base (everything that
//! rarely changes) and a small per-run archive (binaries, environment, command).

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::assets::Assets;
pub use crate::console::Stream;
use crate::console::{Console, Event};
use crate::host_stall::{self, Output};
use crate::hostfs::TempFile;
pub use crate::hostfs::{layout, Payload};
use crate::process::Guarded;
use crate::test_report::{FailedTest, TestReport};
use crate::{apt, assets, host_cpus, hostfs, outer_qemu};

/// The host kernel's command line: serial console, only emergencies on it (KVM's
/// rate-limited complaints about guest MSR writes would land amid test output), SysRq
/// for a host that stalls (host_stall.rs), and no time spent on things an emulated CPU
/// makes slow.
const CMDLINE: &str = "console=ttyS0 quiet loglevel=1 panic=-1 sysrq_always_enabled mitigations=off tsc=reliable no_timer_check \
                       i8042.noaux i8042.nopnp 8250.nr_uarts=1 cryptomgr.notests random.trust_cpu=on";

/// Its CPUs, as `-smp` below says.
const HOST_CPUS: usize = 2;

/// The emulated machine: TCG on both host cores, `-cpu max` for SVM with nested paging,
/// without virtual GIF (`vgif=off`, so the host's KVM does not use it). With it, a host
/// froze with a timer interrupt pending in a halted CPU's APIC, what a host GIF left clear
/// would do; no host froze without it, but the other host crash (an interrupt taken right
/// after VMRUN) still happens (docs/testing.md, "Guest faults in the emulated host"). qboot is faster than SeaBIOS
/// and prints nothing. (`-M microvm` boots faster still but hung before any output in 2
/// of 4 boots, with QEMU 7.2.) No audio: probing for it loads modules, and those of the
/// system's older QEMU abort a fetched one.
#[rustfmt::skip]
const QEMU_ARGS: &[&str] = &[
    "-accel", "tcg,thread=multi",
    "-cpu", "max,vgif=off",
    "-smp", "2",
    "-bios", "qboot.rom",
    "-vga", "none",
    "-nic", "none",
    "-nographic",
    "-no-reboot",
    "-audio", "none",
];

#[derive(clap::Args)]
pub struct HostArgs {
    /// Memory of the emulated host.
    #[arg(long, default_value = "8G")]
    pub memory: String,
    /// Kill the host after this many seconds (default: none for a shell, 1800 for CMD).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Command to run in the host (default: an interactive shell on the console).
    #[arg(last = true)]
    pub cmd: Vec<String>,
}

pub fn main(args: HostArgs) -> Result<ExitCode> {
    apt::ensure_installed(apt::HOST_PACKAGES)?;
    let assets = assets::prepare()?;
    let mut payload = Payload::default();
    // Built first: a shell in the host without `skiff` in it helps nobody.
    payload.add_release_binaries(&crate::e2e::skiff_binaries(true)?)?;
    // The e2e tests and the contract's environment, to run tests by hand in there.
    let tests = crate::e2e::build_tests()?;
    payload.add_binary(
        &format!("{}/{}", layout::BIN_DIR, crate::e2e::TEST_EXE),
        &tests,
    )?;
    for (key, value) in crate::e2e::emulated_env() {
        payload.env(key, &value);
    }
    payload.env(
        "PATH",
        &format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", layout::BIN_DIR),
    );
    // Files for experiments by hand: SKIFF_HOST_FILES="/opt/x/disk.qcow2=/path/on/this/machine ...".
    if let Ok(files) = std::env::var("SKIFF_HOST_FILES") {
        for pair in files.split_whitespace() {
            let (dest, source) = pair
                .split_once('=')
                .context("SKIFF_HOST_FILES: give DEST=SOURCE pairs")?;
            payload.add_file(dest, std::path::Path::new(source));
        }
    }
    let options = BootOptions {
        memory: args.memory,
        timeout: args
            .timeout
            .or((!args.cmd.is_empty()).then_some(1800))
            .map(Duration::from_secs),
        stall: None,
        stream: Stream::Plain,
    };
    if args.cmd.is_empty() {
        return interactive(&assets, &payload, &options);
    }
    payload.command = Some(args.cmd);
    let status = boot(&assets, &payload, &options)?.status;
    Ok(crate::exit_code(status))
}

/// The emulated host ended before its command did: its kernel panicked (the emulated
/// AMD-V of QEMU's TCG now and then crashes it, docs/testing.md), QEMU itself died, or
/// the host printed nothing for longer than [`BootOptions::stall`] and was killed.
#[derive(Debug)]
pub struct HostFault {
    pub what: String,
    /// What the test output had said by then.
    pub report: TestReport,
}

impl std::fmt::Display for HostFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for HostFault {}

pub struct BootOptions {
    pub memory: String,
    pub timeout: Option<Duration>,
    /// Give up on a host whose console stayed silent this long (after asking its
    /// kernel what it is doing): a hung host, not a slow test.
    pub stall: Option<Duration>,
    pub stream: Stream,
}

fn qemu_command(assets: &Assets, initrd: &Path, memory: &str) -> Result<Command> {
    let qemu = outer_qemu::get()?;
    let cmdline = std::env::var("SKIFF_HOST_CMDLINE").unwrap_or_else(|_| CMDLINE.to_owned());
    let mut command = Command::new(&qemu.binary);
    if let Some(datadir) = &qemu.datadir {
        command.arg("-L").arg(datadir);
    }
    command
        .args(QEMU_ARGS)
        .args(["-m", memory])
        .arg("-kernel")
        .arg(&assets.kernel.bzimage)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &cmdline]);
    if let Ok(extra) = std::env::var("SKIFF_HOST_QEMU_ARGS") {
        command.args(extra.split_whitespace());
    }
    Ok(command)
}

/// Boots the host with an interactive shell on this terminal.
fn interactive(assets: &Assets, payload: &Payload, options: &BootOptions) -> Result<ExitCode> {
    // No marker: nobody parses an interactive console.
    let initrd = TempFile(hostfs::initrd(assets, payload, "")?);
    eprintln!("booting the emulated host (Ctrl-A X quits QEMU)");
    let mut qemu = Guarded::spawn(&mut qemu_command(assets, &initrd.0, &options.memory)?)?;
    let deadline = options.timeout.map(|t| Instant::now() + t);
    loop {
        if let Some(status) = qemu.child().try_wait().context("waiting for QEMU")? {
            return Ok(crate::exit_code(status.code().unwrap_or(1)));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            qemu.kill();
            anyhow::bail!("the emulated host timed out; QEMU was killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How the host's command ended.
pub struct Finished {
    pub status: i32,
    /// The failed tests, when the command was a libtest executable.
    pub failed: Vec<FailedTest>,
    /// The retries the tests announced (`TEST: why` each).
    pub retries: Vec<String>,
    /// libtest's summary line, when the command was a libtest executable.
    pub summary: Option<String>,
    /// How long each test took, in the order they ended.
    pub times: Vec<(String, std::time::Duration)>,
}

/// Boots the host, runs `payload.command` in it, streams its console and returns the
/// command's exit status. On timeout QEMU is killed and an error returned.
pub fn boot(assets: &Assets, payload: &Payload, options: &BootOptions) -> Result<Finished> {
    let marker = format!(
        "SKIFF-HOST-EXIT-{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    let initrd = TempFile(hostfs::initrd(assets, payload, &marker)?);
    let started = Instant::now();
    let mut command = qemu_command(assets, &initrd.0, &options.memory)?;
    // stdin is a pipe that stays quiet unless the host stalls (SysRq, host_stall.rs).
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut qemu = Guarded::spawn(&mut command)?;
    let stdout = qemu.child().stdout.take().context("QEMU has no stdout")?;
    let mut stdin = qemu.child().stdin.take().context("QEMU has no stdin")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || host_stall::read_console(stdout, &tx));
    let mut console = Console::new(&marker, options.stream);
    let deadline = options.timeout.map(|t| started + t);
    let mut last_output = Instant::now();
    let mut partial = String::new();
    loop {
        let mut wait = Duration::from_secs(3600);
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_duration_since(Instant::now()));
        }
        if let Some(stall) = options.stall {
            wait = wait.min((last_output + stall).saturating_duration_since(Instant::now()));
        }
        match rx.recv_timeout(wait) {
            Ok(Output::Partial(text)) => {
                last_output = Instant::now();
                partial = text;
            }
            Ok(Output::Line(line)) => {
                last_output = Instant::now();
                partial.clear();
                match console.feed(line) {
                    Event::Line | Event::Alive => {}
                    Event::Up => eprintln!(
                        "emulated host up after {:.1} s",
                        started.elapsed().as_secs_f64()
                    ),
                    Event::Exit(status) => {
                        console.finish();
                        // The host powers off right after the marker; don't wait long for it.
                        let grace = Instant::now() + Duration::from_secs(10);
                        while Instant::now() < grace {
                            if qemu.child().try_wait()?.is_some() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        return Ok(Finished {
                            status,
                            failed: console.report().failed().to_vec(),
                            retries: console.report().retries().to_vec(),
                            summary: console.summary().map(str::to_owned),
                            times: console.report().times().to_vec(),
                        });
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    qemu.kill();
                    console.finish();
                    anyhow::bail!(
                        "the emulated host timed out after {} s; QEMU was killed",
                        started.elapsed().as_secs()
                    );
                }
                if let Some(stall) = options.stall.filter(|s| last_output.elapsed() >= *s) {
                    let unfinished = if partial.is_empty() {
                        console.unfinished()
                    } else {
                        &partial
                    };
                    let running = host_stall::running_test(unfinished)
                        .map(|t| format!(" during test {t}"))
                        .unwrap_or_default();
                    println!(
                        "SKIFF-HOST-STALL: the emulated host printed nothing for {} s{running}; \
                         its kernel's blocked tasks and CPU backtraces follow (SysRq w, l)",
                        stall.as_secs()
                    );
                    if let Err(e) = host_stall::send_sysrq(&mut stdin) {
                        println!("SKIFF-HOST-STALL: cannot send SysRq to the host: {e}");
                    }
                    show_until_quiet(&rx, &mut console, Duration::from_secs(30));
                    let verdict = ask_emulator(&mut stdin, &rx);
                    qemu.kill();
                    console.finish();
                    return Err(HostFault {
                        what: format!(
                            "the emulated host stalled{running} (no output for {} s{verdict}); QEMU was killed",
                            stall.as_secs()
                        ),
                        report: console.into_report(),
                    }
                    .into());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = qemu.child().wait()?;
                console.finish();
                return Err(HostFault {
                    what: format!("QEMU exited ({status}) before the host command finished"),
                    report: console.into_report(),
                }
                .into());
            }
        }
    }
}

/// Asks the outer QEMU's monitor where a silent host's CPUs are (host_cpus.rs) and
/// prints what it says; returns ", <verdict>" when it lost an interrupt, else "".
fn ask_emulator(stdin: &mut std::process::ChildStdin, rx: &mpsc::Receiver<Output>) -> String {
    if let Err(e) = host_cpus::ask(stdin, HOST_CPUS) {
        println!("SKIFF-HOST-STALL: cannot ask QEMU's monitor: {e}");
        return String::new();
    }
    let mut lines = Vec::new();
    while let Ok(output) = rx.recv_timeout(Duration::from_secs(5)) {
        if let Output::Line(line) = output {
            lines.push(line);
        }
    }
    let cpus = host_cpus::parse(&lines);
    for line in host_cpus::describe(&cpus) {
        println!("SKIFF-HOST-STALL: {line}");
    }
    if cpus.iter().any(|c| !c.undelivered().is_empty()) {
        ", the outer QEMU stopped delivering interrupts to a halted CPU".to_owned()
    } else {
        String::new()
    }
}

/// Shows what the host still prints, until it is quiet for 5 s or `limit` passed.
fn show_until_quiet(rx: &mpsc::Receiver<Output>, console: &mut Console, limit: Duration) {
    let end = Instant::now() + limit;
    while let Ok(output) =
        rx.recv_timeout(Duration::from_secs(5).min(end.saturating_duration_since(Instant::now())))
    {
        if let Output::Line(line) = output {
            console.feed(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monitor_is_asked_about_every_cpu_qemu_is_given() {
        let smp = QEMU_ARGS.iter().position(|a| *a == "-smp").expect("-smp");
        assert_eq!(QEMU_ARGS[smp + 1], HOST_CPUS.to_string());
    }
}
