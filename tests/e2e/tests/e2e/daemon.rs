//! The host daemon (issue 5): `skiff host` runs each VM as its own `skiff run` process.
//! Four VMs through the CLI (create, list, stop, start, pause, resume, delete); SIGKILLed
//! VMMs under each restart policy; a daemon restart that adopts the running VMMs without
//! rebooting their guests; bad input; TCP without the token; 20 concurrent API clients.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_api::model::{Event, EventKind, VmInfo, VmState};
use skiff_e2e::{GuestSpec, TestEnv, Vmm, INIT_READY};
use skiff_host::{Client, Endpoint};

/// A guest that shuts down when its ACPI power button is pressed (busybox acpid runs
/// /etc/acpi/PWRF/00000080) and prints its uptime every second, forever: its console log
/// shows whether it kept running (and never rebooted) across a daemon restart.
const UPTIME_LOOP: &str = "mkdir -p /etc/acpi/PWRF; \
     printf '#!/bin/sh\\npoweroff -f\\n' >/etc/acpi/PWRF/00000080; \
     chmod +x /etc/acpi/PWRF/00000080; acpid -l /tmp/acpid.log; \
     while true; do echo UPTIME $(cut -d' ' -f1 /proc/uptime); sleep 1; done";
const TOKEN: &str = "e2e-token-0123456789abcdef";

/// `skiff host` in a scratch directory, stopped with every VM it knows when dropped (other
/// feature tests use it too).
pub(crate) struct Daemon {
    dir: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
    tcp: Option<String>,
}

impl Daemon {
    fn start(dir: &Path, tcp: Option<&str>) -> Daemon {
        Daemon::start_with(dir, tcp, &[])
    }

