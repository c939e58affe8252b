//! The daemon's image store (`<state-dir>/image-store`, crates/skiff-images): imports,
//! listing and removal for the API, and VMs created from an image, whose disk is a new
//! qcow2 overlay of it and whose kernel is the image's own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff_api::image::{
    Image, ImageBoot, ImportEvent, ImportRequest, VmFromImage, DEFAULT_IMAGE_VM_MEMORY,
};
use skiff_api::MacAddr;
use skiff_images::{ImageError, ImageInfo, Progress, Seed, StaticNetwork, Store};
use tokio::sync::mpsc;

use crate::error::HostError;
use crate::image_dirs::ImageDirs;

/// How often an import reports progress, at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// The store, shared by the API's handlers. Creating an overlay and removing an image take
/// the lock, so an image cannot go while a VM is being made from it; imports only add and
/// run without it.
#[derive(Clone)]
pub struct Images {
    store: Arc<Store>,
    changes: Arc<Mutex<()>>,
}

/// The store's directory under the daemon's state directory.
pub fn store_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("image-store")
}

impl From<ImageError> for HostError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::NotFound(_) | ImageError::Ambiguous { .. } => {
                HostError::ImageNotFound(e.to_string())
            }
            ImageError::InUse { .. }
            | ImageError::NameTaken { .. }
            | ImageError::OverlayExists { .. } => HostError::Conflict(e.to_string()),
            ImageError::Store { .. } => HostError::ImageStore(e.to_string()),
            _ => HostError::invalid("image", e.to_string()),
        }
    }
}

fn to_api(info: ImageInfo) -> Image {
    Image {
        digest: info.digest,
        names: info.names,
        virtual_size: info.virtual_size,
        disk_usage: info.disk_usage,
        source_format: info.source_format.as_str().to_string(),
        source_file: info.source_file,
        layout: format!("{:?}", info.layout).to_lowercase(),
        boot: ImageBoot {
            kernel: info.boot.kernel,
            initrd: info.boot.initrd,
            cmdline: info.boot.cmdline,
            root_uuid: info.boot.root_uuid,
        },
        imported_at: info.imported_at,
        users: info.users,
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HostError> + Send + 'static,
) -> Result<T, HostError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HostError::ImageStore(format!("image store task failed: {e}")))?
}

impl Images {
    pub fn open(state_dir: &Path) -> Result<Images, HostError> {
        let store = Store::open(&store_dir(state_dir))?;
        Ok(Images {
            store: Arc::new(store),
            changes: Arc::new(Mutex::new(())),
        })
    }

    pub fn root(&self) -> &Path {
        self.store.root()
    }

    pub async fn list(&self) -> Result<Vec<Image>, HostError> {
        let store = self.store.clone();
        blocking(move || Ok(store.list()?.into_iter().map(to_api).collect())).await
    }

    pub async fn inspect(&self, reference: &str) -> Result<Image, HostError> {
        let store = self.store.clone();
        let reference = reference.to_string();
        blocking(move || Ok(to_api(store.inspect(&reference)?))).await
    }

    pub async fn remove(&self, reference: &str) -> Result<(), HostError> {
        let this = self.clone();
        let reference = reference.to_string();
        blocking(move || {
            let _changing = this.changes.lock().unwrap_or_else(|p| p.into_inner());
            this.store.remove(&reference)?;
            Ok(())
        })
        .await
    }

