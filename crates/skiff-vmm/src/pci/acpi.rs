//! What the ACPI tables say about PCI: the host bridge (PNP0A08, compatible with PNP0A03)
//! with its bus range and memory window, the ECAM area as a motherboard resource (Linux
//! uses ECAM only if it is reserved so), and the MCFG table that points at it.

use acpi_tables::{aml, mcfg::MCFG, Aml};

use crate::layout::{PCI_CONFIG_PORT, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO_END, PCI_MMIO_START};

/// AML for `\_SB_.PCI0` and `\_SB_.PCIR`, to go inside the DSDT's `\_SB_` scope.
pub fn dsdt_devices() -> Vec<u8> {
    let mut bytes = Vec::new();
    host_bridge().to_aml_bytes(&mut bytes);
    ecam_reservation().to_aml_bytes(&mut bytes);
    bytes
}

struct Bytes(Vec<u8>);

impl Aml for Bytes {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

fn host_bridge() -> Bytes {
    let zero = 0u8;
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08"));
    let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03"));
    let adr = aml::Name::new("_ADR".into(), &zero);
    let seg = aml::Name::new("_SEG".into(), &zero);
    let uid = aml::Name::new("_UID".into(), &zero);
    let bbn = aml::Name::new("_BBN".into(), &zero);
    let buses = aml::AddressSpace::new_bus_number(0u16, 0u16);
    // The configuration ports are the bridge's own (Linux drops them from the windows).
    let config_ports = aml::IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, 8);
    let window = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO_START as u32,
        (PCI_MMIO_END - 1) as u32,
        None,
    );
    let crs_template = aml::ResourceTemplate::new(vec![&buses, &config_ports, &window]);
    let crs = aml::Name::new("_CRS".into(), &crs_template);
    let device = aml::Device::new(
        "PCI0".into(),
        vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs],
    );
    let mut bytes = Vec::new();
    device.to_aml_bytes(&mut bytes);
    Bytes(bytes)
}

fn ecam_reservation() -> Bytes {
    let one = 1u8;
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02"));
    let uid = aml::Name::new("_UID".into(), &one);
    let ecam = aml::Memory32Fixed::new(false, PCI_ECAM_START as u32, PCI_ECAM_SIZE as u32);
    let crs_template = aml::ResourceTemplate::new(vec![&ecam]);
    let crs = aml::Name::new("_CRS".into(), &crs_template);
    let device = aml::Device::new("PCIR".into(), vec![&hid, &uid, &crs]);
    let mut bytes = Vec::new();
    device.to_aml_bytes(&mut bytes);
    Bytes(bytes)
}

/// The MCFG table: ECAM for segment 0, bus 0.
pub fn mcfg(oem_id: [u8; 6], oem_table_id: [u8; 8], oem_revision: u32) -> Vec<u8> {
    let mut table = MCFG::new(oem_id, oem_table_id, oem_revision);
    table.add_ecam(PCI_ECAM_START, 0, 0, 0);
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcfg_points_at_ecam_with_a_valid_checksum() {
        let t = mcfg(*b"SKIFF ", *b"SKIFFVM ", 1);
        assert_eq!(&t[..4], b"MCFG");
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let base = u64::from_le_bytes(t[44..52].try_into().expect("8 bytes"));
        assert_eq!(base, PCI_ECAM_START);
        assert_eq!((t[54], t[55]), (0, 0), "bus 0 to 0");
    }

    #[test]
    fn dsdt_devices_name_the_bridge() {
        let aml = dsdt_devices();
        let has = |s: &[u8]| aml.windows(s.len()).any(|w| w == s);
        assert!(has(b"PCI0") && has(b"PCIR") && has(b"_CRS") && has(b"_BBN"));
    }
}
