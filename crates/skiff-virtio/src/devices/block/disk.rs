//! The storage behind a block device: a trait so that request handling can be tested and
//! fuzzed over memory ([`MemDisk`]), what a disk tells the guest about its layout
//! ([`Geometry`]), and the flush rule every real disk follows ([`StickyFlush`]).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vm_memory::VolatileSlice;

use super::SECTOR_SIZE;

/// Block sizes and limits as the host knows them, advertised in virtio-blk's configuration
/// (blk_size, topology, discard and write-zeroes limits). All sizes in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// The smallest unit the disk addresses (a power of two, at least 512).
    pub logical_block: u32,
    /// The unit the disk writes without read-modify-write (a multiple of the logical one).
    pub physical_block: u32,
    /// Offset of the first physically aligned logical block.
    pub alignment_offset: u32,
    /// Smallest and best request sizes the disk prefers (0: no preference).
    pub min_io: u32,
    pub opt_io: u32,
    /// Discard works in units of this size; `None`: no discard is offered.
    pub discard_granularity: Option<u32>,
    /// Write-zeroes is offered.
    pub write_zeroes: bool,
}

impl Default for Geometry {
    fn default() -> Self {
        Geometry {
            logical_block: SECTOR_SIZE as u32,
            physical_block: SECTOR_SIZE as u32,
            alignment_offset: 0,
            min_io: 0,
            opt_io: 0,
            discard_granularity: None,
            write_zeroes: false,
        }
    }
}

/// A disk as the request handlers see it. Every method takes `&self`: several requests of
/// one disk run at once, on the device's I/O threads.
pub trait Disk: Send + Sync {
    /// Size in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn geometry(&self) -> Geometry {
        Geometry::default()
    }
    /// Fills `bufs` (guest memory, in order) from the disk at `offset`: all of them, or an
    /// error.
    fn read_vectored_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()>;
    /// Writes `bufs` (guest memory, in order) to the disk at `offset`: all of them, or an
    /// error.
    fn write_vectored_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()>;
    /// Makes written data durable. Once it failed, it fails for good ([`StickyFlush`]).
    fn flush(&self) -> io::Result<()>;
    /// The range's data is no longer needed (it may read back as anything).
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// The range reads back as zeros; with `unmap`, its space may be given back.
    fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// A flush that failed once keeps failing. After an EIO from `fdatasync` the kernel may
/// have dropped the dirty pages it could not write and marked them clean, so a second
/// `fdatasync` succeeds although the data is gone ("fsyncgate"); the guest must never hear
/// of a success there.
#[derive(Debug, Default)]
pub struct StickyFlush {
    failed: AtomicBool,
}

impl StickyFlush {
    /// Runs `sync` unless an earlier one failed; a failure is remembered.
    pub fn flush(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "an earlier flush of this disk failed: written data may be lost",
            ));
        }
        sync().inspect_err(|_| self.failed.store(true, Ordering::Release))
    }
}

/// A disk in memory, for tests and fuzzing; it discards and zeroes like a file.
pub struct MemDisk {
    data: Mutex<Vec<u8>>,
    geometry: Geometry,
}

impl MemDisk {
    pub fn new(data: Vec<u8>) -> Self {
        MemDisk {
            data: Mutex::new(data),
            geometry: Geometry {
                discard_granularity: Some(SECTOR_SIZE as u32),
                write_zeroes: true,
                ..Geometry::default()
            },
        }
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn zero(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut data = self.lock();
        let range = in_memory_range(data.len(), offset, len)?;
        data[range].fill(0);
        Ok(())
    }
}

impl Disk for MemDisk {
    fn len(&self) -> u64 {
        self.lock().len() as u64
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn read_vectored_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        let data = self.lock();
        let range = in_memory_range(data.len(), offset, total_len(bufs)?)?;
        let mut at = range.start;
        for buf in bufs {
            buf.copy_from(&data[at..at + buf.len()]);
            at += buf.len();
        }
        Ok(())
    }

    fn write_vectored_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        let mut data = self.lock();
        let range = in_memory_range(data.len(), offset, total_len(bufs)?)?;
        let mut at = range.start;
        for buf in bufs {
            buf.copy_to(&mut data[at..at + buf.len()]);
            at += buf.len();
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zero(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        self.zero(offset, len)
    }
}

fn total_len(bufs: &[VolatileSlice<'_>]) -> io::Result<u64> {
    bufs.iter()
        .try_fold(0u64, |sum, b| sum.checked_add(b.len() as u64))
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `[offset, offset + len)` as indices of a disk of `size` bytes, if it fits.
fn in_memory_range(size: usize, offset: u64, len: u64) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok();
    let end = offset
        .checked_add(len)
        .and_then(|end| usize::try_from(end).ok());
    match (start, end) {
        (Some(start), Some(end)) if end <= size => Ok(start..end),
        _ => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_flush_fails_every_later_flush() {
        let sticky = StickyFlush::default();
        assert!(sticky.flush(|| Ok(())).is_ok());
        let eio = sticky.flush(|| Err(io::Error::from_raw_os_error(libc::EIO)));
        assert_eq!(eio.map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)));
        // The kernel would now say "fine": the disk must not.
        let mut called = false;
        let later = sticky.flush(|| {
            called = true;
            Ok(())
        });
        assert!(later.is_err());
        assert!(!called, "a sync after a failed one proves nothing");
    }

    #[test]
    fn memory_disk_zeroes_in_range_only() {
        let disk = MemDisk::new(vec![7u8; 2048]);
        disk.write_zeroes(512, 512, false).expect("zero");
        disk.discard(1536, 512).expect("discard");
        let data = disk.contents();
        assert!(data[..512].iter().all(|b| *b == 7));
        assert!(data[512..1024].iter().all(|b| *b == 0));
        assert!(data[1024..1536].iter().all(|b| *b == 7));
        assert!(data[1536..].iter().all(|b| *b == 0));
        assert!(disk.write_zeroes(1536, 1024, false).is_err());
        assert!(disk.discard(u64::MAX, 2).is_err());
    }
}
