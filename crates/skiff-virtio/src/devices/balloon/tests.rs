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

/// Discards slowly (as madvise on a loaded host does), so that a flooding guest outpaces it.
struct SlowDiscard;

impl Discard for SlowDiscard {
    fn discard(&self, _gpa: u64, _len: u64) -> std::io::Result<()> {
        std::thread::sleep(std::time::Duration::from_micros(100));
        Ok(())
    }
}

/// A guest that keeps a balloon queue full (deflate or inflate: the same path), from another
/// vCPU, faster than the device serves it, for two seconds: the device's worker takes
/// `BATCH` chains at a time and lets go of the device in between, so whoever else needs
/// it (the VMM's control thread asking for stats or setting a target) waits milliseconds,
/// not until the guest stops.
#[test]
fn a_queue_flood_never_holds_the_device_for_long() {
    use crate::worker::{plain_thread, Worker};
    use skiff_pci::msix::lock;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const SIZE: u16 = 256;
    let mem =
        Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("mem"));
    // The rings laid out by hand (MockSplitQueue's used ring overlaps a long avail ring).
    let rings: Vec<_> = (0..2)
        .map(|i| {
            let base = queue_base(i);
            (base, base.unchecked_add(0x1000), base.unchecked_add(0x2000))
        })
        .collect();
    let queues = rings
        .iter()
        .map(|&(desc, avail, used)| {
            use virtio_queue::QueueT;
            let mut q = Queue::new(SIZE).expect("queue");
            q.set_size(SIZE);
            q.set_desc_table_address(Some(desc.0 as u32), Some((desc.0 >> 32) as u32));
            q.set_avail_ring_address(Some(avail.0 as u32), Some((avail.0 >> 32) as u32));
            q.set_used_ring_address(Some(used.0 as u32), Some((used.0 >> 32) as u32));
            q.set_ready(true);
            q
        })
        .collect();
    let mut balloon = Balloon::new(BalloonOptions::default(), MEM, Arc::new(SlowDiscard));
    balloon
        .activate(Activation {
            mem: mem.clone(),
            queues,
            interrupt: Arc::new(Irq::default()),
            features: COMMON,
        })
        .expect("activate");
    let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(balloon));
    let notify: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
        .collect();
    let kick = notify[0].try_clone().expect("eventfd");
    let worker =
        Worker::spawn("balloon-test", device.clone(), notify, &plain_thread).expect("worker");

    // Every descriptor of the inflate queue: one PFN.
    let (desc, avail, used) = rings[0];
    mem.write_obj(0x300u32, GuestAddress(0x20_0000))
        .expect("pfn");
    for i in 0..u64::from(SIZE) {
        let d = RawDescriptor::from(Descriptor::new(0x20_0000, 4, 0, 0));
        mem.write_obj(d, desc.unchecked_add(16 * i)).expect("desc");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (mem, stop) = (mem.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut next: u16 = 0;
            while !stop.load(Ordering::Relaxed) {
                let done: u16 = mem
                    .load(used.unchecked_add(2), Ordering::Acquire)
                    .expect("used idx");
                while next.wrapping_sub(done) < SIZE {
                    let slot = u64::from(next % SIZE);
                    mem.write_obj(next % SIZE, avail.unchecked_add(4 + 2 * slot))
                        .expect("ring");
                    next = next.wrapping_add(1);
                }
                // Atomic, as a driver publishes it: the device must never see half of it.
                mem.store(next, avail.unchecked_add(2), Ordering::Release)
                    .expect("avail idx");
                kick.write(1).expect("kick");
            }
        })
    };
    let mut longest = Duration::ZERO;
    let end = Instant::now() + Duration::from_secs(2);
    let mut served: u64 = 0;
    while Instant::now() < end {
        let asked = Instant::now();
        let guard = lock(&device);
        longest = longest.max(asked.elapsed());
        drop(guard);
        served += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("flood");
    worker.stop();
    assert!(
        // A batch of 64 slow chains, on a busy machine; unbounded, the whole flood.
        longest < Duration::from_millis(500),
        "the device was held for {longest:?}"
    );
    assert!(served > 20, "the device was free only {served} times");
    let done: u16 = mem.read_obj(used.unchecked_add(2)).expect("used idx");
    assert!(
        !lock(&device).state().needs_reset(),
        "the flood was well formed"
    );
    assert!(done > 0, "the flood was served too");
}

#[test]
fn a_full_queue_is_taken_a_batch_at_a_time() {
    const SIZE: u16 = 256;
    let mem =
        Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("mem"));
    let vqs: Vec<_> = (0..2)
        .map(|i| MockSplitQueue::create(mem.as_ref(), queue_base(i), SIZE))
        .collect();
    let raw: Vec<RawDescriptor> = (0..200)
        .map(|_| RawDescriptor::from(Descriptor::new(0x20_0000, 4, 0, 0)))
        .collect();
    vqs[1].add_desc_chains(&raw, 0).expect("chains");
    let used = vqs[1].used_addr();
    let queues = vqs
        .iter()
        .map(|vq| vq.create_queue::<Queue>().expect("queue"))
        .collect();
    let mut balloon = Balloon::new(
        BalloonOptions::default(),
        MEM,
        Arc::new(Recorder::default()),
    );
    balloon
        .activate(Activation {
            mem: mem.clone(),
            queues,
            interrupt: Arc::new(Irq::default()),
            features: COMMON,
        })
        .expect("activate");
    let used_idx = || -> u16 { mem.read_obj(used.unchecked_add(2)).expect("used idx") };
    for batch in 1..=3 {
        balloon.process_queue(1);
        assert_eq!(usize::from(used_idx()), batch * super::device::BATCH);
        assert_eq!(balloon.unfinished_queues(), [1], "batch {batch}");
    }
    balloon.process_queue(1);
    assert_eq!(used_idx(), 200);
    assert!(balloon.unfinished_queues().is_empty());
}
