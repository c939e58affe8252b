//! Tenant-ready guests (issue 12): virtio-blk on a qcow2 overlay whose backing file is a
//! shared base image, as the image store makes them; the Debian test image booted under
//! the daemon (`debian`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use skiff_e2e::{make_ext4, value, GuestSpec, TestEnv, Vmm};

#[path = "images/debian.rs"]
mod debian;

fn qemu_img(args: &[&str]) -> std::process::Output {
    let env = TestEnv::get();
    let out = Command::new(&env.qemu_img)
        .args(args)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A guest writes and fsyncs 64 MiB into a file system on a qcow2 overlay of a raw base,
/// its VMM is SIGKILLed, and then: `qemu-img check` finds the overlay consistent, the base
/// is unchanged, and a second VM reads the data back through the overlay.
#[test]
fn a_qcow2_overlay_survives_a_killed_vmm() {
    let env = TestEnv::get();
    let dir = env.scratch("img-kill-empty");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let base = env.scratch("img-kill-base.ext4");
    make_ext4(&env.mke2fs, &dir, &base, 100).expect("mke2fs");
    let base_bytes = std::fs::read(&base).expect("base");
    let overlay = env.scratch("img-kill-overlay.qcow2");
    let _ = std::fs::remove_file(&overlay);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(&base),
        "-F",
        "raw",
        s(&overlay),
    ]);
    let disk = format!("path={},format=qcow2", overlay.display());

    let (written, _) = crate::block::write_fsync_then_kill(&disk, 11, Duration::from_secs(240));

    // qemu-img check: 0 is a clean image, 3 one with leaked clusters only (space a write
    // after the last flush allocated; harmless, as in QEMU); 2 is corruption.
    let check = Command::new(&env.qemu_img)
        .args(["check", s(&overlay)])
        .output()
        .expect("qemu-img runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        matches!(check.status.code(), Some(0 | 3)) && !report.contains("ERROR"),
        "qemu-img check: {:?}\n{report}",
        check.status
    );
    eprintln!("qemu-img check after SIGKILL: {report}");
    assert!(
        std::fs::read(&base).expect("base") == base_bytes,
        "the base image changed"
    );

    let out = GuestSpec::new(Vmm::Skiff)
        .vmm_args(["--disk", &disk])
        .cmd("mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && skiff-guest-tool verify-file /mnt/data")
        .timeout(Duration::from_secs(180))
        .run_ok();
    let output = out.command_output();
    assert_eq!(value(&output, "sha256"), Some(written.as_str()), "{out}");
    assert_eq!(value(&output, "bytes"), Some("67108864"), "{out}");
}
