//! The store's directory: opening it, names, listing, inspecting and removing images.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::boot::BootEntry;
use crate::error::ImageError;
use crate::probe::{Layout, SourceFormat};

/// How far an import is: bytes of the virtual disk read so far, of `total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// What the store knows about one image (meta/HEX.json), and its names and users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// sha256 of the virtual disk's bytes, in hex.
    pub digest: String,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Bytes the stored blob takes on disk (it is sparse).
    pub disk_usage: u64,
    /// What the imported file was.
    pub source_format: SourceFormat,
    /// The imported file's name (its last path component).
    pub source_file: String,
    pub layout: Layout,
    /// The image's own kernel, and how to boot it.
    pub boot: BootEntry,
    /// Seconds since the Unix epoch.
    pub imported_at: u64,
    #[serde(default)]
    pub names: Vec<String>,
    /// VMs whose disk overlay has this image as backing file.
    #[serde(default)]
    pub users: Vec<String>,
}

/// An image store rooted at one directory.
pub struct Store {
    pub(crate) root: PathBuf,
}

const DIRS: [&str; 6] = ["blobs", "boot", "meta", "names", "overlays", "tmp"];

/// File names of an image's kernel and initrd in boot/HEX/.
pub const KERNEL_FILE: &str = "kernel";
pub const INITRD_FILE: &str = "initrd";

impl Store {
    /// Opens the store at `root`, creating its directories, and removes what an interrupted
    /// import or overlay creation left in tmp/.
    pub fn open(root: &Path) -> Result<Store, ImageError> {
        for dir in DIRS {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(|e| ImageError::store(&path, e))?;
        }
        let root = root
            .canonicalize()
            .map_err(|e| ImageError::store(root, e))?;
        let store = Store { root };
        let tmp = store.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(|e| ImageError::store(&tmp, e))? {
            let path = entry.map_err(|e| ImageError::store(&tmp, e))?.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| ImageError::store(&path, e))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// The stored virtual disk of the image with this digest.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.blobs().join(blob_file_name(digest))
    }

    pub(crate) fn boot_dir(&self, digest: &str) -> PathBuf {
        self.root.join("boot").join(digest)
    }

    /// The image's kernel and, if it has one, its initrd, as files in the store.
    pub fn boot_files(&self, digest: &str) -> (PathBuf, Option<PathBuf>) {
        let dir = self.boot_dir(digest);
        let initrd = dir.join(INITRD_FILE);
        (dir.join(KERNEL_FILE), initrd.exists().then_some(initrd))
    }

    fn meta_path(&self, digest: &str) -> PathBuf {
        self.root.join("meta").join(format!("{digest}.json"))
    }

    pub(crate) fn name_path(&self, name: &str) -> PathBuf {
        self.root.join("names").join(name)
    }

