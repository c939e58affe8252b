//! Virtio interrupts over MSI-X: each queue and the configuration have a vector the driver
//! chose; the ISR status byte records why, for drivers that read it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use skiff_pci::msix::{lock, MsixState};

use super::common::NO_VECTOR;
use crate::interrupt::VirtioInterrupt;

const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

pub struct MsixInterrupt {
    pub(crate) msix: Arc<Mutex<MsixState>>,
    pub(crate) isr: Arc<AtomicU8>,
    pub(crate) config_vector: u16,
    pub(crate) queue_vectors: Vec<u16>,
}

impl MsixInterrupt {
    fn raise(&self, vector: u16, reason: u8) {
        self.isr.fetch_or(reason, Ordering::SeqCst);
        if vector != NO_VECTOR {
            lock(&self.msix).signal(vector);
        }
    }
}

impl VirtioInterrupt for MsixInterrupt {
    fn signal_queue(&self, queue: usize) {
        let vector = self.queue_vectors.get(queue).copied().unwrap_or(NO_VECTOR);
        self.raise(vector, ISR_QUEUE);
    }

    fn signal_config(&self) {
        self.raise(self.config_vector, ISR_CONFIG);
    }
}
