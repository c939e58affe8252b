//! How a guest stops: the ACPI hardware-reduced sleep control register (power-off through
//! `_S5_`), the ACPI reset register, pvpanic, and the ACPI power button that asks the guest
//! to shut down.

use super::PortDevice;
use crate::exit::{ExitSender, VmExit};
use crate::layout::{ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE};

const SLEEP_ENABLE: u8 = 1 << 5;
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0x7;

/// Ports: +0 sleep control, +1 sleep status, +2 reset.
pub struct AcpiPowerRegisters {
    exits: ExitSender,
}

impl AcpiPowerRegisters {
    pub fn new(exits: ExitSender) -> Self {
        AcpiPowerRegisters { exits }
    }
}

impl PortDevice for AcpiPowerRegisters {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            0 if value & SLEEP_ENABLE != 0 => {
                let sleep_type = (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK;
                if sleep_type == ACPI_S5_SLEEP_TYPE {
                    self.exits.send(VmExit::PowerOff);
                } else {
                    log::info!("guest asked for unsupported sleep state {sleep_type}; ignored");
                }
            }
            2 if value == ACPI_RESET_VALUE => self.exits.send(VmExit::Reset),
            _ => {}
        }
    }
}

/// The ACPI power button of a hardware-reduced machine: a Generic Event Device (ACPI0013)
/// whose interrupt is this irqfd; its `_EVT` method notifies the power button device
/// (PNP0C0C, boot/acpi.rs) and the guest's OS decides what pressing it means (shutdown, for
/// systemd-logind or acpid).
pub struct PowerButton {
    irq: vmm_sys_util::eventfd::EventFd,
}

impl PowerButton {
    pub fn new(irq: vmm_sys_util::eventfd::EventFd) -> Self {
        PowerButton { irq }
    }

    /// One press: an edge on the GED's interrupt line.
    pub fn press(&self) -> std::io::Result<()> {
        self.irq.write(1)
    }
}

const PVPANIC_PANICKED: u8 = 1 << 0;
const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// QEMU's pvpanic ISA device, which Linux's pvpanic driver knows (ACPI QEMU0001).
pub struct PvPanic {
    exits: ExitSender,
}

impl PvPanic {
    pub fn new(exits: ExitSender) -> Self {
        PvPanic { exits }
    }
}

impl PortDevice for PvPanic {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED; // the events we understand
        }
    }

    fn write(&mut self, _offset: u16, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if value & PVPANIC_PANICKED != 0 {
            self.exits.send(VmExit::Panic);
        } else if value & PVPANIC_CRASH_LOADED != 0 {
            log::warn!("guest panicked and is running its crash kernel");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_reset_register_resets() {
        let (exits, rx) = ExitSender::channel();
        let mut regs = AcpiPowerRegisters::new(exits.clone());
        regs.write(0, &[ACPI_S5_SLEEP_TYPE << SLEEP_TYPE_SHIFT]); // no SLP_EN: nothing
        regs.write(0, &[(3 << SLEEP_TYPE_SHIFT) | SLEEP_ENABLE]); // S3: ignored
        regs.write(
            0,
            &[(ACPI_S5_SLEEP_TYPE << SLEEP_TYPE_SHIFT) | SLEEP_ENABLE],
        );
        regs.write(2, &[ACPI_RESET_VALUE]);
        let mut pvpanic = PvPanic::new(exits);
        pvpanic.write(0, &[PVPANIC_CRASH_LOADED]);
        pvpanic.write(0, &[PVPANIC_PANICKED]);
        let got: Vec<VmExit> = rx.try_iter().collect();
        assert_eq!(got, vec![VmExit::PowerOff, VmExit::Reset, VmExit::Panic]);
    }
}
