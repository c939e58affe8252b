//! Assigns BAR addresses inside the host bridge's memory window, each naturally aligned
//! (a BAR's address must be a multiple of its size).

use crate::PciError;

#[derive(Debug)]
pub struct BarAllocator {
    next: u64,
    end: u64,
}

impl BarAllocator {
    /// Allocates from `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        BarAllocator { next: start, end }
    }

    pub fn allocate(&mut self, size: u64) -> Result<u64, PciError> {
        if !size.is_power_of_two() {
            return Err(PciError::BarSize(size));
        }
        let base = self
            .next
            .checked_next_multiple_of(size)
            .ok_or(PciError::NoSpace(size))?;
        let end = base.checked_add(size).ok_or(PciError::NoSpace(size))?;
        if end > self.end {
            return Err(PciError::NoSpace(size));
        }
        self.next = end;
        Ok(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_each_bar_to_its_size_and_stops_at_the_end() {
        let mut a = BarAllocator::new(0xc000_1000, 0xc002_0000);
        assert_eq!(a.allocate(0x1000), Ok(0xc000_1000));
        assert_eq!(a.allocate(0x8000), Ok(0xc000_8000));
        assert_eq!(a.allocate(0x1000), Ok(0xc001_0000));
        assert_eq!(a.allocate(0x10000), Err(PciError::NoSpace(0x10000)));
        assert_eq!(a.allocate(0x3000), Err(PciError::BarSize(0x3000)));
    }
}
