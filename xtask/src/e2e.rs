//! `cargo xtask e2e [FILTER]`: builds the e2e test executable and Skiff's release
//! binaries, then runs the tests inside the emulated host (or directly on a machine
//! with hardware virtualization). The environment variables set here are the contract
//! with the tests (docs/testing.md).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::assets::{self, Assets};
use crate::host::{self, layout, BootOptions, Finished, Payload, Stream};
use crate::mode::Mode;
use crate::{apt, cmd, paths, ModeOpt};

/// Packages whose binaries are not Skiff's own programs.
const NOT_SKIFF: &[&str] = &["xtask", "skiff-e2e", "skiff-guest-tool"];
/// The test target of the skiff-e2e crate.
const TEST_TARGET: &str = "e2e";
/// The test executable's name inside the emulated host.
pub const TEST_EXE: &str = "skiff-e2e-tests";

#[derive(clap::Args, Clone)]
pub struct E2eArgs {
    /// Run only tests whose name contains FILTER (libtest's filter).
    pub filter: Option<String>,
    #[command(flatten)]
    pub mode: ModeOpt,
    /// Memory of the emulated host.
    #[arg(long, default_value = "8G")]
    pub memory: String,
    /// Give up (and kill the emulated host) after this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
    /// Kill the emulated host when its console stays silent this many seconds (a hung
    /// host; tests run one at a time and none passes in that long); 0: never.
    #[arg(long, default_value_t = 600)]
    pub stall: u64,
    /// More arguments for the test executable (libtest's, e.g. --nocapture).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

pub fn main(args: E2eArgs) -> Result<ExitCode> {
    apt::ensure_installed(apt::HOST_PACKAGES)?;
    Ok(crate::exit_code(crate::test::run_e2e(&args)?))
}

/// Builds and runs the e2e suite; returns how the test executable ended (the failed
/// tests are known in the emulated host only, where its output passes through xtask).
pub fn run(args: &E2eArgs) -> Result<Finished> {
    let mode = args.mode.mode.resolve()?;
    let assets = assets::prepare()?;
    let binaries = skiff_binaries(true)?;
    let tests = build_tests()?;
    let mut test_args: Vec<String> = args.filter.iter().cloned().collect();
    test_args.extend(args.test_args.iter().cloned());
    let test_image = if needs_test_image(args)? {
        Some(crate::test_image::build(&assets.cache)?)
    } else {
        None
    };
    match mode {
        Mode::Direct => Ok(Finished {
            status: run_direct(&assets, &tests, &test_args, test_image.as_deref())?,
            failed: Vec::new(),
            retries: Vec::new(),
            summary: None,
            times: Vec::new(),
        }),
        Mode::Emulated => {
            let mut payload = Payload::default();
            payload.add_release_binaries(&binaries)?;
            let exe = format!("{}/{TEST_EXE}", layout::BIN_DIR);
            payload.add_binary(&exe, &tests)?;
            for (key, value) in emulated_env() {
                payload.env(key, &value);
            }
            // In the host's RAM like everything there (~170 MiB), so only when needed.
            if let Some(image) = &test_image {
                payload.add_file(layout::TEST_IMAGE, image);
                payload.env("SKIFF_TEST_IMAGE", layout::TEST_IMAGE);
            }
            // Settings for every test's `skiff run` (docs/testing.md).
            for var in FORWARDED_VARS {
                if let Ok(value) = std::env::var(var) {
                    payload.env(var, &value);
                }
            }
            // The console is a tty: keep libtest from colouring the summary line.
            payload.env("TERM", "dumb");
            // One guest at a time: the emulated host has two emulated CPUs, and guests of
            // parallel tests (up to 4 vCPUs each) starve one another there into soft
            // lockups. `-- --test-threads=N` still overrides this.
            payload.env("RUST_TEST_THREADS", "1");
            payload.command = Some(std::iter::once(exe).chain(test_args).collect());
            let options = BootOptions {
                memory: args.memory.clone(),
                timeout: Some(Duration::from_secs(args.timeout)),
                stall: (args.stall > 0).then(|| Duration::from_secs(args.stall)),
                stream: Stream::EndWithTestSummary,
            };
            host::boot(&assets, &payload, &options)
        }
    }
}

/// Tests that boot the Debian test image (`cargo xtask test-image`): names starting so.
const TEST_IMAGE_TESTS: &str = "images::debian";

/// Whether the tests `args` select include one that boots the Debian test image.
fn needs_test_image(args: &E2eArgs) -> Result<bool> {
    Ok(list_tests(args)?
        .iter()
        .any(|t| t.starts_with(TEST_IMAGE_TESTS)))
}

/// Harness settings passed on into the emulated host: extra `skiff run` arguments, and
/// running every Skiff VMM jailed.
const FORWARDED_VARS: [&str; 2] = ["SKIFF_E2E_SKIFF_ARGS", "SKIFF_E2E_JAIL"];

/// The test contract's variables inside the emulated host.
pub fn emulated_env() -> Vec<(&'static str, String)> {
    vec![
        ("SKIFF_BIN", format!("{}/skiff", layout::BIN_DIR)),
        ("SKIFF_KERNEL", layout::KERNEL.into()),
        ("SKIFF_VMLINUX", layout::VMLINUX.into()),
        ("SKIFF_INITRD", layout::INITRD.into()),
        ("SKIFF_ROOTFS", layout::ROOTFS.into()),
        ("SKIFF_QEMU", layout::QEMU.into()),
        ("SKIFF_QEMU_DATADIR", layout::QEMU_DATADIR.into()),
        ("SKIFF_MKE2FS", layout::MKE2FS.into()),
        ("SKIFF_QEMU_IMG", layout::QEMU_IMG.into()),
        ("SKIFF_E2E_TMP", layout::TMP.into()),
        ("SKIFF_E2E_EMULATED", "1".into()),
    ]
}

/// The test contract's variables on this machine (direct mode).
pub fn direct_env(assets: &Assets) -> Result<Vec<(&'static str, String)>> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let tmp = paths::target_dir().join("e2e-tmp");
    paths::create_dir(&tmp)?;
    Ok(vec![
        (
            "SKIFF_BIN",
            path(&paths::target_dir().join("release/skiff")),
        ),
        ("SKIFF_KERNEL", path(&assets.kernel.bzimage)),
        ("SKIFF_VMLINUX", path(&assets.kernel.vmlinux)),
        ("SKIFF_INITRD", path(&assets.initrd)),
        ("SKIFF_ROOTFS", path(&assets.rootfs)),
        (
            "SKIFF_QEMU",
            path(&cmd::require("qemu-system-x86_64", "qemu-system-x86")?),
        ),
        ("SKIFF_QEMU_DATADIR", "/usr/share/qemu".into()),
        ("SKIFF_MKE2FS", path(&cmd::require("mke2fs", "e2fsprogs")?)),
        (
            "SKIFF_QEMU_IMG",
            path(&cmd::require("qemu-img", "qemu-utils")?),
        ),
        ("SKIFF_E2E_TMP", path(&tmp)),
    ])
}

/// The names of the tests `args` selects (ignored ones included), from the test
/// executable's `--list`.
pub fn list_tests(args: &E2eArgs) -> Result<Vec<String>> {
    let tests = build_tests()?;
    let mut command = Command::new(&tests);
    command
        .args(["--list", "--format", "terse"])
        .args(&args.filter)
        .args(&args.test_args);
    let out = cmd::output(&mut command)?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

fn run_direct(
    assets: &Assets,
    tests: &Path,
    test_args: &[String],
    test_image: Option<&Path>,
) -> Result<i32> {
    let status = Command::new(tests)
        .args(test_args)
        .envs(direct_env(assets)?)
        .envs(test_image.map(|i| ("SKIFF_TEST_IMAGE", i)))
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", tests.display()))?;
    Ok(status.code().unwrap_or(1))
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(paths::workspace());
    command
}

/// The target triple of statically linked builds.
const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// `cargo build --release` of statically linked programs (add `-p PACKAGE`). Static
/// binaries start faster (no dynamic loader: about 45 ms less per start in the emulated
/// host) and carry only the libc they use. The explicit `--target` keeps the flag away
/// from build scripts and proc macros, and keeps the dynamic host build intact.
pub fn static_release_build() -> Command {
    let mut command = cargo();
    command
        .args(["build", "--quiet", "--release", "--target", STATIC_TARGET])
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        );
    command
}

/// Where [`static_release_build`] puts its programs.
pub fn static_release_dir() -> PathBuf {
    paths::target_dir().join(STATIC_TARGET).join("release")
}

/// Skiff's binary programs (release build, statically linked), built first when `build` is set. Programs
/// of packages that do not exist yet are simply absent.
pub fn skiff_binaries(build: bool) -> Result<Vec<PathBuf>> {
    let metadata = cmd::output(cargo().args(["metadata", "--no-deps", "--format-version", "1"]))?;
    let metadata: serde_json::Value = serde_json::from_str(&metadata).context("cargo metadata")?;
    let mut packages = Vec::new();
    let mut names = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let Some(name) = package["name"].as_str() else {
            continue;
        };
        if NOT_SKIFF.contains(&name) {
            continue;
        }
        let bins: Vec<&str> = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
            })
            .filter_map(|t| t["name"].as_str())
            .collect();
        if !bins.is_empty() {
            packages.push(name.to_owned());
            names.extend(bins.into_iter().map(str::to_owned));
        }
    }
    if build && !packages.is_empty() {
        let mut command = static_release_build();
        for package in &packages {
            command.args(["-p", package]);
        }
        cmd::run(&mut command).context("cannot build Skiff's release binaries")?;
    }
    let release = static_release_dir();
    Ok(names
        .iter()
        .map(|n| release.join(n))
        .filter(|p| p.exists())
        .collect())
}

