//! How devices reach guest RAM. The VMM owns the mapping (its `GuestRam`), so devices hold
//! a handle that keeps it alive rather than a bare `GuestMemoryMmap` clone.

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

pub trait GuestMemoryProvider: Send + Sync {
    fn memory(&self) -> &GuestMemoryMmap;
}

/// A `GuestMemoryMmap` that owns its mappings (tests, fuzz targets).
impl GuestMemoryProvider for GuestMemoryMmap {
    fn memory(&self) -> &GuestMemoryMmap {
        self
    }
}

pub type SharedMemory = Arc<dyn GuestMemoryProvider>;
