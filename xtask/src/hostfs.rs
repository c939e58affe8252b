//! The emulated host's file system: a cached base archive (busybox, KVM modules, QEMU,
//! mke2fs, qemu-img, dmsetup, LVM, ssh, the guest assets, /init from scripts/host-init.sh)
//! and a per-run archive (binaries with their libraries, environment, command),
//! concatenated into one initrd: the kernel unpacks concatenated cpio archives in order.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::assets::Assets;
use crate::initramfs::{Compression, Initramfs};
use crate::{cmd, guest, host_lvm, ldd, paths};

const INIT: &str = include_str!("scripts/host-init.sh");

/// Modules the outer host loads (with their dependencies), when not built in.
const HOST_MODULES: &[&str] = &[
    "irqbypass",
    "kvm",
    "kvm-amd",
    "tun",
    "bridge",
    "vhost_iotlb",
    "vhost",
    "vhost_net",
    "vhost_vsock",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    // Host swap for hypervisor-level reclaim (MADV_PAGEOUT): a compressed RAM disk, and
    // its default compressor (the kernel cannot autoload it: there is no modules.dep).
    "lzo-rle",
    "zram",
    // Managed networks (docs/network.md): nftables with NAT, conntrack, fib and named
    // counters.
    "nf_tables",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_ct",
    "nft_fib_inet",
    "nft_objref",
    // `iifname` and the like in bridge-family rules.
    "nft_meta_bridge",
    // Host block devices as disks (e2e storage tests): loop devices, device-mapper.
    "loop",
    "dm-mod",
    // LVM thin volumes (xtask/src/host_lvm.rs): the thin-pool target pulls in
    // dm-persistent-data, dm-bio-prison and dm-bufio through its .modinfo dependencies.
    "dm-thin-pool",
];

/// QEMU firmware the inner QEMU may need (pc with SeaBIOS or qboot, microvm).
const QEMU_FIRMWARE: &[&str] = &[
    "bios-256k.bin",
    "bios-microvm.bin",
    "qboot.rom",
    "linuxboot_dma.bin",
    "linuxboot.bin",
    "kvmvapic.bin",
    "pvh.bin",
    "multiboot_dma.bin",
    "vgabios-stdvga.bin",
    "efi-virtio.rom",
];
const QEMU_DATA_DIRS: &[&str] = &[
    "/usr/share/qemu",
    "/usr/share/seabios",
    "/usr/lib/ipxe/qemu",
];

/// Where things are inside the emulated host.
pub mod layout {
    pub const BIN_DIR: &str = "/opt/skiff/bin";
    pub const KERNEL: &str = "/opt/skiff/guest/bzImage";
    pub const VMLINUX: &str = "/opt/skiff/guest/vmlinux";
    pub const INITRD: &str = "/opt/skiff/guest/initramfs.cpio.gz";
    pub const ROOTFS: &str = "/opt/skiff/guest/rootfs.ext4";
    pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";
    pub const QEMU_DATADIR: &str = "/usr/share/qemu";
    pub const MKE2FS: &str = "/usr/sbin/mke2fs";
    pub const QEMU_IMG: &str = "/usr/bin/qemu-img";
    pub const NFT: &str = "/usr/sbin/nft";
    pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";
    pub const DMSETUP: &str = "/usr/sbin/dmsetup";
    pub const SSH: &str = "/usr/bin/ssh";
    pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
    /// The Debian test image (`cargo xtask test-image`), when the tests need it.
    pub const TEST_IMAGE: &str = "/opt/skiff/images/debian-12.qcow2";
    pub const TMP: &str = "/tmp/skiff-e2e";
}

/// Per-run content of the host: binaries (with their libraries), environment, command.
#[derive(Default)]
pub struct Payload {
    files: Vec<(String, PathBuf)>,
    env: Vec<(String, String)>,
    pub command: Option<Vec<String>>,
}

impl Payload {
    /// Adds a dynamically linked program and the libraries it needs.
    pub fn add_binary(&mut self, dest: &str, source: &Path) -> Result<()> {
        for lib in ldd::libraries(source)? {
            let lib_dest = lib.to_string_lossy().into_owned();
            self.files.push((lib_dest, lib));
        }
        self.files.push((dest.to_owned(), source.to_path_buf()));
        Ok(())
    }

    /// Adds a data file as it is.
    pub fn add_file(&mut self, dest: &str, source: &Path) {
        self.files.push((dest.to_owned(), source.to_path_buf()));
    }

    /// Adds Skiff's release binaries under [`layout::BIN_DIR`].
    pub fn add_release_binaries(&mut self, binaries: &[PathBuf]) -> Result<()> {
        for bin in binaries {
            let name = bin.file_name().context("binary without a name")?;
            self.add_binary(
                &format!("{}/{}", layout::BIN_DIR, name.to_string_lossy()),
                bin,
            )?;
        }
        Ok(())
    }

