//! A guest cannot crash or hang the VMM (issue 4): a user-space virtio driver in the guest
//! (`skiff-guest-tool virtio-abuse`) takes the virtio-rng device and a second disk from
//! their kernel drivers and posts malformed descriptor chains — buffers outside RAM or in
//! the device's own BAR, lengths that overflow, loops, heads and `next`s outside the table,
//! nested, oversized and misaligned indirect tables, an avail index beyond the queue,
//! readable after writable, block requests without a readable header or a status byte.
//! Each must set DEVICE_NEEDS_RESET with a configuration interrupt (ISR), leave the queue
//! ignored until a reset, and work again after one, while the root disk answers after every
//! case; at the end the kernel's own drivers take both devices back and use them.

use std::time::Duration;

use sha2::{Digest, Sha256};
use skiff_e2e::{value, GuestSpec, TestEnv, Vmm};

/// Cases run against every device, and those only for one kind (the tool's `all`).
const COMMON_CASES: &[&str] = &[
    "outside-ram",
    "device-own-bar",
    "length-past-ram",
    "address-wraps",
    "next-loop",
    "next-outside-table",
    "head-outside-table",
    "avail-idx-jump",
    "readable-after-writable",
    "indirect-too-long",
    "indirect-nested",
    "indirect-odd-size",
    "indirect-outside-ram",
];
const RNG_CASES: &[&str] = &["zero-length"];
const BLOCK_CASES: &[&str] = &[
    "header-write-only",
    "no-status-byte",
    "short-header",
    "sector-past-end",
];
/// Cases that must complete rather than break the device.
const COMPLETING: &[&str] = &["zero-length", "sector-past-end"];

/// Boots a guest with `root` as its first disk and `victim` (id `victim`) as its second,
/// plus `extra` VMM arguments, runs the abuse command `cmd`, and prints its `case` lines;
/// the run's output and the command's.
pub(crate) fn run_abuse(
    root: &std::path::Path,
    victim: &std::path::Path,
    extra: &[&str],
    cmd: &str,
    timeout: Duration,
) -> (skiff_e2e::RunOutput, String) {
    let out = GuestSpec::new(Vmm::Skiff)
        .vmm_args(["--disk", &format!("path={}", root.display())])
        .vmm_args(["--disk", &format!("path={},id=victim", victim.display())])
        .vmm_args(extra.iter().copied())
        .cmd(cmd)
        .timeout(timeout)
        .run_ok();
    let output = out.command_output();
    for line in output.lines().filter(|l| l.starts_with("case ")) {
        eprintln!("{line}");
    }
    (out, output)
}

/// The fields of the `case name=NAME ...` line printed after `marker`.
pub(crate) fn case_line<'a>(output: &'a str, marker: &str, name: &str) -> Option<&'a str> {
    let want = format!("case name={name} ");
    output
        .split(marker)
        .nth(1)?
        .lines()
        .find(|l| l.trim_start().starts_with(&want))
}

pub(crate) fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
}

#[test]
fn malformed_chains_need_a_reset_and_harm_nothing_else() {
    let env = TestEnv::get();
    let root = env.scratch("robust-root.raw");
    let root_data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&root, &root_data).expect("write root image");
    let root_sha = format!("{:x}", Sha256::digest(&root_data[..64 * 1024]));
    let victim = env.scratch("robust-victim.raw");
    let mut victim_data = b"SKIFF-VICTIM-DSK".to_vec();
    victim_data.resize(1 << 20, 0x5a);
    std::fs::write(&victim, &victim_data).expect("write victim image");

    // vda: the disk that must keep working; vdb ("victim"): the disk abused.
    let t = "skiff-guest-tool virtio-abuse";
    let cmd = format!(
        "R=$(basename $(dirname $(grep -l 0x1044 /sys/bus/pci/devices/*/device))); \
         B=$(basename $(readlink -f /sys/block/vdb/device/..)); \
         echo ABUSE-RNG; {t} $R all --other /dev/vda; echo rng_abuse=$?; \
         echo ABUSE-BLK; {t} $B all --other /dev/vda; echo blk_abuse=$?; \
         for d in $R $B; do echo $d > /sys/bus/pci/drivers/virtio-pci/bind; done; \
         for i in $(seq 50); do [ -e /sys/class/misc/hw_random/rng_current ] && \
           grep -qs victim /sys/block/vd*/serial && break; sleep 0.1; done; \
         echo rng=$(cat /sys/class/misc/hw_random/rng_current); \
         echo random=$(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \\n'); \
         V=$(grep -l victim /sys/block/vd*/serial | cut -d/ -f4); \
         echo victim=$(head -c 16 /dev/$V); \
         echo root=$(head -c 65536 /dev/vda | sha256sum | cut -d' ' -f1)"
    );
    let (out, output) = run_abuse(&root, &victim, &[], &cmd, Duration::from_secs(300));

    // The VMM kept running through it all and stopped when the guest powered off.
    assert_eq!(out.vmm_status.code(), Some(0), "{out}");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    for (marker, specific, good_data) in [
        ("ABUSE-RNG", RNG_CASES, None),
        ("ABUSE-BLK", BLOCK_CASES, Some(hex(&victim_data[..16]))),
    ] {
        for name in COMMON_CASES.iter().chain(specific) {
            let line = case_line(&output, marker, name)
                .unwrap_or_else(|| panic!("{marker}: no line for case {name}\n{out}"));
            assert_eq!(
                field(line, "ok"),
                Some("1"),
                "{marker} {name}: {line}\n{out}"
            );
            let broken = !COMPLETING.contains(name);
            let flag = if broken { "1" } else { "0" };
            assert_eq!(field(line, "needs_reset"), Some(flag), "{line}");
            assert_eq!(field(line, "isr_config"), Some(flag), "{line}");
            if broken {
                assert_eq!(field(line, "ignored_while_broken"), Some("1"), "{line}");
            }
            assert_eq!(field(line, "recovered"), Some("1"), "{line}");
            if let Some(data) = &good_data {
                assert_eq!(field(line, "data"), Some(data.as_str()), "{line}");
            }
            // The other disk answered, with the right data, after every case.
            assert_eq!(
                field(line, "other_sha256"),
                Some(root_sha.as_str()),
                "{line}"
            );
        }
    }
    assert_eq!(value(&output, "rng_abuse"), Some("0"), "{out}");
    assert_eq!(value(&output, "blk_abuse"), Some("0"), "{out}");

    // The kernel's drivers took the devices back and use them.
    let rng = value(&output, "rng").unwrap_or_default();
    assert!(rng.starts_with("virtio_rng."), "{out}");
    let random = value(&output, "random").unwrap_or_default();
    assert_eq!(random.len(), 64, "32 bytes from /dev/hwrng\n{out}");
    assert_ne!(random, "0".repeat(64), "{out}");
    assert_eq!(value(&output, "victim"), Some("SKIFF-VICTIM-DSK"), "{out}");
    assert_eq!(value(&output, "root"), Some(root_sha.as_str()), "{out}");

    // Each refusal was logged by the VMM, naming the device.
    let refusals = out
        .vmm_stderr
        .lines()
        .filter(|l| l.contains("device needs a reset"))
        .count();
    let broken_cases =
        2 * COMMON_CASES.len() + RNG_CASES.len() + BLOCK_CASES.len() - COMPLETING.len();
    assert!(
        refusals >= broken_cases,
        "{refusals} refusals logged for {broken_cases} malformed chains\n{out}"
    );
    let _ = std::fs::remove_file(&root);
    let _ = std::fs::remove_file(&victim);
}
