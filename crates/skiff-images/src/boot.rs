//! The image's own kernel: its partitions (GPT through the `gpt` crate, MBR through
//! `mbrman`, or a file system on the whole disk), the ext2/3/4 file system whose /boot holds
//! a kernel (read with `ext4-view`), the default kernel and initrd there, and the kernel
//! command line that mounts that file system as root (`root=UUID=…`).

use std::cmp::Ordering;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ext4_view::Ext4;
use serde::{Deserialize, Serialize};

use crate::probe::{detect_layout, Layout, LAYOUT_PROBE_BYTES};

/// Where the image's default kernel is, and how to boot it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootEntry {
    /// The kernel's path inside the root file system, symbolic links resolved.
    pub kernel: String,
    pub initrd: Option<String>,
    /// The root file system's partition number (1-based), or none for a whole-disk one.
    pub partition: Option<u32>,
    /// The root file system's UUID.
    pub root_uuid: String,
    /// The kernel command line: root, read-only until the init system remounts it, and the
    /// serial console.
    pub cmdline: String,
}

/// A boot entry with the kernel's and initrd's bytes.
pub struct BootFiles {
    pub entry: BootEntry,
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
}

/// Why no kernel could be taken from an image: one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BootError(pub String);

/// A region of the disk file, for ext4-view.
struct Region {
    file: File,
    start: u64,
    len: u64,
}

impl ext4_view::Ext4Read for Region {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let end = start_byte.checked_add(dst.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err("read past the end of the partition".into());
        }
        self.file.read_exact_at(dst, self.start + start_byte)?;
        Ok(())
    }
}

/// The partitions of the raw disk at `path` that may hold a file system: (number, start,
/// length) in bytes; a whole-disk file system is one region without a number.
fn regions(path: &str, file: &File) -> Result<Vec<(Option<u32>, u64, u64)>, BootError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        BootError(format!("{}: cannot read its {what}: {e}", path))
    };
    let size = file.metadata().map_err(|e| err("size", &e))?.len();
    let mut head = vec![0u8; LAYOUT_PROBE_BYTES.min(usize::try_from(size).unwrap_or(0))];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| err("first sectors", &e))?;
    match detect_layout(&head) {
        Some(Layout::Gpt) => {
            let disk = gpt::GptConfig::new()
                .writable(false)
                .open_from_device(file.try_clone().map_err(|e| err("file", &e))?)
                .map_err(|e| err("GPT", &e))?;
            let lb = *disk.logical_block_size();
            let mut parts = Vec::new();
            for (number, p) in disk.partitions() {
                let start = p.bytes_start(lb).map_err(|e| err("GPT", &e))?;
                let len = p.bytes_len(lb).map_err(|e| err("GPT", &e))?;
                parts.push((Some(*number), start, len));
            }
            Ok(parts)
        }
        Some(Layout::Mbr) => {
            let mut reader = file.try_clone().map_err(|e| err("file", &e))?;
            let mbr = mbrman::MBR::read_from(&mut reader, 512).map_err(|e| err("MBR", &e))?;
            Ok(mbr
                .iter()
                .filter(|(_, p)| p.is_used() && !p.is_extended())
                .map(|(i, p)| {
                    (
                        u32::try_from(i).ok(),
                        u64::from(p.starting_lba) * 512,
                        u64::from(p.sectors) * 512,
                    )
                })
                .collect())
        }
        Some(Layout::Ext4) => Ok(vec![(None, 0, size)]),
        Some(other) => Err(BootError(format!(
            "{}: its file system ({other:?}) is not ext2/3/4, the only kind Skiff reads kernels from",
            path
        ))),
        None => Err(BootError(format!(
            "{}: no partition table or file system",
            path
        ))),
    }
}

