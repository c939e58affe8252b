//! One control group (a VM's): created or re-opened by name, processes moved in, removed
//! once empty. The same directory name under each tree the group needs (v1), or one
//! directory (v2).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{CgroupError, Result};
use crate::files;
use crate::hierarchy::{Hierarchy, LegacyMounts};

/// The controllers Skiff enables for its groups in the unified tree, when offered.
const UNIFIED_CONTROLLERS: &[&str] = &["cpu", "memory"];
const POLL: Duration = Duration::from_millis(10);

/// A control group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// Below each tree's root, e.g. `skiff/web-1`.
    path: PathBuf,
    dirs: Dirs,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dirs {
    Unified {
        dir: PathBuf,
        controllers: Vec<String>,
    },
    Legacy(LegacyMounts),
}

impl Cgroup {
    /// Creates `parent/name` (and `parent`) if missing, or opens it as it is: a daemon that
    /// restarts re-adopts its VMs' groups with the same call. `parent` may have several
    /// components (`skiff` or `machine.slice/skiff`).
    pub fn create(hierarchy: &Hierarchy, parent: &str, name: &str) -> Result<Cgroup> {
        let path = relative_path(parent, name)?;
        let group = Cgroup::at(hierarchy, path);
        if let Hierarchy::Unified { root, controllers } = hierarchy {
            enable_controllers(root, Path::new(parent), controllers)?;
        }
        for dir in group.distinct_dirs() {
            create_dir(dir)?;
        }
        Ok(group)
    }

    /// Opens `parent/name`, which must exist (in every tree it needs, for v1).
    pub fn open(hierarchy: &Hierarchy, parent: &str, name: &str) -> Result<Cgroup> {
        let group = Cgroup::at(hierarchy, relative_path(parent, name)?);
        if let Some(dir) = group.distinct_dirs().into_iter().find(|d| !d.is_dir()) {
            return Err(CgroupError::Missing {
                path: dir.to_path_buf(),
            });
        }
        Ok(group)
    }

    fn at(hierarchy: &Hierarchy, path: PathBuf) -> Cgroup {
        let dirs = match hierarchy {
            Hierarchy::Unified { root, controllers } => Dirs::Unified {
                dir: root.join(&path),
                controllers: controllers.clone(),
            },
            Hierarchy::Legacy(m) => Dirs::Legacy(LegacyMounts {
                cpu: m.cpu.as_ref().map(|p| p.join(&path)),
                cpuacct: m.cpuacct.as_ref().map(|p| p.join(&path)),
                memory: m.memory.as_ref().map(|p| p.join(&path)),
            }),
        };
        Cgroup { path, dirs }
    }

