//! The image store's REST model: an image as the API shows it, an import request and the
//! progress lines an import answers with, and a VM made from an image.

use serde::{Deserialize, Serialize};

use crate::{ByteSize, NicSpec, RestartPolicy};

/// A stored image (`GET /images`, `GET /images/{ref}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// sha256 of the virtual disk, in hex.
    pub digest: String,
    pub names: Vec<String>,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Bytes the stored image takes on the host's disk.
    pub disk_usage: u64,
    /// `raw` or `qcow2`: what was imported.
    pub source_format: String,
    pub source_file: String,
    /// `gpt`, `mbr`, `ext4`, ...
    pub layout: String,
    /// The kernel the image boots, its initrd and the kernel command line.
    pub boot: ImageBoot,
    /// Seconds since the Unix epoch.
    pub imported_at: u64,
    /// VMs whose disk is an overlay of this image.
    pub users: Vec<String>,
}

/// The image's own kernel, found in its /boot at import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBoot {
    /// Path inside the image.
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    pub cmdline: String,
    pub root_uuid: String,
}

/// `POST /images`: import the file at `path` (on the daemon's machine, inside its image
/// directories) under `name` (default: the file name without its extension).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One line of `POST /images`' answer (JSON lines): progress, then the image or an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportEvent {
    /// Bytes of the virtual disk read so far.
    Progress {
        done: u64,
        total: u64,
    },
    Image(Box<Image>),
    Error(String),
}

/// `POST /vms` with an `image`: a VM whose disk is a new overlay of a stored image, booted
/// with the image's own kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmFromImage {
    pub name: String,
    /// An image name, `sha256:HEX` or a digest prefix.
    pub image: String,
    /// The overlay's virtual size (at least the image's); default: the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Default 512M.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// Added to the image's kernel command line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmdline: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicSpec>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// SSH public keys the guest's cloud-init authorizes (for root and the image's user).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    /// The tenant's own user-data, passed through to cloud-init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// A static address for the first NIC (needs one), until managed networks exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<StaticAddress>,
}

/// A static IPv4 or IPv6 address for a guest's first NIC, set by its cloud-init seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticAddress {
    /// With its prefix length: `10.0.2.15/24`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

/// Memory of a VM made from an image when the request names none.
pub const DEFAULT_IMAGE_VM_MEMORY: ByteSize = ByteSize::from_mib(512);
