//! virtio-blk and virtio-rng with Debian's stock guest kernel (issue 4): data the guest
//! wrote and flushed survives a SIGKILL of the VMM; a read-only disk refuses writes; the
//! guest's /dev/hwrng is the virtio-rng device and gives bytes.

use std::time::Duration;

use skiff_e2e::{make_ext4, value, GuestSpec, Signal, TestEnv, Vmm};

#[test]
fn flushed_data_survives_a_sigkill_of_the_vmm() {
    let env = TestEnv::get();
    let dir = env.scratch("blk-empty");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let image = env.scratch("blk-durable.ext4");
    make_ext4(&env.mke2fs, &dir, &image, 100).expect("mke2fs");
    let disk = format!("path={}", image.display());

    // write-file fsyncs the file and its directory; the VMM dies right after.
    let (written, console) = write_fsync_then_kill(&disk, 7, Duration::from_secs(180));
    assert_eq!(value(&console, "bytes"), Some("67108864"), "{console}");

    let out = GuestSpec::new(Vmm::Skiff)
        .vmm_args(["--disk", &disk])
        .cmd("mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && skiff-guest-tool verify-file /mnt/data")
        .timeout(Duration::from_secs(180))
        .run_ok();
    let output = out.command_output();
    assert_eq!(value(&output, "sha256"), Some(written.as_str()), "{out}");
    assert_eq!(value(&output, "bytes"), Some("67108864"), "{out}");
}

#[test]
fn read_only_disk_refuses_writes_and_hwrng_gives_bytes() {
    let env = TestEnv::get();
    let image = env.scratch("blk-ro.raw");
    let pattern: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&image, &pattern).expect("write image");
    let disk = format!("path={},ro,id=golden", image.display());

    let out = GuestSpec::new(Vmm::Skiff)
        .vmm_args(["--disk", &disk])
        .cmd(
            "echo ro=$(cat /sys/block/vda/ro); echo serial=$(cat /sys/block/vda/serial); \
             dd if=/dev/zero of=/dev/vda bs=4096 count=4 conv=fsync 2>/dev/null; echo dd=$?; \
             echo head=$(head -c 8 /dev/vda | od -An -tu1 | xargs | tr ' ' ','); \
             echo rng=$(cat /sys/class/misc/hw_random/rng_current); \
             echo random=$(head -c 64 /dev/hwrng | od -An -tx1 | tr -d ' \\n')",
        )
        .run_ok();
    let output = out.command_output();
    assert_eq!(value(&output, "ro"), Some("1"), "{out}");
    assert_eq!(value(&output, "serial"), Some("golden"), "{out}");
    assert_ne!(value(&output, "dd"), Some("0"), "a write succeeded\n{out}");
    assert_eq!(value(&output, "head"), Some("0,1,2,3,4,5,6,7"), "{out}");
    let after = std::fs::read(&image).expect("read image");
    assert!(after == pattern, "the read-only image changed\n{out}");

    assert_eq!(value(&output, "rng"), Some("virtio_rng.0"), "{out}");
    let random = value(&output, "random").unwrap_or_default();
    assert_eq!(random.len(), 128, "64 bytes from /dev/hwrng\n{out}");
    assert!(
        random.chars().all(|c| c.is_ascii_hexdigit()) && random != "0".repeat(128),
        "{out}"
    );
    let _ = std::fs::remove_file(&image);
}

/// Boots a guest on `disk` (a `--disk` argument: an ext4 file system) that writes a 64 MiB
/// file with `seed` and fsyncs it and its directory, SIGKILLs the VMM right after, and
/// returns the file's sha256 and the guest's console. Asserts that the guest never finished.
pub(crate) fn write_fsync_then_kill(disk: &str, seed: u32, timeout: Duration) -> (String, String) {
    let mut vm = GuestSpec::new(Vmm::Skiff)
        .vmm_args(["--disk", disk])
        .no_poweroff()
        .cmd(format!(
            "mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && \
             skiff-guest-tool write-file /mnt/data 64 --seed {seed} && echo WRITTEN-AND-SYNCED; \
             sleep 600"
        ))
        .spawn()
        .expect("spawn");
    vm.wait_for("WRITTEN-AND-SYNCED", timeout)
        .expect("guest writes 64 MiB");
    let console = vm.console();
    let written = value(&console, "sha256")
        .unwrap_or_else(|| panic!("no sha256 from write-file\n{console}"))
        .to_owned();
    vm.signal(Signal::Kill).expect("SIGKILL");
    let killed = vm.wait(Duration::from_secs(20)).expect("VMM dies");
    assert_eq!(
        killed.guest_status, None,
        "the guest never finished\n{killed}"
    );
    (written, console)
}
