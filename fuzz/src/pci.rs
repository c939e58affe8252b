//! What the PCI fuzz targets share: a root bus with two virtio functions on it (virtio-rng,
//! their BARs assigned as firmware would, so that a guest can move one over the other),
//! driven by a sequence of accesses the fuzzer chooses, and the invariants the bus keeps
//! whatever a guest does to it.
//!
//! Input: a list of accesses, 8 bytes each: a selector byte (bit 0: write; bits 1-2: width
//! 1, 2, 4 or 8 bytes; the rest for the target), a 16-bit offset, a 32-bit value and a spare
//! byte, little-endian.

use std::sync::{Arc, Mutex};

use skiff_pci::msix::lock;
use skiff_pci::{MsiMessage, MsiRouter, PciDevice, PciRoot};
use skiff_virtio::devices::rng::Rng;
use skiff_virtio::transport::VirtioPciDevice;
use skiff_virtio::VirtioDevice;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// The bridge's memory window, where the BAR lives.
pub const WINDOW: (u64, u64) = (0xc000_0000, 0xc010_0000);
/// The virtio transport's layout in BAR 0 (crates/skiff-virtio/src/transport/mod.rs).
pub const COMMON_CFG: u64 = 0x0000;
pub const NOTIFY: u64 = 0x3000;
pub const MSIX_TABLE: u64 = 0x4000;
pub const BAR_SIZE: u64 = 0x8000;
/// The virtio functions' slots (0 is the host bridge).
pub const SLOTS: [u64; 2] = [1, 2];
/// MSI-X vectors of a virtio-rng function: its queue and configuration changes.
pub const VECTORS: u16 = 2;
const VIRTIO_VENDOR: u32 = 0x1af4;

/// One access chosen by the fuzzer.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    pub write: bool,
    pub width: usize,
    /// The selector's upper five bits, for the target to use.
    pub select: u8,
    pub offset: u16,
    pub value: u64,
}

impl Access {
    pub fn bytes(&self) -> Vec<u8> {
        self.value.to_le_bytes()[..self.width].to_vec()
    }
}

pub fn accesses(data: &[u8]) -> impl Iterator<Item = Access> + '_ {
    data.chunks_exact(8).map(|c| {
        let value = u32::from_le_bytes([c[3], c[4], c[5], c[6]]);
        Access {
            write: c[0] & 1 != 0,
            width: 1 << ((c[0] >> 1) & 3),
            select: c[0] >> 3,
            offset: u16::from_le_bytes([c[1], c[2]]),
            value: u64::from(value) | u64::from(c[7]) << 32,
        }
    })
}

/// Counts what the transport sends to the interrupt controller.
#[derive(Default)]
pub struct Router {
    pub routes: Mutex<Vec<(u16, MsiMessage)>>,
    pub injected: Mutex<Vec<u16>>,
}

impl MsiRouter for Router {
    fn set_route(&self, vector: u16, message: MsiMessage) {
        lock(&self.routes).push((vector, message));
    }
    fn inject(&self, vector: u16) {
        lock(&self.injected).push(vector);
    }
}

pub struct Bus {
    pub root: PciRoot,
    pub functions: Vec<Arc<Mutex<VirtioPciDevice>>>,
    /// The first function's interrupts.
    pub router: Arc<Router>,
}

/// A bus with virtio-rng in slots 1 and 2 over 1 MiB of guest memory.
pub fn bus() -> Bus {
    let mem = Arc::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("guest memory"),
    );
    let routers = [Arc::new(Router::default()), Arc::new(Router::default())];
    let mut root = PciRoot::new(WINDOW.0, WINDOW.1);
    let mut functions = Vec::new();
    for (router, want) in routers.iter().zip(SLOTS) {
        let rng: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(Rng::with_source(
            Box::new(|buf: &mut [u8]| {
                buf.fill(0x5a);
                Ok(())
            }),
        )));
        let function = Arc::new(Mutex::new(
            VirtioPciDevice::new(rng, mem.clone(), router.clone(), None).expect("transport"),
        ));
        let slot = root.add_device(function.clone()).expect("slot");
        assert_eq!(u64::from(slot), want);
        functions.push(function);
    }
    let [router, _] = routers;
    Bus {
        root,
        functions,
        router,
    }
}

impl Bus {
    /// Where the first function's BAR 0 is, if the guest left it decoded inside the window.
    pub fn bar(&self) -> Option<u64> {
        lock(&self.functions[0]).config().decoded_bars(WINDOW)[0]
    }

    /// Turns on memory decoding and MSI-X (unmasked) on the first function, as a driver does.
    pub fn enable_msix(&mut self) {
        let slot = SLOTS[0];
        let command = self.config_read(slot, 4, 2) | 0x2;
        self.root.ecam_write(slot << 15 | 4, &command.to_le_bytes()[..2]);
        let mut at = self.config_read(slot, 0x34, 1);
        while at != 0 {
            let head = self.config_read(slot, at, 4);
            if head & 0xff == 0x11 {
                let control = 0x8000u16.to_le_bytes();
                self.root.ecam_write(slot << 15 | (at + 2), &control);
                return;
            }
            at = (head >> 8) & 0xff;
        }
        panic!("the function has no MSI-X capability");
    }

    /// A config-space read through ECAM (bus 0, `slot`, function 0).
    pub fn config_read(&mut self, slot: u64, reg: u64, width: usize) -> u64 {
        let mut b = [0u8; 8];
        self.root.ecam_read(slot << 15 | reg, &mut b[..width]);
        u64::from_le_bytes(b)
    }

    /// What holds after any access: the read-only identity of every function reads as it
    /// was, empty slots float high, and the BAR, when decoded, is inside the window and
    /// answers MMIO reads without a panic.
    pub fn check(&mut self) {
        for slot in SLOTS {
            assert_eq!(
                self.config_read(slot, 0, 4) & 0xffff,
                u64::from(VIRTIO_VENDOR),
                "vendor ID of slot {slot}"
            );
        }
        assert_eq!(self.config_read(5, 0, 4), 0xffff_ffff, "an empty slot");
        for function in &self.functions {
            let bar = lock(function).config().decoded_bars(WINDOW)[0];
            if let Some(base) = bar {
                assert!(
                    base >= WINDOW.0 && base + BAR_SIZE <= WINDOW.1,
                    "BAR at {base:#x}"
                );
                // Decoded by some function (moved over another BAR, either may answer).
                let mut b = [0u8; 4];
                assert!(self.root.mmio_read(base + COMMON_CFG, &mut b), "decoded");
            }
        }
        for (vector, _) in lock(&self.router.routes).iter() {
            assert!(*vector < VECTORS, "a route for vector {vector}");
        }
        for vector in lock(&self.router.injected).iter() {
            assert!(*vector < VECTORS, "an interrupt on vector {vector}");
        }
    }
}
