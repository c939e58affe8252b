//! What kind of file a disk is, and what a host block device says about itself (its size
//! and block sizes through ioctls, its discard support through sysfs): the checks that
//! refuse, before the guest starts, a disk that cannot work.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::{Geometry, SECTOR_SIZE};

// The block layer's ioctls (linux/fs.h), not all of them in libc.
const BLKROGET: libc::c_ulong = 0x125e;
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKIOMIN: libc::c_ulong = 0x1278;
const BLKIOOPT: libc::c_ulong = 0x1279;
const BLKALIGNOFF: libc::c_ulong = 0x127a;
const BLKPBSZGET: libc::c_ulong = 0x127b;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
pub(super) const BLKDISCARD: libc::c_ulong = 0x1277;
pub(super) const BLKZEROOUT: libc::c_ulong = 0x127f;

/// What a disk's file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskKind {
    File,
    BlockDevice,
}

/// Why a file cannot be a disk (the one line the user sees, after the path).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unusable {
    #[error("is a directory, not a disk image or block device")]
    Directory,
    #[error("is a character device, not a block device: it has no size and cannot seek")]
    CharacterDevice,
    #[error("is a FIFO, not a disk image or block device")]
    Fifo,
    #[error("is a socket, not a disk image or block device")]
    Socket,
    #[error("has no size the VMM can read ({0})")]
    SizeUnreadable(String),
    #[error("is empty (0 bytes): the guest would see a disk of no size")]
    Empty,
    #[error("is {0} bytes, not a multiple of 512: the guest cannot address its last bytes")]
    NotSectorMultiple(u64),
    #[error("is a read-only block device: give it read-only (`ro`)")]
    ReadOnlyDevice,
}

/// The kind of `file`, or why it cannot be a disk.
pub fn kind(meta: &std::fs::Metadata) -> Result<DiskKind, Unusable> {
    let ft = meta.file_type();
    if ft.is_file() {
        Ok(DiskKind::File)
    } else if ft.is_block_device() {
        Ok(DiskKind::BlockDevice)
    } else if ft.is_dir() {
        Err(Unusable::Directory)
    } else if ft.is_char_device() {
        Err(Unusable::CharacterDevice)
    } else if ft.is_fifo() {
        Err(Unusable::Fifo)
    } else {
        Err(Unusable::Socket)
    }
}

/// The disk's size in bytes, refused if the guest could not use it whole.
pub fn size(file: &File, meta: &std::fs::Metadata, kind: DiskKind) -> Result<u64, Unusable> {
    let size = match kind {
        DiskKind::File => meta.len(),
        DiskKind::BlockDevice => {
            let mut bytes: u64 = 0;
            ioctl(file, BLKGETSIZE64, &mut bytes)
                .map_err(|e| Unusable::SizeUnreadable(e.to_string()))?;
            bytes
        }
    };
    check_size(size)?;
    Ok(size)
}

pub fn check_size(size: u64) -> Result<(), Unusable> {
    if size == 0 {
        Err(Unusable::Empty)
    } else if !size.is_multiple_of(SECTOR_SIZE) {
        Err(Unusable::NotSectorMultiple(size))
    } else {
        Ok(())
    }
}

/// Whether the block device under `file` is read-only (BLKROGET).
pub fn device_read_only(file: &File) -> io::Result<bool> {
    let mut ro: libc::c_int = 0;
    ioctl(file, BLKROGET, &mut ro)?;
    Ok(ro != 0)
}

/// A block device's geometry: sizes from its ioctls, discard from sysfs where readable
/// (`queue/discard_max_bytes` 0 means it cannot discard), else its physical block.
pub fn device_geometry(file: &File, meta: &std::fs::Metadata) -> io::Result<Geometry> {
    let int = |request| -> io::Result<u32> {
        let mut value: libc::c_int = 0;
        ioctl(file, request, &mut value)?;
        u32::try_from(value).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
    };
    let logical = int(BLKSSZGET)?;
    let physical = int(BLKPBSZGET)?.max(logical);
    let mut min_io: libc::c_uint = 0;
    ioctl(file, BLKIOMIN, &mut min_io)?;
    let mut opt_io: libc::c_uint = 0;
    ioctl(file, BLKIOOPT, &mut opt_io)?;
    let alignment = int(BLKALIGNOFF).unwrap_or(0);
    let rdev = meta.rdev();
    let queue = format!(
        "/sys/dev/block/{}:{}/queue",
        libc::major(rdev),
        libc::minor(rdev)
    );
    let sysfs = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("{queue}/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let discard_granularity = match sysfs("discard_max_bytes") {
        Some(0) => None,
        _ => Some(
            sysfs("discard_granularity")
                .and_then(|g| u32::try_from(g).ok())
                .filter(|g| *g > 0)
                .unwrap_or(physical)
                .max(logical),
        ),
    };
    Ok(Geometry {
        logical_block: logical,
        physical_block: physical,
        alignment_offset: alignment,
        min_io,
        opt_io,
        discard_granularity,
        write_zeroes: true,
    })
}

/// A regular file's geometry: 512-byte sectors, its file system's block as the physical
/// block and the discard unit (holes are punched in whole blocks).
pub fn file_geometry(meta: &std::fs::Metadata) -> Geometry {
    let block = u32::try_from(meta.blksize())
        .ok()
        .filter(|b| b.is_power_of_two() && *b >= SECTOR_SIZE as u32)
        .unwrap_or(SECTOR_SIZE as u32);
    Geometry {
        physical_block: block,
        discard_granularity: Some(block),
        write_zeroes: true,
        ..Geometry::default()
    }
}

fn ioctl<T>(file: &File, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: each request used here writes one value of the size of `T` (the callers
    // pair them as linux/fs.h declares) into `arg`, which lives for the call.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), request, arg as *mut T) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_and_block_devices_are_disks() {
        let meta = |p: &str| std::fs::metadata(p).expect(p);
        assert_eq!(kind(&meta("/")), Err(Unusable::Directory));
        assert_eq!(kind(&meta("/dev/null")), Err(Unusable::CharacterDevice));
        assert_eq!(kind(&meta("/proc/self/status")), Ok(DiskKind::File));
        let fifo = std::env::temp_dir().join(format!("skiff-probe-fifo-{}", std::process::id()));
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
        // SAFETY: a NUL-terminated path; mkfifo creates a node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(kind(&meta(&fifo.to_string_lossy())), Err(Unusable::Fifo));
        std::fs::remove_file(&fifo).expect("clean up");
    }

    #[test]
    fn sizes_must_be_whole_sectors() {
        assert_eq!(check_size(0), Err(Unusable::Empty));
        assert_eq!(check_size(1000), Err(Unusable::NotSectorMultiple(1000)));
        assert_eq!(check_size(1 << 30), Ok(()));
    }

    #[test]
    fn a_file_has_no_device_size() {
        let file = File::open("/proc/self/status").expect("open");
        let mut bytes = 0u64;
        assert!(ioctl(&file, BLKGETSIZE64, &mut bytes).is_err());
    }
}
