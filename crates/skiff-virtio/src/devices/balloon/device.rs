//! The balloon device: features, configuration, state and queue handling.

use std::sync::Arc;
use std::time::Instant;

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::queues::{discard_runs, queue_roles, read_pfns, report_ranges, Role};
use super::stats::{parse_stats, GuestStats, MAX_BYTES};
use super::{
    BalloonConfig, BalloonError, Discard, DEVICE_TYPE, F_DEFLATE_ON_OOM, F_REPORTING, F_STATS_VQ,
    PAGE_SIZE, QUEUE_SIZE,
};
use crate::chain::{Chain, ChainError};
use crate::device::{ActivateError, Activation, DeviceState, VirtioDevice};
use crate::features::COMMON;
use crate::queue::{check_avail_index, drain_at_most, pop_chain, QueueError};

/// Descriptors per chain accepted (a reporting chain holds up to 32 blocks).
const MAX_CHAIN: usize = QUEUE_SIZE as usize;
/// Chains handled per call on one queue. A guest that floods a queue (deflate, say: it
/// costs the host nothing else) gets no more; the worker comes back for the rest after
/// giving the device's lock up, so the control thread's stats and balloon targets, which
/// take that lock, are never held up for long (worker.rs).
pub const BATCH: usize = 64;
const NAME: &str = "virtio-balloon";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalloonOptions {
    /// Offer the stats queue (the VMM then asks for stats at its interval).
    pub stats: bool,
    /// Offer free page reporting.
    pub free_page_reporting: bool,
    /// Let the guest deflate on its own when it runs out of memory.
    pub deflate_on_oom: bool,
}

impl Default for BalloonOptions {
    fn default() -> Self {
        BalloonOptions {
            stats: true,
            free_page_reporting: true,
            deflate_on_oom: true,
        }
    }
}

/// What the VMM reports about the balloon.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BalloonInfo {
    pub target_bytes: u64,
    pub actual_bytes: u64,
    /// Bytes returned to the host by inflation and by free page reporting, since boot.
    pub inflated_bytes: u64,
    pub reported_bytes: u64,
    pub guest: Option<GuestStats>,
    /// When the guest last sent statistics.
    pub stats_updated: Option<Instant>,
}

pub struct Balloon {
    options: BalloonOptions,
    config: BalloonConfig,
    memory_bytes: u64,
    discard: Arc<dyn Discard>,
    state: DeviceState,
    /// The role of each queue index, fixed when the driver activates the device.
    roles: Vec<Role>,
    /// The stats buffer the driver gave us, held until we want new statistics.
    stats_head: Option<u16>,
    info: BalloonInfo,
    queue_sizes: Vec<u16>,
    /// Queues left with chains at the end of their batch.
    unfinished: Vec<usize>,
}

impl Balloon {
    /// A balloon for a guest with `memory_bytes` of RAM, returning pages through `discard`.
    pub fn new(options: BalloonOptions, memory_bytes: u64, discard: Arc<dyn Discard>) -> Self {
        let queues = queue_roles(Self::offered(options)).len();
        Balloon {
            options,
            config: BalloonConfig::default(),
            memory_bytes,
            discard,
            state: DeviceState::Inactive,
            roles: Vec::new(),
            stats_head: None,
            info: BalloonInfo::default(),
            queue_sizes: vec![QUEUE_SIZE; queues],
            unfinished: Vec::new(),
        }
    }

    fn offered(options: BalloonOptions) -> u64 {
        let mut f = COMMON;
        if options.stats {
            f |= 1 << F_STATS_VQ;
        }
        if options.deflate_on_oom {
            f |= 1 << F_DEFLATE_ON_OOM;
        }
        if options.free_page_reporting {
            f |= 1 << F_REPORTING;
        }
        f
    }

    /// Sets the balloon's size (memory taken from the guest) and tells the driver.
    pub fn set_target(&mut self, bytes: u64) -> Result<(), BalloonError> {
        if bytes > self.memory_bytes {
            return Err(BalloonError::TargetTooLarge {
                target_mib: bytes >> 20,
                memory_mib: self.memory_bytes >> 20,
            });
        }
        // memory_bytes fits the guest's RAM, so its 4 KiB page count fits u32 up to 16 TiB.
        let pages = u32::try_from(bytes / PAGE_SIZE).unwrap_or(u32::MAX);
        self.config.set_num_pages(pages);
        if let DeviceState::Active(active) = &self.state {
            active.interrupt.signal_config();
        }
        Ok(())
    }

    pub fn info(&self) -> BalloonInfo {
        BalloonInfo {
            target_bytes: u64::from(self.config.num_pages()) * PAGE_SIZE,
            actual_bytes: u64::from(self.config.actual()) * PAGE_SIZE,
            ..self.info.clone()
        }
    }

    /// Asks the guest for fresh statistics by returning the buffer it left with us; the
    /// driver refills and re-queues it. Does nothing if no buffer is held.
    pub fn request_stats(&mut self) {
        let Some(index) = self.roles.iter().position(|r| *r == Role::Stats) else {
            return;
        };
        let DeviceState::Active(active) = &mut self.state else {
            return;
        };
        let Some(head) = self.stats_head.take() else {
            return;
        };
        let Some(queue) = active.queues.get_mut(index) else {
            return;
        };
        let mem = active.mem.memory();
        let result = queue
            .add_used(mem, head, 0)
            .and_then(|()| queue.needs_notification(mem));
        match result {
            Ok(true) => active.interrupt.signal_queue(index),
            Ok(false) => {}
            Err(e) => self.fail(index, QueueError::Ring(e)),
        }
    }

