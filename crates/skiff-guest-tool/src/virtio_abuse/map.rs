//! Shared mappings seen by a device: a PCI BAR (MMIO; every access traps to the VMM) and
//! the DMA page the rings live in. All accesses are volatile and bounds-checked.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use crate::error::{last_os_error, Error, Result};

/// A mapping unmapped on drop, accessed only through volatile reads and writes.
pub struct Map {
    ptr: NonNull<u8>,
    len: usize,
}

/// Values that can be read and written whole at an aligned address.
pub trait Word: Copy {}
impl Word for u8 {}
impl Word for u16 {}
impl Word for u32 {}
impl Word for u64 {}

impl Map {
    /// Maps `len` bytes of `file` (a sysfs `resourceN` file) shared, read-write.
    pub fn file(file: &std::fs::File, len: usize, what: &str) -> Result<Map> {
        // SAFETY: a new mapping at an address of the kernel's choosing; no existing memory
        // is affected. The result is checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        Map::from_raw(p, len, what)
    }

    /// A locked 2 MiB huge page: physically contiguous, so one guest-physical address
    /// describes all of it to the device.
    pub fn huge_page(len: usize) -> Result<Map> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected. The result is
        // checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_HUGETLB
                    | libc::MAP_POPULATE
                    | libc::MAP_LOCKED,
                -1,
                0,
            )
        };
        Map::from_raw(p, len, "a 2 MiB huge page (is vm.nr_hugepages > 0?)")
    }

    fn from_raw(p: *mut libc::c_void, len: usize, what: &str) -> Result<Map> {
        if p == libc::MAP_FAILED {
            return Err(last_os_error(&format!("mmap {what}")));
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| Error::runtime("mmap returned a null mapping"))?;
        Ok(Map { ptr, len })
    }

    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    fn at<T: Word>(&self, offset: usize) -> Result<*mut T> {
        let size = std::mem::size_of::<T>();
        let fits = offset.checked_add(size).is_some_and(|end| end <= self.len);
        if !fits || offset % size != 0 {
            return Err(Error::runtime(format!(
                "access of {size} bytes at {offset:#x} outside or misaligned in a {:#x}-byte mapping",
                self.len
            )));
        }
        // SAFETY: `offset + size <= len`, so the pointer stays inside the mapping.
        Ok(unsafe { self.ptr.as_ptr().add(offset) }.cast::<T>())
    }

    pub fn read<T: Word>(&self, offset: usize) -> Result<T> {
        let p = self.at::<T>(offset)?;
        // SAFETY: `p` is inside the live mapping and aligned for `T` (checked in `at`); any
        // bit pattern is a valid integer. Volatile: the device may change it (or, for a BAR,
        // the read itself is the request).
        Ok(unsafe { p.read_volatile() })
    }

    pub fn write<T: Word>(&self, offset: usize, value: T) -> Result<()> {
        let p = self.at::<T>(offset)?;
        // SAFETY: as in `read`; the mapping is writable and only this process uses it.
        unsafe { p.write_volatile(value) };
        Ok(())
    }

    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.read::<u8>(offset + i)?;
        }
        Ok(())
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping made by `Map::file` or `Map::huge_page`,
        // unmapped exactly once, here.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The guest-physical address behind virtual address `virt` of this process, from
/// /proc/self/pagemap (root sees the frame numbers).
pub fn physical_address(virt: usize) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    const PAGE: usize = 4096;
    let pagemap = std::fs::File::open("/proc/self/pagemap")
        .map_err(|e| Error::runtime(format!("open /proc/self/pagemap: {e}")))?;
    let mut entry = [0u8; 8];
    pagemap
        .read_exact_at(&mut entry, (virt / PAGE * 8) as u64)
        .map_err(|e| Error::runtime(format!("read /proc/self/pagemap: {e}")))?;
    let entry = u64::from_le_bytes(entry);
    let present = entry & (1 << 63) != 0;
    let pfn = entry & ((1 << 55) - 1);
    if !present || pfn == 0 {
        return Err(Error::runtime(format!(
            "page at {virt:#x} has no frame number in pagemap (not root, or not present)"
        )));
    }
    Ok(pfn * PAGE as u64 + (virt % PAGE) as u64)
}
