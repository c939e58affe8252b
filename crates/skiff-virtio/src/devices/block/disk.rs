//! The storage behind a block device: a trait so that request handling can be tested and
//! fuzzed over memory, and the raw image file that backs real disks.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use vm_memory::VolatileSlice;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("disk image {path} is in use by another VM (it is locked)")]
    Locked { path: String },
}

pub trait Disk: Send {
    /// Size in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `bufs` (guest memory, in order) from the disk at `offset`: all of them, or an
    /// error.
    fn read_vectored_at(&mut self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()>;
    /// Writes `bufs` (guest memory, in order) to the disk at `offset`: all of them, or an
    /// error.
    fn write_vectored_at(&mut self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()>;
    /// Makes written data durable.
    fn flush(&mut self) -> io::Result<()>;
}

/// A raw image file, opened read-write or read-only and locked against a second writer.
pub struct DiskFile {
    file: File,
    len: u64,
}

impl DiskFile {
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let name = || path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: name(),
                source,
            })?;
        // Two VMs writing one image corrupt it: writers take an exclusive lock, readers a
        // shared one, and neither waits.
        let op = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            return Err(DiskError::Locked { path: name() });
        }
        let len = file
            .metadata()
            .map_err(|source| DiskError::Open {
                path: name(),
                source,
            })?
            .len();
        Ok(DiskFile { file, len })
    }
}

impl Disk for DiskFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_vectored_at(&mut self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        transfer_all(self.file.as_raw_fd(), bufs, offset, Direction::Read)
    }

    fn write_vectored_at(&mut self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        transfer_all(self.file.as_raw_fd(), bufs, offset, Direction::Write)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// The kernel's limit on iovecs per call (UIO_MAXIOV).
const MAX_IOVECS: usize = 1024;

/// `preadv`/`pwritev` between the file and guest memory directly (no bounce buffer: one
/// copy, as the kernel makes it), repeated until every buffer is done.
fn transfer_all(
    fd: RawFd,
    bufs: &[VolatileSlice<'_>],
    offset: u64,
    direction: Direction,
) -> io::Result<()> {
    // The guards keep the slices' mappings valid while the kernel uses their addresses.
    let guards: Vec<_> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| b.ptr_guard_mut())
        .collect();
    let mut iovecs: Vec<libc::iovec> = guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: g.len(),
        })
        .collect();
    let mut first = 0;
    let mut offset = offset;
    while first < iovecs.len() {
        let count = (iovecs.len() - first).min(MAX_IOVECS) as libc::c_int;
        let at = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let rest = iovecs[first..].as_ptr();
        // SAFETY: `rest` points to `count` iovecs, each describing guest memory that
        // `bufs` borrows and `guards` keeps mapped, with its true length; the kernel
        // touches only those bytes.
        let done = unsafe {
            match direction {
                Direction::Read => libc::preadv(fd, rest, count, at),
                Direction::Write => libc::pwritev(fd, rest, count, at),
            }
        };
        let mut done = match usize::try_from(done) {
            Ok(0) => {
                return Err(io::Error::from(match direction {
                    Direction::Read => io::ErrorKind::UnexpectedEof,
                    Direction::Write => io::ErrorKind::WriteZero,
                }))
            }
            Ok(n) => n,
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
        };
        offset += done as u64;
        // Drop the finished iovecs and trim a partly done one.
        while done > 0 {
            let iov = &mut iovecs[first];
            if done >= iov.iov_len {
                done -= iov.iov_len;
                first += 1;
            } else {
                iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(done).cast();
                iov.iov_len -= done;
                done = 0;
            }
        }
    }
    Ok(())
}

/// A disk in memory, for tests and fuzzing.
impl Disk for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_vectored_at(&mut self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        let mut at = in_memory_range(self.as_slice().len(), bufs, offset)?;
        for buf in bufs {
            buf.copy_from(&self[at..at + buf.len()]);
            at += buf.len();
        }
        Ok(())
    }

    fn write_vectored_at(&mut self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        let mut at = in_memory_range(self.as_slice().len(), bufs, offset)?;
        for buf in bufs {
            buf.copy_to(&mut self[at..at + buf.len()]);
            at += buf.len();
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The start of `bufs`' range at `offset` in a disk of `len` bytes, if it fits.
fn in_memory_range(len: usize, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<usize> {
    let total = bufs
        .iter()
        .try_fold(0usize, |sum, b| sum.checked_add(b.len()));
    usize::try_from(offset)
        .ok()
        .filter(|&o| {
            total
                .and_then(|t| o.checked_add(t))
                .is_some_and(|end| end <= len)
        })
        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    fn image(name: &str, data: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("skiff-disk-{}-{name}", std::process::id()));
        std::fs::write(&path, data).expect("image");
        path
    }

    #[test]
    fn vectored_io_goes_straight_between_the_file_and_guest_memory() {
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
        let path = image("vectored", &data);
        let mut disk = DiskFile::open(&path, false).expect("open");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("mem");
        // Three uneven pieces, as a guest's scatter list may be.
        let pieces = [(0x1000, 100usize), (0x3000, 1000), (0x5000, 3000)];
        let slices: Vec<_> = pieces
            .iter()
            .map(|&(a, n)| mem.get_slice(GuestAddress(a), n).expect("slice"))
            .collect();
        disk.read_vectored_at(&slices, 512).expect("read");
        let mut at = 512;
        for &(a, n) in &pieces {
            let mut got = vec![0u8; n];
            mem.read_slice(&mut got, GuestAddress(a)).expect("guest");
            assert_eq!(got, data[at..at + n]);
            at += n;
        }
        mem.write_slice(&[0xee; 100], GuestAddress(0x1000))
            .expect("guest");
        disk.write_vectored_at(&slices[..1], 0).expect("write");
        let after = std::fs::read(&path).expect("image");
        assert_eq!(after[..100], [0xee; 100]);
        assert_eq!(after[100..], data[100..]);
        let past = disk.read_vectored_at(&slices, 8000);
        assert_eq!(
            past.map_err(|e| e.kind()),
            Err(io::ErrorKind::UnexpectedEof)
        );
        std::fs::remove_file(path).expect("clean up");
    }

    #[test]
    fn a_second_writer_is_refused() {
        let path = image("locked", &[0; 512]);
        let _first = DiskFile::open(&path, false).expect("open");
        assert!(matches!(
            DiskFile::open(&path, false),
            Err(DiskError::Locked { .. })
        ));
        std::fs::remove_file(path).expect("clean up");
    }
}
