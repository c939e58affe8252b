//! Bus 0 of PCI segment 0: a host bridge at 00:00.0 and up to 31 device functions.
//! Configuration space is reached through the 0xCF8 address / 0xCFC data ports or ECAM;
//! memory accesses inside the bridge window go to whichever BAR decodes them.

use std::sync::{Arc, Mutex};

use crate::config::{ConfigSpace, PciHeader, CONFIG_SPACE_SIZE, NUM_BARS};
use crate::msix::lock;
use crate::{BarAllocator, PciDevice, PciError};

/// ECAM space for one bus: 32 devices × 8 functions × 4 KiB.
pub const ECAM_BUS_SIZE: u64 = 1 << 20;
const SLOTS: usize = 32;
const CONFIG_ENABLE: u32 = 1 << 31;
/// Red Hat's ID for a generic host bridge, which is what this is.
const HOST_BRIDGE: PciHeader = PciHeader {
    vendor_id: 0x1b36,
    device_id: 0x0008,
    class_code: 0x06_00_00,
    revision: 0,
    subsystem_vendor_id: 0x1b36,
    subsystem_id: 0,
};

type SharedDevice = Arc<Mutex<dyn PciDevice>>;

struct HostBridge(ConfigSpace);

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.0
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.0
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// A BAR currently decoded somewhere in the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Decoded {
    base: u64,
    size: u64,
    slot: usize,
    bar: usize,
}

pub struct PciRoot {
    slots: Vec<Option<SharedDevice>>,
    /// The 0xCF8 register: which function and register 0xCFC reaches.
    config_address: u32,
    /// The bridge's memory window `[start, end)`, where BARs live.
    window: (u64, u64),
    allocator: BarAllocator,
    decoded: Vec<Decoded>,
}

impl PciRoot {
    pub fn new(window_start: u64, window_end: u64) -> Self {
        let mut slots: Vec<Option<SharedDevice>> = (0..SLOTS).map(|_| None).collect();
        slots[0] = Some(Arc::new(Mutex::new(HostBridge(ConfigSpace::new(
            &HOST_BRIDGE,
        )))));
        PciRoot {
            slots,
            config_address: 0,
            window: (window_start, window_end),
            allocator: BarAllocator::new(window_start, window_end),
            decoded: Vec::new(),
        }
    }

