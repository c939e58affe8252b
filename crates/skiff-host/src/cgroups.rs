//! Each VM's control group, skiff/NAME. The VMM joins it itself (`skiff run --cgroup NAME`
//! applies the spec's cpu shares and quota before any VMM thread starts), so a restarted
//! daemon finds its VMs' groups as they were; the daemon only removes a group with its VM.

use std::time::Duration;

use skiff_cgroups::{Cgroup, CgroupError, Hierarchy};

/// The VMM has ended (and been reaped) when a VM is deleted: its group empties at once.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Removes the group of a deleted VM; a failure is logged, never fatal to the delete.
pub fn remove(name: &str) {
    let result = Hierarchy::detect()
        .and_then(|h| Cgroup::open(&h, skiff_cgroups::VM_PARENT, name))
        .and_then(|group| group.remove(REMOVE_TIMEOUT));
    match result {
        Ok(()) | Err(CgroupError::Missing { .. }) => {}
        Err(e) => log::warn!("{name}: cannot remove its cgroup: {e}"),
    }
}
