//! virtio-blk's queue over an in-memory disk: malformed requests end in NEEDS_RESET,
//! impossible ones in an error status, and the disk never changes size.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use skiff_fuzz::{activation, check_state, queue_from, CountingInterrupt};
use skiff_virtio::devices::block::{Block, BlockOptions, MemDisk};
use skiff_virtio::features::COMMON;
use skiff_virtio::VirtioDevice;

/// 16 sectors and a stray half sector (the tail the guest must not see).
const DISK_BYTES: usize = 16 * 512 + 256;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

fuzz_target!(|data: &[u8]| {
    let Some((header, mem, queue)) = queue_from(data) else {
        return;
    };
    let mem = Arc::new(mem);
    let irq = Arc::new(CountingInterrupt::default());
    let options = BlockOptions {
        read_only: header.knobs[0] & 1 != 0,
        id: "fuzz-disk".into(),
    };
    let mut features = COMMON;
    if header.knobs[0] & 2 != 0 {
        features |= VIRTIO_BLK_F_FLUSH;
    }
    let mut block = Block::new(Arc::new(MemDisk::new(vec![0x11u8; DISK_BYTES])), options);
    let act = activation(mem.clone(), queue, 0, 1, features, irq.clone());
    block.activate(act).expect("block activates");
    block.process_queue(0);
    check_state(block.state(), 0, &header, &mem, &irq);
});
