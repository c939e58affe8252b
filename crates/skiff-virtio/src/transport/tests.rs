//! The transport driven the way Linux's virtio_pci_modern drives it, over a real queue in
//! test memory: negotiation, queue setup, MSI-X, a request, a malformed chain, a reset.

use std::sync::atomic::AtomicUsize;

use skiff_pci::regs::{CAPABILITIES, CAP_ID_MSIX};
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::*;
use crate::device::DeviceState;
use crate::devices::rng::Rng;
use crate::features::*;

#[derive(Default)]
struct Router {
    injected: Mutex<Vec<u16>>,
    routes: AtomicUsize,
}

impl MsiRouter for Router {
    fn set_route(&self, _vector: u16, _message: skiff_pci::MsiMessage) {
        self.routes.fetch_add(1, Ordering::SeqCst);
    }
    fn inject(&self, vector: u16) {
        lock(&self.injected).push(vector);
    }
}

fn w(dev: &mut VirtioPciDevice, offset: u64, value: u64, len: usize) {
    dev.bar_write(0, offset, &value.to_le_bytes()[..len]);
}

fn r(dev: &mut VirtioPciDevice, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    dev.bar_read(0, offset, &mut b[..len]);
    u64::from_le_bytes(b)
}

/// The capability list, as (type or MSI-X marker, config offset).
fn caps(dev: &VirtioPciDevice) -> Vec<(u8, u8, usize)> {
    let mut out = Vec::new();
    let mut at = (dev.config().read_dword(CAPABILITIES) & 0xff) as usize;
    while at != 0 {
        let head = dev.config().read_dword(at);
        let (id, next, cfg_type) = (head as u8, (head >> 8) as u8, (head >> 24) as u8);
        out.push((id, cfg_type, at));
        at = usize::from(next);
    }
    out
}

#[test]
fn a_driver_sets_up_the_device_and_a_bad_chain_needs_a_reset() {
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem"));
    let router = Arc::new(Router::default());
    let rng = Arc::new(Mutex::new(Rng::with_source(Box::new(|b: &mut [u8]| {
        b.fill(7);
        Ok(())
    }))));
    let mut dev =
        VirtioPciDevice::new(rng.clone(), mem.clone(), router.clone(), None).expect("device");
    assert_eq!(dev.config().read_dword(0), 0x1044_1af4);
    let found = caps(&dev);
    let kinds: Vec<_> = found.iter().map(|c| (c.0, c.1)).collect();
    assert!(
        kinds.contains(&(CAP_ID_VENDOR, CAP_COMMON))
            && kinds.contains(&(CAP_ID_VENDOR, CAP_NOTIFY))
    );
    let msix_cap = found.iter().find(|c| c.0 == CAP_ID_MSIX).expect("MSI-X").2;

    // Negotiate: ACKNOWLEDGE, DRIVER, VERSION_1, FEATURES_OK.
    w(
        &mut dev,
        0x14,
        u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER),
        1,
    );
    w(&mut dev, 0x08, 1, 4);
    w(&mut dev, 0x0c, 1, 4); // VERSION_1 is bit 32
    w(
        &mut dev,
        0x14,
        u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
        1,
    );
    assert_ne!(r(&mut dev, 0x14, 1) as u8 & STATUS_FEATURES_OK, 0);

    // MSI-X on, vectors 0 (config) and 1 (queue) unmasked.
    dev.config_mut()
        .write(msix_cap + 2, &0x8000u16.to_le_bytes());
    for v in 0..2u64 {
        let entry = MSIX_TABLE_OFFSET + v * 16;
        w(&mut dev, entry, 0xfee0_0000, 4);
        w(&mut dev, entry + 8, 0x40 + v, 4);
        w(&mut dev, entry + 12, 0, 4);
    }
    w(&mut dev, 0x10, 0, 2);

    // Queue 0 in test memory.
    let vq = MockSplitQueue::new(&*mem, 16);
    w(&mut dev, 0x16, 0, 2);
    w(&mut dev, 0x18, 16, 2);
    w(&mut dev, 0x1a, 1, 2);
    w(&mut dev, 0x20, vq.desc_table_addr().0, 8);
    w(&mut dev, 0x28, vq.avail_addr().0, 8);
    w(&mut dev, 0x30, vq.used_addr().0, 8);
    w(&mut dev, 0x1c, 1, 2);
    let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
    w(&mut dev, 0x14, u64::from(ok), 1);
    assert!(lock(&rng).state().is_active());

    // One good request: 32 bytes of entropy, used ring advanced, vector 1 raised.
    let good = RawDescriptor::from(Descriptor::new(0x8000, 32, VRING_DESC_F_WRITE as u16, 0));
    vq.add_desc_chains(&[good], 0).expect("chain");
    lock(&rng).process_queue(0);
    let used_idx: u16 = mem
        .read_obj(vq.used_addr().unchecked_add(2))
        .expect("used idx");
    assert_eq!(used_idx, 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x801f)).expect("byte"), 7);
    assert_eq!(*lock(&router.injected), vec![1]);
    assert_eq!(
        r(&mut dev, ISR_OFFSET, 1),
        1,
        "ISR says queue, and clears on read"
    );
    assert_eq!(r(&mut dev, ISR_OFFSET, 1), 0);

    // A chain pointing outside RAM: NEEDS_RESET and a configuration interrupt.
    let bad = RawDescriptor::from(Descriptor::new(
        0xff_0000,
        0x2_0000,
        VRING_DESC_F_WRITE as u16,
        0,
    ));
    vq.add_desc_chains(&[bad], 1).expect("chain");
    lock(&rng).process_queue(0);
    assert!(lock(&rng).state().needs_reset());
    assert_ne!(r(&mut dev, 0x14, 1) as u8 & STATUS_NEEDS_RESET, 0);
    assert_eq!(*lock(&router.injected), vec![1, 0]);
    // Further notifications are ignored until the driver resets the device.
    lock(&rng).process_queue(0);
    assert_eq!(*lock(&router.injected), vec![1, 0]);

    w(&mut dev, 0x14, 0, 1);
    assert_eq!(r(&mut dev, 0x14, 1), 0);
    assert!(matches!(lock(&rng).state(), DeviceState::Inactive));
}

#[test]
fn rings_outside_ram_fail_activation_without_panicking() {
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem"));
    let rng = Arc::new(Mutex::new(Rng::default()));
    let mut dev =
        VirtioPciDevice::new(rng.clone(), mem, Arc::new(Router::default()), None).expect("device");
    w(&mut dev, 0x08, 1, 4);
    w(&mut dev, 0x0c, 1, 4);
    w(
        &mut dev,
        0x14,
        u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
        1,
    );
    w(&mut dev, 0x20, 0xffff_0000_0000, 8);
    w(&mut dev, 0x1c, 1, 2);
    let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
    w(&mut dev, 0x14, u64::from(ok), 1);
    assert!(!lock(&rng).state().is_active());
    assert_ne!(r(&mut dev, 0x14, 1) as u8 & STATUS_NEEDS_RESET, 0);
    // Every BAR offset answers without panicking.
    for offset in (0..BAR_SIZE).step_by(2) {
        let _ = r(&mut dev, offset, 2);
    }
}
