//! The device configuration space (struct virtio_blk_config) as the driver reads it.

use super::{SECTOR_SIZE, SEG_MAX};

/// Offsets inside struct virtio_blk_config.
const CAPACITY: usize = 0;
const SEG_MAX_OFFSET: usize = 12;
const BLK_SIZE: usize = 20;
const NUM_QUEUES: usize = 34;
const LEN: usize = 0x40;

#[derive(Clone, Debug)]
pub struct BlockConfig {
    bytes: [u8; LEN],
}

impl BlockConfig {
    pub fn new(capacity_sectors: u64) -> Self {
        let mut bytes = [0u8; LEN];
        bytes[CAPACITY..CAPACITY + 8].copy_from_slice(&capacity_sectors.to_le_bytes());
        bytes[SEG_MAX_OFFSET..SEG_MAX_OFFSET + 4].copy_from_slice(&SEG_MAX.to_le_bytes());
        bytes[BLK_SIZE..BLK_SIZE + 4].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        bytes[NUM_QUEUES..NUM_QUEUES + 2].copy_from_slice(&1u16.to_le_bytes());
        BlockConfig { bytes }
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

    #[test]
    fn capacity_and_limits_are_where_linux_reads_them() {
        let c = BlockConfig::new(0x1_0000_0002);
        let mut cap = [0u8; 8];
        c.read(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 0x1_0000_0002);
        let mut seg = [0u8; 4];
        c.read(12, &mut seg);
        assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
        let mut far = [0xffu8; 4];
        c.read(u64::MAX - 1, &mut far);
        assert_eq!(far, [0; 4]);
    }
}
