//! ACPI tables: RSDP → XSDT → FADT (hardware-reduced: sleep and reset registers, no PM
//! blocks), MADT (one local APIC per vCPU and the IO-APIC) and a DSDT with `_S5_` for
//! power-off and a pvpanic device so the VMM learns of guest panics.

use acpi_tables::{aml, fadt, gas, rsdp::Rsdp, sdt::Sdt, xsdt::XSDT, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT, ACPI_TABLES, ACPI_TABLES_END, CMOS_IRQ, CMOS_PORT, COM1_IRQ, COM1_PORT,
    GED_IRQ, IOAPIC_ADDR, LAPIC_ADDR, PVPANIC_PORT,
};

const OEM_ID: [u8; 6] = *b"SKIFF ";
const OEM_TABLE_ID: [u8; 8] = *b"SKIFFVM ";
const OEM_REVISION: u32 = 1;

/// MADT flag: the machine also has dual 8259 PICs (KVM's in-kernel irqchip emulates them).
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_LOCAL_X2APIC: u8 = 9;
const MADT_ENABLED: u32 = 1;
/// Local APIC IDs from here on need x2APIC entries.
const XAPIC_MAX_ID: u32 = 0xff;

/// IA-PC boot flags: no VGA. The i8042 flag stays clear: only its reset line is emulated.
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables do not fit below 1 MiB ({0} bytes)")]
    TooLarge(u64),
    #[error("cannot write ACPI tables to guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// Writes the tables to guest memory and returns the address of the RSDP.
pub fn write_tables(mem: &GuestMemoryMmap, vcpus: u32) -> Result<GuestAddress, AcpiError> {
    let dsdt = dsdt();
    let madt = madt(vcpus);

    let mut writer = TableWriter::new(mem, ACPI_TABLES);
    let rsdp_addr = writer.reserve(Rsdp::len() as u64)?;
    let dsdt_addr = writer.put(dsdt.as_slice())?;
    let fadt_addr = writer.put(&to_bytes(&fadt(dsdt_addr)))?;
    let madt_addr = writer.put(madt.as_slice())?;
    let mcfg_addr = writer.put(&crate::pci::acpi::mcfg(OEM_ID, OEM_TABLE_ID, OEM_REVISION))?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    xsdt.add_entry(mcfg_addr);
    let xsdt_addr = writer.put(&to_bytes(&xsdt))?;

    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    mem.write_slice(&to_bytes(&rsdp), GuestAddress(rsdp_addr))
        .map_err(AcpiError::Write)?;
    Ok(GuestAddress(rsdp_addr))
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn fadt(dsdt_addr: u64) -> fadt::FADT {
    let io_port = |port: u16| {
        gas::GAS::new(
            gas::AddressSpace::SystemIo,
            8,
            0,
            gas::AccessSize::ByteAccess,
            u64::from(port),
        )
    };
    let mut builder = fadt::FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(fadt::Flags::HwReducedAcpi)
        .flag(fadt::Flags::ResetRegSup)
        .flag(fadt::Flags::PwrButton)
        .flag(fadt::Flags::SlpButton)
        .preferred_pm_profile(fadt::PmProfile::EnterpriseServer);
    builder.iapc_boot_arch = IAPC_BOOT_ARCH_NO_VGA.into();
    builder.sleep_control_reg = io_port(ACPI_SLEEP_CONTROL_PORT);
    builder.sleep_status_reg = io_port(ACPI_SLEEP_STATUS_PORT);
    builder.reset_reg = io_port(ACPI_RESET_PORT);
    builder.reset_value = ACPI_RESET_VALUE;
    builder.finalize()
}

fn madt(vcpus: u32) -> Sdt {
    let mut body = Vec::new();
    body.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    body.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for id in 0..vcpus {
        if id < XAPIC_MAX_ID {
            body.extend_from_slice(&[MADT_LOCAL_APIC, 8, id as u8, id as u8]);
            body.extend_from_slice(&MADT_ENABLED.to_le_bytes());
        } else {
            body.extend_from_slice(&[MADT_LOCAL_X2APIC, 16, 0, 0]);
            body.extend_from_slice(&id.to_le_bytes()); // x2APIC ID
            body.extend_from_slice(&MADT_ENABLED.to_le_bytes());
            body.extend_from_slice(&id.to_le_bytes()); // ACPI processor UID
        }
    }
    // One IO-APIC with GSIs 0-23, ID after the CPUs' (as a BIOS would number it).
    body.extend_from_slice(&[MADT_IO_APIC, 12, 0, 0]);
    body.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    let mut madt = Sdt::new(*b"APIC", 36, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    madt.append_slice(&body);
    madt
}

fn dsdt() -> Sdt {
    // \_S5_: the sleep type written to the sleep control register to power off.
    let s5_type = ACPI_S5_SLEEP_TYPE;
    let zero = 0u8;
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&s5_type, &s5_type, &zero, &zero]),
    );
    // A hardware-reduced ACPI machine has no legacy PIC, so Linux maps no ISA IRQs by
    // itself: each legacy device must name its interrupt here.
    let com1 = LegacyDevice::new("COM1", "PNP0501", COM1_PORT, 8, Some(COM1_IRQ));
    let rtc = LegacyDevice::new("RTC_", "PNP0B00", CMOS_PORT, 2, Some(CMOS_IRQ));
    // pvpanic (QEMU0001): Linux's pvpanic driver writes 1 to this port on panic.
    let pvpanic = LegacyDevice::new("PEVT", "QEMU0001", PVPANIC_PORT, 1, None);

    let mut body = Vec::new();
    s5.to_aml_bytes(&mut body);
    let (com1, rtc, pvpanic) = (com1.aml(), rtc.aml(), pvpanic.aml());
    // The PCI host bridge and its ECAM reservation (crate::pci::acpi).
    let pci = RawAml(crate::pci::acpi::dsdt_devices());
    let power_button = power_button();
    aml::Scope::new(
        "\\_SB_".into(),
        vec![&com1, &rtc, &pvpanic, &pci, &power_button],
    )
    .to_aml_bytes(&mut body);
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&body);
    dsdt
}

