//! Importing a raw or qcow2 file: check it, read its virtual disk through imago (backing
//! chain, compressed clusters and all), hash it and store it as a sparse raw blob. Nothing
//! lands in the store until the whole disk was read: a failed import leaves only a
//! temporary file, removed on the way out.

use std::fs::{self, File as StdFile, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use imago::file::File;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{FormatAccess, FormatDriverBuilder};
use sha2::{Digest, Sha256};

use crate::boot::{find_boot, BootFiles};
use crate::error::ImageError;
use crate::gate::{one_line, walk_chain, ChainGate};
use crate::probe::{detect_format, detect_layout, Probed, SourceFormat, LAYOUT_PROBE_BYTES};
use crate::store::{disk_usage, valid_name, ImageInfo, Progress, Store, INITRD_FILE, KERNEL_FILE};

/// Bytes read, hashed and written per step.
const CHUNK: usize = 1 << 20;

/// Tells temporary files of one process apart.
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// Reads up to `buf.len()` bytes from the start of `path`; how many it got.
pub(crate) fn read_head(path: &Path, buf: &mut [u8]) -> Result<usize, ImageError> {
    let err = |source| ImageError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut file = StdFile::open(path).map_err(err)?;
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(got)
}

/// What the checks before an import found: the name, and the source opened.
struct Prepared {
    name: String,
    format: SourceFormat,
    disk: FormatAccess<File>,
    size: u64,
    layout: crate::probe::Layout,
}

/// A file in tmp/ that is removed unless it was moved into place.
struct TmpFile(PathBuf);

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

impl Store {
    pub(crate) fn tmp_path(&self, what: &str) -> PathBuf {
        let n = NEXT_TMP.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Everything an import checks before it reads the disk: the name (valid, not taken),
    /// the file (readable, raw or qcow2, a sound backing chain) and its virtual disk (a
    /// partition table or known file system). The daemon runs it before it answers, so
    /// that such a refusal is an error status rather than a line of a started import.
    pub fn check_import(&self, source: &Path, name: Option<&str>) -> Result<(), ImageError> {
        self.prepare_import(source, name).map(drop)
    }

    fn prepare_import(&self, source: &Path, name: Option<&str>) -> Result<Prepared, ImageError> {
        let shown = source.display().to_string();
        let name = match name {
            Some(n) => n.to_string(),
            None => source
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        if !valid_name(&name) {
            return Err(ImageError::BadName { name });
        }
        if let Ok(digest) = fs::read_to_string(self.name_path(&name)) {
            return Err(ImageError::NameTaken {
                name,
                digest: digest.trim().to_string(),
            });
        }
        let mut head = [0u8; 512];
        let n = read_head(source, &mut head)?;
        let format = match detect_format(&head[..n]) {
            Probed::Format(f) => f,
            Probed::Unsupported(format) => {
                return Err(ImageError::UnsupportedFormat {
                    path: shown,
                    format,
                })
            }
        };
        let disk = self.open_source(source, format)?;
        let size = disk.size();
        let mut first = vec![0u8; LAYOUT_PROBE_BYTES.min(usize::try_from(size).unwrap_or(0))];
        disk.read(&mut first[..], 0)
            .map_err(|e| self.read_error(source, format, &e))?;
        let layout = match detect_layout(&first) {
            Some(l) => l,
            None if format == SourceFormat::Qcow2 => {
                return Err(ImageError::NotADiskImage {
                    path: shown,
                    why: "its virtual disk has no partition table or known file system",
                })
            }
            None => {
                return Err(ImageError::NotADiskImage {
                    path: shown,
                    why: "no qcow2 header, partition table or known file system",
                })
            }
        };
        Ok(Prepared {
            name,
            format,
            disk,
            size,
            layout,
        })
    }

    /// Imports `source` (raw or qcow2) under `name` (default: the file name without its
    /// extension), calling `progress` as the virtual disk is read. Importing content the
    /// store has already only adds the name.
    pub fn import(
        &self,
        source: &Path,
        name: Option<&str>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ImageInfo, ImageError> {
        let shown = source.display().to_string();
        let Prepared {
            name,
            format,
            disk,
            size,
            layout,
        } = self.prepare_import(source, name)?;

        let tmp = TmpFile(self.tmp_path("import"));
        let digest = copy_hashed(&disk, size, &tmp.0, progress)
            .map_err(|e| self.read_error(source, format, &e))?;
        drop(disk);

        let boot = find_boot(&tmp.0, &shown).map_err(|e| ImageError::NoKernel { why: e.0 })?;
        let blob = self.blob_path(&digest);
        self.store_boot_files(&digest, &boot)?;
        if !blob.exists() {
            fs::set_permissions(&tmp.0, fs::Permissions::from_mode(0o444))
                .and_then(|()| fs::rename(&tmp.0, &blob))
                .map_err(|e| ImageError::store(&blob, e))?;
        }
        let imported_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut info = ImageInfo {
            digest: digest.clone(),
            virtual_size: size,
            disk_usage: disk_usage(&blob),
            source_format: format,
            source_file: source
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            layout,
            boot: boot.entry,
            imported_at,
            names: Vec::new(),
            users: Vec::new(),
        };
        if !self
            .root
            .join("meta")
            .join(format!("{digest}.json"))
            .exists()
        {
            self.write_meta(&info)?;
        }
        self.add_name(&name, &digest)?;
        info = self.inspect(&digest)?;
        Ok(info)
    }

    /// Puts the kernel and initrd of image `digest` in boot/HEX/ (kernel, initrd), unless
    /// they are there: written in tmp/ and renamed into place as one directory.
    fn store_boot_files(&self, digest: &str, boot: &BootFiles) -> Result<(), ImageError> {
        let dir = self.boot_dir(digest);
        if dir.exists() {
            return Ok(());
        }
        let tmp = self.tmp_path("boot");
        // Readable by all whatever the umask: a jailed VMM reads them as its own uid.
        let write = |name: &str, bytes: &[u8]| {
            let path = tmp.join(name);
            fs::write(&path, bytes)
                .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o444)))
        };
        let written = fs::create_dir(&tmp)
            .and_then(|()| write(KERNEL_FILE, &boot.kernel))
            .and_then(|()| match &boot.initrd {
                Some(initrd) => write(INITRD_FILE, initrd),
                None => Ok(()),
            })
            .and_then(|()| fs::rename(&tmp, &dir));
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&tmp);
            return Err(ImageError::store(&dir, e));
        }
        Ok(())
    }

    /// Points `name` at `digest`, unless it exists already (atomically: a hard link of a
    /// complete file).
    fn add_name(&self, name: &str, digest: &str) -> Result<(), ImageError> {
        let path = self.name_path(name);
        let tmp = TmpFile(self.tmp_path("name"));
        fs::write(&tmp.0, format!("{digest}\n")).map_err(|e| ImageError::store(&tmp.0, e))?;
        match fs::hard_link(&tmp.0, &path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let digest = fs::read_to_string(&path).unwrap_or_default();
                Err(ImageError::NameTaken {
                    name: name.to_string(),
                    digest: digest.trim().to_string(),
                })
            }
            Err(e) => Err(ImageError::store(&path, e)),
        }
    }

    fn open_source(
        &self,
        source: &Path,
        format: SourceFormat,
    ) -> Result<FormatAccess<File>, ImageError> {
        // builder_path() opens the file itself through the gate too.
        let itself = source.canonicalize().map_err(|e| ImageError::Read {
            path: source.display().to_string(),
            source: e,
        })?;
        let opened = match format {
            SourceFormat::Raw => Raw::<File>::builder_path(source)
                .open(ChainGate {
                    allowed: vec![itself],
                })
                .map(FormatAccess::new),
            SourceFormat::Qcow2 => {
                let mut allowed = walk_chain(source, Some(&self.blobs()))?;
                allowed.push(itself);
                Qcow2::<File>::builder_path(source)
                    .open(ChainGate { allowed })
                    .map(FormatAccess::new)
            }
        };
        opened.map_err(|e| self.read_error(source, format, &e))
    }

    fn read_error(&self, source: &Path, format: SourceFormat, e: &io::Error) -> ImageError {
        match format {
            SourceFormat::Qcow2 => ImageError::CorruptQcow2 {
                path: source.display().to_string(),
                reason: one_line(e),
            },
            SourceFormat::Raw => ImageError::Read {
                path: source.display().to_string(),
                source: io::Error::new(e.kind(), one_line(e)),
            },
        }
    }
}

/// Reads the whole virtual disk, hashing it and writing every chunk that is not all zeros
/// to `to` (so the copy is sparse); the sha256 in hex.
fn copy_hashed(
    disk: &FormatAccess<File>,
    size: u64,
    to: &Path,
    progress: &mut dyn FnMut(Progress),
) -> io::Result<String> {
    let out = OpenOptions::new().write(true).create_new(true).open(to)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    progress(Progress { done, total: size });
    while done < size {
        let n = usize::try_from((size - done).min(CHUNK as u64)).unwrap_or(CHUNK);
        let chunk = &mut buf[..n];
        disk.read(&mut *chunk, done)?;
        hasher.update(&*chunk);
        if chunk.iter().any(|&b| b != 0) {
            out.write_all_at(chunk, done)?;
        }
        done += n as u64;
        progress(Progress { done, total: size });
    }
    out.set_len(size)?;
    out.sync_all()?;
    Ok(format!("{:x}", hasher.finalize()))
}
