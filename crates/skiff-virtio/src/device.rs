//! The interface between the transport and a device, and the device's explicit state.

use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::chain::Chain;
use crate::interrupt::VirtioInterrupt;
use crate::memory::SharedMemory;
use crate::queue::{self, QueueError};

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    pub mem: SharedMemory,
    /// One per queue the device declared, configured by the driver (possibly not ready).
    pub queues: Vec<Queue>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The features the driver accepted.
    pub features: u64,
}

/// A device's life cycle. `NeedsReset` is entered when the driver broke the rules (a
/// malformed queue); only a reset by the driver leaves it.
#[derive(Default)]
pub enum DeviceState {
    #[default]
    Inactive,
    Active(Activation),
    NeedsReset,
}

impl DeviceState {
    pub fn is_active(&self) -> bool {
        matches!(self, DeviceState::Active(_))
    }

    pub fn needs_reset(&self) -> bool {
        matches!(self, DeviceState::NeedsReset)
    }

    /// Drains queue `index` with `handle` and interrupts the driver if it wants it. A
    /// malformed queue is logged, moves the device to `NeedsReset` and raises a
    /// configuration interrupt; nothing a driver writes makes this panic.
    pub fn process_queue<F>(&mut self, name: &str, index: usize, max_buffers: usize, handle: F)
    where
        F: FnMut(&GuestMemoryMmap, &Chain) -> Result<u32, QueueError>,
    {
        let DeviceState::Active(active) = self else {
            return;
        };
        let Some(queue) = active.queues.get_mut(index) else {
            return;
        };
        match queue::drain(queue, active.mem.memory(), max_buffers, handle) {
            Ok(true) => active.interrupt.signal_queue(index),
            Ok(false) => {}
            Err(e) => self.queue_failed(name, index, e),
        }
    }

    /// The driver broke queue `index`: logged, `NeedsReset`, and a configuration interrupt
    /// tells the driver.
    pub fn queue_failed(&mut self, name: &str, index: usize, e: QueueError) {
        log::error!("{name}: queue {index}: {e}; device needs a reset");
        if let DeviceState::Active(active) = self {
            let interrupt = active.interrupt.clone();
            *self = DeviceState::NeedsReset;
            interrupt.signal_config();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not usable: {1}")]
    Queue(usize, String),
    #[error("the host back end failed: {0}")]
    Backend(String),
}

/// A virtio device: its identity, features and configuration space, and its queue
/// processing, which runs on the device's worker thread.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 = block, 4 = entropy, ...).
    fn device_type(&self) -> u32;
    /// A short name for logs (`virtio-blk vda`).
    fn name(&self) -> &str;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered to the driver (VERSION_1 included).
    fn features(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK with these queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver reset the device: back to `Inactive`, queues dropped.
    fn reset(&mut self);
    fn state(&self) -> &DeviceState;
    /// The driver notified queue `index`.
    fn process_queue(&mut self, index: usize);
    /// Host-side file descriptors the worker waits on besides the queue notifications (a
    /// tap, vhost's call eventfds), edge-triggered: the device drains each one fully when
    /// [`VirtioDevice::process_backend`] runs. Asked once, when the worker starts.
    fn backend_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// Backend file descriptor `index` (of [`VirtioDevice::backend_fds`]) is ready.
    fn process_backend(&mut self, _index: usize) {}
    /// The queues whose last [`VirtioDevice::process_queue`] stopped at a limit with work
    /// left (taken: each is reported once). The worker processes them again soon, after
    /// giving the device's lock up.
    fn unfinished_queues(&mut self) -> Vec<usize> {
        Vec::new()
    }
}
