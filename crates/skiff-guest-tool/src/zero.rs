//! `zero-range`: zero part of a block device the two ways Linux offers, which reach a
//! virtio-blk disk as WRITE_ZEROES without and with the unmap flag: BLKZEROOUT (the kernel
//! asks the disk not to deallocate) and `fallocate(PUNCH_HOLE)` on the device (it may).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Context, Error, Result};

/// BLKZEROOUT (linux/fs.h: _IO(0x12, 127)).
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// Zeroes `[offset, offset + len)` of `path`; returns the bytes zeroed.
pub fn zero_range(path: &Path, offset: u64, len: u64, punch: bool) -> Result<u64> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .context(|| format!("open {}", path.display()))?;
    let fd = file.as_raw_fd();
    let ret = if punch {
        let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(Error::usage("zero-range: sizes too large"));
        };
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        unsafe { libc::fallocate(fd, mode, off, n) }
    } else {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKZEROOUT reads two u64 (start, length) from the pointer, which points
        // to `range` for the call.
        unsafe { libc::ioctl(fd, BLKZEROOUT, range.as_ptr()) }
    };
    if ret < 0 {
        let how = if punch {
            "fallocate(PUNCH_HOLE)"
        } else {
            "BLKZEROOUT"
        };
        return Err(std::io::Error::last_os_error())
            .context(|| format!("zero-range: {how} on {}", path.display()));
    }
    Ok(len)
}
