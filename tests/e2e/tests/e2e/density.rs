//! Density benchmark (issues 6 and 18): how many idle 256 MiB guests stay responsive when the
//! VMMs together may use 2 GiB of host memory, Skiff under its daemon (memory manager,
//! balloon, free page reporting, KSM tuned) against QEMU at its best, in the same emulated
//! host, one system after the other. QEMU (Debian's package, microvm with
//! `virtio-balloon-pci,free-page-reporting=on`, KSM on at the rate Skiff's manager allows
//! itself at most) runs twice: alone, and with the balloon script a user of QEMU would write
//! (`qmp.rs`: every 2 s each guest's balloon is set from the free memory it reports).
//!
//! The budget is enforced for both in the same way: a cgroup v2 memory limit of 2 GiB
//! (`memory.max`, no swap) on the group that holds all of one system's VMMs (`skiff/` for
//! the daemon's VMs, `density-qemu/` for QEMU). Skiff's daemon is also told the 2 GiB
//! (`--memory-budget 2G`), so its policy aims below the kernel's limit.
//!
//! Guests: 1 vCPU, 256 MiB, Debian's cloud kernel and the busybox initramfs. Each touches
//! `TOUCH_MIB` once after boot and frees it (an idle guest that once ran something: its
//! freed memory holds stale data, as in real guests), then idles answering console probes.
//! VMs are added one at a time; after each, every VM is probed. The count is the largest
//! number for which every VM booted and answered; the run stops at the first VM that does
//! not boot, a probe that is not answered within `PROBE_TIMEOUT`, a VMM that dies (the
//! cgroup's OOM killer), or `MAX_VMS`.
//!
//! `cargo xtask e2e density -- --ignored --nocapture` (docs/benchmarks.md has a run).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_api::model::VmInfo;
use skiff_cgroups::{Cgroup, Hierarchy};
use skiff_e2e::{GuestSpec, TestEnv, Vm, Vmm};

use super::daemon::{rss_kib, Daemon};
use super::overcommit::{console, probe_all, stop_quickly, PROBE_TIMEOUT};
use super::qmp::{enable_stats, BalloonScript, Qmp};

const MIB: u64 = 1 << 20;
const BUDGET_MIB: u64 = 2048;
const GUEST_MIB: u32 = 256;
/// Skiff's min per VM: what admission control reserves (with the VMM's overhead estimate,
/// 37 MiB a VM: room for 55 in the budget, more than `MAX_VMS`).
const MIN_MIB: u64 = 32;
const TOUCH_MIB: u64 = 128;
/// Where the search stops if nothing failed before; `SKIFF_DENSITY_MAX_VMS` overrides it.
const MAX_VMS: usize = 40;
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// After a VM is up, before probing: free page reporting and the manager's period.
const SETTLE: Duration = Duration::from_secs(8);
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const KSM: &str = "/sys/kernel/mm/ksm";
/// KSM's rate for QEMU: 500 pages every 20 ms, 25,000 pages/s, what Skiff's manager allows
/// itself at most (5 % of a CPU at 2 µs a page, `skiff_mem_policy::ksm::KsmTuning`).
const QEMU_KSM_PAGES_TO_SCAN: u32 = 500;
const QEMU_KSM_SLEEP_MILLISECS: u32 = 20;

fn guest_cmd() -> String {
    format!(
        "skiff-guest-tool hold {TOUCH_MIB} --seconds 1 >/dev/null; echo DN-IDLE; \
         while read -r l; do echo \"PONG-$l\"; done"
    )
}

/// A cgroup v2 group with a memory limit, the limit lifted again on drop (the emulated host
/// runs other tests after this one).
struct LimitedGroup {
    dir: PathBuf,
}

impl LimitedGroup {
    /// Limits `CGROUP_ROOT/name` (created if need be, with the memory controller enabled).
    fn new(name: &str, limit_bytes: u64) -> LimitedGroup {
        let root = Path::new(CGROUP_ROOT);
        assert!(
            root.join("cgroup.controllers").exists(),
            "the density benchmark needs cgroup v2 at {CGROUP_ROOT}"
        );
        std::fs::write(root.join("cgroup.subtree_control"), "+memory").expect("enable memory");
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("group");
        std::fs::write(dir.join("memory.max"), limit_bytes.to_string()).expect("memory.max");
        // No swap in the emulated host; if a host has some, it must not stretch the limit.
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        LimitedGroup { dir }
    }

