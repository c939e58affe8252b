//! MSI delivery on KVM: every MSI-X vector gets its own GSI, an irqfd bound to it, and an
//! MSI entry in KVM's GSI routing table. KVM_SET_GSI_ROUTING replaces the whole table, so
//! the table here always starts with the default IOAPIC/PIC routes for GSIs 0-23.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use skiff_pci::msix::lock;
use skiff_pci::{MsiMessage, MsiRouter};
use skiff_virtio::NotifyRegistrar;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::VmmError;

const IOAPIC_PINS: u32 = 24;
const PIC_IRQS: u32 = 16;

/// The VM's GSI routing table and GSI allocator.
pub struct GsiRouting {
    vm_fd: Arc<VmFd>,
    state: Mutex<RoutingState>,
}

struct RoutingState {
    next_gsi: u32,
    msi: BTreeMap<u32, MsiMessage>,
}

impl GsiRouting {
    pub fn new(vm_fd: Arc<VmFd>) -> Self {
        GsiRouting {
            vm_fd,
            state: Mutex::new(RoutingState {
                next_gsi: IOAPIC_PINS,
                msi: BTreeMap::new(),
            }),
        }
    }

    fn allocate(&self) -> u32 {
        let mut s = lock(&self.state);
        let gsi = s.next_gsi;
        s.next_gsi += 1;
        gsi
    }

    fn set_msi(&self, gsi: u32, message: MsiMessage) -> Result<(), kvm_ioctls::Error> {
        let mut s = lock(&self.state);
        s.msi.insert(gsi, message);
        let entries = routing_entries(&s.msi);
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        self.vm_fd.set_gsi_routing(&table)
    }
}

/// KVM's default routes (irqchip pins) followed by one MSI route per allocated vector.
fn routing_entries(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let irqchip = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    };
    let mut entries = Vec::with_capacity((IOAPIC_PINS + PIC_IRQS) as usize + msi.len());
    for gsi in 0..IOAPIC_PINS {
        if gsi < PIC_IRQS {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            entries.push(irqchip(gsi, chip, gsi % 8));
        }
        entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for (&gsi, m) in msi {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = m.address as u32;
        e.u.msi.address_hi = (m.address >> 32) as u32;
        e.u.msi.data = m.data;
        entries.push(e);
    }
    entries
}

/// One device's MSI-X vectors: a GSI and an irqfd each.
pub struct KvmMsiVectors {
    routing: Arc<GsiRouting>,
    vectors: Vec<(u32, EventFd)>,
}

impl KvmMsiVectors {
    pub fn new(vm_fd: &VmFd, routing: Arc<GsiRouting>, count: usize) -> Result<Self, VmmError> {
        let mut vectors = Vec::with_capacity(count);
        for _ in 0..count {
            let gsi = routing.allocate();
            let event = EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?;
            vm_fd
                .register_irqfd(&event, gsi)
                .map_err(VmmError::kvm("connect an MSI-X vector"))?;
            vectors.push((gsi, event));
        }
        Ok(KvmMsiVectors { routing, vectors })
    }
}

impl MsiRouter for KvmMsiVectors {
    fn set_route(&self, vector: u16, message: MsiMessage) {
        let Some((gsi, _)) = self.vectors.get(usize::from(vector)) else {
            return;
        };
        if let Err(e) = self.routing.set_msi(*gsi, message) {
            log::error!("cannot route MSI-X vector {vector} (GSI {gsi}): {e}");
        }
    }

    fn inject(&self, vector: u16) {
        if let Some((_, event)) = self.vectors.get(usize::from(vector)) {
            if let Err(e) = event.write(1) {
                log::error!("cannot raise MSI-X vector {vector}: {e}");
            }
        }
    }
}

/// Queue notifications through KVM_IOEVENTFD: the guest's write to a notify address
/// signals the eventfd inside KVM, without an exit to the VMM.
pub struct KvmNotifier(pub Arc<VmFd>);

impl NotifyRegistrar for KvmNotifier {
    fn register(&self, event: &EventFd, addr: u64) -> std::io::Result<()> {
        self.0
            .register_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, event: &EventFd, addr: u64) -> std::io::Result<()> {
        self.0
            .unregister_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keeps_the_default_irqchip_routes() {
        let mut msi = BTreeMap::new();
        msi.insert(
            24,
            MsiMessage {
                address: 0x1_fee0_0000,
                data: 0x4041,
            },
        );
        let entries = routing_entries(&msi);
        assert_eq!(entries.len(), 16 + 24 + 1);
        let com1: Vec<_> = entries.iter().filter(|e| e.gsi == 4).collect();
        assert_eq!(com1.len(), 2, "PIC and IOAPIC routes for GSI 4");
        let last = entries.last().expect("msi entry");
        assert_eq!(last.type_, KVM_IRQ_ROUTING_MSI);
        // SAFETY: the entry was built as an MSI route just above.
        let m = unsafe { last.u.msi };
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xfee0_0000, 1, 0x4041)
        );
    }
}
