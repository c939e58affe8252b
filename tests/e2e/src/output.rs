//! What a finished guest left behind.

use std::fmt;
use std::process::ExitStatus;
use std::time::Duration;

use crate::{GUEST_EXIT, INIT_READY};

/// The result of a guest run.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Everything the guest wrote on its serial console (the VMM's stdout), `\r` removed.
    pub console: String,
    /// The VMM's stderr (its own log).
    pub vmm_stderr: String,
    /// The guest command's exit status, from `SKIFF-GUEST-EXIT status=N`.
    pub guest_status: Option<i32>,
    /// The VMM process's exit status.
    pub vmm_status: ExitStatus,
    /// From VMM start to the guest's `SKIFF-INIT-READY`.
    pub init_ready: Option<Duration>,
    /// From VMM start to `SKIFF-GUEST-EXIT`.
    pub guest_exit: Option<Duration>,
    /// From VMM start to VMM exit.
    pub total: Duration,
}

/// The value of the first `key=value` line in `text` (the guest tool's output format).
pub fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
}

/// Kernel log lines look like `[    1.234567] ...`.
fn is_kernel_log(line: &str) -> bool {
    line.trim_start()
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .is_some_and(|(stamp, _)| stamp.trim().parse::<f64>().is_ok())
}

impl RunOutput {
    /// Whether the VMM ended because the guest triple-faulted (its one-line reason).
    pub fn triple_fault(&self) -> bool {
        self.vmm_stderr.contains("guest crashed: triple fault")
    }

    /// The guest command's output: console lines after `SKIFF-INIT-READY` and before
    /// `SKIFF-GUEST-EXIT`, without kernel log lines.
    pub fn command_output(&self) -> String {
        let mut out = String::new();
        let mut started = false;
        for line in self.console.lines() {
            if !started {
                started = line.contains(INIT_READY);
                continue;
            }
            if let Some(pos) = line.find(GUEST_EXIT) {
                // Output without a final newline shares the marker's line.
                if pos > 0 {
                    out.push_str(&line[..pos]);
                    out.push('\n');
                }
                break;
            }
            if !is_kernel_log(line) {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Panics, showing the console, unless the guest command exited 0 and so did the VMM.
    #[track_caller]
    pub fn assert_success(&self) {
        self.assert_guest_status(0);
        assert!(
            self.vmm_status.success(),
            "the VMM exited with {}\n{self}",
            self.vmm_status
        );
    }

    /// Panics, showing the console, unless the guest command exited with `status`.
    #[track_caller]
    pub fn assert_guest_status(&self, status: i32) {
        assert!(
            self.guest_status == Some(status),
            "expected guest status {status}, got {}\n{self}",
            self.guest_status
                .map_or_else(|| "no SKIFF-GUEST-EXIT line".to_owned(), |s| s.to_string())
        );
    }
}

impl fmt::Display for RunOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "guest status {:?}, VMM {}, init ready after {:?}, total {:?}",
            self.guest_status, self.vmm_status, self.init_ready, self.total
        )?;
        writeln!(f, "----- guest console -----\n{}", self.console.trim_end())?;
        if !self.vmm_stderr.trim().is_empty() {
            writeln!(f, "----- VMM stderr -----\n{}", self.vmm_stderr.trim_end())?;
        }
        write!(f, "-------------------------")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn extracts_command_output() {
        let out = RunOutput {
            console: "boot\nSKIFF-INIT-READY\n[    1.5] virtio: hi\n2\nSKIFF-GUEST-EXIT status=0\n"
                .into(),
            vmm_stderr: String::new(),
            guest_status: Some(0),
            vmm_status: ExitStatus::from_raw(0),
            init_ready: None,
            guest_exit: None,
            total: Duration::ZERO,
        };
        assert_eq!(out.command_output(), "2\n");
        out.assert_success();
        let unterminated = RunOutput {
            console: "SKIFF-INIT-READY\nabcSKIFF-GUEST-EXIT status=0\n".into(),
            ..out
        };
        assert_eq!(unterminated.command_output(), "abc\n");
    }
}
