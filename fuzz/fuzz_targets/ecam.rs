//! PCI configuration space through the ECAM window (MMIO, what Linux uses with MCFG): any
//! offset (bus, device, function, register, extended space) and width. The bus keeps its
//! invariants (`skiff_fuzz::pci::Bus::check`) and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_fuzz::pci::{accesses, bus};

fuzz_target!(|data: &[u8]| {
    let mut bus = bus();
    for access in accesses(data) {
        // Bits 16-20 from the selector: devices 0-31 and the bus and function bits above.
        let offset = u64::from(access.offset) | u64::from(access.select) << 16;
        if access.write {
            bus.root.ecam_write(offset, &access.bytes());
        } else {
            let mut b = vec![0u8; access.width];
            bus.root.ecam_read(offset, &mut b);
        }
        bus.check();
    }
});
