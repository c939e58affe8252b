//! The emulated AMD-V host: an initramfs with Debian's kernel, KVM modules, QEMU,
//! mke2fs, the guest assets and (per run) Skiff's binaries and test executables, booted
//! in QEMU with TCG (`-cpu max` exposes SVM with nested paging, so KVM works inside).
//!
//! The initramfs is two concatenated cpio archives: a cached base (everything that
//! rarely changes) and a small per-run archive (binaries, environment, command).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::assets::Assets;
use crate::initramfs::{Compression, Initramfs};
use crate::process::Guarded;
use crate::{apt, assets, cmd, guest, ldd, paths};

const INIT: &str = include_str!("scripts/host-init.sh");

/// Modules the outer host loads (with their dependencies), when not built in.
const HOST_MODULES: &[&str] = &[
    "irqbypass",
    "kvm",
    "kvm-amd",
    "tun",
    "bridge",
    "vhost_iotlb",
    "vhost",
    "vhost_vsock",
    "vsock",
    "vmw_vsock_virtio_transport_common",
];

/// QEMU firmware the inner QEMU may need (pc with SeaBIOS or qboot, microvm).
const QEMU_FIRMWARE: &[&str] = &[
    "bios-256k.bin",
    "bios-microvm.bin",
    "qboot.rom",
    "linuxboot_dma.bin",
    "linuxboot.bin",
    "kvmvapic.bin",
    "pvh.bin",
    "multiboot_dma.bin",
    "vgabios-stdvga.bin",
    "efi-virtio.rom",
];
const QEMU_DATA_DIRS: &[&str] = &[
    "/usr/share/qemu",
    "/usr/share/seabios",
    "/usr/lib/ipxe/qemu",
];

/// Where things are inside the emulated host.
pub mod layout {
    pub const BIN_DIR: &str = "/opt/skiff/bin";
    pub const KERNEL: &str = "/opt/skiff/guest/bzImage";
    pub const VMLINUX: &str = "/opt/skiff/guest/vmlinux";
    pub const INITRD: &str = "/opt/skiff/guest/initramfs.cpio.gz";
    pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";
    pub const QEMU_DATADIR: &str = "/usr/share/qemu";
    pub const MKE2FS: &str = "/usr/sbin/mke2fs";
    pub const TMP: &str = "/tmp/skiff-e2e";
}

/// The host kernel's command line: serial console, only emergencies on it (KVM's
/// rate-limited complaints about guest MSR writes would land amid test output), and
/// no time spent on things an emulated CPU makes slow.
const CMDLINE: &str = "console=ttyS0 quiet loglevel=1 panic=-1 mitigations=off tsc=reliable no_timer_check \
                       i8042.noaux i8042.nopnp 8250.nr_uarts=1 cryptomgr.notests random.trust_cpu=on";

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
    payload.add_release_binaries(&crate::e2e::skiff_binaries(false)?)?;
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
    let options = BootOptions {
        memory: args.memory,
        timeout: args
            .timeout
            .or((!args.cmd.is_empty()).then_some(1800))
            .map(Duration::from_secs),
        stream: Stream::Plain,
    };
    if args.cmd.is_empty() {
        return interactive(&assets, &payload, &options);
    }
    payload.command = Some(args.cmd);
    let status = boot(&assets, &payload, &options)?;
    Ok(crate::exit_code(status))
}

/// Per-run content of the host: binaries (with their libraries), environment, command.
#[derive(Default)]
pub struct Payload {
    files: Vec<(String, PathBuf)>,
    env: Vec<(String, String)>,
    pub command: Option<Vec<String>>,
}

impl Payload {
    /// Adds a dynamically linked program and the libraries it needs.
    pub fn add_binary(&mut self, dest: &str, source: &Path) -> Result<()> {
        for lib in ldd::libraries(source)? {
            let lib_dest = lib.to_string_lossy().into_owned();
            self.files.push((lib_dest, lib));
        }
        self.files.push((dest.to_owned(), source.to_path_buf()));
        Ok(())
    }

    /// Adds Skiff's release binaries under [`layout::BIN_DIR`].
    pub fn add_release_binaries(&mut self, binaries: &[PathBuf]) -> Result<()> {
        for bin in binaries {
            let name = bin.file_name().context("binary without a name")?;
            self.add_binary(
                &format!("{}/{}", layout::BIN_DIR, name.to_string_lossy()),
                bin,
            )?;
        }
        Ok(())
    }

