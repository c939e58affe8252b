//! Dispatch of port I/O exits to devices by address range.

use std::sync::{Arc, Mutex};

/// A device reachable through `in`/`out` instructions.
pub trait PortDevice: Send {
    /// `offset` is relative to the device's base port. `data` is 1, 2 or 4 bytes.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]);
}

struct Range {
    base: u16,
    len: u16,
    device: Arc<Mutex<dyn PortDevice>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("I/O ports {base:#x}+{len} overlap a device already registered")]
pub struct OverlapError {
    pub base: u16,
    pub len: u16,
}

/// The port I/O bus. Built once before the vCPUs start, then only read.
#[derive(Default)]
pub struct IoBus {
    ranges: Vec<Range>,
}

impl IoBus {
    pub fn register(
        &mut self,
        base: u16,
        len: u16,
        device: Arc<Mutex<dyn PortDevice>>,
    ) -> Result<(), OverlapError> {
        let end = u32::from(base) + u32::from(len);
        let overlaps = self.ranges.iter().any(|r| {
            let r_end = u32::from(r.base) + u32::from(r.len);
            u32::from(base) < r_end && u32::from(r.base) < end
        });
        if overlaps || len == 0 {
            return Err(OverlapError { base, len });
        }
        self.ranges.push(Range { base, len, device });
        self.ranges.sort_by_key(|r| r.base);
        Ok(())
    }

    fn find(&self, port: u16) -> Option<&Range> {
        let i = self.ranges.partition_point(|r| r.base <= port);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (u32::from(port) < u32::from(r.base) + u32::from(r.len)).then_some(r)
    }

    /// Reads from `port`; an unclaimed port reads as all ones, like an empty ISA bus.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some(r) => lock(&r.device).read(port - r.base, data),
            None => data.fill(0xff),
        }
    }

    /// Writes to `port`; writes to unclaimed ports are dropped.
    pub fn write(&self, port: u16, data: &[u8]) {
        if let Some(r) = self.find(port) {
            lock(&r.device).write(port - r.base, data);
        } else {
            log::trace!("write to unclaimed port {port:#x}: {data:x?}");
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a panicking vCPU thread must not take
/// the other vCPUs with it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u16, u8)>);

    impl PortDevice for Recorder {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn dispatches_by_range_and_floats_unclaimed_ports() {
        let dev = Arc::new(Mutex::new(Recorder(Vec::new())));
        let mut bus = IoBus::default();
        bus.register(0x3f8, 8, dev.clone()).expect("register");
        let mut data = [0u8; 1];
        bus.read(0x3fa, &mut data);
        assert_eq!(data, [2]);
        bus.read(0x3f7, &mut data);
        assert_eq!(data, [0xff]);
        bus.read(0x400, &mut data);
        assert_eq!(data, [0xff]);
        bus.write(0x3ff, &[9]);
        bus.write(0x400, &[9]);
        assert_eq!(lock(&dev).0, vec![(7, 9)]);
    }

    #[test]
    fn refuses_overlaps() {
        let mut bus = IoBus::default();
        let dev = || Arc::new(Mutex::new(Recorder(Vec::new())));
        bus.register(0x60, 5, dev()).expect("first");
        assert!(bus.register(0x64, 1, dev()).is_err());
        assert!(bus.register(0x5f, 2, dev()).is_err());
        assert!(bus.register(0x65, 1, dev()).is_ok());
        assert!(bus.register(0xffff, 1, dev()).is_ok());
    }
}
