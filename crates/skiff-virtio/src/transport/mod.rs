//! The virtio-pci modern transport: one PCI function per device, with a single 32-bit
//! memory BAR holding the common configuration, ISR, device configuration, notification
//! area and the MSI-X table and PBA, each announced by a capability.

mod common;
mod interrupt;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use skiff_pci::msix::{lock, MsixState, ENTRY_SIZE};
use skiff_pci::regs::CAP_ID_VENDOR;
use skiff_pci::{BarKind, BarSpec, ConfigSpace, MsiRouter, PciDevice, PciError, PciHeader};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use common::{Action, CommonConfig, QueueConfig, NO_VECTOR};
use interrupt::MsixInterrupt;

use crate::device::{Activation, VirtioDevice};
use crate::features::{RING_EVENT_IDX, STATUS_NEEDS_RESET};
use crate::memory::SharedMemory;

const VIRTIO_VENDOR_ID: u16 = 0x1af4;
/// Modern (non-transitional) devices: 0x1040 + virtio device ID.
const VIRTIO_DEVICE_ID_BASE: u16 = 0x1040;
/// Recommended for non-transitional devices.
const SUBSYSTEM_ID: u16 = 0x40;

// Capability types (virtio 1.x §4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

/// The layout of BAR 0.
const BAR: usize = 0;
const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
const NOTIFY_OFFSET: u64 = 0x3000;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x6000;
const REGION_SIZE: u64 = 0x1000;
/// Each queue's notification address is 4 bytes after the previous one's.
const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// The table region holds this many vectors.
const MAX_VECTORS: usize = 0x2000 / ENTRY_SIZE;

/// Registers queue notification addresses with the hypervisor so that a guest's write
/// signals an eventfd without a VM exit (KVM_IOEVENTFD).
pub trait NotifyRegistrar: Send + Sync {
    fn register(&self, event: &EventFd, addr: u64) -> std::io::Result<()>;
    fn unregister(&self, event: &EventFd, addr: u64) -> std::io::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot create a queue notification eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("device has {0} queues; at most {MAX_VECTORS} MSI-X vectors fit")]
    TooManyQueues(usize),
    #[error(transparent)]
    Pci(#[from] PciError),
}

/// A virtio device as a PCI function. The vCPU threads reach it through the PCI bus;
/// the device's own worker thread processes its queues.
pub struct VirtioPciDevice {
    config: ConfigSpace,
    common: CommonConfig,
    device: Arc<Mutex<dyn VirtioDevice>>,
    name: String,
    msix: Arc<Mutex<MsixState>>,
    isr: Arc<AtomicU8>,
    notify: Vec<EventFd>,
    registrar: Option<Arc<dyn NotifyRegistrar>>,
    /// Where the notification eventfds are currently registered.
    notify_base: Option<u64>,
    mem: SharedMemory,
}