/// Finds the default kernel of the raw disk `disk` (a stored blob; `path` names it in
/// messages) and reads it and its
/// initrd. The first ext2/3/4 file system, in partition order, with a kernel in /boot is
/// the root; its default kernel is, in this order: the `/vmlinuz` and `/initrd.img` links
/// Debian and Ubuntu keep, `/boot/vmlinuz` and `/boot/initrd.img`, or the newest
/// `/boot/vmlinuz-VERSION` with `/boot/initrd.img-VERSION` or `/boot/initramfs-VERSION.img`.
pub fn find_boot(disk: &Path, path: &str) -> Result<BootFiles, BootError> {
    let file = File::open(disk).map_err(|e| BootError(format!("cannot read {path}: {e}")))?;
    let mut ext4_seen = false;
    for (number, start, len) in regions(path, &file)? {
        let region = Region {
            file: file
                .try_clone()
                .map_err(|e| BootError(format!("cannot read {path}: {e}")))?,
            start,
            len,
        };
        let Ok(fs) = Ext4::load(Box::new(region)) else {
            continue;
        };
        ext4_seen = true;
        let Some((kernel, initrd)) = default_kernel(&fs) else {
            continue;
        };
        let read = |p: &str| {
            fs.read(p)
                .map_err(|e| BootError(format!("{}: cannot read {p} in the image: {e}", path)))
        };
        let kernel_bytes = read(&kernel)?;
        if !is_kernel(&kernel_bytes) {
            return Err(BootError(format!(
                "{}: {kernel} in the image is not a Linux kernel (neither bzImage nor ELF)",
                path
            )));
        }
        let initrd_bytes = initrd.as_deref().map(read).transpose()?;
        let root_uuid = fs.uuid().to_string();
        return Ok(BootFiles {
            entry: BootEntry {
                cmdline: format!("root=UUID={root_uuid} ro console=ttyS0"),
                kernel,
                initrd,
                partition: number,
                root_uuid,
            },
            kernel: kernel_bytes,
            initrd: initrd_bytes,
        });
    }
    Err(BootError(if ext4_seen {
        format!(
            "{} has no kernel: none of its ext2/3/4 file systems has /vmlinuz, /boot/vmlinuz or /boot/vmlinuz-*",
            path
        )
    } else {
        format!(
            "{} has no kernel: it has no ext2/3/4 file system to look for /boot in",
            path
        )
    }))
}

/// The default kernel and initrd of `fs` (paths with links resolved), if it has one.
fn default_kernel(fs: &Ext4) -> Option<(String, Option<String>)> {
    let resolve = |p: &str| -> Option<String> {
        let real = fs.canonicalize(p).ok()?;
        let real = real.to_str().ok()?.to_string();
        fs.metadata(real.as_str())
            .ok()
            .filter(|m| !m.is_dir())
            .map(|_| real)
    };
    for (kernel, initrd) in [
        ("/vmlinuz", "/initrd.img"),
        ("/boot/vmlinuz", "/boot/initrd.img"),
    ] {
        if let Some(k) = resolve(kernel) {
            return Some((k, resolve(initrd)));
        }
    }
    let mut versions: Vec<String> = fs
        .read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().as_str().ok()?.to_string();
            name.strip_prefix("vmlinuz-").map(str::to_string)
        })
        .collect();
    versions.sort_by(|a, b| version_cmp(a, b));
    let newest = versions.pop()?;
    let kernel = resolve(&format!("/boot/vmlinuz-{newest}"))?;
    let initrd = resolve(&format!("/boot/initrd.img-{newest}"))
        .or_else(|| resolve(&format!("/boot/initramfs-{newest}.img")));
    Some((kernel, initrd))
}

/// A bzImage (the setup header's "HdrS" at 0x202) or an ELF vmlinux.
fn is_kernel(bytes: &[u8]) -> bool {
    bytes.get(0x202..0x206) == Some(b"HdrS") || bytes.starts_with(b"\x7fELF")
}

/// Compares versions such as `6.1.0-9-cloud-amd64` and `6.1.0-10-cloud-amd64` with runs
/// of digits as numbers.
fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let na = std::str::from_utf8(&a[..da])
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                let nb = std::str::from_utf8(&b[..db])
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                match na.cmp(&nb) {
                    Ordering::Equal => {}
                    other => return other,
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                match x.cmp(y) {
                    Ordering::Equal => {}
                    other => return other,
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_numbers() {
        assert_eq!(
            version_cmp("6.1.0-10-cloud", "6.1.0-9-cloud"),
            Ordering::Greater
        );
        assert_eq!(version_cmp("5.10.0", "6.1.0"), Ordering::Less);
        assert_eq!(version_cmp("6.1", "6.1"), Ordering::Equal);
        assert_eq!(version_cmp("6.1", "6.1.1"), Ordering::Less);
    }

    #[test]
    fn a_kernel_is_a_bzimage_or_an_elf() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(is_kernel(&bz));
        assert!(is_kernel(b"\x7fELF\x02\x01"));
        assert!(!is_kernel(b"#!/bin/sh\n"));
    }
}
