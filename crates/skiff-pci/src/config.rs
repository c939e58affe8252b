//! A type-0 configuration space: 256 bytes of registers with a write mask per byte, BARs
//! whose size falls out of the mask (write all ones, read back the size mask), and a
//! capability list. MSI-X's message control register is kept in the shared [`MsixState`].

use std::sync::{Arc, Mutex};

use crate::msix::{lock, MsixState};
use crate::regs::*;
use crate::PciError;

pub const CONFIG_SPACE_SIZE: usize = 256;
pub const NUM_BARS: usize = 6;
/// Smallest BAR Skiff hands out: one page, so that BARs never share a page.
const MIN_BAR_SIZE: u64 = 4096;

const BAR_MEM_64: u32 = 0b10 << 1;
const BAR_PREFETCHABLE: u32 = 1 << 3;
const BAR_ADDRESS_MASK: u32 = !0xf;
const MSIX_CAP_LEN: usize = 12;

/// The identity of a function: the read-only part of its header.
#[derive(Clone, Copy, Debug)]
pub struct PciHeader {
    pub vendor_id: u16,
    pub device_id: u16,
    /// Class, subclass and programming interface, as 0xCCSSPP.
    pub class_code: u32,
    pub revision: u8,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Memory32,
    /// Takes two BAR registers: this one and the next.
    Memory64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSpec {
    pub size: u64,
    pub kind: BarKind,
    pub prefetchable: bool,
}

pub struct ConfigSpace {
    regs: [u8; CONFIG_SPACE_SIZE],
    wmask: [u8; CONFIG_SPACE_SIZE],
    bars: [Option<BarSpec>; NUM_BARS],
    /// Register slots taken by the upper half of a 64-bit BAR.
    bar_upper: [bool; NUM_BARS],
    /// Where the next capability goes, and the pointer that must link to it.
    next_cap: usize,
    last_link: usize,
    msix: Option<(usize, Arc<Mutex<MsixState>>)>,
}

impl ConfigSpace {
    pub fn new(header: &PciHeader) -> Self {
        let mut c = ConfigSpace {
            regs: [0; CONFIG_SPACE_SIZE],
            wmask: [0; CONFIG_SPACE_SIZE],
            bars: [None; NUM_BARS],
            bar_upper: [false; NUM_BARS],
            next_cap: FIRST_CAPABILITY,
            last_link: CAPABILITIES,
            msix: None,
        };
        c.put16(VENDOR_ID, header.vendor_id);
        c.put16(VENDOR_ID + 2, header.device_id);
        c.regs[REVISION] = header.revision;
        c.put32(
            REVISION,
            (header.class_code << 8) | u32::from(header.revision),
        );
        c.put16(SUBSYSTEM_VENDOR, header.subsystem_vendor_id);
        c.put16(SUBSYSTEM_VENDOR + 2, header.subsystem_id);
        // Command: I/O space, memory space, bus master, and INTx disable are the guest's.
        c.wmask[COMMAND] = 0x07;
        c.wmask[COMMAND + 1] = 0x04;
        c.wmask[CACHE_LINE] = 0xff;
        c.wmask[LATENCY_TIMER] = 0xff;
        c.wmask[INTERRUPT_LINE] = 0xff;
        c
    }

