//! Guest RAM: one private anonymous mapping, 2 MiB-aligned, split into guest regions around
//! the MMIO hole. Private anonymous memory is what KSM can merge and what MADV_DONTNEED
//! really frees, so `discard` is the one place where guest pages go back to the host.

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

pub const PAGE_SIZE: u64 = 4096;
/// Host alignment of guest RAM, so that KVM can map it with huge pages in the nested tables.
const HUGE_PAGE: usize = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory size {0} bytes is not a positive multiple of 4 KiB")]
    BadSize(u64),
    #[error("cannot map {size} MiB of guest memory: {source}")]
    Map { size: u64, source: io::Error },
    #[error("cannot set up guest memory regions: {0}")]
    Regions(String),
    #[error("range {gpa:#x}+{len:#x} is not page-aligned guest RAM")]
    BadRange { gpa: u64, len: u64 },
    #[error("madvise failed on guest memory: {0}")]
    Madvise(io::Error),
}

/// One contiguous block of guest RAM as KVM and the e820 map see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRegion {
    pub guest_addr: u64,
    pub len: u64,
    /// Offset of this region inside the host mapping.
    pub host_offset: u64,
}

/// The host side of guest RAM. Cloning is cheap and shares the same memory.
#[derive(Clone)]
pub struct GuestRam {
    inner: Arc<Inner>,
}

struct Inner {
    // Field order matters: `memory` refers into `mapping`, so it is dropped first.
    memory: GuestMemoryMmap,
    regions: Vec<RamRegion>,
    mapping: HostMapping,
}

/// Options for how guest RAM is backed.
#[derive(Clone, Copy, Debug)]
pub struct RamOptions {
    /// Let KSM merge identical guest pages (MADV_MERGEABLE).
    pub mergeable: bool,
}

impl Default for RamOptions {
    fn default() -> Self {
        RamOptions { mergeable: true }
    }
}

impl GuestRam {
    pub fn new(size: u64, options: RamOptions) -> Result<Self, MemoryError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) {
            return Err(MemoryError::BadSize(size));
        }
        let regions = split_around_hole(size);
        let mapping = HostMapping::new(size as usize).map_err(|source| MemoryError::Map {
            size: size >> 20,
            source,
        })?;
        mapping.advise(options.mergeable)?;
        let mut mmap_regions = Vec::with_capacity(regions.len());
        for r in &regions {
            // SAFETY: the pointer and length lie inside `mapping`, which lives in the same
            // `Inner` as the `GuestMemoryMmap` built here and is dropped after it.
            let region = unsafe {
                vm_memory::mmap::MmapRegionBuilder::new(r.len as usize)
                    .with_raw_mmap_pointer(mapping.base.as_ptr().add(r.host_offset as usize))
            }
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
            .build()
            .map_err(|e| MemoryError::Regions(e.to_string()))?;
            let region: MmapRegion<()> = region;
            let guest = GuestRegionMmap::new(region, GuestAddress(r.guest_addr))
                .ok_or_else(|| MemoryError::Regions("region wraps the address space".into()))?;
            mmap_regions.push(guest);
        }
        let memory = GuestMemoryMmap::from_regions(mmap_regions)
            .map_err(|e| MemoryError::Regions(e.to_string()))?;
        Ok(GuestRam {
            inner: Arc::new(Inner {
                memory,
                regions,
                mapping,
            }),
        })
    }

    /// Guest memory for the rust-vmm crates (loaders, virtqueues). Do not clone it out:
    /// its lifetime is tied to this `GuestRam`.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.inner.memory
    }

    pub fn regions(&self) -> &[RamRegion] {
        &self.inner.regions
    }

    pub fn size(&self) -> u64 {
        self.inner.mapping.len as u64
    }

    /// Host address of the start of a region, for KVM memory slots.
    pub fn host_addr(&self, region: &RamRegion) -> u64 {
        self.inner.mapping.base.as_ptr() as u64 + region.host_offset
    }

    /// The host address of the whole mapping: its alignment is what KVM's huge mappings need.
    pub fn host_base(&self) -> usize {
        self.inner.mapping.base.as_ptr() as usize
    }

    /// The end of RAM below the MMIO hole.
    pub fn low_ram_end(&self) -> u64 {
        self.inner
            .regions
            .iter()
            .filter(|r| r.guest_addr < MMIO_HOLE_START)
            .map(|r| r.guest_addr + r.len)
            .max()
            .unwrap_or(0)
    }

    /// Gives the pages of `[gpa, gpa+len)` back to the host. The guest reads zeros there
    /// afterwards. This is the only path by which guest memory leaves the VMM's resident set.
    pub fn discard(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        let offset = self
            .host_offset(gpa, len)
            .ok_or(MemoryError::BadRange { gpa, len })?;
        self.inner
            .mapping
            .madvise(offset, len as usize, libc::MADV_DONTNEED)
    }

    /// Bytes of guest RAM currently resident in host memory.
    pub fn resident_bytes(&self) -> io::Result<u64> {
        self.inner.mapping.resident_bytes()
    }

    fn host_offset(&self, gpa: u64, len: u64) -> Option<usize> {
        if !gpa.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) || len == 0 {
            return None;
        }
        let end = gpa.checked_add(len)?;
        let region = self
            .inner
            .regions
            .iter()
            .find(|r| gpa >= r.guest_addr && end <= r.guest_addr + r.len)?;
        usize::try_from(region.host_offset + (gpa - region.guest_addr)).ok()
    }
}

