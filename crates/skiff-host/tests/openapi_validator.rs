//! The checked-in OpenAPI document passes a real validator: `openapi-spec-validator` from
//! PyPI, installed into a virtualenv in the cache on first use (`cargo xtask test` installs
//! Debian's python3-venv).

use std::path::{Path, PathBuf};
use std::process::Command;

const VALIDATOR: &str = "openapi-spec-validator==0.7.2";

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

#[test]
fn openapi_document_validates() {
    let venv = cache_dir().join("venv-openapi");
    let validator = venv.join("bin/openapi-spec-validator");
    if !validator.exists() {
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        run(Command::new(python).args(["-m", "venv"]).arg(&venv));
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", VALIDATOR]));
    }
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    run(Command::new(&validator).arg(&doc));
}
