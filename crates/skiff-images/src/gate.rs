//! Backing chains: walking a qcow2 file's chain of backing files before anything is opened
//! through it (loops, missing files and files outside the store are refused with their
//! name), and the gate that lets imago open exactly the files of that chain.

use std::io;
use std::path::{Path, PathBuf};

use imago::file::File;
use imago::format::builder::FormatDriverBuilder;
use imago::format::gate::ImplicitOpenGate;
use imago::qcow2::Qcow2;
use imago::{DenyImplicitOpenGate, FormatAccess, Storage, StorageOpenOptions};

use crate::error::ImageError;
use crate::probe::{detect_format, Probed, SourceFormat};

/// Longest backing chain accepted (QEMU itself has no limit; a deeper chain is a mistake).
pub const MAX_CHAIN: usize = 16;

/// The qcow2 header of `path` alone, its backing file and data file left unopened.
pub fn open_header(path: &Path) -> io::Result<Qcow2<File>> {
    let file = File::open(StorageOpenOptions::new().filename(path))?;
    Qcow2::<File>::builder(file)
        .backing(None)
        .data_file(None)
        .open(DenyImplicitOpenGate::default())
}

/// The backing file named in a qcow2 header, resolved as QEMU does: relative to the
/// directory of the image that names it.
pub fn backing_of(path: &Path) -> io::Result<Option<PathBuf>> {
    let header = open_header(path)?;
    Ok(header.implicit_backing_file().map(|name| {
        let name = Path::new(name);
        match path.parent() {
            Some(dir) if name.is_relative() => dir.join(name),
            _ => name.to_path_buf(),
        }
    }))
}

/// The canonical paths of `path`'s backing files, nearest first; with `store` (canonical),
/// every one of them must be inside it. `path` itself is a qcow2 file.
pub fn walk_chain(path: &Path, store: Option<&Path>) -> Result<Vec<PathBuf>, ImageError> {
    let shown = path.display().to_string();
    let first = path.canonicalize().map_err(|source| ImageError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut chain = vec![first];
    let mut current = path.to_path_buf();
    loop {
        let header = match open_header(&current) {
            Ok(h) => h,
            Err(e) => {
                return Err(ImageError::CorruptQcow2 {
                    path: current.display().to_string(),
                    reason: one_line(&e),
                })
            }
        };
        if header.requires_external_data_file() {
            return Err(ImageError::ExternalDataFile {
                path: current.display().to_string(),
            });
        }
        let Some(backing) = backing_of(&current).map_err(|e| ImageError::CorruptQcow2 {
            path: current.display().to_string(),
            reason: one_line(&e),
        })?
        else {
            break;
        };
        let canonical = backing
            .canonicalize()
            .map_err(|source| ImageError::BackingMissing {
                path: shown.clone(),
                backing: backing.display().to_string(),
                source,
            })?;
        if chain.contains(&canonical) {
            let mut names: Vec<String> = chain.iter().map(|p| p.display().to_string()).collect();
            names.push(canonical.display().to_string());
            return Err(ImageError::BackingLoop {
                path: shown,
                chain: names.join(" -> "),
            });
        }
        chain.push(canonical.clone());
        if chain.len() > MAX_CHAIN {
            return Err(ImageError::ChainTooDeep {
                path: shown,
                max: MAX_CHAIN,
            });
        }
        if !is_qcow2(&canonical)? {
            break;
        }
        current = canonical;
    }
    let outside = store.and_then(|store| chain[1..].iter().find(|p| !p.starts_with(store)));
    if let Some(outside) = outside {
        return Err(ImageError::BackingOutsideStore {
            path: shown,
            backing: outside.display().to_string(),
        });
    }
    chain.remove(0);
    Ok(chain)
}

fn is_qcow2(path: &Path) -> Result<bool, ImageError> {
    let mut head = [0u8; 512];
    let n = crate::import::read_head(path, &mut head)?;
    Ok(matches!(
        detect_format(&head[..n]),
        Probed::Format(SourceFormat::Qcow2)
    ))
}

/// Opens the qcow2 image at `path` with its backing chain, checked as an import checks it
/// (no loop, at most `MAX_CHAIN` deep, no external data file), but wherever the backing
/// files are. With `writable` the image itself is opened read-write; backing files are
/// always read-only. `file` is `path` already open (a disk the caller locked).
pub fn open_qcow2(
    path: &Path,
    file: std::fs::File,
    writable: bool,
) -> Result<FormatAccess<File>, ImageError> {
    let allowed = walk_chain(path, None)?;
    let opts = StorageOpenOptions::new().filename(path).write(writable);
    let storage = File::from_open_file(file, opts).map_err(|e| ImageError::Read {
        path: path.display().to_string(),
        source: e,
    })?;
    Qcow2::<File>::builder(storage)
        .write(writable)
        .open(ChainGate { allowed })
        .map(FormatAccess::new)
        .map_err(|e| ImageError::CorruptQcow2 {
            path: path.display().to_string(),
            reason: one_line(&e),
        })
}

/// The canonical paths of the backing files of the qcow2 image at `path`, nearest first,
/// checked as `open_qcow2` checks them.
pub fn backing_chain(path: &Path) -> Result<Vec<PathBuf>, ImageError> {
    walk_chain(path, None)
}

/// imago's error, which nests its context with ": ", on one line.
pub fn one_line(e: &io::Error) -> String {
    e.to_string().replace('\n', " ")
}

/// Lets imago open the files of one walked backing chain, read-only, and nothing else.
#[derive(Clone)]
pub struct ChainGate {
    pub allowed: Vec<PathBuf>,
}

impl<S: Storage + 'static> ImplicitOpenGate<S> for ChainGate {
    fn open_format<F: FormatDriverBuilder<S>>(
        &mut self,
        builder: F,
    ) -> io::Result<FormatAccess<S>> {
        let inner = builder.open(self.clone())?;
        Ok(FormatAccess::new(inner))
    }

    fn open_storage(&mut self, opts: StorageOpenOptions) -> io::Result<S> {
        let allowed = opts
            .get_filename()
            .and_then(|f| f.canonicalize().ok())
            .is_some_and(|f| self.allowed.contains(&f));
        if !allowed || opts.get_writable() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not part of the checked backing chain",
                    opts.get_filename()
                        .map_or_else(|| "a file".into(), |f| f.display().to_string())
                ),
            ));
        }
        S::open(opts)
    }
}
