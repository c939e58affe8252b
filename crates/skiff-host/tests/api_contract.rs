//! The OpenAPI document is the contract: schemathesis (PyPI) runs every one of its checks and
//! phases, the stateful one following the document's links from `POST /vms` to the routes
//! that take a VM's name, against the daemon on TCP (the real router, connection limits
//! and token check; a stand-in VMM that only sleeps). Configuration and hooks:
//! `tests/api-contract/`. schemathesis is installed into a virtualenv in the cache on first
//! use, at a pinned version, like `openapi_validator.rs`'s validator (`cargo xtask test`
//! installs Debian's python3-venv); `SKIFF_SCHEMATHESIS=PATH` names another `st`.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_against_the_document() {
    let st = schemathesis();
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("vmlinuz");
    // Also every generated disk (tests/api-contract/hooks.py): whole 512-byte sectors.
    std::fs::write(&kernel, [0u8; 4096]).expect("write");
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
    assert!(
        output.status.success(),
        "schemathesis: {}\n{text}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // It really went through the links: VMs were created and reached by name.
    assert!(text.contains("Stateful"), "{text}");
    assert!(!text.contains("API Links:    0 covered"), "{text}");
}
