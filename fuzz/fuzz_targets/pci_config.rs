//! PCI configuration space through configuration mechanism #1 (ports 0xCF8-0xCFF), as a
//! guest reaches it: whatever it writes to the address and data ports (BARs sized, moved
//! out of the window or over the other function's BAR, the command register, capabilities),
//! the bus keeps its invariants (`skiff_fuzz::pci::Bus::check`) and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_fuzz::pci::{accesses, bus};

fuzz_target!(|data: &[u8]| {
    let mut bus = bus();
    for access in accesses(data) {
        if access.select & 1 != 0 {
            // 0xCF8: which bus, device, function and register 0xCFC reaches.
            bus.root.pio_write(0, &(access.value as u32).to_le_bytes());
        } else {
            let port = 4 + access.offset % 4;
            let width = access.width.min(4);
            if access.write {
                bus.root.pio_write(port, &access.bytes()[..width]);
            } else {
                let mut b = [0u8; 4];
                bus.root.pio_read(port, &mut b[..width]);
            }
        }
        bus.check();
    }
});
