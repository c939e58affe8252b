//! Which backend serves a disk file: raw (`DiskFile`) or qcow2 (`Qcow2Disk`), as declared
//! or, when not, detected from the file's first bytes.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{Disk, DiskError, DiskFile, Qcow2Disk};

/// A disk file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// Opens the disk at `path` with the backend for `format`; with `None`, a file that starts
/// with qcow2's magic is qcow2 (and may then not name a backing file), anything else raw.
pub fn open_disk(
    path: &Path,
    read_only: bool,
    format: Option<DiskFormat>,
) -> Result<Box<dyn Disk>, DiskError> {
    let declared = format.is_some();
    let format = match format {
        Some(f) => f,
        None => detect(path)?,
    };
    Ok(match format {
        DiskFormat::Raw => Box::new(DiskFile::open(path, read_only)?),
        DiskFormat::Qcow2 => Box::new(Qcow2Disk::open(path, read_only, declared)?),
    })
}

fn detect(path: &Path) -> Result<DiskFormat, DiskError> {
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
