//! The VM's disks as configured: a path and options, opened when the VM is built, or
//! earlier (the jailer opens them before entering the jail, where neither the path nor a
//! device node would be reachable), or handed over already open (the host daemon opens
//! them inside its image directories, so no path is followed twice).

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use skiff_virtio::devices::block::{
    open_disk, open_disk_file, CacheMode, Disk, DiskError, DiskFormat, OpenMode,
};

/// A disk as `skiff run` and the VM spec describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Serial number the guest reads (GET_ID); defaults to `vdN`-style names by position.
    pub id: Option<String>,
    pub cache: CacheMode,
    /// Raw or qcow2; none: detected (`open_disk`).
    pub format: Option<DiskFormat>,
    /// The disk, already open ([`DiskConfig::preopen`], [`DiskConfig::adopt`]).
    pub opened: Option<OpenedDisk>,
}

/// A disk opened before the VM was built.
#[derive(Clone)]
pub struct OpenedDisk(Arc<Mutex<Option<Box<dyn Disk>>>>);

impl PartialEq for OpenedDisk {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for OpenedDisk {}

impl std::fmt::Debug for OpenedDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenedDisk")
    }
}

impl DiskConfig {
    pub fn from_spec(spec: &skiff_api::DiskSpec) -> Self {
        DiskConfig {
            path: spec.path.clone(),
            read_only: spec.read_only,
            id: spec.id.clone(),
            cache: match spec.cache {
                skiff_api::DiskCache::Writeback => CacheMode::Writeback,
                skiff_api::DiskCache::Direct => CacheMode::Direct,
            },
            format: spec.format.map(|f| match f {
                skiff_api::DiskFormat::Raw => DiskFormat::Raw,
                skiff_api::DiskFormat::Qcow2 => DiskFormat::Qcow2,
            }),
            opened: None,
        }
    }

    fn mode(&self) -> OpenMode {
        OpenMode {
            read_only: self.read_only,
            cache: self.cache,
        }
    }

    /// Opens the disk now (checked and locked); the VM takes it later. Returns its size.
    pub fn preopen(&mut self) -> Result<u64, DiskError> {
        let disk = open_disk(&self.path, self.mode(), self.format)?;
        Ok(self.keep(disk))
    }

    /// Takes `file`, opened by the caller, as this disk (checked and locked like a path
    /// opened here). Returns its size.
    pub fn adopt(&mut self, file: File) -> Result<u64, DiskError> {
        let disk = open_disk_file(&self.path, file, self.mode(), self.format)?;
        Ok(self.keep(disk))
    }

    fn keep(&mut self, disk: Box<dyn Disk>) -> u64 {
        let len = disk.len();
        self.opened = Some(OpenedDisk(Arc::new(Mutex::new(Some(disk)))));
        len
    }

    /// The disk, opened earlier or now.
    pub fn open(&self) -> Result<Box<dyn Disk>, DiskError> {
        let opened = self
            .opened
            .as_ref()
            .and_then(|o| o.0.lock().unwrap_or_else(|e| e.into_inner()).take());
        match opened {
            Some(disk) => Ok(disk),
            None => open_disk(&self.path, self.mode(), self.format),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preopened_disk_is_the_one_the_vm_gets() {
        let path = std::env::temp_dir().join(format!("skiff-vmm-disk-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 4096]).expect("image");
        let spec: skiff_api::DiskSpec = format!("path={},cache=writeback", path.display())
            .parse()
            .expect("spec");
        let mut config = DiskConfig::from_spec(&spec);
        assert_eq!(config.preopen().expect("open"), 4096);
        // The path may go away: the open file is what the VM uses.
        std::fs::remove_file(&path).expect("remove");
        assert!(config.open().is_ok());
        assert!(config.open().is_err(), "taken once; the path is gone");
    }
}
