//! A silent emulated host: reading its console so that an unfinished line (libtest's
//! `test NAME ... ` before a test's result) is known, and asking a host that stopped
//! printing for the kernel's view of it (magic SysRq over the serial line) before it
//! is killed.

use std::io::{Read, Write};
use std::process::ChildStdin;
use std::sync::mpsc;
use std::time::Duration;

/// What the console reader passes on.
pub enum Output {
    /// A whole line, without its line ending.
    Line(String),
    /// The line being written so far (no newline yet).
    Partial(String),
}

/// Reads `from` until it ends, sending whole lines and, after each read that leaves
/// one unfinished, that unfinished line.
pub fn read_console(mut from: impl Read, to: &mpsc::Sender<Output>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if to.send(Output::Line(text(&line))).is_err() {
                return;
            }
        }
        if !pending.is_empty() && to.send(Output::Partial(text(&pending))).is_err() {
            return;
        }
    }
    if !pending.is_empty() {
        let _ = to.send(Output::Line(text(&pending)));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\n', '\r'])
        .to_owned()
}

/// The SysRq keys sent to a silent host: console log level 9 first (the host's console
/// shows only emergencies, and SysRq's dumps are informational), then the tasks blocked
/// in the kernel (`w`) and a backtrace of every CPU (`l`). The host kernel runs with
/// `sysrq_always_enabled`.
const SYSRQ_KEYS: &[u8] = b"9wl";

/// Sends each SysRq key as a serial break followed by the key. QEMU's `-nographic`
/// console multiplexes the monitor on stdio: Ctrl-A b sends a break on the serial line.
pub fn send_sysrq(stdin: &mut ChildStdin) -> std::io::Result<()> {
    for &key in SYSRQ_KEYS {
        stdin.write_all(&[0x01, b'b', key])?;
        stdin.flush()?;
        // The kernel takes the key that follows a break within 5 s; give each
        // handler time to print before the next break.
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

/// The test libtest is running, from the unfinished line `test NAME ... ` it prints
/// before a test's result when tests run one at a time.
pub fn running_test(partial: &str) -> Option<&str> {
    partial
        .strip_prefix("test ")?
        .trim_end()
        .strip_suffix(" ...")
        .filter(|name| !name.contains(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_the_unfinished_line_are_passed_on() {
        let (tx, rx) = mpsc::channel();
        read_console(&b"one\r\ntwo\ntest a::b ... "[..], &tx);
        drop(tx);
        let got: Vec<String> = rx
            .iter()
            .map(|o| match o {
                Output::Line(l) => format!("L:{l}"),
                Output::Partial(p) => format!("P:{p}"),
            })
            .collect();
        assert_eq!(
            got,
            ["L:one", "L:two", "P:test a::b ... ", "L:test a::b ... "]
        );
    }

    #[test]
    fn the_running_test_is_read_from_libtests_unfinished_line() {
        assert_eq!(running_test("test vmm::boots ... "), Some("vmm::boots"));
        assert_eq!(running_test("test vmm::boots ..."), Some("vmm::boots"));
        assert_eq!(running_test("test result: ok."), None);
        assert_eq!(running_test("booting"), None);
    }
}
