//! MSI-X as a guest drives it: the table and PBA in the BAR (addresses, data, mask bits, any
//! width and offset), the function's MSI-X enable and mask-all bits, and the transport's
//! vector assignments. Routes and interrupts only ever name the function's own vectors
//! (`skiff_fuzz::pci::Bus::check`), and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_fuzz::pci::{accesses, bus, COMMON_CFG, MSIX_TABLE};

fuzz_target!(|data: &[u8]| {
    let mut bus = bus();
    bus.enable_msix();
    let Some(base) = bus.bar() else {
        return;
    };
    for access in accesses(data) {
        let addr = match access.select & 3 {
            // The table (2 vectors of 16 bytes) and the PBA, and what lies past them.
            0 | 1 => base + MSIX_TABLE + u64::from(access.offset) % 0x4000,
            // config_msix_vector (0x10) and queue_msix_vector (0x1a), with queue_select.
            2 => base + COMMON_CFG + [0x10, 0x16, 0x1a][usize::from(access.offset % 3)],
            // Message control: enable and mask-all.
            _ => {
                bus.enable_msix();
                continue;
            }
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
