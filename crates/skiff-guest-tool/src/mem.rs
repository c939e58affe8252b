//! Anonymous memory: map, touch, unmap.

use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::datagen::{fill_pages, PageContent, MIB, PAGE_SIZE};
use crate::error::{last_os_error, Error, Result};

/// A private anonymous mapping, unmapped on drop. Its length is a non-zero multiple of the page
/// size, and it is always viewed as 64-bit words (mmap returns page-aligned memory).
pub struct Mapping {
    ptr: NonNull<u64>,
    len: usize,
}

impl Mapping {
    /// Map `mib` MiB of anonymous, private, read-write memory (not yet touched).
    pub fn anonymous_mib(mib: u64) -> Result<Self> {
        let len = mib_to_bytes(mib)?;
        if len == 0 {
            return Err(Error::usage("size must be at least 1 MiB"));
        }
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing; no existing
        // memory is affected. The result is checked for MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_os_error(&format!("mmap {mib} MiB")));
        }
        let ptr = NonNull::new(p.cast::<u64>())
            .ok_or_else(|| Error::runtime("mmap returned a null mapping"))?;
        Ok(Mapping { ptr, len })
    }

    /// Length in bytes.
    #[cfg(test)]
    pub fn len_bytes(&self) -> usize {
        self.len
    }

    /// The whole mapping as words.
    pub fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: `ptr` is the start of a live, page-aligned, read-write mapping of `len` bytes
        // owned exclusively by `self` (borrowed mutably here), and anonymous memory is always
        // initialised (zero-filled), so every u64 in it is valid.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len / 8) }
    }

    /// Write every page of the mapping with `content`; returns the time it took.
    pub fn touch(&mut self, content: PageContent) -> Duration {
        let start = Instant::now();
        fill_pages(self.words_mut(), 0, content);
        start.elapsed()
    }

    /// Unmap now, reporting a failure (dropping also unmaps, but silently).
    pub fn free(self) -> Result<()> {
        let (ptr, len) = (self.ptr, self.len);
        std::mem::forget(self);
        // SAFETY: `ptr`/`len` describe the mapping created in `anonymous_mib`; `self` has been
        // forgotten so nothing can use or unmap it again.
        let rc = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
        if rc != 0 {
            return Err(last_os_error("munmap"));
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe the mapping created in `anonymous_mib`, which is unmapped
        // exactly once, here (or in `free`, which forgets `self`).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// `mib` MiB in bytes, rejecting sizes that do not fit the address space.
pub fn mib_to_bytes(mib: u64) -> Result<usize> {
    mib.checked_mul(MIB)
        .and_then(|b| usize::try_from(b).ok())
        .filter(|b| b % PAGE_SIZE == 0 && *b <= isize::MAX as usize)
        .ok_or_else(|| Error::usage(format!("size {mib} MiB is too large")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn map_touch_free() {
        let mut m = Mapping::anonymous_mib(2).unwrap();
        assert_eq!(m.len_bytes(), 2 << 20);
        assert!(m.words_mut().iter().all(|&w| w == 0));
        m.touch(PageContent::Varied { nonce: 1 });
        assert!(m.words_mut().iter().all(|&w| w != 0));
        m.free().unwrap();
    }

    #[test]
    fn sizes() {
        assert_eq!(mib_to_bytes(3).ok(), Some(3 << 20));
        assert!(mib_to_bytes(u64::MAX).is_err());
        assert!(Mapping::anonymous_mib(0).is_err());
    }
}
