//! The jailer (issue 7): `skiff run --jail DIR --uid U --gid G` runs the VMM with DIR as
//! its root, in its own namespaces, as an unprivileged uid with no capabilities.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use skiff_e2e::{make_ext4, GuestSpec, Signal, TestEnv, Vmm, INIT_READY};

const JAIL_ID: u32 = 65534;

/// `Name:` fields of /proc/PID/status.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or("missing")
        .trim()
        .to_owned()
}

#[test]
fn a_jailed_vmm_sees_only_its_jail_and_holds_no_privilege() {
    let env = TestEnv::get();
    let jail = env.scratch("jail-root");
    let disk_dir = env.scratch("jail-disk");
    std::fs::create_dir_all(&disk_dir).expect("disk dir");
    std::fs::write(disk_dir.join("hello"), "from the host\n").expect("disk file");
    let image = env.scratch("jail.img");
    make_ext4(&env.mke2fs, &disk_dir, &image, 8).expect("disk image");
    std::os::unix::fs::chown(&image, Some(JAIL_ID), Some(JAIL_ID)).expect("chown image");
    let socket = env.scratch("jail.sock");
    let ids = JAIL_ID.to_string();
    let mut vm = GuestSpec::new(Vmm::Skiff)
        .no_poweroff()
        .vmm_args(["--jail".as_ref(), jail.as_os_str()])
        .vmm_args(["--uid", &ids, "--gid", &ids])
        .vmm_arg("--disk")
        .vmm_arg(format!("path={}", image.display()))
        .vmm_arg("--control-socket")
        .vmm_arg(&socket)
        .cmd(
            "mkdir -p /mnt && mount /dev/vda /mnt && cat /mnt/hello && echo data > /mnt/written && sync \
             && echo JAIL-DISK-OK && sleep 600",
        )
        .spawn()
        .expect("spawn");
    vm.wait_for(INIT_READY, Duration::from_secs(120))
        .expect("guest boots");
    vm.wait_for("JAIL-DISK-OK", Duration::from_secs(60))
        .expect("the guest reads and writes its disk");

    let pid = vm.pid();
    assert_ne!(pid, vm.spawned_pid(), "the VMM is the supervisor's child");
    let proc = Path::new("/proc").join(pid.to_string());

    // Its root is the jail directory, which holds only what the VM needs.
    let root = std::fs::metadata(proc.join("root")).expect("root");
    let jail_meta = std::fs::metadata(&jail).expect("jail dir");
    assert_eq!(
        (root.dev(), root.ino()),
        (jail_meta.dev(), jail_meta.ino()),
        "/proc/PID/root is the jail"
    );
    let mut entries: Vec<String> = std::fs::read_dir(proc.join("root"))
        .expect("jail root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["dev", "disk0", "initrd", "kernel", "proc", "run"]);
    let mut devices: Vec<String> = std::fs::read_dir(proc.join("root/dev"))
        .expect("jail dev")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    devices.sort();
    assert_eq!(devices, ["kvm", "urandom"]);
    // Host files outside it are not there (its /proc shows only its own PID namespace).
    for host_path in ["etc", "opt", "tmp", "usr", "proc/1/root/opt"] {
        assert!(
            !proc.join("root").join(host_path).exists(),
            "{host_path} is visible in the jail"
        );
    }

    // Unprivileged, without any capability, filtered.
    let status = std::fs::read_to_string(proc.join("status")).expect("status");
    assert!(
        status_field(&status, "Uid")
            .split_whitespace()
            .all(|u| u == ids),
        "{status}"
    );
    assert!(
        status_field(&status, "Gid")
            .split_whitespace()
            .all(|g| g == ids),
        "{status}"
    );
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&status, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert_eq!(status_field(&status, "Seccomp"), "2");

    // Its own namespaces.
    for ns in ["mnt", "net", "pid", "ipc", "uts"] {
        let theirs = std::fs::read_link(proc.join("ns").join(ns)).expect("ns");
        let ours = std::fs::read_link(Path::new("/proc/self/ns").join(ns)).expect("own ns");
        assert_ne!(theirs, ours, "{ns} namespace shared with the host");
    }
    let limits = std::fs::read_to_string(proc.join("limits")).expect("limits");
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains("1024")),
        "{limits}"
    );

    // The control socket is reachable at the path asked for.
    let stats = Command::new(&env.skiff_bin)
        .args(["ctl", "--socket"])
        .arg(&socket)
        .arg("stats")
        .output()
        .expect("skiff ctl");
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );

    vm.signal(Signal::Term).expect("signal");
    let out = vm.wait(Duration::from_secs(30)).expect("VMM exits");
    assert_eq!(out.vmm_status.code(), Some(0), "{out}");
    assert!(out.vmm_stderr.contains("signal 15"), "{out}");
    let left: Vec<_> = std::fs::read_dir(&jail)
        .expect("jail dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left in the jail: {left:?}");
    assert!(!socket.exists(), "the socket link is removed");
}
