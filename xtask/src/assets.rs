//! `cargo xtask assets`: everything a guest needs, cached under `$XDG_CACHE_HOME/skiff`
//! and keyed by package versions and content, so a second run fetches and builds nothing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::apt::{self, DebPackage};
use crate::kernel::{self, Kernel};
use crate::{guest, paths, rootfs};

pub struct Assets {
    pub cache: PathBuf,
    pub kernel: Kernel,
    pub busybox_package: DebPackage,
    /// The static busybox binary (from the busybox-static package).
    pub busybox: PathBuf,
    /// The guest initramfs (gzip-compressed newc cpio).
    pub initrd: PathBuf,
    /// An ext4 root file system (busybox, the guest init as /sbin/init), label
    /// `skiff-root`: boot it with `root=/dev/vda` and the initramfs.
    pub rootfs: PathBuf,
    pub guest_tool: Option<PathBuf>,
}

/// Fetches and builds whatever is missing from the cache.
pub fn prepare() -> Result<Assets> {
    let cache = paths::cache()?;
    let kernel = kernel::prepare(&cache)?;
    let (busybox_package, busybox) = busybox(&cache)?;
    let guest_tool = guest::build_guest_tool()?;
    let initrd = guest::build(
        &cache.join("guest"),
        &kernel,
        &busybox,
        guest_tool.as_deref(),
    )?;
    let rootfs = rootfs::build(&cache.join("guest"), &busybox)?;
    Ok(Assets {
        cache,
        kernel,
        busybox_package,
        busybox,
        initrd,
        rootfs,
        guest_tool,
    })
}

fn busybox(cache: &Path) -> Result<(DebPackage, PathBuf)> {
    let (package, deb) =
        apt::resolve_and_fetch(|| apt::resolve("busybox-static", None), &cache.join("debs"))?;
    let dir = cache
        .join("busybox")
        .join(package.version.replace(':', "%3a"));
    let stamp = dir.join("READY");
    let binary = dir.join("root/bin/busybox");
    if !std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == package.sha256)
        || !binary.exists()
    {
        paths::remove(&dir)?;
        apt::extract(&deb, &dir.join("root"))?;
        paths::write_atomic(&stamp, package.sha256.as_bytes())?;
    }
    binary
        .exists()
        .then_some(())
        .with_context(|| format!("{} has no /bin/busybox", package.name))?;
    Ok((package, binary))
}

impl Assets {
    pub fn print_summary(&self) {
        let k = &self.kernel;
        println!(
            "kernel       {} {} ({})",
            k.package.name, k.package.version, k.release
        );
        println!(
            "busybox      {} {}",
            self.busybox_package.name, self.busybox_package.version
        );
        println!("SKIFF_KERNEL={}", k.bzimage.display());
        println!(
            "SKIFF_VMLINUX={}  (PVH entry {:#x})",
            k.vmlinux.display(),
            k.pvh_entry
        );
        println!("SKIFF_INITRD={}", self.initrd.display());
        println!(
            "SKIFF_ROOTFS={}  (ext4, label {}: root=/dev/vda)",
            self.rootfs.display(),
            rootfs::LABEL
        );
        match &self.guest_tool {
            Some(tool) => println!("guest tool   {}", tool.display()),
            None => println!("guest tool   (not built: crate missing)"),
        }
    }
}
