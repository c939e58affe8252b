//! What a jailed VMM holds, seen from the host's side (issue 16): its open file descriptors
//! are KVM's, its disks', its eventfds (queue notifications, interrupts), its epoll sets,
//! its control socket and its stdio (and a duplicate of stdout for the UART), and nothing
//! its supervisor or the daemon had open (the status file, once, was).

use std::time::{Duration, Instant};

use skiff_api::model::VmState;
use skiff_e2e::{GuestSpec, TestEnv, Vmm};

use crate::daemon::Daemon;

/// Where each of a process's descriptors points (`/proc/PID/fd/N`), by number.
fn open_files(pid: i32) -> Vec<(u32, String)> {
    let mut fds: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((fd, target.display().to_string()))
        })
        .collect();
    fds.sort();
    fds
}

/// Its disk, however the kernel names a file opened through the jail's bind mount.
fn is_disk(target: &str) -> bool {
    target.ends_with("disk0") || target.ends_with("fds-disk.img")
}

/// Whether a descriptor above stdio is one the VMM needs.
fn expected(target: &str) -> bool {
    target == "/dev/kvm"
        || target == "anon_inode:kvm-vm"
        || target.starts_with("anon_inode:kvm-vcpu:")
        || target == "anon_inode:[eventfd]"
        || target == "anon_inode:[eventpoll]"
        || target.starts_with("socket:[")
        || target == "/dev/urandom"
        || is_disk(target)
}

#[test]
fn a_jailed_vmm_holds_only_its_devices() {
    let env = TestEnv::get();
    let dir = env.scratch("hardening-fds");
    let daemon = Daemon::start_with(&dir, None, &[]);
    let disk = dir.join("fds-disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(16 << 20))
        .expect("disk image");
    let cmdline = GuestSpec::new(Vmm::Skiff)
        .cmd("echo FDS-READY; sleep 600")
        .kernel_cmdline();
    crate::memory_manager::run(
        &daemon,
        &serde_json::json!({
            "name": "fds",
            "kernel": env.kernel,
            "initrd": env.initrd,
            "cmdline": cmdline,
            "memory": "128M",
            "disks": [{ "path": disk, "read_only": true }],
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(240);
    let info = loop {
        let info = daemon.info("fds");
        let console = std::fs::read_to_string(&info.console.log).unwrap_or_default();
        if info.state == VmState::Running && console.contains("FDS-READY") {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "the guest never came up: {info:?}\n{console}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(info.jail.is_some(), "jailed: {info:?}");
    let vmm = info.vmm_pid.expect("VMM pid");
    let fds = open_files(vmm);
    eprintln!("hardening: the jailed VMM's descriptors: {fds:?}");
    let stdio: Vec<u32> = fds
        .iter()
        .map(|(fd, _)| *fd)
        .take_while(|fd| *fd < 3)
        .collect();
    assert_eq!(stdio, [0, 1, 2], "{fds:?}");
    // The UART writes to a duplicate of stdout.
    let stdio_files: Vec<&String> = fds.iter().take(3).map(|(_, t)| t).collect();
    let unexpected: Vec<&(u32, String)> = fds
        .iter()
        .filter(|(fd, target)| *fd > 2 && !expected(target) && !stdio_files.contains(&target))
        .collect();
    assert!(
        unexpected.is_empty(),
        "descriptors the VMM has no use for: {unexpected:?} (all: {fds:?})"
    );
    for needed in ["/dev/kvm", "anon_inode:kvm-vm", "anon_inode:[eventfd]"] {
        assert!(fds.iter().any(|(_, t)| t == needed), "{needed}: {fds:?}");
    }
    assert!(fds.iter().any(|(_, t)| is_disk(t)), "its disk: {fds:?}");
}
