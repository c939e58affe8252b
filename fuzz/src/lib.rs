//! What the queue fuzz targets share: guest memory and a split virtqueue built from the
//! fuzzer's bytes, an interrupt that counts what the device raised, and the invariants
//! every device must keep whatever the driver wrote.
//!
//! Input layout: a 16-byte [`Header`] (queue size, flags, ring positions and a few bytes
//! for the target), then a raw image of guest RAM from address 0. The rings sit at fixed
//! addresses at the start of RAM, so the first few hundred bytes of the image are the
//! avail ring and the descriptor table, and libFuzzer mutates them directly:
//!
//! | guest address | what |
//! | --- | --- |
//! | 0x0010 | avail ring (flags, idx, ring, used_event); not at 0, which virtio-queue refuses |
//! | 0x0220 | descriptor table (16 bytes per descriptor) |
//! | 0x8000 | used ring |
//! | 0x10000-0x1ffff | a hole (not RAM, like the PCI hole) |
//! | 0x20000-0x2ffff | more RAM |

pub mod pci;

use std::num::Wrapping;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use skiff_virtio::device::{Activation, DeviceState};
use skiff_virtio::VirtioInterrupt;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest RAM: two 64 KiB regions with a hole between them.
pub const RAM: [(u64, usize); 2] = [(0, 0x1_0000), (0x2_0000, 0x1_0000)];
pub const AVAIL_RING: u64 = 0x10;
pub const DESC_TABLE: u64 = 0x220;
pub const USED_RING: u64 = 0x8000;
/// The devices' largest queue, and so the most descriptors the table at [`DESC_TABLE`]
/// holds.
pub const MAX_QUEUE: u16 = 256;
pub const HEADER_LEN: usize = 16;

/// The fuzzer's choices besides guest RAM.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// A power of two from 1 to [`MAX_QUEUE`].
    pub queue_size: u16,
    pub event_idx: bool,
    pub next_avail: u16,
    pub next_used: u16,
    /// Free for the target (device options, frame lengths, ...).
    pub knobs: [u8; 10],
}

impl Header {
    fn parse(b: &[u8; HEADER_LEN]) -> Header {
        let mut knobs = [0u8; 10];
        knobs.copy_from_slice(&b[6..]);
        Header {
            queue_size: 1 << (b[0] % 9),
            event_idx: b[1] & 1 != 0,
            next_avail: u16::from_le_bytes([b[2], b[3]]),
            next_used: u16::from_le_bytes([b[4], b[5]]),
            knobs,
        }
    }

    pub fn knob_u16(&self, i: usize) -> u16 {
        u16::from_le_bytes([self.knobs[2 * i], self.knobs[2 * i + 1]])
    }
}

/// Guest memory and one ready queue, laid out from `data`; `None` if `data` is shorter
/// than the header.
pub fn queue_from(data: &[u8]) -> Option<(Header, GuestMemoryMmap, Queue)> {
    let (head, image) = data.split_first_chunk::<HEADER_LEN>()?;
    let header = Header::parse(head);
    let ranges: Vec<(GuestAddress, usize)> =
        RAM.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).ok()?;
    let mut rest = image;
    for &(addr, len) in &RAM {
        let n = rest.len().min(len);
        mem.write_slice(&rest[..n], GuestAddress(addr)).ok()?;
        rest = &rest[n..];
    }
    let mut queue = Queue::new(MAX_QUEUE).ok()?;
    queue.try_set_size(header.queue_size).ok()?;
    queue
        .try_set_desc_table_address(GuestAddress(DESC_TABLE))
        .ok()?;
    queue
        .try_set_avail_ring_address(GuestAddress(AVAIL_RING))
        .ok()?;
    queue
        .try_set_used_ring_address(GuestAddress(USED_RING))
        .ok()?;
    queue.set_event_idx(header.event_idx);
    queue.set_next_avail(header.next_avail);
    queue.set_next_used(header.next_used);
    queue.set_ready(true);
    Some((header, mem, queue))
}

/// Counts the interrupts a device raised.
#[derive(Default)]
pub struct CountingInterrupt {
    pub queue: AtomicUsize,
    pub config: AtomicUsize,
}

impl VirtioInterrupt for CountingInterrupt {
    fn signal_queue(&self, _queue: usize) {
        self.queue.fetch_add(1, Ordering::Relaxed);
    }

    fn signal_config(&self) {
        self.config.fetch_add(1, Ordering::Relaxed);
    }
}

/// An activation with `queue` at index `at` and not-ready queues elsewhere (`count` in all).
pub fn activation(
    mem: Arc<GuestMemoryMmap>,
    queue: Queue,
    at: usize,
    count: usize,
    features: u64,
    interrupt: Arc<CountingInterrupt>,
) -> Activation {
    let mut queue = Some(queue);
    let queues = (0..count)
        .map(|i| match (i == at, queue.take()) {
            (true, Some(q)) => q,
            (_, q) => {
                queue = q;
                Queue::new(MAX_QUEUE).expect("a valid maximum size")
            }
        })
        .collect();
    Activation {
        mem,
        queues,
        interrupt,
        features,
    }
}