    pub fn env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    fn archive(&self, marker: &str) -> Result<Initramfs> {
        let mut fs = Initramfs::new();
        for (dest, source) in &self.files {
            fs.copy(dest, source)?;
        }
        let mut env = format!("export SKIFF_HOST_MARKER={marker}\n");
        for (key, value) in &self.env {
            env.push_str(&format!("export {key}={}\n", shell_quote(value)));
        }
        fs.bytes("/etc/skiff/env", env, 0o644);
        if let Some(command) = &self.command {
            let words: Vec<String> = command.iter().map(|w| shell_quote(w)).collect();
            let script = format!("#!/bin/sh\nexec {}\n", words.join(" "));
            fs.bytes("/etc/skiff/run", script, 0o755);
        }
        Ok(fs)
    }
}

/// Quotes a word for /bin/sh.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// How the host's console output is shown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Everything up to the exit marker.
    Plain,
    /// As Plain, but the output ends with libtest's summary line: lines that come after
    /// it (kernel noise) are shown before the summary is repeated.
    EndWithTestSummary,
}

pub struct BootOptions {
    pub memory: String,
    pub timeout: Option<Duration>,
    pub stream: Stream,
}

/// The cached part of the host initramfs.
fn base_archive(assets: &Assets) -> Result<PathBuf> {
    let mut fs = Initramfs::new();
    guest::add_skeleton(&mut fs);
    guest::add_busybox(&mut fs, &assets.busybox)?;
    guest::add_modules(&mut fs, &assets.kernel, HOST_MODULES)?;
    fs.dir("/usr/bin").dir("/usr/sbin").dir(layout::BIN_DIR);
    let qemu = cmd::require("qemu-system-x86_64", "qemu-system-x86")?;
    add_with_libraries(&mut fs, layout::QEMU, &qemu)?;
    for name in QEMU_FIRMWARE {
        if let Some(src) = QEMU_DATA_DIRS
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
        {
            fs.copy(&format!("{}/{name}", layout::QEMU_DATADIR), &src)?;
        }
    }
    let mke2fs = cmd::require("mke2fs", "e2fsprogs")?;
    add_with_libraries(&mut fs, layout::MKE2FS, &mke2fs)?;
    fs.copy(layout::KERNEL, &assets.kernel.bzimage)?;
    fs.copy(layout::VMLINUX, &assets.kernel.vmlinux)?;
    fs.copy(layout::INITRD, &assets.initrd)?;
    fs.bytes("/init", INIT, 0o755);
    guest::cached_archive(&fs, &assets.cache.join("host"), "base", Compression::None)
}

fn add_with_libraries(fs: &mut Initramfs, dest: &str, source: &Path) -> Result<()> {
    for lib in ldd::libraries(source)? {
        fs.copy(&lib.to_string_lossy(), &lib)?;
    }
    fs.copy(dest, source)?;
    Ok(())
}

/// Removes per-run files left behind by xtask runs that were killed (their pid is gone).
fn remove_orphans(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("initrd-")
            .or_else(|| name.strip_prefix("run-"))
            .and_then(|rest| rest.strip_suffix(".cpio"));
        if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes base + per-run archive as one initrd file; returns it.
fn initrd(assets: &Assets, payload: &Payload, marker: &str) -> Result<PathBuf> {
    let base = base_archive(assets)?;
    let dir = assets.cache.join("host");
    remove_orphans(&dir);
    let run = dir.join(format!("run-{}.cpio", std::process::id()));
    payload.archive(marker)?.write(&run, Compression::None)?;
    let combined = dir.join(format!("initrd-{}.cpio", std::process::id()));
    std::fs::copy(&base, &combined).with_context(|| format!("cannot copy {}", base.display()))?;
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .open(&combined)
        .with_context(|| format!("cannot open {}", combined.display()))?;
    let mut run_file = std::fs::File::open(&run)?;
    std::io::copy(&mut run_file, &mut out)?;
    paths::remove(&run)?;
    Ok(combined)
}

/// Removes a file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn qemu_command(assets: &Assets, initrd: &Path, memory: &str) -> Result<Command> {
    let qemu = cmd::require("qemu-system-x86_64", "qemu-system-x86")?;
    let cmdline = std::env::var("SKIFF_HOST_CMDLINE").unwrap_or_else(|_| CMDLINE.to_owned());
    let mut command = Command::new(qemu);
    command
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            memory,
        ])
        // qboot: faster than SeaBIOS and prints nothing. (microvm boots faster still but
        // hung before any output in 2 of 4 boots.)
        .args([
            "-bios",
            "qboot.rom",
            "-nographic",
            "-no-reboot",
            "-vga",
            "none",
            "-nic",
            "none",
        ])
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
    let initrd = TempFile(initrd(assets, payload, "SKIFF-HOST-EXIT-interactive")?);
    eprintln!("booting the emulated host (Ctrl-A X quits QEMU)");
    let mut qemu = Guarded::spawn(&mut qemu_command(assets, &initrd.0, &options.memory)?)?;
    let status = qemu.child().wait().context("waiting for QEMU")?;
    Ok(crate::exit_code(status.code().unwrap_or(1)))
}

