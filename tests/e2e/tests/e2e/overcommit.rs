//! Memory overcommit under the daemon (issue 6's acceptance): `skiff host --memory-budget 2G`
//! with six VMs of 512 MiB (min 128 MiB, 1 vCPU): 3 GiB of guest memory promised against a
//! 2 GiB budget. Each guest touches 300 MiB and frees it (so, at their peak, the six hold
//! more than the budget: free page reporting and the balloon must give it back), then idles
//! and answers a probe on its serial console. The test probes every VM and samples every
//! VMM's resident memory, its control group's usage and the manager's figures every
//! `SAMPLE_EVERY`; it checks that every probe is answered, that after the settling period the
//! VMs stay within the budget, that no VM is ever held below its min, that a VM whose min
//! does not fit is refused with the numbers, and that neither the host nor a guest OOM-kills.
//!
//! `overcommit::six_vms_in_a_2_gib_budget` runs for 75 s in every suite run;
//! `overcommit::six_vms_in_a_2_gib_budget_for_five_minutes` is the 5-minute experiment
//! (`#[ignore]`: `cargo xtask e2e overcommit -- --ignored --nocapture`). Both print each
//! sample as an `OVERCOMMIT-CSV` line; docs/experiments.md has a run and its plot.

use std::io::Write as _;
use std::time::{Duration, Instant};

use skiff_api::model::{HostStatus, VmInfo, VmState};
use skiff_cgroups::{Cgroup, Hierarchy};
use skiff_e2e::{GuestSpec, TestEnv, Vmm};

use super::daemon::{rss_kib, Daemon};

const MIB: u64 = 1 << 20;
const BUDGET_MIB: u64 = 2048;
const VMS: usize = 6;
const MAX_MIB: u64 = 512;
const MIN_MIB: u64 = 128;
/// What each guest touches once and frees: 6 × (300 MiB + what the kernel holds) is more
/// than the budget, so the test fails unless freed memory goes back to the host.
const TOUCH_MIB: u64 = 300;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// A guest is responsive when it answers a console probe within this time. Generous, because
/// six guests and the daemon share two emulated CPUs.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// From the moment the last guest has freed its memory until the VMs must be within the
/// budget: free page reporting starts 2 s after a free and reports a bounded share of each
/// free list per pass (docs/virtio.md), the manager runs every 2 s, and a balloon inflates at
/// about 20 MiB/s in the emulated host; 30 s covers a few reporting passes and a 200 MiB
/// balloon with room to spare.
const SETTLE: Duration = Duration::from_secs(30);
/// Boot and touch, for all six together. Generous: on a quiet 2-core machine they are idle
/// within about a minute, but under other load the emulated host runs many times slower.
const IDLE_TIMEOUT: Duration = Duration::from_secs(900);

/// Touches memory, frees it, says so, then answers each console line `N` with `PONG-N`.
fn guest_cmd() -> String {
    format!(
        "skiff-guest-tool hold {TOUCH_MIB} --seconds 2 >/dev/null; echo OC-IDLE; \
         while read -r l; do echo \"PONG-$l\"; done"
    )
}

fn spec_json(name: &str, memory: (u64, u64)) -> String {
    let env = TestEnv::get();
    let cmdline = GuestSpec::new(Vmm::Skiff)
        .cmd(guest_cmd())
        .no_poweroff()
        .kernel_cmdline();
    serde_json::json!({
        "name": name,
        "vcpus": 1,
        "memory": { "size": format!("{}M", memory.1), "min": format!("{}M", memory.0) },
        "kernel": env.kernel,
        "initrd": env.initrd,
        "cmdline": cmdline,
    })
    .to_string()
}

/// One sample of one VM.
struct Sample {
    t: f64,
    vm: String,
    rss_mib: f64,
    cgroup_mib: f64,
    balloon_mib: f64,
    target_mib: f64,
    state: String,
}

