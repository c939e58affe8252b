//! The library against the kernel's own cgroup files. These need root and a writable
//! hierarchy; without them each test prints why it did not run (on stderr, past libtest's
//! capture) and passes without checking anything.
//!
//! On the development machines this runs on cgroup v1 (cpu, cpuacct and memory mounted
//! separately) and, for moving and removing processes, on the controller-less cgroup2 tree
//! beside them. The e2e executable includes this file too (`cgroups_real`), so the same
//! tests run on v2 with its controllers inside the emulated host.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_cgroups::{Cgroup, CgroupError, CpuQuota, Hierarchy};

const CHILD_ENV: &str = "SKIFF_CGROUPS_TEST_CHILD";
const MIB: u64 = 1 << 20;

/// Says on the real stderr (libtest captures only the print macros) why a test did not run.
fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The host's hierarchy, if this process may create groups in it.
fn writable_hierarchy(test: &str) -> Option<Hierarchy> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(test, "needs root to create cgroups");
        return None;
    }
    match Hierarchy::detect() {
        Ok(h) if h.has_writable_cpu_tree() => Some(h),
        Ok(h) => {
            skip(test, &format!("{h} is not writable"));
            None
        }
        Err(e) => {
            skip(test, &e.to_string());
            None
        }
    }
}

/// A cgroup2 mount of this machine, even one without controllers (hybrid layout).
fn unified_tree(test: &str) -> Option<Hierarchy> {
    writable_hierarchy(test)?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let Some(root) = mounts
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .and_then(|f| f.get(1).map(PathBuf::from))
    else {
        skip(test, "no cgroup2 file system is mounted");
        return None;
    };
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).ok()?;
    Some(Hierarchy::Unified {
        root,
        controllers: controllers.split_whitespace().map(str::to_string).collect(),
    })
}

trait Writable {
    fn has_writable_cpu_tree(&self) -> bool;
}

