//! The device end to end over a mock queue with an I/O pool: many requests in flight,
//! each returned once with its data and status, and a reset that waits for them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_T_IN,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::device::{Activation, VirtioDevice};
use crate::features::COMMON;
use crate::interrupt::VirtioInterrupt;
use crate::worker::plain_thread;

#[derive(Default)]
struct Irq {
    queue: AtomicUsize,
    config: AtomicUsize,
}

impl VirtioInterrupt for Irq {
    fn signal_queue(&self, _queue: usize) {
        self.queue.fetch_add(1, Ordering::SeqCst);
    }
    fn signal_config(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
}

const REQUESTS: u16 = 24;
const HEADERS: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;

fn sector_byte(sector: u64) -> u8 {
    (sector * 7 + 1) as u8
}

/// A disk whose reads take a while, counting how many run at once.
struct SlowDisk {
    inner: MemDisk,
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Disk for SlowDisk {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_vectored_at(
        &self,
        bufs: &[vm_memory::VolatileSlice<'_>],
        offset: u64,
    ) -> std::io::Result<()> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.inner.read_vectored_at(bufs, offset)
    }
    fn write_vectored_at(
        &self,
        bufs: &[vm_memory::VolatileSlice<'_>],
        offset: u64,
    ) -> std::io::Result<()> {
        self.inner.write_vectored_at(bufs, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Setup {
    mem: Arc<GuestMemoryMmap>,
    block: Block,
    disk: Arc<SlowDisk>,
    irq: Arc<Irq>,
    used: GuestAddress,
}

/// A pooled block device with `REQUESTS` one-sector reads (sector i into data buffer i)
/// made available.
fn setup(depth: usize) -> Setup {
    let mem = Arc::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("guest memory"),
    );
    let contents: Vec<u8> = (0..64u64)
        .flat_map(|s| std::iter::repeat_n(sector_byte(s), 512))
        .collect();
    let disk = Arc::new(SlowDisk {
        inner: MemDisk::new(contents),
        now: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    });
    let vq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0), 128);
    let mut descs = Vec::new();
    for i in 0..u64::from(REQUESTS) {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        header[8..].copy_from_slice(&i.to_le_bytes());
        let at = GuestAddress(HEADERS + i * 16);
        mem.write_slice(&header, at).expect("header");
        let first = (i * 3) as u16;
        let next = VRING_DESC_F_NEXT as u16;
        let write = VRING_DESC_F_WRITE as u16;
        descs.push(Descriptor::new(at.0, 16, next, first + 1));
        descs.push(Descriptor::new(
            DATA + i * 512,
            512,
            next | write,
            first + 2,
        ));
        descs.push(Descriptor::new(STATUS + i, 1, write, 0));
    }
    let raw: Vec<RawDescriptor> = descs.into_iter().map(RawDescriptor::from).collect();
    vq.add_desc_chains(&raw, 0).expect("chains");
    let used = vq.used_addr().checked_add(2).expect("used idx");
    let irq = Arc::new(Irq::default());
    let pool = IoPool::spawn("test", depth, &plain_thread).expect("pool");
    let dyn_disk: Arc<dyn Disk> = disk.clone();
    let mut block = Block::new(dyn_disk, BlockOptions::default()).with_pool(pool);
    block
        .activate(Activation {
            mem: mem.clone(),
            queues: vec![vq.create_queue().expect("queue")],
            interrupt: irq.clone(),
            features: COMMON | 1 << VIRTIO_BLK_F_FLUSH,
        })
        .expect("activate");
    Setup {
        mem,
        block,
        disk,
        irq,
        used,
    }
}

fn used_idx(s: &Setup) -> u16 {
    s.mem.read_obj(s.used).expect("used idx")
}

#[test]
fn many_requests_run_at_once_and_each_completes_once() {
    let mut s = setup(8);
    s.block.process_queue(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while used_idx(&s) < REQUESTS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        s.block.process_backend(0);
    }
    assert_eq!(used_idx(&s), REQUESTS);
    let most = s.disk.most.load(Ordering::SeqCst);
    assert!((2..=8).contains(&most), "{most} reads at once, depth 8");
    for i in 0..u64::from(REQUESTS) {
        let status: u8 = s.mem.read_obj(GuestAddress(STATUS + i)).expect("status");
        assert_eq!(status, 0, "request {i}");
        let mut data = [0u8; 512];
        s.mem
            .read_slice(&mut data, GuestAddress(DATA + i * 512))
            .expect("data");
        assert_eq!(data, [sector_byte(i); 512], "request {i}");
    }
    assert!(s.irq.queue.load(Ordering::SeqCst) >= 1);
    assert_eq!(s.irq.config.load(Ordering::SeqCst), 0);
}

#[test]
fn a_reset_waits_for_requests_in_flight_and_drops_them() {
    let mut s = setup(4);
    s.block.process_queue(0);
    s.block.reset();
    assert_eq!(
        s.disk.now.load(Ordering::SeqCst),
        0,
        "nothing runs after reset"
    );
    s.block.process_backend(0);
    assert_eq!(used_idx(&s), 0, "nothing returned to a reset queue");
    assert!(!s.block.state().is_active());
}

#[test]
fn features_follow_the_disk_and_read_only() {
    let disk: Arc<dyn Disk> = Arc::new(MemDisk::new(vec![0; 4096]));
    let rw = Block::new(disk.clone(), BlockOptions::default()).features();
    assert!(rw & 1 << VIRTIO_BLK_F_DISCARD != 0 && rw & 1 << VIRTIO_BLK_F_WRITE_ZEROES != 0);
    let ro = Block::new(
        disk,
        BlockOptions {
            read_only: true,
            ..BlockOptions::default()
        },
    )
    .features();
    assert!(ro & 1 << VIRTIO_BLK_F_RO != 0);
    assert_eq!(
        ro & (1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES),
        0
    );
}
