//! The entropy device: state, features and queue handling.

use crate::device::{ActivateError, Activation, DeviceState, VirtioDevice};
use crate::features::COMMON;

use super::{fill, DEVICE_TYPE, QUEUE_SIZE};

/// The host's entropy: `getrandom(2)`, which blocks only before the host's pool is
/// initialised (never, in practice, once a VMM runs).
pub struct HostEntropy;

impl HostEntropy {
    pub fn fill(buf: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which we
            // own mutably for the duration of the call.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            done += n as usize;
        }
        Ok(())
    }
}

type Source = Box<dyn FnMut(&mut [u8]) -> std::io::Result<()> + Send>;

pub struct Rng {
    state: DeviceState,
    source: Source,
    queue_sizes: [u16; 1],
}

impl Default for Rng {
    fn default() -> Self {
        Rng::with_source(Box::new(HostEntropy::fill))
    }
}

impl Rng {
    /// An entropy device fed by `source` (tests use a deterministic one).
    pub fn with_source(source: Source) -> Self {
        Rng {
            state: DeviceState::Inactive,
            source,
            queue_sizes: [QUEUE_SIZE],
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn name(&self) -> &str {
        "virtio-rng"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        COMMON
    }

    /// The entropy device has no configuration space.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.state = DeviceState::Active(activation);
        Ok(())
    }

    fn reset(&mut self) {
        self.state = DeviceState::Inactive;
    }

    fn state(&self) -> &DeviceState {
        &self.state
    }

    fn process_queue(&mut self, index: usize) {
        let source = &mut self.source;
        self.state.process_queue(
            "virtio-rng",
            index,
            usize::from(QUEUE_SIZE),
            |mem, chain| fill(mem, chain, source),
        );
    }
}
