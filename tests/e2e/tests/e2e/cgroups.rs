//! CPU resource control (issue 5): each VM's VMM runs, every thread of it, in the control
//! group skiff/NAME (`skiff run --cgroup NAME`, which the daemon passes for each VM); the
//! spec's cpu shares split a contended CPU in proportion, and a quota caps a busy VM. The
//! emulated host mounts cgroup v2 (xtask's host init); the library's v1 paths are tested
//! against this machine's kernel by crates/skiff-cgroups/tests/real.rs, and docs/cgroups.md
//! has a run of these tests on v1.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_api::model::VmInfo;
use skiff_cgroups::{Cgroup, CpuStat, Hierarchy};
use skiff_e2e::{GuestSpec, TestEnv, Vm, Vmm};

use crate::daemon::Daemon;

/// A guest that never idles: its one vCPU wants a whole host CPU.
const SPIN: &str = "echo SPINNING; while :; do :; done";
const SHARES_WINDOW: Duration = Duration::from_secs(20);
const QUOTA_WINDOW: Duration = Duration::from_secs(10);
/// Booting under a 25 % quota takes about four times as long.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn start_busy_vm(group: &str, cpu_args: &[&str]) -> Vm {
    let mut args = vec!["--cgroup", group];
    args.extend_from_slice(cpu_args);
    GuestSpec::new(Vmm::Skiff)
        .cmd(SPIN)
        .vmm_args(args)
        .spawn()
        .expect("start the VMM")
}

fn wait_spinning(vm: &mut Vm) {
    vm.wait_for("SPINNING", BOOT_TIMEOUT)
        .expect("the guest starts spinning");
}

fn open_group(name: &str) -> Cgroup {
    let hierarchy = Hierarchy::detect().expect("a cgroup hierarchy");
    Cgroup::open(&hierarchy, skiff_cgroups::VM_PARENT, name).expect("the VM's group exists")
}

/// CPU time of a process, all threads (guest time included): utime + stime of /proc/PID/stat.
fn process_cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name, which ends at the last ')': state is field 3.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

fn thread_ids(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .map(|t| {
            t.expect("task")
                .file_name()
                .to_string_lossy()
                .parse()
                .expect("tid")
        })
        .collect()
}

/// Every thread of the VMM is in skiff/NAME for the cpu controller (v2: the one tree).
fn assert_threads_in_group(pid: u32, name: &str) {
    let want = format!("/{}/{name}", skiff_cgroups::VM_PARENT);
    let tids = thread_ids(pid);
    assert!(
        tids.len() >= 2,
        "a VMM has a vCPU thread besides main: {tids:?}"
    );
    for tid in tids {
        let text =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/cgroup")).expect("task cgroup");
        let cpu_line = text.lines().find(|l| {
            let controllers = l.split(':').nth(1).unwrap_or("");
            controllers.is_empty() || controllers.split(',').any(|c| c == "cpu")
        });
        let path = cpu_line.and_then(|l| l.splitn(3, ':').nth(2));
        assert_eq!(path, Some(want.as_str()), "thread {tid}: {text}");
    }
}

