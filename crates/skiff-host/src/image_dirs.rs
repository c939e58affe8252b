//! Where a VM's files may come from. The daemon runs as root and opens the kernel, initrd
//! and disks a spec names (and gives writable disks to a jailed VM's uid): an API client
//! free to name any path could boot a guest with `/etc/shadow` as its disk. So every such
//! path must resolve, symlinks followed, inside one of the daemon's image directories
//! (`skiff host --image-dir`, by default `<state-dir>/images`). The check runs when a VM is
//! created and again at each start, so narrowing the directories applies to existing VMs.

use std::io;
use std::path::{Path, PathBuf};

use skiff_api::VmSpec;

use crate::error::HostError;

#[derive(Clone, Debug, Default)]
pub struct ImageDirs {
    /// Canonical paths; empty allows every path (tests and embedders of this library).
    dirs: Vec<PathBuf>,
    /// Host block devices that may be disks (`--disk-device-pattern`), as fnmatch(3)
    /// patterns on the path a spec gives.
    device_patterns: Vec<String>,
}

impl ImageDirs {
    /// Every path allowed.
    pub fn unrestricted() -> ImageDirs {
        ImageDirs::default()
    }

    /// The given directories, which must exist.
    pub fn new(dirs: &[PathBuf]) -> io::Result<ImageDirs> {
        let dirs = dirs
            .iter()
            .map(|d| {
                let canonical = std::fs::canonicalize(d).map_err(|e| {
                    io::Error::new(e.kind(), format!("image directory {}: {e}", d.display()))
                })?;
                if !canonical.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("image directory {} is not a directory", d.display()),
                    ));
                }
                Ok(canonical)
            })
            .collect::<io::Result<_>>()?;
        Ok(ImageDirs {
            dirs,
            device_patterns: Vec::new(),
        })
    }

    /// Allows `dir` (canonical) too, unless every path is allowed anyway.
    pub fn allow(&mut self, dir: &Path) {
        if !self.dirs.is_empty() && !self.dirs.iter().any(|d| dir.starts_with(d)) {
            self.dirs.push(dir.to_path_buf());
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Also allows disks on host block devices whose path matches one of `patterns`
    /// (absolute shell patterns, `*` not crossing `/`: `/dev/mapper/vg0-*`).
    pub fn with_device_patterns(mut self, patterns: &[String]) -> io::Result<ImageDirs> {
        for pattern in patterns {
            if !pattern.starts_with('/') || pattern.contains('\0') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("disk device pattern `{pattern}` is not an absolute path pattern"),
                ));
            }
        }
        self.device_patterns = patterns.to_vec();
        Ok(self)
    }

    /// Whether `path` names a block device the daemon may give a VM as a disk.
    pub fn is_device(&self, path: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let Ok(name) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
            return false;
        };
        self.device_patterns.iter().any(|pattern| {
            std::ffi::CString::new(pattern.as_str()).is_ok_and(|pattern| {
                // SAFETY: two NUL-terminated strings that outlive the call.
                unsafe { libc::fnmatch(pattern.as_ptr(), name.as_ptr(), libc::FNM_PATHNAME) == 0 }
            })
        })
    }

    /// Refuses a path that does not resolve inside an image directory.
    pub fn check(&self, field: &str, path: &Path) -> Result<(), HostError> {
        if self.dirs.is_empty() {
            return Ok(());
        }
        let resolved = std::fs::canonicalize(path)
            .map_err(|e| HostError::invalid(field, format!("{}: {e}", path.display())))?;
        if self.dirs.iter().any(|dir| resolved.starts_with(dir)) {
            return Ok(());
        }
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        let via = if resolved == path {
            String::new()
        } else {
            format!(" (it resolves to {})", resolved.display())
        };
        Err(HostError::invalid(
            field,
            format!(
                "{}{via} is outside the daemon's image directories ({}): put it in one, or \
                 start `skiff host` with --image-dir",
                path.display(),
                dirs.join(", ")
            ),
        ))
    }

    /// Checks the kernel, the initrd and every disk of a spec.
    pub fn check_spec(&self, spec: &VmSpec) -> Result<(), HostError> {
        self.check("kernel", &spec.kernel)?;
        if let Some(initrd) = &spec.initrd {
            self.check("initrd", initrd)?;
        }
        for disk in spec.disks.iter().filter(|d| !self.is_device(&d.path)) {
            self.check("disks.path", &disk.path)?;
            // A qcow2 disk reads its backing files too: they must be inside as well.
            if disk.format != Some(skiff_api::DiskFormat::Raw) {
                for backing in qcow2_backing_chain(&disk.path)? {
                    self.check("disks.path (backing file)", &backing)?;
                }
            }
        }
        Ok(())
    }
}

