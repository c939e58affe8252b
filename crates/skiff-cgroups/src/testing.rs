//! Fake cgroup trees in a temporary directory for unit tests: the directories and interface
//! files the kernel would create, with its default contents.

use std::path::{Path, PathBuf};

use crate::cgroup::Cgroup;
use crate::hierarchy::{Hierarchy, LegacyMounts};

/// What v1 shows for "no limit" (PAGE_COUNTER_MAX pages of 4 KiB).
pub(crate) const V1_UNLIMITED_TEXT: &str = "9223372036854771712";

pub(crate) struct FakeTree {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub hierarchy: Hierarchy,
}

/// cpu, cpuacct and (if `memory`) memory trees mounted separately, as on this project's
/// development machines.
pub(crate) fn fake_v1(memory: bool) -> FakeTree {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_path_buf();
    let mount = |name: &str| {
        let path = root.join(name);
        std::fs::create_dir_all(&path).expect("mount dir");
        Some(path)
    };
    let hierarchy = Hierarchy::Legacy(LegacyMounts {
        cpu: mount("cpu"),
        cpuacct: mount("cpuacct"),
        memory: if memory { mount("memory") } else { None },
    });
    FakeTree {
        _dir: dir,
        root,
        hierarchy,
    }
}

/// A unified tree whose root offers `controllers`.
pub(crate) fn fake_v2(controllers: &str) -> FakeTree {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("unified");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::write(root.join("cgroup.controllers"), controllers).expect("controllers");
    // The parent Skiff creates, as the kernel would fill it.
    for dir in [root.clone(), root.join("skiff")] {
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("cgroup.subtree_control"), "").expect("subtree_control");
    }
    let hierarchy = Hierarchy::Unified {
        root: root.clone(),
        controllers: controllers.split_whitespace().map(str::to_string).collect(),
    };
    FakeTree {
        _dir: dir,
        root,
        hierarchy,
    }
}

impl FakeTree {
    /// `skiff/NAME`, created through the library, then filled as the kernel would.
    pub fn group(&self, name: &str) -> Cgroup {
        let group = Cgroup::create(&self.hierarchy, "skiff", name).expect("create");
        match &self.hierarchy {
            Hierarchy::Unified { .. } => fill(
                &self.v2_dir(name),
                &[
                    ("cgroup.procs", ""),
                    ("cpu.weight", "100"),
                    ("cpu.max", "max 100000"),
                    ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
                    ("memory.max", "max"),
                    ("memory.high", "max"),
                    ("memory.swap.max", "max"),
                    ("memory.current", "0"),
                    ("memory.stat", "anon 0\nfile 0\n"),
                ],
            ),
            Hierarchy::Legacy(m) => {
                fill(
                    &self.v1_dir("cpu", name),
                    &[
                        ("cgroup.procs", ""),
                        ("cpu.shares", "1024"),
                        ("cpu.cfs_quota_us", "-1"),
                        ("cpu.cfs_period_us", "100000"),
                        (
                            "cpu.stat",
                            "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
                        ),
                    ],
                );
                fill(
                    &self.v1_dir("cpuacct", name),
                    &[("cgroup.procs", ""), ("cpuacct.usage", "0")],
                );
                if m.memory.is_some() {
                    fill(
                        &self.v1_dir("memory", name),
                        &[
                            ("cgroup.procs", ""),
                            ("memory.limit_in_bytes", V1_UNLIMITED_TEXT),
                            ("memory.memsw.limit_in_bytes", V1_UNLIMITED_TEXT),
                            ("memory.usage_in_bytes", "0"),
                            ("memory.stat", "cache 0\nrss 0\n"),
                        ],
                    );
                }
            }
        }
        group
    }

    pub fn v1_dir(&self, tree: &str, name: &str) -> PathBuf {
        self.root.join(tree).join("skiff").join(name)
    }

    pub fn v2_dir(&self, name: &str) -> PathBuf {
        self.root.join("skiff").join(name)
    }
}

fn fill(dir: &Path, files: &[(&str, &str)]) {
    for (name, content) in files {
        std::fs::write(dir.join(name), content).expect("interface file");
    }
}

/// An interface file's content, without the trailing newline.
pub(crate) fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .expect("interface file")
        .trim_end()
        .to_string()
}
