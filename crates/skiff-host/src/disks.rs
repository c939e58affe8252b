//! A VM's disks as the daemon hands them to its VMM: opened by the daemon, checked on the
//! open file, locked, and passed to `skiff run` as open descriptors (`--disk-fd`), so that
//! no path is looked up twice and nothing can be swapped between the check and the use.
//!
//! - A disk inside an image directory is opened with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS)` from that directory: no symlink is followed and nothing outside
//!   it is reached. It must be a regular file with one link (a hard link could make it an
//!   alias of any file on that file system) and neither setuid nor setgid.
//! - A host block device is accepted when its path matches a `--disk-device-pattern`
//!   (`/dev/mapper/vg0-*`); it is opened as named (device paths are symlinks into /dev,
//!   which only root controls) and must be a block device.
//! - Writers open exclusively (O_EXCL: a block device mounted or open exclusively elsewhere
//!   is refused) and take an exclusive `flock`, readers a shared one: a disk another VMM
//!   holds is refused (the lock stays with the descriptor, in the VMM).
//! - What cannot be a disk (a directory, a character device, a FIFO, a size of 0 or not a
//!   multiple of 512) is refused in one line.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path};

use skiff_api::{DiskSpec, VmSpec};

use crate::error::HostError;
use crate::image_dirs::ImageDirs;

const FIELD: &str = "disks.path";
/// BLKGETSIZE64 (linux/fs.h: _IOR(0x12, 114, size_t)).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Opens every disk of `spec` as its VMM will use it, in the spec's order.
pub fn open_all(spec: &VmSpec, dirs: &ImageDirs) -> Result<Vec<OwnedFd>, HostError> {
    spec.disks.iter().map(|disk| open(disk, dirs)).collect()
}

/// Opens, checks and locks one disk.
pub fn open(disk: &DiskSpec, dirs: &ImageDirs) -> Result<OwnedFd, HostError> {
    let path = &disk.path;
    let shown = path.display();
    let invalid = |why: String| HostError::invalid(FIELD, format!("{shown} {why}"));
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    flags |= if disk.read_only {
        libc::O_RDONLY
    } else {
        // Without O_CREAT, O_EXCL only means something for a block device.
        libc::O_RDWR | libc::O_EXCL
    };
    let device = dirs.is_device(path);
    let opened = if device || dirs.dirs().is_empty() {
        open_path(path, flags)
    } else {
        open_beneath(path, dirs, flags)?
    };
    let fd = opened.map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => invalid(
            "is a symbolic link or is reached through one: disks in image directories are \
             opened without following symlinks"
                .into(),
        ),
        Some(libc::EXDEV) => invalid("leads outside its image directory".into()),
        Some(libc::EBUSY) => HostError::Conflict(format!(
            "{FIELD}: {shown} is in use (mounted, or open exclusively by another VM)"
        )),
        Some(libc::EISDIR) => invalid("is a directory, not a disk image or block device".into()),
        _ => invalid(format!("cannot be opened: {e}")),
    })?;
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| invalid(format!("cannot be examined: {e}")))?;
    let ft = meta.file_type();
    let size = if ft.is_file() {
        if device {
            return Err(invalid(
                "matches a --disk-device-pattern but is not a block device".into(),
            ));
        }
        if meta.nlink() != 1 {
            return Err(invalid(format!(
                "has {} hard links: a disk image must have exactly one",
                meta.nlink()
            )));
        }
        // A hard link removed between the open and the fstat above leaves one link; the
        // name must then still be the file opened. (Linking a file one does not own needs
        // fs.protected_hardlinks off: this only narrows what is left for root's own links.)
        let named = std::fs::symlink_metadata(path)
            .is_ok_and(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()));
        if !named {
            return Err(invalid("changed while it was being opened".into()));
        }
        if meta.mode() & 0o6000 != 0 {
            return Err(invalid(format!(
                "is setuid or setgid (mode {:o}): not given to a VM",
                meta.mode() & 0o7777
            )));
        }
        meta.len()
    } else if ft.is_block_device() {
        if !device {
            return Err(invalid(
                "is a block device that matches no --disk-device-pattern of the daemon".into(),
            ));
        }
        device_size(&file).map_err(|e| invalid(format!("has no size the daemon can read ({e})")))?
    } else if ft.is_char_device() {
        return Err(invalid(
            "is a character device, not a block device: it has no size and cannot seek".into(),
        ));
    } else if ft.is_fifo() {
        return Err(invalid(
            "is a FIFO, not a disk image or block device".into(),
        ));
    } else if ft.is_dir() {
        return Err(invalid(
            "is a directory, not a disk image or block device".into(),
        ));
    } else {
        return Err(invalid(
            "is a socket, not a disk image or block device".into(),
        ));
    };
    if size == 0 {
        return Err(invalid(
            "is empty (0 bytes): the guest would see a disk of no size".into(),
        ));
    }
    if size % 512 != 0 {
        return Err(invalid(format!(
            "is {size} bytes, not a multiple of 512: the guest cannot address its last bytes"
        )));
    }
    let op = if disk.read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        return Err(HostError::Conflict(format!(
            "{FIELD}: {shown} is in use by another VM (it is locked)"
        )));
    }
    Ok(OwnedFd::from(file))
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

/// A plain open (device paths, or an unrestricted daemon).
fn open_path(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    // SAFETY: a NUL-terminated path; the descriptor returned is ours.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` from the image directory it names, never leaving it and following no
/// symlink; an error line if no image directory holds the path.
fn open_beneath(
    path: &Path,
    dirs: &ImageDirs,
    flags: libc::c_int,
) -> Result<io::Result<OwnedFd>, HostError> {
    let Some((dir, rest)) = dirs.dirs().iter().find_map(|dir| {
        let rest = path.strip_prefix(dir).ok()?;
        let plain = rest.components().all(|c| matches!(c, Component::Normal(_)));
        (plain && !rest.as_os_str().is_empty()).then_some((dir, rest))
    }) else {
        return Err(HostError::invalid(
            FIELD,
            format!(
                "{} is not named inside one of the daemon's image directories ({}): give the \
                 path in the directory itself, not through a link or `..`",
                path.display(),
                dirs.dirs()
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    Ok(openat2_beneath(dir, rest, flags))
}

/// struct open_how (linux/openat2.h); libc's cannot be built outside the crate.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn openat2_beneath(dir: &Path, rest: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let dir = open_path(dir, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)?;
    let rest = c_path(rest)?;
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a directory descriptor we own, a NUL-terminated path and an
    // open_how of the size passed; the descriptor returned is ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            rest.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn device_size(file: &File) -> io::Result<u64> {
    let mut bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer, which points to `bytes`.
    if unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut bytes as *mut u64) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(bytes)
}

#[cfg(test)]
#[path = "disks_tests.rs"]
mod tests;
