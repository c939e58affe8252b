//! Draining a queue: pop each available chain, check it, hand it to the device's handler,
//! return it on the used ring, and say whether the driver wants an interrupt. Pure over
//! guest memory and queue state, so a fuzz target can drive it without KVM.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
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
    handle: F,
) -> Result<bool, QueueError>
where
    F: FnMut(&GuestMemoryMmap, &Chain) -> Result<u32, QueueError>,
{
    drain_at_most(queue, mem, max_buffers, usize::MAX, handle).map(|d| d.notify)
}

/// What [`drain_at_most`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    /// The driver must be notified.
    pub notify: bool,
    /// It stopped at its limit with chains left (notifications stay off): call it again.
    pub more: bool,
}

/// [`drain`], but at most `max_chains` chains: a driver that keeps the queue full (another
/// vCPU adding chains as fast as they are used) cannot keep the caller, and the device lock
/// it holds, busy without end.
pub fn drain_at_most<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    max_buffers: usize,
    max_chains: usize,
    mut handle: F,
) -> Result<Drained, QueueError>
where
    F: FnMut(&GuestMemoryMmap, &Chain) -> Result<u32, QueueError>,
{
    if !queue.ready() {
        return Ok(Drained {
            notify: false,
            more: false,
        });
    }
    let mut used = 0;
    let mut more = false;
    'drain: loop {
        queue.disable_notification(mem)?;
        check_avail_index(queue, mem)?;
        while let Some(desc_chain) = pop_chain(queue, mem)? {
            let chain = Chain::parse(desc_chain, mem, max_buffers)?;
            let len = handle(mem, &chain)?;
            queue.add_used(mem, chain.head, len)?;
            used += 1;
            if used == max_chains {
                more = true;
                break 'drain;
            }
        }
        // Re-arm notifications; if the driver slipped buffers in meanwhile, go again.
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    Ok(Drained {
        notify: used > 0 && queue.needs_notification(mem)?,
        more,
    })
}

/// The next available chain, if any. Unlike virtio-queue's `pop_descriptor_chain`, a
/// queue that virtio-queue refuses to walk (its avail ring at guest address 0) is an error
/// rather than "nothing available": the notification re-arming loops above would
/// otherwise see the driver's pending chains forever and spin (found by fuzzing).
pub(crate) fn pop_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, QueueError> {
    Ok(queue.iter(mem)?.next())
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

    /// Regression (fuzz target `rng`): an avail ring at address 0 with a chain pending
    /// made `drain` spin forever, holding the device lock.
    #[test]
    fn an_avail_ring_at_address_zero_is_an_error_not_a_hang() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem");
            let mut q = Queue::new(16).expect("queue");
            q.try_set_desc_table_address(GuestAddress(0x1000))
                .expect("desc");
            q.try_set_avail_ring_address(GuestAddress(0))
                .expect("avail");
            q.try_set_used_ring_address(GuestAddress(0x2000))
                .expect("used");
            q.set_event_idx(true);
            q.set_ready(true);
            // One chain pending: avail idx 1.
            mem.write_obj(1u16, GuestAddress(2)).expect("avail idx");
            let _ = tx.send(drain(&mut q, &mem, 4, |_, _| Ok(0)).map_err(|e| e.to_string()));
        });
        let out = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("drain returned");
        assert!(out.is_err(), "{out:?}");
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
