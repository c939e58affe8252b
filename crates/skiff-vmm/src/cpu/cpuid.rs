//! The CPUID a vCPU sees: what KVM supports, with the topology of this VM (one socket,
//! `vcpus` cores, one thread each) and the hypervisor bit.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_VMX: u32 = 1 << 5;
const AMD_ECX_SVM: u32 = 1 << 2;
const EDX_HTT: u32 = 1 << 28;
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Bits of the APIC ID that number the cores: enough for `vcpus` cores.
pub fn core_id_bits(vcpus: u32) -> u32 {
    if vcpus <= 1 {
        0
    } else {
        32 - (vcpus - 1).leading_zeros()
    }
}

/// The CPUID for vCPU `apic_id` of a VM with `vcpus` vCPUs, from KVM's supported set.
pub fn guest_cpuid(supported: &CpuId, apic_id: u32, vcpus: u32) -> CpuId {
    let mut cpuid = supported.clone();
    let amd = is_amd(supported.as_slice());
    let bits = core_id_bits(vcpus);
    let max_ids = 1u32 << bits;
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, apic_id, vcpus, bits, max_ids, amd);
    }
    cpuid
}

fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries
        .iter()
        .find(|e| e.function == LEAF_VENDOR)
        .is_some_and(|e| e.ebx == u32::from_le_bytes(*b"Auth"))
}

fn patch_entry(
    e: &mut kvm_cpuid_entry2,
    apic_id: u32,
    vcpus: u32,
    bits: u32,
    max_ids: u32,
    amd: bool,
) {
    match e.function {
        LEAF_FEATURES => {
            let logical = max_ids.min(255);
            e.ebx = (e.ebx & 0x0000_ffff) | ((apic_id & 0xff) << 24) | (logical << 16);
            // No nested virtualization: guests do not get VT-x/AMD-V of their own.
            e.ecx = (e.ecx | ECX_HYPERVISOR) & !ECX_VMX;
            if vcpus > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // Cores per package − 1, and how many logical CPUs share the cache: only L3 is
            // shared by all cores.
            let cache_level = (e.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 { max_ids - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | ((max_ids - 1).min(63) << 26) | ((sharing & 0xfff) << 14);
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = TOPOLOGY_LEVEL_SMT << 8;
                }
                1 => {
                    e.eax = bits;
                    e.ebx = vcpus;
                    e.ecx = (TOPOLOGY_LEVEL_CORE << 8) | 1;
                }
                index => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = index & 0xff;
                }
            }
        }
        LEAF_EXT_FEATURES => {
            e.ecx &= !AMD_ECX_SVM;
            if !amd {
                return;
            }
            if vcpus > 1 {
                e.ecx |= AMD_ECX_CMP_LEGACY;
            } else {
                e.ecx &= !AMD_ECX_CMP_LEGACY;
            }
        }
        LEAF_AMD_SIZE if amd => {
            e.ecx = (e.ecx & !0xf0ff) | (bits << 12) | ((vcpus - 1) & 0xff);
        }
        LEAF_AMD_TOPOLOGY if amd => {
            e.eax = apic_id;
            e.ebx = apic_id & 0xff; // core (compute unit) ID; one thread per core
            e.ecx = 0; // node 0, one node per package
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ..Default::default()
        }
    }

    fn supported(vendor: &[u8; 4]) -> CpuId {
        let mut vendor_leaf = entry(LEAF_VENDOR, 0);
        vendor_leaf.ebx = u32::from_le_bytes(*vendor);
        let entries = [
            vendor_leaf,
            entry(LEAF_FEATURES, 0),
            entry(LEAF_TOPOLOGY, 0),
            entry(LEAF_TOPOLOGY, 1),
            entry(LEAF_TOPOLOGY, 2),
            entry(LEAF_AMD_SIZE, 0),
            entry(LEAF_AMD_TOPOLOGY, 0),
        ];
        CpuId::from_entries(&entries).expect("cpuid")
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .expect("leaf present")
    }

    #[test]
    fn core_bits_cover_the_vcpus() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(4), 2);
        assert_eq!(core_id_bits(5), 3);
    }

    #[test]
    fn topology_names_apic_ids_and_core_count() {
        let cpuid = guest_cpuid(&supported(b"Genu"), 3, 4);
        let f = find(&cpuid, LEAF_FEATURES, 0);
        assert_eq!(f.ebx >> 24, 3);
        assert_ne!(f.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(f.edx & EDX_HTT, 0);
        let core = find(&cpuid, LEAF_TOPOLOGY, 1);
        assert_eq!((core.eax, core.ebx, core.edx), (2, 4, 3));
        assert_eq!((core.ecx >> 8) & 0xff, TOPOLOGY_LEVEL_CORE);
        let invalid = find(&cpuid, LEAF_TOPOLOGY, 2);
        assert_eq!((invalid.ebx, (invalid.ecx >> 8) & 0xff), (0, 0));
    }

    #[test]
    fn amd_leaves_count_cores() {
        let cpuid = guest_cpuid(&supported(b"Auth"), 1, 2);
        assert_eq!(find(&cpuid, LEAF_AMD_SIZE, 0).ecx & 0xff, 1);
        assert_eq!(find(&cpuid, LEAF_AMD_TOPOLOGY, 0).eax, 1);
    }
}
