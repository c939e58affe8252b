//! A disk on the host: a raw image file or a block device, opened (or handed over already
//! open), checked, locked against a second writer, and served with positioned vectored
//! I/O, `fallocate` (files) or `BLKDISCARD`/`BLKZEROOUT` (devices).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vm_memory::VolatileSlice;

use super::probe::{self, DiskKind, Unusable, BLKDISCARD, BLKZEROOUT};
use super::transfer::{aligned, transfer_all, transfer_bounced, Direction};
use super::{Disk, Geometry, StickyFlush};

/// How the host caches a disk's data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// Through the host's page cache; a guest flush is `fdatasync`.
    #[default]
    Writeback,
    /// O_DIRECT: around the page cache; a guest flush is still `fdatasync` (the device's
    /// own write cache, the file's metadata).
    Direct,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open disk {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("disk {path} {reason}")]
    Unusable { path: String, reason: Unusable },
    #[error("disk {path} is in use by another VM or the host (it is locked, mounted or open exclusively)")]
    Locked { path: String },
    #[error("disk {path}: its file system does not support cache=direct (O_DIRECT)")]
    NoDirect { path: String },
}

/// How to open a disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenMode {
    pub read_only: bool,
    pub cache: CacheMode,
}

pub struct DiskFile {
    file: File,
    kind: DiskKind,
    len: u64,
    geometry: Geometry,
    direct: bool,
    flushed: StickyFlush,
}

impl DiskFile {
    /// Opens `path`. Writers open exclusively (O_EXCL: a block device that is mounted or
    /// open exclusively elsewhere is refused) and take an exclusive `flock`, readers a
    /// shared one; neither waits.
    pub fn open(path: &Path, mode: OpenMode) -> Result<Self, DiskError> {
        let name = || path.display().to_string();
        let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        if !mode.read_only {
            // Without O_CREAT, O_EXCL only means something for a block device.
            flags |= libc::O_EXCL;
        }
        if mode.cache == CacheMode::Direct {
            flags |= libc::O_DIRECT;
        }
        // Non-blocking, so that a FIFO is refused below rather than waited on forever.
        let file = OpenOptions::new()
            .read(true)
            .write(!mode.read_only)
            .custom_flags(flags)
            .open(path);
        let file = match file {
            Ok(file) => file,
            Err(e) => return Err(open_error(path, mode, e)),
        };
        Self::from_file(file, &name(), mode)
    }

    /// A disk from a file opened by someone else (the daemon hands the VMM its disks open):
    /// the same checks and locks as [`DiskFile::open`].
    pub fn from_file(file: File, name: &str, mode: OpenMode) -> Result<Self, DiskError> {
        let unusable = |reason| DiskError::Unusable {
            path: name.to_string(),
            reason,
        };
        let failed = |source| DiskError::Open {
            path: name.to_string(),
            source,
        };
        let meta = file.metadata().map_err(failed)?;
        let kind = probe::kind(&meta).map_err(unusable)?;
        blocking(&file).map_err(failed)?;
        let len = probe::size(&file, &meta, kind).map_err(unusable)?;
        let geometry = match kind {
            DiskKind::File => probe::file_geometry(&meta),
            DiskKind::BlockDevice => {
                if !mode.read_only && probe::device_read_only(&file).map_err(failed)? {
                    return Err(unusable(Unusable::ReadOnlyDevice));
                }
                probe::device_geometry(&file, &meta).map_err(failed)?
            }
        };
        let op = if mode.read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // Two VMs writing one image corrupt it. flock on an open file we own.
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            return Err(DiskError::Locked {
                path: name.to_string(),
            });
        }
        Ok(DiskFile {
            file,
            kind,
            len,
            geometry,
            direct: mode.cache == CacheMode::Direct,
            flushed: StickyFlush::default(),
        })
    }

    pub fn kind(&self) -> DiskKind {
        self.kind
    }

    fn transfer(&self, bufs: &[VolatileSlice<'_>], offset: u64, dir: Direction) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        if self.direct && !aligned(bufs, self.geometry.logical_block as usize) {
            return transfer_bounced(fd, bufs, offset, dir);
        }
        transfer_all(fd, bufs, offset, dir)
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// BLKDISCARD or BLKZEROOUT over `[offset, offset + len)`.
    fn range_ioctl(&self, request: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: both requests read two u64 (start, length) from the pointer, which
        // points to `range` for the duration of the call.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), request, range.as_ptr()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Writes zeros the plain way, for file systems without zero-range support.
    fn write_zero_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK) as usize;
            std::os::unix::fs::FileExt::write_all_at(&self.file, &zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EINVAL)
    )
}

impl Disk for DiskFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn read_vectored_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        self.transfer(bufs, offset, Direction::Read)
    }

    fn write_vectored_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        self.transfer(bufs, offset, Direction::Write)
    }

    fn flush(&self) -> io::Result<()> {
        self.flushed.flush(|| self.file.sync_data())
    }

    /// A hint: where the host cannot discard, the request still succeeds (the data simply
    /// stays), as the virtio specification allows.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let done = match self.kind {
            DiskKind::File => self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ),
            DiskKind::BlockDevice => self.range_ioctl(BLKDISCARD, offset, len),
        };
        match done {
            Err(e) if unsupported(&e) => Ok(()),
            other => other,
        }
    }

    /// Files: a punched hole (`unmap`) or a zeroed range, falling back to written zeros;
    /// devices: BLKZEROOUT (the kernel uses the device's own write-zeroes or writes them).
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if self.kind == DiskKind::BlockDevice {
            return self.range_ioctl(BLKZEROOUT, offset, len);
        }
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        if unmap {
            match self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | keep, offset, len) {
                Err(e) if unsupported(&e) => {}
                other => return other,
            }
        }
        match self.fallocate(libc::FALLOC_FL_ZERO_RANGE | keep, offset, len) {
            Err(e) if unsupported(&e) => self.write_zero_bytes(offset, len),
            other => other,
        }
    }
}

/// Clears the O_NONBLOCK the file was opened with.
fn blocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The one line for a failed open: a device in use, O_DIRECT refused, a read-only device
/// asked for writing, or the system's reason.
fn open_error(path: &Path, mode: OpenMode, e: io::Error) -> DiskError {
    let name = path.display().to_string();
    match e.raw_os_error() {
        Some(libc::EBUSY) => DiskError::Locked { path: name },
        Some(libc::EISDIR) => DiskError::Unusable {
            path: name,
            reason: Unusable::Directory,
        },
        Some(libc::EINVAL) if mode.cache == CacheMode::Direct => DiskError::NoDirect { path: name },
        Some(libc::EACCES) | Some(libc::EROFS) if !mode.read_only => {
            let read_only_device = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .ok()
                .filter(|f| {
                    f.metadata()
                        .is_ok_and(|m| probe::kind(&m) == Ok(DiskKind::BlockDevice))
                })
                .is_some_and(|f| probe::device_read_only(&f).unwrap_or(false));
            if read_only_device {
                DiskError::Unusable {
                    path: name,
                    reason: Unusable::ReadOnlyDevice,
                }
            } else {
                DiskError::Open {
                    path: name,
                    source: e,
                }
            }
        }
        _ => DiskError::Open {
            path: name,
            source: e,
        },
    }
}
