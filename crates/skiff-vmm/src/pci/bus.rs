//! The PCI root bus as the vCPUs reach it: 0xCF8-0xCFF on the port bus, ECAM and the BAR
//! window on the MMIO bus.

use std::sync::{Arc, Mutex};

use skiff_pci::msix::lock;
use skiff_pci::PciRoot;

use crate::devices::PortDevice;
use crate::mmio::MmioDevice;

pub type SharedRoot = Arc<Mutex<PciRoot>>;

/// Configuration mechanism #1: address at 0xCF8, data at 0xCFC-0xCFF.
pub struct ConfigPorts(pub SharedRoot);

impl PortDevice for ConfigPorts {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        lock(&self.0).pio_read(offset, data);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        lock(&self.0).pio_write(offset, data);
    }
}

/// The ECAM window for bus 0.
pub struct Ecam(pub SharedRoot);

impl MmioDevice for Ecam {
    fn read(&self, offset: u64, data: &mut [u8]) {
        lock(&self.0).ecam_read(offset, data);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        lock(&self.0).ecam_write(offset, data);
    }
}

/// The host bridge's memory window: whatever BAR decodes the address answers.
pub struct BarWindow {
    pub root: SharedRoot,
    pub base: u64,
}

impl MmioDevice for BarWindow {
    fn read(&self, offset: u64, data: &mut [u8]) {
        lock(&self.root).mmio_read(self.base + offset, data);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        lock(&self.root).mmio_write(self.base + offset, data);
    }
}
