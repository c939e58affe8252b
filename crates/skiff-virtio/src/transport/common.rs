//! The virtio-pci common configuration structure (virtio 1.x §4.1.4.3): feature
//! negotiation, the device status state machine and per-queue setup, as register semantics
//! with no side effects beyond the [`Action`] the transport must take.

use crate::features::{
    STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VERSION_1,
};

/// "No MSI-X vector" for config_msix_vector and queue_msix_vector.
pub const NO_VECTOR: u16 = 0xffff;
/// Bytes of the structure Skiff implements (up to queue_device, virtio 1.0).
pub const COMMON_CFG_LEN: u64 = 0x38;

const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// One queue as the driver set it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    pub max_size: u16,
    pub size: u16,
    pub enabled: bool,
    pub vector: u16,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            size: max_size,
            enabled: false,
            vector: NO_VECTOR,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// What a register write asks of the transport.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// Status 0 was written: reset the device.
    Reset,
    /// DRIVER_OK was set after a successful negotiation: activate the device.
    Activate,
}

pub struct CommonConfig {
    device_features: u64,
    msix_vectors: u16,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_vector: u16,
    queue_select: u16,
    queues: Vec<QueueConfig>,
}

impl CommonConfig {
    pub fn new(device_features: u64, queue_max_sizes: &[u16], msix_vectors: u16) -> Self {
        CommonConfig {
            device_features,
            msix_vectors,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_vector: NO_VECTOR,
            queue_select: 0,
            queues: queue_max_sizes
                .iter()
                .map(|&m| QueueConfig::new(m))
                .collect(),
        }
    }

    pub fn status(&self) -> u8 {
        self.status
    }

    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    pub fn config_vector(&self) -> u16 {
        self.config_vector
    }

    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    /// Marks the device broken (it could not be activated).
    pub fn set_needs_reset(&mut self) {
        self.status |= STATUS_NEEDS_RESET;
    }

    /// Back to the state after power-on.
    pub fn reset(&mut self) {
        *self = CommonConfig::new(
            self.device_features,
            &self.queues.iter().map(|q| q.max_size).collect::<Vec<_>>(),
            self.msix_vectors,
        );
    }

