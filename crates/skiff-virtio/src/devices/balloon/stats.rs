//! The stats queue's payload: an array of packed `struct virtio_balloon_stat { le16 tag;
//! le64 val; }`. Memory figures are in bytes; swap in/out are bytes too (Linux converts
//! pages), faults are counts.

/// Bytes per entry: a 16-bit tag and a 64-bit value, packed.
const ENTRY: usize = 10;
/// Entries accepted per buffer (Linux sends about a dozen).
pub const MAX_ENTRIES: usize = 64;

const TAG_SWAP_IN: u16 = 0;
const TAG_SWAP_OUT: u16 = 1;
const TAG_MAJFLT: u16 = 2;
const TAG_MINFLT: u16 = 3;
const TAG_MEMFREE: u16 = 4;
const TAG_MEMTOT: u16 = 5;
const TAG_AVAIL: u16 = 6;
const TAG_CACHES: u16 = 7;

/// The guest's latest memory statistics; a figure the guest did not send is `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestStats {
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    pub free_memory: Option<u64>,
    pub total_memory: Option<u64>,
    pub available_memory: Option<u64>,
    pub disk_caches: Option<u64>,
}

/// Parses a stats buffer; unknown tags are skipped, a trailing partial entry ignored.
pub fn parse_stats(bytes: &[u8]) -> GuestStats {
    let mut s = GuestStats::default();
    for e in bytes.chunks_exact(ENTRY).take(MAX_ENTRIES) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&e[2..10]);
        let val = Some(u64::from_le_bytes(v));
        match tag {
            TAG_SWAP_IN => s.swap_in = val,
            TAG_SWAP_OUT => s.swap_out = val,
            TAG_MAJFLT => s.major_faults = val,
            TAG_MINFLT => s.minor_faults = val,
            TAG_MEMFREE => s.free_memory = val,
            TAG_MEMTOT => s.total_memory = val,
            TAG_AVAIL => s.available_memory = val,
            TAG_CACHES => s.disk_caches = val,
            _ => {}
        }
    }
    s
}

/// The longest stats buffer read (bytes).
pub const MAX_BYTES: usize = ENTRY * MAX_ENTRIES;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: u16, val: u64) -> Vec<u8> {
        let mut e = tag.to_le_bytes().to_vec();
        e.extend_from_slice(&val.to_le_bytes());
        e
    }

    #[test]
    fn known_tags_are_read_and_others_skipped() {
        let mut buf = Vec::new();
        buf.extend(entry(TAG_MEMFREE, 100 << 20));
        buf.extend(entry(99, 1));
        buf.extend(entry(TAG_MEMTOT, 512 << 20));
        buf.extend(entry(TAG_AVAIL, 300 << 20));
        buf.extend(entry(TAG_MAJFLT, 3));
        buf.extend(entry(TAG_SWAP_OUT, 0));
        buf.extend([1, 2, 3]); // a stray partial entry
        let s = parse_stats(&buf);
        assert_eq!(s.free_memory, Some(100 << 20));
        assert_eq!(s.total_memory, Some(512 << 20));
        assert_eq!(s.available_memory, Some(300 << 20));
        assert_eq!(s.major_faults, Some(3));
        assert_eq!(s.swap_out, Some(0));
        assert_eq!(s.swap_in, None);
        assert_eq!(parse_stats(&[]), GuestStats::default());
    }
}
