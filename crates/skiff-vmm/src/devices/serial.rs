//! COM1: a 16550A UART (vm-superio) whose output goes to a writer (the console) and whose
//! interrupt is an irqfd.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::{EventFdTrigger, PortDevice};

pub struct SerialDevice {
    uart: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            uart: Serial::new(interrupt, out),
        }
    }

    /// Queues console input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                log::debug!("serial input dropped: {e:?}");
                0
            }
        }
    }
}

impl PortDevice for SerialDevice {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = self.uart.read(offset as u8);
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let Some(&value) = data.first() {
            // A console that went away (closed pipe) must not stop the guest.
            if let Err(e) = self.uart.write(offset as u8, value) {
                log::debug!("serial output error: {e:?}");
            }
        }
    }
}