    pub(crate) fn write_meta(&self, info: &ImageInfo) -> Result<(), ImageError> {
        let mut stored = info.clone();
        stored.names.clear();
        stored.users.clear();
        let text = serde_json::to_vec_pretty(&stored).map_err(io::Error::other);
        let path = self.meta_path(&info.digest);
        let tmp = self.root.join("tmp").join(format!("{}.json", info.digest));
        text.and_then(|t| fs::write(&tmp, t))
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| ImageError::store(&path, e))
    }

    fn read_meta(&self, digest: &str) -> Result<ImageInfo, ImageError> {
        let path = self.meta_path(digest);
        let text = fs::read(&path).map_err(|e| ImageError::store(&path, e))?;
        let mut info: ImageInfo = serde_json::from_slice(&text)
            .map_err(|e| ImageError::store(&path, io::Error::other(e)))?;
        info.disk_usage = disk_usage(&self.blob_path(digest));
        Ok(info)
    }

    /// Every name with the digest it stands for, sorted by name.
    fn names(&self) -> Result<Vec<(String, String)>, ImageError> {
        let dir = self.root.join("names");
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| ImageError::store(&dir, e))? {
            let entry = entry.map_err(|e| ImageError::store(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = fs::read_to_string(entry.path())
                .map_err(|e| ImageError::store(&entry.path(), e))?;
            names.push((name, digest.trim().to_string()));
        }
        names.sort();
        Ok(names)
    }

    /// The digest a reference stands for: a name, `sha256:HEX`, or a unique prefix of at
    /// least 12 hex digits.
    pub fn resolve(&self, reference: &str) -> Result<String, ImageError> {
        if valid_name(reference) {
            if let Ok(digest) = fs::read_to_string(self.name_path(reference)) {
                return Ok(digest.trim().to_string());
            }
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() < 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageError::NotFound(reference.to_string()));
        }
        let hex = hex.to_ascii_lowercase();
        let matches: Vec<String> = self
            .digests()?
            .into_iter()
            .filter(|d| d.starts_with(&hex))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(ImageError::NotFound(reference.to_string())),
            _ => Err(ImageError::Ambiguous {
                reference: reference.to_string(),
            }),
        }
    }

    fn digests(&self) -> Result<Vec<String>, ImageError> {
        let dir = self.root.join("meta");
        let mut digests = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| ImageError::store(&dir, e))? {
            let entry = entry.map_err(|e| ImageError::store(&dir, e))?;
            if let Some(d) = entry.file_name().to_string_lossy().strip_suffix(".json") {
                digests.push(d.to_string());
            }
        }
        digests.sort();
        Ok(digests)
    }

    /// One image with its names and users.
    pub fn inspect(&self, reference: &str) -> Result<ImageInfo, ImageError> {
        let digest = self.resolve(reference)?;
        let mut info = self.read_meta(&digest)?;
        info.names = self
            .names()?
            .into_iter()
            .filter(|(_, d)| *d == digest)
            .map(|(n, _)| n)
            .collect();
        info.users = self.users_of(&digest)?;
        Ok(info)
    }

    /// Every image, with names and users, in digest order.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let names = self.names()?;
        let mut images = Vec::new();
        for digest in self.digests()? {
            let mut info = self.read_meta(&digest)?;
            info.names = names
                .iter()
                .filter(|(_, d)| *d == digest)
                .map(|(n, _)| n.clone())
                .collect();
            info.users = self.users_of(&digest)?;
            images.push(info);
        }
        Ok(images)
    }

    /// Removes a name, and the image with it once no name is left; by digest, the image and
    /// all its names. Refused while a VM's overlay uses the image.
    pub fn remove(&self, reference: &str) -> Result<ImageInfo, ImageError> {
        let info = self.inspect(reference)?;
        if !info.users.is_empty() {
            return Err(ImageError::InUse {
                image: reference.to_string(),
                vms: info.users.join(", "),
            });
        }
        let by_name = info.names.iter().any(|n| n == reference);
        let dropped: Vec<&String> = if by_name {
            info.names.iter().filter(|n| *n == reference).collect()
        } else {
            info.names.iter().collect()
        };
        for name in &dropped {
            let path = self.name_path(name);
            fs::remove_file(&path).map_err(|e| ImageError::store(&path, e))?;
        }
        if dropped.len() == info.names.len() {
            for path in [self.meta_path(&info.digest), self.blob_path(&info.digest)] {
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(ImageError::store(&path, e))
                    }
                    _ => {}
                }
            }
            let boot = self.boot_dir(&info.digest);
            match fs::remove_dir_all(&boot) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(ImageError::store(&boot, e))
                }
                _ => {}
            }
        }
        Ok(info)
    }
}

pub(crate) fn blob_file_name(digest: &str) -> String {
    format!("sha256-{digest}.raw")
}

/// Image and VM names: 1-64 of `[A-Za-z0-9._-]`, not starting with '.' or '-'.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Bytes a file's blocks take (st_blocks × 512); 0 if it cannot be read.
pub(crate) fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}
