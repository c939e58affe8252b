//! Transmit chains of odd lengths on virtio-net (`net-tx-LEN`): nothing (0), a byte, less
//! than the virtio-net header, the header alone, one byte past an MTU-sized frame and its
//! header, 64 KiB, one byte past the largest frame a device takes, and 1 MiB. None is
//! malformed: a device sends what it can and drops the rest, returning every chain with
//! nothing written, and keeps working.

use super::cases::Kind;
use super::driver::{wait, Device, DESC_F_NEXT, MORE_DATA, STATUS_NEEDS_RESET};
use super::work::{self, NET_HDR};
use super::{Outcome, REACTION};
use crate::error::Result;

/// The lengths, in bytes of the whole chain (header included).
pub const LENGTHS: &[u32] = &[
    0,
    1,
    NET_HDR as u32 - 1,
    NET_HDR as u32,
    (NET_HDR + 1514 + 1) as u32,
    65535,
    (NET_HDR + 65550 + 1) as u32,
    1 << 20,
];
/// The most one descriptor of these chains covers (the buffer in the huge page is reused).
const PIECE: u32 = 256 << 10;

/// The case name for `len`.
pub fn case_name(len: u32) -> String {
    format!("net-tx-{len}")
}

/// The length a case name asks for, if it is a `net-tx-LEN` case.
pub fn case_length(name: &str) -> Option<u32> {
    let len = name.strip_prefix("net-tx-")?.parse().ok()?;
    LENGTHS.contains(&len).then_some(len)
}

/// Sends one chain of `len` bytes: the header in its own descriptor when there is room for
/// it, then the rest in pieces of at most [`PIECE`] bytes.
pub fn send(device: &mut Device, len: u32) -> Result<Outcome> {
    let kind = Kind::Net;
    let q = work::work_queue(kind);
    work::init(device, kind, false)?;
    let mut pieces = Vec::new();
    let mut left = len;
    if left > NET_HDR as u32 {
        pieces.push(NET_HDR as u32);
        left -= NET_HDR as u32;
    }
    while left > PIECE {
        pieces.push(PIECE);
        left -= PIECE;
    }
    pieces.push(left);
    let count = pieces.len() as u16;
    for (i, piece) in pieces.iter().enumerate() {
        let i = i as u16;
        let (flags, next) = if i + 1 < count {
            (DESC_F_NEXT, i + 1)
        } else {
            (0, 0)
        };
        device.desc_on(q, i, device.gpa(MORE_DATA), *piece, flags, next)?;
    }
    device.post_on(q, &[0], None)?;
    let returned = wait(REACTION, || {
        Ok(device.used_idx_on(q)? == 1 || device.status()? & STATUS_NEEDS_RESET != 0)
    })?;
    let used = device.used_idx_on(q)?;
    let (_, written) = device.used_on(q, 0)?;
    let needs_reset = device.status()? & STATUS_NEEDS_RESET != 0;
    let recovered = work::works(device, kind)?;
    let mut o = Outcome::new(returned && used == 1 && written == 0 && !needs_reset && recovered);
    o.field("len", len)
        .field("descriptors", count)
        .field("used", used)
        .field("used_len", written)
        .flag("needs_reset", needs_reset)
        .flag("recovered", recovered);
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_length_has_a_case_name_that_parses_back() {
        for len in LENGTHS {
            assert_eq!(case_length(&case_name(*len)), Some(*len));
        }
        assert_eq!(case_length("net-tx-7"), None, "not one of the lengths");
        assert_eq!(case_length("net-tx-"), None);
    }
}