    /// Reads `data.len()` bytes at `offset`; only naturally sized and aligned accesses to
    /// a register are meaningful (the driver must use them), anything else reads zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let value: u64 = match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select.into(),
            (DEVICE_FEATURE, 4) => match self.device_feature_select {
                0 => self.device_features & 0xffff_ffff,
                1 => self.device_features >> 32,
                _ => 0,
            },
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select.into(),
            (DRIVER_FEATURE, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (CONFIG_MSIX_VECTOR, 2) => self.config_vector.into(),
            (NUM_QUEUES, 2) => self.queues.len() as u64,
            (DEVICE_STATUS, 1) => self.status.into(),
            (CONFIG_GENERATION, 1) => 0,
            (QUEUE_SELECT, 2) => self.queue_select.into(),
            (QUEUE_NOTIFY_OFF, 2) => self.queue_select.into(),
            (o, len) => match self.queues.get(usize::from(self.queue_select)) {
                None => 0,
                Some(q) => match (o, len) {
                    (QUEUE_SIZE, 2) => q.size.into(),
                    (QUEUE_MSIX_VECTOR, 2) => q.vector.into(),
                    (QUEUE_ENABLE, 2) => q.enabled.into(),
                    (QUEUE_DESC, 8) => q.desc,
                    (QUEUE_DRIVER, 8) => q.driver,
                    (QUEUE_DEVICE, 8) => q.device,
                    (QUEUE_DESC, 4) => q.desc & 0xffff_ffff,
                    (QUEUE_DRIVER, 4) => q.driver & 0xffff_ffff,
                    (QUEUE_DEVICE, 4) => q.device & 0xffff_ffff,
                    (0x24, 4) => q.desc >> 32,
                    (0x2c, 4) => q.driver >> 32,
                    (0x34, 4) => q.device >> 32,
                    _ => 0,
                },
            },
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        let mut bytes = [0u8; 8];
        let n = data.len().min(8);
        bytes[..n].copy_from_slice(&data[..n]);
        let value = u64::from_le_bytes(bytes);
        let setting_up = self.status & (STATUS_DRIVER_OK | STATUS_FAILED) == 0;
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = value as u32,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = value as u32,
            (DRIVER_FEATURE, 4) if self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | value << 32,
                    _ => {}
                }
            }
            (CONFIG_MSIX_VECTOR, 2) => self.config_vector = self.valid_vector(value as u16),
            (DEVICE_STATUS, 1) => return self.write_status(value as u8),
            (QUEUE_SELECT, 2) => self.queue_select = value as u16,
            (o, len) if setting_up => {
                let vector = self.valid_vector(value as u16);
                let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) else {
                    return Action::None;
                };
                match (o, len) {
                    (QUEUE_SIZE, 2) if !q.enabled => q.size = value as u16,
                    (QUEUE_MSIX_VECTOR, 2) => q.vector = vector,
                    (QUEUE_ENABLE, 2) if value == 1 => q.enabled = true,
                    (QUEUE_DESC, 8) if !q.enabled => q.desc = value,
                    (QUEUE_DRIVER, 8) if !q.enabled => q.driver = value,
                    (QUEUE_DEVICE, 8) if !q.enabled => q.device = value,
                    (QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE | 0x24 | 0x2c | 0x34, 4)
                        if !q.enabled =>
                    {
                        let (field, high) = match o {
                            QUEUE_DESC => (&mut q.desc, false),
                            0x24 => (&mut q.desc, true),
                            QUEUE_DRIVER => (&mut q.driver, false),
                            0x2c => (&mut q.driver, true),
                            QUEUE_DEVICE => (&mut q.device, false),
                            _ => (&mut q.device, true),
                        };
                        *field = if high {
                            (*field & 0xffff_ffff) | value << 32
                        } else {
                            (*field & !0xffff_ffff) | value
                        };
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Action::None
    }

    fn valid_vector(&self, vector: u16) -> u16 {
        if vector < self.msix_vectors {
            vector
        } else {
            NO_VECTOR
        }
    }

    /// The status state machine: 0 resets; otherwise FEATURES_OK sticks only if the
    /// driver's features are acceptable, and DRIVER_OK after FEATURES_OK activates. Bits
    /// are only ever added (a driver must not clear one, virtio 1.x §2.1.2): a driver that
    /// clears DRIVER_OK and sets it again does not get its device activated a second time,
    /// which would start its queues over and replay requests already completed.
    fn write_status(&mut self, new: u8) -> Action {
        if new == 0 {
            return Action::Reset;
        }
        let old = self.status;
        let mut new = new | old;
        if new & STATUS_FEATURES_OK != 0
            && old & STATUS_FEATURES_OK == 0
            && !self.features_acceptable()
        {
            new &= !STATUS_FEATURES_OK;
        }
        self.status = new;
        let activating = new & STATUS_DRIVER_OK != 0
            && old & STATUS_DRIVER_OK == 0
            && new & STATUS_FEATURES_OK != 0
            && new & STATUS_FAILED == 0;
        if activating {
            Action::Activate
        } else {
            Action::None
        }
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features == 0 && self.driver_features & VERSION_1 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{STATUS_ACKNOWLEDGE, STATUS_DRIVER};

    fn w(c: &mut CommonConfig, offset: u64, value: u64, len: usize) -> Action {
        c.write(offset, &value.to_le_bytes()[..len])
    }

    fn r(c: &CommonConfig, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        c.read(offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn negotiate(c: &mut CommonConfig, features: u64) {
        w(
            c,
            DEVICE_STATUS,
            u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER),
            1,
        );
        w(c, DRIVER_FEATURE_SELECT, 0, 4);
        w(c, DRIVER_FEATURE, features & 0xffff_ffff, 4);
        w(c, DRIVER_FEATURE_SELECT, 1, 4);
        w(c, DRIVER_FEATURE, features >> 32, 4);
        w(
            c,
            DEVICE_STATUS,
            u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
            1,
        );
    }

    #[test]
    fn features_are_offered_in_two_halves() {
        let mut c = CommonConfig::new(VERSION_1 | 0x3, &[256], 2);
        assert_eq!(r(&c, DEVICE_FEATURE, 4), 0x3);
        w(&mut c, DEVICE_FEATURE_SELECT, 1, 4);
        assert_eq!(r(&c, DEVICE_FEATURE, 4), 1);
        w(&mut c, DEVICE_FEATURE_SELECT, 7, 4);
        assert_eq!(r(&c, DEVICE_FEATURE, 4), 0);
        assert_eq!(r(&c, NUM_QUEUES, 2), 1);
    }

    #[test]
    fn features_ok_needs_version_1_and_no_unknown_bits() {
        let mut c = CommonConfig::new(VERSION_1 | 0x1, &[256], 2);
        negotiate(&mut c, 0x1);
        assert_eq!(c.status() & STATUS_FEATURES_OK, 0, "legacy driver refused");
        assert_eq!(w(&mut c, DEVICE_STATUS, 0, 1), Action::Reset);
        c.reset();
        negotiate(&mut c, VERSION_1 | 0x2);
        assert_eq!(
            c.status() & STATUS_FEATURES_OK,
            0,
            "unoffered feature refused"
        );
        c.reset();
        negotiate(&mut c, VERSION_1 | 0x1);
        assert_ne!(c.status() & STATUS_FEATURES_OK, 0);
        assert_eq!(c.driver_features(), VERSION_1 | 0x1);
        // Features are frozen once FEATURES_OK is set.
        w(&mut c, DRIVER_FEATURE_SELECT, 0, 4);
        w(&mut c, DRIVER_FEATURE, 0, 4);
        assert_eq!(c.driver_features(), VERSION_1 | 0x1);
    }

    #[test]
    fn queue_setup_and_activation() {
        let mut c = CommonConfig::new(VERSION_1, &[256, 128], 3);
        negotiate(&mut c, VERSION_1);
        w(&mut c, QUEUE_SELECT, 1, 2);
        assert_eq!(r(&c, QUEUE_SIZE, 2), 128);
        assert_eq!(r(&c, QUEUE_NOTIFY_OFF, 2), 1);
        w(&mut c, QUEUE_SIZE, 64, 2);
        w(&mut c, QUEUE_MSIX_VECTOR, 2, 2);
        w(&mut c, QUEUE_DESC, 0x1000, 4);
        w(&mut c, QUEUE_DESC + 4, 0x1, 4);
        w(&mut c, QUEUE_DRIVER, 0x2000, 8);
        w(&mut c, QUEUE_DEVICE, 0x3000, 8);
        w(&mut c, QUEUE_ENABLE, 1, 2);
        w(&mut c, QUEUE_DESC, 0x5000, 4); // ignored: the queue is enabled
        let q = &c.queues()[1];
        assert_eq!((q.size, q.vector, q.enabled), (64, 2, true));
        assert_eq!(
            (q.desc, q.driver, q.device),
            (0x1_0000_1000, 0x2000, 0x3000)
        );
        assert_eq!(r(&c, QUEUE_DESC + 4, 4), 1);
        // A vector the device does not have reads back as NO_VECTOR.
        w(&mut c, CONFIG_MSIX_VECTOR, 3, 2);
        assert_eq!(r(&c, CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        w(&mut c, CONFIG_MSIX_VECTOR, 0, 2);
        assert_eq!(c.config_vector(), 0);
        let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        assert_eq!(w(&mut c, DEVICE_STATUS, u64::from(ok), 1), Action::Activate);
        assert_eq!(w(&mut c, DEVICE_STATUS, u64::from(ok), 1), Action::None);
        // Queue registers are frozen after DRIVER_OK.
        w(&mut c, QUEUE_SELECT, 0, 2);
        w(&mut c, QUEUE_SIZE, 16, 2);
        assert_eq!(c.queues()[0].size, 256);
        // A queue that does not exist reads as size 0.
        w(&mut c, QUEUE_SELECT, 9, 2);
        assert_eq!(r(&c, QUEUE_SIZE, 2), 0);
    }

    #[test]
    fn driver_ok_without_features_ok_does_not_activate() {
        let mut c = CommonConfig::new(VERSION_1, &[256], 2);
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK;
        assert_eq!(w(&mut c, DEVICE_STATUS, u64::from(status), 1), Action::None);
        c.set_needs_reset();
        assert_ne!(r(&c, DEVICE_STATUS, 1) as u8 & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn driver_ok_again_or_cleared_and_set_activates_nothing() {
        let mut c = CommonConfig::new(VERSION_1, &[256], 2);
        negotiate(&mut c, VERSION_1);
        let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        assert_eq!(w(&mut c, DEVICE_STATUS, u64::from(ok), 1), Action::Activate);
        assert_eq!(w(&mut c, DEVICE_STATUS, u64::from(ok), 1), Action::None);
        let cleared = ok & !STATUS_DRIVER_OK;
        assert_eq!(
            w(&mut c, DEVICE_STATUS, u64::from(cleared), 1),
            Action::None
        );
        assert_eq!(c.status(), ok, "a driver cannot clear a status bit");
        assert_eq!(w(&mut c, DEVICE_STATUS, u64::from(ok), 1), Action::None);
        // A reset starts over.
        assert_eq!(w(&mut c, DEVICE_STATUS, 0, 1), Action::Reset);
        c.reset();
        negotiate(&mut c, VERSION_1);
        assert_eq!(w(&mut c, DEVICE_STATUS, u64::from(ok), 1), Action::Activate);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let mut c = CommonConfig::new(VERSION_1, &[256], 2);
        for offset in 0..0x40 {
            for len in [1, 2, 3, 4, 8] {
                let _ = w(&mut c, offset, u64::MAX, len);
                let _ = r(&c, offset, len);
            }
        }
    }
}