/// Builds a program of the harness crate (`skiff-demo`, `skiff-bench`) in release mode
/// and returns its path.
pub fn build_harness_bin(name: &str) -> Result<PathBuf> {
    cmd::run(cargo().args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "skiff-e2e",
        "--bin",
        name,
    ]))?;
    let path = paths::target_dir().join("release").join(name);
    if !path.exists() {
        anyhow::bail!("{} was not built", path.display());
    }
    Ok(path)
}

/// Builds the e2e test executable (release) and returns its path.
pub fn build_tests() -> Result<PathBuf> {
    let out = cmd::output(
        cargo()
            .args([
                "test",
                "-p",
                "skiff-e2e",
                "--no-run",
                "--release",
                "--message-format=json",
            ])
            .stderr(Stdio::inherit()),
    )
    .context("cannot build the e2e tests")?;
    for line in out.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["reason"] == "compiler-artifact"
            && message["target"]["name"] == TEST_TARGET
            && message["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(exe)) = (is_test, message["executable"].as_str()) {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo built no `{TEST_TARGET}` test executable for skiff-e2e")
}

/// Runs a program of the harness crate (`skiff-demo`, `skiff-bench`) with `args`, in the
/// emulated host or directly, with Skiff's binaries and the tests' environment; returns
/// its exit status.
pub fn run_harness_bin(
    name: &str,
    args: &[String],
    mode: ModeOpt,
    timeout: Duration,
) -> Result<i32> {
    apt::ensure_installed(apt::HOST_PACKAGES)?;
    let mode = mode.mode.resolve()?;
    let assets = assets::prepare()?;
    let binaries = skiff_binaries(true)?;
    let program = build_harness_bin(name)?;
    match mode {
        Mode::Direct => Ok(Command::new(&program)
            .args(args)
            .envs(direct_env(&assets)?)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("cannot run {}", program.display()))?
            .code()
            .unwrap_or(1)),
        Mode::Emulated => {
            println!(
                "Booting the emulated AMD-V host (QEMU, software CPU); guests run on its KVM."
            );
            let mut payload = Payload::default();
            payload.add_release_binaries(&binaries)?;
            let exe = format!("{}/{name}", layout::BIN_DIR);
            payload.add_binary(&exe, &program)?;
            for (key, value) in emulated_env() {
                payload.env(key, &value);
            }
            // The benchmark's own settings (tests/e2e/src/bin/skiff-bench).
            for (key, value) in std::env::vars().filter(|(k, _)| k.starts_with("SKIFF_BENCH_")) {
                payload.env(&key, &value);
            }
            payload.command = Some(std::iter::once(exe).chain(args.iter().cloned()).collect());
            let options = BootOptions {
                memory: "8G".into(),
                timeout: Some(timeout),
                stall: None,
                stream: Stream::Plain,
            };
            Ok(host::boot(&assets, &payload, &options)?.status)
        }
    }
}
