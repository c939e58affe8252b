//! Platform devices on the legacy I/O port bus: COM1, the CMOS RTC, the i8042 reset line,
//! the ACPI sleep/reset registers and pvpanic.

pub mod cmos;
pub mod iobus;
pub mod power;
pub mod serial;

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

pub use iobus::{IoBus, PortDevice};

use crate::exit::{ExitSender, VmExit};

/// A vm-superio interrupt line backed by an eventfd that KVM injects as an IRQ (irqfd).
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// A vm-superio "trigger" that stops the VM with a given exit (the i8042's reset line).
pub struct ExitTrigger {
    exits: ExitSender,
    exit: VmExit,
}

impl ExitTrigger {
    pub fn new(exits: ExitSender, exit: VmExit) -> Self {
        ExitTrigger { exits, exit }
    }
}

impl vm_superio::Trigger for ExitTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.exits.send(self.exit.clone());
        Ok(())
    }
}

/// The i8042 keyboard controller, reduced to what guests use it for: the CPU reset line.
pub struct I8042(pub vm_superio::I8042Device<ExitTrigger>);

impl PortDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = self.0.read(offset as u8);
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let Some(&value) = data.first() {
            let _ = self.0.write(offset as u8, value);
        }
    }
}

/// Shared handle to a device on the bus.
pub type Shared<T> = Arc<Mutex<T>>;

#[cfg(test)]
mod tests {
    use super::power::AcpiPowerRegisters;
    use super::*;
    use crate::layout::{ACPI_RESET_PORT, ACPI_SLEEP_CONTROL_PORT, I8042_PORT};

    #[test]
    fn keyboard_controller_and_acpi_reset_requests_stop_the_vm() {
        let (exits, rx) = ExitSender::channel();
        let mut bus = IoBus::default();
        let i8042 = I8042(vm_superio::I8042Device::new(ExitTrigger::new(
            exits.clone(),
            VmExit::Reset,
        )));
        bus.register(I8042_PORT, 5, Arc::new(Mutex::new(i8042)))
            .expect("register");
        bus.register(
            ACPI_SLEEP_CONTROL_PORT,
            3,
            Arc::new(Mutex::new(AcpiPowerRegisters::new(exits))),
        )
        .expect("register");
        bus.write(I8042_PORT + 4, &[0xfe]);
        bus.write(ACPI_RESET_PORT, &[1]);
        let got: Vec<VmExit> = rx.try_iter().collect();
        assert_eq!(got, vec![VmExit::Reset, VmExit::Reset]);
    }
}
