//! The storage behind a block device: a trait so that request handling can be tested and
//! fuzzed over memory, and the raw image file that backs real disks.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

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
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// Makes written data durable.
    fn flush(&mut self) -> std::io::Result<()>;
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
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), op | libc::LOCK_NB) } != 0 {
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

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// A disk in memory, for tests and fuzzing.
impl Disk for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let dst = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get_mut(o..o.checked_add(buf.len())?))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::WriteZero))?;
        dst.copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
