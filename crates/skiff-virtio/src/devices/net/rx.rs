//! Receive: frames from the host side into the driver's receive buffers. Pure over guest
//! memory, queue state and a frame source, so a fuzz target can drive it without a tap.

use std::io;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{HDR_LEN, MAX_CHAIN, MAX_FRAME, NUM_BUFFERS_OFFSET};
use crate::chain::{Chain, Cursor};
use crate::queue::{check_avail_index, pop_chain, QueueError};

/// A frame read from the tap that no receive buffer has taken yet.
pub struct Pending {
    buf: Vec<u8>,
    len: usize,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            buf: vec![0; MAX_FRAME],
            len: 0,
        }
    }
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// Fetches one frame from `source` into `pending`; false when the source has none.
fn fetch(pending: &mut Pending, source: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>) -> bool {
    loop {
        match source(&mut pending.buf) {
            Ok(n) if n > HDR_LEN && n <= pending.buf.len() => {
                pending.len = n;
                return true;
            }
            // A runt (or nothing): drop it and look for the next one.
            Ok(0) => return false,
            Ok(n) => log::debug!("virtio-net: dropping a {n}-byte frame from the tap"),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("virtio-net: reading the tap failed: {e}");
                return false;
            }
        }
    }
}

/// Moves frames from `source` to the receive queue while there are both frames and
/// buffers. A frame that finds no buffer stays in `pending` for the next call (the
/// driver's next receive-queue notification). A frame longer than the buffer chain it
/// meets is dropped, and the buffer kept. Returns whether the driver wants an interrupt.
pub fn deliver(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    pending: &mut Pending,
    source: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
) -> Result<bool, QueueError> {
    if !queue.ready() {
        return Ok(false);
    }
    let mut used = false;
    queue.disable_notification(mem)?;
    loop {
        if pending.is_empty() && !fetch(pending, source) {
            queue.enable_notification(mem)?;
            break;
        }
        check_avail_index(queue, mem)?;
        let Some(desc_chain) = pop_chain(queue, mem)? else {
            // Out of buffers: ask for a notification, unless some arrived meanwhile.
            if queue.enable_notification(mem)? {
                queue.disable_notification(mem)?;
                continue;
            }
            break;
        };
        let chain = Chain::parse(desc_chain, mem, MAX_CHAIN)?;
        let frame = &mut pending.buf[..pending.len];
        if chain.writable_len() < frame.len() as u64 {
            log::debug!(
                "virtio-net: a {}-byte frame does not fit a {}-byte receive buffer; dropped",
                frame.len(),
                chain.writable_len()
            );
            pending.clear();
            queue.go_to_previous_position();
            continue;
        }
        frame[NUM_BUFFERS_OFFSET..HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
        Cursor::new(mem, &chain.writable, chain.head).write_all(frame, "frame")?;
        queue.add_used(mem, chain.head, frame.len() as u32)?;
        pending.clear();
        used = true;
    }
    Ok(used && queue.needs_notification(mem)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    fn frames(list: Vec<Vec<u8>>) -> impl FnMut(&mut [u8]) -> io::Result<usize> {
        let mut it = list.into_iter();
        move |buf| match it.next() {
            Some(f) => {
                buf[..f.len()].copy_from_slice(&f);
                Ok(f.len())
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    #[test]
    fn frames_fill_buffers_and_oversized_ones_are_dropped() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem");
        let vq = MockSplitQueue::new(&mem, 16);
        let descs: Vec<RawDescriptor> = (0..2u16)
            .map(|i| {
                RawDescriptor::from(Descriptor::new(
                    0x8000 + u64::from(i) * 0x1000,
                    100,
                    VRING_DESC_F_WRITE as u16,
                    0,
                ))
            })
            .collect();
        vq.add_desc_chains(&descs, 0).expect("chains");
        let mut q: Queue = vq.create_queue().expect("queue");
        let mut pending = Pending::default();
        let big = vec![7u8; 200];
        let small = vec![9u8; 60];
        let mut source = frames(vec![big, small.clone(), small.clone(), small]);
        let notify = deliver(&mut q, &mem, &mut pending, &mut source).expect("deliver");
        assert!(notify);
        // Two buffers took two small frames; the third waits for a buffer.
        assert!(!pending.is_empty());
        let mut got = [0u8; 60];
        mem.read_slice(&mut got, GuestAddress(0x9000))
            .expect("read");
        assert_eq!(&got[..10], &[9u8; 10]);
        assert_eq!(&got[10..12], &1u16.to_le_bytes());
    }
}
