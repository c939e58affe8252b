//! What the root bus needs from a device function.

use crate::ConfigSpace;

/// A PCI function on bus 0. The standard header, BARs and capabilities live in its
/// [`ConfigSpace`]; the device answers accesses to its BARs.
pub trait PciDevice: Send {
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// An access at `offset` inside BAR `bar`, which is mapped and decoded.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// BAR `bar` is now decoded at `new` instead of `old` (`None`: not decoded, because
    /// memory decoding is off or the address is outside the window, e.g. while sizing).
    fn bar_moved(&mut self, _bar: usize, _old: Option<u64>, _new: Option<u64>) {}
}
