//! Abuse of the PCI and virtio transport rather than of a queue's contents: DRIVER_OK
//! written twice (and cleared and set again), an MSI-X vector storm while the device is
//! busy, and the device's BAR moved over another device's BAR and back. Each returns its
//! findings; whether the device still works afterwards is part of them.

use std::time::{Duration, Instant};

use super::cases::Kind;
use super::driver::{wait, Device, NO_VECTOR, STATUS_DRIVER_OK, STATUS_NEEDS_RESET};
use super::pci::PciFunction;
use super::work;
use super::{Outcome, REACTION};
use crate::error::{Error, Result};

const CAP_ID_MSIX: u8 = 0x11;
const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY: usize = 16;
const VECTOR_MASKED: u32 = 1;
/// An MSI address no vCPU answers to (physical destination APIC ID 0xfe): the storm's
/// interrupts reach KVM's routing and end there, never in the guest's handlers. Only in
/// physical mode: with the destination-mode bit (2) set, 0xfe is a logical mask that
/// matches every CPU but the first, which then took the storm's random vectors.
/// Bit 3 (redirection hint) is what the storm toggles; it means nothing in physical mode.
const NOWHERE: u32 = 0xfee0_0000 | (0xfe << 12);
/// How long the storm lasts.
const STORM: Duration = Duration::from_secs(3);
/// A used-ring head no device writes (queues are 16 entries long).
const MARK: u32 = 0xdead;

/// DRIVER_OK written again (and a third time after work completed), then cleared and set
/// again without a reset: the device must go on working, and must not start over (which
/// would replay requests it already completed: used entry 0 is marked to see that).
pub fn driver_ok_twice(device: &mut Device, kind: Kind) -> Result<Outcome> {
    let q = work::work_queue(kind);
    work::init(device, kind, false)?;
    let status = device.status()?;
    device.set_status(status)?;
    work::submit(device, kind, 0)?;
    let first =
        wait(REACTION, || Ok(device.used_idx_on(q)? == 1))? && work::succeeded(device, kind)?;
    device.set_status(status)?;
    device.set_used_on(q, 0, MARK)?;
    device.set_status(status & !STATUS_DRIVER_OK)?;
    device.set_status(status)?;
    work::submit(device, kind, 1)?;
    let second =
        wait(REACTION, || Ok(device.used_idx_on(q)? == 2))? && work::succeeded(device, kind)?;
    let replayed = device.used_on(q, 0)?.0 != MARK;
    let after = device.status()?;
    let needs_reset = after & STATUS_NEEDS_RESET != 0;
    let recovered = work::works(device, kind)?;
    let mut o = Outcome::new(first && second && !replayed && !needs_reset && recovered);
    o.flag("first", first)
        .flag("second", second)
        .flag("replayed", replayed)
        .flag("needs_reset", needs_reset)
        .field("status", format!("{after:#04x}"))
        .flag("recovered", recovered);
    Ok(o)
}

/// The device's MSI-X capability: where it is, its table size and where the table is.
struct Msix {
    cap: usize,
    entries: usize,
    bar: u8,
    offset: usize,
}

fn msix(pci: &PciFunction) -> Result<Msix> {
    let cap = pci
        .find_capability(CAP_ID_MSIX)?
        .ok_or_else(|| Error::runtime(format!("{} has no MSI-X capability", pci.address)))?;
    let control = pci.config_u16(cap + 2)?;
    let table = pci.config_u32(cap + 4)?;
    Ok(Msix {
        cap,
        entries: usize::from(control & 0x7ff) + 1,
        bar: (table & 7) as u8,
        offset: (table & !7) as usize,
    })
}

fn set_control(pci: &PciFunction, cap: usize, value: u16) -> Result<()> {
    pci.config_write(cap + 2, &value.to_le_bytes())
}