impl VirtioPciDevice {
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: SharedMemory,
        router: Arc<dyn MsiRouter>,
        registrar: Option<Arc<dyn NotifyRegistrar>>,
    ) -> Result<Self, TransportError> {
        let (device_type, features, max_sizes, name) = {
            let d = lock(&device);
            (
                d.device_type(),
                d.features(),
                d.queue_max_sizes().to_vec(),
                d.name().to_string(),
            )
        };
        let queues = max_sizes.len();
        // One vector per queue plus one for configuration changes.
        let vectors = queues + 1;
        if vectors > MAX_VECTORS {
            return Err(TransportError::TooManyQueues(queues));
        }
        let msix = Arc::new(Mutex::new(MsixState::new(vectors as u16, router)));
        let mut config = ConfigSpace::new(&PciHeader {
            vendor_id: VIRTIO_VENDOR_ID,
            device_id: VIRTIO_DEVICE_ID_BASE + device_type as u16,
            class_code: class_code(device_type),
            revision: 1,
            subsystem_vendor_id: VIRTIO_VENDOR_ID,
            subsystem_id: SUBSYSTEM_ID,
        });
        config.add_bar(
            BAR,
            BarSpec {
                size: BAR_SIZE,
                kind: BarKind::Memory32,
                prefetchable: false,
            },
        )?;
        add_virtio_cap(
            &mut config,
            CAP_COMMON,
            COMMON_OFFSET,
            common::COMMON_CFG_LEN,
            None,
        )?;
        add_virtio_cap(&mut config, CAP_ISR, ISR_OFFSET, 1, None)?;
        add_virtio_cap(&mut config, CAP_DEVICE, DEVICE_OFFSET, REGION_SIZE, None)?;
        let notify_len = u64::from(NOTIFY_OFF_MULTIPLIER) * queues as u64;
        add_virtio_cap(
            &mut config,
            CAP_NOTIFY,
            NOTIFY_OFFSET,
            notify_len,
            Some(NOTIFY_OFF_MULTIPLIER),
        )?;
        config.add_msix(
            msix.clone(),
            (BAR, MSIX_TABLE_OFFSET as u32),
            (BAR, MSIX_PBA_OFFSET as u32),
        )?;

        let notify = (0..queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TransportError::EventFd)?;
        Ok(VirtioPciDevice {
            config,
            common: CommonConfig::new(features, &max_sizes, vectors as u16),
            device,
            name,
            msix,
            isr: Arc::new(AtomicU8::new(0)),
            notify,
            registrar,
            notify_base: None,
            mem,
        })
    }

    /// Copies of the queue notification eventfds, for the device's worker to wait on.
    pub fn notify_events(&self) -> std::io::Result<Vec<EventFd>> {
        self.notify.iter().map(EventFd::try_clone).collect()
    }

    pub fn device(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        self.device.clone()
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        match self.common.write(offset, data) {
            Action::None => {}
            Action::Reset => self.reset(),
            Action::Activate => self.activate(),
        }
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        self.common.reset();
        self.isr.store(0, Ordering::SeqCst);
    }

    fn activate(&mut self) {
        let features = self.common.driver_features();
        let mut queues = Vec::with_capacity(self.common.queues().len());
        for (index, qc) in self.common.queues().iter().enumerate() {
            match build_queue(qc, features, self.mem.memory()) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    log::error!(
                        "{}: queue {index} set up wrongly: {e}; device needs a reset",
                        self.name
                    );
                    self.common.set_needs_reset();
                    return;
                }
            }
        }
        let interrupt = Arc::new(MsixInterrupt {
            msix: self.msix.clone(),
            isr: self.isr.clone(),
            config_vector: self.common.config_vector(),
            queue_vectors: self.common.queues().iter().map(|q| q.vector).collect(),
        });
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt,
            features,
        };
        if let Err(e) = lock(&self.device).activate(activation) {
            log::error!("{}: cannot activate: {e}", self.name);
            self.common.set_needs_reset();
            return;
        }
        // Buffers the driver queued before DRIVER_OK get processed now.
        for event in &self.notify {
            let _ = event.write(1);
        }
    }

    fn status(&self) -> u8 {
        let mut status = self.common.status();
        if lock(&self.device).state().needs_reset() {
            status |= STATUS_NEEDS_RESET;
        }
        status
    }

    fn move_notifications(&mut self, new_bar: Option<u64>) {
        let Some(registrar) = &self.registrar else {
            return;
        };
        if let Some(old) = self.notify_base.take() {
            for (q, event) in self.notify.iter().enumerate() {
                if let Err(e) = registrar.unregister(event, notify_addr(old, q)) {
                    log::warn!(
                        "{}: cannot unregister queue {q} notification: {e}",
                        self.name
                    );
                }
            }
        }
        if let Some(bar) = new_bar {
            let base = bar + NOTIFY_OFFSET;
            for (q, event) in self.notify.iter().enumerate() {
                // On failure the vCPU path below still delivers the notification.
                if let Err(e) = registrar.register(event, notify_addr(base, q)) {
                    log::warn!(
                        "{}: queue {q} notifications will exit to the VMM: {e}",
                        self.name
                    );
                }
            }
            self.notify_base = Some(base);
        }
    }
}

