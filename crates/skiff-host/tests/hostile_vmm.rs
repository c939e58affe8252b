//! A VMM taken over by its guest lies to the daemon on its control socket (docs/security.md,
//! "A hostile VMM"). Stand-in VMMs (processes that only sleep) whose control sockets the
//! test serves: one answers with a gigabyte and no end of line, one claims all memory there
//! is. The daemon must stay small and keep every other VM as it was.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff_api::balloon::BalloonStats;
use skiff_api::control::{ControlResponse, RunState, VmStats};
use skiff_api::model::{VmInfo, VmState};
use skiff_host::memory::measure::{ProcMeter, ResidentMeter};
use skiff_host::memory::{MemoryConfig, SAMPLE_PERIOD};
use skiff_host::vmm::REQUEST_TIMEOUT;
use skiff_host::{Host, HostConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

const MIB: u64 = 1 << 20;

/// What a stand-in VMM answers.
#[derive(Clone, Copy)]
enum Answer {
    /// Stats of a VM holding this much guest memory (and 10 MiB more in its VMM).
    Honest { resident: u64 },
    /// A gigabyte with no newline.
    Flood,
    /// Every memory figure `u64::MAX`.
    AllMemory,
}

fn stats(resident: u64, rss: u64) -> VmStats {
    VmStats {
        state: RunState::Running,
        vcpus: 1,
        memory_bytes: 512 * MIB,
        guest_resident_bytes: resident,
        vmm_rss_bytes: rss,
        uptime_ms: 1,
        balloon: Some(BalloonStats::default()),
        working_set: None,
        sharing: Default::default(),
        reclaim: Default::default(),
    }
}

/// Serves one VM's control socket with whatever `answer` holds at each request.
async fn serve(listener: UnixListener, answer: Arc<Mutex<Answer>>) {
    static CHUNK: [u8; 64 << 10] = [b'x'; 64 << 10];
    while let Ok((stream, _)) = listener.accept().await {
        let answer = *answer.lock().expect("lock");
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let stats = match answer {
                Answer::Flood => {
                    for _ in 0..(1 << 30) / CHUNK.len() {
                        if write.write_all(&CHUNK).await.is_err() {
                            return; // the daemon hung up
                        }
                    }
                    return;
                }
                Answer::Honest { resident } => stats(resident, resident + 10 * MIB),
                Answer::AllMemory => {
                    let mut s = stats(u64::MAX, u64::MAX);
                    s.memory_bytes = u64::MAX;
                    s
                }
            };
            let response = ControlResponse::Ok {
                stats: Some(stats),
                reclaim: None,
            };
            let mut text = serde_json::to_string(&response).expect("json");
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        });
    }
}

/// The test's measurement of each stand-in VMM (they only sleep): what an honest VMM with
/// its figures would hold, by PID.
#[derive(Debug, Default)]
struct Measured(Mutex<HashMap<i32, u64>>);

impl ResidentMeter for Measured {
    fn resident_bytes(&self, pid: i32) -> Option<u64> {
        self.0.lock().expect("lock").get(&pid).copied()
    }
}

struct Daemon {
    host: Host,
    dir: tempfile::TempDir,
    kernel: String,
    answers: HashMap<String, Arc<Mutex<Answer>>>,
}

async fn daemon(meter: Arc<dyn ResidentMeter>) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"not really a kernel").expect("write");
    let vmm_bin = dir.path().join("fake-vmm");
    std::fs::write(&vmm_bin, "#!/bin/sh\nexec sleep 600\n").expect("write");
    std::fs::set_permissions(&vmm_bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let host = Host::open(HostConfig {
        state_dir: dir.path().join("state"),
        vmm_bin,
        stop_timeout: Duration::from_millis(300),
        start_timeout: Duration::from_secs(5),
        memory: MemoryConfig {
            budget_bytes: Some(1024 * MIB),
            reclaim_capacity_bytes: Some(4096 * MIB),
            ..MemoryConfig::default()
        },
        jail: None,
        log_max_bytes: skiff_host::log_rotation::DEFAULT_MAX_BYTES,
        image_dirs: skiff_host::image_dirs::ImageDirs::unrestricted(),
        meter,
    })
    .await
    .expect("host");
    let kernel = kernel.display().to_string();
    Daemon {
        host,
        dir,
        kernel,
        answers: HashMap::new(),
    }
}