/// Lays `size` bytes of RAM out from 0, skipping the MMIO hole below 4 GiB.
fn split_around_hole(size: u64) -> Vec<RamRegion> {
    if size <= MMIO_HOLE_START {
        return vec![RamRegion {
            guest_addr: 0,
            len: size,
            host_offset: 0,
        }];
    }
    vec![
        RamRegion {
            guest_addr: 0,
            len: MMIO_HOLE_START,
            host_offset: 0,
        },
        RamRegion {
            guest_addr: MMIO_HOLE_END,
            len: size - MMIO_HOLE_START,
            host_offset: MMIO_HOLE_START,
        },
    ]
}

/// A private anonymous mapping at a 2 MiB-aligned address, unmapped on drop.
struct HostMapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; concurrent access is coordinated by the guest and the
// users of `GuestMemoryMmap`, exactly as for vm-memory's own mappings.
unsafe impl Send for HostMapping {}
// SAFETY: as above.
unsafe impl Sync for HostMapping {}

impl HostMapping {
    fn new(len: usize) -> io::Result<Self> {
        let padded = len
            .checked_add(HUGE_PAGE)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing; no
        // existing memory is affected. NORESERVE: guest RAM is overcommitted by design.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                padded,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let head = aligned - start;
        let tail = padded - head - len;
        // SAFETY: both ranges lie inside the mapping just made and are not used by anyone.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
        }
        let base = NonNull::new(aligned as *mut u8)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(HostMapping { base, len })
    }

    fn advise(&self, mergeable: bool) -> Result<(), MemoryError> {
        // Guest RAM has no business in a core dump of the VMM (size, and tenant data).
        self.madvise(0, self.len, libc::MADV_DONTDUMP)?;
        if mergeable {
            // EINVAL means a kernel without KSM: sharing is then simply off.
            match self.madvise(0, self.len, libc::MADV_MERGEABLE) {
                Err(MemoryError::Madvise(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                    log::warn!("KSM is not available on this host; guest pages will not be shared");
                }
                other => other?,
            }
        }
        Ok(())
    }

    fn madvise(&self, offset: usize, len: usize, advice: libc::c_int) -> Result<(), MemoryError> {
        debug_assert!(offset + len <= self.len);
        // SAFETY: the range lies inside our own mapping (checked by callers); madvise does
        // not invalidate Rust references (the guest memory is only reached through volatile
        // accessors).
        let rc = unsafe {
            libc::madvise(
                self.base.as_ptr().add(offset) as *mut libc::c_void,
                len,
                advice,
            )
        };
        if rc != 0 {
            return Err(MemoryError::Madvise(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn resident_bytes(&self) -> io::Result<u64> {
        const CHUNK_PAGES: usize = 64 * 1024;
        let pages = self.len / PAGE_SIZE as usize;
        let mut vec = vec![0u8; CHUNK_PAGES.min(pages)];
        let mut resident = 0u64;
        let mut page = 0;
        while page < pages {
            let n = CHUNK_PAGES.min(pages - page);
            // SAFETY: the range is inside our mapping and `vec` holds at least `n` bytes.
            let rc = unsafe {
                libc::mincore(
                    self.base.as_ptr().add(page * PAGE_SIZE as usize) as *mut libc::c_void,
                    n * PAGE_SIZE as usize,
                    vec.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            resident += vec[..n].iter().filter(|b| *b & 1 != 0).count() as u64;
            page += n;
        }
        Ok(resident * PAGE_SIZE)
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: we own this mapping and nothing refers to it any more (see `Inner`).
        unsafe {
            libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn small_ram_is_one_aligned_region() {
        let ram = GuestRam::new(64 << 20, RamOptions::default()).expect("map");
        assert_eq!(ram.regions().len(), 1);
        assert_eq!(ram.host_base() % HUGE_PAGE, 0);
        assert_eq!(ram.low_ram_end(), 64 << 20);
    }

    #[test]
    fn large_ram_skips_the_mmio_hole() {
        let regions = split_around_hole(5 << 30);
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0].len, MMIO_HOLE_START);
        assert_eq!(regions[1].guest_addr, MMIO_HOLE_END);
        assert_eq!(regions[1].len, (5 << 30) - MMIO_HOLE_START);
    }

    #[test]
    fn discard_frees_resident_pages_and_reads_back_zero() {
        let ram = GuestRam::new(16 << 20, RamOptions { mergeable: false }).expect("map");
        let data = vec![0xabu8; 4 << 20];
        ram.memory()
            .write_slice(&data, GuestAddress(0))
            .expect("write");
        let before = ram.resident_bytes().expect("mincore");
        assert!(before >= 4 << 20, "resident {before}");
        ram.discard(0, 4 << 20).expect("discard");
        let after = ram.resident_bytes().expect("mincore");
        assert!(after + (4 << 20) <= before, "before {before} after {after}");
        let mut back = [1u8; 16];
        ram.memory()
            .read_slice(&mut back, GuestAddress(4096))
            .expect("read");
        assert_eq!(back, [0u8; 16]);
    }

    #[test]
    fn discard_rejects_ranges_outside_ram_or_unaligned() {
        let ram = GuestRam::new(16 << 20, RamOptions::default()).expect("map");
        assert!(ram.discard(1, 4096).is_err());
        assert!(ram.discard(16 << 20, 4096).is_err());
        assert!(ram.discard((16 << 20) - 4096, 8192).is_err());
        assert!(ram.discard(0, 0).is_err());
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(GuestRam::new(0, RamOptions::default()).is_err());
        assert!(GuestRam::new(4095, RamOptions::default()).is_err());
    }
}
