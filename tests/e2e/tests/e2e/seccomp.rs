//! Per-thread seccomp (issue 7): every thread of a running VMM is filtered, and a thread
//! that makes a call outside its list ends the VMM with a line naming the call.

use std::process::Command;
use std::time::Duration;

use skiff_e2e::{make_ext4, GuestSpec, Signal, TestEnv, Vmm, INIT_READY};

/// Exit status of `skiff run` after a seccomp violation (crates/skiff-vmm/src/seccomp).
const EXIT_SECCOMP: i32 = 6;
/// Generous: the emulated host is slow when the machine is busy.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Each thread of `pid` with its `Seccomp:` mode (2 = filter).
fn thread_seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task list");
    tasks
        .map(|task| {
            let path = task.expect("task entry").path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            let mode = status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .unwrap_or("missing")
                .trim()
                .to_owned();
            (comm.trim().to_owned(), mode)
        })
        .collect()
}

#[test]
fn every_thread_of_a_running_vmm_is_filtered() {
    let env = TestEnv::get();
    let dir = env.scratch("seccomp-disk");
    std::fs::create_dir_all(&dir).expect("disk dir");
    let image = env.scratch("seccomp.img");
    make_ext4(&env.mke2fs, &dir, &image, 8).expect("disk image");
    let socket = env.scratch("seccomp.sock");
    let mut vm = GuestSpec::new(Vmm::Skiff)
        .vcpus(2)
        .no_poweroff()
        .vmm_arg("--disk")
        .vmm_arg(format!("path={}", image.display()))
        .vmm_arg("--control-socket")
        .vmm_arg(&socket)
        // The guest uses its disk, so the block worker has served requests by the check.
        .cmd("dd if=/dev/vda of=/dev/null bs=64k count=16 && echo DISK-READ && sleep 600")
        .spawn()
        .expect("spawn");
    vm.wait_for(INIT_READY, BOOT_TIMEOUT).expect("guest boots");
    vm.wait_for("DISK-READ", Duration::from_secs(120))
        .expect("guest reads its disk");
    let threads = thread_seccomp_modes(vm.pid());
    let unfiltered: Vec<_> = threads.iter().filter(|(_, mode)| mode != "2").collect();
    assert!(unfiltered.is_empty(), "unfiltered threads: {unfiltered:?}");
    let names: Vec<&str> = threads.iter().map(|(name, _)| name.as_str()).collect();
    for expected in [
        "skiff",
        "vcpu0",
        "vcpu1",
        "virtio-blk",
        "virtio-rng",
        "virtio-balloon",
        "balloon-stats",
        "signals",
        "control",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(expected)),
            "no {expected} thread in {names:?}"
        );
    }
    vm.signal(Signal::Term).expect("signal");
    let out = vm.wait(Duration::from_secs(30)).expect("VMM exits");
    assert_eq!(out.vmm_status.code(), Some(0), "{out}");
}

/// The test hook makes one thread call `getppid`, which no filter allows: the VMM ends
/// with its own status and names the thread and the call.
#[test]
fn a_forbidden_call_ends_the_vmm_and_names_it() {
    let env = TestEnv::get();
    for role in ["vcpu", "control", "virtio-rng"] {
        let socket = env.scratch("seccomp-hook.sock");
        let filter = role.strip_prefix("virtio-").unwrap_or(role);
        let out = GuestSpec::new(Vmm::Skiff)
            .vmm_arg("--control-socket")
            .vmm_arg(&socket)
            .vmm_arg("--test-forbidden-syscall")
            .vmm_arg(filter)
            .timeout(BOOT_TIMEOUT)
            .run()
            .expect("VMM runs");
        assert_eq!(out.vmm_status.code(), Some(EXIT_SECCOMP), "{role}\n{out}");
        let expected = format!("({filter} filter) made a forbidden system call: getppid (110)");
        assert!(
            out.vmm_stderr.contains(&expected) && out.vmm_stderr.contains(role),
            "{role}\n{out}"
        );
    }
}

/// With `--seccomp=log` the same call is let through, the kernel logs it (an audit
/// `type=1326` line with `syscall=110`) and the guest runs to the end; with
/// `--seccomp=off` threads carry no filter.
#[test]
fn log_mode_lets_the_call_through_and_off_installs_nothing() {
    let out = GuestSpec::new(Vmm::Skiff)
        .vmm_args(["--seccomp=log", "--test-forbidden-syscall", "vcpu"])
        .cmd("true")
        .timeout(BOOT_TIMEOUT)
        .run_ok();
    assert!(!out.vmm_stderr.contains("forbidden"), "{out}");
    let dmesg = Command::new("dmesg").output().expect("dmesg");
    let kernel_log = String::from_utf8_lossy(&dmesg.stdout);
    assert!(
        kernel_log
            .lines()
            .any(|l| l.contains("type=1326") && l.contains("vcpu0") && l.contains("syscall=110")),
        "no seccomp log line for getppid:\n{kernel_log}"
    );

    let mut vm = GuestSpec::new(Vmm::Skiff)
        .no_poweroff()
        .vmm_arg("--seccomp=off")
        .cmd("sleep 600")
        .spawn()
        .expect("spawn");
    vm.wait_for(INIT_READY, BOOT_TIMEOUT).expect("guest boots");
    let threads = thread_seccomp_modes(vm.pid());
    assert!(
        threads.iter().all(|(_, mode)| mode == "0"),
        "--seccomp=off: {threads:?}"
    );
    vm.signal(Signal::Term).expect("signal");
    vm.wait(Duration::from_secs(30)).expect("VMM exits");
}