impl Writable for Hierarchy {
    fn has_writable_cpu_tree(&self) -> bool {
        let dir = match self {
            Hierarchy::Unified { root, .. } => root.clone(),
            Hierarchy::Legacy(m) => match &m.cpu {
                Some(cpu) => cpu.clone(),
                None => return false,
            },
        };
        let probe = dir.join(format!(
            "skiff-probe-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let ok = std::fs::create_dir(&probe).is_ok();
        let _ = std::fs::remove_dir(&probe);
        ok
    }
}

/// A test's own group, `skiff-test-PID-NAME/vm`, removed (with its parent) at the end: a
/// parent per test, so that parallel tests never remove each other's.
struct TestGroup {
    group: Cgroup,
    parent: String,
    hierarchy: Hierarchy,
}

impl TestGroup {
    fn new(hierarchy: &Hierarchy, name: &str) -> TestGroup {
        let parent = format!("skiff-test-{}-{name}", std::process::id());
        let group = Cgroup::create(hierarchy, &parent, "vm").expect("create the group");
        TestGroup {
            group,
            parent,
            hierarchy: hierarchy.clone(),
        }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = self.group.remove(Duration::from_secs(2));
        for dir in parent_dirs(&self.hierarchy, &self.parent) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn parent_dirs(hierarchy: &Hierarchy, parent: &str) -> Vec<PathBuf> {
    match hierarchy {
        Hierarchy::Unified { root, .. } => vec![root.join(parent)],
        Hierarchy::Legacy(m) => [&m.cpu, &m.cpuacct, &m.memory]
            .into_iter()
            .flatten()
            .map(|p| p.join(parent))
            .collect(),
    }
}

/// This test executable run again as a child with three threads: `sleep` or `spin`. It
/// prints `ready` once its threads run, and starts one more thread for each line on stdin.
struct ChildProcess {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl ChildProcess {
    fn start(mode: &str) -> ChildProcess {
        let exe = std::env::current_exe().expect("own executable");
        let mut child = Command::new(exe)
            .args([&child_test_name(), "--exact", "--ignored", "--nocapture"])
            .env(CHILD_ENV, mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the child");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        wait_for_line(&mut stdout, "ready");
        ChildProcess { child, stdout }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn start_another_thread(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "thread").expect("ask for a thread");
        wait_for_line(&mut self.stdout, "started");
    }

    /// Kills and reaps the child: only then does it leave its group.
    fn end(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_line(stdout: &mut BufReader<ChildStdout>, want: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        let n = stdout.read_line(&mut line).expect("child output");
        assert!(n > 0, "the child ended before printing {want}");
        // With one test thread, libtest prints the test's name first, without a newline.
        if line.trim_end().ends_with(want) {
            return;
        }
    }
}

/// The full name of [`child_process`] in whichever test executable includes this file: the
/// module path without the crate's name (`real` here, `e2e::cgroups_real` in the e2e tests).
fn child_test_name() -> String {
    match module_path!().split_once("::") {
        Some((_crate, module)) => format!("{module}::child_process"),
        None => "child_process".to_string(),
    }
}

/// The body of [`ChildProcess`]; a no-op unless started by it.
#[test]
#[ignore = "the child process of the other tests, not a test"]
fn child_process() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let work = move || match mode.as_str() {
        "spin" => loop {
            std::hint::spin_loop();
        },
        _ => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
    };
    for _ in 0..3 {
        let work = work.clone();
        std::thread::spawn(work);
    }
    println!("ready");
    for line in std::io::stdin().lines() {
        if line.is_err() {
            break;
        }
        let work = work.clone();
        std::thread::spawn(work);
        println!("started");
    }
}

/// The group path each thread of `pid` is in, for the controller `key` ("cpu" on v1, ""
/// on v2), from /proc/PID/task/TID/cgroup.
fn thread_groups(pid: u32, v2: bool) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir");
    for task in tasks {
        let task = task.expect("task entry");
        let tid: u32 = task.file_name().to_string_lossy().parse().expect("tid");
        let text = std::fs::read_to_string(task.path().join("cgroup")).expect("cgroup file");
        let line = text.lines().find(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers) = (f.next(), f.next().unwrap_or(""));
            if v2 {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == "cpu")
            }
        });
        let path = line.and_then(|l| l.splitn(3, ':').nth(2)).unwrap_or("");
        out.push((tid, path.to_string()));
    }
    out
}

fn assert_all_threads_in(pid: u32, group: &Cgroup, v2: bool) {
    let want = format!("/{}", group.path().display());
    let threads = thread_groups(pid, v2);
    assert!(threads.len() >= 4, "the child has its threads: {threads:?}");
    for (tid, path) in &threads {
        assert_eq!(path, &want, "thread {tid} of {pid}: {threads:?}");
    }
}

fn moves_every_thread(hierarchy: &Hierarchy) {
    let v2 = hierarchy.version() == "v2";
    let test = TestGroup::new(hierarchy, "threads");
    let mut child = ChildProcess::start("sleep");
    test.group.add_process(child.pid()).expect("add the child");
    assert_all_threads_in(child.pid(), &test.group, v2);
    assert_eq!(test.group.pids().expect("pids"), vec![child.pid()]);
    // A thread started after the move is born in the group.
    child.start_another_thread();
    assert_all_threads_in(child.pid(), &test.group, v2);

    // Not removable while the child lives; removable once it is reaped.
    let err = test.group.remove(Duration::from_millis(100)).unwrap_err();
    assert!(
        matches!(&err, CgroupError::NotEmpty { pids, .. } if pids == &vec![child.pid()]),
        "{err}"
    );
    child.end();
    test.group
        .remove(Duration::from_secs(2))
        .expect("remove once empty");
    for dir in test.group.distinct_dirs() {
        assert!(!dir.exists(), "{} removed", dir.display());
    }
}

#[test]
fn add_process_moves_every_thread() {
    if let Some(h) = writable_hierarchy("add_process_moves_every_thread") {
        moves_every_thread(&h);
    }
}

#[test]
fn add_process_moves_every_thread_cgroup2() {
    if let Some(h) = unified_tree("add_process_moves_every_thread_cgroup2") {
        moves_every_thread(&h);
    }
}

fn spawned_child_starts_in_the_group(hierarchy: &Hierarchy) {
    let test = TestGroup::new(hierarchy, "spawn");
    let mut cmd = Command::new("cat");
    cmd.arg("/proc/self/cgroup");
    test.group.attach_on_spawn(&mut cmd).expect("attach");
    let out = cmd.output().expect("run cat");
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!(":/{}", test.group.path().display());
    let expected_lines = test.group.distinct_dirs().len();
    let found = text.lines().filter(|l| l.ends_with(&want)).count();
    assert_eq!(found, expected_lines, "{text}");
}

#[test]
fn attach_on_spawn_runs_the_child_in_the_group() {
    if let Some(h) = writable_hierarchy("attach_on_spawn_runs_the_child_in_the_group") {
        spawned_child_starts_in_the_group(&h);
    }
}

#[test]
fn attach_on_spawn_runs_the_child_in_the_group_cgroup2() {
    if let Some(h) = unified_tree("attach_on_spawn_runs_the_child_in_the_group_cgroup2") {
        spawned_child_starts_in_the_group(&h);
    }
}

#[test]
fn settings_reach_the_kernel() {
    let Some(h) = writable_hierarchy("settings_reach_the_kernel") else {
        return;
    };
    let test = TestGroup::new(&h, "settings");
    let group = &test.group;
    // Created twice: the same group, settings kept.
    group.set_cpu_shares(2048).expect("shares");
    let again = Cgroup::create(&h, &test.parent, "vm").expect("re-create");
    assert_eq!(&again, group);
    let interface_file = |file: &str| -> String {
        let dir = group
            .distinct_dirs()
            .into_iter()
            .map(Path::to_path_buf)
            .find(|d| d.join(file).exists())
            .unwrap_or_else(|| panic!("no {file} in {:?}", group.distinct_dirs()));
        std::fs::read_to_string(dir.join(file))
            .expect("read")
            .trim()
            .to_string()
    };
    let weight_file = if h.version() == "v2" {
        "cpu.weight"
    } else {
        "cpu.shares"
    };
    let want = if h.version() == "v2" { "200" } else { "2048" };
    assert_eq!(interface_file(weight_file), want);

    let quota = CpuQuota::from_cpus(0.5).expect("quota");
    group.set_cpu_quota(Some(quota)).expect("set quota");
    assert_eq!(group.cpu_quota().expect("read quota"), Some(quota));
    group.set_cpu_quota(None).expect("lift quota");
    assert_eq!(group.cpu_quota().expect("read quota"), None);

    if group.memory_usage().is_err() {
        skip(
            "settings_reach_the_kernel (memory part)",
            "no memory controller",
        );
        return;
    }
    group.set_memory_limit(Some(64 * MIB)).expect("limit");
    assert_eq!(group.memory_limit().expect("read limit"), Some(64 * MIB));
    if h.version() == "v2" {
        group.set_memory_high(Some(48 * MIB)).expect("memory.high");
        assert_eq!(interface_file("memory.high"), (48 * MIB).to_string());
        group.set_memory_high(None).expect("memory.high max");
        assert_eq!(interface_file("memory.high"), "max");
    }
    match group.set_swap_limit(Some(16 * MIB)) {
        Ok(()) => {
            group
                .set_memory_limit(Some(32 * MIB))
                .expect("lower with swap");
            assert_eq!(group.memory_limit().expect("read"), Some(32 * MIB));
            group
                .set_memory_limit(Some(128 * MIB))
                .expect("raise with swap");
            assert_eq!(group.memory_limit().expect("read"), Some(128 * MIB));
        }
        // Kernels booted without swap accounting have no memsw files.
        Err(e) => skip("settings_reach_the_kernel (swap part)", &e.to_string()),
    }
    group.set_memory_limit(None).expect("no limit");
    assert_eq!(group.memory_limit().expect("read"), None);
    let stat = group.memory_stat().expect("memory.stat");
    assert!(stat.anon().is_some() && stat.file().is_some(), "{stat:?}");
}

#[test]
fn quota_caps_a_busy_process() {
    let Some(h) = writable_hierarchy("quota_caps_a_busy_process") else {
        return;
    };
    let test = TestGroup::new(&h, "quota");
    let group = &test.group;
    group
        .set_cpu_quota(Some(CpuQuota::from_cpus(0.2).expect("quota")))
        .expect("set quota");
    let before = group.cpu_stat().expect("stat before");
    let child = ChildProcess::start("spin");
    group.add_process(child.pid()).expect("add");
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let after = group.cpu_stat().expect("stat after");
    let wall = start.elapsed();
    child.end();
    let used = after.usage - before.usage;
    // Three spinning threads would take up to 3 s of CPU in 1 s; the quota allows 0.2 s
    // (plus the period in progress at each end).
    let allowed = wall.mul_f64(0.2) + Duration::from_millis(100);
    assert!(
        used <= allowed,
        "used {used:?} in {wall:?}, allowed {allowed:?}"
    );
    assert!(
        used > Duration::ZERO,
        "the spinning child was accounted: {after:?}"
    );
    assert!(
        after.throttled_periods > before.throttled_periods,
        "the quota throttled it: {after:?}"
    );
}