    /// The stats queue: keep the buffer (it is how we ask next time), read the figures.
    fn process_stats(&mut self, index: usize) {
        let DeviceState::Active(active) = &mut self.state else {
            return;
        };
        let Some(queue) = active.queues.get_mut(index) else {
            return;
        };
        if !queue.ready() {
            return;
        }
        let mem = active.mem.memory();
        let mut held = self.stats_head;
        let mut latest = None;
        let mut signal = false;
        let mut handled = 0;
        let mut more = false;
        let result = (|| -> Result<(), QueueError> {
            loop {
                queue.disable_notification(mem)?;
                check_avail_index(queue, mem)?;
                while let Some(desc_chain) = pop_chain(queue, mem)? {
                    let chain = Chain::parse(desc_chain, mem, MAX_CHAIN)?;
                    latest = Some(read_stats(mem, &chain)?);
                    // A driver only has one stats buffer; if it sent another, give the
                    // older one back.
                    if let Some(old) = held.replace(chain.head) {
                        queue.add_used(mem, old, 0)?;
                        signal = true;
                    }
                    handled += 1;
                    if handled == BATCH {
                        // A driver has one stats buffer: this is a flood. The rest later.
                        more = true;
                        return Ok(());
                    }
                }
                if !queue.enable_notification(mem)? {
                    return Ok(());
                }
            }
        })();
        self.stats_head = held;
        if more {
            mark_unfinished(&mut self.unfinished, index);
        }
        if let Some(stats) = latest {
            self.info.guest = Some(stats);
            self.info.stats_updated = Some(Instant::now());
        }
        match result {
            Ok(()) if signal => active.interrupt.signal_queue(index),
            Ok(()) => {}
            Err(e) => self.fail(index, e),
        }
    }

    /// At most [`BATCH`] chains of queue `index`, each handed to `handle`.
    fn drain_batch<F>(&mut self, index: usize, handle: F)
    where
        F: FnMut(&GuestMemoryMmap, &Chain) -> Result<u32, QueueError>,
    {
        let DeviceState::Active(active) = &mut self.state else {
            return;
        };
        let Some(queue) = active.queues.get_mut(index) else {
            return;
        };
        match drain_at_most(queue, active.mem.memory(), MAX_CHAIN, BATCH, handle) {
            Ok(drained) => {
                if drained.notify {
                    active.interrupt.signal_queue(index);
                }
                if drained.more {
                    mark_unfinished(&mut self.unfinished, index);
                }
            }
            Err(e) => self.fail(index, e),
        }
    }

    fn fail(&mut self, index: usize, e: QueueError) {
        log::error!("{NAME}: queue {index}: {e}; device needs a reset");
        if let DeviceState::Active(active) = &self.state {
            let interrupt = active.interrupt.clone();
            self.state = DeviceState::NeedsReset;
            interrupt.signal_config();
        }
        self.stats_head = None;
    }
}

fn mark_unfinished(unfinished: &mut Vec<usize>, index: usize) {
    if !unfinished.contains(&index) {
        unfinished.push(index);
    }
}

fn read_stats(mem: &GuestMemoryMmap, chain: &Chain) -> Result<GuestStats, ChainError> {
    let mut bytes = vec![0u8; chain.readable_len().min(MAX_BYTES as u64) as usize];
    let mut done = 0;
    for b in &chain.readable {
        let n = (b.len as usize).min(bytes.len() - done);
        mem.read_slice(&mut bytes[done..done + n], b.addr)
            .map_err(|_| ChainError::Memory { head: chain.head })?;
        done += n;
    }
    Ok(parse_stats(&bytes))
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn name(&self) -> &str {
        NAME
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        Self::offered(self.options)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.roles = queue_roles(activation.features);
        self.stats_head = None;
        self.unfinished.clear();
        self.state = DeviceState::Active(activation);
        Ok(())
    }

    fn reset(&mut self) {
        self.state = DeviceState::Inactive;
        self.roles.clear();
        self.stats_head = None;
        self.unfinished.clear();
        self.config.reset_actual();
    }

    fn state(&self) -> &DeviceState {
        &self.state
    }

    fn process_queue(&mut self, index: usize) {
        let Some(role) = self.roles.get(index).copied() else {
            return;
        };
        let discard = self.discard.clone();
        let mut inflated = 0;
        let mut reported = 0;
        match role {
            Role::Inflate => self.drain_batch(index, |mem, chain| {
                let mut pfns = read_pfns(mem, chain)?;
                inflated += discard_runs(mem, &mut pfns, discard.as_ref(), "inflate");
                Ok(0)
            }),
            // Nothing to do: a deflated page comes back (zeroed) when the guest touches it.
            Role::Deflate => self.drain_batch(index, |mem, chain| {
                read_pfns(mem, chain)?;
                Ok(0)
            }),
            Role::Stats => self.process_stats(index),
            Role::Reporting => self.drain_batch(index, |_, chain| {
                reported += report_ranges(chain, discard.as_ref());
                Ok(0)
            }),
            // Not offered; a driver cannot have negotiated it.
            Role::FreePageHint => {}
        }
        self.info.inflated_bytes += inflated;
        self.info.reported_bytes += reported;
    }

    fn unfinished_queues(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.unfinished)
    }
}
