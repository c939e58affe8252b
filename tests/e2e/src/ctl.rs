//! `skiff ctl`: what tests use to drive a running Skiff VM over its control socket.

use std::path::Path;
use std::process::Command;

use crate::TestEnv;

/// Runs `skiff ctl --socket SOCKET ARGS...`; returns (success, stdout + stderr).
pub fn ctl(socket: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(&TestEnv::get().skiff_bin)
        .args(["ctl", "--socket"])
        .arg(socket)
        .args(args)
        .output()
        .expect("skiff ctl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
