//! The block device: features, configuration, state and queue handling.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};

use super::{
    execute, BlockConfig, Disk, RequestContext, DEVICE_TYPE, ID_BYTES, MAX_CHAIN, QUEUE_SIZE,
    SECTOR_SIZE,
};
use crate::device::{ActivateError, Activation, DeviceState, VirtioDevice};
use crate::features::{has, COMMON};

#[derive(Clone, Debug, Default)]
pub struct BlockOptions {
    pub read_only: bool,
    /// The serial number GET_ID returns (at most 20 bytes are used).
    pub id: String,
}

pub struct Block {
    name: String,
    disk: Box<dyn Disk>,
    options: BlockOptions,
    id: [u8; ID_BYTES],
    config: BlockConfig,
    state: DeviceState,
    write_through: bool,
    queue_sizes: [u16; 1],
}

impl Block {
    pub fn new(disk: Box<dyn Disk>, options: BlockOptions) -> Self {
        if !disk.len().is_multiple_of(SECTOR_SIZE) {
            log::warn!(
                "virtio-blk {}: image size is not a multiple of 512; the tail is not visible",
                options.id
            );
        }
        let mut id = [0u8; ID_BYTES];
        let n = options.id.len().min(ID_BYTES);
        id[..n].copy_from_slice(&options.id.as_bytes()[..n]);
        Block {
            name: format!("virtio-blk {}", options.id),
            config: BlockConfig::new(disk.len() / SECTOR_SIZE),
            disk,
            options,
            id,
            state: DeviceState::Inactive,
            write_through: true,
            queue_sizes: [QUEUE_SIZE],
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mut f = COMMON
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if self.options.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        // Without FLUSH the driver assumes a write-through cache.
        self.write_through = !has(activation.features, VIRTIO_BLK_F_FLUSH);
        self.state = DeviceState::Active(activation);
        Ok(())
    }

    fn reset(&mut self) {
        self.state = DeviceState::Inactive;
        // Whatever the driver wrote before resetting stays written; make it durable too.
        if let Err(e) = self.disk.flush() {
            log::warn!("{}: flush on reset failed: {e}", self.name);
        }
    }

    fn state(&self) -> &DeviceState {
        &self.state
    }

    fn process_queue(&mut self, index: usize) {
        let mut ctx = RequestContext {
            disk: self.disk.as_mut(),
            read_only: self.options.read_only,
            id: self.id,
            write_through: self.write_through,
        };
        self.state
            .process_queue(&self.name, index, MAX_CHAIN, |mem, chain| {
                execute(mem, chain, &mut ctx)
            });
    }
}