    pub fn env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    fn archive(&self, marker: &str) -> Result<Initramfs> {
        let mut fs = Initramfs::new();
        for (dest, source) in &self.files {
            fs.copy(dest, source)?;
        }
        let mut env = format!("export SKIFF_HOST_MARKER={marker}\n");
        for (key, value) in &self.env {
            env.push_str(&format!("export {key}={}\n", shell_quote(value)));
        }
        fs.bytes("/etc/skiff/env", env, 0o644);
        if let Some(command) = &self.command {
            let words: Vec<String> = command.iter().map(|w| shell_quote(w)).collect();
            let script = format!("#!/bin/sh\nexec {}\n", words.join(" "));
            fs.bytes("/etc/skiff/run", script, 0o755);
        }
        Ok(fs)
    }
}

/// Quotes a word for /bin/sh.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The cached part of the host initramfs.
fn base_archive(assets: &Assets) -> Result<PathBuf> {
    let mut fs = Initramfs::new();
    guest::add_skeleton(&mut fs);
    guest::add_busybox(&mut fs, &assets.busybox)?;
    guest::add_modules(&mut fs, &assets.kernel, HOST_MODULES)?;
    fs.dir("/usr/bin").dir("/usr/sbin").dir(layout::BIN_DIR);
    let qemu = cmd::require("qemu-system-x86_64", "qemu-system-x86")?;
    add_with_libraries(&mut fs, layout::QEMU, &qemu)?;
    for name in QEMU_FIRMWARE {
        if let Some(src) = QEMU_DATA_DIRS
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
        {
            fs.copy(&format!("{}/{name}", layout::QEMU_DATADIR), &src)?;
        }
    }
    let mke2fs = cmd::require("mke2fs", "e2fsprogs")?;
    add_with_libraries(&mut fs, layout::MKE2FS, &mke2fs)?;
    let qemu_img = cmd::require("qemu-img", "qemu-utils")?;
    add_with_libraries(&mut fs, layout::QEMU_IMG, &qemu_img)?;
    // Managed networks: the daemon runs nft and one dnsmasq per network, which drops to
    // nobody/nogroup.
    add_with_libraries(&mut fs, layout::NFT, &cmd::require("nft", "nftables")?)?;
    add_with_libraries(
        &mut fs,
        layout::DNSMASQ,
        &cmd::require("dnsmasq", "dnsmasq-base")?,
    )?;
    fs.bytes(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    );
    fs.bytes("/etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644);
    let dmsetup = cmd::require("dmsetup", "dmsetup")?;
    add_with_libraries(&mut fs, layout::DMSETUP, &dmsetup)?;
    host_lvm::add(&mut fs)?;
    // `skiff vm ssh` runs ssh into guests made from an image; the tests make their keys.
    add_with_libraries(
        &mut fs,
        layout::SSH,
        &cmd::require("ssh", "openssh-client")?,
    )?;
    add_with_libraries(
        &mut fs,
        layout::SSH_KEYGEN,
        &cmd::require("ssh-keygen", "openssh-client")?,
    )?;
    fs.copy(layout::KERNEL, &assets.kernel.bzimage)?;
    fs.copy(layout::VMLINUX, &assets.kernel.vmlinux)?;
    fs.copy(layout::INITRD, &assets.initrd)?;
    fs.copy(layout::ROOTFS, &assets.rootfs)?;
    fs.bytes("/init", INIT, 0o755);
    guest::cached_archive(&fs, &assets.cache.join("host"), "base", Compression::None)
}

pub(crate) fn add_with_libraries(fs: &mut Initramfs, dest: &str, source: &Path) -> Result<()> {
    for lib in ldd::libraries(source)? {
        fs.copy(&lib.to_string_lossy(), &lib)?;
    }
    fs.copy(dest, source)?;
    Ok(())
}

/// Removes per-run files left behind by xtask runs that were killed (their pid is gone).
fn remove_orphans(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("initrd-")
            .or_else(|| name.strip_prefix("run-"))
            .and_then(|rest| rest.strip_suffix(".cpio"));
        if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes base + per-run archive as one initrd file; returns it.
pub fn initrd(assets: &Assets, payload: &Payload, marker: &str) -> Result<PathBuf> {
    let base = base_archive(assets)?;
    let dir = assets.cache.join("host");
    remove_orphans(&dir);
    let run = dir.join(format!("run-{}.cpio", std::process::id()));
    payload.archive(marker)?.write(&run, Compression::None)?;
    let combined = dir.join(format!("initrd-{}.cpio", std::process::id()));
    std::fs::copy(&base, &combined).with_context(|| format!("cannot copy {}", base.display()))?;
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .open(&combined)
        .with_context(|| format!("cannot open {}", combined.display()))?;
    let mut run_file = std::fs::File::open(&run)?;
    std::io::copy(&mut run_file, &mut out)?;
    paths::remove(&run)?;
    Ok(combined)
}

/// Removes a file when dropped.
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
