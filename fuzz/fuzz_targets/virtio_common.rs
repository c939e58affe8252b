//! The virtio common configuration as a guest drives it: feature selection and negotiation,
//! status (DRIVER_OK written twice, after a reset, with a bad queue), queue selection, sizes
//! and addresses, vectors; plus notifications and ISR reads. The transport and the device
//! under it (virtio-rng over 1 MiB of zeroed guest memory) never panic, and the bus keeps
//! its invariants (`skiff_fuzz::pci::Bus::check`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_fuzz::pci::{accesses, bus, COMMON_CFG, NOTIFY};

fuzz_target!(|data: &[u8]| {
    let mut bus = bus();
    bus.enable_msix();
    let Some(base) = bus.bar() else {
        return;
    };
    for access in accesses(data) {
        let addr = match access.select & 3 {
            // The 0x38 bytes of the common configuration, and a little past them.
            0 | 1 => base + COMMON_CFG + u64::from(access.offset) % 0x40,
            // The queue notification (no eventfd registrar: the write is all there is).
            2 => base + NOTIFY,
            // The ISR byte (reading it clears it).
            _ => base + 0x1000,
        };
        if access.write {
            bus.root.mmio_write(addr, &access.bytes());
        } else {
            let mut b = vec![0u8; access.width];
            bus.root.mmio_read(addr, &mut b);
        }
        bus.check();
    }
});