    /// The group's path below the tree root(s), e.g. `skiff/web-1`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// "v1" or "v2".
    pub fn version(&self) -> &'static str {
        match self.dirs {
            Dirs::Unified { .. } => "v2",
            Dirs::Legacy(_) => "v1",
        }
    }

    /// The group's directories, each once (one for v2; one per mounted tree for v1).
    pub fn distinct_dirs(&self) -> Vec<&Path> {
        match &self.dirs {
            Dirs::Unified { dir, .. } => vec![dir],
            Dirs::Legacy(dirs) => dirs.distinct(),
        }
    }

    /// The directory holding `controller`'s files for this group.
    pub(crate) fn controller_dir(&self, controller: &'static str) -> Result<&Path> {
        let missing = || CgroupError::NoController {
            controller,
            hierarchy: self.describe(),
        };
        match &self.dirs {
            // cpu.stat's usage lines exist in every v2 group, with or without `cpu`.
            Dirs::Unified { dir, .. } if controller == "cpuacct" => Ok(dir),
            Dirs::Unified { dir, controllers } => controllers
                .iter()
                .any(|c| c == controller)
                .then_some(dir.as_path())
                .ok_or_else(missing),
            Dirs::Legacy(dirs) => match controller {
                "cpu" => dirs.cpu.as_deref(),
                "cpuacct" => dirs.cpuacct.as_deref(),
                "memory" => dirs.memory.as_deref(),
                _ => None,
            }
            .ok_or_else(missing),
        }
    }

    pub(crate) fn is_unified(&self) -> bool {
        matches!(self.dirs, Dirs::Unified { .. })
    }

    fn describe(&self) -> String {
        let dirs: Vec<String> = self
            .distinct_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        format!("cgroup {} group {}", self.version(), dirs.join(", "))
    }

    /// The processes in the group (in any of its trees, for v1). Kernel threads count: KVM's
    /// workers (kvm-nx-lpage-recovery, kvm-pit) join the group of the process that created
    /// the VM, so their CPU time is the VM's.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let mut pids = Vec::new();
        for dir in self.distinct_dirs() {
            for pid in files::read_ids(&dir.join("cgroup.procs"))? {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        Ok(pids)
    }

    /// Moves process `pid` with all its threads into the group (in every tree, for v1).
    /// Writing a pid to cgroup.procs moves the whole thread group in both versions; the
    /// threads it starts later are born in the group.
    pub fn add_process(&self, pid: u32) -> Result<()> {
        for dir in self.distinct_dirs() {
            files::write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Makes `cmd`'s child join the group between fork and exec, so the program runs in its
    /// group from its first instruction (no window where its threads run unlimited).
    pub fn attach_on_spawn(&self, cmd: &mut Command) -> Result<()> {
        let mut procs = Vec::new();
        for dir in self.distinct_dirs() {
            let path = dir.join("cgroup.procs");
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|source| CgroupError::Write {
                    path: path.clone(),
                    value: "0".into(),
                    source,
                })?;
            procs.push(file);
        }
        // SAFETY: the closure runs in the child between fork and exec, and only calls
        // write(2), which is async-signal-safe, on descriptors it owns; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for file in &procs {
                    // "0" means the writing process (with its thread group).
                    join_self(std::os::fd::AsRawFd::as_raw_fd(file))?;
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Waits until no process is left in the group, then removes its directories. The
    /// caller must have ended and reaped the processes (a zombie still counts).
    pub fn remove(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        for dir in self.distinct_dirs() {
            loop {
                let pids = files::read_ids(&dir.join("cgroup.procs"))?;
                let result = if pids.is_empty() {
                    std::fs::remove_dir(dir)
                } else {
                    Err(std::io::ErrorKind::ResourceBusy.into())
                };
                match result {
                    Ok(()) => break,
                    // Exiting tasks can keep a v1 group busy a moment after cgroup.procs empties.
                    Err(e) if is_busy(&e) && start.elapsed() < timeout => std::thread::sleep(POLL),
                    Err(e) if is_busy(&e) => {
                        return Err(CgroupError::NotEmpty {
                            path: dir.to_path_buf(),
                            pids,
                            waited: start.elapsed(),
                        })
                    }
                    Err(source) => {
                        return Err(CgroupError::Remove {
                            path: dir.to_path_buf(),
                            source,
                        })
                    }
                }
            }
        }
        Ok(())
    }
}

fn is_busy(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::ResourceBusy || e.raw_os_error() == Some(libc::EBUSY)
}

/// Async-signal-safe: one write(2) of "0" (the calling process) to a cgroup.procs file.
fn join_self(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: writes one byte from a static buffer to a descriptor the caller owns.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `parent/name`, each component checked: a name must never climb out of its tree.
fn relative_path(parent: &str, name: &str) -> Result<PathBuf> {
    let mut path = PathBuf::new();
    for part in parent.split('/').chain([name]) {
        check_component(part, parent, name)?;
        path.push(part);
    }
    Ok(path)
}

fn check_component(part: &str, parent: &str, name: &str) -> Result<()> {
    let invalid = |reason| CgroupError::InvalidName {
        name: format!("{parent}/{name}"),
        reason,
    };
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if part.is_empty() || part.len() > 64 {
        return Err(invalid("each component must be 1 to 64 characters"));
    }
    if part.starts_with('.') || !part.chars().all(ok_char) {
        return Err(invalid(
            "only letters, digits, '-', '_' and '.' are allowed, not a leading '.'",
        ));
    }
    Ok(())
}

/// Fails on an interface file of the parent with the same name (a VM called `cpu.max`).
fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| CgroupError::Create {
        path: dir.to_path_buf(),
        source,
    })
}

/// v2 delegates a controller to a group only if every ancestor lists it in
/// cgroup.subtree_control: enable Skiff's controllers from the root down to `parent`.
fn enable_controllers(root: &Path, parent: &Path, offered: &[String]) -> Result<()> {
    let wanted: Vec<&str> = UNIFIED_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| offered.iter().any(|o| o == c))
        .collect();
    let mut dir = root.to_path_buf();
    let mut components = parent.components();
    loop {
        let control = dir.join("cgroup.subtree_control");
        let enabled = files::read(&control)?;
        let missing: Vec<String> = wanted
            .iter()
            .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if !missing.is_empty() {
            files::write(&control, &missing.join(" "))?;
        }
        match components.next() {
            Some(next) => {
                dir.push(next);
                create_dir(&dir)?;
            }
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{fake_v1, fake_v2};

    #[test]
    fn names_cannot_escape_the_tree() {
        for (parent, name) in [
            ("skiff", ".."),
            ("skiff", "a/b"),
            ("..", "vm"),
            ("skiff", ""),
            ("", "vm"),
            ("skiff", ".hidden"),
            ("skiff", "sp ace"),
        ] {
            let err = relative_path(parent, name).unwrap_err();
            assert!(
                matches!(err, CgroupError::InvalidName { .. }),
                "{parent}/{name}"
            );
        }
        assert_eq!(
            relative_path("machine.slice/skiff", "web-1").unwrap(),
            PathBuf::from("machine.slice/skiff/web-1")
        );
    }

    #[test]
    fn v1_creates_the_group_in_each_tree_once() {
        let fake = fake_v1(true);
        let group = Cgroup::create(&fake.hierarchy, "skiff", "vm1").unwrap();
        assert_eq!(group.version(), "v1");
        let dirs = group.distinct_dirs();
        assert_eq!(dirs.len(), 3, "cpu, cpuacct and memory trees: {dirs:?}");
        for dir in &dirs {
            assert!(dir.is_dir() && dir.ends_with("skiff/vm1"), "{dir:?}");
        }
        // Idempotent: a second create and an open find the same group.
        assert_eq!(
            Cgroup::create(&fake.hierarchy, "skiff", "vm1").unwrap(),
            group
        );
        assert_eq!(
            Cgroup::open(&fake.hierarchy, "skiff", "vm1").unwrap(),
            group
        );
        let absent = Cgroup::open(&fake.hierarchy, "skiff", "vm2").unwrap_err();
        assert!(matches!(absent, CgroupError::Missing { .. }), "{absent}");
    }

    #[test]
    fn comounted_trees_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let both = dir.path().join("cpu,cpuacct");
        let h = Hierarchy::Legacy(LegacyMounts {
            cpu: Some(both.clone()),
            cpuacct: Some(both.clone()),
            memory: None,
        });
        let group = Cgroup::create(&h, "skiff", "vm1").unwrap();
        assert_eq!(
            group.distinct_dirs(),
            vec![both.join("skiff/vm1").as_path()]
        );
        std::fs::write(both.join("skiff/vm1/cgroup.procs"), "").unwrap();
        group.add_process(42).unwrap();
        assert_eq!(group.pids().unwrap(), vec![42]);
        let err = group.controller_dir("memory").unwrap_err();
        assert!(matches!(
            err,
            CgroupError::NoController {
                controller: "memory",
                ..
            }
        ));
    }

    #[test]
    fn v2_enables_controllers_down_to_the_parent() {
        let fake = fake_v2("cpuset cpu io memory pids");
        let group = Cgroup::create(&fake.hierarchy, "skiff", "vm1").unwrap();
        assert_eq!(group.version(), "v2");
        let root_control = fake.root.join("cgroup.subtree_control");
        assert_eq!(
            std::fs::read_to_string(&root_control).unwrap(),
            "+cpu +memory"
        );
        std::fs::write(&root_control, "cpu memory").unwrap();
        Cgroup::create(&fake.hierarchy, "skiff", "vm2").unwrap();
        assert_eq!(
            std::fs::read_to_string(&root_control).unwrap(),
            "cpu memory"
        );
        assert_eq!(
            std::fs::read_to_string(fake.root.join("skiff/cgroup.subtree_control")).unwrap(),
            "+cpu +memory"
        );
        assert!(fake.root.join("skiff/vm2").is_dir());
    }

    #[test]
    fn v2_without_memory_controller_says_so() {
        let fake = fake_v2("cpu pids");
        let group = Cgroup::create(&fake.hierarchy, "skiff", "vm1").unwrap();
        assert_eq!(
            std::fs::read_to_string(fake.root.join("cgroup.subtree_control")).unwrap(),
            "+cpu"
        );
        let err = group.controller_dir("memory").unwrap_err().to_string();
        assert!(err.contains("memory") && err.contains("skiff/vm1"), "{err}");
    }

    #[test]
    fn remove_waits_then_names_the_remaining_processes() {
        let fake = fake_v2("cpu memory");
        let group = Cgroup::create(&fake.hierarchy, "skiff", "vm1").unwrap();
        let procs = fake.root.join("skiff/vm1/cgroup.procs");
        std::fs::write(&procs, "77\n").unwrap();
        let err = group.remove(Duration::from_millis(30)).unwrap_err();
        match err {
            CgroupError::NotEmpty { pids, waited, .. } => {
                assert_eq!(pids, vec![77]);
                assert!(waited >= Duration::from_millis(30));
            }
            other => panic!("expected NotEmpty, got {other}"),
        }
    }

    #[test]
    fn a_name_clashing_with_an_interface_file_is_refused() {
        let fake = fake_v2("cpu memory");
        Cgroup::create(&fake.hierarchy, "skiff", "vm1").unwrap();
        std::fs::write(fake.root.join("skiff/cpu.weight"), "100").unwrap();
        let err = Cgroup::create(&fake.hierarchy, "skiff", "cpu.weight").unwrap_err();
        assert!(matches!(err, CgroupError::Create { .. }), "{err}");
    }
}
