//! `cargo xtask test-image`: the Debian test image of the image-store tests (issue 12),
//! built from Debian's packages with mmdebstrap: bookworm with systemd,
//! linux-image-cloud-amd64 and initramfs-tools, cloud-init (NoCloud only), openssh-server,
//! ifupdown (cloud-init's renderer on Debian) and lighttpd serving a page. Its ext4 root goes
//! into a GPT disk laid out like Debian's genericcloud images (a 1 MiB BIOS boot partition,
//! then the root), converted to compressed qcow2 with qemu-img. Cached under
//! `<cache>/test-image/`, keyed by the recipe below: a second run builds nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::{apt, cmd, guest, paths};

/// Debian packages the image holds on top of mmdebstrap's `apt` variant.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "cloud-init",
    "openssh-server",
    "ifupdown",
    // DHCP when the seed has no network-config (cloud-init's fallback; managed networks).
    "isc-dhcp-client",
    "iproute2",
    // cloud-init's growpart and resizefs (a disk made larger with --disk-size); no longer
    // Essential, so not in the `apt` variant.
    "e2fsprogs",
    "cloud-guest-utils",
    "fdisk",
    "lighttpd",
    "ca-certificates",
];
const SUITE: &str = "bookworm";
/// The root file system's UUID: fixed, so the image is the same on every build of it.
pub const ROOT_UUID: &str = "5c1ff000-1a6e-4a3b-9c2d-000000000012";
/// What the web server answers with, for the tests to look for.
pub const PAGE: &str = "hello from a Skiff guest\n";
/// Root file system and disk sizes.
const ROOT_MIB: u64 = 1536;
const DISK_MIB: u64 = 1600;
/// Bumped when the recipe changes in a way the key does not see.
const RECIPE: u32 = 2;

/// Builds (or reuses) the test image; returns its compressed qcow2.
pub fn build(cache: &Path) -> Result<PathBuf> {
    let key = {
        let mut hasher = Sha256::new();
        hasher.update(format!(
            "{RECIPE}:{SUITE}:{}:{ROOT_UUID}:{PAGE}:{ROOT_MIB}:{DISK_MIB}",
            PACKAGES.join(",")
        ));
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let dir = cache.join("test-image");
    guest::cached_file(&dir, "debian", "qcow2", &key, |out| {
        apt::ensure_installed(&["mmdebstrap", "qemu-utils", "fdisk", "e2fsprogs"])?;
        let started = Instant::now();
        let work = paths::unique_tmp(&dir.join("work"));
        paths::remove(&work)?;
        paths::create_dir(&work)?;
        let built = build_in(&work, out);
        paths::remove(&work)?;
        built?;
        eprintln!(
            "built the test image in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

fn build_in(work: &Path, out: &Path) -> Result<()> {
    let root = work.join("root");
    let hooks = [
        format!("echo 'UUID={ROOT_UUID} / ext4 rw,errors=remount-ro 0 1' > \"$1/etc/fstab\""),
        "echo 'datasource_list: [ NoCloud, None ]' > \"$1/etc/cloud/cloud.cfg.d/90-skiff.cfg\""
            .to_string(),
        format!(
            "printf '{}' > \"$1/var/www/html/index.html\"",
            PAGE.replace('\n', "\\n")
        ),
        // Every VM gets its own host keys from cloud-init; none are shipped.
        "rm -f \"$1\"/etc/ssh/ssh_host_*".to_string(),
        "echo debian > \"$1/etc/hostname\"".to_string(),
        // A system locale that exists (C.UTF-8 is built into glibc): without one, cloud-init
        // sets en_US.UTF-8, which Debian's locale-gen does not generate on request, and its
        // locale module fails.
        "echo LANG=C.UTF-8 > \"$1/etc/default/locale\"".to_string(),
    ];
    let mut mmdebstrap = Command::new("mmdebstrap");
    mmdebstrap
        .args(["--variant=apt", "--mode=root", "--format=directory"])
        .arg(format!("--include={}", PACKAGES.join(",")));
    for hook in &hooks {
        mmdebstrap.arg(format!("--customize-hook={hook}"));
    }
    mmdebstrap.arg(SUITE).arg(&root);
    cmd::run(&mut mmdebstrap).context("mmdebstrap failed")?;

    let ext4 = work.join("root.ext4");
    cmd::run(
        Command::new("mke2fs")
            .args([
                "-q", "-F", "-t", "ext4", "-U", ROOT_UUID, "-L", "root", "-d",
            ])
            .arg(&root)
            .arg(&ext4)
            .arg(format!("{ROOT_MIB}M")),
    )?;
    let disk = work.join("disk.raw");
    std::fs::File::create(&disk)?.set_len(DISK_MIB << 20)?;
    // Partition 1: BIOS boot (1 MiB at 1 MiB); partition 2: the root, from 2 MiB on.
    let layout = "label: gpt\n\
                  start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649\n\
                  start=4096, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n";
    let mut sfdisk = Command::new("sfdisk");
    sfdisk.args(["--quiet"]).arg(&disk);
    cmd::run_with_input(&mut sfdisk, layout.as_bytes()).context("sfdisk failed")?;
    cmd::run(
        Command::new("dd")
            .arg(format!("if={}", ext4.display()))
            .arg(format!("of={}", disk.display()))
            .args(["bs=1M", "seek=2", "conv=notrunc,sparse", "status=none"]),
    )?;
    cmd::run(
        Command::new("qemu-img")
            .args(["convert", "-c", "-O", "qcow2"])
            .arg(&disk)
            .arg(out),
    )
}