fn cgroup_usage(hierarchy: Option<&Hierarchy>, name: &str) -> Option<u64> {
    let group = Cgroup::open(hierarchy?, skiff_cgroups::VM_PARENT, name).ok()?;
    group.memory_usage().ok()
}

pub(crate) fn console(info: &VmInfo) -> String {
    std::fs::read_to_string(&info.console.log).unwrap_or_default()
}

/// Sends `seq` to every guest's console and waits until each has answered. The time each
/// took, or `None` for a guest that did not answer within `PROBE_TIMEOUT`.
pub(crate) fn probe_all(infos: &[VmInfo], seq: u64) -> Vec<Option<Duration>> {
    let sent = Instant::now();
    for info in infos {
        // The VMM holds the FIFO open for reading: opening it to write never blocks.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(&info.console.input)
            .and_then(|mut fifo| fifo.write_all(format!("{seq}\n").as_bytes()));
        if let Err(e) = written {
            eprintln!("{}: cannot write the probe: {e}", info.name);
        }
    }
    let want = format!("PONG-{seq}");
    let mut answered: Vec<Option<Duration>> = vec![None; infos.len()];
    while sent.elapsed() < PROBE_TIMEOUT && answered.iter().any(Option::is_none) {
        for (info, slot) in infos.iter().zip(answered.iter_mut()) {
            if slot.is_none() && console(info).contains(&want) {
                *slot = Some(sent.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    answered
}

fn oom_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains("Out of memory") || l.contains("invoked oom-killer"))
        .map(String::from)
        .collect()
}

/// The admission checks: with six VMs of min 128 MiB in a 2 GiB budget, 2048 − 6 × (128 +
/// 6) = 1244 MiB is unreserved (overhead estimate 4 MiB + max/256); a VM of min 1280 MiB
/// needs 1290 MiB and is refused, through the API and the CLI, with those numbers.
fn check_admission_refusal(daemon: &Daemon) {
    let client = daemon.client();
    let r = client
        .blocking(
            "POST",
            "/vms",
            Some(spec_json("greedy", (1280, 1536)).into_bytes()),
        )
        .expect("API answers");
    assert_eq!(r.status, 201, "{}", r.text());
    let r = client
        .blocking("POST", "/vms/greedy/start", None)
        .expect("API answers");
    let message = r.error_message();
    eprintln!("admission, API: HTTP {} {message}", r.status);
    assert_eq!(r.status, 409, "{message}");
    let numbers = "the VM needs 1290 MiB reserved (min 1280 MiB + overhead 10 MiB), \
                   but only 1244 MiB of the 2048 MiB budget is unreserved";
    assert!(message.contains(numbers), "{message}");
    let (ok, stdout, stderr) = daemon.vm(&["start", "greedy"]);
    eprintln!("admission, CLI: {}", stderr.trim_end());
    assert!(!ok && stdout.is_empty(), "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(numbers) && stderr.contains("409"),
        "{stderr}"
    );
    let greedy = daemon.info("greedy");
    assert_eq!((greedy.state, greedy.pid), (VmState::Stopped, None));
    daemon.vm_ok(&["rm", "greedy"]);
}

fn run(duration: Duration) {
    let env = TestEnv::get();
    let dir = env.scratch("overcommit");
    let budget = format!("{BUDGET_MIB}M");
    let daemon = Daemon::start_with(&dir, None, &["--memory-budget", &budget]);
    let names: Vec<String> = (1..=VMS).map(|i| format!("oc{i}")).collect();
    let started = Instant::now();
    for name in &names {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, spec_json(name, (MIN_MIB, MAX_MIB))).expect("spec file");
        let out = daemon.vm_ok(&["create", "-f", file.to_str().expect("utf-8"), "--start"]);
        assert_eq!(out.trim(), format!("{name} running"), "{}", daemon.log());
    }
    check_admission_refusal(&daemon);

    let hierarchy = Hierarchy::detect().ok();
    let mut samples: Vec<Sample> = Vec::new();
    let mut idle_at: Vec<Option<f64>> = vec![None; VMS];
    let mut all_idle: Option<Instant> = None;
    let mut seq = 0;
    let mut probes = 0;
    let mut worst_probe = Duration::ZERO;
    let mut probe_log: Vec<f32> = Vec::new();
    let mut over_budget_after_settling = Vec::new();
    let mut settled_at: Option<f64> = None;
    loop {
        let tick = Instant::now();
        let t = started.elapsed().as_secs_f64();
        let infos: Vec<VmInfo> = names.iter().map(|n| daemon.info(n)).collect();
        let host: HostStatus = daemon.get("/host");
        let state = host
            .memory
            .as_ref()
            .map_or("-".into(), |m| format!("{:?}", m.state).to_lowercase());
        let (mut rss_sum, mut cgroup_sum) = (0, 0);
        for (i, info) in infos.iter().enumerate() {
            assert_eq!(info.state, VmState::Running, "{info:?}\n{}", daemon.log());
            let rss = info.vmm_pid.map_or(0, |pid| rss_kib(pid as u32) * 1024);
            let cgroup = cgroup_usage(hierarchy.as_ref(), &info.name).unwrap_or(0);
            rss_sum += rss;
            cgroup_sum += cgroup;
            let balloon = info
                .stats
                .as_ref()
                .and_then(|s| s.balloon.as_ref())
                .map_or(0, |b| b.actual_bytes);
            // Never below the min: not the manager's target, not what the balloon leaves.
            assert!(
                MAX_MIB * MIB - balloon.min(MAX_MIB * MIB) >= MIN_MIB * MIB,
                "{}: balloon {balloon} leaves less than the min",
                info.name
            );
            let target = info.memory.as_ref().map_or(0, |m| m.target_bytes);
            if let Some(m) = &info.memory {
                assert!(m.target_bytes >= MIN_MIB * MIB, "{}: {m:?}", info.name);
            }
            if idle_at[i].is_none() && console(info).contains("OC-IDLE") {
                idle_at[i] = Some(t);
            }
            let sample = Sample {
                t,
                vm: info.name.clone(),
                rss_mib: rss as f64 / MIB as f64,
                cgroup_mib: cgroup as f64 / MIB as f64,
                balloon_mib: balloon as f64 / MIB as f64,
                target_mib: target as f64 / MIB as f64,
                state: state.clone(),
            };
            eprintln!(
                "OVERCOMMIT-CSV {:.1},{},{:.1},{:.1},{:.1},{:.1},{}",
                sample.t,
                sample.vm,
                sample.rss_mib,
                sample.cgroup_mib,
                sample.balloon_mib,
                sample.target_mib,
                sample.state
            );
            samples.push(sample);
        }
        eprintln!(
            "t={t:.0}s: VMMs' RSS {} MiB, groups {} MiB of {BUDGET_MIB} MiB, state {state}",
            rss_sum / MIB,
            cgroup_sum / MIB
        );
        if all_idle.is_none() && idle_at.iter().all(Option::is_some) {
            all_idle = Some(Instant::now());
            eprintln!("all {VMS} guests booted, touched and freed {TOUCH_MIB} MiB at t={t:.0}s");
        }
        let Some(idle_since) = all_idle else {
            if started.elapsed() > IDLE_TIMEOUT {
                let consoles: Vec<String> = infos
                    .iter()
                    .map(|i| format!("--- {}:\n{}", i.name, console(i)))
                    .collect();
                panic!(
                    "not every guest got idle: {idle_at:?}\n{}\ndaemon:\n{}",
                    consoles.join("\n"),
                    daemon.log()
                );
            }
            std::thread::sleep(SAMPLE_EVERY.saturating_sub(tick.elapsed()));
            continue;
        };
        let used = rss_sum.max(cgroup_sum);
        if settled_at.is_none() && used <= BUDGET_MIB * MIB {
            settled_at = Some(idle_since.elapsed().as_secs_f64());
        }
        if idle_since.elapsed() >= SETTLE && used > BUDGET_MIB * MIB {
            over_budget_after_settling.push((t, rss_sum / MIB, cgroup_sum / MIB));
        }
        seq += 1;
        let answers = probe_all(&infos, seq);
        let mut slowest = Duration::ZERO;
        for (info, answer) in infos.iter().zip(&answers) {
            let Some(took) = *answer else {
                // Late or never: say which, to tell a stalled host from a hung guest.
                let late = (0..600)
                    .find(|_| {
                        std::thread::sleep(Duration::from_millis(100));
                        console(info).contains(&format!("PONG-{seq}"))
                    })
                    .map(|tenths| PROBE_TIMEOUT + Duration::from_millis(tenths * 100));
                panic!(
                    "{} did not answer probe {seq} within {PROBE_TIMEOUT:?} (answered after \
                     {late:?}; slowest answers so far {probe_log:?}); console:\n{}",
                    info.name,
                    console(info)
                )
            };
            slowest = slowest.max(took);
            probes += 1;
        }
        worst_probe = worst_probe.max(slowest);
        probe_log.push(slowest.as_secs_f32());
        eprintln!("probe {seq}: slowest answer {:.2} s", slowest.as_secs_f64());
        if idle_since.elapsed() >= duration {
            break;
        }
        std::thread::sleep(SAMPLE_EVERY.saturating_sub(tick.elapsed()));
    }

    let csv = dir.join("overcommit.csv");
    let mut text = String::from("t_s,vm,rss_mib,cgroup_mib,balloon_mib,target_mib,state\n");
    for s in &samples {
        text.push_str(&format!(
            "{:.1},{},{:.1},{:.1},{:.1},{:.1},{}\n",
            s.t, s.vm, s.rss_mib, s.cgroup_mib, s.balloon_mib, s.target_mib, s.state
        ));
    }
    std::fs::write(&csv, text).expect("csv");
    eprintln!(
        "{probes} probes answered (slowest {worst_probe:?}); within the budget {:?} s after the \
         last guest freed its memory; samples in {}",
        settled_at,
        csv.display()
    );
    assert!(
        over_budget_after_settling.is_empty(),
        "over the budget after settling (t, RSS MiB, groups MiB): {over_budget_after_settling:?}"
    );
    check_no_oom(&names.iter().map(|n| daemon.info(n)).collect::<Vec<_>>());
    stop_quickly(&daemon, &names);
}

/// Stops the VMs without waiting for guests that have no power-button handler (the daemon's
/// stop timeout would otherwise be spent on each of them when it is dropped).
pub(crate) fn stop_quickly(daemon: &Daemon, names: &[String]) {
    for name in names {
        let _ = daemon
            .client()
            .blocking("POST", &format!("/vms/{name}/stop?timeout_secs=1"), None);
    }
}

/// Neither the host's kernel nor a guest's has run the OOM killer.
fn check_no_oom(infos: &[VmInfo]) {
    for info in infos {
        let found = oom_lines(&console(info));
        assert!(found.is_empty(), "{}: guest OOM: {found:?}", info.name);
    }
    match std::process::Command::new("dmesg").output() {
        Ok(out) if out.status.success() => {
            let found = oom_lines(&String::from_utf8_lossy(&out.stdout));
            assert!(found.is_empty(), "host OOM: {found:?}");
        }
        _ => eprintln!("dmesg not readable here: the host's OOM killer is not checked"),
    }
}

#[test]
fn six_vms_in_a_2_gib_budget() {
    run(Duration::from_secs(75));
}

#[test]
#[ignore = "the 5-minute experiment: cargo xtask e2e overcommit -- --ignored --nocapture"]
fn six_vms_in_a_2_gib_budget_for_five_minutes() {
    run(Duration::from_secs(300));
}
