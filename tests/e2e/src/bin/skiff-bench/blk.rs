//! `blk`: virtio-blk throughput and IOPS, Skiff beside QEMU's virtio-blk-pci, interleaved.
//! The same guest (1 vCPU, 256 MiB, Debian's kernel, the busybox initramfs) runs
//! `skiff-guest-tool iobench` with O_DIRECT on /dev/vda, a raw image in the host's /tmp
//! (tmpfs in the emulated host). Each guest does every job once, in this order.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use skiff_e2e::{GuestSpec, TestEnv, Vmm};

use crate::median;

/// Bytes of the image, and of the region every job covers.
const REGION_MIB: u64 = 64;
const RANDOM_SECONDS: u32 = 5;

/// One `iobench` run in the guest.
struct Job {
    name: &'static str,
    args: &'static str,
    /// Report MiB/s (sequential) or IOPS (random).
    iops: bool,
}

const JOBS: &[Job] = &[
    Job {
        name: "seq write, 1 MiB blocks, QD1",
        args: "seq-write --block-kib 1024",
        iops: false,
    },
    Job {
        name: "seq read, 1 MiB blocks, QD1",
        args: "seq-read --block-kib 1024",
        iops: false,
    },
    Job {
        name: "rand read, 4 KiB, QD1",
        args: "rand-read --block-kib 4",
        iops: true,
    },
    Job {
        name: "rand write, 4 KiB, QD1",
        args: "rand-write --block-kib 4",
        iops: true,
    },
    Job {
        name: "rand read, 4 KiB, QD4 (4 threads)",
        args: "rand-read --block-kib 4 --threads 4",
        iops: true,
    },
    Job {
        name: "rand read, 4 KiB, QD32 (32 threads)",
        args: "rand-read --block-kib 4 --threads 32",
        iops: true,
    },
];

struct Config {
    name: &'static str,
    vmm: Vmm,
}

impl Config {
    /// A short name for file names.
    fn vmm_tag(&self) -> &'static str {
        match self.vmm {
            Vmm::Skiff => "skiff",
            Vmm::Qemu => "qemu",
        }
    }
}

const CONFIGS: &[Config] = &[
    Config {
        name: "skiff",
        vmm: Vmm::Skiff,
    },
    Config {
        name: "qemu virtio-blk-pci, cache=writeback, aio=threads",
        vmm: Vmm::Qemu,
    },
];

/// The guest's command: every job, then nothing else.
fn guest_command() -> String {
    JOBS.iter()
        .map(|j| {
            format!(
                "skiff-guest-tool iobench /dev/vda {} --mib {REGION_MIB} --seconds {RANDOM_SECONDS}",
                j.args
            )
        })
        .collect::<Vec<_>>()
        .join(" && ")
}

fn spec(config: &Config, image: &Path) -> GuestSpec {
    let spec = GuestSpec::new(config.vmm)
        .cmd(guest_command())
        .timeout(Duration::from_secs(900));
    match config.vmm {
        Vmm::Skiff => spec.vmm_args(["--disk".to_string(), format!("path={}", image.display())]),
        // The closest match to Skiff's device: buffered I/O on the host (Skiff does not
        // use O_DIRECT), blocking calls off the guest's path, one queue of 256.
        Vmm::Qemu => spec.vmm_args([
            "-M".to_string(),
            "microvm,pcie=on".into(),
            "-drive".into(),
            format!(
                "file={},format=raw,if=none,id=d0,cache=writeback,aio=threads",
                image.display()
            ),
            "-device".into(),
            "virtio-blk-pci,drive=d0,num-queues=1,queue-size=256".into(),
        ]),
    }
}

/// The figure of each job in the guest's output, in job order (`None`: missing).
fn figures(output: &str) -> Vec<Option<f64>> {
    let mut values = Vec::new();
    let mut job = 0;
    for line in output.lines() {
        let Some(j) = JOBS.get(job) else { break };
        let key = if j.iops { "iops=" } else { "throughput_mib_s=" };
        if let Some(v) = line.trim().strip_prefix(key) {
            values.push(v.parse().ok());
            job += 1;
        }
    }
    values.resize(JOBS.len(), None);
    values
}

pub fn bench(rounds: usize, report: &mut String) {
    let env = TestEnv::get();
    let images: Vec<_> = CONFIGS
        .iter()
        .map(|c| env.scratch(&format!("blk-bench-{}.raw", c.vmm_tag())))
        .collect();
    for image in &images {
        // Filled, so that reads find data (a hole on tmpfs reads without any copy).
        let data: Vec<u8> = (0..REGION_MIB << 20).map(|i| (i % 251) as u8).collect();
        if let Err(e) = std::fs::write(image, data) {
            eprintln!("cannot write {}: {e}", image.display());
            return;
        }
    }
    // samples[config][job]
    let mut samples = vec![vec![Vec::new(); JOBS.len()]; CONFIGS.len()];
    let mut failures = vec![0usize; CONFIGS.len()];
    for round in 1..=rounds {
        eprintln!("blk round {round}/{rounds}");
        for (c, config) in CONFIGS.iter().enumerate() {
            match spec(config, &images[c]).run() {
                Ok(out) if out.guest_status == Some(0) => {
                    let got = figures(&out.command_output());
                    eprintln!("  {}: {got:?}", config.name);
                    for (j, v) in got.into_iter().enumerate() {
                        if let Some(v) = v {
                            samples[c][j].push(v);
                        }
                    }
                }
                Ok(out) => {
                    eprintln!("  {} failed:\n{out}", config.name);
                    failures[c] += 1;
                }
                Err(e) => {
                    eprintln!("  {} failed: {e}", config.name);
                    failures[c] += 1;
                }
            }
        }
    }
    for image in &images {
        let _ = std::fs::remove_file(image);
    }
    let _ = writeln!(
        report,
        "\n### virtio-blk, O_DIRECT in the guest on a {REGION_MIB} MiB raw image ({rounds} rounds, medians)\n"
    );
    let _ = writeln!(
        report,
        "| job | {} | {} | ratio |",
        CONFIGS[0].name, CONFIGS[1].name
    );
    let _ = writeln!(report, "|---|---:|---:|---:|");
    for (j, job) in JOBS.iter().enumerate() {
        let unit = if job.iops { "IOPS" } else { "MiB/s" };
        let skiff = median(&samples[0][j]);
        let qemu = median(&samples[1][j]);
        let cell = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} {unit}"));
        let ratio = match (skiff, qemu) {
            (Some(s), Some(q)) if q > 0.0 => format!("{:.2}", s / q),
            _ => "-".into(),
        };
        let _ = writeln!(
            report,
            "| {} | {} | {} | {ratio} |",
            job.name,
            cell(skiff),
            cell(qemu)
        );
    }
    let _ = writeln!(
        report,
        "\nratio: Skiff / QEMU (above 1: Skiff is faster). Samples per cell: {:?} rounds; failed guests: skiff {}, qemu {}.",
        samples.iter().map(|s| s.iter().map(Vec::len).min().unwrap_or(0)).collect::<Vec<_>>(),
        failures[0],
        failures[1]
    );
}