/// Pins every thread of the VMM to one host CPU, so two VMs compete for it.
fn pin_to_cpu(pid: u32, cpu: usize) {
    for tid in thread_ids(pid) {
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity get a
        // valid pointer to it and its size.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(tid as libc::pid_t, std::mem::size_of_val(&set), &set)
        };
        assert_eq!(
            rc,
            0,
            "pin thread {tid}: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Creates and starts, through the daemon's API, a VM whose guest spins, with the spec's
/// `cpu.shares`; returns its console log.
fn start_busy_vm_in(daemon: &Daemon, name: &str, shares: u64) -> PathBuf {
    let env = TestEnv::get();
    let spec = serde_json::json!({
        "name": name,
        "kernel": env.kernel,
        "initrd": env.initrd,
        "cmdline": GuestSpec::new(Vmm::Skiff).cmd(SPIN).kernel_cmdline(),
        "memory": "256M",
        "cpu": { "shares": shares },
    });
    crate::memory_manager::run(daemon, &spec);
    PathBuf::from(daemon.get::<VmInfo>(&format!("/vms/{name}")).console.log)
}

pub(crate) fn wait_for_file_text(path: &Path, text: &str, timeout: Duration) {
    if !file_text_appears(path, text, timeout) {
        panic!(
            "no {text} in {}:\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        );
    }
}

/// Whether `text` shows up in the file at `path` within `timeout`.
fn file_text_appears(path: &Path, text: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::read_to_string(path).is_ok_and(|c| c.contains(text)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits for a daemon VM's guest to spin. A guest that never did (once in session 6: an
/// empty console after 240 s) fails the test with what the daemon knows of the VM, where
/// its VMM's threads are (in KVM_RUN, or stuck elsewhere), its VMM log and the daemon's log.
fn wait_until_spinning(daemon: &Daemon, name: &str, console: &Path) {
    if file_text_appears(console, "SPINNING", BOOT_TIMEOUT) {
        return;
    }
    let info = daemon.get::<VmInfo>(&format!("/vms/{name}"));
    let threads = info
        .vmm_pid
        .map_or(String::new(), |pid| skiff_e2e::thread_states(pid as u32));
    let vmm_log = console.with_file_name("vmm.log");
    panic!(
        "{name}: no SPINNING after {BOOT_TIMEOUT:?}\nVM: {info:#?}\nVMM threads: {threads}\n\
         console:\n{}\nVMM log:\n{}\ndaemon log:\n{}",
        std::fs::read_to_string(console).unwrap_or_default(),
        std::fs::read_to_string(&vmm_log).unwrap_or_default(),
        daemon.log()
    );
}

/// The VMM of a VM the daemon started, which put it in skiff/NAME (`--cgroup`): the group's
/// user processes are that VMM and, jailed (the daemon's default), its supervisor outside
/// the jail's PID namespace, which joined the group before forking it. KVM's kernel worker
/// threads (kvm-nx-lpage-recovery, kvm-pit) join the group of the process that created the
/// VM, so they are listed too.
fn vmm_of(daemon: &Daemon, name: &str) -> u32 {
    let info = daemon.get::<VmInfo>(&format!("/vms/{name}"));
    let vmm = info.vmm_pid.expect("the VMM's pid") as u32;
    let mut expected = vec![vmm];
    if info.jail.is_some() {
        expected.push(info.pid.expect("the supervisor's pid") as u32);
    }
    expected.sort_unstable();
    let pids = open_group(name).pids().expect("the group's processes");
    let mut user: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|pid| {
            // Kernel threads have an empty command line.
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
        })
        .collect();
    user.sort_unstable();
    assert_eq!(
        user, expected,
        "the VMM (and its supervisor) in skiff/{name}: {pids:?}"
    );
    vmm
}

/// Issue 5's acceptance: two busy VMs created through the daemon with cpu shares 2:1, on
/// the same CPU, get CPU time within 15 % of 2:1.
#[test]
fn daemon_vms_with_shares_2_to_1_split_a_cpu() {
    let (heavy_name, light_name) = ("shares-2000", "shares-1000");
    let daemon = Daemon::start_with(&TestEnv::get().scratch("cgroups-daemon"), None, &[]);
    let heavy_console = start_busy_vm_in(&daemon, heavy_name, 2000);
    let light_console = start_busy_vm_in(&daemon, light_name, 1000);
    wait_until_spinning(&daemon, heavy_name, &heavy_console);
    wait_until_spinning(&daemon, light_name, &light_console);
    let (heavy, light) = (vmm_of(&daemon, heavy_name), vmm_of(&daemon, light_name));
    assert_threads_in_group(heavy, heavy_name);
    assert_threads_in_group(light, light_name);
    // The last CPU: the test itself and the rest of the host keep to the others.
    let cpu = host_cpus() - 1;
    pin_to_cpu(heavy, cpu);
    pin_to_cpu(light, cpu);
    std::thread::sleep(Duration::from_secs(2));

    let (heavy_group, light_group) = (open_group(heavy_name), open_group(light_name));
    let usage = |g: &Cgroup| g.cpu_usage().expect("group cpu usage");
    let before = (
        process_cpu_time(heavy),
        process_cpu_time(light),
        usage(&heavy_group),
        usage(&light_group),
    );
    let start = Instant::now();
    std::thread::sleep(SHARES_WINDOW);
    let wall = start.elapsed();
    let heavy_time = process_cpu_time(heavy) - before.0;
    let light_time = process_cpu_time(light) - before.1;
    let heavy_usage = usage(&heavy_group) - before.2;
    let light_usage = usage(&light_group) - before.3;

    let ratio = heavy_time.as_secs_f64() / light_time.as_secs_f64().max(1e-9);
    let group_ratio = heavy_usage.as_secs_f64() / light_usage.as_secs_f64().max(1e-9);
    eprintln!(
        "cgroups: shares 2000:1000 on CPU {cpu} for {wall:.1?}: VMM CPU time {heavy_time:.2?} \
         vs {light_time:.2?} = {ratio:.3}; group usage {heavy_usage:.2?} vs {light_usage:.2?} \
         = {group_ratio:.3} (cgroup {})",
        heavy_group.version()
    );
    // Both really competed for one whole CPU: otherwise the ratio says nothing.
    let total = (heavy_time + light_time).as_secs_f64();
    assert!(
        total >= 0.8 * wall.as_secs_f64() && total <= 1.1 * wall.as_secs_f64(),
        "the two VMs shared one busy CPU: {total:.2} s of CPU in {wall:.2?}"
    );
    assert!(
        (ratio / 2.0 - 1.0).abs() <= 0.15,
        "ratio {ratio:.3}, want 2 ± 15 %"
    );
    assert!(
        (group_ratio / 2.0 - 1.0).abs() <= 0.15,
        "group usage ratio {group_ratio:.3}, want 2 ± 15 %"
    );

    // Deleting a VM removes its group.
    let deleted = daemon
        .client()
        .blocking("DELETE", &format!("/vms/{light_name}"), None)
        .expect("API");
    assert!(deleted.status < 300, "delete: {}", deleted.text());
    let hierarchy = Hierarchy::detect().expect("hierarchy");
    assert!(
        Cgroup::open(&hierarchy, skiff_cgroups::VM_PARENT, light_name).is_err(),
        "skiff/{light_name} removed with its VM"
    );
}

/// `skiff run --cgroup NAME --cpu-quota 25`: a VM that would take a whole CPU gets about a
/// quarter of one; its group's memory limit is its memory plus the VMM's overhead bound.
#[test]
fn quota_caps_a_busy_vm_at_a_quarter_cpu() {
    let name = "e2e-quota-25";
    let mut vm = start_busy_vm(name, &["--cpu-quota", "25"]);
    wait_spinning(&mut vm);
    assert_threads_in_group(vm.pid(), name);
    let group = open_group(name);
    // The memory limit: the guest's 256 MiB plus the stated overhead bound (64 + 4 MiB).
    assert_eq!(
        group.memory_limit().expect("memory limit"),
        Some(skiff_api::memory::vm_memory_limit(256 << 20)),
        "memory limit of skiff/{name}"
    );
    assert_eq!(
        skiff_api::memory::vm_memory_limit(256 << 20),
        (256 + 68) << 20
    );
    let stat = || -> CpuStat { group.cpu_stat().expect("cpu stat") };

    let (before_time, before) = (process_cpu_time(vm.pid()), stat());
    let start = Instant::now();
    std::thread::sleep(QUOTA_WINDOW);
    let wall = start.elapsed().as_secs_f64();
    let (used, after) = (process_cpu_time(vm.pid()) - before_time, stat());
    let share = used.as_secs_f64() / wall;
    let group_share = (after.usage - before.usage).as_secs_f64() / wall;
    eprintln!(
        "cgroups: quota 25 % for {wall:.1} s: VMM CPU time {used:.2?} = {:.1} % of a CPU; \
         group usage {:.1} %; throttled in {} of {} periods",
        share * 100.0,
        group_share * 100.0,
        after.throttled_periods - before.throttled_periods,
        after.periods - before.periods
    );
    for (what, value) in [("VMM CPU time", share), ("group usage", group_share)] {
        assert!(
            (value / 0.25 - 1.0).abs() <= 0.15,
            "{what}: {:.1} % of a CPU, want 25 % ± 15 %",
            value * 100.0
        );
    }
    assert!(
        after.throttled_periods > before.throttled_periods,
        "the quota throttled the VM: {after:?}"
    );
}
