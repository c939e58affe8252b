//! Guest RAM as KVM memory slots, and KVM's dirty log on them with manual protection
//! (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with KVM_DIRTY_LOG_INITIALLY_SET): turning logging on
//! write-protects nothing and marks every page dirty; KVM_CLEAR_DIRTY_LOG then clears and
//! write-protects exactly the pages asked for, and KVM_GET_DIRTY_LOG reads the bits without
//! touching them. So only the sampled pages ever fault, once, when the guest writes them.
//!
//! The other cost of logging is that KVM maps a slot with logging on only with 4 KiB pages
//! in the nested page tables (no 2 MiB mappings); docs/memory.md has the measured slowdown.

use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_clear_dirty_log__bindgen_ty_1, kvm_enable_cap,
    kvm_userspace_memory_region, KVMIO, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    KVM_DIRTY_LOG_INITIALLY_SET, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::VmFd;
use skiff_pci::msix::lock;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iowr_nr;

use super::{GuestRam, PAGE_SIZE};

ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);

const MANUAL_PROTECT: u32 = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET;

#[derive(Debug, thiserror::Error)]
pub enum DirtyLogError {
    #[error("cannot register guest memory with KVM: {0}")]
    Register(kvm_ioctls::Error),
    #[error("this KVM cannot log dirty pages with manual protection (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with KVM_DIRTY_LOG_INITIALLY_SET)")]
    Unsupported,
    #[error("cannot enable manual dirty log protection: {0}")]
    EnableCap(kvm_ioctls::Error),
    #[error("dirty logging is off")]
    Off,
    #[error("KVM_CLEAR_DIRTY_LOG on slot {slot}: {source}")]
    Clear { slot: u32, source: std::io::Error },
    #[error("KVM_GET_DIRTY_LOG on slot {slot}: {source}")]
    Get {
        slot: u32,
        source: kvm_ioctls::Error,
    },
}

/// One KVM memory slot: a RAM region.
#[derive(Clone, Copy, Debug)]
struct Slot {
    id: u32,
    guest_addr: u64,
    host_addr: u64,
    /// The slot's first RAM page and its length in pages.
    first_page: u64,
    pages: u64,
}

/// Guest RAM's KVM memory slots, with or without dirty logging.
pub struct GuestSlots {
    vm_fd: Arc<VmFd>,
    slots: Vec<Slot>,
    /// Manual protection is enabled, so logging can be turned on.
    manual_protect: bool,
    /// Serialises flag changes with clear/get: KVM refuses them on a slot without logging.
    logging: Mutex<bool>,
    // The host memory KVM maps must outlive the slots.
    _ram: GuestRam,
}

impl GuestSlots {
    /// Registers every RAM region as a memory slot. With `logging`, enables manual dirty log
    /// protection first and logs from the start; a KVM without it gets plain slots and
    /// [`GuestSlots::can_log`] says false.
    pub fn register(
        vm_fd: Arc<VmFd>,
        ram: &GuestRam,
        logging: bool,
    ) -> Result<Self, DirtyLogError> {
        let manual_protect = enable_manual_protect(&vm_fd)?;
        let slots = ram
            .regions()
            .iter()
            .enumerate()
            .map(|(id, r)| Slot {
                id: id as u32,
                guest_addr: r.guest_addr,
                host_addr: ram.host_addr(r),
                first_page: r.host_offset / PAGE_SIZE,
                pages: r.len / PAGE_SIZE,
            })
            .collect();
        let slots = GuestSlots {
            vm_fd,
            slots,
            manual_protect,
            logging: Mutex::new(false),
            _ram: ram.clone(),
        };
        slots.set_flags(logging && manual_protect)?;
        *lock(&slots.logging) = logging && manual_protect;
        Ok(slots)
    }

    /// Whether this KVM can log dirty pages the way sampling needs.
    pub fn can_log(&self) -> bool {
        self.manual_protect
    }

    pub fn logging(&self) -> bool {
        *lock(&self.logging)
    }

    /// Turns dirty logging on or off for all of guest RAM.
    pub fn set_logging(&self, on: bool) -> Result<(), DirtyLogError> {
        if on && !self.manual_protect {
            return Err(DirtyLogError::Unsupported);
        }
        let mut logging = lock(&self.logging);
        if *logging != on {
            self.set_flags(on)?;
            *logging = on;
        }
        Ok(())
    }