    /// With `extra` arguments for `skiff host`.
    pub(crate) fn start_with(dir: &Path, tcp: Option<&str>, extra: &[&str]) -> Daemon {
        std::fs::create_dir_all(dir).expect("scratch dir");
        let socket = dir.join("api.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .expect("daemon log");
        let mut command = Command::new(&TestEnv::get().skiff_bin);
        command
            .arg("host")
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(&socket)
            // Generous: four guests share two emulated CPUs while one shuts down.
            .args(["--stop-timeout", "30"])
            .args(
                TestEnv::get()
                    .image_dirs()
                    .into_iter()
                    .flat_map(|d| [PathBuf::from("--image-dir"), d]),
            )
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log));
        if let Some(addr) = tcp {
            let token_file = dir.join("token");
            std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
            // The daemon refuses a token file others can read.
            std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
                .expect("chmod token file");
            command
                .arg("--listen")
                .arg(addr)
                .arg("--token-file")
                .arg(token_file);
        }
        // SAFETY: prctl is async-signal-safe; the daemon must not outlive a dead test.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("skiff host starts");
        let daemon = Daemon {
            dir: dir.to_path_buf(),
            socket,
            child: Some(child),
            tcp: tcp.map(String::from),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while daemon.client().blocking("GET", "/host", None).is_err() {
            assert!(
                Instant::now() < deadline,
                "daemon never answered:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(Endpoint::Unix(self.socket.clone()), None)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `skiff vm ARGS...` against this daemon: (success, stdout, stderr).
    pub(crate) fn vm(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(&TestEnv::get().skiff_bin)
            .arg("vm")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("skiff vm runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub(crate) fn vm_ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.vm(args);
        assert!(
            ok,
            "skiff vm {args:?}: {stdout}{stderr}\ndaemon:\n{}",
            self.log()
        );
        stdout
    }

    pub(crate) fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let r = self
            .client()
            .blocking("GET", path, None)
            .expect("API answers");
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        serde_json::from_slice(&r.body).expect("JSON")
    }

    pub(crate) fn info(&self, name: &str) -> VmInfo {
        self.get(&format!("/vms/{name}"))
    }

    fn wait_state(&self, name: &str, state: VmState, within: Duration) -> VmInfo {
        let deadline = Instant::now() + within;
        loop {
            let info = self.info(name);
            if info.state == state {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not {state:?} within {within:?}: {info:?}\ndaemon:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ends the daemon as a crash or an upgrade would; its VMMs keep running.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Ok(r) = self.client().blocking("GET", "/vms", None) {
                let vms: Vec<VmInfo> = serde_json::from_slice(&r.body).unwrap_or_default();
                for vm in vms {
                    let _ = self
                        .client()
                        .blocking("DELETE", &format!("/vms/{}", vm.name), None);
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A spec for a small guest that runs `cmd` and stays up.
fn spec_json(name: &str, cmd: &str, restart: &str) -> String {
    let env = TestEnv::get();
    let cmdline = GuestSpec::new(Vmm::Skiff)
        .cmd(cmd)
        .no_poweroff()
        .kernel_cmdline();
    serde_json::json!({
        "name": name,
        "vcpus": 1,
        "memory": "96M",
        "kernel": env.kernel,
        "initrd": env.initrd,
        "cmdline": cmdline,
        "restart": restart,
        "balloon": { "stats_interval_secs": 0 },
    })
    .to_string()
}

/// The last `UPTIME n` the guest's current boot printed, and how often it booted (init
/// markers: the console log keeps every run of the VM).
fn guest_uptime(info: &VmInfo) -> (Option<f64>, usize) {
    let console = std::fs::read_to_string(&info.console.log).unwrap_or_default();
    let current_boot = console.rsplit(INIT_READY).next().unwrap_or_default();
    let uptime = current_boot
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("UPTIME ")?.trim().parse().ok());
    (uptime, console.matches(INIT_READY).count())
}

/// Waits for the guest's `boots`-th boot to print its uptime.
fn wait_uptime(daemon: &Daemon, name: &str, boots: usize, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        if let (Some(uptime), n) = guest_uptime(&daemon.info(name)) {
            if n == boots {
                return uptime;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name}'s guest never printed its uptime"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn events(daemon: &Daemon, name: &str) -> Vec<Event> {
    daemon.get(&format!("/vms/{name}/events"))
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The daemon jails every VMM by default: the VMM (the child of the process the daemon
/// watches) runs as the VM's own unprivileged uid with its jail directory as its root.
/// Returns (uid, VMM pid).
fn assert_jailed(daemon: &Daemon, dir: &Path, name: &str) -> (u32, i32) {
    use std::os::unix::fs::MetadataExt;
    let info = daemon.info(name);
    let jail = info
        .jail
        .as_ref()
        .unwrap_or_else(|| panic!("{name} not jailed: {info:?}"));
    let (pid, vmm) = (info.pid.expect("pid"), info.vmm_pid.expect("VMM pid"));
    assert_ne!(pid, vmm, "{name}: the VMM runs under its supervisor");
    let proc = PathBuf::from(format!("/proc/{vmm}"));
    let status = std::fs::read_to_string(proc.join("status")).expect("VMM status");
    let ids = |field: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .expect("field")
            .split_whitespace()
            .map(|id| id.parse().expect("id"))
            .collect()
    };
    assert!(jail.uid != 0 && jail.gid != 0, "{jail:?}");
    assert_eq!(ids("Uid:"), [jail.uid; 4], "{name}: {status}");
    assert_eq!(ids("Gid:"), [jail.gid; 4], "{name}: {status}");
    let root = std::fs::metadata(proc.join("root")).expect("VMM root");
    let jail_dir = dir.join("state/vms").join(name).join("jail");
    assert_eq!(
        Path::new(&jail.root),
        std::path::absolute(&jail_dir).expect("abs")
    );
    let expected = std::fs::metadata(&jail_dir).expect("jail dir");
    assert_eq!(
        (root.dev(), root.ino()),
        (expected.dev(), expected.ino()),
        "{name}: /proc/{vmm}/root is not its jail"
    );
    (jail.uid, vmm)
}

#[test]
fn lifecycle_restart_policy_and_daemon_restart() {
    let env = TestEnv::get();
    let dir = env.scratch("daemon-life");
    let mut daemon = Daemon::start(&dir, None);

    // Four VMs from spec files through the CLI.
    let policies = [
        ("a", "never"),
        ("b", "on-failure"),
        ("c", "never"),
        ("d", "never"),
    ];
    for (name, restart) in policies {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, spec_json(name, UPTIME_LOOP, restart)).expect("spec file");
        let out = daemon.vm_ok(&["create", "-f", file.to_str().expect("utf-8"), "--start"]);
        assert_eq!(out.trim(), format!("{name} running"), "{}", daemon.log());
    }
    let table = daemon.vm_ok(&["ls"]);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert!(
        rows.iter()
            .all(|r| r.split_whitespace().nth(1) == Some("running")),
        "{table}"
    );
    let listed: Vec<VmInfo> = serde_json::from_str(&daemon.vm_ok(&["ls", "--json"])).expect("json");
    assert_eq!(
        listed.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c", "d"]
    );
    for (name, _) in policies {
        wait_uptime(&daemon, name, 1, Duration::from_secs(120));
    }
    let uids: Vec<u32> = policies
        .iter()
        .map(|(name, _)| assert_jailed(&daemon, &dir, name).0)
        .collect();
    assert_eq!(
        uids.iter().collect::<BTreeSet<_>>().len(),
        uids.len(),
        "each VM has its own uid: {uids:?}"
    );

    // Stop, start, pause, resume one; delete another. The stop is the guest's own shutdown
    // (acpid's poweroff): no power cut in the VMM's log.
    let stopping = Instant::now();
    assert_eq!(daemon.vm_ok(&["stop", "a"]).trim(), "a stopped");
    eprintln!("graceful stop of a: {:?}", stopping.elapsed());
    let vmm_log = std::fs::read_to_string(dir.join("state/vms/a/vmm.log")).unwrap_or_default();
    assert!(
        !vmm_log.contains("control socket"),
        "a's power was cut:\n{vmm_log}"
    );
    let a = daemon.info("a");
    assert_eq!((a.state, a.pid), (VmState::Stopped, None));
    assert_eq!(daemon.vm_ok(&["start", "a"]).trim(), "a running");
    assert_eq!(daemon.vm_ok(&["pause", "a"]).trim(), "a paused");
    let a = daemon.info("a");
    let stats = a.stats.expect("stats of a running VMM");
    assert_eq!(stats.state, skiff_api::control::RunState::Paused);
    assert_eq!(daemon.vm_ok(&["resume", "a"]).trim(), "a running");
    let (ok, _, stderr) = daemon.vm(&["resume", "a"]);
    assert!(
        !ok && stderr.lines().count() == 1 && stderr.contains("not paused"),
        "{stderr}"
    );
    assert_eq!(daemon.vm_ok(&["rm", "d"]).trim(), "d deleted");
    let (ok, _, stderr) = daemon.vm(&["inspect", "d"]);
    assert!(!ok && stderr.contains("no VM named `d`"), "{stderr}");

    // SIGKILL under each policy.
    let b = daemon.info("b");
    let b_pid = b.pid.expect("b's pid");
    let killed_at = Instant::now();
    // SAFETY: signalling a VMM this test started through the daemon.
    unsafe { libc::kill(b_pid, libc::SIGKILL) };
    loop {
        let b = daemon.info("b");
        if b.state == VmState::Running && b.pid.is_some_and(|p| p != b_pid) {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(5),
            "b not running again within 5 s: {b:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let restart_event = events(&daemon, "b")
        .into_iter()
        .find(|e| e.kind == EventKind::Restarting)
        .expect("a restarting event");
    assert!(
        restart_event.message.contains("killed by signal 9"),
        "{restart_event:?}"
    );
    assert_eq!(daemon.info("b").restarts, 1);
    assert_eq!(
        assert_jailed(&daemon, &dir, "b").0,
        uids[1],
        "a restarted VMM keeps its VM's uid"
    );

    let c_pid = daemon.info("c").pid.expect("c's pid");
    // SAFETY: as above.
    unsafe { libc::kill(c_pid, libc::SIGKILL) };
    let c = daemon.wait_state("c", VmState::Failed, Duration::from_secs(5));
    assert!(
        c.reason
            .as_deref()
            .is_some_and(|r| r.contains("killed by signal 9")),
        "{c:?}"
    );

    // Restart the daemon while three VMs run (c started again).
    assert_eq!(daemon.vm_ok(&["start", "c"]).trim(), "c running");
    let running = ["a", "b", "c"];
    for name in running {
        // Each booted a second time: a stop and start, a restart by policy, a start after
        // failing.
        wait_uptime(&daemon, name, 2, Duration::from_secs(120));
    }
    let before: Vec<(i32, f64)> = running
        .iter()
        .map(|name| {
            let info = daemon.info(name);
            (
                info.pid.expect("pid"),
                guest_uptime(&info).0.expect("uptime"),
            )
        })
        .collect();
    let jailed_before: Vec<(u32, i32)> = running
        .iter()
        .map(|name| assert_jailed(&daemon, &dir, name))
        .collect();
    let old_daemon = daemon.pid();
    daemon.kill();
    for (pid, _) in &before {
        assert!(pid_alive(*pid), "VMM {pid} died with the daemon");
    }
    std::thread::sleep(Duration::from_secs(2));
    let daemon = Daemon::start(&dir, None);
    assert_ne!(daemon.pid(), old_daemon);
    for (name, (pid, _)) in running.iter().zip(&before) {
        let info = daemon.info(name);
        assert_eq!(
            (info.state, info.pid),
            (VmState::Running, Some(*pid)),
            "{name}: {info:?}"
        );
        let adopted = events(&daemon, name)
            .iter()
            .any(|e| e.kind == EventKind::Adopted);
        assert!(adopted, "{name}: no adopted event");
    }
    let jailed_after: Vec<(u32, i32)> = running
        .iter()
        .map(|name| assert_jailed(&daemon, &dir, name))
        .collect();
    assert_eq!(
        jailed_after, jailed_before,
        "adopted VMMs are found again, with their uids"
    );
    std::thread::sleep(Duration::from_secs(3));
    for (name, (_, uptime)) in running.iter().zip(&before) {
        let (now, boots) = guest_uptime(&daemon.info(name));
        let now = now.expect("uptime");
        assert!(
            now > *uptime + 2.0,
            "{name}: guest uptime {uptime} then {now}"
        );
        // Each of them booted twice before (a stop/start, a restart by policy, a start
        // after failing); a third boot would mean the daemon restart rebooted it.
        assert_eq!(boots, 2, "{name}: the guest booted again");
    }
    // The adopted VMMs are supervised too: a stop ends them.
    assert_eq!(daemon.vm_ok(&["stop", "a"]).trim(), "a stopped");
    assert!(!pid_alive(before[0].0));
}

#[test]
fn bad_input_is_refused_and_tcp_needs_the_token() {
    let env = TestEnv::get();
    let dir = env.scratch("daemon-input");
    let daemon = Daemon::start(&dir, Some("127.0.0.1:7450"));
    let client = daemon.client();
    let post = |body: &str| {
        let r = client
            .blocking("POST", "/vms", Some(body.as_bytes().to_vec()))
            .expect("API answers");
        (r.status, r.error_message())
    };
    let good = spec_json("one", "true", "never");
    assert_eq!(post(&good).0, 201);
    let kernel = env.kernel.display().to_string();
    let cases = [
        ("{\"name\": \"x\", ".to_string(), 400, "JSON"),
        (
            good.replace("\"one\"", "\"x\"")
                .replace("\"vcpus\"", "\"colour\":1,\"vcpus\""),
            400,
            "colour",
        ),
        (
            good.replace("\"one\"", "\"x\"").replace("\"96M\"", "-96"),
            400,
            "memory",
        ),
        (good.clone(), 409, "name"),
        (
            good.replace("\"one\"", "\"x\"")
                .replace(&kernel, "/no/such/kernel"),
            400,
            "kernel",
        ),
        (good.replace("\"one\"", "\"../etc\""), 400, "name"),
        // A file outside the daemon's image directories (here the skiff binary).
        (
            good.replace("\"one\"", "\"x\"")
                .replace(&kernel, &env.skiff_bin.display().to_string()),
            400,
            "outside the daemon's image directories",
        ),
    ];
    for (body, status, field) in cases {
        let (got, message) = post(&body);
        assert_eq!(got, status, "{body}: {message}");
        assert!(
            message.contains(field),
            "{body}: `{message}` does not name {field}"
        );
    }
    let vms: Vec<VmInfo> = daemon.get("/vms");
    assert_eq!(vms.len(), 1, "still serving, nothing half-created: {vms:?}");

    let tcp = daemon.tcp.clone().expect("tcp address");
    let without = Client::new(Endpoint::Tcp(tcp.clone()), None);
    assert_eq!(
        without
            .blocking("GET", "/vms", None)
            .expect("answers")
            .status,
        401
    );
    let wrong = Client::new(Endpoint::Tcp(tcp.clone()), Some("not-the-token".into()));
    assert_eq!(
        wrong.blocking("GET", "/vms", None).expect("answers").status,
        401
    );
    let right = Client::new(Endpoint::Tcp(tcp), Some(TOKEN.into()));
    assert_eq!(
        right.blocking("GET", "/vms", None).expect("answers").status,
        200
    );
    // The unix socket is root's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&daemon.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// VmRSS of a process in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn twenty_concurrent_clients_for_a_minute() {
    const CLIENTS: usize = 20;
    const RUN_FOR: Duration = Duration::from_secs(60);
    let env = TestEnv::get();
    let dir = env.scratch("daemon-load");
    let daemon = Daemon::start(&dir, None);
    let server_errors = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut rss_samples = Vec::new();
    let kept: Vec<BTreeSet<String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|id| {
                let client = daemon.client();
                let server_errors = server_errors.clone();
                let requests = requests.clone();
                scope.spawn(move || {
                    let mut mine = BTreeSet::new();
                    let call = |method: &str, path: &str, body: Option<String>| {
                        let r = client
                            .blocking(method, path, body.map(String::into_bytes))
                            .expect("the daemon answers");
                        requests.fetch_add(1, Ordering::Relaxed);
                        if r.status >= 500 {
                            server_errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("{method} {path}: {} {}", r.status, r.text());
                        }
                        r
                    };
                    let mut i = 0;
                    while started.elapsed() < RUN_FOR {
                        let name = format!("c{id}-{i}");
                        // Every fourth VM really starts (a VMM process that is stopped at
                        // once); the others stay defined.
                        let start = i % 4 == 0;
                        let path = if start { "/vms?start=true" } else { "/vms" };
                        let r = call("POST", path, Some(spec_json(&name, "true", "never")));
                        assert_eq!(r.status, 201, "{name}: {}", r.text());
                        mine.insert(name.clone());
                        assert_eq!(call("GET", "/vms", None).status, 200);
                        assert_eq!(call("GET", &format!("/vms/{name}"), None).status, 200);
                        let r = call("POST", &format!("/vms/{name}/stop?force=true"), None);
                        assert_eq!(r.status, 200, "{name}: {}", r.text());
                        // Keep the table from growing without bound: delete every other one.
                        if i % 2 == 1 {
                            assert_eq!(call("DELETE", &format!("/vms/{name}"), None).status, 204);
                            mine.remove(&name);
                        }
                        i += 1;
                    }
                    mine
                })
            })
            .collect();
        while started.elapsed() < RUN_FOR {
            std::thread::sleep(Duration::from_secs(5));
            rss_samples.push(rss_kib(daemon.pid()));
        }
        workers
            .into_iter()
            .map(|w| w.join().expect("client thread"))
            .collect()
    });
    let expected: BTreeSet<String> = kept.into_iter().flatten().collect();
    let listed: Vec<VmInfo> = daemon.get("/vms");
    let names: Vec<String> = listed.iter().map(|v| v.name.clone()).collect();
    let unique: BTreeSet<String> = names.iter().cloned().collect();
    assert_eq!(names.len(), unique.len(), "a VM is listed twice");
    assert_eq!(unique, expected, "VMs lost or left over");
    assert!(
        listed.iter().all(|v| v.state == VmState::Stopped),
        "{listed:?}"
    );
    assert_eq!(server_errors.load(Ordering::Relaxed), 0, "5xx answers");
    // Memory: after the first samples (allocator warm-up), the daemon must not keep growing.
    let total = requests.load(Ordering::Relaxed);
    eprintln!("{total} requests in {RUN_FOR:?}; daemon VmRSS samples (KiB): {rss_samples:?}");
    let early = rss_samples.get(2).copied().unwrap_or(0);
    let late = rss_samples.last().copied().unwrap_or(0);
    assert!(
        early > 0 && late < early + 16 * 1024,
        "daemon RSS grew from {early} to {late} KiB"
    );
}

/// A guest that prints without end neither fills the host's disk nor reaches its jailed
/// VMM's file-size limit: the daemon rotates the console log past `--log-max`, the VM runs
/// on, and the console API still returns the newest output.
#[test]
fn a_chatty_guests_console_log_is_rotated() {
    const LINES: usize = 1500;
    const LOG_MAX: u64 = 32 << 10;
    let env = TestEnv::get();
    let dir = env.scratch("daemon-log-rotation");
    let daemon = Daemon::start_with(&dir, None, &["--log-max", "32K"]);
    // ~100 bytes a line: about 150 KB, several times the limit. The end marker repeats:
    // output written while the daemon rotates (between its copy and truncation) is lost.
    let chatter = format!(
        "i=0; while [ $i -lt {LINES} ]; do \
         echo \"chatty line $i: {}\"; i=$((i+1)); done; \
         while true; do echo CHATTY-DONE; sleep 1; done",
        "x".repeat(80)
    );
    let file = dir.join("chatty.json");
    std::fs::write(&file, spec_json("chatty", &chatter, "never")).expect("spec file");
    daemon.vm_ok(&["create", "-f", file.to_str().expect("utf-8"), "--start"]);

    let info = daemon.info("chatty");
    let log = PathBuf::from(&info.console.log);
    let rotated = PathBuf::from(format!("{}.1", log.display()));
    let deadline = Instant::now() + Duration::from_secs(300);
    let tail = loop {
        let tail = daemon
            .client()
            .blocking("GET", "/vms/chatty/console?bytes=4096", None)
            .expect("API answers")
            .text();
        if tail.contains("CHATTY-DONE") {
            break tail;
        }
        assert!(
            Instant::now() < deadline,
            "the guest never finished printing; console tail:\n{tail}\n{:?}\n{}",
            daemon.info("chatty"),
            daemon.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        // One of the last ten lines (chatty line 1490-1499).
        tail.contains(&format!("chatty line {}", (LINES - 1) / 10)),
        "the tail holds the last lines: {tail}"
    );
    // One more check period, so the last growth is rotated too.
    std::thread::sleep(Duration::from_secs(3));
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let (current, older) = (size(&log), size(&rotated));
    assert!(
        older > LOG_MAX,
        "{} holds the rotated part: {older} bytes",
        rotated.display()
    );
    // Output grows by at most a few KB between checks at the UART's pace here.
    let bound = 2 * LOG_MAX + 64 * 1024;
    assert!(
        current <= LOG_MAX + 64 * 1024 && current + older <= bound,
        "logs kept to about twice the limit: {current} + {older} bytes, the guest printed {} KB",
        LINES / 10
    );
    assert!(
        daemon.log().contains("passed 32768 bytes"),
        "the daemon says it rotated:\n{}",
        daemon.log()
    );
    assert_eq!(daemon.info("chatty").state, VmState::Running);
}
