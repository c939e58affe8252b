//! The vsock device: vhost set-up, configuration, state and the event forwarding.

use std::os::fd::{AsRawFd, RawFd};

use vhost::vhost_kern::vsock::Vsock as VhostVsock;
use vhost::vsock::VhostVsock as _;
use vhost::{VhostBackend, VringConfigData};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::memory::{regions, MemSpace};
use super::{DEVICE_TYPE, MAX_CID, MIN_CID, QUEUES, QUEUE_SIZE, VHOST_QUEUES};
use crate::device::{ActivateError, Activation, DeviceState, VirtioDevice};
use crate::features::{COMMON, VERSION_1};
use crate::memory::SharedMemory;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved or too large (use {MIN_CID} to {MAX_CID})")]
    Cid(u64),
    #[error("cannot open /dev/vhost-vsock (is the vhost_vsock module loaded?): {0}")]
    Open(vhost::Error),
    #[error("vhost-vsock: {what} failed: {source}")]
    Vhost {
        what: &'static str,
        source: vhost::Error,
    },
    #[error("guest CID {cid} is in use by another VM or not allowed: {source}")]
    CidInUse { cid: u64, source: vhost::Error },
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("vhost-vsock does not offer VIRTIO_F_VERSION_1")]
    NoVersion1,
}

fn vhost_err(what: &'static str) -> impl Fn(vhost::Error) -> VsockError {
    move |source| VsockError::Vhost { what, source }
}

pub struct Vsock {
    name: String,
    cid: u64,
    backend: VhostVsock<MemSpace>,
    features: u64,
    /// The driver's notifications for the receive and transmit queues go to vhost here.
    kick: Vec<EventFd>,
    /// vhost signals used buffers here; the worker turns that into MSI-X.
    call: Vec<EventFd>,
    state: DeviceState,
    running: bool,
    queue_sizes: [u16; QUEUES],
}

impl Vsock {
    /// Opens a vhost-vsock instance for guest `cid` (claimed at once, so a CID clash is
    /// a start-up error, not a silent guest failure).
    pub fn new(cid: u64, mem: SharedMemory) -> Result<Self, VsockError> {
        if !(MIN_CID..=MAX_CID).contains(&cid) {
            return Err(VsockError::Cid(cid));
        }
        let backend = VhostVsock::new(MemSpace(mem)).map_err(VsockError::Open)?;
        backend.set_owner().map_err(vhost_err("VHOST_SET_OWNER"))?;
        let vhost_features = backend
            .get_features()
            .map_err(vhost_err("VHOST_GET_FEATURES"))?;
        if vhost_features & VERSION_1 == 0 {
            return Err(VsockError::NoVersion1);
        }
        backend
            .set_guest_cid(cid)
            .map_err(|source| VsockError::CidInUse { cid, source })?;
        let eventfds = || {
            (0..VHOST_QUEUES)
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(VsockError::EventFd)
        };
        Ok(Vsock {
            name: format!("virtio-vsock {cid}"),
            cid,
            features: COMMON & vhost_features,
            backend,
            kick: eventfds()?,
            call: eventfds()?,
            state: DeviceState::Inactive,
            running: false,
            queue_sizes: [QUEUE_SIZE; QUEUES],
        })
    }

    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// Hands the negotiated features, the memory table and the two data rings to vhost
    /// and starts it.
    fn start_vhost(&mut self, activation: &Activation) -> Result<(), VsockError> {
        let b = &self.backend;
        b.set_features(activation.features & self.features)
            .map_err(vhost_err("VHOST_SET_FEATURES"))?;
        b.set_mem_table(&regions(activation.mem.memory()))
            .map_err(vhost_err("VHOST_SET_MEM_TABLE"))?;
        for (i, queue) in activation.queues.iter().take(VHOST_QUEUES).enumerate() {
            let (Some(kick), Some(call)) = (self.kick.get(i), self.call.get(i)) else {
                continue;
            };
            b.set_vring_num(i, queue.size())
                .map_err(vhost_err("VHOST_SET_VRING_NUM"))?;
            let ring = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: queue.desc_table(),
                used_ring_addr: queue.used_ring(),
                avail_ring_addr: queue.avail_ring(),
                log_addr: None,
            };
            b.set_vring_addr(i, &ring)
                .map_err(vhost_err("VHOST_SET_VRING_ADDR"))?;
            b.set_vring_base(i, queue.next_avail())
                .map_err(vhost_err("VHOST_SET_VRING_BASE"))?;
            b.set_vring_call(i, call)
                .map_err(vhost_err("VHOST_SET_VRING_CALL"))?;
            b.set_vring_kick(i, kick)
                .map_err(vhost_err("VHOST_SET_VRING_KICK"))?;
        }
        b.start().map_err(vhost_err("VHOST_VSOCK_SET_RUNNING"))?;
        self.running = true;
        Ok(())
    }

    fn stop_vhost(&mut self) {
        if self.running {
            if let Err(e) = self.backend.stop() {
                log::warn!("{}: stopping vhost failed: {e}", self.name);
            }
            self.running = false;
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    /// `struct virtio_vsock_config`: the guest's CID, 64-bit little-endian.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.cid.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            *byte = usize::try_from(at)
                .ok()
                .and_then(|at| config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let ready = activation
            .queues
            .iter()
            .take(VHOST_QUEUES)
            .filter(|q| q.ready())
            .count();
        if ready < VHOST_QUEUES {
            return Err(ActivateError::Backend(
                "the driver did not enable the receive and transmit queues".into(),
            ));
        }
        if let Err(e) = self.start_vhost(&activation) {
            self.stop_vhost();
            return Err(ActivateError::Backend(e.to_string()));
        }
        self.state = DeviceState::Active(activation);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_vhost();
        self.state = DeviceState::Inactive;
    }

    fn state(&self) -> &DeviceState {
        &self.state
    }

    /// Receive and transmit notifications go to vhost; the event queue's are ignored
    /// (the device never posts events, so it keeps the driver's buffers).
    fn process_queue(&mut self, index: usize) {
        if !self.running {
            return;
        }
        if let Some(kick) = self.kick.get(index) {
            if let Err(e) = kick.write(1) {
                log::warn!("{}: cannot kick vhost: {e}", self.name);
            }
        }
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        self.call.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// vhost used buffers on queue `index`: interrupt the driver.
    fn process_backend(&mut self, index: usize) {
        let Some(call) = self.call.get(index) else {
            return;
        };
        // Edge-triggered: reading resets the counter, so the next signal is a new edge.
        let _ = call.read();
        if let DeviceState::Active(active) = &self.state {
            active.interrupt.signal_queue(index);
        }
    }
}
