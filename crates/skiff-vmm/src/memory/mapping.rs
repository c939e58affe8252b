//! The host mapping behind guest RAM: private anonymous memory at a 2 MiB-aligned address,
//! with the few system calls that act on it (madvise, mincore).

use std::io;
use std::ptr::NonNull;

use super::{MemoryError, PAGE_SIZE};

/// Host alignment of guest RAM, so that KVM can map it with huge pages in the nested tables.
pub(super) const HUGE_PAGE: usize = 2 << 20;

/// A private anonymous mapping at a 2 MiB-aligned address, unmapped on drop.
pub(super) struct HostMapping {
    pub(super) base: NonNull<u8>,
    pub(super) len: usize,
}

// SAFETY: the mapping is plain memory; concurrent access is coordinated by the guest and the
// users of `GuestMemoryMmap`, exactly as for vm-memory's own mappings.
unsafe impl Send for HostMapping {}
// SAFETY: as above.
unsafe impl Sync for HostMapping {}

impl HostMapping {
    pub(super) fn new(len: usize) -> io::Result<Self> {
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

    pub(super) fn exclude_from_core_dumps(&self) -> Result<(), MemoryError> {
        // Guest RAM has no business in a core dump of the VMM (size, and tenant data).
        self.madvise(0, self.len, libc::MADV_DONTDUMP)
    }

    /// Lets KSM merge the mapping's pages, or undoes that (unmerging copies shared pages
    /// back). Returns whether KSM now may merge them: false on a kernel without KSM.
    pub(super) fn set_mergeable(&self, mergeable: bool) -> Result<bool, MemoryError> {
        let advice = if mergeable {
            libc::MADV_MERGEABLE
        } else {
            libc::MADV_UNMERGEABLE
        };
        match self.madvise(0, self.len, advice) {
            // EINVAL means a kernel without KSM: sharing is then simply off.
            Err(MemoryError::Madvise(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::warn!("KSM is not available on this host; guest pages will not be shared");
                Ok(false)
            }
            Err(e) => Err(e),
            Ok(()) => Ok(mergeable),
        }
    }

    pub(super) fn madvise(
        &self,
        offset: usize,
        len: usize,
        advice: libc::c_int,
    ) -> Result<(), MemoryError> {
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

    /// Bytes of `[offset, offset+len)` resident in host RAM (swapped-out pages are not).
    pub(super) fn resident_bytes(&self, offset: usize, len: usize) -> io::Result<u64> {
        const CHUNK_PAGES: usize = 64 * 1024;
        let first = offset / PAGE_SIZE as usize;
        let pages = len / PAGE_SIZE as usize;
        let mut vec = vec![0u8; CHUNK_PAGES.min(pages)];
        let mut resident = 0u64;
        let mut done = 0;
        while done < pages {
            let n = CHUNK_PAGES.min(pages - done);
            self.resident_map(first + done, &mut vec[..n])?;
            resident += vec[..n].iter().filter(|b| *b & 1 != 0).count() as u64;
            done += n;
        }
        Ok(resident * PAGE_SIZE)
    }

    /// mincore(2) for `out.len()` pages from page `first`: bit 0 of each byte is set for a
    /// page resident in host RAM.
    pub(super) fn resident_map(&self, first: usize, out: &mut [u8]) -> io::Result<()> {
        let page = PAGE_SIZE as usize;
        if (first + out.len()) * page > self.len {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: the range is inside our mapping (checked above) and `out` has one byte
        // per page of it, which is what mincore writes.
        let rc = unsafe {
            libc::mincore(
                self.base.as_ptr().add(first * page) as *mut libc::c_void,
                out.len() * page,
                out.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
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