/// Boots the host, runs `payload.command` in it, streams its console and returns the
/// command's exit status. On timeout QEMU is killed and an error returned.
pub fn boot(assets: &Assets, payload: &Payload, options: &BootOptions) -> Result<i32> {
    let marker = format!(
        "SKIFF-HOST-EXIT-{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    let initrd = TempFile(initrd(assets, payload, &marker)?);
    let started = Instant::now();
    let mut command = qemu_command(assets, &initrd.0, &options.memory)?;
    command.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut qemu = Guarded::spawn(&mut command)?;
    let stdout = qemu.child().stdout.take().context("QEMU has no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut console = Console::new(&marker, options.stream);
    let deadline = options.timeout.map(|t| started + t);
    loop {
        let wait = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        match rx.recv_timeout(wait) {
            Ok(line) => match console.feed(line) {
                Event::Line => {}
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
                    return Ok(status);
                }
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    qemu.kill();
                    console.finish();
                    anyhow::bail!(
                        "the emulated host timed out after {} s; QEMU was killed",
                        started.elapsed().as_secs()
                    );
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = qemu.child().wait()?;
                console.finish();
                anyhow::bail!("QEMU exited ({status}) before the host command finished");
            }
        }
    }
}

/// What a console line meant.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// An ordinary line (shown).
    Line,
    /// The host finished booting and starts the command.
    Up,
    /// The command exited with this status.
    Exit(i32),
}

/// Shows console lines, hides the markers, and recognises them.
struct Console {
    up: String,
    marker: String,
    stream: Stream,
    summary: Option<String>,
    held: Vec<String>,
    out: std::io::Stdout,
}

impl Console {
    fn new(marker: &str, stream: Stream) -> Self {
        Self {
            up: format!("{marker} up"),
            marker: format!("{marker} status="),
            stream,
            summary: None,
            held: Vec::new(),
            out: std::io::stdout(),
        }
    }

    /// Shows a line unless it is a marker.
    fn feed(&mut self, line: String) -> Event {
        if line.trim_end().ends_with(&self.up) {
            return Event::Up;
        }
        if let Some(pos) = line.find(&self.marker) {
            let status = line[pos + self.marker.len()..].trim().parse().unwrap_or(1);
            let before = &line[..pos];
            if !before.trim().is_empty() {
                self.show(before.to_owned());
            }
            return Event::Exit(status);
        }
        self.show(line);
        Event::Line
    }

    fn show(&mut self, line: String) {
        let summary = self.stream == Stream::EndWithTestSummary && line.starts_with("test result:");
        if summary {
            self.summary = Some(line.clone());
            self.held.clear();
        } else if self.summary.is_some() {
            if !line.trim().is_empty() {
                self.held.push(line);
            }
            return;
        }
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    /// Flushes held lines, repeating the summary so it stays the last line.
    fn finish(&mut self) {
        if self.held.is_empty() {
            return;
        }
        for line in self.held.drain(..) {
            let _ = writeln!(self.out, "{line}");
        }
        if let Some(summary) = &self.summary {
            let _ = writeln!(self.out, "{summary}");
        }
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn recognises_the_marker() {
        let mut console = Console::new("M-1", Stream::Plain);
        assert_eq!(console.feed("hello".into()), Event::Line);
        assert_eq!(console.feed("M-1 up".into()), Event::Up);
        assert_eq!(console.feed("M-1 status=3".into()), Event::Exit(3));
        assert_eq!(console.feed("noise M-1 status=0".into()), Event::Exit(0));
    }
}
