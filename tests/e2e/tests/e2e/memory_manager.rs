//! The host daemon's memory manager with real guests (issue 6): two 512 MiB VMs fill their
//! page caches past a 384 MiB budget; the manager inflates their balloons until both fit
//! the budget, never below their mins, and the guests keep running. And the idle tax: of an
//! idle VM full of page cache and a busy one, under τ = 0 both get about the same target,
//! under τ = 0.75 the busy one gets the larger one, and more than under τ = 0.

use std::path::Path;
use std::time::{Duration, Instant};

use skiff_api::model::{HostStatus, VmInfo, VmState};
use skiff_e2e::{GuestSpec, TestEnv, Vmm};
use skiff_host::memory::FreeState;

use crate::daemon::Daemon;

const MIB: u64 = 1 << 20;
const BUDGET_MIB: u64 = 384;

/// Creates and starts a VM from a JSON spec (the cgroups tests use it too).
pub(crate) fn run(daemon: &Daemon, spec: &serde_json::Value) {
    let body = serde_json::to_vec(spec).expect("json");
    let response = daemon
        .client()
        .blocking("POST", "/vms?start=true", Some(body))
        .expect("API");
    assert!(
        response.status < 300,
        "create {}: {}\n{}",
        spec["name"],
        response.text(),
        daemon.log()
    );
}

fn console(vm: &VmInfo) -> String {
    std::fs::read_to_string(&vm.console.log).unwrap_or_default()
}

/// Fails the test at once when a VM has failed (these VMs never restart): waiting out the
/// deadline would only hide why. The message carries the VMM's last words.
fn assert_none_failed(vms: &[VmInfo], daemon: &Daemon) {
    if let Some(vm) = vms.iter().find(|vm| vm.state == VmState::Failed) {
        panic!(
            "VM {} failed: {:?}\n{}\n{}",
            vm.name,
            vm.reason,
            console(vm),
            daemon.log()
        );
    }
}

/// A guest that fills its page cache with its whole disk, then prints a heartbeat. The shell
/// keeps /dev/vda open: Linux drops a block device's page cache at its last close, so with
/// `dd` the only opener the cache would be gone as soon as it is filled.
const FILL_THEN_IDLE: &str = "exec 3</dev/vda; dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null; \
     echo FILLED; \
     while true; do echo ALIVE $(cut -d' ' -f1 /proc/uptime); sleep 2; done";

/// A 512 MiB VM running `cmd` with `disk` as /dev/vda, sampling its working set every
/// `sample_secs`.
fn guest(name: &str, cmd: &str, disk: &Path, sample_secs: u32) -> serde_json::Value {
    let env = TestEnv::get();
    let cmdline = GuestSpec::new(Vmm::Skiff).cmd(cmd).kernel_cmdline();
    serde_json::json!({
        "name": name,
        "kernel": env.kernel,
        "initrd": env.initrd,
        "cmdline": cmdline,
        "memory": { "size": "512M", "min": "128M" },
        "disks": [{ "path": disk, "read_only": true }],
        "working_set": { "period_secs": sample_secs },
    })
}

/// A sparse disk image of `mib` MiB.
fn disk(dir: &Path, mib: u64) -> std::path::PathBuf {
    let path = dir.join("cache.img");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(mib * MIB))
        .expect("disk image");
    path
}

/// The states in the order they were entered.
fn changes(states: &[FreeState]) -> Vec<FreeState> {
    let mut out: Vec<FreeState> = Vec::new();
    for &s in states {
        if out.last() != Some(&s) {
            out.push(s);
        }
    }
    out
}

