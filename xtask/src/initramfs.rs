//! An initramfs under construction: a sorted tree of entries, written as one newc cpio
//! archive (optionally gzip-compressed) or into a directory (for `mke2fs -d`). Parent
//! directories are added automatically.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::cpio::CpioWriter;
use crate::paths;

#[derive(Debug)]
enum Node {
    Dir,
    File { source: PathBuf, perm: u32 },
    Bytes { data: Vec<u8>, perm: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

#[derive(Default)]
pub struct Initramfs {
    /// Paths without a leading `/`; sorting puts every directory before its contents.
    nodes: BTreeMap<String, Node>,
}

fn key(path: &str) -> String {
    path.trim_matches('/').to_owned()
}

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.nodes.insert(key(path), Node::Dir);
        self
    }

    /// Adds the file at `source` (symlinks followed), keeping its permission bits.
    pub fn copy(&mut self, dest: &str, source: &Path) -> Result<&mut Self> {
        let meta = std::fs::metadata(source)
            .with_context(|| format!("cannot add {} to the initramfs", source.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", source.display());
        }
        let perm = meta.permissions().mode() & 0o7777;
        self.nodes.insert(
            key(dest),
            Node::File {
                source: source.to_path_buf(),
                perm,
            },
        );
        Ok(self)
    }

    pub fn bytes(&mut self, dest: &str, data: impl Into<Vec<u8>>, perm: u32) -> &mut Self {
        self.nodes.insert(
            key(dest),
            Node::Bytes {
                data: data.into(),
                perm,
            },
        );
        self
    }

    pub fn symlink(&mut self, dest: &str, target: &str) -> &mut Self {
        self.nodes
            .insert(key(dest), Node::Symlink(target.to_owned()));
        self
    }

    pub fn char_dev(&mut self, dest: &str, major: u32, minor: u32) -> &mut Self {
        self.nodes.insert(key(dest), Node::CharDev { major, minor });
        self
    }

    /// A digest of everything that goes into the archive (source files by path, size
    /// and mtime), to decide whether a cached archive is still current.
    pub fn fingerprint(&self) -> Result<String> {
        let mut hasher = Sha256::new();
        for (path, node) in &self.nodes {
            hasher.update(path.as_bytes());
            match node {
                Node::File { source, perm } => {
                    let meta = std::fs::metadata(source)
                        .with_context(|| format!("cannot stat {}", source.display()))?;
                    hasher.update(format!(
                        "{}:{}:{}:{}.{}",
                        source.display(),
                        perm,
                        meta.len(),
                        meta.mtime(),
                        meta.mtime_nsec()
                    ));
                }
                other => hasher.update(format!("{other:?}")),
            }
            hasher.update([0]);
        }
        Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    /// Writes the archive to `path` (atomically).
    pub fn write(&self, path: &Path, compression: Compression) -> Result<()> {
        let tmp = paths::unique_tmp(path);
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let out = BufWriter::with_capacity(1 << 20, file);
        match compression {
            Compression::None => {
                self.write_to(out)?.flush()?;
            }
            Compression::Gzip => {
                let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
                self.write_to(gz)?.finish()?.flush()?;
            }
        }
        paths::rename(&tmp, path)
    }

    /// Writes the tree into the empty directory `root` (for `mke2fs -d`). Device nodes are
    /// left out: creating them needs privileges, and devtmpfs provides /dev anyway.
    pub fn write_dir(&self, root: &Path) -> Result<()> {
        for (path, node) in &self.nodes {
            let dest = root.join(path);
            if let Some(parent) = dest.parent() {
                paths::create_dir(parent)?;
            }
            let written = match node {
                Node::Dir => std::fs::create_dir_all(&dest),
                Node::File { source, perm } => std::fs::copy(source, &dest).and_then(|_| {
                    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(*perm))
                }),
                Node::Bytes { data, perm } => std::fs::write(&dest, data).and_then(|()| {
                    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(*perm))
                }),
                Node::Symlink(target) => std::os::unix::fs::symlink(target, &dest),
                Node::CharDev { .. } => Ok(()),
            };
            written.with_context(|| format!("cannot write {}", dest.display()))?;
        }
        Ok(())
    }

    fn write_to<W: Write>(&self, out: W) -> Result<W> {
        let mut cpio = CpioWriter::new(out);
        let mut written_dirs = std::collections::HashSet::new();
        for (path, node) in &self.nodes {
            // Ancestors first (they may not have been added explicitly).
            let mut ancestors: Vec<&str> = Path::new(path)
                .ancestors()
                .skip(1)
                .filter_map(Path::to_str)
                .filter(|a| !a.is_empty())
                .collect();
            ancestors.reverse();
            for dir in ancestors {
                if written_dirs.insert(dir.to_owned()) {
                    cpio.dir(dir, 0o755)?;
                }
            }
            match node {
                Node::Dir => {
                    if written_dirs.insert(path.clone()) {
                        cpio.dir(path, 0o755)?;
                    }
                }
                Node::File { source, perm } => {
                    let mut file = File::open(source)
                        .with_context(|| format!("cannot open {}", source.display()))?;
                    let size = file.metadata()?.len();
                    cpio.file(path, *perm, size, &mut file)
                        .with_context(|| format!("cannot archive {}", source.display()))?;
                }
                Node::Bytes { data, perm } => {
                    cpio.file(path, *perm, data.len() as u64, &mut data.as_slice())?;
                }
                Node::Symlink(target) => cpio.symlink(path, target)?,
                Node::CharDev { major, minor } => cpio.char_dev(path, 0o600, *major, *minor)?,
            }
        }
        Ok(cpio.finish()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_once() {
        let mut fs = Initramfs::new();
        fs.bytes("/etc/skiff/env", "X=1\n", 0o644)
            .symlink("/bin/sh", "busybox")
            .dir("/etc")
            .char_dev("/dev/console", 5, 1);
        let out = fs.write_to(Vec::new()).expect("archive");
        let text = String::from_utf8_lossy(&out);
        let pos = |name: &str| text.find(&format!("{name}\0")).expect(name);
        assert!(pos("etc") < pos("etc/skiff"));
        assert!(pos("etc/skiff") < pos("etc/skiff/env"));
        assert!(pos("bin") < pos("bin/sh"));
        assert_eq!(text.matches("etc\0").count(), 1);
    }

    #[test]
    fn writes_the_tree_into_a_directory() {
        let root = std::env::temp_dir().join(format!("xtask-write-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut fs = Initramfs::new();
        fs.bytes("/sbin/init", "#!/bin/sh\n", 0o755)
            .symlink("/bin/sh", "busybox")
            .dir("/proc")
            .char_dev("/dev/console", 5, 1);
        fs.write_dir(&root).expect("write_dir");
        let init = std::fs::metadata(root.join("sbin/init")).expect("init");
        assert_eq!(init.permissions().mode() & 0o777, 0o755);
        let link = std::fs::read_link(root.join("bin/sh")).expect("symlink");
        assert_eq!(link, Path::new("busybox"));
        assert!(root.join("proc").is_dir());
        assert!(!root.join("dev/console").exists());
        std::fs::remove_dir_all(&root).expect("clean up");
    }
}