    fn usage(&self) -> u64 {
        read_u64(&self.dir.join("memory.current"))
    }

    fn peak(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join("memory.peak"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// `oom_kill` from memory.events: VMMs the kernel killed for the limit.
    fn oom_kills(&self) -> u64 {
        let events = std::fs::read_to_string(self.dir.join("memory.events")).unwrap_or_default();
        events
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for LimitedGroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("memory.max"), "max");
        let _ = std::fs::write(self.dir.join("memory.swap.max"), "max");
    }
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn ksm_saved_mib() -> u64 {
    read_u64(&Path::new(KSM).join("pages_sharing")) * 4096 / MIB
}

/// One system's VMs, as the benchmark drives them.
trait Fleet {
    /// Starts VM number `i` and waits until its guest is idle.
    fn add(&mut self, i: usize) -> Result<(), String>;
    /// Probes every VM once: the slowest answer, or which VM failed.
    fn probe(&mut self, seq: u64) -> Result<Duration, String>;
    fn vmm_rss_mib(&self) -> u64;
}

/// Skiff: VMs of the daemon, probed through their console FIFO and log.
struct SkiffFleet {
    daemon: Daemon,
    dir: PathBuf,
    names: Vec<String>,
}

impl SkiffFleet {
    fn infos(&self) -> Vec<VmInfo> {
        self.names.iter().map(|n| self.daemon.info(n)).collect()
    }
}

fn wait_in_log(info: &VmInfo, text: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if console(info).contains(text) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

impl Fleet for SkiffFleet {
    fn add(&mut self, i: usize) -> Result<(), String> {
        let env = TestEnv::get();
        let name = format!("d{i}");
        let cmdline = GuestSpec::new(Vmm::Skiff)
            .cmd(guest_cmd())
            .no_poweroff()
            .kernel_cmdline();
        let spec = serde_json::json!({
            "name": name,
            "vcpus": 1,
            "memory": { "size": format!("{GUEST_MIB}M"), "min": format!("{MIN_MIB}M") },
            "kernel": env.kernel,
            "initrd": env.initrd,
            "cmdline": cmdline,
        });
        let file = self.dir.join(format!("{name}.json"));
        std::fs::write(&file, spec.to_string()).map_err(|e| e.to_string())?;
        let (ok, stdout, stderr) =
            self.daemon
                .vm(&["create", "-f", file.to_str().unwrap_or(""), "--start"]);
        if !ok {
            return Err(format!("{name} not started: {stdout}{stderr}"));
        }
        self.names.push(name.clone());
        let info = self.daemon.info(&name);
        if wait_in_log(&info, "DN-IDLE", BOOT_TIMEOUT) {
            Ok(())
        } else {
            Err(format!(
                "{name} never got idle: {:?}",
                self.daemon.info(&name).state
            ))
        }
    }

    fn probe(&mut self, seq: u64) -> Result<Duration, String> {
        let infos = self.infos();
        if let Some(gone) = infos.iter().find(|i| i.pid.is_none()) {
            return Err(format!(
                "{} has no VMM: {:?} {:?}",
                gone.name, gone.state, gone.reason
            ));
        }
        let answers = probe_all(&infos, seq);
        let mut slowest = Duration::ZERO;
        for (info, answer) in infos.iter().zip(answers) {
            let took = answer
                .ok_or_else(|| format!("{} did not answer within {PROBE_TIMEOUT:?}", info.name))?;
            slowest = slowest.max(took);
        }
        Ok(slowest)
    }

    fn vmm_rss_mib(&self) -> u64 {
        self.infos()
            .iter()
            .filter_map(|i| i.vmm_pid)
            .map(|p| rss_kib(p as u32) / 1024)
            .sum()
    }
}

/// QEMU: one process per VM in the limited group, probed over its serial stdio; with free
/// page reporting, and with the user's balloon script when `script` is set.
struct QemuFleet {
    /// The leaf every QEMU joins (between fork and exec), under the limited group.
    group: Cgroup,
    vms: Vec<Vm>,
    /// Where each QEMU's QMP socket goes.
    dir: PathBuf,
    /// Hands each new guest's QMP connection to the balloon script.
    script: Option<std::sync::mpsc::Sender<Qmp>>,
}

impl Fleet for QemuFleet {
    fn add(&mut self, i: usize) -> Result<(), String> {
        let env = TestEnv::get();
        let qmp = self.dir.join(format!("qmp-{i}.sock"));
        let spec = GuestSpec::new(Vmm::Qemu)
            .memory_mib(GUEST_MIB)
            .cmd(guest_cmd())
            .no_poweroff()
            .vmm_args([
                "-M",
                "microvm,pcie=on",
                "-device",
                "virtio-balloon-pci,id=balloon0,free-page-reporting=on",
                "-qmp",
                &format!("unix:{},server=on,wait=off", qmp.display()),
            ]);
        let mut cmd = spec.command(env);
        self.group
            .attach_on_spawn(&mut cmd)
            .map_err(|e| e.to_string())?;
        let mut vm = Vm::spawn_command(cmd).map_err(|e| e.to_string())?;
        let booted = vm.wait_for("DN-IDLE", BOOT_TIMEOUT);
        self.vms.push(vm);
        booted.map_err(|e| e.to_string())?;
        if let Some(script) = &self.script {
            let mut qmp = Qmp::connect(&qmp, Duration::from_secs(10))?;
            enable_stats(&mut qmp)?;
            script.send(qmp).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn probe(&mut self, seq: u64) -> Result<Duration, String> {
        for (i, vm) in self.vms.iter_mut().enumerate() {
            vm.send_line(&seq.to_string())
                .map_err(|e| format!("QEMU {i}: probe: {e}"))?;
        }
        let start = Instant::now();
        let mut slowest = Duration::ZERO;
        for (i, vm) in self.vms.iter_mut().enumerate() {
            let left = PROBE_TIMEOUT.saturating_sub(start.elapsed());
            vm.wait_for(&format!("PONG-{seq}"), left)
                .map_err(|_| format!("QEMU {i} did not answer within {PROBE_TIMEOUT:?}"))?;
            slowest = start.elapsed();
        }
        Ok(slowest)
    }

    fn vmm_rss_mib(&self) -> u64 {
        self.vms.iter().map(|vm| rss_kib(vm.pid()) / 1024).sum()
    }
}

/// What one system reached.
struct Outcome {
    system: &'static str,
    count: usize,
    stopped_by: String,
    rss_mib: u64,
    group_mib: u64,
    peak_mib: Option<u64>,
    ksm_saved_mib: u64,
}

fn max_vms() -> usize {
    std::env::var("SKIFF_DENSITY_MAX_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MAX_VMS)
}

fn grow(system: &'static str, fleet: &mut dyn Fleet, group: &LimitedGroup) -> Outcome {
    let started = Instant::now();
    let max = max_vms();
    let mut count = 0;
    let mut seq = 0;
    let mut stopped_by = format!("reached {max} VMs (the cap)");
    let mut at_count = (0, 0, 0);
    for i in 1..=max {
        if let Err(e) = fleet.add(i) {
            stopped_by = format!("VM {i}: {e}");
            break;
        }
        std::thread::sleep(SETTLE);
        seq += 1;
        match fleet.probe(seq) {
            Ok(slowest) if group.oom_kills() == 0 => {
                count = i;
                at_count = (fleet.vmm_rss_mib(), group.usage() / MIB, ksm_saved_mib());
                eprintln!(
                    "{system}: {i} VMs answer (slowest {:.2} s); VMMs' RSS {} MiB, group {} MiB, \
                     KSM saves {} MiB; {:.0} s",
                    slowest.as_secs_f64(),
                    at_count.0,
                    at_count.1,
                    at_count.2,
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(_) => {
                stopped_by = format!("VM {i}: the group's OOM killer ran");
                break;
            }
            Err(e) => {
                stopped_by = format!("VM {i}: {e}");
                break;
            }
        }
    }
    eprintln!("{system}: {count} VMs; stopped by {stopped_by}");
    Outcome {
        system,
        count,
        stopped_by,
        rss_mib: at_count.0,
        group_mib: at_count.1,
        peak_mib: group.peak().map(|p| p / MIB),
        ksm_saved_mib: at_count.2,
    }
}

/// A new scratch directory, created.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = TestEnv::get().scratch(name);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn set_ksm(run: u32) {
    let _ = std::fs::write(Path::new(KSM).join("run"), run.to_string());
}

fn set_ksm_rate(pages_to_scan: u32, sleep_millisecs: u32) {
    let _ = std::fs::write(
        Path::new(KSM).join("pages_to_scan"),
        pages_to_scan.to_string(),
    );
    let _ = std::fs::write(
        Path::new(KSM).join("sleep_millisecs"),
        sleep_millisecs.to_string(),
    );
}

#[test]
#[ignore = "a benchmark of many minutes: cargo xtask e2e density -- --ignored --nocapture"]
fn bench_idle_256_mib_guests_in_2_gib() {
    let env = TestEnv::get();
    let mut outcomes = Vec::new();
    set_ksm(1);

    set_ksm_rate(QEMU_KSM_PAGES_TO_SCAN, QEMU_KSM_SLEEP_MILLISECS);
    for (system, script) in [
        ("QEMU, free page reporting + KSM", false),
        ("QEMU, + the user's balloon script", true),
    ] {
        let group = LimitedGroup::new("density-qemu", BUDGET_MIB * MIB);
        let hierarchy = Hierarchy::detect().expect("cgroup hierarchy");
        let (sender, receiver) = std::sync::mpsc::channel();
        // Never below the min Skiff's VMs get.
        let _script = script.then(|| BalloonScript::start(receiver, GUEST_MIB.into(), MIN_MIB));
        let mut fleet = QemuFleet {
            group: Cgroup::create(&hierarchy, "density-qemu", "vms").expect("QEMU's group"),
            vms: Vec::new(),
            dir: scratch_dir(if script {
                "density-qemu-script"
            } else {
                "density-qemu"
            }),
            script: script.then_some(sender),
        };
        outcomes.push(grow(system, &mut fleet, &group));
        let QemuFleet {
            group: leaf, vms, ..
        } = fleet;
        drop(vms);
        let _ = leaf.remove(Duration::from_secs(10));
        let _ = std::fs::remove_dir(&group.dir);
    }
    // The daemon tunes KSM itself.
    set_ksm_rate(100, 20);

    {
        let group = LimitedGroup::new(skiff_cgroups::VM_PARENT, BUDGET_MIB * MIB);
        let dir = env.scratch("density-skiff");
        let daemon = Daemon::start_with(
            &dir,
            None,
            &["--memory-budget", &format!("{BUDGET_MIB}M"), "--ksm"],
        );
        let mut fleet = SkiffFleet {
            daemon,
            dir,
            names: Vec::new(),
        };
        outcomes.push(grow("skiff", &mut fleet, &group));
        stop_quickly(&fleet.daemon, &fleet.names);
        // Dropping the fleet deletes the VMs before the limit is lifted.
    }
    set_ksm(0);

    println!(
        "\n### Idle {GUEST_MIB} MiB guests in a {BUDGET_MIB} MiB memory limit (each touched \
         {TOUCH_MIB} MiB once; probe: a console echo within {} s)\n",
        PROBE_TIMEOUT.as_secs()
    );
    println!("| system | responsive VMs | stopped by | VMMs' RSS (MiB) | group usage (MiB) | group peak (MiB) | KSM saved (MiB) |");
    println!("|---|---:|---|---:|---:|---:|---:|");
    for o in &outcomes {
        println!(
            "| {} | **{}** | {} | {} | {} | {} | {} |",
            o.system,
            o.count,
            o.stopped_by,
            o.rss_mib,
            o.group_mib,
            o.peak_mib.map_or("-".into(), |p| p.to_string()),
            o.ksm_saved_mib
        );
    }
    if let [qemus @ .., skiff] = &outcomes[..] {
        let best = qemus.iter().map(|o| o.count).max().unwrap_or(0);
        println!(
            "\nratio Skiff / best QEMU row = {} / {best} = {:.2}",
            skiff.count,
            skiff.count as f64 / best.max(1) as f64
        );
    }
    assert!(
        outcomes.iter().all(|o| o.count > 0),
        "a system ran no VM at all"
    );
}
