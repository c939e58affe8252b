//! Which cgroup layout the host uses: v2 (unified), v1 (a tree per controller), or hybrid
//! (v1 controllers beside a cgroup2 mount that holds none of them, as systemd's hybrid mode
//! and this project's development machines have). Skiff uses one version for all its
//! controllers: v2 when the unified tree offers `cpu`, v1 otherwise.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{CgroupError, Result};
use crate::files;
use crate::mountinfo::{cgroup_mounts, CgroupMount};

/// Where a distribution without systemd-like setup mounts the unified hierarchy.
pub const DEFAULT_MOUNT_POINT: &str = "/sys/fs/cgroup";
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The cgroup layout Skiff puts its groups in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2: one tree at `root`, which offers `controllers` (its cgroup.controllers).
    Unified {
        root: PathBuf,
        controllers: Vec<String>,
    },
    /// cgroup v1: the mount point of each controller's tree (co-mounted controllers, e.g.
    /// `cpu,cpuacct`, share one).
    Legacy(LegacyMounts),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LegacyMounts {
    pub cpu: Option<PathBuf>,
    pub cpuacct: Option<PathBuf>,
    pub memory: Option<PathBuf>,
}

impl LegacyMounts {
    /// Each distinct directory once (co-mounted controllers share a directory).
    pub(crate) fn distinct(&self) -> Vec<&Path> {
        let mut dirs: Vec<&Path> = Vec::new();
        for dir in [&self.cpu, &self.cpuacct, &self.memory]
            .into_iter()
            .flatten()
        {
            if !dirs.contains(&dir.as_path()) {
                dirs.push(dir);
            }
        }
        dirs
    }
}

impl Hierarchy {
    /// Reads this process's mount table.
    pub fn detect() -> Result<Hierarchy> {
        let mountinfo = files::read(Path::new(MOUNTINFO))?;
        Hierarchy::from_mountinfo(&mountinfo)
    }

    /// Like [`Hierarchy::detect`], but when no cgroup file system is mounted at all (a bare
    /// init, as in a minimal initramfs), mounts cgroup2 at /sys/fs/cgroup first, as a
    /// distribution's init would.
    pub fn detect_or_mount() -> Result<Hierarchy> {
        let mountinfo = files::read(Path::new(MOUNTINFO))?;
        if cgroup_mounts(&mountinfo).is_empty() {
            mount_unified(Path::new(DEFAULT_MOUNT_POINT))?;
            return Hierarchy::detect();
        }
        Hierarchy::from_mountinfo(&mountinfo)
    }

    /// Chooses the layout from mountinfo text; reads each cgroup2 mount's cgroup.controllers.
    pub fn from_mountinfo(mountinfo: &str) -> Result<Hierarchy> {
        let mounts = cgroup_mounts(mountinfo);
        let mut unified_without_cpu = None;
        for mount in &mounts {
            if let CgroupMount::Unified { path } = mount {
                let controllers = read_controllers(path)?;
                let unified = Hierarchy::Unified {
                    root: path.clone(),
                    controllers,
                };
                if unified.has_controller("cpu") {
                    return Ok(unified);
                }
                unified_without_cpu.get_or_insert(unified);
            }
        }
        let mut legacy = LegacyMounts::default();
        for mount in &mounts {
            if let CgroupMount::Legacy { path, controllers } = mount {
                for controller in controllers {
                    let slot = match controller.as_str() {
                        "cpu" => &mut legacy.cpu,
                        "cpuacct" => &mut legacy.cpuacct,
                        "memory" => &mut legacy.memory,
                        _ => continue,
                    };
                    slot.get_or_insert_with(|| path.clone());
                }
            }
        }
        if legacy.cpu.is_some() {
            return Ok(Hierarchy::Legacy(legacy));
        }
        unified_without_cpu.ok_or_else(|| CgroupError::NoController {
            controller: "cpu",
            hierarchy: "no cgroup or cgroup2 file system is mounted".into(),
        })
    }

    /// "v1" or "v2".
    pub fn version(&self) -> &'static str {
        match self {
            Hierarchy::Unified { .. } => "v2",
            Hierarchy::Legacy(_) => "v1",
        }
    }

    pub(crate) fn has_controller(&self, name: &str) -> bool {
        match self {
            Hierarchy::Unified { controllers, .. } => controllers.iter().any(|c| c == name),
            Hierarchy::Legacy(m) => match name {
                "cpu" => m.cpu.is_some(),
                "cpuacct" => m.cpuacct.is_some(),
                "memory" => m.memory.is_some(),
                _ => false,
            },
        }
    }
}

