//! virtio-net's transmit queue, as `Net::transmit` drains it: each chain's frame is copied
//! out (or dropped if it is a runt or too long) and the chain returned.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_fuzz::{check_used, queue_from};
use skiff_virtio::devices::net::{transmit_frame, HDR_LEN, MAX_CHAIN, MAX_FRAME};
use skiff_virtio::queue::drain;

fuzz_target!(|data: &[u8]| {
    let Some((header, mem, mut queue)) = queue_from(data) else {
        return;
    };
    let mut buf = Vec::new();
    let result = drain(&mut queue, &mem, MAX_CHAIN, |mem, chain| {
        if let Some(frame) = transmit_frame(mem, chain, &mut buf)? {
            assert!(frame.len() > HDR_LEN && frame.len() <= MAX_FRAME);
            assert_eq!(frame.len() as u64, chain.readable_len());
        }
        Ok(0)
    });
    if result.is_ok() {
        check_used(&queue, &header, &mem);
    }
});
