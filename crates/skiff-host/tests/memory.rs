//! The memory manager's loop in the daemon, without KVM: a stand-in VMM process (it only
//! sleeps) and its control socket, served by the test, reporting a VM that holds more than
//! the budget allows. The manager must ask the VM's balloon to inflate and show the host's
//! free-memory state and the VM's target.

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff_api::balloon::BalloonStats;
use skiff_api::control::{ControlRequest, ControlResponse, RunState, VmStats};
use skiff_api::model::VmState;
use skiff_host::memory::measure::ResidentMeter;
use skiff_host::memory::{FreeState, MemoryConfig};
use skiff_host::{Host, HostConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

const MIB: u64 = 1 << 20;

/// What the stand-in VMM reports: 1 GiB of guest memory, 1000 MiB of it resident, 10 MiB of
/// VMM overhead, an empty balloon.
fn stats() -> VmStats {
    VmStats {
        state: RunState::Running,
        vcpus: 1,
        memory_bytes: 1024 * MIB,
        guest_resident_bytes: 1000 * MIB,
        vmm_rss_bytes: 1010 * MIB,
        uptime_ms: 1,
        balloon: Some(BalloonStats::default()),
        working_set: None,
        sharing: Default::default(),
        reclaim: Default::default(),
    }
}

/// The stand-in VMM only sleeps: the daemon's own measurement of it (which bounds what the
/// VMM reports) is what a VMM holding 1010 MiB would show.
#[derive(Debug)]
struct Measured(u64);

impl ResidentMeter for Measured {
    fn resident_bytes(&self, _pid: i32) -> Option<u64> {
        Some(self.0)
    }
}

/// Answers control requests on `listener` and records them. A pause is answered only after
/// `pause_delay`, one request at a time as the VMM's control thread serves them: a VMM busy
/// (in a reclaim, say) that pauses after the daemon stopped waiting.
async fn serve_control(
    listener: UnixListener,
    seen: Arc<Mutex<Vec<ControlRequest>>>,
    pause_delay: Duration,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        if BufReader::new(read).read_line(&mut line).await.is_err() {
            continue;
        }
        let Ok(request) = serde_json::from_str::<ControlRequest>(line.trim()) else {
            continue;
        };
        seen.lock().expect("lock").push(request.clone());
        let response = match request {
            ControlRequest::Stats => ControlResponse::Ok {
                stats: Some(stats()),
                reclaim: None,
            },
            ControlRequest::Pause => {
                tokio::time::sleep(pause_delay).await;
                ControlResponse::ok()
            }
            _ => ControlResponse::ok(),
        };
        let mut text = serde_json::to_string(&response).expect("json");
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }
}

/// A daemon with a 1 GiB memory budget (and 4 GiB of reclaim capacity) whose VMM is a process that only sleeps; the
/// tempdir and the guest kernel's path.
async fn daemon() -> (Host, tempfile::TempDir, String) {
    daemon_starting_within(Duration::from_secs(5)).await
}