/// What every device must guarantee after processing a queue, whatever the driver wrote:
/// a device that gave up (NEEDS_RESET) said so with exactly one configuration interrupt; a
/// device still running returned at most a queue's worth of buffers and its ring
/// positions agree with what it published in the used ring.
pub fn check_state(
    state: &DeviceState,
    index: usize,
    header: &Header,
    mem: &GuestMemoryMmap,
    interrupt: &CountingInterrupt,
) {
    let configs = interrupt.config.load(Ordering::Relaxed);
    match state {
        DeviceState::NeedsReset => assert_eq!(configs, 1, "NEEDS_RESET without one config irq"),
        DeviceState::Active(active) => {
            assert_eq!(configs, 0, "config interrupt from a running device");
            let queue = &active.queues[index];
            check_used(queue, header, mem);
        }
        DeviceState::Inactive => panic!("the device deactivated itself"),
    }
}

/// The used ring's index is the queue's, and the device returned no more buffers than the
/// driver made available.
pub fn check_used(queue: &Queue, header: &Header, mem: &GuestMemoryMmap) {
    let returned = (Wrapping(queue.next_used()) - Wrapping(header.next_used)).0;
    let consumed = (Wrapping(queue.next_avail()) - Wrapping(header.next_avail)).0;
    assert!(returned <= consumed, "{returned} used for {consumed} taken");
    assert!(consumed <= header.queue_size, "{consumed} chains taken");
    if returned > 0 {
        let published = queue
            .used_idx(mem, Ordering::Acquire)
            .expect("the used ring is in RAM");
        assert_eq!(published.0, queue.next_used(), "used idx not published");
    }
}

/// True if `[gpa, gpa + len)` is guest RAM (the balloon must never discard anything else).
pub fn in_ram(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> bool {
    usize::try_from(len)
        .is_ok_and(|len| GuestMemoryBackend::check_range(mem, GuestAddress(gpa), len))
}

pub mod balloon {
    //! The balloon's queues: whatever PFNs or ranges the driver sends, only guest RAM is
    //! ever discarded, in whole pages.

    use std::sync::Arc;

    use skiff_virtio::devices::balloon::{
        queue_roles, Balloon, BalloonOptions, Discard, Role, F_DEFLATE_ON_OOM, F_REPORTING,
        F_STATS_VQ, PAGE_SIZE,
    };
    use skiff_virtio::features::COMMON;
    use skiff_virtio::VirtioDevice;
    use vm_memory::GuestMemoryMmap;

    use super::{activation, check_state, in_ram, queue_from, CountingInterrupt};

    /// A discard path that refuses to be handed anything but whole pages of guest RAM.
    struct CheckedDiscard(Arc<GuestMemoryMmap>);

    impl Discard for CheckedDiscard {
        fn discard(&self, gpa: u64, len: u64) -> std::io::Result<()> {
            assert!(len > 0, "empty discard at {gpa:#x}");
            assert!(
                gpa % PAGE_SIZE == 0 && len % PAGE_SIZE == 0,
                "unaligned discard {gpa:#x}+{len:#x}"
            );
            assert!(
                in_ram(&self.0, gpa, len),
                "discard outside RAM {gpa:#x}+{len:#x}"
            );
            Ok(())
        }
    }

    /// Runs the balloon's `role` queue over the fuzzer's rings. Header knob 0 bit 0 leaves
    /// the stats queue out, which moves the reporting queue from index 3 to 2 (Linux's
    /// numbering).
    pub fn run(data: &[u8], role: Role) {
        let Some((header, mem, queue)) = queue_from(data) else {
            return;
        };
        let mut features = COMMON | 1 << F_DEFLATE_ON_OOM | 1 << F_REPORTING;
        if header.knobs[0] & 1 == 0 {
            features |= 1 << F_STATS_VQ;
        }
        let roles = queue_roles(features);
        let Some(index) = roles.iter().position(|r| *r == role) else {
            return;
        };
        let mem = Arc::new(mem);
        let irq = Arc::new(CountingInterrupt::default());
        let discard = Arc::new(CheckedDiscard(mem.clone()));
        let memory_bytes = super::RAM.iter().map(|r| r.1 as u64).sum();
        let mut balloon = Balloon::new(BalloonOptions::default(), memory_bytes, discard);
        let act = activation(
            mem.clone(),
            queue,
            index,
            roles.len(),
            features,
            irq.clone(),
        );
        balloon.activate(act).expect("balloon activates");
        balloon.process_queue(index);
        if role == Role::Stats {
            // Return the held buffer, as the stats timer does, and take the next one.
            balloon.request_stats();
            balloon.process_queue(index);
        }
        check_state(balloon.state(), index, &header, &mem, &irq);
        let info = balloon.info();
        let ram: u64 = memory_bytes;
        if role != Role::Inflate {
            assert_eq!(info.inflated_bytes, 0);
        }
        if role != Role::Reporting {
            assert_eq!(info.reported_bytes, 0);
        }
        // Inflate de-duplicates PFNs within a request; one request covers at most RAM.
        assert!(info.inflated_bytes <= ram * u64::from(header.queue_size));
    }
}

pub mod spec {
    //! The VM spec parsers' shared property.

    use skiff_api::{SpecError, VmSpec};

    /// A spec that parsed is valid, and reads back from JSON as the same spec.
    pub fn round_trip(parsed: Result<VmSpec, SpecError>) {
        let Ok(spec) = parsed else {
            return;
        };
        spec.validate().expect("a parsed spec is valid");
        let json = serde_json::to_string(&spec).expect("a spec serializes");
        let back = VmSpec::from_json(&json).expect("a written spec parses");
        assert_eq!(back, spec);
    }
}
