//! The VMM core (issue 3): Debian's stock kernel boots with `skiff run` as bzImage and as
//! PVH vmlinux, with several vCPU counts and memory sizes; the guest's way of stopping
//! decides the exit status; bad input gets one clear line and nothing left behind.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::Duration;

use skiff_e2e::{GuestSpec, KernelKind, Signal, TestEnv, Vmm, INIT_READY};

/// Exit statuses of `skiff run` (crates/skiff-vmm/src/exit.rs).
const EXIT_GUEST_PANIC: i32 = 3;
const EXIT_GUEST_RESET: i32 = 5;

/// Boots, runs `nproc`, `MemTotal` and `/proc/cmdline` in the guest, and checks them.
fn check_topology(kernel: KernelKind, vcpus: u32, memory_mib: u32) {
    let out = GuestSpec::new(Vmm::Skiff)
        .kernel(kernel)
        .vcpus(vcpus)
        .memory_mib(memory_mib)
        .cmdline("skiff.test=topology")
        .cmd("nproc; grep MemTotal /proc/meminfo; cat /proc/cmdline")
        .run_ok();
    let output = out.command_output();
    let mut lines = output.lines();
    let nproc: u32 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(nproc, vcpus, "nproc\n{out}");
    let mem_total_kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // The kernel keeps some memory for itself; what it reports must be most of it.
    let configured_kib = u64::from(memory_mib) * 1024;
    assert!(
        mem_total_kib <= configured_kib && mem_total_kib * 100 >= configured_kib * 80,
        "MemTotal {mem_total_kib} kB for {memory_mib} MiB\n{out}"
    );
    let cmdline = lines.next().unwrap_or_default();
    assert!(cmdline.contains("skiff.test=topology"), "cmdline\n{out}");
}

#[test]
fn bzimage_boots_with_1_vcpu() {
    check_topology(KernelKind::BzImage, 1, 256);
}

#[test]
fn bzimage_boots_with_2_vcpus() {
    check_topology(KernelKind::BzImage, 2, 256);
}

#[test]
fn bzimage_boots_with_4_vcpus_and_odd_memory() {
    check_topology(KernelKind::BzImage, 4, 300);
}

#[test]
fn vmlinux_boots_through_pvh() {
    check_topology(KernelKind::Vmlinux, 2, 256);
}

#[test]
fn memory_above_the_mmio_hole_is_usable() {
    // 3.5 GiB: the last half GiB lands above 4 GiB, past the MMIO hole.
    check_topology(KernelKind::BzImage, 1, 3584);
}

#[test]
fn guest_poweroff_exits_zero() {
    let out = GuestSpec::new(Vmm::Skiff)
        .cmd("poweroff -f")
        .run()
        .expect("guest runs");
    assert_eq!(out.vmm_status.code(), Some(0), "{out}");
    assert_eq!(
        out.guest_status, None,
        "poweroff -f ends the guest before init does\n{out}"
    );
}

#[test]
fn guest_panic_exits_nonzero_with_a_message() {
    let out = GuestSpec::new(Vmm::Skiff)
        .cmd("echo c > /proc/sysrq-trigger")
        .run()
        .expect("guest runs");
    assert_eq!(out.vmm_status.code(), Some(EXIT_GUEST_PANIC), "{out}");
    assert!(out.vmm_stderr.contains("guest kernel panicked"), "{out}");
}

/// A reboot through the keyboard controller (`reboot=k`) and through the ACPI reset
/// register (`reboot=a`). Linux's default order hangs before either inside the emulated
/// host, with QEMU as well, so each path is chosen explicitly.
#[test]
fn guest_reboot_stops_the_vm_and_says_so() {
    for method in ["reboot=k", "reboot=a"] {
        let out = GuestSpec::new(Vmm::Skiff)
            .cmdline(method)
            .cmd("echo b > /proc/sysrq-trigger")
            .run()
            .expect("guest runs");
        assert_eq!(
            out.vmm_status.code(),
            Some(EXIT_GUEST_RESET),
            "{method}\n{out}"
        );
        assert!(out.vmm_stderr.contains("reboot"), "{method}\n{out}");
    }
}

