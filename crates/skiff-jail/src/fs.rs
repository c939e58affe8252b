//! The jail's root: a bind mount of the jail directory holding bind mounts of the VMM's
//! files, its device nodes, a private /proc and a `run/` directory for its sockets; then
//! the switch into it.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::{check, Device, JailError, JailSpec};

/// The jail's directory for sockets (`/run` inside), owned by the jail's uid.
pub const JAIL_RUN_DIR: &str = "run";

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let source = source.map(c_path).transpose()?;
    let target = c_path(target)?;
    let fstype = fstype
        .map(|t| CString::new(t).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput)))
        .transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null;
    // no mount data is passed.
    check(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            std::ptr::null(),
        )
    })
}

const HARDENED: libc::c_ulong = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;

/// Fills the jail directory (in this process's new mount namespace, so that none of the
/// mounts is seen on the host).
pub(crate) fn build_root(spec: &JailSpec) -> Result<(), JailError> {
    let dir = &spec.dir;
    // Nothing mounted from here on propagates back to the host's namespace.
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE)
        .map_err(JailError::step("make mounts private"))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(JailError::step(format!("create {}", dir.display())))?;
    // The new root must be a mount point; its own bind mount also lets device nodes work
    // even where the host mounted the directory's file system nodev.
    mount(Some(dir), dir, None, libc::MS_BIND)
        .and_then(|()| {
            mount(
                None,
                dir,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NOEXEC,
            )
        })
        .map_err(JailError::step(format!(
            "bind {} onto itself",
            dir.display()
        )))?;

    for file in &spec.files {
        let target = dir.join(&file.name);
        let what = || format!("bind {} to {}", file.source.display(), target.display());
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&target)
            .map_err(JailError::step(what()))?;
        let readonly = if file.writable { 0 } else { libc::MS_RDONLY };
        mount(Some(&file.source), &target, None, libc::MS_BIND)
            .and_then(|()| {
                mount(
                    None,
                    &target,
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | HARDENED | readonly,
                )
            })
            .map_err(JailError::step(what()))?;
    }

    let dev = dir.join("dev");
    make_dir(&dev, 0o755)?;
    for device in &spec.devices {
        make_node(dir, *device, spec.uid, spec.gid)?;
    }

    let proc = dir.join("proc");
    make_dir(&proc, 0o555)?;
    // This process is the first of a new PID namespace: its /proc shows the jail only.
    mount(Some(Path::new("proc")), &proc, Some("proc"), HARDENED)
        .map_err(JailError::step("mount /proc"))?;

    let run = dir.join(JAIL_RUN_DIR);
    make_dir(&run, 0o700)?;
    chown(&run, spec.uid, spec.gid)?;
    Ok(())
}

fn make_dir(path: &Path, mode: u32) -> Result<(), JailError> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(JailError::step(format!("create {}", path.display()))(e)),
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(JailError::step(format!("chown {}", path.display())))
}

/// A character device node like the host's, owned by the jail's uid, mode 0600.
fn make_node(dir: &Path, device: Device, uid: u32, gid: u32) -> Result<(), JailError> {
    let host = Path::new(device.path());
    let rdev = fs::metadata(host)
        .map_err(JailError::step(format!("stat {}", host.display())))?
        .rdev();
    let target = dir.join(device.path().trim_start_matches('/'));
    let what = || format!("make {}", target.display());
    match fs::remove_file(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(JailError::step(what())(e)),
    }
    let c_target = c_path(&target).map_err(JailError::step(what()))?;
    // SAFETY: a NUL-terminated path; mknod creates a node and touches no memory of ours.
    check(unsafe { libc::mknod(c_target.as_ptr(), libc::S_IFCHR | 0o600, rdev) })
        .map_err(JailError::step(what()))?;
    chown(&target, uid, gid)
}

/// Makes the jail directory this process's root. pivot_root when the current root allows
/// it; on a host whose root is the initial ramfs (which pivot_root refuses) the jail is
/// moved over `/` and chrooted into, as switch_root does: with CAP_SYS_CHROOT dropped
/// and `chroot` in no seccomp filter, there is no way back out either way.
pub(crate) fn change_root(dir: &Path) -> Result<(), JailError> {
    std::env::set_current_dir(dir).map_err(JailError::step(format!("chdir {}", dir.display())))?;
    let dot = c"." as &std::ffi::CStr;
    // SAFETY: pivot_root with two NUL-terminated paths; it changes only mounts.
    let pivoted = check(unsafe {
        libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int
    });
    match pivoted {
        Ok(()) => {
            // The old root is stacked on the new one: detach it.
            // SAFETY: a NUL-terminated path; umount2 touches no memory of ours.
            check(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })
                .map_err(JailError::step("detach the old root"))?;
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            mount(Some(Path::new(".")), Path::new("/"), None, libc::MS_MOVE)
                .map_err(JailError::step("move the jail over /"))?;
            // SAFETY: a NUL-terminated path.
            check(unsafe { libc::chroot(dot.as_ptr()) }).map_err(JailError::step("chroot"))?;
        }
        Err(e) => return Err(JailError::step("pivot_root")(e)),
    }
    std::env::set_current_dir("/").map_err(JailError::step("chdir /"))?;
    Ok(())
}

/// Removes from the jail directory what [`build_root`] put there (the host side, after the
/// jailed process ended and its mounts went with its namespace). The directory itself
/// stays: it is the caller's.
pub fn clean(spec: &JailSpec) -> io::Result<()> {
    let dir = &spec.dir;
    let mut first_error = None;
    let mut note = |result: io::Result<()>| {
        if let Err(e) = result {
            if e.kind() != io::ErrorKind::NotFound && first_error.is_none() {
                first_error = Some(e);
            }
        }
    };
    for file in &spec.files {
        note(fs::remove_file(dir.join(&file.name)));
    }
    note(fs::remove_dir_all(dir.join("dev")));
    note(fs::remove_dir(dir.join("proc")));
    note(fs::remove_dir_all(dir.join(JAIL_RUN_DIR)));
    first_error.map_or(Ok(()), Err)
}
