//! Booting Debian's kernel with Skiff.

use skiff_e2e::{GuestSpec, Vmm};

#[test]
fn boot_bzimage_1_vcpu() {
    let out = GuestSpec::new(Vmm::Skiff).cmd("nproc").run_ok();
    assert_eq!(out.command_output().trim(), "1", "{out}");
    assert!(out.init_ready.is_some(), "{out}");
    eprintln!("skiff, bzImage: init ready after {:?}", out.init_ready);
}
