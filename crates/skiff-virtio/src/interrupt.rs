//! How a device tells the driver that it used buffers or changed its configuration.

pub trait VirtioInterrupt: Send + Sync {
    /// Queue `queue` has new used buffers.
    fn signal_queue(&self, queue: usize);
    /// The device configuration or status changed (e.g. DEVICE_NEEDS_RESET).
    fn signal_config(&self);
}
