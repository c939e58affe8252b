//! What a file is: its container format (raw, qcow2, or one Skiff does not import) from its
//! magic bytes, and the layout of the disk inside (partition table or bare file system).

use serde::{Deserialize, Serialize};

/// Bytes of the virtual disk that `detect_layout` looks at: up to btrfs's superblock magic.
pub const LAYOUT_PROBE_BYTES: usize = 72 * 1024;

/// The container format of an imported file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Raw,
    Qcow2,
}

impl SourceFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Raw => "raw",
            SourceFormat::Qcow2 => "qcow2",
        }
    }
}

/// How the virtual disk is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// A GUID partition table.
    Gpt,
    /// A DOS (MBR) partition table.
    Mbr,
    /// A file system on the whole disk, no partition table.
    Ext4,
    Xfs,
    Btrfs,
    Iso9660,
}

/// A format recognised by its magic: one Skiff imports, or the name of one it does not.
pub enum Probed {
    Format(SourceFormat),
    Unsupported(&'static str),
}

pub const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// The container format from the file's first bytes (at least 512 of them, when the file
/// has them); anything without a known magic is raw, to be checked with `detect_layout`.
pub fn detect_format(head: &[u8]) -> Probed {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0, QCOW2_MAGIC) {
        Probed::Format(SourceFormat::Qcow2)
    } else if at(0, b"KDMV") || at(0, b"# Disk DescriptorFile") {
        Probed::Unsupported("VMDK")
    } else if at(0, b"vhdxfile") {
        Probed::Unsupported("VHDX")
    } else if at(0, b"conectix") {
        Probed::Unsupported("VHD")
    } else if at(64, &[0x7f, 0x10, 0xda, 0xbe]) {
        Probed::Unsupported("VDI")
    } else {
        Probed::Format(SourceFormat::Raw)
    }
}

/// The disk's layout from its first `LAYOUT_PROBE_BYTES` bytes (fewer if the disk is
/// smaller), or `None` when it has neither partition table nor a known file system.
pub fn detect_layout(head: &[u8]) -> Option<Layout> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(512, b"EFI PART") {
        return Some(Layout::Gpt);
    }
    // ext2/3/4: the superblock at 1024, magic 0xEF53 at its byte 56.
    if at(1080, &[0x53, 0xef]) {
        return Some(Layout::Ext4);
    }
    if at(0, b"XFSB") {
        return Some(Layout::Xfs);
    }
    if at(0x10040, b"_BHRfS_M") {
        return Some(Layout::Btrfs);
    }
    if at(0x8001, b"CD001") {
        return Some(Layout::Iso9660);
    }
    if at(510, &[0x55, 0xaa]) && has_mbr_partition(head) {
        return Some(Layout::Mbr);
    }
    None
}

/// Whether the boot sector's partition table has an entry: a type byte set and a boot flag
/// of 0 or 0x80 (a FAT boot sector also ends in 0x55AA, with code where the table would be).
fn has_mbr_partition(head: &[u8]) -> bool {
    (0..4).any(|i| {
        let entry = 446 + 16 * i;
        match head.get(entry..entry + 16) {
            Some(e) => (e[0] == 0 || e[0] == 0x80) && e[4] != 0,
            None => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_with(offset: usize, magic: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; LAYOUT_PROBE_BYTES];
        d[offset..offset + magic.len()].copy_from_slice(magic);
        d
    }

    #[test]
    fn layouts_are_told_apart_by_their_magic() {
        assert_eq!(
            detect_layout(&disk_with(512, b"EFI PART")),
            Some(Layout::Gpt)
        );
        assert_eq!(
            detect_layout(&disk_with(1080, &[0x53, 0xef])),
            Some(Layout::Ext4)
        );
        assert_eq!(
            detect_layout(&disk_with(0x10040, b"_BHRfS_M")),
            Some(Layout::Btrfs)
        );
        let mut mbr = disk_with(510, &[0x55, 0xaa]);
        assert_eq!(
            detect_layout(&mbr),
            None,
            "a boot sector without partitions"
        );
        mbr[446 + 4] = 0x83;
        assert_eq!(detect_layout(&mbr), Some(Layout::Mbr));
        assert_eq!(detect_layout(b"#!/bin/sh\necho hello\n"), None);
    }

    #[test]
    fn formats_are_told_apart_by_their_magic() {
        assert!(matches!(
            detect_format(b"QFI\xfb\0\0\0\x03"),
            Probed::Format(SourceFormat::Qcow2)
        ));
        assert!(matches!(
            detect_format(b"KDMV...."),
            Probed::Unsupported("VMDK")
        ));
        assert!(matches!(
            detect_format(&[0u8; 512]),
            Probed::Format(SourceFormat::Raw)
        ));
    }
}
