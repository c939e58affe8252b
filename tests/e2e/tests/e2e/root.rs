//! The root file system on virtio-blk (issue 4): Debian's kernel has virtio_blk as a
//! module, so the guest initramfs does what a distribution's does for `root=`: loads the
//! modules, waits for the disk, mounts it and switch_roots to its /sbin/init (the same
//! guest init, which then prints the marker and runs the command from the disk).

use std::time::Duration;

use skiff_e2e::{GuestSpec, KernelKind, TestEnv, Vmm, INIT_READY};

/// What the root file-system image holds only there (xtask/src/rootfs.rs).
const DISK_ONLY_FILE: &str = "/etc/skiff/rootfs";
const DISK_ONLY_TEXT: &str = "skiff test root file system";

/// The `/proc/mounts` line of `/` in `output`.
fn root_mount(output: &str) -> &str {
    output
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .unwrap_or("")
}

#[test]
fn root_on_virtio_blk_keeps_a_file_across_a_power_off() {
    let env = TestEnv::get();
    let image = env.rootfs_copy().expect("copy of the root image");
    let disk = format!("path={}", image.display());

    // bzImage, root by device name, read-write.
    let out = GuestSpec::new(Vmm::Skiff)
        .vmm_args(["--disk", &disk])
        .cmdline("root=/dev/vda rw")
        .cmd(format!(
            "grep ' / ' /proc/mounts; cat {DISK_ONLY_FILE}; \
             test -e /etc/skiff/modules && echo initramfs-still-there; \
             echo written-on-the-first-boot > /root/persisted && sync && echo pid1=$(cat /proc/1/comm)"
        ))
        .timeout(Duration::from_secs(120))
        .run_ok();
    let output = out.command_output();
    assert!(
        root_mount(&output).starts_with("/dev/vda / ext4 rw"),
        "/ is not the disk, read-write\n{out}"
    );
    assert!(output.contains(DISK_ONLY_TEXT), "{out}");
    assert!(!output.contains("initramfs-still-there"), "{out}");
    assert_eq!(
        out.console.matches(INIT_READY).count(),
        1,
        "one marker, from the disk's init\n{out}"
    );

    // The vmlinux (PVH), root by label, read-only (the default without `rw`).
    let out = GuestSpec::new(Vmm::Skiff)
        .kernel(KernelKind::Vmlinux)
        .vmm_args(["--disk", &disk])
        .cmdline("root=LABEL=skiff-root rootfstype=ext4")
        .cmd("grep ' / ' /proc/mounts; cat /root/persisted; touch /root/x 2>/dev/null; echo touch=$?")
        .timeout(Duration::from_secs(120))
        .run_ok();
    let output = out.command_output();
    assert!(
        root_mount(&output).starts_with("/dev/vda / ext4 ro"),
        "/ is not the disk, read-only\n{out}"
    );
    assert!(
        output.contains("written-on-the-first-boot"),
        "the file written before the power-off is gone\n{out}"
    );
    assert!(
        !output.contains("touch=0"),
        "wrote to a read-only root\n{out}"
    );
    let _ = std::fs::remove_file(&image);
}

#[test]
fn a_root_device_that_never_appears_is_reported_and_the_guest_powers_off() {
    let out = GuestSpec::new(Vmm::Skiff)
        .cmdline("root=/dev/vdz rootdelay=1")
        .cmd("echo must-not-run")
        .timeout(Duration::from_secs(120))
        .run()
        .expect("the VMM exits");
    assert!(
        out.console
            .contains("root device /dev/vdz did not appear within 1 s"),
        "{out}"
    );
    assert!(!out.console.contains("must-not-run"), "{out}");
    assert_eq!(out.guest_status, None, "{out}");
    assert!(out.vmm_status.success(), "powered off\n{out}");
}
