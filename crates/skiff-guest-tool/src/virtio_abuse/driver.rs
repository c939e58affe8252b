//! A minimal virtio-pci (modern) driver in user space: reset, feature negotiation, split
//! queues in a huge page, posting chains and watching the used rings and the status.
//! Just enough to hand a device exactly the descriptors a test wants, malformed ones
//! included, and to reach its registers (vectors, status) the way a hostile driver would.

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use super::map::{physical_address, Map, Word};
use super::pci::{Location, PciFunction};
use crate::error::{Error, Result};

// Common configuration registers (virtio 1.x §4.1.4.3).
const DEVICE_FEATURE_SELECT: usize = 0x00;
const DEVICE_FEATURE: usize = 0x04;
const DRIVER_FEATURE_SELECT: usize = 0x08;
const DRIVER_FEATURE: usize = 0x0c;
const CONFIG_MSIX_VECTOR: usize = 0x10;
const DEVICE_STATUS: usize = 0x14;
const QUEUE_SELECT: usize = 0x16;
const QUEUE_SIZE: usize = 0x18;
const QUEUE_MSIX_VECTOR: usize = 0x1a;
const QUEUE_ENABLE: usize = 0x1c;
const QUEUE_NOTIFY_OFF: usize = 0x1e;
const QUEUE_DESC: usize = 0x20;
const QUEUE_DRIVER: usize = 0x28;
const QUEUE_DEVICE: usize = 0x30;
pub const NO_VECTOR: u16 = 0xffff;

pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const ISR_CONFIG: u8 = 2;

const F_INDIRECT_DESC: u64 = 1 << 28;
const F_VERSION_1: u64 = 1 << 32;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;

/// The queue size this driver uses (power of two, small: every structure fits a page).
pub const QUEUE: u16 = 16;

/// Layout of the huge page, by offset: queue 0's rings at the start, the others'
/// from [`RINGS`] on, [`RING_SPAN`] apart.
const HUGE_PAGE: usize = 2 << 20;
const DESC: usize = 0x0000;
const AVAIL: usize = 0x1000;
const USED: usize = 0x2000;
/// Indirect tables (room for more than 256 descriptors).
pub const INDIRECT: usize = 0x4000;
/// Data buffers.
pub const DATA: usize = 0x10000;
const RINGS: usize = 0x100000;
const RING_SPAN: usize = 0x4000;
/// Free for buffers of the queues other than 0 (to the end of the huge page).
pub const MORE_DATA: usize = 0x180000;

/// Where queue `index`'s descriptor table starts in the huge page.
fn ring_base(index: u16) -> usize {
    if index == 0 {
        0
    } else {
        RINGS + usize::from(index) * RING_SPAN
    }
}

/// The driver's side of one queue.
struct Ring {
    index: u16,
    base: usize,
    avail_idx: u16,
    notify_off: u16,
}

/// What [`Device::init_with`] sets up.
pub struct Setup<'a> {
    /// Features besides VERSION_1 (and INDIRECT_DESC when offered) to take, if offered.
    pub features: u64,
    /// The queues to enable; the others stay disabled.
    pub queues: &'a [u16],
    /// MSI-X vectors: configuration changes on 0, the n-th queue listed on n + 1. Without,
    /// none (the driver polls).
    pub msix: bool,
}

pub struct Device {
    pci: PciFunction,
    bars: Vec<(u8, Map)>,
    common: Location,
    isr: Location,
    notify: Location,
    notify_multiplier: u32,
    pub mem: Map,
    /// Guest-physical address of `mem`.
    pub phys: u64,
    rings: Vec<Ring>,
}

