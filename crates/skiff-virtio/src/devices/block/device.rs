//! The block device: features, configuration, state and queue handling. With an
//! [`IoPool`], requests run on its threads, up to its depth at once, and the worker
//! returns them to the driver as they finish; without one (tests, fuzzing) each runs at
//! once on the worker.

use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_queue::{Queue, QueueT};

use super::pool::{Completion, IoPool};
use super::request::{parse, run};
use super::{
    execute, BlockConfig, Disk, RequestContext, DEVICE_TYPE, ID_BYTES, MAX_CHAIN, QUEUE_SIZE,
    SECTOR_SIZE,
};
use crate::chain::Chain;
use crate::device::{ActivateError, Activation, DeviceState, VirtioDevice};
use crate::features::{has, COMMON};
use crate::memory::SharedMemory;
use crate::queue::{check_avail_index, pop_chain, QueueError};

#[derive(Clone, Debug, Default)]
pub struct BlockOptions {
    pub read_only: bool,
    /// The serial number GET_ID returns (at most 20 bytes are used).
    pub id: String,
}

pub struct Block {
    name: String,
    disk: Arc<dyn Disk>,
    options: BlockOptions,
    id: [u8; ID_BYTES],
    config: BlockConfig,
    state: DeviceState,
    write_through: bool,
    queue_sizes: [u16; 1],
    pool: Option<IoPool>,
    /// Requests handed to the pool and not yet returned to the driver.
    in_flight: usize,
}

impl Block {
    pub fn new(disk: Arc<dyn Disk>, options: BlockOptions) -> Self {
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
            config: BlockConfig::new(disk.len() / SECTOR_SIZE, &disk.geometry()),
            disk,
            options,
            id,
            state: DeviceState::Inactive,
            write_through: true,
            queue_sizes: [QUEUE_SIZE],
            pool: None,
            in_flight: 0,
        }
    }

    /// Runs requests on `pool`'s threads, up to its depth at once.
    pub fn with_pool(mut self, pool: IoPool) -> Self {
        self.pool = Some(pool);
        self
    }

    fn context(&self) -> RequestContext {
        RequestContext {
            disk: self.disk.clone(),
            read_only: self.options.read_only,
            id: self.id,
            write_through: self.write_through,
        }
    }

    /// Returns finished requests to the driver, then takes new ones if there is room.
    fn complete(&mut self) {
        let Some(pool) = &self.pool else {
            return;
        };
        let done = pool.take_done();
        self.in_flight = self.in_flight.saturating_sub(done.len());
        if done.is_empty() {
            return;
        }
        let DeviceState::Active(active) = &mut self.state else {
            // Reset or broken meanwhile: nobody waits for these.
            return;
        };
        let interrupt = active.interrupt.clone();
        let result = match active.queues.get_mut(0) {
            Some(queue) => return_used(queue, &active.mem, &done),
            None => Ok(false),
        };
        match result {
            Ok(true) => interrupt.signal_queue(0),
            Ok(false) => {}
            Err(e) => self.state.queue_failed(&self.name, 0, e),
        }
    }

    /// Hands every available request to the pool while fewer than its depth run.
    fn submit(&mut self) {
        let ctx = self.context();
        let (Some(pool), DeviceState::Active(active)) = (&self.pool, &mut self.state) else {
            return;
        };
        let mem = active.mem.clone();
        let Some(queue) = active.queues.get_mut(0) else {
            return;
        };
        if let Err(e) = submit_available(queue, &mem, pool, &mut self.in_flight, &ctx) {
            self.state.queue_failed(&self.name, 0, e);
        }
    }
}

/// Puts `done` on the used ring; whether the driver wants an interrupt.
fn return_used(
    queue: &mut Queue,
    mem: &SharedMemory,
    done: &[Completion],
) -> Result<bool, QueueError> {
    let mem = mem.memory();
    for c in done {
        queue.add_used(mem, c.head, c.len)?;
    }
    Ok(queue.needs_notification(mem)?)
}

/// Takes available chains while fewer than the pool's depth run. Notifications stay off
/// while the pool is full: the next completion comes back here.
fn submit_available(
    queue: &mut Queue,
    shared: &SharedMemory,
    pool: &IoPool,
    in_flight: &mut usize,
    ctx: &RequestContext,
) -> Result<(), QueueError> {
    let mem = shared.memory();
    if !queue.ready() {
        return Ok(());
    }
    loop {
        queue.disable_notification(mem)?;
        check_avail_index(queue, mem)?;
        while *in_flight < pool.depth() {
            let Some(desc_chain) = pop_chain(queue, mem)? else {
                break;
            };
            let chain = Chain::parse(desc_chain, mem, MAX_CHAIN)?;
            let request = parse(mem, &chain)?;
            let (shared, ctx) = (shared.clone(), ctx.clone());
            pool.submit(Box::new(move || Completion {
                head: chain.head,
                len: run(shared.memory(), &chain, &request, &ctx),
            }));
            *in_flight += 1;
        }
        if *in_flight >= pool.depth() || !queue.enable_notification(mem)? {
            return Ok(());
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
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_TOPOLOGY;
        let geometry = self.disk.geometry();
        if self.options.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            if geometry.discard_granularity.is_some() {
                f |= 1 << VIRTIO_BLK_F_DISCARD;
            }
            if geometry.write_zeroes {
                f |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
            }
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
        if let Some(pool) = &self.pool {
            // Requests still running write guest memory the driver now owns again.
            pool.wait_idle();
            pool.take_done();
        }
        self.in_flight = 0;
        // Whatever the driver wrote before resetting stays written; make it durable too.
        if let Err(e) = self.disk.flush() {
            log::warn!("{}: flush on reset failed: {e}", self.name);
        }
    }

    fn state(&self) -> &DeviceState {
        &self.state
    }

    fn process_queue(&mut self, index: usize) {
        if self.pool.is_some() {
            self.submit();
            return;
        }
        let ctx = self.context();
        self.state
            .process_queue(&self.name, index, MAX_CHAIN, |mem, chain| {
                execute(mem, chain, &ctx)
            });
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        self.pool.iter().map(IoPool::ready_fd).collect()
    }

    fn process_backend(&mut self, _index: usize) {
        self.complete();
        self.submit();
    }
}
