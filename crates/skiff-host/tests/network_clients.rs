//! Hostile network clients against the daemon's listeners (`connections`): 2,000 TCP
//! connections that never send a byte and 200 that send their headers a byte a second. The
//! unix-socket API keeps answering at once, a VM (a stand-in VMM whose control socket the
//! test serves) restarts, and every one of those connections is closed within 30 s.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use skiff_api::control::{ControlResponse, RunState, VmStats};
use skiff_api::model::{VmInfo, VmState};
use skiff_host::connections::{
    self, HEADER_READ_TIMEOUT, IDLE_TIMEOUT, MAX_TCP_CONNECTIONS, MAX_UNIX_CONNECTIONS,
};
use skiff_host::{api, Client, Endpoint, Host, HostConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener};

const IDLE_CLIENTS: usize = 2000;
const SLOW_CLIENTS: usize = 200;

/// Answers every control request of the stand-in VMM: running, 64 MiB.
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

/// A client that sends a request line, then one header byte a second; returns how long the
/// daemon took to close the connection.
async fn slow_header(addr: std::net::SocketAddr) -> Duration {
    let opened = Instant::now();
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return Duration::ZERO;
    };
    if stream
        .write_all(b"GET /host HTTP/1.1\r\nX-Slow: ")
        .await
        .is_err()
    {
        return opened.elapsed();
    }
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {} // an error response; the close follows
            },
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if stream.write_all(b"a").await.is_err() {
                    return opened.elapsed();
                }
            }
        }
        assert!(opened.elapsed() < 3 * IDLE_TIMEOUT, "never closed");
    }
}

/// Whether the daemon has closed `stream` (end of file or reset, at once).
async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_tcp_clients_starve_nobody_and_are_closed() {
    let limit = connections::raise_fd_limit().expect("raise RLIMIT_NOFILE");
    assert!(
        limit as usize > IDLE_CLIENTS + SLOW_CLIENTS + MAX_TCP_CONNECTIONS + 200,
        "RLIMIT_NOFILE {limit}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"not really a kernel").expect("write");
    let vmm_bin = dir.path().join("fake-vmm");
    std::fs::write(&vmm_bin, "#!/bin/sh\nexec sleep 1000\n").expect("write");
    std::fs::set_permissions(&vmm_bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let host = Host::open(HostConfig {
        state_dir: dir.path().join("state"),
        vmm_bin,
        stop_timeout: Duration::from_millis(300),
        start_timeout: Duration::from_secs(5),
        memory: skiff_host::memory::MemoryConfig::default(),
        jail: None,
        log_max_bytes: skiff_host::log_rotation::DEFAULT_MAX_BYTES,
        image_dirs: skiff_host::image_dirs::ImageDirs::unrestricted(),
        meter: std::sync::Arc::new(skiff_host::memory::measure::ProcMeter),
    })
    .await
    .expect("host");
    let socket = dir.path().join("api.sock");
    let unix = UnixListener::bind(&socket).expect("bind");
    let router = api::router(host.clone(), None);
    tokio::spawn(connections::serve_unix(unix, router, MAX_UNIX_CONNECTIONS));
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let router = api::router(host.clone(), Some("0123456789abcdef-token".into()));
    tokio::spawn(connections::serve_tcp(tcp, router, MAX_TCP_CONNECTIONS));
    let client = Client::new(Endpoint::Unix(socket), None);

    let spec = format!(
        r#"{{"name":"web","kernel":"{}","memory":"64M"}}"#,
        kernel.display()
    );
    host.create(spec.as_bytes(), false).await.expect("create");
    let control = UnixListener::bind(dir.path().join("state/vms/web/control.sock")).expect("bind");
    tokio::spawn(serve_control(control));
    let first = host.start("web").await.expect("start");
    assert_eq!(first.state, VmState::Running, "{first:?}");

    let mut idle = Vec::with_capacity(IDLE_CLIENTS);
    for _ in 0..IDLE_CLIENTS {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let slow: Vec<_> = (0..SLOW_CLIENTS)
        .map(|_| tokio::spawn(slow_header(addr)))
        .collect();
    let all_open = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let t0 = Instant::now();
    let status = client
        .request("GET", "/host", None)
        .await
        .expect("GET /host");
    let took = t0.elapsed();
    assert_eq!(status.status, 200, "{}", status.text());
    assert!(took < Duration::from_secs(1), "GET /host took {took:?}");

    let stop = client
        .request("POST", "/vms/web/stop?force=true", None)
        .await
        .expect("stop");
    assert_eq!(stop.status, 200, "{}", stop.text());
    let start = client
        .request("POST", "/vms/web/start", None)
        .await
        .expect("start");
    assert_eq!(start.status, 200, "{}", start.text());
    let again: VmInfo = serde_json::from_str(&start.text()).expect("VmInfo");
    assert_eq!(again.state, VmState::Running, "{again:?}");
    assert_ne!(again.pid, first.pid, "a new VMM");

    tokio::time::sleep_until((all_open + IDLE_TIMEOUT + Duration::from_millis(500)).into()).await;
    let mut open = 0;
    for stream in &mut idle {
        if !is_closed(stream).await {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "idle connections still open after {IDLE_TIMEOUT:?}"
    );
    for task in slow {
        let closed_after = task.await.expect("slow client");
        // The header timeout ends them, well before the idle one would.
        assert!(
            closed_after <= HEADER_READ_TIMEOUT + Duration::from_secs(2),
            "a slow client lasted {closed_after:?}"
        );
    }
    host.stop("web", None, true).await.expect("stop");
}
