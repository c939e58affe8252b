//! The daemon (`skiff host`, this crate's binary, built with the `crash-points` feature for
//! tests) is killed between starting a VMM and saving its PID (`SKIFF_CRASH_POINT=after-spawn`,
//! crates/skiff-host/src/crash_point.rs). The next daemon must adopt that VMM, not start a
//! second one beside it. The VMM is a stand-in script; the test serves its control socket.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_api::control::{ControlResponse, RunState, VmStats};
use skiff_api::model::{Event, EventKind, VmInfo, VmState};
use skiff_host::{Client, Endpoint};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

fn daemon(dir: &Path, vmm: &Path, crash_point: Option<&str>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skiff"));
    command
        .arg("host")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(dir.join("api.sock"))
        .arg("--vmm-bin")
        .arg(vmm)
        .arg("--no-jail")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command.env_remove("SKIFF_CRASH_POINT");
    if let Some(point) = crash_point {
        command.env("SKIFF_CRASH_POINT", point);
    }
    let child = command.spawn().expect("skiff host");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("api.sock").exists() {
        assert!(Instant::now() < deadline, "the daemon never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Answers the stand-in VMM's control requests: a running VM.
async fn serve_control(listener: UnixListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let response = ControlResponse::Ok {
                stats: Some(VmStats {
                    state: RunState::Running,
                    vcpus: 1,
                    memory_bytes: 64 << 20,
                    guest_resident_bytes: 0,
                    vmm_rss_bytes: 0,
                    uptime_ms: 1,
                    balloon: None,
                    working_set: None,
                    sharing: Default::default(),
                    reclaim: Default::default(),
                }),
                reclaim: None,
            };
            let mut text = serde_json::to_string(&response).expect("json");
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        });
    }
}

/// Processes whose command line names `socket` (the stand-in VMM's shell: its `sleep` child
/// does not).
fn vmms_of(socket: &Path) -> Vec<i32> {
    let needle = socket.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == needle))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_spawned_but_not_recorded_is_adopted_not_doubled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let images = dir.path().join("state/images");
    std::fs::create_dir_all(&images).expect("images");
    let kernel = images.join("vmlinuz");
    std::fs::write(&kernel, b"not really a kernel").expect("kernel");
    let vmm = dir.path().join("fake-vmm");
    std::fs::write(&vmm, "#!/bin/sh\nsleep 1000\n").expect("write");
    std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let client = Client::new(Endpoint::Unix(dir.path().join("api.sock")), None);
    let control: PathBuf = dir.path().join("state/vms/web/control.sock");

    let mut first = daemon(dir.path(), &vmm, Some("after-spawn"));
    let spec = format!(
        r#"{{"name":"web","kernel":"{}","memory":"64M"}}"#,
        kernel.display()
    );
    let created = client
        .request("POST", "/vms", Some(spec.into_bytes()))
        .await
        .expect("create");
    assert_eq!(created.status, 201, "{}", created.text());
    // The daemon dies in this request, after the VMM started.
    assert!(client
        .request("POST", "/vms/web/start", None)
        .await
        .is_err());
    let status = first.wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    // (Until its shell's child has exec'd `sleep`, that child shows the same command line.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let orphans = vmms_of(&control);
    assert_eq!(orphans.len(), 1, "the VMM outlived the daemon: {orphans:?}");

    let listener = UnixListener::bind(&control).expect("control socket");
    tokio::spawn(serve_control(listener));
    let _ = std::fs::remove_file(dir.path().join("api.sock"));
    let mut second = daemon(dir.path(), &vmm, None);
    let response = client.request("GET", "/vms/web", None).await.expect("GET");
    let vm: VmInfo = serde_json::from_str(&response.text()).expect("VmInfo");
    let events = client
        .request("GET", "/vms/web/events", None)
        .await
        .expect("events");
    let events: Vec<Event> = serde_json::from_str(&events.text()).expect("events");
    // Settle whatever a second VMM would need to show up, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let vmms = vmms_of(&control);

    let _ = client
        .request("POST", "/vms/web/stop?force=true", None)
        .await;
    let _ = second.kill();
    let _ = second.wait();
    for pid in &vmms {
        // SAFETY: kill on PIDs this test's daemons started (their sessions).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }

    assert_eq!(vm.state, VmState::Running, "{vm:?}");
    assert_eq!(vm.pid, Some(orphans[0]), "the orphan is adopted: {vm:?}");
    assert_eq!(vmms, orphans, "exactly one VMM for the VM");
    assert!(
        events.iter().any(|e| e.kind == EventKind::Adopted),
        "{events:?}"
    );
}
