//! A hostile guest kernel's tricks against its VMM (issue 16, item 5), played from user
//! space in a real guest by `skiff-guest-tool virtio-abuse` with the devices taken from
//! their kernel drivers:
//! - a balloon driver that floods the deflate queue for 60 s: meanwhile the control
//!   socket answers every request, the guest's statistics stay younger than 5 s (the
//!   driver answers the device's requests for them, as a guest kernel does), and the VM
//!   pauses and resumes;
//! - in one boot, odd virtio-net transmit lengths, DRIVER_OK written twice (and cleared and
//!   set again), MSI-X vector storms while the device works, and a BAR moved over another
//!   device's BAR and back: the VMM keeps running, every device works afterwards, and the
//!   root disk answers after each case.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use skiff_e2e::{ctl, value, GuestSpec, TestEnv, Vmm};

use crate::balloon::json_u64;
use crate::robustness::{case_line, field};

/// How long the guest floods its balloon's deflate queue.
const FLOOD: Duration = Duration::from_secs(60);
/// The oldest the guest's statistics may be while it floods.
const MAX_STATS_AGE_MS: u64 = 5_000;

/// A disk of known content; returns its path and the SHA-256 of its first 64 KiB (what
/// `--other` reads after each case).
fn known_disk(name: &str) -> (std::path::PathBuf, String) {
    let path = TestEnv::get().scratch(name);
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).expect("write disk image");
    (path, format!("{:x}", Sha256::digest(&data[..64 * 1024])))
}

/// The PCI address of the first function with virtio device ID `id`, in guest shell.
const DEV: &str =
    "dev() { basename $(dirname $(grep -l $1 /sys/bus/pci/devices/*/device | head -1)); }";

