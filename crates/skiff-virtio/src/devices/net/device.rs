//! The network device: features, configuration, state and queue handling.

use std::os::fd::{AsRawFd, RawFd};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
};

use super::{
    deliver, Pending, Tap, DEVICE_TYPE, HDR_LEN, MAX_CHAIN, MAX_FRAME, QUEUE_SIZE, RX_QUEUE,
    TX_QUEUE,
};
use vm_memory::GuestMemoryMmap;

use crate::chain::{Chain, Cursor};
use crate::device::{ActivateError, Activation, DeviceState, VirtioDevice};
use crate::features::{has, COMMON};
use crate::queue::QueueError;

/// Offloads offered: the guest may send partially checksummed and TSO frames (the tap
/// takes them as they are), and may receive them (the tap is told so on activation).
const OFFLOADS: u64 = 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6;

/// The tap offloads (`TUN_F_*`) matching the receive offloads the driver accepted.
pub fn tap_offloads(features: u64) -> libc::c_uint {
    let mut flags = 0;
    if has(features, VIRTIO_NET_F_GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        if has(features, VIRTIO_NET_F_GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if has(features, VIRTIO_NET_F_GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

pub struct Net {
    name: String,
    tap: Tap,
    mac: [u8; 6],
    state: DeviceState,
    rx: Pending,
    tx: Vec<u8>,
    queue_sizes: [u16; 2],
}

impl Net {
    pub fn new(tap: Tap, mac: [u8; 6]) -> Self {
        Net {
            name: format!("virtio-net {}", tap.name()),
            tap,
            mac,
            state: DeviceState::Inactive,
            rx: Pending::default(),
            tx: Vec::with_capacity(MAX_FRAME),
            queue_sizes: [QUEUE_SIZE; 2],
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn receive(&mut self) {
        let DeviceState::Active(active) = &mut self.state else {
            return;
        };
        let Some(queue) = active.queues.get_mut(RX_QUEUE) else {
            return;
        };
        let tap = &self.tap;
        let mut source = |buf: &mut [u8]| tap.read_frame(buf);
        match deliver(queue, active.mem.memory(), &mut self.rx, &mut source) {
            Ok(true) => active.interrupt.signal_queue(RX_QUEUE),
            Ok(false) => {}
            Err(e) => {
                log::error!("{}: receive queue: {e}; device needs a reset", self.name);
                let interrupt = active.interrupt.clone();
                self.state = DeviceState::NeedsReset;
                interrupt.signal_config();
            }
        }
    }

    fn transmit(&mut self) {
        let (name, tap, buf) = (&self.name, &self.tap, &mut self.tx);
        self.state
            .process_queue(name, TX_QUEUE, MAX_CHAIN, |mem, chain| {
                if let Some(frame) = transmit_frame(mem, chain, buf)? {
                    if let Err(e) = tap.write_frame(frame) {
                        log::debug!("{name}: tap write failed, frame dropped: {e}");
                    }
                }
                Ok(0)
            });
    }
}

/// The header and frame of one transmit chain, copied into `buf`; `None` (the chain is
/// returned, the frame dropped) for a chain with no frame after the header or longer
/// than [`MAX_FRAME`]. Pure over guest memory, for tests and fuzzing.
pub fn transmit_frame<'b>(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    buf: &'b mut Vec<u8>,
) -> Result<Option<&'b [u8]>, QueueError> {
    let len = chain.readable_len();
    if len <= HDR_LEN as u64 || len > MAX_FRAME as u64 {
        log::debug!("virtio-net: dropping a {len}-byte transmit chain");
        return Ok(None);
    }
    buf.resize(len as usize, 0);
    Cursor::new(mem, &chain.readable, chain.head).read_exact(buf, "frame")?;
    Ok(Some(buf))
}

impl VirtioDevice for Net {
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
        COMMON | 1 << VIRTIO_NET_F_MAC | OFFLOADS
    }

    /// `struct virtio_net_config`: the MAC, then fields for features not offered (zero).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
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
        if let Err(e) = self.tap.set_offload(tap_offloads(activation.features)) {
            // The tap then sends complete frames, which a driver expecting offloads
            // takes as well.
            log::warn!("{}: {e}", self.name);
        }
        self.state = DeviceState::Active(activation);
        // Frames may be waiting in the tap already.
        self.receive();
        Ok(())
    }

    fn reset(&mut self) {
        self.state = DeviceState::Inactive;
        self.rx.clear();
        if let Err(e) = self.tap.set_offload(0) {
            log::warn!("{}: {e}", self.name);
        }
    }

    fn state(&self) -> &DeviceState {
        &self.state
    }

    fn process_queue(&mut self, index: usize) {
        match index {
            RX_QUEUE => self.receive(),
            TX_QUEUE => self.transmit(),
            _ => {}
        }
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.tap.as_raw_fd()]
    }

    fn process_backend(&mut self, _index: usize) {
        self.receive();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::chain::Buffer;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn transmit_frames_are_bounded() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("mem");
        mem.write_slice(&[7u8; 100], GuestAddress(0x1000))
            .expect("write");
        let chain = |lens: &[u32]| Chain {
            head: 0,
            readable: lens
                .iter()
                .map(|&len| Buffer {
                    addr: GuestAddress(0x1000),
                    len,
                })
                .collect(),
            writable: Vec::new(),
        };
        let mut buf = Vec::new();
        let frame = transmit_frame(&mem, &chain(&[12, 60]), &mut buf).expect("ok");
        assert_eq!(frame.map(<[u8]>::len), Some(72));
        // Header only, nothing at all, or more than a 64 KiB frame: dropped.
        assert_eq!(
            transmit_frame(&mem, &chain(&[12]), &mut buf).expect("ok"),
            None
        );
        assert_eq!(
            transmit_frame(&mem, &chain(&[]), &mut buf).expect("ok"),
            None
        );
        let big = chain(&[0x10000, 0x10000]);
        assert_eq!(transmit_frame(&mem, &big, &mut buf).expect("ok"), None);
    }

    #[test]
    fn tap_offloads_follow_the_receive_features() {
        assert_eq!(tap_offloads(0), 0);
        assert_eq!(tap_offloads(1 << VIRTIO_NET_F_GUEST_TSO4), 0);
        assert_eq!(
            tap_offloads(1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4
        );
        assert_eq!(
            tap_offloads(OFFLOADS),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
    }
}