/// MSI-X on, vectors on every queue, and while the device works without pause: entries
/// masked and unmasked, their address and data rewritten, the function mask toggled, the
/// queue's vector moved. Then MSI-X off; the device must work.
pub fn msix_storm(device: &mut Device, kind: Kind) -> Result<Outcome> {
    let m = msix(device.pci())?;
    let control = device.pci().config_u16(m.cap + 2)? & !(MSIX_ENABLE | MSIX_FUNCTION_MASK);
    let table = m.offset;
    {
        let bar = device.bar_map(m.bar)?;
        for e in 0..m.entries {
            bar.write::<u32>(table + e * ENTRY, NOWHERE)?;
            bar.write::<u32>(table + e * ENTRY + 4, 0)?;
            bar.write::<u32>(table + e * ENTRY + 8, 0x40)?;
            bar.write::<u32>(table + e * ENTRY + 12, 0)?;
        }
    }
    set_control(device.pci(), m.cap, control | MSIX_ENABLE)?;
    work::init(device, kind, true)?;
    let q = work::work_queue(kind);
    let (mut submitted, mut completed, mut rewrites) = (0u16, 0u16, 0u64);
    work::submit(device, kind, 0)?;
    submitted += 1;
    let start = Instant::now();
    while start.elapsed() < STORM {
        let used = device.used_idx_on(q)?;
        if used == submitted {
            completed = used;
            work::submit(device, kind, submitted)?;
            submitted = submitted.wrapping_add(1);
        }
        let bar = device.bar_map(m.bar)?;
        let i = rewrites as usize;
        for e in 0..m.entries {
            let at = table + e * ENTRY;
            bar.write::<u32>(at + 12, VECTOR_MASKED)?;
            bar.write::<u32>(at + 8, 0x30 + (i + e) as u32 % 0xc0)?;
            bar.write::<u32>(at, NOWHERE | ((i as u32 & 1) << 3))?;
            bar.write::<u32>(at + 12, 0)?;
        }
        if i % 16 == 0 {
            set_control(
                device.pci(),
                m.cap,
                control | MSIX_ENABLE | MSIX_FUNCTION_MASK,
            )?;
            let _ = device.set_queue_vector(q, if i % 32 == 0 { NO_VECTOR } else { 1 })?;
            let _ = device.set_config_vector(if i % 32 == 0 { NO_VECTOR } else { 0 })?;
            set_control(device.pci(), m.cap, control | MSIX_ENABLE)?;
        }
        // The pending bits, as a driver polling them would.
        let _ = bar.read::<u64>(m.offset + 0x2000)?;
        rewrites += 1;
    }
    {
        let bar = device.bar_map(m.bar)?;
        for e in 0..m.entries {
            bar.write::<u32>(table + e * ENTRY + 12, VECTOR_MASKED)?;
        }
    }
    set_control(device.pci(), m.cap, control)?;
    let needs_reset = device.status()? & STATUS_NEEDS_RESET != 0;
    let recovered = work::works(device, kind)?;
    let mut o = Outcome::new(completed > 0 && !needs_reset && recovered);
    o.field("rewrites", rewrites)
        .field("completed", completed)
        .flag("needs_reset", needs_reset)
        .flag("recovered", recovered);
    Ok(o)
}

/// Points BAR `bar` of `pci` at `address` (a 32-bit memory BAR).
fn move_bar(pci: &PciFunction, bar: u8, address: u64) -> Result<()> {
    let reg = PciFunction::bar_register(bar);
    let flags = pci.config_u32(reg)? & 0xf;
    pci.config_write(reg, &((address as u32 & !0xf) | flags).to_le_bytes())
}

/// This device's BAR moved exactly over the other device's BAR, then half a region past
/// it (its notification area over the other's MSI-X table), back each time; meanwhile the
/// other device does its work through its own BAR. Afterwards both must work.
pub fn bar_over_bar(device: &mut Device, kind: Kind, over: &str) -> Result<Outcome> {
    let mut other = Device::open(over)?;
    let other_kind = work::device_kind(over)?;
    let bar = device.common_bar();
    let home = device.bar_address()?;
    let target = other.bar_address()?;
    let mut during = true;
    let mut old_reads_nothing = true;
    for shift in [0u64, 0x1000] {
        work::init(&mut other, other_kind, false)?;
        move_bar(device.pci(), bar, target + shift)?;
        // Nothing decodes the old address any more: reads float high.
        old_reads_nothing &= device.status()? == 0xff;
        work::submit(&mut other, other_kind, 0)?;
        let q = work::work_queue(other_kind);
        during &= wait(REACTION, || Ok(other.used_idx_on(q)? == 1))?;
        move_bar(device.pci(), bar, home)?;
    }
    let back = device.bar_address()? == home && device.status()? != 0xff;
    let recovered = work::works(device, kind)?;
    let other_works = work::works(&mut other, other_kind)?;
    other.reset()?;
    let mut o = Outcome::new(back && recovered && other_works);
    o.field("over", over)
        .flag("old_address_unmapped", old_reads_nothing)
        .flag("other_worked_meanwhile", during)
        .flag("recovered", recovered)
        .flag("other_works", other_works);
    Ok(o)
}
