//! DISCARD and WRITE_ZEROES requests: a list of segments (struct
//! virtio_blk_discard_write_zeroes: sector, sectors, flags) after the header, checked
//! whole against the limits the configuration advertises before any of it runs.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};

use super::config::{MAX_RANGE_SECTORS, MAX_RANGE_SEGMENTS};
use super::SECTOR_SIZE;

/// Bytes per segment.
pub const SEGMENT_LEN: usize = 16;

/// One checked segment, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub len: u64,
    pub unmap: bool,
}

/// Which of the two requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeOp {
    Discard,
    WriteZeroes,
}

/// The segments in `data`, each inside a disk of `capacity` bytes, or the status the
/// request completes with: UNSUPP for what the specification calls unsupported (too many
/// segments or sectors, unknown flags, unmap on a discard), IOERR for a range off the disk
/// or a malformed list.
pub fn parse(data: &[u8], op: RangeOp, capacity: u64) -> Result<Vec<Range>, u32> {
    if data.is_empty() || !data.len().is_multiple_of(SEGMENT_LEN) {
        return Err(VIRTIO_BLK_S_IOERR);
    }
    if data.len() / SEGMENT_LEN > MAX_RANGE_SEGMENTS as usize {
        return Err(VIRTIO_BLK_S_UNSUPP);
    }
    data.chunks_exact(SEGMENT_LEN)
        .map(|segment| {
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&segment[..8]);
            let sector = u64::from_le_bytes(sector);
            let sectors = u32::from_le_bytes([segment[8], segment[9], segment[10], segment[11]]);
            let flags = u32::from_le_bytes([segment[12], segment[13], segment[14], segment[15]]);
            let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
            if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0
                || (unmap && op == RangeOp::Discard)
                || sectors > MAX_RANGE_SECTORS
            {
                return Err(VIRTIO_BLK_S_UNSUPP);
            }
            let offset = sector.checked_mul(SECTOR_SIZE);
            let len = u64::from(sectors) * SECTOR_SIZE;
            match offset.and_then(|o| o.checked_add(len)) {
                Some(end) if end <= capacity && len > 0 => Ok(Range {
                    offset: end - len,
                    len,
                    unmap,
                }),
                _ => Err(VIRTIO_BLK_S_IOERR),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
        let mut s = sector.to_le_bytes().to_vec();
        s.extend(sectors.to_le_bytes());
        s.extend(flags.to_le_bytes());
        s
    }

    const DISK: u64 = 1 << 20;

    #[test]
    fn segments_inside_the_disk_are_taken() {
        let mut data = segment(0, 8, 0);
        data.extend(segment(2040, 8, 1));
        assert_eq!(
            parse(&data, RangeOp::WriteZeroes, DISK),
            Ok(vec![
                Range {
                    offset: 0,
                    len: 4096,
                    unmap: false
                },
                Range {
                    offset: 2040 * 512,
                    len: 4096,
                    unmap: true
                }
            ])
        );
    }

    #[test]
    fn ranges_off_the_disk_or_malformed_are_io_errors() {
        let io = Err(VIRTIO_BLK_S_IOERR);
        assert_eq!(parse(&segment(2041, 8, 0), RangeOp::Discard, DISK), io);
        assert_eq!(
            parse(&segment(u64::MAX / 256, 8, 0), RangeOp::Discard, DISK),
            io
        );
        assert_eq!(parse(&segment(0, 0, 0), RangeOp::Discard, DISK), io);
        assert_eq!(parse(&[0u8; 15], RangeOp::Discard, DISK), io);
        assert_eq!(parse(&[], RangeOp::Discard, DISK), io);
    }

    #[test]
    fn beyond_the_advertised_limits_is_unsupported() {
        let unsupp = Err(VIRTIO_BLK_S_UNSUPP);
        let too_many: Vec<u8> = (0..=MAX_RANGE_SEGMENTS as u64)
            .flat_map(|i| segment(i, 1, 0))
            .collect();
        assert_eq!(parse(&too_many, RangeOp::Discard, DISK), unsupp);
        let huge = segment(0, MAX_RANGE_SECTORS + 1, 0);
        assert_eq!(parse(&huge, RangeOp::WriteZeroes, u64::MAX), unsupp);
        assert_eq!(parse(&segment(0, 1, 1), RangeOp::Discard, DISK), unsupp);
        assert_eq!(parse(&segment(0, 1, 2), RangeOp::WriteZeroes, DISK), unsupp);
    }
}
