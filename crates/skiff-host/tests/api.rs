//! The daemon in-process, without KVM: the real router on a unix socket and a TCP port, the
//! action layer, and the supervisor driving a stand-in VMM (a shell script that exits with a
//! chosen status or keeps running without a control socket).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_api::model::{Event, EventKind, VmInfo, VmState};
use skiff_host::jail::JailConfig;
use skiff_host::{api, connections, Client, Endpoint, Host, HostConfig};

struct Daemon {
    dir: tempfile::TempDir,
    unix: Client,
    kernel: PathBuf,
    vmm_bin: PathBuf,
}

/// A stand-in for `skiff run`: it ignores its arguments and runs `body`.
fn fake_vmm(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("fake-vmm");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// The daemon on a unix socket, and with a token also on TCP (its address is returned).
async fn daemon(vmm_body: &str, token: Option<&str>) -> (Daemon, Option<String>) {
    // The stand-in VMM ignores its arguments: the jail's command line is unit-tested.
    daemon_with(vmm_body, token, None).await
}

async fn daemon_with(
    vmm_body: &str,
    token: Option<&str>,
    jail: Option<JailConfig>,
) -> (Daemon, Option<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"not really a kernel").expect("write");
    let vmm_bin = fake_vmm(dir.path(), vmm_body);
    let config = HostConfig {
        state_dir: dir.path().join("state"),
        vmm_bin: vmm_bin.clone(),
        stop_timeout: Duration::from_millis(500),
        start_timeout: Duration::from_millis(500),
        memory: skiff_host::memory::MemoryConfig::default(),
        jail,
        log_max_bytes: skiff_host::log_rotation::DEFAULT_MAX_BYTES,
        image_dirs: skiff_host::image_dirs::ImageDirs::unrestricted(),
        meter: std::sync::Arc::new(skiff_host::memory::measure::ProcMeter),
    };
    let host = Host::open(config).await.expect("host");
    let socket = dir.path().join("api.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    tokio::spawn(connections::serve_unix(
        listener,
        api::router(host.clone(), None),
        connections::MAX_UNIX_CONNECTIONS,
    ));
    let tcp = match token {
        Some(token) => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(connections::serve_tcp(
                listener,
                api::router(host.clone(), Some(token.into())),
                connections::MAX_TCP_CONNECTIONS,
            ));
            Some(addr.to_string())
        }
        None => None,
    };
    let unix = Client::new(Endpoint::Unix(socket), None);
    (
        Daemon {
            dir,
            unix,
            kernel,
            vmm_bin,
        },
        tcp,
    )
}

