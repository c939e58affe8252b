//! A VMM the daemon started but did not live to record (killed between spawning it and
//! saving its PID): found again by its command line, which names the VM's own control
//! socket, so that the next daemon adopts it instead of starting a second VMM beside it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The process running `skiff run` for the VM whose control socket is `socket`: the outermost
/// one (jailed, the supervisor, not the VMM it forked). `None` if there is none.
pub fn find_unrecorded_vmm(socket: &Path) -> Option<i32> {
    let matching: Vec<(i32, Option<i32>)> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| runs_vm(pid, socket))
        .map(|pid| (pid, crate::process::parent(pid)))
        .collect();
    matching
        .iter()
        .find(|(_, parent)| !matching.iter().any(|(pid, _)| Some(*pid) == *parent))
        .map(|(pid, _)| *pid)
}

/// Whether process `pid`'s command line is `… run … --control-socket SOCKET …` (`skiff run`,
/// or a script standing in for it: `/bin/sh SCRIPT run …`).
fn runs_vm(pid: i32, socket: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&OsStr> = cmdline.split(|&b| b == 0).map(OsStr::from_bytes).collect();
    let Some(run) = args.iter().position(|a| *a == "run") else {
        return false;
    };
    args[run..]
        .windows(2)
        .any(|w| w[0] == "--control-socket" && w[1] == socket.as_os_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_outermost_process_of_the_vm_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("control.sock");
        assert_eq!(find_unrecorded_vmm(&socket), None);
        // A shell whose command line names the socket runs a child with the same command
        // line under it, as a jail's supervisor forks its VMM.
        let script = r#"sh -c 'sleep 30; true' run --control-socket "$2"; true"#;
        let mut outer = Command::new("sh")
            .args(["-c", script, "run", "--control-socket"])
            .arg(&socket)
            .spawn()
            .expect("spawn");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            if let Some(pid) = find_unrecorded_vmm(&socket) {
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "not found");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(found, outer.id() as i32);
        assert_eq!(find_unrecorded_vmm(&dir.path().join("other.sock")), None);
        outer.kill().expect("kill");
        outer.wait().expect("wait");
    }
}
