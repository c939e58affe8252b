//! Caps the files a VM's processes write for the daemon: the guest's console log and the
//! VMM's log. A guest that prints without end must neither fill the host's disk nor reach
//! a jailed VMM's file-size limit (RLIMIT_FSIZE). The VMM holds these files open for
//! appending and cannot reopen them from inside its jail, so they are rotated by copy and
//! truncate (logrotate's `copytruncate`): when a file passes the limit, its content moves
//! to `<file>.1` (replacing the previous one) and the file starts again empty. Output
//! written between the copy and the truncation (microseconds) is lost.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the daemon checks the logs' sizes.
pub const CHECK_PERIOD: Duration = Duration::from_secs(2);
/// The default limit of each log (`skiff host --log-max`).
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;

/// Where a rotated log's older content goes.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Rotates `path` if it holds more than `max` bytes; returns whether it did.
pub fn rotate_if_larger(path: &Path, max: u64) -> io::Result<bool> {
    let len = match fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max {
        return Ok(false);
    }
    let old = rotated(path);
    let mut partial = old.as_os_str().to_owned();
    partial.push(".tmp");
    let partial = PathBuf::from(partial);
    // Copied whole, then renamed: a reader of `<file>.1` never sees half of it.
    fs::copy(path, &partial)?;
    fs::rename(&partial, &old)?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// The last `max` bytes of a log, reaching into its rotated part when the log itself is
/// shorter (just after a rotation).
pub fn read_tail(path: &Path, max: u64) -> io::Result<String> {
    let current = tail_bytes(path, max)?;
    let missing = max.saturating_sub(current.len() as u64);
    let mut bytes = match tail_bytes(&rotated(path), missing) {
        Ok(older) => older,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    bytes.extend_from_slice(&current);
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn tail_bytes(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Checks every VM's logs, as `log_files` lists them with the VM's name, each
/// `CHECK_PERIOD`, rotating those past `max` bytes, for as long as the daemon runs.
pub async fn rotate_forever(max: u64, log_files: impl Fn() -> Vec<(String, PathBuf)>) {
    let mut tick = tokio::time::interval(CHECK_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (name, path) in log_files() {
            match rotate_if_larger(&path, max) {
                Ok(true) => log::info!(
                    "{name}: {} passed {max} bytes; its older part is now in {}",
                    path.display(),
                    rotated(&path).display()
                ),
                Ok(false) => {}
                Err(e) => log::warn!("{name}: cannot rotate {}: {e}", path.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_past_its_limit_moves_to_dot_1_and_restarts_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        fs::write(&log, "0123456789").expect("write");
        assert!(!rotate_if_larger(&log, 10).expect("rotate"));
        assert_eq!(fs::read_to_string(&log).expect("read"), "0123456789");

        // A writer that keeps its descriptor (the VMM) goes on at the new end.
        let mut writer = OpenOptions::new().append(true).open(&log).expect("open");
        std::io::Write::write_all(&mut writer, b"abc").expect("write");
        assert!(rotate_if_larger(&log, 10).expect("rotate"));
        assert_eq!(
            fs::read_to_string(rotated(&log)).expect("read"),
            "0123456789abc"
        );
        assert_eq!(fs::metadata(&log).expect("meta").len(), 0);
        std::io::Write::write_all(&mut writer, b"new").expect("write");
        assert_eq!(fs::read_to_string(&log).expect("read"), "new");

        // The tail reaches back into the rotated part.
        assert_eq!(read_tail(&log, 5).expect("tail"), "bcnew");
        assert_eq!(read_tail(&log, 2).expect("tail"), "ew");
        assert_eq!(read_tail(&log, 100).expect("tail"), "0123456789abcnew");
    }

    #[test]
    fn a_missing_log_is_not_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        assert!(!rotate_if_larger(&log, 1).expect("rotate"));
        assert!(matches!(read_tail(&log, 5), Err(e) if e.kind() == io::ErrorKind::NotFound));
    }
}
