//! Dispatch of MMIO exits to devices by guest-physical range. Devices take `&self` and
//! lock what they need themselves, so vCPUs touching different devices do not contend.

use std::sync::Arc;

/// A device reachable through loads and stores in the MMIO hole.
pub trait MmioDevice: Send + Sync {
    /// `offset` is relative to the range's base; `data` is 1, 2, 4 or 8 bytes.
    fn read(&self, offset: u64, data: &mut [u8]);
    fn write(&self, offset: u64, data: &[u8]);
}

struct Range {
    base: u64,
    len: u64,
    device: Arc<dyn MmioDevice>,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("MMIO range {base:#x}+{len:#x} overlaps a device already registered, or is empty")]
pub struct MmioOverlapError {
    pub base: u64,
    pub len: u64,
}

/// The MMIO bus. Built before the vCPUs start, then only read.
#[derive(Default)]
pub struct MmioBus {
    ranges: Vec<Range>,
}

impl MmioBus {
    pub fn register(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<dyn MmioDevice>,
    ) -> Result<(), MmioOverlapError> {
        let err = MmioOverlapError { base, len };
        let end = base.checked_add(len).ok_or(err.clone())?;
        let overlaps = self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < end);
        if overlaps || len == 0 {
            return Err(err);
        }
        self.ranges.push(Range { base, len, device });
        self.ranges.sort_by_key(|r| r.base);
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<&Range> {
        let i = self.ranges.partition_point(|r| r.base <= addr);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (addr - r.base < r.len).then_some(r)
    }

    /// Reads at `addr`; unclaimed addresses read as all ones, like an empty bus.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some(r) => r.device.read(addr - r.base, data),
            None => data.fill(0xff),
        }
    }

    /// Writes at `addr`; writes to unclaimed addresses are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some(r) = self.find(addr) {
            r.device.write(addr - r.base, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, u8)>>);

    impl MmioDevice for Recorder {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.lock().expect("lock").push((offset, data[0]));
        }
    }

    #[test]
    fn dispatches_by_range() {
        let dev = Arc::new(Recorder::default());
        let mut bus = MmioBus::default();
        bus.register(0xe000_0000, 0x1000, dev.clone())
            .expect("register");
        let mut d = [0u8; 4];
        bus.read(0xe000_0010, &mut d);
        assert_eq!(d, [0x10; 4]);
        bus.read(0xe000_1000, &mut d);
        assert_eq!(d, [0xff; 4]);
        bus.write(0xe000_0fff, &[7]);
        bus.write(0xdfff_ffff, &[7]);
        assert_eq!(*dev.0.lock().expect("lock"), vec![(0xfff, 7)]);
    }

    #[test]
    fn refuses_overlaps_and_wraparound() {
        let mut bus = MmioBus::default();
        let dev = || Arc::new(Recorder::default());
        bus.register(0x1000, 0x1000, dev()).expect("first");
        assert!(bus.register(0x1fff, 1, dev()).is_err());
        assert!(bus.register(0x0, 0x1001, dev()).is_err());
        assert!(bus.register(u64::MAX, 2, dev()).is_err());
        assert!(bus.register(0x2000, 1, dev()).is_ok());
    }
}
