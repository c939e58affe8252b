//! The cgroup file systems in /proc/self/mountinfo (proc(5)): where each hierarchy is
//! mounted and, for cgroup v1, which controllers it carries.

use std::path::PathBuf;

/// One mounted cgroup file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CgroupMount {
    /// cgroup2: the unified hierarchy.
    Unified { path: PathBuf },
    /// cgroup (v1): a hierarchy with these controllers (`name=...` hierarchies have none).
    Legacy {
        path: PathBuf,
        controllers: Vec<String>,
    },
}

/// The cgroup mounts in mountinfo text, in mount order. Lines that are not cgroup mounts,
/// or that do not parse, are skipped: they say nothing about cgroups.
pub(crate) fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo.lines().filter_map(parse_line).collect()
}

/// `36 35 98:0 /root /mount/point rw,noatime shared:1 - cgroup cgroup rw,cpu,cpuacct`:
/// the mount point is field 5; after the `-` separator come type, source, super options.
fn parse_line(line: &str) -> Option<CgroupMount> {
    let (before, after) = line.split_once(" - ")?;
    let mount_point = before.split(' ').nth(4)?;
    let mut tail = after.split(' ');
    let fstype = tail.next()?;
    let _source = tail.next()?;
    let super_options = tail.next().unwrap_or("");
    let path = PathBuf::from(unescape(mount_point));
    match fstype {
        "cgroup2" => Some(CgroupMount::Unified { path }),
        "cgroup" => Some(CgroupMount::Legacy {
            path,
            controllers: super_options
                .split(',')
                .filter(|o| is_controller(o))
                .map(str::to_string)
                .collect(),
        }),
        _ => None,
    }
}

/// Super options of a v1 cgroup mount that are not controllers.
fn is_controller(option: &str) -> bool {
    !matches!(
        option,
        "rw" | "ro" | "noprefix" | "clone_children" | "xattr" | "cpuset_v2_mode" | "favordynmods"
    ) && !option.starts_with("name=")
        && !option.starts_with("release_agent=")
        && !option.is_empty()
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo` octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let text = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// This development machine: v1 controllers each on its own hierarchy, plus an empty
    /// cgroup2 mount (a "hybrid" layout as systemd sets it up).
    pub(crate) const HYBRID: &str = "\
24 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 30 0:35 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
40 30 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_v1_controllers_and_the_unified_mount() {
        let mounts = cgroup_mounts(HYBRID);
        assert_eq!(mounts.len(), 5);
        assert_eq!(
            mounts[0],
            CgroupMount::Legacy {
                path: "/sys/fs/cgroup/cpu".into(),
                controllers: vec!["cpu".into()]
            }
        );
        assert_eq!(
            mounts[3],
            CgroupMount::Legacy {
                path: "/sys/fs/cgroup/systemd".into(),
                controllers: vec![]
            }
        );
        assert_eq!(
            mounts[4],
            CgroupMount::Unified {
                path: "/sys/fs/cgroup/unified".into()
            }
        );
    }

    #[test]
    fn comounted_controllers_and_optional_fields() {
        let line = "33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 master:2 - cgroup cgroup rw,cpu,cpuacct\n";
        assert_eq!(
            cgroup_mounts(line),
            vec![CgroupMount::Legacy {
                path: "/sys/fs/cgroup/cpu,cpuacct".into(),
                controllers: vec!["cpu".into(), "cpuacct".into()]
            }]
        );
    }

    #[test]
    fn escaped_paths_and_garbage() {
        let text = "1 2 0:1 / /tmp/a\\040b rw - cgroup2 none rw\nnot a mountinfo line\n";
        assert_eq!(
            cgroup_mounts(text),
            vec![CgroupMount::Unified {
                path: "/tmp/a b".into()
            }]
        );
    }
}
