//! Every VMM the daemon starts is jailed (`skiff run --jail`, crates/skiff-jail) unless the
//! daemon runs with `--no-jail`. Here: which uid and gid a VM's VMM gets, and making the
//! VM's files usable by that uid before it starts.
//!
//! Each VM holds an index in its record, the lowest one no other VM of the daemon holds, kept
//! until the VM is deleted: its uid and gid are `uid_base + index`. So a restarted VMM and a
//! restarted daemon (which adopts running VMMs) keep the VM's uid, and no two VMs the daemon
//! knows, running or not, ever share one.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use skiff_api::VmSpec;

use crate::error::HostError;

/// The first VM's uid and gid by default: above the ranges distributions hand out to users
/// (1000-60000) and to containers' subordinate ids (100000 + 65536 per user, by default).
pub const DEFAULT_UID_BASE: u32 = 200_000;

/// At most this many VMs per daemon, so the range `[base, base + MAX_VMS)` can be kept free.
pub const MAX_VMS: u32 = 65_536;

/// How the daemon jails its VMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JailConfig {
    pub uid_base: u32,
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            uid_base: DEFAULT_UID_BASE,
        }
    }
}

impl JailConfig {
    /// The uid range must not contain root nor wrap around.
    pub fn validate(&self) -> Result<(), String> {
        if self.uid_base == 0 || self.uid_base.checked_add(MAX_VMS).is_none() {
            return Err(format!(
                "the jail's uid base must be between 1 and {}",
                u32::MAX - MAX_VMS
            ));
        }
        Ok(())
    }

    /// The uid and gid of the VM with this index.
    pub fn ids(&self, index: u32) -> Option<JailIds> {
        if index >= MAX_VMS {
            return None;
        }
        let id = self.uid_base.checked_add(index).filter(|&id| id != 0)?;
        Some(JailIds { uid: id, gid: id })
    }
}

/// Who a jailed VMM runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JailIds {
    pub uid: u32,
    pub gid: u32,
}

/// The lowest index not in `used`, if any is left.
pub fn allocate_index(used: impl IntoIterator<Item = u32>) -> Option<u32> {
    let mut used: Vec<u32> = used.into_iter().collect();
    used.sort_unstable();
    used.dedup();
    let mut candidate = 0;
    for index in used {
        if index > candidate {
            break;
        }
        candidate = index + 1;
    }
    (candidate < MAX_VMS).then_some(candidate)
}

/// Checks that the VM's jailed VMM can read its kernel and initrd, which the jail
/// bind-mounts (the kernel checks the files' own permissions). They are left as they are,
/// since VMs may share them. Disks are not here: the daemon opens them and hands the VMM
/// the open files (`disks`), so no disk is given to the VM's uid.
pub fn prepare_files(spec: &VmSpec, ids: JailIds) -> Result<(), HostError> {
    must_be_readable("kernel", &spec.kernel, ids)?;
    if let Some(initrd) = &spec.initrd {
        must_be_readable("initrd", initrd, ids)?;
    }
    Ok(())
}

fn metadata(field: &str, path: &Path) -> Result<std::fs::Metadata, HostError> {
    std::fs::metadata(path)
        .map_err(|e| HostError::invalid(field, format!("{}: {e}", path.display())))
}

fn must_be_readable(field: &str, path: &Path, ids: JailIds) -> Result<(), HostError> {
    let meta = metadata(field, path)?;
    if readable_by(meta.uid(), meta.gid(), meta.mode(), ids) {
        return Ok(());
    }
    Err(HostError::invalid(
        field,
        format!(
            "{} (owner {}:{}, mode {:o}) is not readable by the VM's uid {} (the jailed VMM \
             opens it as that uid): make it world-readable, or run the daemon with --no-jail",
            path.display(),
            meta.uid(),
            meta.gid(),
            meta.mode() & 0o7777,
            ids.uid
        ),
    ))
}

/// The permission bits as the kernel applies them to a process with `ids` and no
/// supplementary groups (ACLs aside).
fn readable_by(owner: u32, group: u32, mode: u32, ids: JailIds) -> bool {
    if owner == ids.uid {
        mode & 0o400 != 0
    } else if group == ids.gid {
        mode & 0o040 != 0
    } else {
        mode & 0o004 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_free_index_is_taken() {
        assert_eq!(allocate_index([]), Some(0));
        assert_eq!(allocate_index([0, 1, 2]), Some(3));
        assert_eq!(
            allocate_index([2, 0, 3]),
            Some(1),
            "a deleted VM's index is free"
        );
        assert_eq!(allocate_index([1, 1, 5]), Some(0));
        assert_eq!(allocate_index(0..MAX_VMS), None, "the range is full");
    }

    #[test]
    fn ids_stay_in_the_range_and_never_root() {
        let config = JailConfig::default();
        assert_eq!(
            config.ids(3),
            Some(JailIds {
                uid: 200_003,
                gid: 200_003
            })
        );
        assert_eq!(config.ids(MAX_VMS), None);
        assert!(JailConfig { uid_base: 0 }.validate().is_err());
        assert!(JailConfig { uid_base: u32::MAX }.validate().is_err());
        assert!(config.validate().is_ok());
    }

    #[test]
    fn readability_follows_owner_then_group_then_others() {
        let ids = JailIds { uid: 7, gid: 8 };
        assert!(readable_by(7, 0, 0o400, ids));
        assert!(
            !readable_by(7, 8, 0o044, ids),
            "the owner's bits decide for the owner"
        );
        assert!(readable_by(0, 8, 0o040, ids));
        assert!(
            !readable_by(0, 8, 0o404, ids),
            "the group's bits decide for the group"
        );
        assert!(readable_by(0, 0, 0o644, ids));
        assert!(!readable_by(0, 0, 0o640, ids));
    }

    #[test]
    fn kernels_the_vm_cannot_read_are_refused_and_disks_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path
        };
        let kernel = file("kernel", 0o644);
        let disk = file("disk", 0o600);
        let spec = VmSpec::from_json(
            &serde_json::json!({
                "name": "a", "kernel": kernel, "memory": "64M",
                "disks": [{ "path": disk }],
            })
            .to_string(),
        )
        .expect("spec");
        let ids = JailIds {
            uid: 200_001,
            gid: 200_002,
        };
        let owner = std::fs::metadata(&disk).expect("disk").uid();
        prepare_files(&spec, ids).expect("prepare");
        assert_eq!(std::fs::metadata(&disk).expect("disk").uid(), owner);
        std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = prepare_files(&spec, ids).expect_err("unreadable kernel");
        assert!(err.to_string().starts_with("kernel: "), "{err}");
        assert!(err.to_string().contains("--no-jail"), "{err}");
    }
}