#[test]
fn sigterm_stops_the_vmm_cleanly() {
    let mut vm = GuestSpec::new(Vmm::Skiff)
        .no_poweroff()
        .cmd("sleep 600")
        .spawn()
        .expect("spawn");
    vm.wait_for(INIT_READY, Duration::from_secs(120))
        .expect("guest boots");
    vm.signal(Signal::Term).expect("signal");
    let out = vm
        .wait(Duration::from_secs(20))
        .expect("VMM exits on SIGTERM");
    assert_eq!(out.vmm_status.code(), Some(0), "{out}");
    assert!(out.vmm_stderr.contains("signal 15"), "{out}");
}

#[test]
fn control_socket_pauses_and_resumes_the_guest() {
    let env = TestEnv::get();
    let socket = env.scratch("control-pause.sock");
    let mut vm = GuestSpec::new(Vmm::Skiff)
        .vmm_arg("--control-socket")
        .vmm_arg(&socket)
        .no_poweroff()
        .cmd("i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done")
        .spawn()
        .expect("spawn");
    vm.wait_for("tick 3", Duration::from_secs(120))
        .expect("ticks");
    let ctl = |action: &str| {
        let out = Command::new(&env.skiff_bin)
            .args(["ctl", "--socket"])
            .arg(&socket)
            .arg(action)
            .output()
            .expect("skiff ctl runs");
        assert!(
            out.status.success(),
            "skiff ctl {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    ctl("pause");
    let stats = String::from_utf8_lossy(&ctl("stats").stdout).into_owned();
    assert!(stats.contains(r#""state": "paused""#), "{stats}");
    let ticks_at_pause = vm.console().matches("tick").count();
    std::thread::sleep(Duration::from_secs(3));
    let ticks_after = vm.console().matches("tick").count();
    // A tick already in the UART may still land; a running guest would print ~15.
    assert!(
        ticks_after <= ticks_at_pause + 1,
        "{ticks_at_pause} -> {ticks_after}"
    );
    ctl("resume");
    let next = format!("tick {}", ticks_after + 3);
    vm.wait_for(&next, Duration::from_secs(30))
        .expect("ticks again after resume");
    ctl("stop");
    let out = vm.wait(Duration::from_secs(20)).expect("stops");
    assert_eq!(out.vmm_status.code(), Some(0), "{out}");
}

/// Runs `skiff run` with `args` (and `setup` in the child before exec) and checks that it
/// fails with exactly one line on stderr containing `expected`.
fn assert_refused(args: &[&str], expected: &str, setup: Option<fn() -> std::io::Result<()>>) {
    let env = TestEnv::get();
    let mut cmd = Command::new(&env.skiff_bin);
    cmd.arg("run").args(args);
    if let Some(setup) = setup {
        // SAFETY: the closure only makes async-signal-safe system calls (unshare, mount,
        // mkdir) between fork and exec.
        unsafe { cmd.pre_exec(setup) };
    }
    let Output { status, stderr, .. } = cmd.output().expect("skiff runs");
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(!status.success(), "{args:?} succeeded");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line, got:\n{stderr}"
    );
    assert!(
        stderr.contains(expected),
        "{args:?}: expected {expected:?} in {stderr}"
    );
}

fn kernel() -> String {
    TestEnv::get().kernel.display().to_string()
}

#[test]
fn missing_or_unreadable_kernel_is_refused() {
    assert_refused(
        &["--kernel", "/nonexistent/vmlinuz"],
        "cannot read kernel",
        None,
    );
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused() {
    let env = TestEnv::get();
    let text = env.scratch("not-a-kernel.txt");
    std::fs::write(&text, "hello, I am not a kernel\n").expect("write");
    assert_refused(
        &["--kernel", &text.display().to_string()],
        "is not a Linux kernel",
        None,
    );
    // An ELF that is no vmlinux: the skiff binary itself. Which reason the loader gives
    // (no PVH note, or not loadable at all) depends on how the binary was linked.
    assert_refused(
        &["--kernel", &env.skiff_bin.display().to_string()],
        "is an ELF file",
        None,
    );
}

#[test]
fn more_vcpus_than_kvm_allows_are_refused() {
    assert_refused(
        &["--kernel", &kernel(), "--vcpus", "4096"],
        "KVM allows at most",
        None,
    );
}

#[test]
fn more_memory_than_the_host_has_is_refused() {
    assert_refused(
        &["--kernel", &kernel(), "--memory", "15T"],
        "MiB of RAM and swap",
        None,
    );
}

/// Debian's bzImage unpacks itself at 16 MiB into 51 MiB: in 48 MiB its guest died of a
/// triple fault; in 68 MiB the initrd at the top of RAM overlapped the unpacked kernel.
#[test]
fn too_little_memory_for_the_kernel_is_refused() {
    assert_refused(
        &["--kernel", &kernel(), "--memory", "48M"],
        "MiB), more than the guest has",
        None,
    );
    let initrd = TestEnv::get().initrd.display().to_string();
    assert_refused(
        &[
            "--kernel",
            &kernel(),
            "--initrd",
            &initrd,
            "--memory",
            "68M",
        ],
        "does not fit in guest memory",
        None,
    );
}

#[test]
fn a_host_without_kvm_is_named() {
    fn hide_dev_kvm() -> std::io::Result<()> {
        private_mount_namespace()?;
        mount_tmpfs(c"/dev")
    }
    assert_refused(
        &["--kernel", &kernel()],
        "/dev/kvm does not exist",
        Some(hide_dev_kvm),
    );
}

#[test]
fn a_kvm_without_hardware_virtualization_is_named() {
    fn fake_kvm_pvm() -> std::io::Result<()> {
        private_mount_namespace()?;
        mount_tmpfs(c"/sys/module")?;
        // SAFETY: a valid NUL-terminated path.
        if unsafe { libc::mkdir(c"/sys/module/kvm_pvm".as_ptr(), 0o755) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    assert_refused(&["--kernel", &kernel()], "kvm_pvm", Some(fake_kvm_pvm));
}

fn private_mount_namespace() -> std::io::Result<()> {
    // SAFETY: plain system calls on constant arguments.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let none = c"none";
        if libc::mount(
            none.as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn mount_tmpfs(target: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: valid NUL-terminated strings; mounting in a private namespace.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A console written to a file that reaches the file-size limit (a jailed VMM runs under
/// RLIMIT_FSIZE) drops the output past it; the VMM runs on, and the guest's power-off still
/// ends it with status 0 (SIGXFSZ would have killed it).
#[test]
fn console_output_past_the_file_size_limit_is_dropped_not_fatal() {
    const LIMIT: u64 = 16 << 10;
    let env = TestEnv::get();
    let dir = env.scratch("console-fsize");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let log = dir.join("console.log");
    let spec = GuestSpec::new(Vmm::Skiff)
        .cmd("i=0; while [ $i -lt 400 ]; do echo \"line $i: ........................................\"; i=$((i+1)); done")
        .timeout(Duration::from_secs(300));
    let mut command = spec.command(env);
    let stdout = std::fs::File::create(&log).expect("console file");
    command.stdin(std::process::Stdio::null()).stdout(stdout);
    // SAFETY: setrlimit is async-signal-safe and changes only the child.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("skiff runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("skiff ends");
    let written = std::fs::metadata(&log).expect("console file").len();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the guest powered off; the VMM was not killed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        written, LIMIT,
        "the console filled the file up to the limit"
    );
}
