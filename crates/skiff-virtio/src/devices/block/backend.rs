//! Which backend serves a disk: raw (`DiskFile`: an image file or a block device) or qcow2
//! (`Qcow2Disk`), as declared or, when not, detected from the file's first bytes.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{Disk, DiskError, DiskFile, OpenMode, Qcow2Disk};

/// A disk file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// Opens the disk at `path` with the backend for `format`; with `None`, a file that starts
/// with qcow2's magic is qcow2 (and may then not name a backing file), anything else raw.
/// The cache mode applies to raw disks.
pub fn open_disk(
    path: &Path,
    mode: OpenMode,
    format: Option<DiskFormat>,
) -> Result<Box<dyn Disk>, DiskError> {
    let declared = format.is_some();
    let format = match format {
        Some(f) => f,
        None => detect(path)?,
    };
    Ok(match format {
        DiskFormat::Raw => Box::new(DiskFile::open(path, mode)?),
        DiskFormat::Qcow2 => Box::new(Qcow2Disk::open(path, mode.read_only, declared)?),
    })
}

/// Like [`open_disk`] with the disk already open (`path` names it).
pub fn open_disk_file(
    path: &Path,
    file: File,
    mode: OpenMode,
    format: Option<DiskFormat>,
) -> Result<Box<dyn Disk>, DiskError> {
    let declared = format.is_some();
    let qcow2 = match format {
        Some(f) => f == DiskFormat::Qcow2,
        None => {
            let mut magic = [0u8; 4];
            let regular = file.metadata().is_ok_and(|m| m.is_file());
            regular && file.read_exact_at(&mut magic, 0).is_ok() && &magic == b"QFI\xfb"
        }
    };
    let name = path.display().to_string();
    Ok(match qcow2 {
        false => Box::new(DiskFile::from_file(file, &name, mode)?),
        true => Box::new(Qcow2Disk::from_file(path, file, mode.read_only, declared)?),
    })
}

fn detect(path: &Path) -> Result<DiskFormat, DiskError> {
    // Only a regular file can be qcow2; DiskFile refuses what is no disk (opening a FIFO
    // here to read its magic would block).
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(DiskFormat::Raw);
    }
    let mut magic = [0u8; 4];
    let read = File::open(path).and_then(|mut f| match f.read_exact(&mut magic) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
        other => other,
    });
    read.map_err(|source| DiskError::Open {
        path: path.display().to_string(),
        source,
    })?;
    Ok(if &magic == b"QFI\xfb" {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    })
}
