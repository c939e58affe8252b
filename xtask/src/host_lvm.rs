//! LVM in the emulated host: Debian's `lvm` (one binary, a symlink per command),
//! `thin_check` from thin-provisioning-tools, and an lvm.conf for a host without udev or
//! dmeventd (the e2e storage tests' thin volumes).

use anyhow::Result;

use crate::cmd;
use crate::initramfs::Initramfs;

/// Where `lvm` goes; each command below is a symlink to it (LVM picks the command from
/// its argv[0], as Debian's package installs it).
const LVM: &str = "/usr/sbin/lvm";
const COMMANDS: &[&str] = &[
    "pvcreate",
    "pvremove",
    "pvs",
    "vgcreate",
    "vgremove",
    "vgchange",
    "vgs",
    "lvcreate",
    "lvremove",
    "lvchange",
    "lvextend",
    "lvs",
    "lvdisplay",
];

/// thin_check (a symlink to pdata_tools, which also picks its tool from argv[0]):
/// activating a thin pool runs it on the pool's metadata, as on any Debian host; checking
/// stays on rather than configuring `thin_check_executable = ""`.
const PDATA_TOOLS: &str = "/usr/sbin/pdata_tools";
const THIN_CHECK: &str = "/usr/sbin/thin_check";

/// The host's /etc/lvm/lvm.conf. A file rather than `--config` on each command: every
/// LVM command there (the tests', and one typed in `cargo xtask host`) needs the same
/// settings, and a forgotten `--config` would hang waiting for udev.
/// - `udev_sync = 0`, `udev_rules = 0`: no udev runs there, so LVM must not wait for
///   udev's cookie and makes the /dev/mapper nodes and /dev/VG/LV links itself;
/// - `obtain_device_list_from_udev = 0`, `external_device_info_source = "none"`: scan
///   /dev and sysfs, with no udev database to ask;
/// - `monitoring = 0`: there is no dmeventd to watch the thin pool (a test's pool never
///   fills, and nothing would extend it);
/// - `hints = "none"`: no hint file under /run/lvm to keep current.
const LVM_CONF: &str = "\
# The emulated host's LVM settings (written by xtask/src/host_lvm.rs): no udev, no dmeventd.
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = \"none\"
    hints = \"none\"
}
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
global {
    thin_check_executable = \"/usr/sbin/thin_check\"
}
";

/// Adds LVM (with its libraries), thin_check, lvm.conf and the writable directories LVM
/// uses (/run/lvm, /run/lock/lvm, /etc/lvm/backup and archive) to `fs`.
pub fn add(fs: &mut Initramfs) -> Result<()> {
    let lvm = cmd::require("lvm", "lvm2")?;
    crate::hostfs::add_with_libraries(fs, LVM, &lvm)?;
    for command in COMMANDS {
        fs.symlink(&format!("/usr/sbin/{command}"), "lvm");
    }
    let pdata_tools = cmd::require("pdata_tools", "thin-provisioning-tools")?;
    crate::hostfs::add_with_libraries(fs, PDATA_TOOLS, &pdata_tools)?;
    fs.symlink(THIN_CHECK, "pdata_tools");
    for dir in [
        "/etc/lvm",
        "/etc/lvm/backup",
        "/etc/lvm/archive",
        "/run/lvm",
        "/run/lock",
        "/run/lock/lvm",
    ] {
        fs.dir(dir);
    }
    fs.bytes("/etc/lvm/lvm.conf", LVM_CONF, 0o644);
    Ok(())
}
