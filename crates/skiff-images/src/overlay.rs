//! Per-VM disks: a thin qcow2 overlay whose backing file is a stored image, created with
//! imago, its cloud-init seed disk, and the reverse question: which VMs' overlays use an image.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use imago::file::File;
use imago::qcow2::Qcow2;
use imago::{FormatCreateBuilder, Storage, StorageCreateOptions};

use crate::error::ImageError;
use crate::gate::{backing_of, one_line};
use crate::seed::Seed;
use crate::store::{blob_file_name, valid_name, Store};

/// File name extension of overlays in overlays/.
pub const OVERLAY_EXTENSION: &str = "qcow2";

impl Store {
    /// Where VM `vm`'s overlay is (whether or not it exists).
    pub fn overlay_path(&self, vm: &str) -> PathBuf {
        self.root
            .join("overlays")
            .join(format!("{vm}.{OVERLAY_EXTENSION}"))
    }

    /// Creates VM `vm`'s overlay on `image` with a virtual size of `size` bytes (default:
    /// the image's), and returns its path. The overlay names its backing file relative to
    /// itself (`../blobs/…`), so the store can move, or be bind-mounted elsewhere, whole.
    pub fn create_overlay(
        &self,
        vm: &str,
        image: &str,
        size: Option<u64>,
    ) -> Result<PathBuf, ImageError> {
        if !valid_name(vm) {
            return Err(ImageError::BadName {
                name: vm.to_string(),
            });
        }
        let info = self.inspect(image)?;
        let size = size.unwrap_or(info.virtual_size);
        if size < info.virtual_size {
            return Err(ImageError::DiskTooSmall {
                size,
                image: image.to_string(),
                image_size: info.virtual_size,
            });
        }
        if !size.is_multiple_of(512) {
            return Err(ImageError::DiskSizeUnaligned { size });
        }
        let path = self.overlay_path(vm);
        if path.exists() {
            return Err(ImageError::OverlayExists { vm: vm.to_string() });
        }
        let tmp = self.tmp_path("overlay");
        let backing = format!("../blobs/{}", blob_file_name(&info.digest));
        let created =
            File::create_open(StorageCreateOptions::new().filename(&tmp)).and_then(|file| {
                Qcow2::<File>::create_builder(file)
                    .backing(backing, "raw".into())
                    .size(size)
                    .create()
            });
        // A hard link, not a rename: a concurrent creation of the same VM's overlay fails
        // instead of replacing it.
        let placed = created.and_then(|()| fs::hard_link(&tmp, &path));
        let _ = fs::remove_file(&tmp);
        match placed {
            Ok(()) => Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(ImageError::OverlayExists { vm: vm.to_string() })
            }
            Err(e) => Err(ImageError::store(
                &path,
                io::Error::new(e.kind(), one_line(&e)),
            )),
        }
    }

    /// Where VM `vm`'s cloud-init seed disk is (whether or not it exists).
    pub fn seed_path(&self, vm: &str) -> PathBuf {
        self.root.join("overlays").join(format!("{vm}.seed"))
    }

    /// Writes VM `vm`'s NoCloud seed disk, replacing an earlier one; returns its path.
    pub fn create_seed(&self, vm: &str, seed: &Seed) -> Result<PathBuf, ImageError> {
        if !valid_name(vm) {
            return Err(ImageError::BadName {
                name: vm.to_string(),
            });
        }
        let path = self.seed_path(vm);
        let tmp = self.tmp_path("seed");
        seed.write(&tmp)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                ImageError::store(&path, e)
            })?;
        Ok(path)
    }

    /// Deletes VM `vm`'s overlay and seed; whether there was an overlay.
    pub fn remove_overlay(&self, vm: &str) -> Result<bool, ImageError> {
        if !valid_name(vm) {
            return Ok(false);
        }
        match fs::remove_file(self.seed_path(vm)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(ImageError::store(&self.seed_path(vm), e))
            }
            _ => {}
        }
        let path = self.overlay_path(vm);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ImageError::store(&path, e)),
        }
    }

    /// The VMs whose overlay has the image `digest` as backing file, sorted, as their
    /// qcow2 headers say.
    pub fn users_of(&self, digest: &str) -> Result<Vec<String>, ImageError> {
        let dir = self.root.join("overlays");
        let blob = blob_file_name(digest);
        let mut users = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| ImageError::store(&dir, e))? {
            let path = entry.map_err(|e| ImageError::store(&dir, e))?.path();
            let Some(vm) = overlay_vm(&path) else {
                continue;
            };
            let backing = backing_of(&path)
                .map_err(|e| ImageError::store(&path, io::Error::new(e.kind(), one_line(&e))))?;
            if backing.is_some_and(|b| b.file_name().is_some_and(|f| *f == *blob)) {
                users.push(vm);
            }
        }
        users.sort();
        Ok(users)
    }
}

/// The VM an overlays/ entry belongs to, if it is an overlay.
fn overlay_vm(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let vm = name.strip_suffix(OVERLAY_EXTENSION)?.strip_suffix('.')?;
    valid_name(vm).then(|| vm.to_string())
}