impl Daemon {
    fn spec(&self, name: &str, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"name":"{name}","kernel":"{}","memory":"64M"{extra}}}"#,
            self.kernel.display()
        )
        .into_bytes()
    }

    async fn call(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, String) {
        let r = self
            .unix
            .request(method, path, body)
            .await
            .expect("request");
        (r.status, r.text())
    }

    async fn vm(&self, name: &str) -> VmInfo {
        let (status, body) = self.call("GET", &format!("/vms/{name}"), None).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("VmInfo")
    }

    async fn wait_for_state(&self, name: &str, state: VmState, within: Duration) -> VmInfo {
        let deadline = Instant::now() + within;
        loop {
            let vm = self.vm(name).await;
            if vm.state == state || Instant::now() > deadline {
                assert_eq!(vm.state, state, "{vm:?}");
                return vm;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn events(&self, name: &str) -> Vec<Event> {
        let (status, body) = self.call("GET", &format!("/vms/{name}/events"), None).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("events")
    }
}

#[tokio::test]
async fn openapi_lists_exactly_the_served_routes() {
    let doc: serde_json::Value = serde_json::from_str(api::OPENAPI).expect("openapi.json is JSON");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = api::served_routes()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);

    // And the server really serves the document and answers each route (not 404/405).
    let (d, _) = daemon("exit 0", None).await;
    let (status, body) = d.call("GET", "/openapi.json", None).await;
    assert_eq!((status, body.as_str()), (200, api::OPENAPI));
    for (method, path) in &served {
        let path = path.replace("{name}", "nosuchvm");
        let body = (method == "POST").then(|| b"{}".to_vec());
        let (status, text) = d.call(method, &path, body).await;
        assert!(
            ![405, 500].contains(&status),
            "{method} {path}: {status} {text}"
        );
        assert!(
            status != 404 || text.contains("nosuchvm"),
            "{method} {path}: route missing"
        );
    }
    assert_eq!(d.call("GET", "/nope", None).await.0, 404);
    assert_eq!(d.call("PUT", "/vms", None).await.0, 405);
}

#[tokio::test]
async fn bad_input_is_a_4xx_naming_the_field() {
    let (d, _) = daemon("exit 0", None).await;
    let (status, _) = d.call("POST", "/vms", Some(d.spec("dup", ""))).await;
    assert_eq!(status, 201);
    let k = d.kernel.display().to_string();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{\"name\": ".to_vec(), 400, "JSON"),
        (d.spec("x", r#","colour":"red""#), 400, "colour"),
        (
            format!(r#"{{"name":"x","kernel":"{k}","memory":-64}}"#).into_bytes(),
            400,
            "memory",
        ),
        (
            format!(r#"{{"name":"x","kernel":"{k}","memory":{{"size":"64M","shares":-1}}}}"#)
                .into_bytes(),
            400,
            "memory",
        ),
        (d.spec("dup", ""), 409, "name"),
        (
            br#"{"name":"x","kernel":"/no/such/kernel","memory":"64M"}"#.to_vec(),
            400,
            "kernel",
        ),
        (d.spec("../etc", ""), 400, "name"),
        (d.spec("x", r#","vcpus":0"#), 400, "vcpus"),
        (d.spec("x", r#","restart":"always""#), 400, "restart"),
    ];
    for (body, want, field) in cases {
        let text = String::from_utf8_lossy(&body).into_owned();
        let (status, answer) = d.call("POST", "/vms", Some(body)).await;
        assert_eq!(status, want, "{text}: {answer}");
        let error: serde_json::Value = serde_json::from_str(&answer).expect("JSON error body");
        let message = error["error"].as_str().expect("error message");
        assert!(
            message.contains(field),
            "{text}: `{message}` does not name {field}"
        );
    }
    assert_eq!(
        d.call("POST", "/vms?start=maybe", Some(d.spec("q", "")))
            .await
            .0,
        400
    );
    assert_eq!(
        d.call("POST", "/vms/dup/stop?timeout_secs=-1", None)
            .await
            .0,
        400
    );
    // Still serving, and nothing half-created.
    let (status, body) = d.call("GET", "/vms", None).await;
    assert_eq!(status, 200);
    let vms: Vec<VmInfo> = serde_json::from_str(&body).expect("list");
    assert_eq!(
        vms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["dup"]
    );
}

#[tokio::test]
async fn tcp_needs_the_bearer_token() {
    let token = "0123456789abcdef-token";
    let (_d, addr) = daemon("exit 0", Some(token)).await;
    let addr = addr.expect("tcp address");
    let right = Client::new(Endpoint::Tcp(addr.clone()), Some(token.into()));
    assert_eq!(
        right
            .request("GET", "/vms", None)
            .await
            .expect("request")
            .status,
        200
    );
    for wrong in [None, Some("0123456789abcdef-tokeN"), Some("")] {
        let client = Client::new(Endpoint::Tcp(addr.clone()), wrong.map(String::from));
        let r = client.request("GET", "/vms", None).await.expect("request");
        assert_eq!(r.status, 401, "{wrong:?}: {}", r.text());
    }
}

#[tokio::test]
async fn on_failure_restarts_with_backoff_and_records_events() {
    let (d, _) = daemon("exit 4", None).await;
    let (status, body) = d
        .call(
            "POST",
            "/vms?start=true",
            Some(d.spec("crashy", r#","restart":"on-failure""#)),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // 0.5 s, then 1 s: two restarts within ~2 s, then still going.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let vm = d.vm("crashy").await;
    assert!(vm.restarts >= 2, "{vm:?}");
    assert!(
        vm.reason
            .as_deref()
            .is_some_and(|r| r.contains("exit status 4")),
        "{vm:?}"
    );
    let restarts = d
        .events("crashy")
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::Restarting)
        .count();
    assert!(restarts >= 2, "restart events: {restarts}");
    // A stop ends the cycle for good.
    let (status, body) = d.call("POST", "/vms/crashy/stop", None).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(d.vm("crashy").await.state, VmState::Stopped);
}

/// A guest that asks for a reboot as soon as it boots (`skiff run` exits with 5 at once):
/// restarted with back-off, at most 6 times in a minute, and its events file stays bounded.
#[tokio::test]
async fn a_reboot_loop_is_restarted_at_most_six_times_a_minute() {
    let (d, _) = daemon("exit 5", None).await;
    let (status, body) = d
        .call("POST", "/vms?start=true", Some(d.spec("looper", "")))
        .await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_secs(61)).await;
    let restarts: Vec<u64> = d
        .events("looper")
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::Restarting)
        // "…; restart N in M ms": logged as the VMM ends, the restart comes M ms later.
        .map(|e| {
            let delay = e
                .message
                .rsplit(" in ")
                .next()
                .and_then(|m| m.strip_suffix(" ms")?.parse::<u64>().ok());
            e.time_ms + delay.expect("the restart's delay")
        })
        .collect();
    assert!(restarts.len() >= 3, "it is restarted: {restarts:?}");
    for (i, first) in restarts.iter().enumerate() {
        let in_a_minute = restarts[i..]
            .iter()
            .take_while(|t| **t < first + 60_000)
            .count();
        assert!(
            in_a_minute <= 6,
            "{in_a_minute} restarts in a minute: {restarts:?}"
        );
    }
    let events = d.dir.path().join("state/vms/looper/events.jsonl");
    let len = std::fs::metadata(events).expect("events file").len();
    assert!(len <= skiff_host::store::MAX_EVENTS_BYTES, "{len}");
    d.call("POST", "/vms/looper/stop", None).await;
}

#[tokio::test]
async fn never_leaves_a_failed_vm_with_the_reason() {
    let (d, _) = daemon("echo 'skiff: error: no luck' >&2; exit 1", None).await;
    d.call("POST", "/vms?start=true", Some(d.spec("once", "")))
        .await;
    let vm = d
        .wait_for_state("once", VmState::Failed, Duration::from_secs(5))
        .await;
    let reason = vm.reason.expect("reason");
    assert!(
        reason.contains("exit status 1") && reason.contains("no luck"),
        "{reason}"
    );
    assert_eq!(vm.restarts, 0);
    // Starting again is allowed and fails the same way.
    d.call("POST", "/vms/once/start", None).await;
    d.wait_for_state("once", VmState::Failed, Duration::from_secs(5))
        .await;
}

#[tokio::test]
async fn stop_kills_a_vmm_that_does_not_answer_and_delete_removes_everything() {
    let (d, _) = daemon("exec sleep 1000", None).await;
    let (status, body) = d
        .call("POST", "/vms?start=true", Some(d.spec("mute", "")))
        .await;
    assert_eq!(status, 201, "{body}");
    let vm: VmInfo = serde_json::from_str(&body).expect("info");
    assert_eq!(
        vm.state,
        VmState::Starting,
        "no control socket: never running"
    );
    let pid = vm.pid.expect("pid");
    assert_eq!(d.call("POST", "/vms/mute/pause", None).await.0, 409);
    assert_eq!(d.call("POST", "/vms/mute/start", None).await.0, 409);
    let (status, body) = d.call("POST", "/vms/mute/stop?timeout_secs=0", None).await;
    assert_eq!(status, 200, "{body}");
    let vm: VmInfo = serde_json::from_str(&body).expect("info");
    assert_eq!((vm.state, vm.pid), (VmState::Stopped, None));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the VMM is gone"
    );
    let kinds: Vec<EventKind> = d.events("mute").await.into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Created, EventKind::Stopped]);
    assert_eq!(d.call("DELETE", "/vms/mute", None).await.0, 204);
    assert_eq!(d.call("GET", "/vms/mute", None).await.0, 404);
    assert!(!d.dir.path().join("state/vms/mute").exists());
    let _ = &d.vmm_bin;
}

/// Each jailed VM gets the lowest free index (uid = base + index), keeps it across stops and
/// starts, in its record, until it is deleted; then the index is free for a new VM.
#[tokio::test]
async fn jailed_vms_keep_their_own_uid_until_deleted() {
    let base = 300_000;
    let (d, _) = daemon_with("exec sleep 1000", None, Some(JailConfig { uid_base: base })).await;
    let uid = |vm: &VmInfo| vm.jail.as_ref().map(|j| (j.uid, j.gid));
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let (status, body) = d
            .call("POST", "/vms?start=true", Some(d.spec(name, "")))
            .await;
        assert_eq!(status, 201, "{body}");
        let vm: VmInfo = serde_json::from_str(&body).expect("info");
        let id = base + i as u32;
        assert_eq!(uid(&vm), Some((id, id)), "{vm:?}");
        let root = d.dir.path().join("state/vms").join(name).join("jail");
        assert_eq!(vm.jail.expect("jail").root, root.display().to_string());
    }
    let record = |name: &str| -> serde_json::Value {
        let path = d.dir.path().join("state/vms").join(name).join("vm.json");
        serde_json::from_slice(&std::fs::read(path).expect("vm.json")).expect("record")
    };
    assert_eq!(record("b")["jail_index"], 1);
    assert_eq!(record("b")["process"]["jail"]["uid"], base + 1);

    let (status, body) = d.call("POST", "/vms/b/stop?force=true", None).await;
    assert_eq!(status, 200, "{body}");
    let stopped: VmInfo = serde_json::from_str(&body).expect("info");
    assert_eq!(uid(&stopped), None, "no VMM, no jail shown");
    assert_eq!(record("b")["jail_index"], 1, "kept while stopped");
    let (_, body) = d.call("POST", "/vms/b/start", None).await;
    let b: VmInfo = serde_json::from_str(&body).expect("info");
    assert_eq!(uid(&b), Some((base + 1, base + 1)), "the same uid again");

    // Deleting `a` frees index 0 (its VMM is gone first); a new VM takes it, never b's or c's.
    assert_eq!(d.call("DELETE", "/vms/a", None).await.0, 204);
    let (_, body) = d
        .call("POST", "/vms?start=true", Some(d.spec("d", "")))
        .await;
    let new: VmInfo = serde_json::from_str(&body).expect("info");
    assert_eq!(uid(&new), Some((base, base)), "{new:?}");
    for name in ["b", "c", "d"] {
        assert_eq!(d.call("DELETE", &format!("/vms/{name}"), None).await.0, 204);
    }
}

#[tokio::test]
async fn metrics_and_host_status() {
    let (d, _) = daemon("exit 0", None).await;
    d.call("POST", "/vms", Some(d.spec("m", r#","vcpus":2"#)))
        .await;
    let (status, text) = d.call("GET", "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("skiff_vm_state{vm=\"m\",state=\"stopped\"} 1"),
        "{text}"
    );
    assert!(text.contains("skiff_vm_vcpus{vm=\"m\"} 2"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("skiff_host_memory_available_bytes ")),
        "{text}"
    );
    let (status, body) = d.call("GET", "/host", None).await;
    assert_eq!(status, 200);
    let host: skiff_api::model::HostStatus = serde_json::from_str(&body).expect("status");
    assert_eq!((host.vms, host.running), (1, 0));
}
