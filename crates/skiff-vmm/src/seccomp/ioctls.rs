//! The ioctl request numbers the VMM's threads make once the guest runs. KVM's are defined
//! here (kvm-ioctls keeps its own private); vhost's come from the vhost crate.

use std::os::raw::c_ulong;

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_dirty_log, kvm_ioeventfd, kvm_irq_routing, kvm_regs, kvm_sregs,
    kvm_userspace_memory_region,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

const KVMIO: u32 = 0xAE;

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);

/// What a vCPU asks vhost-vsock when the guest's driver starts or resets the device.
pub fn vhost_vsock_activation() -> [c_ulong; 8] {
    use vhost::vhost_kern::vhost_binding as v;
    [
        v::VHOST_SET_FEATURES(),
        v::VHOST_SET_MEM_TABLE(),
        v::VHOST_SET_VRING_NUM(),
        v::VHOST_SET_VRING_ADDR(),
        v::VHOST_SET_VRING_BASE(),
        v::VHOST_SET_VRING_CALL(),
        v::VHOST_SET_VRING_KICK(),
        v::VHOST_VSOCK_SET_RUNNING(),
    ]
}

/// virtio-blk on a block device: discard and write-zeroes (linux/fs.h: _IO(0x12, 119) and
/// _IO(0x12, 127)).
pub const BLKDISCARD: u64 = 0x1277;
pub const BLKZEROOUT: u64 = 0x127f;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_IOEVENTFD(), 0x4040_ae79);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(KVM_SET_GSI_ROUTING(), 0x4008_ae6a);
        assert_eq!(KVM_GET_DIRTY_LOG(), 0x4010_ae42);
        assert_eq!(KVM_CLEAR_DIRTY_LOG(), 0xc018_aec0);
        assert_eq!(KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
    }
}
