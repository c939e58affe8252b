//! The device configuration space (struct virtio_blk_config) as the driver reads it:
//! capacity, segment limit, block size and topology, and the discard and write-zeroes
//! limits the request handlers enforce.

use super::{Geometry, SECTOR_SIZE, SEG_MAX};

/// Offsets inside struct virtio_blk_config (virtio 1.2, 5.2.4).
const CAPACITY: usize = 0;
const SEG_MAX_OFFSET: usize = 12;
const BLK_SIZE: usize = 20;
const PHYSICAL_BLOCK_EXP: usize = 24;
const ALIGNMENT_OFFSET: usize = 25;
const MIN_IO_SIZE: usize = 26;
const OPT_IO_SIZE: usize = 28;
const NUM_QUEUES: usize = 34;
const MAX_DISCARD_SECTORS: usize = 36;
const MAX_DISCARD_SEG: usize = 40;
const DISCARD_SECTOR_ALIGNMENT: usize = 44;
const MAX_WRITE_ZEROES_SECTORS: usize = 48;
const MAX_WRITE_ZEROES_SEG: usize = 52;
const WRITE_ZEROES_MAY_UNMAP: usize = 56;
const LEN: usize = 0x40;

/// Sectors one discard or write-zeroes segment may cover: 1 GiB, so that one request
/// holds a worker for a bounded time.
pub const MAX_RANGE_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;
/// Segments per discard or write-zeroes request.
pub const MAX_RANGE_SEGMENTS: u32 = 16;

#[derive(Clone, Debug)]
pub struct BlockConfig {
    bytes: [u8; LEN],
}

impl BlockConfig {
    pub fn new(capacity_sectors: u64, geometry: &Geometry) -> Self {
        let mut c = BlockConfig { bytes: [0u8; LEN] };
        c.put(CAPACITY, &capacity_sectors.to_le_bytes());
        c.put(SEG_MAX_OFFSET, &SEG_MAX.to_le_bytes());
        c.put(BLK_SIZE, &geometry.logical_block.to_le_bytes());
        // Topology: physical blocks as a power of two of logical ones; sizes in logical
        // blocks.
        let per_physical = (geometry.physical_block / geometry.logical_block.max(1)).max(1);
        c.put(PHYSICAL_BLOCK_EXP, &[per_physical.ilog2() as u8]);
        let in_blocks = |bytes: u32| bytes / geometry.logical_block.max(1);
        let alignment = u8::try_from(in_blocks(geometry.alignment_offset)).unwrap_or(0);
        c.put(ALIGNMENT_OFFSET, &[alignment]);
        let min_io = u16::try_from(in_blocks(geometry.min_io)).unwrap_or(0);
        c.put(MIN_IO_SIZE, &min_io.to_le_bytes());
        c.put(OPT_IO_SIZE, &in_blocks(geometry.opt_io).to_le_bytes());
        c.put(NUM_QUEUES, &1u16.to_le_bytes());
        if let Some(granularity) = geometry.discard_granularity {
            c.put(MAX_DISCARD_SECTORS, &MAX_RANGE_SECTORS.to_le_bytes());
            c.put(MAX_DISCARD_SEG, &MAX_RANGE_SEGMENTS.to_le_bytes());
            let sectors = (granularity / SECTOR_SIZE as u32).max(1);
            c.put(DISCARD_SECTOR_ALIGNMENT, &sectors.to_le_bytes());
        }
        if geometry.write_zeroes {
            c.put(MAX_WRITE_ZEROES_SECTORS, &MAX_RANGE_SECTORS.to_le_bytes());
            c.put(MAX_WRITE_ZEROES_SEG, &MAX_RANGE_SEGMENTS.to_le_bytes());
            c.put(WRITE_ZEROES_MAY_UNMAP, &[1]);
        }
        c
    }

    fn put(&mut self, at: usize, value: &[u8]) {
        self.bytes[at..at + value.len()].copy_from_slice(value);
    }

    /// Reads at `offset`; bytes past the structure read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| self.bytes.get(at))
                .copied()
                .unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_u32(c: &BlockConfig, at: u64) -> u32 {
        let mut b = [0u8; 4];
        c.read(at, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn capacity_and_limits_are_where_linux_reads_them() {
        let c = BlockConfig::new(0x1_0000_0002, &Geometry::default());
        let mut cap = [0u8; 8];
        c.read(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 0x1_0000_0002);
        assert_eq!(read_u32(&c, 12), SEG_MAX);
        assert_eq!(read_u32(&c, 20), 512);
        assert_eq!(read_u32(&c, 36), 0, "no discard without a granularity");
        let mut far = [0xffu8; 4];
        c.read(u64::MAX - 1, &mut far);
        assert_eq!(far, [0; 4]);
    }

    #[test]
    fn a_4k_device_advertises_its_topology_and_discard_unit() {
        let geometry = Geometry {
            logical_block: 512,
            physical_block: 4096,
            alignment_offset: 0,
            min_io: 4096,
            opt_io: 65536,
            discard_granularity: Some(65536),
            write_zeroes: true,
        };
        let c = BlockConfig::new(1 << 21, &geometry);
        let mut topology = [0u8; 8];
        c.read(24, &mut topology);
        assert_eq!(topology[0], 3, "4096 = 512 << 3");
        assert_eq!(u16::from_le_bytes([topology[2], topology[3]]), 8);
        assert_eq!(
            u32::from_le_bytes([topology[4], topology[5], topology[6], topology[7]]),
            128
        );
        assert_eq!(read_u32(&c, 36), MAX_RANGE_SECTORS);
        assert_eq!(read_u32(&c, 40), MAX_RANGE_SEGMENTS);
        assert_eq!(read_u32(&c, 44), 128, "65536 bytes in sectors");
        assert_eq!(read_u32(&c, 48), MAX_RANGE_SECTORS);
        assert_eq!(read_u32(&c, 52), MAX_RANGE_SEGMENTS);
        let mut unmap = [0u8; 1];
        c.read(56, &mut unmap);
        assert_eq!(unmap, [1]);
    }

    #[test]
    fn a_4k_native_device_has_4k_blocks() {
        let geometry = Geometry {
            logical_block: 4096,
            physical_block: 4096,
            ..Geometry::default()
        };
        let c = BlockConfig::new(8, &geometry);
        assert_eq!(read_u32(&c, 20), 4096);
        let mut exp = [0xffu8; 1];
        c.read(24, &mut exp);
        assert_eq!(exp, [0]);
    }
}
