//! Machine-parsable output on stdout.
//!
//! Every result is a `key=value` line. Periodic or per-item reports are one line of the form
//! `EVENT key=value key=value ...` (for example `progress elapsed_s=1.00 ops=...`). Each line is
//! flushed at once so a reader on a serial console or a pipe sees it immediately.

use std::fmt::Display;
use std::io::Write;

use crate::error::{Error, Result};

fn write_line(line: &str) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| Error::runtime(format!("write to stdout: {e}")))
}

/// Print one `key=value` line.
pub fn kv(key: &str, value: impl Display) -> Result<()> {
    write_line(&format!("{key}={value}"))
}

/// Print one `event key=value ...` line.
pub fn event(name: &str, fields: &[(&str, &dyn Display)]) -> Result<()> {
    let mut line = String::from(name);
    for (k, v) in fields {
        line.push(' ');
        line.push_str(k);
        line.push('=');
        line.push_str(&v.to_string());
    }
    write_line(&line)
}

/// Print free text (used for `help`).
pub fn text(s: &str) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::runtime(format!("write to stdout: {e}")))
}

/// Format a float with two decimals (throughputs, seconds).
pub fn f2(x: f64) -> String {
    format!("{x:.2}")
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_encodes() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn f2_rounds() {
        assert_eq!(f2(1.0), "1.00");
        assert_eq!(f2(2.345_6), "2.35");
    }
}