    /// Puts `device` in the next free slot and assigns its BARs, as firmware would.
    /// Returns the slot (device number).
    pub fn add_device(&mut self, device: SharedDevice) -> Result<u8, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::SlotsFull)?;
        {
            let mut dev = lock(&device);
            for bar in 0..NUM_BARS {
                if let Some(spec) = dev.config().bar(bar) {
                    let base = self.allocator.allocate(spec.size)?;
                    dev.config_mut().set_bar_address(bar, base);
                }
            }
        }
        self.slots[slot] = Some(device);
        self.update_decoding(slot, [None; NUM_BARS]);
        Ok(slot as u8)
    }

    /// A read from the 0xCF8-0xCFF port range; `offset` is relative to 0xCF8.
    pub fn pio_read(&mut self, offset: u16, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.config_address.to_le_bytes()),
            (4..=7, _) => match self.pio_target() {
                Some((slot, reg)) => self.config_read(slot, reg + usize::from(offset - 4), data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    pub fn pio_write(&mut self, offset: u16, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.config_address = u32::from_le_bytes(b);
            }
            (4..=7, _) => {
                if let Some((slot, reg)) = self.pio_target() {
                    self.config_write(slot, reg + usize::from(offset - 4), data);
                }
            }
            // Byte and word writes to 0xCF8 are not configuration mechanism #1.
            _ => {}
        }
    }

    /// An access at `offset` inside the ECAM window (bus 0 only).
    pub fn ecam_read(&mut self, offset: u64, data: &mut [u8]) {
        match ecam_target(offset) {
            Some((slot, reg)) if reg < CONFIG_SPACE_SIZE => self.config_read(slot, reg, data),
            // Extended configuration space of a conventional PCI function: empty.
            Some((slot, _)) if self.slots[slot].is_some() => data.fill(0),
            _ => data.fill(0xff),
        }
    }

    pub fn ecam_write(&mut self, offset: u64, data: &[u8]) {
        if let Some((slot, reg)) = ecam_target(offset) {
            if reg < CONFIG_SPACE_SIZE {
                self.config_write(slot, reg, data);
            }
        }
    }

    /// An access at guest-physical `addr` inside the bridge window. Returns false if no BAR
    /// decodes it (reads then float high).
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((d, device)) = self.decode(addr) else {
            data.fill(0xff);
            return false;
        };
        lock(device).bar_read(d.bar, addr - d.base, data);
        true
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((d, device)) = self.decode(addr) else {
            return false;
        };
        lock(device).bar_write(d.bar, addr - d.base, data);
        true
    }

    fn decode(&self, addr: u64) -> Option<(Decoded, &SharedDevice)> {
        let d = *self
            .decoded
            .iter()
            .find(|d| addr >= d.base && addr - d.base < d.size)?;
        Some((d, self.slots[d.slot].as_ref()?))
    }

    /// The function 0xCFC points at, if it is on bus 0 function 0, and the dword register.
    fn pio_target(&self) -> Option<(usize, usize)> {
        let a = self.config_address;
        let bus = (a >> 16) & 0xff;
        let slot = ((a >> 11) & 0x1f) as usize;
        let function = (a >> 8) & 0x7;
        (a & CONFIG_ENABLE != 0 && bus == 0 && function == 0).then_some((slot, (a & 0xfc) as usize))
    }

    fn config_read(&self, slot: usize, reg: usize, data: &mut [u8]) {
        let Some(device) = &self.slots[slot] else {
            data.fill(0xff);
            return;
        };
        let dev = lock(device);
        for (i, byte) in data.iter_mut().enumerate() {
            let at = reg + i;
            *byte = dev.config().read_dword(at).to_le_bytes()[at % 4];
        }
    }

    fn config_write(&mut self, slot: usize, reg: usize, data: &[u8]) {
        let Some(device) = self.slots[slot].clone() else {
            return;
        };
        let before = lock(&device).config().decoded_bars(self.window);
        lock(&device).config_mut().write(reg, data);
        self.update_decoding(slot, before);
    }

    /// Recomputes where `slot`'s BARs decode and tells the device about any move.
    fn update_decoding(&mut self, slot: usize, before: [Option<u64>; NUM_BARS]) {
        let Some(device) = self.slots[slot].clone() else {
            return;
        };
        let mut dev = lock(&device);
        let after = dev.config().decoded_bars(self.window);
        if after == before {
            return;
        }
        self.decoded.retain(|d| d.slot != slot);
        for (bar, base) in after.iter().enumerate() {
            if let (Some(base), Some(spec)) = (base, dev.config().bar(bar)) {
                self.decoded.push(Decoded {
                    base: *base,
                    size: spec.size,
                    slot,
                    bar,
                });
            }
            if before[bar] != after[bar] {
                dev.bar_moved(bar, before[bar], after[bar]);
            }
        }
    }
}