impl Device {
    /// Takes the PCI function at `address` from its kernel driver and maps what a driver
    /// needs. The device is left untouched until [`Device::init`].
    pub fn open(address: &str) -> Result<Device> {
        let pci = PciFunction::take(address)?;
        let caps = pci.capabilities()?;
        let mut bars: Vec<(u8, Map)> = Vec::new();
        for loc in [caps.common, caps.isr, caps.notify] {
            if !bars.iter().any(|(b, _)| *b == loc.bar) {
                bars.push((loc.bar, pci.map_bar(loc.bar)?));
            }
        }
        let mem = reserve_huge_page()?;
        let phys = physical_address(mem.addr())?;
        // The device sees one address range: the huge page must be physically contiguous.
        let last = physical_address(mem.addr() + HUGE_PAGE - 4096)?;
        if last != phys + (HUGE_PAGE - 4096) as u64 {
            return Err(Error::runtime("the huge page is not physically contiguous"));
        }
        Ok(Device {
            pci,
            bars,
            common: caps.common,
            isr: caps.isr,
            notify: caps.notify,
            notify_multiplier: caps.notify_multiplier,
            mem,
            phys,
            rings: Vec::new(),
        })
    }

    pub fn bar_address(&self) -> Result<u64> {
        self.pci.bar_address(self.common.bar)
    }

    /// The PCI function, for configuration-space abuse.
    pub fn pci(&self) -> &PciFunction {
        &self.pci
    }

    /// BAR `bar` mapped whole (the virtio structures' BAR is mapped at open).
    pub fn bar_map(&self, bar: u8) -> Result<&Map> {
        self.bars
            .iter()
            .find(|(b, _)| *b == bar)
            .map(|(_, m)| m)
            .ok_or_else(|| Error::runtime(format!("BAR {bar} is not mapped")))
    }

    /// The BAR the common configuration is in.
    pub fn common_bar(&self) -> u8 {
        self.common.bar
    }

    fn bar(&self, loc: Location) -> Result<&Map> {
        self.bars
            .iter()
            .find(|(b, _)| *b == loc.bar)
            .map(|(_, m)| m)
            .ok_or_else(|| Error::runtime(format!("BAR {} is not mapped", loc.bar)))
    }

    /// The BAR offset of `offset` inside structure `loc`, which must hold a `T` there.
    fn place<T: Word>(loc: Location, offset: usize) -> Result<usize> {
        let end = offset + std::mem::size_of::<T>();
        if end > loc.length as usize {
            return Err(Error::runtime(format!(
                "register {offset:#x} is past the {}-byte structure the capability announced",
                loc.length
            )));
        }
        Ok(loc.offset as usize + offset)
    }

    fn reg<T: Word>(&self, loc: Location, offset: usize) -> Result<T> {
        self.bar(loc)?.read(Self::place::<T>(loc, offset)?)
    }

    fn set<T: Word>(&self, loc: Location, offset: usize, value: T) -> Result<()> {
        self.bar(loc)?.write(Self::place::<T>(loc, offset)?, value)
    }

    pub fn status(&self) -> Result<u8> {
        self.reg(self.common, DEVICE_STATUS)
    }

    pub fn set_status(&self, status: u8) -> Result<()> {
        self.set(self.common, DEVICE_STATUS, status)
    }

    /// Reads (and so clears) the ISR status byte.
    pub fn isr(&self) -> Result<u8> {
        self.reg(self.isr, 0)
    }

    /// Writes status 0 and waits until the device reads back 0.
    pub fn reset(&mut self) -> Result<()> {
        self.set_status(0)?;
        let done = wait(Duration::from_secs(5), || Ok(self.status()? == 0))?;
        if !done {
            return Err(Error::runtime("the device did not finish its reset"));
        }
        for ring in &mut self.rings {
            ring.avail_idx = 0;
        }
        Ok(())
    }

    /// Resets and initialises the device with queue 0 of [`QUEUE`] entries in the huge
    /// page, no interrupts (the driver polls), and DRIVER_OK.
    pub fn init(&mut self) -> Result<()> {
        self.init_with(&Setup {
            features: 0,
            queues: &[0],
            msix: false,
        })
    }

