//! A boot file (kernel, initrd) mapped read-only, so loading it is one copy from the page
//! cache into guest RAM made by the VMM, not a `read()` per segment. The kernel copies
//! `read()` data with `rep movsb`, which emulated CPUs (QEMU's TCG, the emulated host of
//! docs/testing.md) execute one byte at a time; the VMM's own copy moves eight bytes a step.
//! The copy is the same on hardware, where either way costs a few milliseconds.
//!
//! The file must not shrink while it is mapped (a SIGBUS, as for any mapped file): it is
//! mapped only for the load, and Skiff's boot files are read-only inputs.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;

pub struct FileMap {
    addr: Option<NonNull<u8>>,
    len: usize,
}

impl FileMap {
    /// Opens and maps the file at `path`.
    pub fn open(path: &Path) -> io::Result<FileMap> {
        FileMap::new(&File::open(path)?)
    }

    pub fn new(file: &File) -> io::Result<FileMap> {
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let len = usize::try_from(meta.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large to map"))?;
        if len == 0 {
            // mmap refuses an empty length; an empty file is an empty slice.
            return Ok(FileMap { addr: None, len });
        }
        // SAFETY: a fresh private read-only mapping of an open file; nothing else refers to
        // the address range it returns.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(FileMap {
            addr: NonNull::new(raw.cast()),
            len,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        match self.addr {
            // SAFETY: the mapping is `len` readable bytes and lives as long as `self`.
            Some(addr) => unsafe { std::slice::from_raw_parts(addr.as_ptr(), self.len) },
            None => &[],
        }
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        if let Some(addr) = self.addr {
            // SAFETY: unmaps exactly the mapping made in `new`; no slice of it outlives `self`.
            unsafe { libc::munmap(addr.as_ptr().cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maps_a_file_and_an_empty_one() {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(b"kernel bytes").expect("write");
        assert_eq!(FileMap::new(&file).expect("map").bytes(), b"kernel bytes");
        let empty = tempfile::tempfile().expect("tempfile");
        assert_eq!(FileMap::new(&empty).expect("map").bytes(), b"");
        let dir = File::open(std::env::temp_dir()).expect("open dir");
        let err = FileMap::new(&dir).err().expect("a directory is refused");
        assert_eq!(err.to_string(), "not a regular file");
    }
}
