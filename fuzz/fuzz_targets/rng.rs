//! virtio-rng's queue: whatever the driver put in the rings, the device fills what it may,
//! or gives up with NEEDS_RESET, and never panics.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use skiff_fuzz::{activation, check_state, queue_from, CountingInterrupt};
use skiff_virtio::devices::rng::Rng;
use skiff_virtio::features::COMMON;
use skiff_virtio::VirtioDevice;

fuzz_target!(|data: &[u8]| {
    let Some((header, mem, queue)) = queue_from(data) else {
        return;
    };
    let mem = Arc::new(mem);
    let irq = Arc::new(CountingInterrupt::default());
    let mut rng = Rng::with_source(Box::new(|buf: &mut [u8]| {
        buf.fill(0x5a);
        Ok(())
    }));
    let act = activation(mem.clone(), queue, 0, 1, COMMON, irq.clone());
    rng.activate(act).expect("rng activates");
    rng.process_queue(0);
    check_state(rng.state(), 0, &header, &mem, &irq);
});