/// The backing files of `path` if it is a qcow2 image (none for a raw one).
fn qcow2_backing_chain(path: &Path) -> Result<Vec<PathBuf>, HostError> {
    // Only a regular file can be qcow2 (opening a FIFO to read its magic would block the
    // daemon; what is no disk is refused at start, `disks`).
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(Vec::new());
    }
    let mut magic = [0u8; 4];
    let is_qcow2 = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"QFI\xfb";
    if !is_qcow2 {
        return Ok(Vec::new());
    }
    skiff_images::backing_chain(path).map_err(|e| HostError::invalid("disks.path", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(result: Result<(), HostError>) -> String {
        result.expect_err("refused").to_string()
    }

    #[test]
    fn paths_must_resolve_inside_an_image_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let images = root.path().join("images");
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir_all(images.join("sub")).expect("mkdir");
        std::fs::create_dir_all(&elsewhere).expect("mkdir");
        let inside = images.join("sub/disk.img");
        let outside = elsewhere.join("secret");
        std::fs::write(&inside, "disk").expect("write");
        std::fs::write(&outside, "secret").expect("write");
        let dirs = ImageDirs::new(std::slice::from_ref(&images)).expect("dirs");

        assert!(dirs.check("disks.path", &inside).is_ok());
        let refused = message(dirs.check("disks.path", &outside));
        assert!(
            refused.contains("disks.path") && refused.contains("outside the daemon's image"),
            "{refused}"
        );
        // `..` and symlinks are resolved before the check.
        let dotdot = images.join("../elsewhere/secret");
        assert!(message(dirs.check("kernel", &dotdot)).contains("resolves to"));
        let link = images.join("link");
        std::os::unix::fs::symlink(&outside, &link).expect("symlink");
        assert!(message(dirs.check("initrd", &link)).contains("resolves to"));
        // A symlink into the directory is fine.
        let back = elsewhere.join("back");
        std::os::unix::fs::symlink(&inside, &back).expect("symlink");
        assert!(dirs.check("disks.path", &back).is_ok());
        // A missing file names the field.
        assert!(message(dirs.check("kernel", &images.join("none"))).contains("kernel"));
    }

    #[test]
    fn a_fifo_named_as_a_disk_does_not_block_the_check() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = std::fs::canonicalize(root.path()).expect("canonical");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
        // SAFETY: a NUL-terminated path; mkfifo creates a node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let spec = VmSpec::from_json(
            &serde_json::json!({
                "name": "f", "kernel": "/dev/null", "memory": "64M",
                "disks": [{ "path": fifo }],
            })
            .to_string(),
        )
        .expect("spec");
        let (tx, rx) = std::sync::mpsc::channel();
        let dirs = ImageDirs::new(std::slice::from_ref(&dir)).expect("dirs");
        std::thread::spawn(move || {
            let _ = tx.send(
                qcow2_backing_chain(&spec.disks[0].path)
                    .map(|c| c.len())
                    .ok(),
            );
            drop(dirs);
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the check returned");
        assert_eq!(got, Some(0));
    }

    #[test]
    fn device_patterns_match_whole_path_components() {
        let dirs = ImageDirs::unrestricted()
            .with_device_patterns(&["/dev/mapper/vg0-*".into(), "/dev/loop[0-9]".into()])
            .expect("patterns");
        assert!(dirs.is_device(Path::new("/dev/mapper/vg0-web")));
        assert!(dirs.is_device(Path::new("/dev/loop3")));
        assert!(!dirs.is_device(Path::new("/dev/mapper/vg1-web")));
        assert!(!dirs.is_device(Path::new("/dev/mapper/vg0-a/../../sda")));
        assert!(!dirs.is_device(Path::new("/dev/loop10")));
        assert!(ImageDirs::unrestricted()
            .with_device_patterns(&["dev/sd*".into()])
            .is_err());
    }

    #[test]
    fn no_directories_allow_everything_and_a_missing_one_is_an_error() {
        assert!(ImageDirs::unrestricted()
            .check("kernel", Path::new("/etc/hostname"))
            .is_ok());
        let err = ImageDirs::new(&[PathBuf::from("/no/such/dir")]).expect_err("missing");
        assert!(err.to_string().contains("/no/such/dir"), "{err}");
    }
}
