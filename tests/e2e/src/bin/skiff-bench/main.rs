//! `cargo xtask bench` runs this inside the emulated host (or directly): Skiff beside
//! QEMU (Debian's package) in the same run, interleaved, reporting medians and ratios.
//!
//! - `boot`: process start → the guest's `SKIFF-INIT-READY`, Debian's cloud kernel and the
//!   busybox initramfs, with the kernel's console messages on (`loglevel=8`) and off
//!   (`quiet`); and the VMM's resident memory outside guest RAM at that moment.
//! - `tiny`: a ~4 KiB PVH guest that prints one line and halts: the VMM's own start-up.
//! - `blk`: virtio-blk sequential throughput and random IOPS (`blk.rs`); not in `all`.
//!
//! `boot` and `tiny` also run Skiff with its hardening off (`--seccomp=off`, not jailed) and
//! fully on (seccomp filters and `--jail`), to measure what the hardening costs at start-up.

mod blk;

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use skiff_e2e::tiny_pvh::{tiny_pvh_elf, TINY_MARKER};
use skiff_e2e::{vmm_overhead_kib, GuestSpec, KernelKind, TestEnv, Vm, Vmm, INIT_READY};

const MEMORY_MIB: u32 = 256;
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The jailed runs' uid and gid (nobody).
const JAIL_ID: &str = "65534";
/// Host memory written and freed before each boot in the emulated host (`settle_host_memory`).
const SETTLE_BYTES: usize = 1 << 30;

/// In the emulated host, a guest that starts right after another VM exited (QEMU's, most
/// often) inherits its freed host pages and ran the memory-heavy part of its early boot
/// (memmap, per-CPU areas) 0.3-1.2 s slower, with the same VM exits and nested faults:
/// an effect of the outer emulator (QEMU's TCG), not of either VMM. It followed whichever
/// VMM booted next, so interleaving turned it into noise against both. Writing and freeing
/// 1 GiB of host memory first removed it for both (docs/benchmarks.md), so each boot of
/// either VMM starts from the same host state. `SKIFF_BENCH_SETTLE=0` measures without it.
fn settle_host_memory() {
    let wanted = std::env::var("SKIFF_BENCH_SETTLE").map_or(true, |v| v != "0");
    if !(wanted && TestEnv::get().emulated) {
        return;
    }
    let pages = vec![0x5au8; SETTLE_BYTES];
    std::hint::black_box(&pages);
}

/// One configuration under test.
#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    vmm: Vmm,
    kernel: KernelKind,
    console_messages: bool,
    hardening: Hardening,
    /// Skiff without its default virtio devices (`--no-rng --no-balloon`): the device set
    /// of the QEMU rows, which have none (`-nodefaults`).
    bare: bool,
}

/// Skiff's seccomp filters and jail, for the hardening rows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hardening {
    /// Skiff's default: seccomp on, not jailed (and QEMU's rows).
    Default,
    /// `--seccomp=off`, not jailed.
    Off,
    /// Seccomp on and `--jail`.
    Jailed,
}

impl Hardening {
    /// The `skiff run` arguments, with a fresh jail directory when jailed.
    fn args(self, env: &TestEnv) -> Vec<std::ffi::OsString> {
        match self {
            Hardening::Default => Vec::new(),
            Hardening::Off => vec!["--seccomp=off".into()],
            Hardening::Jailed => vec![
                "--jail".into(),
                env.scratch("bench-jail").into(),
                "--uid".into(),
                JAIL_ID.into(),
                "--gid".into(),
                JAIL_ID.into(),
            ],
        }
    }
}

#[derive(Default)]
struct Samples {
    seconds: Vec<f64>,
    overhead_kib: Vec<u64>,
    /// Skiff's own start-up: when its guest started, from its debug log.
    guest_start_secs: Vec<f64>,
    failures: usize,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "all".into());
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(5).max(1);
    let mut report = String::new();
    if what == "boot" || what == "all" {
        boot_bench(rounds, &mut report);
    }
    if what == "tiny" || what == "all" {
        tiny_bench(rounds, &mut report);
    }
    if what == "blk" {
        blk::bench(rounds, &mut report);
    }
    println!("{report}");
}