    fn set_flags(&self, logging: bool) -> Result<(), DirtyLogError> {
        for slot in &self.slots {
            let region = kvm_userspace_memory_region {
                slot: slot.id,
                flags: if logging { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
                guest_phys_addr: slot.guest_addr,
                memory_size: slot.pages * PAGE_SIZE,
                userspace_addr: slot.host_addr,
            };
            // SAFETY: the host range belongs to `_ram`, which this struct keeps mapped; the
            // VM keeps this struct (or the process ends) while the guest can run.
            unsafe { self.vm_fd.set_user_memory_region(region) }
                .map_err(DirtyLogError::Register)?;
        }
        Ok(())
    }

    /// Clears the dirty bits of RAM pages `pages` and write-protects them, so that the
    /// guest's next write to each sets its bit again.
    pub fn protect(&self, pages: &[u64]) -> Result<(), DirtyLogError> {
        let logging = lock(&self.logging);
        if !*logging {
            return Err(DirtyLogError::Off);
        }
        for slot in &self.slots {
            let mut bitmap = vec![0u64; slot.pages.div_ceil(64) as usize];
            let mut any = false;
            for page in pages.iter().filter_map(|&p| slot.index(p)) {
                bitmap[(page / 64) as usize] |= 1 << (page % 64);
                any = true;
            }
            if any {
                self.clear(slot, &mut bitmap)?;
            }
        }
        Ok(())
    }

    fn clear(&self, slot: &Slot, bitmap: &mut [u64]) -> Result<(), DirtyLogError> {
        let num_pages = u32::try_from(slot.pages).map_err(|_| DirtyLogError::Clear {
            slot: slot.id,
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        let request = kvm_clear_dirty_log {
            slot: slot.id,
            // The whole slot at once: KVM only acts on the set bits of the bitmap.
            num_pages,
            first_page: 0,
            __bindgen_anon_1: kvm_clear_dirty_log__bindgen_ty_1 {
                dirty_bitmap: bitmap.as_mut_ptr().cast(),
            },
        };
        // SAFETY: a VM fd and a request whose bitmap holds one bit per page of the slot
        // (rounded up to 64); KVM only reads the bitmap during the call.
        let rc = unsafe { ioctl_with_ref(self.vm_fd.as_ref(), KVM_CLEAR_DIRTY_LOG(), &request) };
        if rc != 0 {
            return Err(DirtyLogError::Clear {
                slot: slot.id,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// For each of RAM pages `pages`: whether its dirty bit is set (written since it was
    /// last protected, or never protected).
    pub fn written(&self, pages: &[u64]) -> Result<Vec<bool>, DirtyLogError> {
        let logging = lock(&self.logging);
        if !*logging {
            return Err(DirtyLogError::Off);
        }
        let mut written = vec![false; pages.len()];
        for slot in &self.slots {
            if !pages.iter().any(|&p| slot.index(p).is_some()) {
                continue;
            }
            let bitmap = self
                .vm_fd
                .get_dirty_log(slot.id, (slot.pages * PAGE_SIZE) as usize)
                .map_err(|source| DirtyLogError::Get {
                    slot: slot.id,
                    source,
                })?;
            for (i, &page) in pages.iter().enumerate() {
                if let Some(index) = slot.index(page) {
                    written[i] |= bit(&bitmap, index);
                }
            }
        }
        Ok(written)
    }
}

impl Slot {
    /// The page's index inside this slot, if it is in it.
    fn index(&self, page: u64) -> Option<u64> {
        (page >= self.first_page && page < self.first_page + self.pages)
            .then(|| page - self.first_page)
    }
}

fn bit(bitmap: &[u64], index: u64) -> bool {
    bitmap
        .get((index / 64) as usize)
        .is_some_and(|word| word & (1 << (index % 64)) != 0)
}

/// Turns on manual protection with all bits initially set, if this KVM has it.
fn enable_manual_protect(vm_fd: &VmFd) -> Result<bool, DirtyLogError> {
    let supported = vm_fd.check_extension_raw(u64::from(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2));
    if supported < 0 || (supported as u32) & MANUAL_PROTECT != MANUAL_PROTECT {
        return Ok(false);
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        ..Default::default()
    };
    cap.args[0] = u64::from(MANUAL_PROTECT);
    vm_fd.enable_cap(&cap).map_err(DirtyLogError::EnableCap)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_map_to_their_slot() {
        let low = Slot {
            id: 0,
            guest_addr: 0,
            host_addr: 0,
            first_page: 0,
            pages: 100,
        };
        let high = Slot {
            id: 1,
            guest_addr: 1 << 32,
            host_addr: 0,
            first_page: 100,
            pages: 28,
        };
        assert_eq!(low.index(99), Some(99));
        assert_eq!(low.index(100), None);
        assert_eq!(high.index(100), Some(0));
        assert_eq!(high.index(128), None);
    }

    #[test]
    fn bits_are_read_across_words() {
        let bitmap = [1u64 << 63, 0b10];
        assert!(bit(&bitmap, 63));
        assert!(bit(&bitmap, 65));
        assert!(!bit(&bitmap, 64));
        assert!(!bit(&bitmap, 1000), "out of range is clean");
    }
}

/// The ioctls themselves, against this machine's KVM (no vCPU runs: only the bitmaps and the
/// slot flags are exercised). Skipped where there is no usable /dev/kvm or no manual
/// protection; the e2e tests (memory.rs) cover guest writes.
#[cfg(test)]
mod kvm_tests {
    use super::*;
    use crate::memory::RamOptions;

    fn vm_with_ram() -> Option<(Arc<VmFd>, GuestRam)> {
        let kvm = kvm_ioctls::Kvm::new().ok()?;
        let vm = Arc::new(kvm.create_vm().ok()?);
        let ram = GuestRam::new(4 << 20, RamOptions { mergeable: false }).ok()?;
        Some((vm, ram))
    }

    #[test]
    fn clear_protects_only_the_pages_asked_for() {
        let Some((vm, ram)) = vm_with_ram() else {
            eprintln!("skipped: no usable /dev/kvm");
            return;
        };
        let slots = GuestSlots::register(vm, &ram, true).expect("register");
        if !slots.can_log() {
            eprintln!("skipped: this KVM has no manual dirty log protection");
            return;
        }
        assert!(slots.logging());
        // Initially set: every page counts as written until protected.
        let pages = [0, 5, 63, 64, 1023];
        assert_eq!(slots.written(&pages).expect("get"), vec![true; 5]);
        slots.protect(&[5, 64]).expect("clear");
        assert_eq!(
            slots.written(&pages).expect("get"),
            vec![true, false, true, false, true]
        );
        // Off and on again: a fresh, all-set log.
        slots.set_logging(false).expect("off");
        assert!(matches!(slots.written(&pages), Err(DirtyLogError::Off)));
        assert!(matches!(slots.protect(&pages), Err(DirtyLogError::Off)));
        slots.set_logging(true).expect("on");
        assert_eq!(slots.written(&pages).expect("get"), vec![true; 5]);
    }
}
