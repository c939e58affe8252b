//! Guest memory as vhost's `GuestAddressSpace`, keeping the VMM's mapping alive.

use std::ops::Deref;

use vm_memory::{GuestAddressSpace, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::memory::SharedMemory;

#[derive(Clone)]
pub struct MemSpace(pub SharedMemory);

impl Deref for MemSpace {
    type Target = GuestMemoryMmap;

    fn deref(&self) -> &GuestMemoryMmap {
        self.0.memory()
    }
}

impl GuestAddressSpace for MemSpace {
    type M = GuestMemoryMmap;
    type T = MemSpace;

    fn memory(&self) -> MemSpace {
        self.clone()
    }
}

/// vhost's memory table: each RAM region with its address in this process.
pub fn regions(mem: &GuestMemoryMmap) -> Vec<vhost::VhostUserMemoryRegionInfo> {
    mem.iter()
        .map(|r| vhost::VhostUserMemoryRegionInfo {
            guest_phys_addr: r.start_addr().0,
            memory_size: r.len(),
            userspace_addr: r.as_ptr() as u64,
            mmap_offset: 0,
            mmap_handle: -1,
        })
        .collect()
}