fn boot_cases() -> Vec<Case> {
    let case = |name, vmm, kernel, console_messages, hardening| Case {
        name,
        vmm,
        kernel,
        console_messages,
        hardening,
        bare: false,
    };
    use Hardening::{Default, Jailed, Off};
    use KernelKind::{BzImage, Vmlinux};
    vec![
        case("skiff, bzImage, quiet", Vmm::Skiff, BzImage, false, Default),
        case("skiff, vmlinux, quiet", Vmm::Skiff, Vmlinux, false, Default),
        case(
            "qemu microvm, vmlinux, quiet",
            Vmm::Qemu,
            Vmlinux,
            false,
            Default,
        ),
        case(
            "skiff, bzImage, console msgs",
            Vmm::Skiff,
            BzImage,
            true,
            Default,
        ),
        case(
            "skiff, vmlinux, console msgs",
            Vmm::Skiff,
            Vmlinux,
            true,
            Default,
        ),
        case(
            "qemu microvm, vmlinux, console msgs",
            Vmm::Qemu,
            Vmlinux,
            true,
            Default,
        ),
        case(
            "skiff, bzImage, quiet, seccomp off",
            Vmm::Skiff,
            BzImage,
            false,
            Off,
        ),
        case(
            "skiff, bzImage, quiet, seccomp + jail",
            Vmm::Skiff,
            BzImage,
            false,
            Jailed,
        ),
        Case {
            bare: true,
            ..case(
                "skiff, vmlinux, quiet, no devices",
                Vmm::Skiff,
                Vmlinux,
                false,
                Default,
            )
        },
    ]
}

fn boot_bench(rounds: usize, report: &mut String) {
    // Skiff's debug log says when its guest starts (the VMM's share of a boot); QEMU
    // ignores the variable.
    std::env::set_var("SKIFF_LOG", "debug");
    let cases = boot_cases();
    let mut samples: Vec<Samples> = cases.iter().map(|_| Samples::default()).collect();
    for round in 1..=rounds {
        eprintln!("boot round {round}/{rounds}");
        for (case, samples) in cases.iter().zip(samples.iter_mut()) {
            let mut spec = GuestSpec::new(case.vmm)
                .kernel(case.kernel)
                .memory_mib(MEMORY_MIB)
                .cmd("true")
                .timeout(BOOT_TIMEOUT);
            if case.console_messages {
                spec = spec.cmdline("loglevel=8");
            }
            spec = spec.vmm_args(case.hardening.args(TestEnv::get()));
            if case.bare {
                spec = spec.vmm_args(["--no-rng", "--no-balloon"]);
            }
            settle_host_memory();
            eprint!("  {}: ", case.name);
            match spec.spawn() {
                Ok(vm) => measure(vm, INIT_READY, samples),
                Err(e) => {
                    eprintln!("{}: {e}", case.name);
                    samples.failures += 1;
                }
            }
        }
    }
    let _ = writeln!(
        report,
        "### Boot to the guest's init marker ({rounds} rounds, 1 vCPU, {MEMORY_MIB} MiB, medians)\n"
    );
    table(
        report,
        &cases,
        &samples,
        &[
            ("quiet", 2, &[0, 1, 6, 7, 8]),
            ("console msgs", 5, &[3, 4]),
            ("hardening", 6, &[0, 7]),
        ],
    );
    guest_share(report, &cases, &samples, 2);
}

/// How much of each Skiff boot was the guest's own: the total less the VMM's start-up
/// (process start to the guest's first instruction). That share over QEMU's whole boot
/// is the ratio an infinitely fast VMM would reach with the same guest.
fn guest_share(report: &mut String, cases: &[Case], samples: &[Samples], reference: usize) {
    let Some(qemu) = median(&samples[reference].seconds) else {
        return;
    };
    let _ = writeln!(
        report,
        "\n| Skiff configuration | VMM start-up to the guest's first instruction (s) | guest's own time (s) | guest's own time / {} |\n|---|---:|---:|---:|",
        cases[reference].name
    );
    for (case, s) in cases.iter().zip(samples) {
        let (Some(total), Some(start)) = (median(&s.seconds), median(&s.guest_start_secs)) else {
            continue;
        };
        let guest = total - start;
        let _ = writeln!(
            report,
            "| {} | {start:.3} | {guest:.3} | {:.2} |",
            case.name,
            guest / qemu
        );
    }
}

