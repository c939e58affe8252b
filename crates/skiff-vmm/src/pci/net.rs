//! The network and vsock glue: a NIC's tap (created and, if asked, enslaved to a bridge)
//! and MAC, and the vsock device's guest CID.

use std::sync::{Arc, Mutex};

use skiff_virtio::devices::net::{random_mac, Net, Tap, TapError};
use skiff_virtio::devices::vsock::{Vsock, VsockError};
use skiff_virtio::SharedMemory;

/// A NIC as `skiff run` and the VM spec describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicConfig {
    pub tap: String,
    pub bridge: Option<String>,
    /// Default: a random locally administered 52:54:00:xx:xx:xx.
    pub mac: Option<[u8; 6]>,
    /// The tap, already opened (and attached to its bridge) by [`NicConfig::preopen`].
    pub preopened: Option<PreopenedTap>,
}

/// A tap opened before the VMM built its VM: the jailer opens it in the host's network
/// namespace, where its bridge is, before entering the jail's empty one. The descriptor
/// keeps working there: frames go to the tap's device wherever the process is.
#[derive(Clone)]
pub struct PreopenedTap(Arc<Mutex<Option<Tap>>>);

impl PartialEq for PreopenedTap {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for PreopenedTap {}

impl std::fmt::Debug for PreopenedTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreopenedTap")
    }
}

impl NicConfig {
    pub fn from_spec(spec: &skiff_api::NicSpec) -> Self {
        NicConfig {
            tap: spec.tap.clone(),
            bridge: spec.bridge.clone(),
            mac: spec.mac.map(|m| m.0),
            preopened: None,
        }
    }

    /// Opens NIC `index`'s tap now and attaches it to its bridge; the VM takes it later.
    pub fn preopen(&mut self, index: usize) -> Result<(), NetError> {
        let tap = open_tap(index, self)?;
        self.preopened = Some(PreopenedTap(Arc::new(Mutex::new(Some(tap)))));
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("NIC {index}: {source}")]
    Nic { index: usize, source: TapError },
    #[error("vsock: {0}")]
    Vsock(#[from] VsockError),
}

fn open_tap(index: usize, config: &NicConfig) -> Result<Tap, NetError> {
    let err = |source| NetError::Nic { index, source };
    let tap = Tap::open(&config.tap).map_err(err)?;
    if let Some(bridge) = &config.bridge {
        tap.attach_to_bridge(bridge).map_err(err)?;
    }
    Ok(tap)
}

/// Builds NIC `index` on its preopened tap, or opens the tap and attaches it to its bridge.
pub fn open_nic(index: usize, config: &NicConfig) -> Result<Net, NetError> {
    let preopened = config
        .preopened
        .as_ref()
        .and_then(|p| p.0.lock().unwrap_or_else(|e| e.into_inner()).take());
    let tap = match preopened {
        Some(tap) => tap,
        None => open_tap(index, config)?,
    };
    let mac = config.mac.unwrap_or_else(random_mac);
    log::debug!(
        "NIC {index}: tap {} bridge {:?} mac {:02x?}",
        config.tap,
        config.bridge,
        mac
    );
    Ok(Net::new(tap, mac))
}

pub fn open_vsock(cid: u64, mem: SharedMemory) -> Result<Vsock, NetError> {
    Ok(Vsock::new(cid, mem)?)
}
