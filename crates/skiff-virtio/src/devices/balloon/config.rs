//! The device configuration space (struct virtio_balloon_config): `num_pages` (the
//! target, written by the host) and `actual` (the balloon's size, written by the driver).

/// Offsets inside struct virtio_balloon_config.
const NUM_PAGES: usize = 0;
const ACTUAL: usize = 4;
/// num_pages, actual, free_page_hint_cmd_id, poison_val.
const LEN: usize = 16;

#[derive(Clone, Debug, Default)]
pub struct BalloonConfig {
    bytes: [u8; LEN],
}

impl BalloonConfig {
    /// Pages (4 KiB) the host wants in the balloon.
    pub fn num_pages(&self) -> u32 {
        self.field(NUM_PAGES)
    }

    pub fn set_num_pages(&mut self, pages: u32) {
        self.bytes[NUM_PAGES..NUM_PAGES + 4].copy_from_slice(&pages.to_le_bytes());
    }

    /// Pages (4 KiB) the driver says are in the balloon.
    pub fn actual(&self) -> u32 {
        self.field(ACTUAL)
    }

    /// Forgets what the driver wrote (device reset); the target stays.
    pub fn reset_actual(&mut self) {
        self.bytes[ACTUAL..ACTUAL + 4].fill(0);
    }

    fn field(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[at..at + 4]);
        u32::from_le_bytes(b)
    }

    /// Reads at `offset`; bytes past the structure read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = Self::index(offset, i)
                .and_then(|at| self.bytes.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    /// The driver may write only `actual`; other bytes are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, byte) in data.iter().enumerate() {
            if let Some(at) = Self::index(offset, i).filter(|at| (ACTUAL..ACTUAL + 4).contains(at))
            {
                self.bytes[at] = *byte;
            }
        }
    }

    fn index(offset: u64, i: usize) -> Option<usize> {
        usize::try_from(offset).ok().and_then(|o| o.checked_add(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_and_actual_are_where_linux_reads_them() {
        let mut c = BalloonConfig::default();
        c.set_num_pages(0x1234_5678);
        let mut word = [0u8; 4];
        c.read(0, &mut word);
        assert_eq!(u32::from_le_bytes(word), 0x1234_5678);
        c.write(4, &77u32.to_le_bytes());
        assert_eq!(c.actual(), 77);
        c.read(4, &mut word);
        assert_eq!(u32::from_le_bytes(word), 77);
    }

    #[test]
    fn the_driver_cannot_write_the_target_and_odd_offsets_are_harmless() {
        let mut c = BalloonConfig::default();
        c.set_num_pages(5);
        c.write(0, &[0xff; 16]);
        assert_eq!(c.num_pages(), 5);
        assert_eq!(c.actual(), u32::MAX);
        c.write(u64::MAX - 1, &[1, 2, 3, 4]);
        let mut far = [0xffu8; 4];
        c.read(u64::MAX - 1, &mut far);
        assert_eq!(far, [0; 4]);
        let mut past = [0xffu8; 8];
        c.read(12, &mut past);
        assert_eq!(past, [0; 8]);
        c.reset_actual();
        assert_eq!(c.actual(), 0);
    }
}