impl fmt::Display for Hierarchy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hierarchy::Unified { root, controllers } => write!(
                f,
                "cgroup v2 at {} (controllers: {})",
                root.display(),
                controllers.join(" ")
            ),
            Hierarchy::Legacy(m) => {
                let show = |p: &Option<PathBuf>| {
                    p.as_ref()
                        .map_or("not mounted".to_string(), |p| p.display().to_string())
                };
                write!(
                    f,
                    "cgroup v1 (cpu: {}, cpuacct: {}, memory: {})",
                    show(&m.cpu),
                    show(&m.cpuacct),
                    show(&m.memory)
                )
            }
        }
    }
}

fn read_controllers(root: &Path) -> Result<Vec<String>> {
    let text = files::read(&root.join("cgroup.controllers"))?;
    Ok(text.split_whitespace().map(str::to_string).collect())
}

/// Mounts the unified hierarchy at `path` (created if missing), with the options systemd
/// uses (nosuid, nodev, noexec).
pub fn mount_unified(path: &Path) -> Result<()> {
    let err = |source| CgroupError::Mount {
        fstype: "cgroup2",
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| err(std::io::ErrorKind::InvalidInput.into()))?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME;
    // SAFETY: all strings are NUL-terminated and outlive the call; the data pointer may be
    // null for cgroup2.
    let rc = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mountinfo(lines: &[(&Path, &str, &str)]) -> String {
        lines
            .iter()
            .enumerate()
            .map(|(i, (path, fstype, opts))| {
                format!(
                    "{} 1 0:{i} / {} rw,relatime - {fstype} {fstype} {opts}\n",
                    30 + i,
                    path.display()
                )
            })
            .collect()
    }

    fn unified_root(dir: &Path, controllers: &str) -> PathBuf {
        let root = dir.join("unified");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("cgroup.controllers"), controllers).unwrap();
        root
    }

    #[test]
    fn hybrid_with_empty_unified_tree_is_v1() {
        let dir = tempfile::tempdir().unwrap();
        let unified = unified_root(dir.path(), "\n");
        let cpu = dir.path().join("cpu");
        let acct = dir.path().join("cpuacct");
        let mem = dir.path().join("memory");
        let text = mountinfo(&[
            (&cpu, "cgroup", "rw,cpu"),
            (&acct, "cgroup", "rw,cpuacct"),
            (&mem, "cgroup", "rw,memory"),
            (&unified, "cgroup2", "rw"),
        ]);
        let h = Hierarchy::from_mountinfo(&text).unwrap();
        assert_eq!(
            h,
            Hierarchy::Legacy(LegacyMounts {
                cpu: Some(cpu.clone()),
                cpuacct: Some(acct),
                memory: Some(mem)
            })
        );
        assert_eq!(h.version(), "v1");
        assert!(h.to_string().contains(&cpu.display().to_string()), "{h}");
    }

    #[test]
    fn unified_with_cpu_wins() {
        let dir = tempfile::tempdir().unwrap();
        let unified = unified_root(dir.path(), "cpuset cpu io memory pids\n");
        let text = mountinfo(&[(&unified, "cgroup2", "rw,nsdelegate")]);
        let h = Hierarchy::from_mountinfo(&text).unwrap();
        assert_eq!(h.version(), "v2");
        assert!(h.has_controller("memory") && !h.has_controller("cpuacct"));
    }

    #[test]
    fn comounted_cpu_cpuacct_share_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let both = dir.path().join("cpu,cpuacct");
        let text = mountinfo(&[(&both, "cgroup", "rw,cpu,cpuacct")]);
        let Hierarchy::Legacy(m) = Hierarchy::from_mountinfo(&text).unwrap() else {
            panic!("expected v1");
        };
        assert_eq!(m.cpu, m.cpuacct);
        assert_eq!(m.memory, None);
        assert_eq!(m.distinct(), vec![both.as_path()]);
    }

    #[test]
    fn nothing_mounted_is_an_error_that_says_so() {
        let err = Hierarchy::from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n").unwrap_err();
        assert!(err.to_string().contains("no cgroup"), "{err}");
    }
}
