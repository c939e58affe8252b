//! Feature bits and status bits shared by the transport and every device.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
pub const RING_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
pub const RING_INDIRECT_DESC: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
/// What every Skiff device offers: virtio 1.x, event-index suppression, indirect tables.
pub const COMMON: u64 = VERSION_1 | RING_EVENT_IDX | RING_INDIRECT_DESC;

pub const STATUS_ACKNOWLEDGE: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
pub const STATUS_DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;
pub const STATUS_FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
pub const STATUS_DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
pub const STATUS_NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;
pub const STATUS_FAILED: u8 = VIRTIO_CONFIG_S_FAILED as u8;

pub fn has(features: u64, bit: u32) -> bool {
    features & (1 << bit) != 0
}
