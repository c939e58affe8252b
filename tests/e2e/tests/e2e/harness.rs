//! The harness's self-tests, with QEMU from Debian as the VMM: they prove the guest
//! assets, the emulated host and the harness apart from Skiff, and QEMU's numbers are
//! the reference that Skiff's are compared with.

use std::time::Duration;

use skiff_e2e::{make_ext4, Error, GuestSpec, KernelKind, TestEnv, Vmm, INIT_READY};

#[test]
fn qemu_boots_pvh_vmlinux_and_runs_a_command() {
    let out = GuestSpec::new(Vmm::Qemu)
        .cmd("echo hello from $(uname -r); nproc")
        .run_ok();
    let output = out.command_output();
    assert!(output.contains("hello from 6."), "{out}");
    assert!(output.lines().any(|l| l.trim() == "1"), "{out}");
    assert!(out.init_ready.is_some(), "{out}");
    eprintln!(
        "qemu microvm, vmlinux: init ready after {:?}",
        out.init_ready
    );
}

#[test]
fn qemu_guest_has_virtio_and_two_vcpus() {
    let out = GuestSpec::new(Vmm::Qemu)
        .kernel(KernelKind::Vmlinux)
        .vcpus(2)
        .cmd("nproc; grep -c virtio /proc/modules")
        .run_ok();
    let lines: Vec<String> = out
        .command_output()
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    assert_eq!(lines.first().map(String::as_str), Some("2"), "{out}");
    let modules: u32 = lines.get(1).and_then(|l| l.parse().ok()).unwrap_or(0);
    assert!(modules >= 4, "virtio modules not loaded\n{out}");
}

#[test]
fn failing_guest_command_is_reported() {
    let spec = GuestSpec::new(Vmm::Qemu).cmd("echo about to fail; exit 7");
    let out = spec.run().expect("the guest runs");
    assert_eq!(out.guest_status, Some(7), "{out}");
    let panic =
        skiff_e2e::retry::catch_expected_panic(|| out.assert_success()).expect_err("must panic");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("expected guest status 0, got 7"),
        "{message}"
    );
    assert!(
        message.contains("about to fail"),
        "console missing: {message}"
    );
}

#[test]
fn hanging_guest_times_out_and_is_killed() {
    let mut vm = GuestSpec::new(Vmm::Qemu)
        .cmd("echo hanging; sleep 100000")
        .spawn()
        .expect("spawn");
    vm.wait_for(INIT_READY, Duration::from_secs(120))
        .expect("boots");
    vm.wait_for("hanging", Duration::from_secs(120))
        .expect("runs");
    let pid = vm.pid();
    let err = vm.wait(Duration::from_secs(1)).expect_err("must time out");
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(
        err.to_string().contains("hanging"),
        "console missing: {err}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "VMM {pid} still exists"
    );
}

#[test]
fn qemu_guest_mounts_an_ext4_image() {
    let env = TestEnv::get();
    let dir = env.scratch("ext4-guest");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("greeting"), "hello from the disk\n").expect("write");
    let image = env.scratch("guest.ext4");
    make_ext4(&env.mke2fs, &dir, &image, 32).expect("mke2fs");
    let drive = format!("file={},if=none,id=d0,format=raw", image.display());
    let out = GuestSpec::new(Vmm::Qemu)
        .vmm_args([
            "-M",
            "microvm,pcie=on",
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0",
        ])
        .cmd("mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && cat /mnt/greeting && umount /mnt")
        .run_ok();
    assert!(
        out.command_output().contains("hello from the disk"),
        "{out}"
    );
    let _ = std::fs::remove_file(&image);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ext4_image_from_a_directory() {
    let env = TestEnv::get();
    let dir = env.scratch("ext4-src");
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("sub/hello.txt"), "hello\n").expect("write");
    let image = env.scratch("disk.ext4");
    make_ext4(&env.mke2fs, &dir, &image, 16).expect("mke2fs");
    let data = std::fs::read(&image).expect("read image");
    assert_eq!(data.len(), 16 << 20);
    // The ext4 superblock magic 0xEF53 sits at byte 1024 + 0x38.
    assert_eq!(&data[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
    let _ = std::fs::remove_file(&image);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn interactive_console_signals_and_proc() {
    use skiff_e2e::Signal;
    // No command: the guest's /init starts a shell on the console.
    let mut vm = GuestSpec::new(Vmm::Qemu).spawn().expect("spawn");
    vm.wait_for(INIT_READY, Duration::from_secs(120))
        .expect("boots");
    vm.send_line("echo typed-$((6 * 7))").expect("type");
    vm.wait_for("typed-42", Duration::from_secs(60))
        .expect("shell answers");
    assert!(vm.rss_kib().expect("rss") > 1024, "{}", vm.console());
    let pss = vm.proc_kib("smaps_rollup", "Pss").expect("smaps_rollup");
    assert!(pss > 1024, "Pss {pss} KiB");
    vm.signal(Signal::Term).expect("SIGTERM");
    let out = vm
        .wait(Duration::from_secs(30))
        .expect("QEMU exits on SIGTERM");
    assert_eq!(out.guest_status, None, "{out}");
    assert!(out.init_ready.is_some(), "{out}");
}
