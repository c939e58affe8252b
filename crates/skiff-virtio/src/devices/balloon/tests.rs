//! The device end to end over mock queues: queue roles from the negotiated features,
//! inflate and reporting reaching the discard path, the stats buffer held and returned.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::device::{Activation, VirtioDevice};
use crate::features::COMMON;
use crate::interrupt::VirtioInterrupt;

/// A discard path that records what it was given (shared by the balloon's unit tests).
#[derive(Default)]
pub(super) struct Recorder(pub(super) Mutex<Vec<(u64, u64)>>);

impl Discard for Recorder {
    fn discard(&self, gpa: u64, len: u64) -> std::io::Result<()> {
        self.0.lock().expect("lock").push((gpa, len));
        Ok(())
    }
}

#[derive(Default)]
struct Irq {
    queue: Mutex<Vec<usize>>,
    config: AtomicUsize,
}

impl VirtioInterrupt for Irq {
    fn signal_queue(&self, queue: usize) {
        self.queue.lock().expect("lock").push(queue);
    }
    fn signal_config(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
}

const MEM: u64 = 0x100_0000;

struct Setup {
    mem: Arc<GuestMemoryMmap>,
    balloon: Balloon,
    discarded: Arc<Recorder>,
    irq: Arc<Irq>,
}

fn queue_base(i: usize) -> GuestAddress {
    GuestAddress(0x1_0000 * i as u64)
}

/// A balloon activated with `features`, one mock queue of 16 per negotiated role.
fn setup(features: u64) -> Setup {
    let mem =
        Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("mem"));
    let discarded = Arc::new(Recorder::default());
    let irq = Arc::new(Irq::default());
    let mut balloon = Balloon::new(BalloonOptions::default(), MEM, discarded.clone());
    let queues: Vec<Queue> = (0..queue_roles(features).len())
        .map(|i| {
            MockSplitQueue::create(mem.as_ref(), queue_base(i), 16)
                .create_queue()
                .expect("queue")
        })
        .collect();
    balloon
        .activate(Activation {
            mem: mem.clone(),
            queues,
            interrupt: irq.clone(),
            features,
        })
        .expect("activate");
    Setup {
        mem,
        balloon,
        discarded,
        irq,
    }
}

fn add_chain(mem: &GuestMemoryMmap, queue: usize, descs: &[(u64, u32, u16)]) {
    let vq = MockSplitQueue::create(mem, queue_base(queue), 16);
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let next = if i + 1 < descs.len() { 1 } else { 0 };
            RawDescriptor::from(Descriptor::new(addr, len, flags | next, (i + 1) as u16))
        })
        .collect();
    vq.add_desc_chains(&raw, 0).expect("chain");
}

/// The used ring's index, where MockSplitQueue puts a queue of 16's used ring (base +
/// 0x114). Not through a new MockSplitQueue: creating one clears the rings.
fn used_idx(mem: &GuestMemoryMmap, queue: usize) -> u16 {
    let used = queue_base(queue).checked_add(0x114 + 2).expect("addr");
    mem.read_obj(used).expect("used idx")
}

#[test]
fn inflate_discards_merged_runs_and_ignores_pfns_outside_ram() {
    let mut s = setup(COMMON | 1 << F_STATS_VQ | 1 << F_REPORTING);
    let pfns: Vec<u8> = [0x300u32, 0x301, 0x302, 0x500, 0xffff_fff0]
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .collect();
    s.mem
        .write_slice(&pfns, GuestAddress(0x10_0000))
        .expect("pfns");
    add_chain(&s.mem, 0, &[(0x10_0000, pfns.len() as u32, 0)]);
    s.balloon.process_queue(0);
    assert_eq!(
        *s.discarded.0.lock().expect("lock"),
        vec![(0x30_0000, 0x3000), (0x50_0000, 0x1000)]
    );
    assert_eq!(used_idx(&s.mem, 0), 1);
    assert_eq!(s.balloon.info().inflated_bytes, 0x4000);
    assert!(s.balloon.state().is_active());
}

#[test]
fn reporting_is_queue_3_with_stats_and_queue_2_without() {
    for (features, index) in [
        (COMMON | 1 << F_STATS_VQ | 1 << F_REPORTING, 3),
        (COMMON | 1 << F_REPORTING, 2),
    ] {
        let mut s = setup(features);
        add_chain(
            &s.mem,
            index,
            &[(0x20_0000, 0x20_0000, VRING_DESC_F_WRITE as u16)],
        );
        s.balloon.process_queue(index);
        assert_eq!(
            *s.discarded.0.lock().expect("lock"),
            vec![(0x20_0000, 0x20_0000)],
            "features {features:#x}"
        );
        assert_eq!(s.balloon.info().reported_bytes, 0x20_0000);
    }
}

#[test]
fn the_stats_buffer_is_held_until_stats_are_requested() {
    let mut s = setup(COMMON | 1 << F_STATS_VQ | 1 << F_REPORTING);
    let mut stats = 4u16.to_le_bytes().to_vec(); // free memory
    stats.extend_from_slice(&(123u64 << 20).to_le_bytes());
    s.mem
        .write_slice(&stats, GuestAddress(0x10_0000))
        .expect("stats");
    add_chain(&s.mem, 2, &[(0x10_0000, stats.len() as u32, 0)]);
    s.balloon.process_queue(2);
    assert_eq!(used_idx(&s.mem, 2), 0, "held, not returned");
    let info = s.balloon.info();
    assert_eq!(info.guest.and_then(|g| g.free_memory), Some(123 << 20));
    s.balloon.request_stats();
    assert_eq!(used_idx(&s.mem, 2), 1);
    assert_eq!(*s.irq.queue.lock().expect("lock"), vec![2]);
    // Nothing held any more: a second request does nothing.
    s.balloon.request_stats();
    assert_eq!(used_idx(&s.mem, 2), 1);
}

#[test]
fn a_target_is_checked_against_guest_memory_and_announced() {
    let mut s = setup(COMMON);
    assert_eq!(
        s.balloon.set_target(MEM + 1),
        Err(BalloonError::TargetTooLarge {
            target_mib: 16,
            memory_mib: 16
        })
    );
    s.balloon.set_target(8 << 20).expect("target");
    assert_eq!(s.irq.config.load(Ordering::SeqCst), 1);
    let mut num_pages = [0u8; 4];
    s.balloon.read_config(0, &mut num_pages);
    assert_eq!(u32::from_le_bytes(num_pages), 2048);
    s.balloon.write_config(4, &100u32.to_le_bytes());
    assert_eq!(s.balloon.info().actual_bytes, 100 * PAGE_SIZE);
}

#[test]
fn a_broken_chain_needs_a_reset() {
    let mut s = setup(COMMON);
    // A buffer past the end of guest RAM.
    add_chain(&s.mem, 0, &[(MEM - 4, 8, 0)]);
    s.balloon.process_queue(0);
    assert!(s.balloon.state().needs_reset());
    assert_eq!(s.irq.config.load(Ordering::SeqCst), 1);
    assert!(s.discarded.0.lock().expect("lock").is_empty());
}
