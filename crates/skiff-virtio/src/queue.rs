//! Draining a queue: pop each available chain, check it, hand it to the device's handler,
//! return it on the used ring, and say whether the driver wants an interrupt. Pure over
//! guest memory and queue state, so a fuzz target can drive it without KVM.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::chain::{Chain, ChainError};

/// The queue or one of its chains is malformed: the device must stop (NEEDS_RESET).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("the driver made more buffers available ({available}) than the queue holds ({size})")]
    AvailIndex { available: u16, size: u16 },
    #[error("queue ring access failed: {0}")]
    Ring(virtio_queue::Error),
}

impl From<virtio_queue::Error> for QueueError {
    fn from(e: virtio_queue::Error) -> Self {
        QueueError::Ring(e)
    }
}

/// Processes every available chain of `queue`. `handle` returns how many bytes it wrote
/// into the chain's device-writable buffers. Returns whether the driver must be notified.
pub fn drain<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    max_buffers: usize,
    mut handle: F,
) -> Result<bool, QueueError>
where
    F: FnMut(&GuestMemoryMmap, &Chain) -> Result<u32, QueueError>,
{
    if !queue.ready() {
        return Ok(false);
    }
    let mut used = false;
    loop {
        queue.disable_notification(mem)?;
        check_avail_index(queue, mem)?;
        while let Some(desc_chain) = queue.pop_descriptor_chain(mem) {
            let chain = Chain::parse(desc_chain, mem, max_buffers)?;
            let len = handle(mem, &chain)?;
            queue.add_used(mem, chain.head, len)?;
            used = true;
        }
        // Re-arm notifications; if the driver slipped buffers in meanwhile, go again.
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    Ok(used && queue.needs_notification(mem)?)
}

/// virtio-queue drops an impossible avail index silently; we want to know.
pub(crate) fn check_avail_index(queue: &Queue, mem: &GuestMemoryMmap) -> Result<(), QueueError> {
    let avail = queue.avail_idx(mem, Ordering::Acquire)?;
    let pending = (avail - Wrapping(queue.next_avail())).0;
    if pending > queue.size() {
        return Err(QueueError::AvailIndex {
            available: pending,
            size: queue.size(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    #[test]
    fn drains_all_chains_and_fills_the_used_ring() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem");
        let vq = MockSplitQueue::new(&mem, 16);
        let descs: Vec<RawDescriptor> = (0..3u16)
            .map(|i| {
                RawDescriptor::from(Descriptor::new(
                    0x8000 + u64::from(i) * 0x100,
                    0x100,
                    VRING_DESC_F_WRITE as u16,
                    0,
                ))
            })
            .collect();
        vq.add_desc_chains(&descs, 0).expect("chains");
        let mut q: Queue = vq.create_queue().expect("queue");
        let mut seen = Vec::new();
        let notify = drain(&mut q, &mem, 4, |_, c| {
            seen.push(c.head);
            Ok(7)
        })
        .expect("drain");
        assert!(notify);
        assert_eq!(seen, vec![0, 1, 2]);
        let used_idx: u16 = mem
            .read_obj(vq.used_addr().checked_add(2).expect("addr"))
            .expect("used idx");
        assert_eq!(used_idx, 3);
    }

    #[test]
    fn an_impossible_avail_index_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem");
        let vq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = vq.create_queue().expect("queue");
        mem.write_obj(40u16, vq.avail_addr().checked_add(2).expect("addr"))
            .expect("avail idx");
        let err = drain(&mut q, &mem, 4, |_, _| Ok(0));
        assert!(
            matches!(
                err,
                Err(QueueError::AvailIndex {
                    available: 40,
                    size: 16
                })
            ),
            "{err:?}"
        );
    }
}