    /// Resets and initialises the device with `setup`'s features and queues, each of
    /// [`QUEUE`] entries, no interrupts (the driver polls), and DRIVER_OK.
    pub fn init_with(&mut self, setup: &Setup) -> Result<()> {
        self.reset()?;
        self.isr()?;
        // Fresh rings and buffers.
        for offset in (0..DATA + 0x10000).step_by(8) {
            self.mem.write::<u64>(offset, 0)?;
        }
        for q in setup.queues {
            let base = ring_base(*q);
            for offset in (base..base + RING_SPAN).step_by(8) {
                self.mem.write::<u64>(offset, 0)?;
            }
        }
        self.set_status(STATUS_ACKNOWLEDGE)?;
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER)?;
        let offered = self.features()?;
        if offered & F_VERSION_1 == 0 {
            return Err(Error::runtime("the device does not offer VERSION_1"));
        }
        let wanted = F_VERSION_1 | (offered & (F_INDIRECT_DESC | setup.features));
        for half in 0..2u32 {
            self.set(self.common, DRIVER_FEATURE_SELECT, half)?;
            self.set(self.common, DRIVER_FEATURE, (wanted >> (32 * half)) as u32)?;
        }
        let negotiating = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.set_status(negotiating)?;
        if self.status()? & STATUS_FEATURES_OK == 0 {
            return Err(Error::runtime("the device refused the features"));
        }
        let config_vector = if setup.msix { 0 } else { NO_VECTOR };
        self.set(self.common, CONFIG_MSIX_VECTOR, config_vector)?;
        self.rings.clear();
        for (n, &index) in setup.queues.iter().enumerate() {
            self.set(self.common, QUEUE_SELECT, index)?;
            let max: u16 = self.reg(self.common, QUEUE_SIZE)?;
            if max < QUEUE {
                return Err(Error::runtime(format!(
                    "queue {index} holds only {max} entries"
                )));
            }
            self.set(self.common, QUEUE_SIZE, QUEUE)?;
            let vector = if setup.msix { n as u16 + 1 } else { NO_VECTOR };
            self.set(self.common, QUEUE_MSIX_VECTOR, vector)?;
            let base = ring_base(index);
            for (reg, offset) in [
                (QUEUE_DESC, DESC),
                (QUEUE_DRIVER, AVAIL),
                (QUEUE_DEVICE, USED),
            ] {
                let addr = self.phys + (base + offset) as u64;
                self.set(self.common, reg, addr as u32)?;
                self.set(self.common, reg + 4, (addr >> 32) as u32)?;
            }
            let notify_off = self.reg(self.common, QUEUE_NOTIFY_OFF)?;
            self.set(self.common, QUEUE_ENABLE, 1u16)?;
            self.rings.push(Ring {
                index,
                base,
                avail_idx: 0,
                notify_off,
            });
        }
        self.set_status(negotiating | STATUS_DRIVER_OK)?;
        Ok(())
    }

    /// Points queue `index`'s interrupts at MSI-X vector `vector` (a driver may do this
    /// at any time; the device reads it back as the vector it took, or NO_VECTOR).
    pub fn set_queue_vector(&self, index: u16, vector: u16) -> Result<u16> {
        self.set(self.common, QUEUE_SELECT, index)?;
        self.set(self.common, QUEUE_MSIX_VECTOR, vector)?;
        self.reg(self.common, QUEUE_MSIX_VECTOR)
    }

    /// Points configuration interrupts at MSI-X vector `vector`; what the device took.
    pub fn set_config_vector(&self, vector: u16) -> Result<u16> {
        self.set(self.common, CONFIG_MSIX_VECTOR, vector)?;
        self.reg(self.common, CONFIG_MSIX_VECTOR)
    }

    fn features(&self) -> Result<u64> {
        let mut features = 0u64;
        for half in 0..2u32 {
            self.set(self.common, DEVICE_FEATURE_SELECT, half)?;
            let bits: u32 = self.reg(self.common, DEVICE_FEATURE)?;
            features |= u64::from(bits) << (32 * half);
        }
        Ok(features)
    }

    fn ring(&self, queue: u16) -> Result<&Ring> {
        self.rings
            .iter()
            .find(|r| r.index == queue)
            .ok_or_else(|| Error::runtime(format!("queue {queue} is not set up")))
    }

    /// Writes descriptor `index` of queue 0's table.
    pub fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) -> Result<()> {
        self.desc_on(0, index, addr, len, flags, next)
    }

    /// Writes descriptor `index` of queue `queue`'s table.
    pub fn desc_on(
        &self,
        queue: u16,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<()> {
        let at = self.ring(queue)?.base + DESC + 16 * usize::from(index);
        write_desc(&self.mem, at, addr, len, flags, next)
    }

    /// Writes entry `index` of an indirect table at [`INDIRECT`].
    pub fn indirect(&self, index: usize, addr: u64, len: u32, flags: u16, next: u16) -> Result<()> {
        write_desc(&self.mem, INDIRECT + 16 * index, addr, len, flags, next)
    }

    /// Guest-physical address of an offset in the huge page.
    pub fn gpa(&self, offset: usize) -> u64 {
        self.phys + offset as u64
    }

    /// Makes `heads` available on queue 0 and publishes avail idx `idx` (normally the
    /// next index, but a test may publish anything), then notifies it.
    pub fn post(&mut self, heads: &[u16], idx: Option<u16>) -> Result<()> {
        self.post_on(0, heads, idx)
    }

    /// [`Device::post`] on queue `queue`.
    pub fn post_on(&mut self, queue: u16, heads: &[u16], idx: Option<u16>) -> Result<()> {
        let (base, mut avail_idx, notify_off) = {
            let r = self.ring(queue)?;
            (r.base, r.avail_idx, r.notify_off)
        };
        for head in heads {
            let slot = usize::from(avail_idx % QUEUE);
            self.mem.write::<u16>(base + AVAIL + 4 + 2 * slot, *head)?;
            avail_idx = avail_idx.wrapping_add(1);
        }
        if let Some(r) = self.rings.iter_mut().find(|r| r.index == queue) {
            r.avail_idx = avail_idx;
        }
        // Ring entries before the index the device reads them by.
        fence(Ordering::SeqCst);
        self.mem
            .write::<u16>(base + AVAIL + 2, idx.unwrap_or(avail_idx))?;
        fence(Ordering::SeqCst);
        self.kick(queue, notify_off)
    }

    /// Writes queue `queue`'s notification register.
    fn kick(&self, queue: u16, notify_off: u16) -> Result<()> {
        let at = usize::from(notify_off) * self.notify_multiplier as usize;
        self.set::<u16>(self.notify, at, queue)
    }

    pub fn used_idx(&self) -> Result<u16> {
        self.used_idx_on(0)
    }

    pub fn used_idx_on(&self, queue: u16) -> Result<u16> {
        self.mem.read(self.ring(queue)?.base + USED + 2)
    }

    /// Used ring entry `n` of queue 0: (descriptor head, bytes written).
    pub fn used(&self, n: u16) -> Result<(u32, u32)> {
        self.used_on(0, n)
    }

    /// Used ring entry `n` of queue `queue`.
    pub fn used_on(&self, queue: u16, n: u16) -> Result<(u32, u32)> {
        let at = self.ring(queue)?.base + USED + 4 + 8 * usize::from(n % QUEUE);
        Ok((self.mem.read(at)?, self.mem.read(at + 4)?))
    }

    /// Overwrites used ring entry `n` of queue `queue` (to see whether the device writes
    /// it again).
    pub fn set_used_on(&self, queue: u16, n: u16, head: u32) -> Result<()> {
        let at = self.ring(queue)?.base + USED + 4 + 8 * usize::from(n % QUEUE);
        self.mem.write(at, head)
    }
}

fn write_desc(mem: &Map, at: usize, addr: u64, len: u32, flags: u16, next: u16) -> Result<()> {
    mem.write(at, addr)?;
    mem.write(at + 8, len)?;
    mem.write(at + 12, flags)?;
    mem.write(at + 14, next)
}

/// Maps a huge page, first asking the kernel for one more if none is free.
fn reserve_huge_page() -> Result<Map> {
    if let Ok(map) = Map::huge_page(HUGE_PAGE) {
        return Ok(map);
    }
    let knob = "/proc/sys/vm/nr_hugepages";
    let now: u64 = std::fs::read_to_string(knob)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    std::fs::write(knob, (now + 1).to_string())
        .map_err(|e| Error::runtime(format!("write {knob}: {e}")))?;
    Map::huge_page(HUGE_PAGE)
}

/// Polls `done` every millisecond until it holds or `timeout` passes; whether it held.
pub fn wait(timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<bool> {
    let start = Instant::now();
    loop {
        if done()? {
            return Ok(true);
        }
        if start.elapsed() > timeout {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