#[test]
fn a_deflate_flood_leaves_the_control_socket_answering() {
    let env = TestEnv::get();
    let socket = env.scratch("flood.sock");
    let (root, root_sha) = known_disk("flood-root.raw");
    let t = "skiff-guest-tool virtio-abuse";
    let cmd = format!(
        "{DEV}; B=$(dev 0x1045); echo FLOOD-RUN; \
         {t} $B deflate-flood --seconds {} --other /dev/vda; echo flood_abuse=$?; \
         echo $B > /sys/bus/pci/drivers/virtio-pci/bind; \
         for i in $(seq 50); do [ -e /sys/bus/pci/devices/$B/driver ] && break; sleep 0.1; done; \
         echo balloon_driver=$(basename $(readlink /sys/bus/pci/devices/$B/virtio*/driver))",
        FLOOD.as_secs()
    );
    let mut vm = GuestSpec::new(Vmm::Skiff)
        .vmm_args(["--disk", &format!("path={}", root.display())])
        .vmm_arg("--control-socket")
        .vmm_arg(&socket)
        .cmd(cmd)
        .timeout(Duration::from_secs(400))
        .spawn()
        .expect("spawn");
    vm.wait_for("flood started=1", Duration::from_secs(180))
        .expect("the flood starts");

    let start = Instant::now();
    let (mut answers, mut slowest, mut oldest) = (0u32, Duration::ZERO, 0u64);
    let mut paused = false;
    while start.elapsed() < FLOOD - Duration::from_secs(5) {
        let asked = Instant::now();
        let (ok, stats) = ctl(&socket, &["stats"]);
        let took = asked.elapsed();
        assert!(ok, "stats during the flood: {stats}\n{}", vm.context());
        answers += 1;
        slowest = slowest.max(took);
        let age = json_u64(&stats, "age_ms")
            .unwrap_or_else(|| panic!("no guest statistics: {stats}\n{}", vm.context()));
        oldest = oldest.max(age);
        assert!(
            age < MAX_STATS_AGE_MS,
            "guest statistics {age} ms old after {:?} of flood\n{stats}\n{}",
            start.elapsed(),
            vm.context()
        );
        if !paused && start.elapsed() > FLOOD / 2 {
            let (ok, text) = ctl(&socket, &["pause"]);
            assert!(ok, "pause during the flood: {text}\n{}", vm.context());
            std::thread::sleep(Duration::from_secs(1));
            let (ok, text) = ctl(&socket, &["resume"]);
            assert!(ok, "resume during the flood: {text}\n{}", vm.context());
            paused = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "deflate flood: {answers} stats answers, slowest {slowest:?}, statistics at most {oldest} ms old"
    );
    assert!(paused, "the VM was paused during the flood");
    let out = vm.wait(Duration::from_secs(300)).expect("the guest ends");
    let output = out.command_output();
    let line = case_line(&output, "FLOOD-RUN", "deflate-flood")
        .unwrap_or_else(|| panic!("no deflate-flood line\n{out}"));
    eprintln!("{line}");
    assert_eq!(field(line, "ok"), Some("1"), "{line}\n{out}");
    let chains: u64 = field(line, "deflate_chains")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(chains > 1000, "a flood of {chains} chains\n{out}");
    assert_eq!(
        field(line, "other_sha256"),
        Some(root_sha.as_str()),
        "{line}"
    );
    assert_eq!(value(&output, "flood_abuse"), Some("0"), "{out}");
    assert_eq!(
        value(&output, "balloon_driver"),
        Some("virtio_balloon"),
        "{out}"
    );
    assert_eq!(out.vmm_status.code(), Some(0), "{out}");
    let _ = std::fs::remove_file(&root);
}

/// The odd transmit lengths (the tool's `net-tx-LEN` cases).
const NET_LENGTHS: &[u32] = &[0, 1, 11, 12, 1527, 65535, 65563, 1 << 20];

#[test]
fn odd_frames_bar_moves_msix_storms_and_driver_ok_twice_harm_nothing() {
    let env = TestEnv::get();
    let (root, root_sha) = known_disk("abuse-root.raw");
    let victim = env.scratch("abuse-victim.raw");
    let mut victim_data = b"SKIFF-VICTIM-DSK".to_vec();
    victim_data.resize(1 << 20, 0x5a);
    std::fs::write(&victim, &victim_data).expect("write victim image");
    let t = "skiff-guest-tool virtio-abuse";
    let frames: Vec<String> = NET_LENGTHS.iter().map(|l| format!("net-tx-{l}")).collect();
    let cmd = format!(
        "{DEV}; R=$(dev 0x1044); N=$(dev 0x1041); \
         B=$(basename $(readlink -f /sys/block/vdb/device/..)); \
         echo ABUSE-NET; {t} $N {} driver-ok-twice msix-storm --other /dev/vda; echo net_abuse=$?; \
         echo ABUSE-RNG; {t} $R driver-ok-twice msix-storm bar-over-bar --over $B --other /dev/vda; \
         echo rng_abuse=$?; \
         echo ABUSE-BLK; {t} $B driver-ok-twice --other /dev/vda; echo blk_abuse=$?; \
         for d in $R $B $N; do echo $d > /sys/bus/pci/drivers/virtio-pci/bind; done; \
         for i in $(seq 50); do [ -e /sys/class/misc/hw_random/rng_current ] && \
           grep -qs victim /sys/block/vd*/serial && [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done; \
         echo rng=$(cat /sys/class/misc/hw_random/rng_current); \
         echo random=$(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \\n'); \
         V=$(grep -l victim /sys/block/vd*/serial | cut -d/ -f4); \
         echo victim=$(head -c 16 /dev/$V); \
         ip link set eth0 up && echo eth0=up; \
         echo root=$(head -c 65536 /dev/vda | sha256sum | cut -d' ' -f1)",
        frames.join(" ")
    );
    let (out, output) = super::robustness::run_abuse(
        &root,
        &victim,
        &["--nic", "tap=skabuse0"],
        &cmd,
        Duration::from_secs(400),
    );
    assert_eq!(out.vmm_status.code(), Some(0), "{out}");
    let storms = ["driver-ok-twice", "msix-storm"];
    let net_cases: Vec<&str> = frames.iter().map(String::as_str).chain(storms).collect();
    for (marker, names) in [
        ("ABUSE-NET", net_cases),
        (
            "ABUSE-RNG",
            vec!["driver-ok-twice", "msix-storm", "bar-over-bar"],
        ),
        // The storm on virtio-blk kills the guest in the emulated host: see
        // `blk_msix_storms_in_a_loop` below.
        ("ABUSE-BLK", vec!["driver-ok-twice"]),
    ] {
        for name in names {
            let line = case_line(&output, marker, name)
                .unwrap_or_else(|| panic!("{marker}: no line for case {name}\n{out}"));
            assert_eq!(
                field(line, "ok"),
                Some("1"),
                "{marker} {name}: {line}\n{out}"
            );
            assert_eq!(field(line, "recovered"), Some("1"), "{line}");
            if name != "bar-over-bar" {
                assert_eq!(field(line, "needs_reset"), Some("0"), "{line}");
            }
            if name == "driver-ok-twice" {
                // Cleared and set again without a reset, DRIVER_OK did not start the
                // queue over (which would have completed the first request again).
                assert_eq!(field(line, "replayed"), Some("0"), "{line}");
            }
            // The root disk answered, with the right data, after every case.
            assert_eq!(
                field(line, "other_sha256"),
                Some(root_sha.as_str()),
                "{line}"
            );
        }
    }
    let bar = case_line(&output, "ABUSE-RNG", "bar-over-bar").unwrap_or_default();
    assert_eq!(field(bar, "other_works"), Some("1"), "{bar}");
    for key in ["net_abuse", "rng_abuse", "blk_abuse"] {
        assert_eq!(value(&output, key), Some("0"), "{key}\n{out}");
    }
    // The kernel's drivers took every device back and use it.
    assert!(
        value(&output, "rng")
            .unwrap_or_default()
            .starts_with("virtio_rng."),
        "{out}"
    );
    let random = value(&output, "random").unwrap_or_default();
    assert_eq!(random.len(), 64, "32 bytes from /dev/hwrng\n{out}");
    assert_eq!(value(&output, "victim"), Some("SKIFF-VICTIM-DSK"), "{out}");
    assert_eq!(value(&output, "eth0"), Some("up"), "{out}");
    assert_eq!(value(&output, "root"), Some(root_sha.as_str()), "{out}");
    let _ = std::fs::remove_file(&root);
    let _ = std::fs::remove_file(&victim);
}

/// MSI-X storms on a virtio-blk device, 15 in a row in one 1-vCPU guest. In the emulated
/// host this kills the guest: on 2026-12-08 four guests of five died of a triple fault
/// after 3 to 8 storms (vectors aimed at physical APIC ID 0xfe; the fifth, this test's
/// in-test second boot, took all 15); with the storm's old
/// addresses, which also set the logical-mode bit, two runs of three hung instead after 1
/// and 3 storms, the VMM's threads all idle (its vCPU thread running the guest) — while
/// storms on virtio-net and virtio-rng, in the same guests, never did. The VMM survives
/// each time and reports the guest's end. Whose fault it is (the emulated host's nested
/// SVM under thousands of KVM_SET_GSI_ROUTING calls, or Skiff's virtio-blk) is open:
/// docs/testing.md. `cargo xtask e2e guest_abuse::blk_msix -- --ignored --nocapture`
#[test]
#[ignore = "kills its guest in the emulated host, cause open (docs/testing.md): cargo xtask e2e guest_abuse::blk_msix -- --ignored --nocapture"]
fn blk_msix_storms_in_a_loop() {
    let env = TestEnv::get();
    let (root, root_sha) = known_disk("storm-root.raw");
    let victim = env.scratch("storm-victim.raw");
    std::fs::write(&victim, vec![0x5a; 1 << 20]).expect("write victim image");
    let cmd = "B=$(basename $(readlink -f /sys/block/vdb/device/..)); \
         for i in $(seq 15); do skiff-guest-tool virtio-abuse $B msix-storm --other /dev/vda \
           || echo storm_failed=$i; echo storms=$i; done";
    let (out, output) =
        super::robustness::run_abuse(&root, &victim, &[], cmd, Duration::from_secs(400));
    let storms = output.lines().filter(|l| l.starts_with("storms=")).count();
    assert_eq!(storms, 15, "{out}");
    assert!(!output.contains("storm_failed="), "{out}");
    let last = output
        .lines()
        .rfind(|l| l.starts_with("case name=msix-storm"))
        .unwrap_or_default();
    assert_eq!(
        field(last, "other_sha256"),
        Some(root_sha.as_str()),
        "{last}"
    );
}
