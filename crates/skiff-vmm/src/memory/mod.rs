//! Guest RAM: one private anonymous mapping, 2 MiB-aligned, split into guest regions around
//! the MMIO hole. Private anonymous memory is what KSM can merge and what MADV_DONTNEED
//! really frees, so `release` is the one place where guest pages leave host RAM: discarded
//! (balloon, free page reporting), paged out to host swap or marked cold (hypervisor-level
//! reclaim).
//!
//! Around it, what the memory manager needs measured and done: [`dirty_log`] and
//! [`sampling`] estimate the working set, [`sharing`] reports KSM's figures and estimates
//! what could be shared, [`reclaim`] picks cold pages and pages them out.
//!
//! Pages are numbered by "RAM page": the page's offset in the host mapping / 4 KiB. The
//! mapping is contiguous, so RAM pages run 0..pages() across the MMIO hole.

pub mod dirty_log;
mod mapping;
pub mod reclaim;
pub mod sampling;
pub mod sharing;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::layout::{MMIO_HOLE_END, MMIO_HOLE_START};
use mapping::HostMapping;
#[cfg(test)]
use mapping::HUGE_PAGE;

pub const PAGE_SIZE: u64 = 4096;

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

/// How pages leave host RAM through [`GuestRam::release`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// MADV_DONTNEED: freed; the guest reads zeros there afterwards.
    Discard,
    /// MADV_PAGEOUT: written to host swap now; the guest's next access faults them back.
    PageOut,
    /// MADV_COLD: kept, but first in line when the host reclaims memory.
    Cold,
}

impl Release {
    fn advice(self) -> libc::c_int {
        match self {
            Release::Discard => libc::MADV_DONTNEED,
            Release::PageOut => libc::MADV_PAGEOUT,
            Release::Cold => libc::MADV_COLD,
        }
    }
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
    /// KSM may merge the pages (MADV_MERGEABLE is in effect).
    mergeable: AtomicBool,
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
        mapping.exclude_from_core_dumps()?;
        let mergeable = options.mergeable && mapping.set_mergeable(true)?;
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
                mergeable: AtomicBool::new(mergeable),
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
    /// afterwards.
    pub fn discard(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        let offset = self
            .host_offset(gpa, len)
            .ok_or(MemoryError::BadRange { gpa, len })?;
        self.release(offset, len as usize, Release::Discard)
    }

    /// Releases RAM pages `[first, first+count)` from host RAM as `how` says.
    pub fn release_pages(&self, first: u64, count: u64, how: Release) -> Result<(), MemoryError> {
        let bad = || MemoryError::BadRange {
            gpa: first.saturating_mul(PAGE_SIZE),
            len: count.saturating_mul(PAGE_SIZE),
        };
        let end = first.checked_add(count).ok_or_else(bad)?;
        if count == 0 || end > self.pages() {
            return Err(bad());
        }
        self.release(
            (first * PAGE_SIZE) as usize,
            (count * PAGE_SIZE) as usize,
            how,
        )
    }

    /// The only path by which guest memory leaves the VMM's resident set.
    fn release(&self, offset: usize, len: usize, how: Release) -> Result<(), MemoryError> {
        self.inner.mapping.madvise(offset, len, how.advice())
    }

    /// Bytes of guest RAM currently resident in host memory.
    pub fn resident_bytes(&self) -> io::Result<u64> {
        self.inner.mapping.resident_bytes(0, self.inner.mapping.len)
    }

    /// Guest RAM in 4 KiB pages.
    pub fn pages(&self) -> u64 {
        self.size() / PAGE_SIZE
    }

    /// Residency of RAM pages `first..first+out.len()`: bit 0 of each byte is set for a page
    /// in host RAM (not swapped out, not discarded, not yet touched).
    pub fn resident_map(&self, first: u64, out: &mut [u8]) -> io::Result<()> {
        let first =
            usize::try_from(first).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.inner.mapping.resident_map(first, out)
    }

    /// Copies RAM page `page` into `buf` (volatile reads: the guest may be writing it).
    pub fn read_page(&self, page: u64, buf: &mut [u8; PAGE_SIZE as usize]) -> io::Result<()> {
        let gpa = self
            .page_gpa(page)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.inner
            .memory
            .read_slice(buf, GuestAddress(gpa))
            .map_err(io::Error::other)
    }

    /// The guest physical address of RAM page `page`.
    pub fn page_gpa(&self, page: u64) -> Option<u64> {
        let offset = page.checked_mul(PAGE_SIZE)?;
        self.inner
            .regions
            .iter()
            .find(|r| offset >= r.host_offset && offset < r.host_offset + r.len)
            .map(|r| r.guest_addr + (offset - r.host_offset))
    }

    /// Whether KSM may merge this VM's pages.
    pub fn mergeable(&self) -> bool {
        self.inner.mergeable.load(Ordering::Relaxed)
    }

    /// Lets KSM merge guest RAM or stops it (which copies merged pages back). Returns the
    /// new state: false on a host without KSM.
    pub fn set_mergeable(&self, mergeable: bool) -> Result<bool, MemoryError> {
        let now = self.inner.mapping.set_mergeable(mergeable)?;
        self.inner.mergeable.store(now, Ordering::Relaxed);
        Ok(now)
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
    fn page_numbers_span_the_mmio_hole() {
        let ram = GuestRam::new(64 << 20, RamOptions::default()).expect("map");
        assert_eq!(ram.pages(), (64 << 20) / PAGE_SIZE);
        assert_eq!(ram.page_gpa(1), Some(PAGE_SIZE));
        assert_eq!(ram.page_gpa(ram.pages()), None);
        let regions = split_around_hole(5 << 30);
        let hole_page = MMIO_HOLE_START / PAGE_SIZE;
        assert_eq!(regions[1].host_offset / PAGE_SIZE, hole_page);
    }

    #[test]
    fn pageout_and_cold_go_through_release() {
        let ram = GuestRam::new(8 << 20, RamOptions { mergeable: false }).expect("map");
        ram.memory()
            .write_slice(&[7u8; 8192], GuestAddress(0))
            .expect("write");
        let mut map = [0u8; 2];
        ram.resident_map(0, &mut map).expect("mincore");
        assert_eq!(map.map(|b| b & 1), [1, 1]);
        // Without host swap a page-out is a no-op, with swap it leaves RAM: either way the
        // data must survive.
        ram.release_pages(0, 2, Release::PageOut).expect("pageout");
        ram.release_pages(0, 2, Release::Cold).expect("cold");
        let mut page = [0u8; PAGE_SIZE as usize];
        ram.read_page(1, &mut page).expect("read");
        assert!(page.iter().all(|b| *b == 7));
        assert!(ram
            .release_pages(ram.pages() - 1, 2, Release::Cold)
            .is_err());
        assert!(ram.release_pages(0, 0, Release::Cold).is_err());
    }

    #[test]
    fn mergeable_can_be_switched() {
        let ram = GuestRam::new(8 << 20, RamOptions { mergeable: false }).expect("map");
        assert!(!ram.mergeable());
        let on = ram.set_mergeable(true).expect("madvise");
        assert_eq!(ram.mergeable(), on);
        assert!(!ram.set_mergeable(false).expect("madvise"));
        assert!(!ram.mergeable());
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(GuestRam::new(0, RamOptions::default()).is_err());
        assert!(GuestRam::new(4095, RamOptions::default()).is_err());
    }
}