    /// Checks an import request (the file must be inside the image directories, and pass
    /// every check the store makes before reading it: a refusal is an error status, not a
    /// started import) and starts it; the receiver gets progress, then the image or the
    /// error (of reading the disk, or of a second import of the same name meanwhile).
    pub async fn import(
        &self,
        request: ImportRequest,
        dirs: &ImageDirs,
    ) -> Result<mpsc::Receiver<ImportEvent>, HostError> {
        let path = PathBuf::from(&request.path);
        if !path.is_absolute() {
            return Err(HostError::invalid(
                "path",
                format!("{} must be an absolute path", path.display()),
            ));
        }
        dirs.check("path", &path)?;
        let (store, checked, name) = (self.store.clone(), path.clone(), request.name.clone());
        blocking(move || Ok(store.check_import(&checked, name.as_deref())?)).await?;
        let (tx, rx) = mpsc::channel(64);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut last: Option<Instant> = None;
            let mut report = |p: Progress| {
                let due = last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
                if p.done == p.total || due {
                    last = Some(Instant::now());
                    let _ = tx.blocking_send(ImportEvent::Progress {
                        done: p.done,
                        total: p.total,
                    });
                }
            };
            let result = store.import(&path, request.name.as_deref(), &mut report);
            let event = match result {
                Ok(info) => {
                    log::info!("imported {} as sha256:{}", path.display(), info.digest);
                    ImportEvent::Image(Box::new(to_api(info)))
                }
                Err(e) => {
                    log::warn!("import of {} failed: {e}", path.display());
                    ImportEvent::Error(e.to_string())
                }
            };
            let _ = tx.blocking_send(event);
        });
        Ok(rx)
    }

    /// Makes VM `request.name`'s overlay and the spec that boots it (JSON, for
    /// `Host::create`). The caller removes the overlay if the VM is not created.
    pub async fn prepare_vm(&self, request: &VmFromImage) -> Result<Vec<u8>, HostError> {
        skiff_api::validate_name(&request.name).map_err(|e| match e {
            skiff_api::SpecError::Invalid { field, reason } => HostError::invalid(field, reason),
            skiff_api::SpecError::Parse(m) => HostError::invalid("name", m),
        })?;
        let this = self.clone();
        let req = request.clone();
        let (info, overlay) = blocking(move || {
            let _changing = this.changes.lock().unwrap_or_else(|p| p.into_inner());
            let info = this.store.inspect(&req.image)?;
            let size = req.disk_size.map(|s| s.bytes());
            let overlay = this.store.create_overlay(&req.name, &info.digest, size)?;
            Ok((info, overlay))
        })
        .await?;
        let mut nics = request.nics.clone();
        let network = match (&request.network, nics.first_mut()) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(self.undo(
                    &request.name,
                    HostError::invalid("network", "a static address needs a NIC (nics)"),
                ))
            }
            (Some(net), Some(nic)) => {
                let mac = *nic.mac.get_or_insert_with(|| mac_for(&request.name));
                Some(StaticNetwork {
                    mac: mac.to_string(),
                    address: net.address.clone(),
                    gateway: net.gateway.clone(),
                    dns: net.dns.clone(),
                })
            }
        };
        let seed = Seed {
            instance_id: format!("{}-{}", request.name, &info.digest[..12]),
            hostname: request.name.clone(),
            ssh_keys: request.ssh_keys.clone(),
            user_data: request.user_data.clone(),
            network,
        };
        let this = self.clone();
        let name = request.name.clone();
        let seed_path = match blocking(move || Ok(this.store.create_seed(&name, &seed)?)).await {
            Ok(path) => path,
            Err(e) => return Err(self.undo(&request.name, e)),
        };
        let (kernel, initrd) = self.store.boot_files(&info.digest);
        let mut cmdline = info.boot.cmdline.clone();
        if !request.cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&request.cmdline);
        }
        let spec = serde_json::json!({
            "name": request.name,
            "vcpus": request.vcpus.unwrap_or(1),
            "memory": request.memory.unwrap_or(DEFAULT_IMAGE_VM_MEMORY),
            "kernel": kernel,
            "initrd": initrd,
            "cmdline": cmdline,
            "disks": [
                { "path": overlay, "format": "qcow2" },
                { "path": seed_path, "format": "raw", "read_only": true, "id": "cidata" },
            ],
            "nics": nics,
            "restart": request.restart,
            "address": request.network.as_ref().map(|n| n.address.clone()),
        });
        serde_json::to_vec(&spec).map_err(|e| HostError::ImageStore(e.to_string()))
    }

    /// Removes what `prepare_vm` made for `name` before failing with `error`.
    fn undo(&self, name: &str, error: HostError) -> HostError {
        self.remove_overlay(name);
        error
    }

    /// Deletes VM `name`'s overlay and seed, if it has them.
    pub fn remove_overlay(&self, name: &str) {
        match self.store.remove_overlay(name) {
            Ok(true) => log::info!("{name}: removed its disk overlay"),
            Ok(false) => {}
            Err(e) => log::error!("{name}: cannot remove its disk overlay: {e}"),
        }
    }

    /// Whether `spec` is a VM-from-image request (it names an `image`).
    pub fn is_image_request(body: &[u8]) -> bool {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .is_some_and(|v| v.get("image").is_some())
    }
}

/// A locally administered MAC for VM `name`'s first NIC (kept in its spec):
/// 52:54:00 (QEMU's prefix) and three bytes of the name's hash.
fn mac_for(name: &str) -> MacAddr {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    let h = hasher.finish().to_be_bytes();
    MacAddr([0x52, 0x54, 0x00, h[0], h[1], h[2]])
}

/// `POST /vms` with an `image`: the overlay, then the VM (started if asked); a VM that
/// could not be created leaves no overlay behind.
pub async fn create_vm(
    host: &crate::service::Host,
    body: &[u8],
    start: bool,
) -> Result<crate::model::VmInfo, HostError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let request: VmFromImage = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        HostError::invalid(
            if path == "." {
                "spec".to_string()
            } else {
                path
            },
            e.into_inner().to_string(),
        )
    })?;
    let spec = host.images().prepare_vm(&request).await?;
    let info = match host.create(&spec, false).await {
        Ok(info) => info,
        Err(e) => {
            host.images().remove_overlay(&request.name);
            return Err(e);
        }
    };
    if start {
        return host.start(&request.name).await;
    }
    Ok(info)
}
