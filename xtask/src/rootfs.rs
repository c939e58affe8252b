//! The test root file system: an ext4 image (`mke2fs -d`, no root privileges needed) with
//! busybox and the guest init as /sbin/init, for booting with `root=/dev/vda` through the
//! guest initramfs (which loads virtio_blk, mounts the disk and switch_roots into it).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::initramfs::Initramfs;
use crate::{cmd, guest, paths};

/// The file system's label, for `root=LABEL=skiff-root`.
pub const LABEL: &str = "skiff-root";
/// Image size: busybox takes 2 MiB; the rest is room for what tests write.
const SIZE_MIB: u32 = 16;
/// A file only the disk has, so a test can tell it booted from the disk.
pub const MARKER_PATH: &str = "/etc/skiff/rootfs";
const MARKER: &str = "skiff test root file system\n";

/// Builds (or reuses) the root file-system image in `dir`; returns its path.
pub fn build(dir: &Path, busybox: &Path) -> Result<PathBuf> {
    let mut fs = Initramfs::new();
    guest::add_skeleton(&mut fs);
    guest::add_busybox(&mut fs, busybox)?;
    fs.symlink("/usr/bin", "../bin")
        .symlink("/usr/sbin", "../bin")
        .dir("/mnt");
    // /sbin is a link to /bin, where busybox's own `init` applet would be.
    fs.bytes("/bin/init", guest::INIT, 0o755);
    fs.bytes(MARKER_PATH, MARKER, 0o644);
    let mke2fs = cmd::require("mke2fs", "e2fsprogs")?;
    let fingerprint = {
        let mut hasher = Sha256::new();
        hasher.update(fs.fingerprint()?);
        hasher.update(format!("{LABEL}:{SIZE_MIB}"));
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    guest::cached_file(dir, "rootfs", "ext4", &fingerprint, |image| {
        let tree = paths::unique_tmp(&dir.join("rootfs-tree"));
        paths::remove(&tree)?;
        fs.write_dir(&tree)?;
        let made = cmd::output(
            Command::new(&mke2fs)
                .args(["-q", "-F", "-t", "ext4", "-L", LABEL])
                .args(["-E", "root_owner=0:0", "-d"])
                .arg(&tree)
                .arg(image)
                .arg(format!("{SIZE_MIB}M")),
        );
        paths::remove(&tree)?;
        made.map(|_| ())
            .with_context(|| format!("cannot build {}", image.display()))
    })
}
