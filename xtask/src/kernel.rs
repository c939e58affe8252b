//! Debian's cloud kernel: fetched, unpacked, and its vmlinux extracted from the bzImage.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::apt::{self, DebPackage};
use crate::{paths, vmlinux};

/// The meta-package that names the current cloud kernel.
const META: &str = "linux-image-cloud-amd64";

pub struct Kernel {
    pub package: DebPackage,
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    pub bzimage: PathBuf,
    pub vmlinux: PathBuf,
    /// `lib/modules/<release>`.
    pub modules: PathBuf,
    pub pvh_entry: u32,
}

/// Fetches (or reuses) the kernel package and unpacks it under `cache/kernel/`.
pub fn prepare(cache: &Path) -> Result<Kernel> {
    let (package, deb) = apt::resolve_and_fetch(
        || apt::resolve_meta(META, "linux-image-"),
        &cache.join("debs"),
    )?;
    let dir = cache
        .join("kernel")
        .join(format!("{}_{}", package.name, package.version));
    let stamp = dir.join("READY");
    let current = std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == package.sha256)
        && dir.join("vmlinux").exists()
        && find_vmlinuz(&dir.join("root/boot")).is_ok();
    if !current {
        unpack(&deb, &dir, &package)?;
    }
    let root = dir.join("root");
    let bzimage = find_vmlinuz(&root.join("boot"))?;
    let release = bzimage
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("odd vmlinuz name")?
        .to_owned();
    let vmlinux = dir.join("vmlinux");
    let elf =
        std::fs::read(&vmlinux).with_context(|| format!("cannot read {}", vmlinux.display()))?;
    let pvh_entry = vmlinux::pvh_entry(&elf)?;
    Ok(Kernel {
        modules: root.join("lib/modules").join(&release),
        package,
        release,
        bzimage,
        vmlinux,
        pvh_entry,
    })
}

fn unpack(deb: &Path, dir: &Path, package: &DebPackage) -> Result<()> {
    eprintln!("unpacking {} {}", package.name, package.version);
    paths::remove(dir)?;
    let root = dir.join("root");
    apt::extract(deb, &root)?;
    let bzimage = find_vmlinuz(&root.join("boot"))?;
    let image =
        std::fs::read(&bzimage).with_context(|| format!("cannot read {}", bzimage.display()))?;
    let elf = vmlinux::extract(&image)
        .with_context(|| format!("cannot extract vmlinux from {}", bzimage.display()))?;
    vmlinux::pvh_entry(&elf)?;
    paths::write_atomic(&dir.join("vmlinux"), &elf)?;
    paths::write_atomic(&dir.join("READY"), package.sha256.as_bytes())
}

fn find_vmlinuz(boot: &Path) -> Result<PathBuf> {
    std::fs::read_dir(boot)
        .with_context(|| format!("cannot list {}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))
}
