//! The guest initramfs: busybox, the virtio (and friends) modules in load order, the
//! optional in-guest helper `skiff-guest-tool`, and `/init` (scripts/guest-init.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::initramfs::{Compression, Initramfs};
use crate::kernel::Kernel;
use crate::modules::ModuleTree;
use crate::{cmd, paths};

pub const INIT: &str = include_str!("scripts/guest-init.sh");

/// Modules the guest loads if the kernel has them as modules (built-ins are skipped).
pub const GUEST_MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_balloon",
    "virtio-rng",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "ext4",
    // pvpanic tells the VMM that the guest panicked (ACPI QEMU0001 device).
    "pvpanic",
    "pvpanic-mmio",
    // The ACPI power button (the VMM's GED) as an input device, for acpid in guests that
    // shut down when the host daemon stops them gracefully.
    "button",
    "evdev",
];

/// The name of the in-guest helper crate and binary.
const GUEST_TOOL: &str = "skiff-guest-tool";

/// Puts busybox into `fs` with a symlink per applet in /bin.
pub fn add_busybox(fs: &mut Initramfs, busybox: &Path) -> Result<()> {
    fs.copy("/bin/busybox", busybox)?;
    let list =
        cmd::output(Command::new(busybox).arg("--list")).context("cannot list busybox applets")?;
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        fs.symlink(&format!("/bin/{applet}"), "busybox");
    }
    fs.symlink("/sbin", "bin");
    Ok(())
}

/// Adds `modules` (and their dependencies) under /lib/modules/<release>, and the load
/// order as /etc/skiff/modules (paths relative to that directory).
pub fn add_modules(fs: &mut Initramfs, kernel: &Kernel, modules: &[&str]) -> Result<()> {
    let tree = ModuleTree::open(&kernel.modules)?;
    let resolved = tree.resolve(modules)?;
    let mut list = String::new();
    for rel in &resolved.load_order {
        let dest = format!("/lib/modules/{}/{}", kernel.release, rel.display());
        fs.copy(&dest, &tree.root().join(rel))?;
        list.push_str(&format!("{}/{}\n", kernel.release, rel.display()));
    }
    fs.bytes("/etc/skiff/modules", list, 0o644);
    Ok(())
}

/// The skeleton every initramfs of ours shares: directories and /dev/console.
pub fn add_skeleton(fs: &mut Initramfs) {
    for dir in ["/dev", "/proc", "/sys", "/tmp", "/root", "/run", "/etc"] {
        fs.dir(dir);
    }
    fs.char_dev("/dev/console", 5, 1);
}

/// Builds the in-guest helper as a static binary, if its crate exists yet.
pub fn build_guest_tool() -> Result<Option<PathBuf>> {
    let workspace = paths::workspace();
    if !workspace
        .join("crates")
        .join(GUEST_TOOL)
        .join("Cargo.toml")
        .exists()
    {
        eprintln!(
            "note: crates/{GUEST_TOOL} does not exist yet; the guest initramfs has no {GUEST_TOOL}"
        );
        return Ok(None);
    }
    // The guest has no libc of its own: the tool must be static.
    cmd::run(crate::e2e::static_release_build().args(["-p", GUEST_TOOL]))
        .with_context(|| format!("cannot build {GUEST_TOOL}"))?;
    Ok(Some(crate::e2e::static_release_dir().join(GUEST_TOOL)))
}

/// Builds (or reuses) the guest initramfs in `dir`; returns its path.
pub fn build(
    dir: &Path,
    kernel: &Kernel,
    busybox: &Path,
    guest_tool: Option<&Path>,
) -> Result<PathBuf> {
    let mut fs = Initramfs::new();
    add_skeleton(&mut fs);
    add_busybox(&mut fs, busybox)?;
    fs.symlink("/usr/bin", "../bin")
        .symlink("/usr/sbin", "../bin");
    add_modules(&mut fs, kernel, GUEST_MODULES)?;
    if let Some(tool) = guest_tool {
        fs.copy(&format!("/bin/{GUEST_TOOL}"), tool)?;
    }
    fs.bytes("/init", INIT, 0o755);
    cached_archive(&fs, dir, "initramfs", Compression::Gzip)
}

/// Writes `fs` as `dir/<name>-<fingerprint>.cpio[.gz]` unless that file exists already;
/// older archives of the same name are removed.
pub fn cached_archive(
    fs: &Initramfs,
    dir: &Path,
    name: &str,
    compression: Compression,
) -> Result<PathBuf> {
    let ext = match compression {
        Compression::None => "cpio",
        Compression::Gzip => "cpio.gz",
    };
    cached_file(dir, name, ext, &fs.fingerprint()?, |path| {
        fs.write(path, compression)
    })
}

/// `dir/<name>-<fingerprint>.<ext>`, made by `build` (given a temporary path that is
/// renamed into place) unless it exists already. Files of the same name made for other
/// fingerprints are removed once they are an hour old.
pub fn cached_file(
    dir: &Path,
    name: &str,
    ext: &str,
    fingerprint: &str,
    build: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    paths::create_dir(dir)?;
    let path = dir.join(format!("{name}-{}.{ext}", &fingerprint[..16]));
    if path.exists() {
        return Ok(path);
    }
    eprintln!("building {}", path.display());
    let tmp = paths::unique_tmp(&path);
    build(&tmp)?;
    paths::rename(&tmp, &path)?;
    // Drop superseded files, but not ones another xtask run may be using right now.
    let stale = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for entry in std::fs::read_dir(dir)?.filter_map(|e| e.ok()) {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < stale);
        if old
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}-"))
        {
            paths::remove(&entry.path())?;
        }
    }
    Ok(path)
}