    /// Declares BAR `index`; the guest sees its size through the write mask.
    pub fn add_bar(&mut self, index: usize, spec: BarSpec) -> Result<(), PciError> {
        let upper = match spec.kind {
            BarKind::Memory32 => None,
            BarKind::Memory64 => Some(index + 1),
        };
        let free = |i: usize| i < NUM_BARS && self.bars[i].is_none() && !self.bar_upper[i];
        if !free(index) || upper.is_some_and(|u| !free(u)) {
            return Err(PciError::BarIndex(index));
        }
        if !spec.size.is_power_of_two() || spec.size < MIN_BAR_SIZE {
            return Err(PciError::BarSize(spec.size));
        }
        if spec.kind == BarKind::Memory32 && spec.size > 1 << 31 {
            return Err(PciError::BarSize(spec.size));
        }
        let mut flags = 0;
        if spec.kind == BarKind::Memory64 {
            flags |= BAR_MEM_64;
        }
        if spec.prefetchable {
            flags |= BAR_PREFETCHABLE;
        }
        let mask = !(spec.size - 1);
        let reg = BAR0 + 4 * index;
        self.put32(reg, flags);
        self.put_wmask32(reg, mask as u32 & BAR_ADDRESS_MASK);
        if let Some(u) = upper {
            self.put_wmask32(BAR0 + 4 * u, (mask >> 32) as u32);
            self.bar_upper[u] = true;
        }
        self.bars[index] = Some(spec);
        Ok(())
    }

    pub fn bar(&self, index: usize) -> Option<BarSpec> {
        self.bars.get(index).copied().flatten()
    }

    /// The address programmed into BAR `index` (by the VMM or the guest).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let spec = self.bar(index)?;
        let reg = BAR0 + 4 * index;
        let low = u64::from(self.get32(reg) & BAR_ADDRESS_MASK);
        Some(match spec.kind {
            BarKind::Memory32 => low,
            BarKind::Memory64 => low | u64::from(self.get32(reg + 4)) << 32,
        })
    }

    /// Programs BAR `index`, as firmware does before the guest starts.
    pub fn set_bar_address(&mut self, index: usize, address: u64) {
        let Some(spec) = self.bar(index) else { return };
        let reg = BAR0 + 4 * index;
        let flags = self.get32(reg) & !BAR_ADDRESS_MASK;
        self.put32(reg, (address as u32 & BAR_ADDRESS_MASK) | flags);
        if spec.kind == BarKind::Memory64 {
            self.put32(reg + 4, (address >> 32) as u32);
        }
    }

    pub fn memory_enabled(&self) -> bool {
        self.get16(COMMAND) & COMMAND_MEMORY != 0
    }

    /// Where each BAR is decoded: only with memory decoding on and the whole BAR inside
    /// `window` (so a BAR in the middle of being sized decodes nowhere).
    pub fn decoded_bars(&self, window: (u64, u64)) -> [Option<u64>; NUM_BARS] {
        std::array::from_fn(|i| {
            let spec = self.bar(i)?;
            let base = self.bar_address(i)?;
            let end = base.checked_add(spec.size)?;
            (self.memory_enabled() && base >= window.0 && end <= window.1).then_some(base)
        })
    }