fn notify_addr(base: u64, queue: usize) -> u64 {
    base + u64::from(NOTIFY_OFF_MULTIPLIER) * queue as u64
}

fn build_queue(
    qc: &QueueConfig,
    features: u64,
    mem: &vm_memory::GuestMemoryMmap,
) -> Result<Queue, String> {
    let mut q = Queue::new(qc.max_size).map_err(|e| e.to_string())?;
    if !qc.enabled {
        return Ok(q);
    }
    q.try_set_size(qc.size).map_err(|e| e.to_string())?;
    q.try_set_desc_table_address(GuestAddress(qc.desc))
        .map_err(|e| e.to_string())?;
    q.try_set_avail_ring_address(GuestAddress(qc.driver))
        .map_err(|e| e.to_string())?;
    q.try_set_used_ring_address(GuestAddress(qc.device))
        .map_err(|e| e.to_string())?;
    q.set_event_idx(features & RING_EVENT_IDX != 0);
    q.set_ready(true);
    if !q.is_valid(mem) {
        return Err("rings are outside guest RAM".into());
    }
    Ok(q)
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match region(offset) {
            (COMMON_OFFSET, o) if o == 0x14 && data.len() == 1 => data[0] = self.status(),
            (COMMON_OFFSET, o) => self.common.read(o, data),
            (ISR_OFFSET, 0) => data[0] = self.isr.swap(0, Ordering::SeqCst),
            (DEVICE_OFFSET, o) => lock(&self.device).read_config(o, data),
            (MSIX_TABLE_OFFSET, _) => lock(&self.msix).table_read(offset - MSIX_TABLE_OFFSET, data),
            (MSIX_PBA_OFFSET, o) => lock(&self.msix).pba_read(o, data),
            _ => {}
        }
    }

    fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
        match region(offset) {
            (COMMON_OFFSET, o) => self.common_write(o, data),
            (DEVICE_OFFSET, o) => lock(&self.device).write_config(o, data),
            (NOTIFY_OFFSET, o) => {
                // Only reached when the ioeventfd could not be registered.
                let queue = (o / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize;
                if let Some(event) = self.notify.get(queue) {
                    let _ = event.write(1);
                }
            }
            (MSIX_TABLE_OFFSET, _) => {
                lock(&self.msix).table_write(offset - MSIX_TABLE_OFFSET, data)
            }
            _ => {}
        }
    }

    fn bar_moved(&mut self, bar: usize, _old: Option<u64>, new: Option<u64>) {
        if bar == BAR {
            self.move_notifications(new);
        }
    }
}

/// Splits a BAR offset into its region (by start offset) and the offset inside it. The
/// MSI-X table spans two regions.
fn region(offset: u64) -> (u64, u64) {
    let start = offset & !(REGION_SIZE - 1);
    let start = if start == MSIX_TABLE_OFFSET + REGION_SIZE {
        MSIX_TABLE_OFFSET
    } else {
        start
    };
    (start, offset - (offset & !(REGION_SIZE - 1)))
}

fn class_code(device_type: u32) -> u32 {
    match device_type {
        // Mass storage, other.
        2 => 0x01_80_00,
        // Network, Ethernet.
        1 => 0x02_00_00,
        _ => 0xff_00_00,
    }
}

fn add_virtio_cap(
    config: &mut ConfigSpace,
    cfg_type: u8,
    offset: u64,
    length: u64,
    notify_multiplier: Option<u32>,
) -> Result<usize, PciError> {
    let cap_len: u8 = if notify_multiplier.is_some() { 20 } else { 16 };
    let mut body = vec![cap_len, cfg_type, BAR as u8, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(m) = notify_multiplier {
        body.extend_from_slice(&m.to_le_bytes());
    }
    config.add_capability(CAP_ID_VENDOR, &body, &[])
}

#[cfg(test)]
mod tests;