fn tiny_bench(rounds: usize, report: &mut String) {
    let env = TestEnv::get();
    let image = env.scratch("tiny-pvh.elf");
    if let Err(e) = std::fs::write(&image, tiny_pvh_elf()) {
        eprintln!("cannot write {}: {e}", image.display());
        return;
    }
    let case = |name, vmm, hardening| Case {
        name,
        vmm,
        kernel: KernelKind::Vmlinux,
        console_messages: true,
        hardening,
        bare: false,
    };
    let cases = [
        case("skiff, tiny PVH", Vmm::Skiff, Hardening::Default),
        case("qemu microvm, tiny PVH", Vmm::Qemu, Hardening::Default),
        case("skiff, tiny PVH, seccomp off", Vmm::Skiff, Hardening::Off),
        case(
            "skiff, tiny PVH, seccomp + jail",
            Vmm::Skiff,
            Hardening::Jailed,
        ),
    ];
    let mut samples: Vec<Samples> = cases.iter().map(|_| Samples::default()).collect();
    for round in 1..=rounds {
        eprintln!("tiny round {round}/{rounds}");
        for (case, samples) in cases.iter().zip(samples.iter_mut()) {
            let mut cmd = match case.vmm {
                Vmm::Skiff => {
                    let mut c = Command::new(&env.skiff_bin);
                    c.arg("run").arg("--kernel").arg(&image);
                    c.args(["--memory", &format!("{MEMORY_MIB}M"), "--no-rng"]);
                    c.args(case.hardening.args(env));
                    c
                }
                Vmm::Qemu => {
                    let mut c = Command::new(&env.qemu);
                    c.arg("-L").arg(&env.qemu_datadir);
                    c.args(["-M", "microvm,accel=kvm,rtc=on", "-cpu", "host"]);
                    c.args(["-m", &format!("{MEMORY_MIB}M"), "-nographic", "-nodefaults"]);
                    c.args(["-serial", "stdio", "-kernel"]).arg(&image);
                    c
                }
            };
            cmd.env("SKIFF_LOG", "error");
            eprint!("  {}: ", case.name);
            match Vm::spawn_command(cmd) {
                Ok(vm) => measure(vm, TINY_MARKER, samples),
                Err(e) => {
                    eprintln!("{}: {e}", case.name);
                    samples.failures += 1;
                }
            }
        }
    }
    let _ = writeln!(
        report,
        "\n### VMM start-up: tiny PVH guest to its first serial line ({rounds} rounds, {MEMORY_MIB} MiB, medians)\n"
    );
    table(
        report,
        &cases,
        &samples,
        &[("tiny", 1, &[0, 2, 3]), ("hardening", 2, &[0, 3])],
    );
}

/// Waits for `marker`, takes the time and the VMM's overhead, then ends the VMM.
fn measure(mut vm: Vm, marker: &str, samples: &mut Samples) {
    match vm.wait_for(marker, BOOT_TIMEOUT) {
        Ok(_) => {
            let elapsed = vm.elapsed();
            samples.seconds.push(elapsed.as_secs_f64());
            if let Some(start) = guest_start_secs(&vm.stderr()) {
                samples.guest_start_secs.push(start);
            }
            match vmm_overhead_kib(vm.pid(), u64::from(MEMORY_MIB) << 20) {
                Ok(kib) => {
                    samples.overhead_kib.push(kib);
                    eprintln!(
                        "{:.2} s, {kib} KiB outside guest RAM",
                        elapsed.as_secs_f64()
                    );
                }
                Err(e) => eprintln!("{:.2} s, smaps: {e}", elapsed.as_secs_f64()),
            }
        }
        Err(e) => {
            eprintln!("failed: {e}");
            samples.failures += 1;
        }
    }
    // The measurement is taken: end the VMM now (Drop kills it and reaps it).
    drop(vm);
}

/// From the VMM's debug log: "the guest starts N ms after the VMM process did".
fn guest_start_secs(stderr: &str) -> Option<f64> {
    let rest = stderr.split("the guest starts ").nth(1)?;
    let ms: f64 = rest.split(" ms after").next()?.trim().parse().ok()?;
    Some(ms / 1000.0)
}

pub(crate) fn median<T: Copy + PartialOrd>(values: &[T]) -> Option<T> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied()
}

/// Rows for every case, then for each group the ratio of each listed row to the group's
/// reference row (QEMU's, or Skiff's without hardening).
fn table(
    report: &mut String,
    cases: &[Case],
    samples: &[Samples],
    groups: &[(&str, usize, &[usize])],
) {
    let _ = writeln!(
        report,
        "| configuration | time (s) | overhead outside guest RAM (MiB) | runs | failed |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|");
    for (case, s) in cases.iter().zip(samples) {
        let time = median(&s.seconds).map_or("-".into(), |t| format!("{t:.3}"));
        let mem =
            median(&s.overhead_kib).map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        let _ = writeln!(
            report,
            "| {} | {time} | {mem} | {} | {} |",
            case.name,
            s.seconds.len(),
            s.failures
        );
    }
    let _ = writeln!(report);
    for (label, reference, skiff_rows) in groups {
        let Some(ref_time) = median(&samples[*reference].seconds) else {
            continue;
        };
        for &row in skiff_rows.iter() {
            if let Some(t) = median(&samples[row].seconds) {
                let _ = writeln!(
                    report,
                    "- {label}: {} / {} time ratio = {:.2}",
                    cases[row].name,
                    cases[*reference].name,
                    t / ref_time
                );
            }
        }
    }
}
