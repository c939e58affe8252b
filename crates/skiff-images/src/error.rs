//! What can go wrong with images: one line each, naming the file and the problem.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} is not a disk image: {why}")]
    NotADiskImage { path: String, why: &'static str },
    #[error("{path} is a {format} image; Skiff imports raw and qcow2 (convert it with `qemu-img convert -O qcow2`)")]
    UnsupportedFormat { path: String, format: &'static str },
    #[error("{path} is a corrupt qcow2 image: {reason}")]
    CorruptQcow2 { path: String, reason: String },
    #[error("{path} has a backing-file loop: {chain}")]
    BackingLoop { path: String, chain: String },
    #[error("{path} has backing file {backing}, which is outside the image store; import the backing image first, or flatten it with `qemu-img convert -O qcow2`")]
    BackingOutsideStore { path: String, backing: String },
    #[error("{path}: cannot open backing file {backing}: {source}")]
    BackingMissing {
        path: String,
        backing: String,
        source: io::Error,
    },
    #[error("{path} has a backing chain deeper than {max} images")]
    ChainTooDeep { path: String, max: usize },
    #[error("{path} keeps its data in an external data file, which Skiff does not import")]
    ExternalDataFile { path: String },
    #[error("{why}")]
    NoKernel { why: String },
    #[error("invalid name {name:?}: use 1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'")]
    BadName { name: String },
    #[error(
        "image name {name} already names sha256:{digest}; remove it first (skiff image rm {name})"
    )]
    NameTaken { name: String, digest: String },
    #[error("no image {0} in the store")]
    NotFound(String),
    #[error("image reference {reference} matches several images; give more of the digest")]
    Ambiguous { reference: String },
    #[error("image {image} is used by VM {vms}; delete the VM first")]
    InUse { image: String, vms: String },
    #[error("VM {vm} already has a disk overlay")]
    OverlayExists { vm: String },
    #[error("disk size {size} is smaller than image {image} ({image_size} bytes)")]
    DiskTooSmall {
        size: u64,
        image: String,
        image_size: u64,
    },
    #[error("disk size {size} is not a multiple of 512 bytes")]
    DiskSizeUnaligned { size: u64 },
    #[error("image store {path}: {source}")]
    Store { path: String, source: io::Error },
}

impl ImageError {
    pub(crate) fn store(path: &std::path::Path, source: io::Error) -> Self {
        ImageError::Store {
            path: path.display().to_string(),
            source,
        }
    }
}