impl Daemon {
    /// Creates and starts a 512 MiB VM whose control socket answers `answer`; its VMM's PID.
    async fn start(&mut self, name: &str, answer: Answer) -> i32 {
        let spec = format!(
            r#"{{"name":"{name}","kernel":"{}","memory":{{"size":"512M","min":"64M"}}}}"#,
            self.kernel
        );
        self.host
            .create(spec.as_bytes(), false)
            .await
            .expect("create");
        let socket = self
            .dir
            .path()
            .join(format!("state/vms/{name}/control.sock"));
        let answer = Arc::new(Mutex::new(answer));
        let listener = UnixListener::bind(socket).expect("control socket");
        tokio::spawn(serve(listener, answer.clone()));
        self.answers.insert(name.to_string(), answer);
        let vm = self.host.start(name).await.expect("start");
        assert_eq!(vm.state, VmState::Running, "{vm:?}");
        vm.pid.expect("pid")
    }

    fn answer(&self, name: &str, answer: Answer) {
        *self.answers[name].lock().expect("lock") = answer;
    }

    fn vm(&self, name: &str) -> VmInfo {
        self.host
            .list()
            .into_iter()
            .find(|vm| vm.name == name)
            .expect("listed")
    }

    /// Each VM's state and memory target, as the API shows them.
    fn targets(&self, names: &[&str]) -> Vec<(VmState, Option<u64>)> {
        names
            .iter()
            .map(|name| {
                let vm = self.vm(name);
                (vm.state, vm.memory.map(|m| m.target_bytes))
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_answer_without_a_newline_fails_the_request_and_costs_little() {
    let mut d = daemon(Arc::new(ProcMeter)).await;
    d.start("flood", Answer::Honest { resident: 0 }).await;
    d.answer("flood", Answer::Flood);
    let own_pid = std::process::id() as i32;
    let before = ProcMeter.resident_bytes(own_pid).expect("own RSS");
    let t0 = Instant::now();
    let err = d.host.pause("flood").await.expect_err("no answer");
    let took = t0.elapsed();
    let after = ProcMeter.resident_bytes(own_pid).expect("own RSS");
    assert!(took < REQUEST_TIMEOUT, "took {took:?}");
    assert!(err.to_string().contains("no end of line"), "{err}");
    assert!(
        after.saturating_sub(before) < 64 * MIB,
        "RSS grew from {} to {} MiB",
        before / MIB,
        after / MIB
    );
    assert_eq!(d.vm("flood").state, VmState::Running);
    d.host.stop("flood", None, true).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_claiming_all_memory_changes_no_other_vm() {
    let meter = Arc::new(Measured::default());
    let mut d = daemon(meter.clone()).await;
    for (name, resident) in [("a", 300), ("b", 200), ("liar", 100)] {
        let pid = d
            .start(
                name,
                Answer::Honest {
                    resident: resident * MIB,
                },
            )
            .await;
        meter
            .0
            .lock()
            .expect("lock")
            .insert(pid, (resident + 10) * MIB);
    }
    tokio::spawn(skiff_host::memory::sample_forever(d.host.clone()));
    let others = ["a", "b"];

    // The targets once two periods in a row agree.
    let settle = Instant::now() + Duration::from_secs(30);
    let mut before = d.targets(&others);
    loop {
        tokio::time::sleep(SAMPLE_PERIOD).await;
        let now = d.targets(&others);
        if now == before && now.iter().all(|(_, t)| t.is_some()) {
            break;
        }
        assert!(Instant::now() < settle, "never settled: {now:?}");
        before = now;
    }

    d.answer("liar", Answer::AllMemory);
    let end = Instant::now() + 3 * SAMPLE_PERIOD + Duration::from_millis(500);
    while Instant::now() < end {
        assert_eq!(d.targets(&others), before, "another VM changed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let liar = d.vm("liar");
    let stats = liar.stats.expect("the liar's stats");
    assert_eq!(stats.vmm_rss_bytes, 110 * MIB, "the daemon's measurement");
    assert_eq!(
        stats.guest_resident_bytes,
        100 * MIB,
        "its last believable figure"
    );
    assert_eq!(stats.memory_bytes, 512 * MIB);
    assert_eq!(liar.state, VmState::Running);

    // And the manager still runs: an honest change shows within two periods.
    d.answer(
        "a",
        Answer::Honest {
            resident: 250 * MIB,
        },
    );
    let deadline = Instant::now() + 3 * SAMPLE_PERIOD;
    loop {
        let allocated = d.vm("a").memory.map(|m| m.allocated_bytes);
        if allocated == Some(250 * MIB) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the manager stopped: {allocated:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for name in ["a", "b", "liar"] {
        d.host.stop(name, None, true).await.expect("stop");
    }
}
