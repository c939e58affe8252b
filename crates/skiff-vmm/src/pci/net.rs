//! The network and vsock glue: a NIC's tap (created and, if asked, enslaved to a bridge)
//! and MAC, and the vsock device's guest CID.

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
}

impl NicConfig {
    pub fn from_spec(spec: &skiff_api::NicSpec) -> Self {
        NicConfig {
            tap: spec.tap.clone(),
            bridge: spec.bridge.clone(),
            mac: spec.mac.map(|m| m.0),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("NIC {index}: {source}")]
    Nic { index: usize, source: TapError },
    #[error("vsock: {0}")]
    Vsock(#[from] VsockError),
}

/// Opens NIC `index`'s tap, attaches it to its bridge and builds the device.
pub fn open_nic(index: usize, config: &NicConfig) -> Result<Net, NetError> {
    let err = |source| NetError::Nic { index, source };
    let tap = Tap::open(&config.tap).map_err(err)?;
    if let Some(bridge) = &config.bridge {
        tap.attach_to_bridge(bridge).map_err(err)?;
    }
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