/// The power button of a hardware-reduced machine (no fixed PM1 events): a Generic Event
/// Device whose one interrupt runs `_EVT`, which notifies the button (0x80: pressed).
fn power_button() -> RawAml {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
    let uid_value = 0u8;
    let uid = aml::Name::new("_UID".into(), &uid_value);
    let button = aml::Device::new("PWRB".into(), vec![&hid, &uid]);

    let ged_hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let irq = aml::Interrupt::new(true, true, false, false, GED_IRQ);
    let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&irq]));
    let button_path = aml::Path::new("\\_SB_.PWRB");
    let pressed = 0x80u8;
    let notify = aml::Notify::new(&button_path, &pressed);
    let evt = aml::Method::new("_EVT".into(), 1, false, vec![&notify]);
    let ged = aml::Device::new("GED_".into(), vec![&ged_hid, &uid, &crs, &evt]);
    let mut bytes = Vec::new();
    button.to_aml_bytes(&mut bytes);
    ged.to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

/// An ISA device at fixed I/O ports, with an optional edge-triggered, active-high IRQ.
struct LegacyDevice {
    name: &'static str,
    hid: &'static str,
    port: u16,
    len: u8,
    irq: Option<u32>,
}

/// A compressible EISA ID: three capital letters and four hex digits (`PNP0501`).
fn is_eisa_id(id: &str) -> bool {
    id.len() == 7
        && id[..3].chars().all(|c| c.is_ascii_uppercase())
        && id[3..].chars().all(|c| c.is_ascii_hexdigit())
}

/// AML bytecode already encoded.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

impl LegacyDevice {
    fn new(name: &'static str, hid: &'static str, port: u16, len: u8, irq: Option<u32>) -> Self {
        LegacyDevice {
            name,
            hid,
            port,
            len,
            irq,
        }
    }