    /// Appends a capability with `id`; `body` is everything after the ID and next pointer,
    /// `writable` its write mask (same length, or empty for read-only). Returns its offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, PciError> {
        let len = 2 + body.len();
        let offset = self.next_cap;
        let end = offset + len;
        if end > CONFIG_SPACE_SIZE {
            return Err(PciError::CapabilitySpace(len));
        }
        self.regs[offset] = id;
        self.regs[offset + 1] = 0;
        self.regs[offset + 2..end].copy_from_slice(body);
        for (m, w) in self.wmask[offset + 2..end].iter_mut().zip(writable) {
            *m = *w;
        }
        self.regs[self.last_link] = offset as u8;
        self.last_link = offset + 1;
        self.next_cap = end.next_multiple_of(4);
        let status = self.get16(STATUS) | STATUS_CAP_LIST;
        self.put16(STATUS, status);
        Ok(offset)
    }

    /// Adds the MSI-X capability for `state`, whose table and PBA live in the given BARs.
    pub fn add_msix(
        &mut self,
        state: Arc<Mutex<MsixState>>,
        table: (usize, u32),
        pba: (usize, u32),
    ) -> Result<usize, PciError> {
        let mut body = [0u8; MSIX_CAP_LEN - 2];
        body[2..6].copy_from_slice(&(table.1 | table.0 as u32).to_le_bytes());
        body[6..10].copy_from_slice(&(pba.1 | pba.0 as u32).to_le_bytes());
        let offset = self.add_capability(CAP_ID_MSIX, &body, &[])?;
        self.msix = Some((offset, state));
        Ok(offset)
    }

    /// Reads the aligned dword at `offset & !3`.
    pub fn read_dword(&self, offset: usize) -> u32 {
        let offset = offset & !3;
        if offset + 4 > CONFIG_SPACE_SIZE {
            return 0xffff_ffff;
        }
        let mut value = self.get32(offset);
        if let Some((cap, state)) = &self.msix {
            if offset == *cap {
                let control = lock(state).message_control();
                value = (value & 0xffff) | u32::from(control) << 16;
            }
        }
        value
    }

    /// Writes `data` at byte `offset`; bytes outside the write mask keep their value.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let Some(end) = offset
            .checked_add(data.len())
            .filter(|e| *e <= CONFIG_SPACE_SIZE)
        else {
            return;
        };
        for (i, byte) in (offset..end).zip(data) {
            self.regs[i] = (self.regs[i] & !self.wmask[i]) | (byte & self.wmask[i]);
        }
        if let Some((cap, state)) = &self.msix {
            let control = cap + 2;
            if offset < control + 2 && end > control {
                let mut bytes = lock(state).message_control().to_le_bytes();
                for (i, byte) in (offset..end).zip(data) {
                    if let Some(b) = i.checked_sub(control).and_then(|j| bytes.get_mut(j)) {
                        *b = *byte;
                    }
                }
                lock(state).set_message_control(u16::from_le_bytes(bytes));
            }
        }
    }

    fn get16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.regs[offset], self.regs[offset + 1]])
    }

    fn get32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.regs[offset..offset + 4]);
        u32::from_le_bytes(b)
    }

    fn put16(&mut self, offset: usize, value: u16) {
        self.regs[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn put32(&mut self, offset: usize, value: u32) {
        self.regs[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn put_wmask32(&mut self, offset: usize, value: u32) {
        self.wmask[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msix::tests::Recorder;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            class_code: 0x018000,
            revision: 1,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
        }
    }

    #[test]
    fn header_is_read_only_except_the_guest_bits() {
        let mut c = ConfigSpace::new(&header());
        assert_eq!(c.read_dword(0), 0x1042_1af4);
        assert_eq!(c.read_dword(8), 0x0180_0001);
        c.write(0, &[0, 0, 0, 0]);
        assert_eq!(c.read_dword(0), 0x1042_1af4);
        c.write(COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(c.read_dword(COMMAND) & 0xffff, 0x0407);
        assert!(c.memory_enabled());
        c.write(INTERRUPT_LINE, &[0x0b]);
        assert_eq!(c.read_dword(INTERRUPT_LINE) & 0xff, 0x0b);
        // Out-of-range accesses neither panic nor change anything.
        c.write(254, &[1, 2, 3, 4]);
        assert_eq!(c.read_dword(256), 0xffff_ffff);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = ConfigSpace::new(&header());
        let spec = BarSpec {
            size: 0x8000,
            kind: BarKind::Memory32,
            prefetchable: false,
        };
        c.add_bar(0, spec).expect("bar");
        c.set_bar_address(0, 0xc000_8000);
        assert_eq!(c.read_dword(BAR0), 0xc000_8000);
        c.write(BAR0, &[0xff; 4]);
        assert_eq!(c.read_dword(BAR0), 0xffff_8000);
        c.write(BAR0, &0xc001_0000u32.to_le_bytes());
        assert_eq!(c.bar_address(0), Some(0xc001_0000));
        // Unused BARs read as zero and stay zero.
        c.write(BAR0 + 4, &[0xff; 4]);
        assert_eq!(c.read_dword(BAR0 + 4), 0);
    }

    #[test]
    fn sixty_four_bit_bars_size_both_halves() {
        let mut c = ConfigSpace::new(&header());
        let spec = BarSpec {
            size: 0x1_0000,
            kind: BarKind::Memory64,
            prefetchable: true,
        };
        c.add_bar(2, spec).expect("bar");
        assert_eq!(c.add_bar(3, spec), Err(PciError::BarIndex(3)));
        c.write(BAR0 + 8, &[0xff; 4]);
        c.write(BAR0 + 12, &[0xff; 4]);
        assert_eq!(c.read_dword(BAR0 + 8), 0xffff_000c);
        assert_eq!(c.read_dword(BAR0 + 12), 0xffff_ffff);
        c.set_bar_address(2, 0x1_2345_0000);
        assert_eq!(c.bar_address(2), Some(0x1_2345_0000));
    }

    #[test]
    fn bad_bars_are_refused() {
        let mut c = ConfigSpace::new(&header());
        let bar = |size| BarSpec {
            size,
            kind: BarKind::Memory32,
            prefetchable: false,
        };
        assert_eq!(c.add_bar(0, bar(0x3000)), Err(PciError::BarSize(0x3000)));
        assert_eq!(c.add_bar(0, bar(16)), Err(PciError::BarSize(16)));
        assert_eq!(c.add_bar(6, bar(0x1000)), Err(PciError::BarIndex(6)));
        let wide = BarSpec {
            kind: BarKind::Memory64,
            ..bar(0x1000)
        };
        assert_eq!(c.add_bar(5, wide), Err(PciError::BarIndex(5)));
    }

    #[test]
    fn bars_decode_only_when_enabled_and_inside_the_window() {
        let mut c = ConfigSpace::new(&header());
        let spec = BarSpec {
            size: 0x1000,
            kind: BarKind::Memory32,
            prefetchable: false,
        };
        c.add_bar(0, spec).expect("bar");
        c.set_bar_address(0, 0xc000_0000);
        let window = (0xc000_0000, 0xe000_0000);
        assert_eq!(c.decoded_bars(window)[0], None);
        c.write(COMMAND, &[0x02, 0]);
        assert_eq!(c.decoded_bars(window)[0], Some(0xc000_0000));
        c.write(BAR0, &[0xff; 4]);
        assert_eq!(c.decoded_bars(window)[0], None);
    }

    #[test]
    fn capabilities_chain_and_msix_control_is_live() {
        let mut c = ConfigSpace::new(&header());
        let vendor = c
            .add_capability(
                CAP_ID_VENDOR,
                &[14, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                &[],
            )
            .expect("cap");
        let state = Arc::new(Mutex::new(MsixState::new(4, Arc::new(Recorder::default()))));
        let msix = c
            .add_msix(state.clone(), (0, 0x4000), (0, 0x5000))
            .expect("msix");
        assert_eq!(vendor, 0x40);
        assert_eq!(msix, 0x50);
        assert_eq!(
            c.read_dword(STATUS) >> 16 & u32::from(STATUS_CAP_LIST),
            0x10
        );
        assert_eq!(c.read_dword(CAPABILITIES) & 0xff, 0x40);
        assert_eq!(c.read_dword(0x40) & 0xffff, 0x5009);
        assert_eq!(c.read_dword(0x50), 0x0003_0011);
        assert_eq!(c.read_dword(0x54), 0x4000);
        assert_eq!(c.read_dword(0x58), 0x5000);
        // Enable + function mask through a 16-bit write to message control.
        c.write(0x52, &0xc000u16.to_le_bytes());
        assert_eq!(c.read_dword(0x50), 0xc003_0011);
        assert!(lock(&state).enabled());
        // Table size stays read-only.
        c.write(0x50, &0x8000_ffffu32.to_le_bytes());
        assert_eq!(c.read_dword(0x50), 0x8003_0011);
    }
}
