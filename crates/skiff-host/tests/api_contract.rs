//! The OpenAPI document is the contract: schemathesis (PyPI) runs every one of its checks and
//! phases, the stateful one following the document's links from `POST /vms`, `POST /images`
//! and `POST /networks` to the routes that take a name, against the daemon on TCP (the real
//! router, connection limits and token check; a stand-in VMM that only sleeps; a real image
//! store, and real bridges, rules and dnsmasq for the networks). The daemon and schemathesis
//! run in a network namespace of the test's own (root only, as in CI), so the networks it
//! creates never touch the host's. Configuration and hooks: `tests/api-contract/`.
//! schemathesis is installed into a virtualenv in the cache on first use, at a pinned
//! version, like `openapi_validator.rs`'s validator (`cargo xtask test` installs Debian's
//! python3-venv); `SKIFF_SCHEMATHESIS=PATH` names another `st`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skiff_host::{api, connections, Host, HostConfig};

const TOKEN: &str = "contract-token-0123456789";
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

fn cache_dir() -> PathBuf {
    match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir).join("skiff"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/skiff"),
    }
}

fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `st` command, installed first if need be.
fn schemathesis() -> PathBuf {
    if let Some(st) = std::env::var_os("SKIFF_SCHEMATHESIS") {
        return PathBuf::from(st);
    }
    let venv = cache_dir().join("venv-schemathesis");
    let st = venv.join("bin/st");
    let stamp = venv.join(SCHEMATHESIS);
    if !stamp.exists() {
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        run(Command::new(python).args(["-m", "venv"]).arg(&venv));
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", SCHEMATHESIS]));
        std::fs::write(&stamp, b"").expect("stamp");
    }
    st
}

/// An ext4 image with a (pretend) kernel in /boot, which the image store imports.
fn importable_image(dir: &Path) -> PathBuf {
    let content = dir.join("content");
    std::fs::create_dir_all(content.join("boot")).expect("mkdir");
    let mut kernel = vec![7u8; 4096];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(content.join("boot/vmlinuz-6.1.0-1-test"), kernel).expect("kernel");
    let image = dir.join("contract.raw");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("4M"));
    image
}

#[test]
fn schemathesis_finds_nothing_against_the_document() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "the contract test needs root: POST /networks makes bridges, rules and a dnsmasq, \
         so the daemon runs in a network namespace of its own"
    );
    // Installed first: pip needs the host's network.
    let st = schemathesis();
    std::thread::spawn(move || {
        // SAFETY: unshare with a flag; it affects this thread only, and the threads and
        // processes it starts (the runtime's, the daemon's children, schemathesis).
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        run(Command::new("ip").args(["link", "set", "lo", "up"]));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(contract(st));
    })
    .join()
    .expect("the contract run");
}

async fn contract(st: PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("vmlinuz");
    // Also every generated disk (tests/api-contract/hooks.py): whole 512-byte sectors.
    std::fs::write(&kernel, [0u8; 4096]).expect("write");
    let image = importable_image(dir.path());
    let vmm_bin = dir.path().join("fake-vmm");
    std::fs::write(&vmm_bin, "#!/bin/sh\nexec sleep 20\n").expect("write");
    std::fs::set_permissions(&vmm_bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let host = Host::open(HostConfig {
        state_dir: dir.path().join("state"),
        vmm_bin,
        stop_timeout: Duration::from_millis(200),
        // The stand-in never answers on a control socket: a start gives up quickly.
        start_timeout: Duration::from_millis(200),
        memory: skiff_host::memory::MemoryConfig::default(),
        jail: None,
        log_max_bytes: skiff_host::log_rotation::DEFAULT_MAX_BYTES,
        image_dirs: skiff_host::image_dirs::ImageDirs::unrestricted(),
        meter: std::sync::Arc::new(skiff_host::memory::measure::ProcMeter),
    })
    .await
    .expect("host");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(connections::serve_tcp(
        listener,
        api::router(host.clone(), Some(TOKEN.into())),
        connections::MAX_TCP_CONNECTIONS,
    ));
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/api-contract");
    let output = tokio::process::Command::new(&st)
        .current_dir(&config)
        .env("SKIFF_CONTRACT_KERNEL", &kernel)
        .env("SKIFF_CONTRACT_IMAGE", &image)
        .env("NO_COLOR", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["--config-file", "schemathesis.toml", "run"])
        .arg(format!("http://{addr}/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "all"])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", st.display()));
    let text = String::from_utf8_lossy(&output.stdout);
    for vm in host.list() {
        let _ = host.stop(&vm.name, None, true).await;
    }
    host.networks().shutdown().await;
    assert!(
        output.status.success(),
        "schemathesis: {}\n{text}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{text}");
    // It really went through the links: VMs were created and reached by name.
    assert!(text.contains("Stateful"), "{text}");
    assert!(!text.contains("API Links:    0 covered"), "{text}");
}