    fn aml(&self) -> RawAml {
        let io = aml::IO::new(self.port, self.port, 1, self.len);
        let irq = self
            .irq
            .map(|n| aml::Interrupt::new(true, true, false, false, n));
        let mut resources: Vec<&dyn Aml> = vec![&io];
        if let Some(irq) = &irq {
            resources.push(irq);
        }
        let crs_template = aml::ResourceTemplate::new(resources);
        // EISA IDs (PNPxxxx) are compressed; others (QEMU0001) are strings.
        let hid = if is_eisa_id(self.hid) {
            aml::Name::new("_HID".into(), &aml::EISAName::new(self.hid))
        } else {
            aml::Name::new("_HID".into(), &self.hid)
        };
        let uid_value = 0u8;
        let uid = aml::Name::new("_UID".into(), &uid_value);
        let sta_value = 0x0fu8; // present, enabled, shown, functioning
        let sta = aml::Name::new("_STA".into(), &sta_value);
        let crs = aml::Name::new("_CRS".into(), &crs_template);
        let device = aml::Device::new(self.name.into(), vec![&hid, &uid, &sta, &crs]);
        let mut bytes = Vec::new();
        device.to_aml_bytes(&mut bytes);
        RawAml(bytes)
    }
}

/// Places tables one after another, 16-byte aligned, inside the ACPI area.
struct TableWriter<'a> {
    mem: &'a GuestMemoryMmap,
    next: u64,
}

impl<'a> TableWriter<'a> {
    fn new(mem: &'a GuestMemoryMmap, start: u64) -> Self {
        TableWriter { mem, next: start }
    }

    fn reserve(&mut self, len: u64) -> Result<u64, AcpiError> {
        let addr = self.next;
        let end = addr + len;
        if end > ACPI_TABLES_END {
            return Err(AcpiError::TooLarge(end - ACPI_TABLES));
        }
        self.next = end.next_multiple_of(16);
        Ok(addr)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<u64, AcpiError> {
        let addr = self.reserve(bytes.len() as u64)?;
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn table_at(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let mut header = [0u8; 8];
        mem.read_slice(&mut header, GuestAddress(addr))
            .expect("read");
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(addr))
            .expect("read");
        table
    }

    #[test]
    fn tables_chain_from_rsdp_with_valid_checksums() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).expect("mem");
        let rsdp = write_tables(&mem, 4).expect("tables");
        let mut rsdp_bytes = [0u8; 36];
        mem.read_slice(&mut rsdp_bytes, rsdp).expect("read");
        assert_eq!(&rsdp_bytes[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp_bytes[..20]) && checksum_ok(&rsdp_bytes));
        let xsdt_addr = u64::from_le_bytes(rsdp_bytes[24..32].try_into().expect("8 bytes"));
        let xsdt = table_at(&mem, xsdt_addr);
        assert!(checksum_ok(&xsdt));
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let sigs: Vec<Vec<u8>> = entries
            .iter()
            .map(|a| table_at(&mem, *a))
            .inspect(|t| assert!(checksum_ok(t)))
            .map(|t| t[..4].to_vec())
            .collect();
        assert_eq!(
            sigs,
            vec![b"FACP".to_vec(), b"APIC".to_vec(), b"MCFG".to_vec()]
        );
        let madt = table_at(&mem, entries[1]);
        let lapics = madt[44..].chunks(8).take_while(|e| e[0] == 0).count();
        assert_eq!(lapics, 4);
    }

    #[test]
    fn many_vcpus_use_x2apic_entries() {
        let madt = madt(300);
        let bytes = madt.as_slice();
        assert!(checksum_ok(bytes));
        let mut offset = 44;
        let (mut xapic, mut x2apic) = (0, 0);
        while offset < bytes.len() {
            match bytes[offset] {
                MADT_LOCAL_APIC => xapic += 1,
                MADT_LOCAL_X2APIC => x2apic += 1,
                _ => {}
            }
            offset += bytes[offset + 1] as usize;
        }
        assert_eq!((xapic, x2apic), (255, 45));
    }
}