#[test]
fn page_caches_past_the_budget_are_ballooned_back_into_it() {
    let env = TestEnv::get();
    let dir = env.scratch("memory-manager");
    let budget = format!("{BUDGET_MIB}M");
    let daemon = Daemon::start_with(&dir, None, &["--memory-budget", &budget]);
    let disk = disk(&dir, 256);
    for name in ["mm-a", "mm-b"] {
        run(&daemon, &guest(name, FILL_THEN_IDLE, &disk, 30));
    }

    // Both caches full: about 2 × 300 MiB wanted in a 384 MiB budget. Reading the disks
    // takes from half a minute to a few on a loaded machine.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(360);
    let mut states = Vec::new();
    loop {
        let host: HostStatus = daemon.get("/host");
        let vms: Vec<VmInfo> = daemon.get("/vms");
        assert_none_failed(&vms, &daemon);
        if let Some(memory) = &host.memory {
            states.push(memory.state);
        }
        // Settled: both caches were filled, both balloons took memory, each VM holds no more
        // than its target (give or take what free page reporting has not returned yet), and
        // the host is back in the high state.
        let settled = vms.iter().all(|vm| {
            let filled = console(vm).contains("FILLED");
            let m = vm.memory.as_ref();
            filled
                && m.is_some_and(|m| {
                    m.ballooned_bytes >= 150 * MIB && m.allocated_bytes <= m.target_bytes + 16 * MIB
                })
        }) && host
            .memory
            .as_ref()
            .is_some_and(|m| m.state == FreeState::High);
        if settled {
            // What it came to, for docs/memory.md (`-- --nocapture` shows it).
            eprintln!("settled after {:.0} s", started.elapsed().as_secs_f64());
            for vm in &vms {
                let m = vm.memory.as_ref().expect("memory status");
                eprintln!(
                    "{}: target {} MiB, allocated {} MiB, ballooned {} MiB",
                    vm.name,
                    m.target_bytes / MIB,
                    m.allocated_bytes / MIB,
                    m.ballooned_bytes / MIB
                );
                assert!(m.target_bytes >= m.min_bytes, "{}: {m:?}", vm.name);
            }
            let memory = host.memory.as_ref().expect("memory");
            eprintln!(
                "host: {} MiB free of {} MiB; states {:?}",
                memory.free_bytes / MIB,
                memory.budget_bytes / MIB,
                changes(&states)
            );
            assert!(memory.free_bytes > 0, "{memory:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never settled within the budget; states {:?}\nhost {host:?}\nvms {vms:#?}\n{}\n{}",
            changes(&states),
            vms.iter().map(console).collect::<Vec<_>>().join("\n"),
            daemon.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        states.iter().any(|&s| s != FreeState::High),
        "the budget was never short: {states:?}"
    );
    // The guests still run: each prints another heartbeat.
    let vms: Vec<VmInfo> = daemon.get("/vms");
    let beats = |vm: &VmInfo| console(vm).matches("ALIVE").count();
    let before: Vec<usize> = vms.iter().map(beats).collect();
    std::thread::sleep(Duration::from_secs(6));
    for (vm, before) in vms.iter().zip(before) {
        assert!(beats(vm) > before, "{} stopped:\n{}", vm.name, console(vm));
    }
}

/// Where the idle-tax run settled: each VM's target and what the policy counted active.
#[derive(Debug)]
struct TaxOutcome {
    idle: skiff_api::model::VmMemoryStatus,
    busy: skiff_api::model::VmMemoryStatus,
    after_secs: f64,
}

/// One daemon with idle tax `tau`: equal shares, a 512 MiB budget below what both want; one
/// VM idles with a full page cache, the other keeps `BUSY_MIB` busy. Returns once the
/// working-set samples tell the busy VM from the idle one (its active memory 50 MiB more) and
/// `settled` holds for the targets (idle, busy) for `HOLD` polls in a row.
fn idle_tax_run(tau: &str, settled: impl Fn(u64, u64) -> bool) -> TaxOutcome {
    const HOLD: usize = 3;
    let env = TestEnv::get();
    let dir = env.scratch(&format!("memory-idle-tax-{tau}"));
    let daemon = Daemon::start_with(&dir, None, &["--memory-budget", "512M", "--idle-tax", tau]);
    let disk = disk(&dir, 256);
    // The guests start working after their VMMs have turned dirty logging on (one
    // sampling period after start): in the emulated host, a guest writing hard while
    // its 2 MiB nested mappings were write-protected under it died of a triple fault
    // (twice in session 6's suite runs, each time as the host went High → Low with
    // neither a pause nor a page-out; docs/testing.md).
    let idle = format!("sleep 10; {FILL_THEN_IDLE}");
    run(&daemon, &guest("idle", &idle, &disk, 5));
    let busy = format!("sleep 10; skiff-guest-tool membench {BUSY_MIB} --seconds 100000");
    run(&daemon, &guest("busy", &busy, &disk, 5));

    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    let mut targets: Vec<(u64, u64)> = Vec::new();
    let mut held = 0;
    loop {
        let vms: Vec<VmInfo> = daemon.get("/vms");
        assert_none_failed(&vms, &daemon);
        let find = |name: &str| vms.iter().find(|vm| vm.name == name).cloned();
        let (Some(idle), Some(busy)) = (find("idle"), find("busy")) else {
            panic!("VMs gone: {vms:?}");
        };
        let sampled = |vm: &VmInfo| {
            let periods = vm.stats.as_ref().and_then(|s| s.working_set.as_ref());
            periods.is_some_and(|w| w.periods >= 4)
        };
        if let (Some(i), Some(b)) = (&idle.memory, &busy.memory) {
            let told_apart = console(&idle).contains("FILLED")
                && sampled(&idle)
                && sampled(&busy)
                && b.active_bytes > i.active_bytes + 50 * MIB;
            if told_apart {
                targets.push((i.target_bytes / MIB, b.target_bytes / MIB));
            }
            held = if told_apart && settled(i.target_bytes, b.target_bytes) {
                held + 1
            } else {
                0
            };
            if held == HOLD {
                let outcome = TaxOutcome {
                    idle: i.clone(),
                    busy: b.clone(),
                    after_secs: started.elapsed().as_secs_f64(),
                };
                eprintln!(
                    "IDLE-TAX τ={tau} after {:.0} s: idle target {} MiB (active {} of {} MiB \
                     allocated), busy target {} MiB (active {} of {} MiB allocated)",
                    outcome.after_secs,
                    i.target_bytes / MIB,
                    i.active_bytes / MIB,
                    i.allocated_bytes / MIB,
                    b.target_bytes / MIB,
                    b.active_bytes / MIB,
                    b.allocated_bytes / MIB
                );
                assert!(i.target_bytes >= i.min_bytes && b.target_bytes >= b.min_bytes);
                return outcome;
            }
        }
        assert!(
            Instant::now() < deadline,
            "τ = {tau}: never settled; targets (idle, busy) MiB once told apart: {targets:?}\n\
             {idle:#?}\n{busy:#?}\n{}\n{}",
            console(&busy),
            daemon.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The busy VM's working set: with the kernel and 5 % headroom its demand, like the idle
/// VM's full page cache, is above half of the 512 MiB budget, so the split is the policy's.
const BUSY_MIB: u64 = 240;

/// The paper's idle-tax experiment in small, run twice: with τ = 0 (shares alone) the two
/// VMs of equal shares get about equal targets; with the default τ = 0.75 the idle VM's
/// memory goes to the busy one, which ends with more than it had under τ = 0.
#[test]
fn the_idle_tax_gives_the_busy_vm_more() {
    // τ = 0: once the samples tell the VMs apart, whatever the targets are (asserted below).
    let flat = idle_tax_run("0", |_, _| true);
    // τ = 0.75: until the busy VM's target is 50 MiB above what it got under τ = 0; the run
    // fails if that does not happen within its deadline.
    let flat_busy = flat.busy.target_bytes;
    let taxed = idle_tax_run("0.75", |_, busy| busy >= flat_busy + 50 * MIB);
    let mib = |b: u64| b / MIB;
    let (fi, fb) = (mib(flat.idle.target_bytes), mib(flat.busy.target_bytes));
    let (ti, tb) = (mib(taxed.idle.target_bytes), mib(taxed.busy.target_bytes));
    eprintln!(
        "IDLE-TAX targets (MiB): τ=0 idle {fi} busy {fb}; τ=0.75 idle {ti} busy {tb}; \
         the tax moved {} MiB to the busy VM",
        tb as i64 - fb as i64
    );
    // τ = 0: within 25 % of an even split.
    assert!(
        fi.abs_diff(fb) * 4 <= fi + fb,
        "τ = 0 should split evenly: {flat:?}"
    );
    // τ = 0.75: the busy VM gets more than the idle one, and at least 50 MiB more than
    // it had without the tax.
    assert!(
        taxed.busy.active_bytes > taxed.idle.active_bytes,
        "{taxed:?}"
    );
    assert!(
        tb > ti + 50,
        "τ = 0.75 should favour the busy VM: {taxed:?}"
    );
    assert!(
        tb >= fb + 50,
        "the tax moved too little: {flat:?}\n{taxed:?}"
    );
}

/// The VmFlags of a process's largest mapping (a VMM's guest RAM), from /proc/PID/smaps.
fn guest_ram_flags(pid: i32) -> Vec<String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let mut largest = (0u64, Vec::new());
    let mut size = 0;
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Size:") {
            size = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            if size > largest.0 {
                largest = (size, flags.split_whitespace().map(String::from).collect());
            }
        }
    }
    largest.1
}

fn ksm(name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/kernel/mm/ksm/{name}"))
        .expect("ksm sysfs")
        .trim()
        .parse()
        .expect("number")
}

/// Pages KSM merged for process `pid` (`/proc/PID/ksm_merging_pages`).
fn ksm_merging_pages(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/ksm_merging_pages"))
        .expect("ksm_merging_pages")
        .trim()
        .parse()
        .expect("number")
}

/// Page sharing only within the host's sharing domain: KSM merges any mergeable memory, so
/// a VM of another domain, or one that opted out, runs unmergeable. Checked from the kernel's
/// side too: only the domain's VMM has `mg` on its guest RAM in smaps, and after two full
/// KSM scans the others have no merged page.
#[test]
fn only_the_host_sharing_domain_is_mergeable() {
    let env = TestEnv::get();
    let dir = env.scratch("memory-sharing-domain");
    let daemon = Daemon::start_with(&dir, None, &["--sharing-domain", "tenant-a"]);
    let cmdline = GuestSpec::new(Vmm::Skiff).cmd("sleep 600").kernel_cmdline();
    let vm = |name: &str, memory: serde_json::Value| {
        serde_json::json!({
            "name": name,
            "kernel": env.kernel,
            "initrd": env.initrd,
            "cmdline": cmdline,
            "memory": memory,
        })
    };
    run(
        &daemon,
        &vm(
            "in-a",
            serde_json::json!({ "size": "128M", "sharing_domain": "tenant-a" }),
        ),
    );
    run(
        &daemon,
        &vm(
            "a-opted-out",
            serde_json::json!({ "size": "128M", "sharing_domain": "tenant-a", "page_sharing": false }),
        ),
    );
    run(&daemon, &vm("no-domain", serde_json::json!("128M")));
    let deadline = Instant::now() + Duration::from_secs(300);
    let mergeable = loop {
        let vms: Vec<VmInfo> = daemon.get("/vms");
        let seen: Vec<(String, bool)> = vms
            .iter()
            .filter_map(|vm| Some((vm.name.clone(), vm.stats.as_ref()?.sharing.mergeable)))
            .collect();
        if seen.len() == 3 {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "not every VM reported stats: {vms:#?}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let of = |name: &str| mergeable.iter().find(|(n, _)| n == name).map(|(_, m)| *m);
    assert_eq!(of("in-a"), Some(true), "{mergeable:?}");
    assert_eq!(of("a-opted-out"), Some(false), "{mergeable:?}");
    assert_eq!(of("no-domain"), Some(false), "{mergeable:?}");

    let vmm = |name: &str| daemon.info(name).vmm_pid.expect("VMM pid");
    for (name, domain) in [("in-a", true), ("a-opted-out", false), ("no-domain", false)] {
        let flags = guest_ram_flags(vmm(name));
        assert_eq!(
            flags.iter().any(|f| f == "mg"),
            domain,
            "{name}'s guest RAM flags: {flags:?}"
        );
    }
    let was_running = ksm("run");
    std::fs::write("/sys/kernel/mm/ksm/run", "1").expect("start KSM");
    let scans = ksm("full_scans");
    let deadline = Instant::now() + Duration::from_secs(300);
    while ksm("full_scans") < scans + 2 {
        assert!(Instant::now() < deadline, "KSM never finished two scans");
        std::thread::sleep(Duration::from_secs(1));
    }
    let merged: Vec<(&str, u64)> = ["in-a", "a-opted-out", "no-domain"]
        .into_iter()
        .map(|name| (name, ksm_merging_pages(vmm(name))))
        .collect();
    std::fs::write("/sys/kernel/mm/ksm/run", was_running.to_string()).expect("restore KSM");
    eprintln!("memory_manager: KSM merging pages after two full scans: {merged:?}");
    assert_eq!(merged[1].1, 0, "{merged:?}");
    assert_eq!(merged[2].1, 0, "{merged:?}");
}
