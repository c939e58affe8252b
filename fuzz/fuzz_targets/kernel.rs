//! The kernel loader (bzImage header, ELF program headers and the PVH note): any image is
//! loaded into guest memory or refused, and a loaded one lies inside guest memory.
#![no_main]

use std::io::Cursor;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use skiff_vmm::boot::{load_kernel, LoadedKernel};
use skiff_vmm::layout::HIGH_RAM;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// 4 MiB of guest RAM, mapped once: the loader only writes to it.
const RAM: u64 = 4 << 20;

fn memory() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).expect("guest memory")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(kernel) = load_kernel(memory(), &mut Cursor::new(data)) else {
        return;
    };
    assert!(kernel.end() <= RAM, "kernel ends at {:#x}", kernel.end());
    if let LoadedKernel::BzImage { load_addr, .. } = kernel {
        assert!(load_addr >= HIGH_RAM && load_addr < RAM);
    }
});
