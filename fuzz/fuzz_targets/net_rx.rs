//! virtio-net's receive queue, as `Net::receive` fills it from the tap: frames of the
//! lengths the fuzzer chose go into the driver's buffers, or are dropped if none fits.
#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;
use skiff_fuzz::{check_used, queue_from};
use skiff_virtio::devices::net::{deliver, Pending, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let Some((header, mem, mut queue)) = queue_from(data) else {
        return;
    };
    // Up to five frames, each of a length from the header (runts and giants included).
    let lengths: Vec<usize> = (0..5)
        .map(|i| usize::from(header.knob_u16(i)) % (MAX_FRAME + 16))
        .collect();
    let mut frames = lengths.iter();
    let mut source = |buf: &mut [u8]| match frames.next() {
        Some(&len) => {
            let len = len.min(buf.len());
            buf[..len].fill(0xee);
            Ok(len)
        }
        None => Err(io::ErrorKind::WouldBlock.into()),
    };
    let mut pending = Pending::default();
    if deliver(&mut queue, &mem, &mut pending, &mut source).is_ok() {
        check_used(&queue, &header, &mem);
    }
});