/// The same, waiting at most `start_timeout` for a VMM's control socket in a start.
async fn daemon_starting_within(start_timeout: Duration) -> (Host, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"not really a kernel").expect("write");
    let vmm_bin = dir.path().join("fake-vmm");
    std::fs::write(&vmm_bin, "#!/bin/sh\nexec sleep 60\n").expect("write");
    std::fs::set_permissions(&vmm_bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let host = Host::open(HostConfig {
        state_dir: dir.path().join("state"),
        vmm_bin,
        stop_timeout: Duration::from_millis(300),
        start_timeout,
        memory: MemoryConfig {
            budget_bytes: Some(1024 * MIB),
            // whatever swap the machine running the test has
            reclaim_capacity_bytes: Some(4096 * MIB),
            ..MemoryConfig::default()
        },
        jail: None,
        log_max_bytes: skiff_host::log_rotation::DEFAULT_MAX_BYTES,
        image_dirs: skiff_host::image_dirs::ImageDirs::unrestricted(),
        meter: Arc::new(Measured(1010 * MIB)),
    })
    .await
    .expect("host");
    let kernel = kernel.display().to_string();
    (host, dir, kernel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_vm_is_asked_to_balloon_down() {
    let (host, dir, kernel) = daemon().await;
    let state_dir = dir.path().join("state");
    let spec =
        format!(r#"{{"name":"big","kernel":"{kernel}","memory":{{"size":"1G","min":"256M"}}}}"#);
    host.create(spec.as_bytes(), false).await.expect("create");
    let listener =
        UnixListener::bind(state_dir.join("vms/big/control.sock")).expect("control socket");
    let seen = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(serve_control(listener, seen.clone(), Duration::ZERO));
    host.start("big").await.expect("start");
    tokio::spawn(skiff_host::memory::sample_forever(host.clone()));

    // 1010 MiB of the 1024 MiB budget in use: 1.4 % free, the hard state. The target is what
    // is allocatable: 1024 − 10 overhead − 61.44 (the 6 % kept free) = 952.56 MiB, so the
    // balloon is asked for the other 71.44 MiB, rounded down to 71.
    let wanted = ControlRequest::Balloon { target_mib: 71 };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seen.lock().expect("lock").contains(&wanted) {
        assert!(
            Instant::now() < deadline,
            "no balloon request: {:?}",
            seen.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = host.status().memory.expect("memory status");
    assert_eq!(status.state, FreeState::Hard);
    assert_eq!(status.budget_bytes, 1024 * MIB);
    assert_eq!(status.free_bytes, 14 * MIB);
    let vm = host.inspect("big").await.expect("inspect");
    let memory = vm.memory.expect("VM memory status");
    assert!(
        (952 * MIB..953 * MIB).contains(&memory.target_bytes),
        "{memory:?}"
    );
    assert_eq!(memory.min_bytes, 256 * MIB);
    assert_eq!(memory.allocated_bytes, 1000 * MIB);

    host.stop("big", Some(Duration::from_millis(300)), false)
        .await
        .expect("stop");
}

#[tokio::test]
async fn a_vm_whose_min_does_not_fit_is_refused_with_the_numbers() {
    let (host, _dir, kernel) = daemon().await;
    let spec =
        format!(r#"{{"name":"greedy","kernel":"{kernel}","memory":{{"size":"2G","min":"1G"}}}}"#);
    host.create(spec.as_bytes(), false).await.expect("create");
    let err = host.start("greedy").await.expect_err("refused");
    assert_eq!(err.status(), 409);
    assert_eq!(
        err.to_string(),
        "VM `greedy` cannot start: not enough memory: the VM needs 1036 MiB reserved \
         (min 1024 MiB + overhead 12 MiB), but only 1024 MiB of the 1024 MiB budget is unreserved"
    );
    let vm = host.inspect("greedy").await.expect("inspect");
    assert_eq!(vm.state, skiff_api::model::VmState::Stopped);
    assert_eq!(vm.pid, None, "no VMM was started");
}

/// Two starts at the same moment whose mins fit the budget one at a time but not together:
/// admission and the reservation are one step, so exactly one is refused, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_concurrent_starts_that_do_not_fit_together_exactly_one_is_refused() {
    let (host, _dir, kernel) = daemon_starting_within(Duration::from_millis(50)).await;
    for name in ["left", "right"] {
        let spec = format!(
            r#"{{"name":"{name}","kernel":"{kernel}","memory":{{"size":"1G","min":"600M"}}}}"#
        );
        host.create(spec.as_bytes(), false).await.expect("create");
    }
    for round in 0..20 {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let starts: Vec<_> = ["left", "right"]
            .into_iter()
            .map(|name| {
                let (host, barrier) = (host.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    (name, host.start(name).await)
                })
            })
            .collect();
        let mut started = Vec::new();
        let mut refused = 0;
        for start in starts {
            match start.await.expect("task") {
                (name, Ok(_)) => started.push(name),
                (_, Err(e)) => {
                    assert_eq!(e.status(), 409, "{e}");
                    assert!(e.to_string().contains("not enough memory"), "{e}");
                    refused += 1;
                }
            }
        }
        assert_eq!((started.len(), refused), (1, 1), "round {round}");
        host.stop(started[0], None, true).await.expect("stop");
    }
}

/// A pause the VMM answers too late fails, and the daemon withdraws it (a resume follows),
/// so the VM, still recorded as running, is not left paused by a VMM that paused after all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_pause_is_withdrawn() {
    let (host, dir, kernel) = daemon().await;
    let state_dir = dir.path().join("state");
    let spec = format!(r#"{{"name":"slow","kernel":"{kernel}","memory":{{"size":"256M"}}}}"#);
    host.create(spec.as_bytes(), false).await.expect("create");
    let listener =
        UnixListener::bind(state_dir.join("vms/slow/control.sock")).expect("control socket");
    let seen = Arc::new(Mutex::new(Vec::new()));
    // Past the daemon's 10 s request timeout.
    tokio::spawn(serve_control(
        listener,
        seen.clone(),
        Duration::from_secs(11),
    ));
    host.start("slow").await.expect("start");
    let running = Instant::now() + Duration::from_secs(10);
    while host.inspect("slow").await.expect("inspect").state != VmState::Running {
        assert!(Instant::now() < running, "never running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let err = host.pause("slow").await.expect_err("the pause times out");
    assert!(err.to_string().contains("did not answer"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seen.lock().expect("lock").contains(&ControlRequest::Resume) {
        assert!(
            Instant::now() < deadline,
            "the pause was not withdrawn: {:?}",
            seen.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vm = host.inspect("slow").await.expect("inspect");
    assert_eq!(vm.state, VmState::Running);

    host.stop("slow", Some(Duration::from_millis(300)), false)
        .await
        .expect("stop");
}