fn ecam_target(offset: u64) -> Option<(usize, usize)> {
    if offset >= ECAM_BUS_SIZE || (offset >> 12) & 0x7 != 0 {
        return None;
    }
    Some((((offset >> 15) & 0x1f) as usize, (offset & 0xfff) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BarKind, BarSpec};

    const WINDOW: (u64, u64) = (0xc000_0000, 0xe000_0000);

    struct TestDevice {
        config: ConfigSpace,
        bar0: [u8; 16],
        moves: Vec<(usize, Option<u64>, Option<u64>)>,
    }

    impl PciDevice for TestDevice {
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.bar0[o..o + data.len()]);
        }
        fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.bar0[o..o + data.len()].copy_from_slice(data);
        }
        fn bar_moved(&mut self, bar: usize, old: Option<u64>, new: Option<u64>) {
            self.moves.push((bar, old, new));
        }
    }

    fn root_with_device() -> (PciRoot, Arc<Mutex<TestDevice>>) {
        let mut config = ConfigSpace::new(&PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1044,
            class_code: 0xff_00_00,
            revision: 1,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
        });
        let spec = BarSpec {
            size: 0x4000,
            kind: BarKind::Memory32,
            prefetchable: false,
        };
        config.add_bar(0, spec).expect("bar");
        let dev = Arc::new(Mutex::new(TestDevice {
            config,
            bar0: [0; 16],
            moves: Vec::new(),
        }));
        let mut root = PciRoot::new(WINDOW.0, WINDOW.1);
        assert_eq!(root.add_device(dev.clone()), Ok(1));
        (root, dev)
    }

    fn cf8(root: &mut PciRoot, slot: u32, reg: u32) {
        root.pio_write(0, &(CONFIG_ENABLE | slot << 11 | reg).to_le_bytes());
    }

    fn read32(root: &mut PciRoot, slot: u32, reg: u32) -> u32 {
        cf8(root, slot, reg);
        let mut d = [0u8; 4];
        root.pio_read(4, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn port_config_access_finds_the_bridge_and_devices() {
        let (mut root, _dev) = root_with_device();
        // Linux's probe for mechanism #1: the address register reads back.
        root.pio_write(0, &0x8000_0000u32.to_le_bytes());
        let mut d = [0u8; 4];
        root.pio_read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
        assert_eq!(read32(&mut root, 0, 0), 0x0008_1b36);
        assert_eq!(read32(&mut root, 0, 8) >> 8, 0x06_00_00);
        assert_eq!(read32(&mut root, 1, 0), 0x1044_1af4);
        assert_eq!(read32(&mut root, 2, 0), 0xffff_ffff);
        // Byte reads at 0xCFC + n pick byte n of the dword.
        cf8(&mut root, 1, 0);
        let mut b = [0u8; 1];
        root.pio_read(7, &mut b);
        assert_eq!(b, [0x10]);
        // Function 1 and other buses are empty; so is an access with the enable bit off.
        root.pio_write(0, &(CONFIG_ENABLE | 1 << 11 | 1 << 8).to_le_bytes());
        root.pio_read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        root.pio_write(0, &(1u32 << 11).to_le_bytes());
        root.pio_read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn ecam_reaches_the_same_registers() {
        let (mut root, _dev) = root_with_device();
        let mut d = [0u8; 4];
        root.ecam_read(1 << 15, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1044_1af4);
        root.ecam_read((1 << 15) + 0x100, &mut d);
        assert_eq!(d, [0; 4], "extended space of a present device");
        root.ecam_read(5 << 15, &mut d);
        assert_eq!(d, [0xff; 4]);
        root.ecam_read(ECAM_BUS_SIZE, &mut d);
        assert_eq!(d, [0xff; 4], "bus 1");
        root.ecam_write((1 << 15) + 4, &[0x02, 0]);
        root.ecam_read((1 << 15) + 4, &mut d);
        assert_eq!(d[0], 0x02);
    }

    #[test]
    fn bars_are_assigned_decoded_and_moved() {
        let (mut root, dev) = root_with_device();
        let base = u64::from(read32(&mut root, 1, 0x10));
        assert_eq!(base, WINDOW.0);
        let mut d = [0u8; 4];
        assert!(!root.mmio_read(base, &mut d), "memory decoding still off");
        cf8(&mut root, 1, 4);
        root.pio_write(4, &[0x02, 0]);
        assert!(root.mmio_write(base + 4, &[1, 2, 3, 4]));
        assert!(root.mmio_read(base + 4, &mut d));
        assert_eq!(d, [1, 2, 3, 4]);
        // Sizing: all ones, read the mask, restore.
        cf8(&mut root, 1, 0x10);
        root.pio_write(4, &[0xff; 4]);
        assert_eq!(read32(&mut root, 1, 0x10), 0xffff_c000);
        assert!(
            !root.mmio_read(base, &mut d),
            "a BAR being sized decodes nowhere"
        );
        cf8(&mut root, 1, 0x10);
        root.pio_write(4, &0xc010_0000u32.to_le_bytes());
        assert!(root.mmio_read(0xc010_0004, &mut d));
        assert_eq!(
            lock(&dev).moves,
            vec![
                (0, None, Some(base)),
                (0, Some(base), None),
                (0, None, Some(0xc010_0000))
            ]
        );
    }

    #[test]
    fn short_or_odd_accesses_never_panic() {
        let (mut root, _dev) = root_with_device();
        cf8(&mut root, 1, 0xfc);
        let mut d = [0u8; 4];
        root.pio_read(7, &mut d); // runs past the end of config space
        root.pio_write(7, &[1, 2, 3, 4]);
        root.pio_write(2, &[1, 2]);
        root.ecam_read(u64::MAX, &mut d);
        root.ecam_write((1 << 15) + 0xfff, &[1, 2, 3, 4]);
        assert!(!root.mmio_read(0, &mut d));
    }
}
