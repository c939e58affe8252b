//! Memory controls: a hard limit, a throttling threshold (v2), a swap limit, and usage.
//!
//! | | v1 | v2 |
//! |---|---|---|
//! | hard limit | `memory.limit_in_bytes` | `memory.max` |
//! | throttle above | (none) | `memory.high` |
//! | swap | `memory.memsw.limit_in_bytes` (memory + swap) | `memory.swap.max` (swap alone) |
//! | usage | `memory.usage_in_bytes` | `memory.current` |
//! | breakdown | `memory.stat` (`rss`, `cache`, ...) | `memory.stat` (`anon`, `file`, ...) |

use std::collections::BTreeMap;
use std::path::Path;

use crate::cgroup::Cgroup;
use crate::error::{CgroupError, Result};
use crate::files;

/// v1 reports "no limit" as the largest page-aligned counter (PAGE_COUNTER_MAX pages):
/// anything this large is unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

/// A group's memory.stat: byte counts (and event counters) by the kernel's names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryStat {
    unified: bool,
    values: BTreeMap<String, u64>,
}

impl MemoryStat {
    /// Any line of memory.stat by its name in this cgroup version.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.values.get(key).copied()
    }

    /// Anonymous memory (a VM's guest RAM is anonymous): v2 `anon`, v1 `rss`.
    pub fn anon(&self) -> Option<u64> {
        self.get(if self.unified { "anon" } else { "rss" })
    }

    /// Page cache charged to the group (disk images read without O_DIRECT): v2 `file`, v1 `cache`.
    pub fn file(&self) -> Option<u64> {
        self.get(if self.unified { "file" } else { "cache" })
    }
}

impl Cgroup {
    /// The hard limit: above it the kernel reclaims, then OOM-kills inside the group.
    /// `None` removes it. On v1 a swap limit already set keeps its size (memory + swap moves
    /// with the memory limit).
    pub fn set_memory_limit(&self, bytes: Option<u64>) -> Result<()> {
        let dir = self.controller_dir("memory")?;
        if self.is_unified() {
            return files::write(&dir.join("memory.max"), &limit_value(bytes, "max"));
        }
        let limit = dir.join("memory.limit_in_bytes");
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        let total = if memsw.exists() {
            read_v1_limit(&memsw)?
        } else {
            None
        };
        let Some(total) = total else {
            return files::write(&limit, &limit_value(bytes, "-1"));
        };
        // The kernel keeps memory <= memory + swap at every step: widen first, then narrow.
        let old = read_v1_limit(&limit)?.unwrap_or(total);
        let swap = total.saturating_sub(old);
        let new_total = bytes.map(|b| b.saturating_add(swap));
        if bytes.is_none_or(|b| b > old) {
            files::write(&memsw, &limit_value(new_total, "-1"))?;
            files::write(&limit, &limit_value(bytes, "-1"))
        } else {
            files::write(&limit, &limit_value(bytes, "-1"))?;
            files::write(&memsw, &limit_value(new_total, "-1"))
        }
    }

    /// The hard limit in force, if any.
    pub fn memory_limit(&self) -> Result<Option<u64>> {
        let dir = self.controller_dir("memory")?;
        if self.is_unified() {
            read_v2_limit(&dir.join("memory.max"))
        } else {
            read_v1_limit(&dir.join("memory.limit_in_bytes"))
        }
    }

    /// v2's memory.high: above it the group's tasks are throttled and reclaimed from, never
    /// OOM-killed. v1 has no such knob.
    pub fn set_memory_high(&self, bytes: Option<u64>) -> Result<()> {
        let dir = self.controller_dir("memory")?;
        if !self.is_unified() {
            return Err(CgroupError::Unsupported {
                what: "memory.high (a throttling threshold)",
                version: "v1",
            });
        }
        files::write(&dir.join("memory.high"), &limit_value(bytes, "max"))
    }

    /// How much swap the group may use; `None` for no limit. On v1 this is expressed as
    /// memory + swap, so it needs the memory limit to be set first.
    pub fn set_swap_limit(&self, bytes: Option<u64>) -> Result<()> {
        let dir = self.controller_dir("memory")?;
        if self.is_unified() {
            return files::write(&dir.join("memory.swap.max"), &limit_value(bytes, "max"));
        }
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        let Some(swap) = bytes else {
            return files::write(&memsw, "-1");
        };
        let Some(memory) = read_v1_limit(&dir.join("memory.limit_in_bytes"))? else {
            return Err(CgroupError::Unsupported {
                what: "a swap limit without a memory limit",
                version: "v1",
            });
        };
        files::write(&memsw, &memory.saturating_add(swap).to_string())
    }

    /// Memory charged to the group now (RAM and page cache, not swap).
    pub fn memory_usage(&self) -> Result<u64> {
        let dir = self.controller_dir("memory")?;
        let file = if self.is_unified() {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        files::read_u64(&dir.join(file))
    }

    pub fn memory_stat(&self) -> Result<MemoryStat> {
        let dir = self.controller_dir("memory")?;
        Ok(MemoryStat {
            unified: self.is_unified(),
            values: files::read_keyed(&dir.join("memory.stat"))?,
        })
    }
}

fn limit_value(bytes: Option<u64>, unlimited: &str) -> String {
    bytes.map_or(unlimited.to_string(), |b| b.to_string())
}

fn read_v1_limit(path: &Path) -> Result<Option<u64>> {
    let value = files::read_u64(path)?;
    Ok((value < V1_UNLIMITED).then_some(value))
}

fn read_v2_limit(path: &Path) -> Result<Option<u64>> {
    let text = files::read(path)?;
    match text.trim() {
        "max" => Ok(None),
        number => number
            .parse()
            .map(Some)
            .map_err(|_| files::parse_error(path, &text, "expected bytes or `max`")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{fake_v1, fake_v2, read, V1_UNLIMITED_TEXT};

    const MIB: u64 = 1 << 20;

    #[test]
    fn v2_files() {
        let fake = fake_v2("cpu memory");
        let group = fake.group("vm1");
        let dir = fake.v2_dir("vm1");
        group.set_memory_limit(Some(512 * MIB)).unwrap();
        assert_eq!(read(&dir, "memory.max"), (512 * MIB).to_string());
        assert_eq!(group.memory_limit().unwrap(), Some(512 * MIB));
        group.set_memory_high(Some(400 * MIB)).unwrap();
        assert_eq!(read(&dir, "memory.high"), (400 * MIB).to_string());
        group.set_swap_limit(Some(0)).unwrap();
        assert_eq!(read(&dir, "memory.swap.max"), "0");
        group.set_memory_limit(None).unwrap();
        assert_eq!(read(&dir, "memory.max"), "max");
        assert_eq!(group.memory_limit().unwrap(), None);

        std::fs::write(dir.join("memory.current"), "123456\n").unwrap();
        std::fs::write(dir.join("memory.stat"), "anon 1000\nfile 200\npgfault 7\n").unwrap();
        assert_eq!(group.memory_usage().unwrap(), 123456);
        let stat = group.memory_stat().unwrap();
        assert_eq!(
            (stat.anon(), stat.file(), stat.get("pgfault")),
            (Some(1000), Some(200), Some(7))
        );
    }

    #[test]
    fn v1_swap_follows_the_memory_limit() {
        let fake = fake_v1(true);
        let group = fake.group("vm1");
        let dir = fake.v1_dir("memory", "vm1");
        let err = group.set_swap_limit(Some(64 * MIB)).unwrap_err();
        assert!(
            matches!(err, CgroupError::Unsupported { version: "v1", .. }),
            "{err}"
        );

        group.set_memory_limit(Some(256 * MIB)).unwrap();
        assert_eq!(read(&dir, "memory.limit_in_bytes"), (256 * MIB).to_string());
        assert_eq!(read(&dir, "memory.memsw.limit_in_bytes"), V1_UNLIMITED_TEXT);
        group.set_swap_limit(Some(64 * MIB)).unwrap();
        assert_eq!(
            read(&dir, "memory.memsw.limit_in_bytes"),
            (320 * MIB).to_string()
        );

        // Lowering and raising the memory limit keep 64 MiB of swap.
        group.set_memory_limit(Some(128 * MIB)).unwrap();
        assert_eq!(read(&dir, "memory.limit_in_bytes"), (128 * MIB).to_string());
        assert_eq!(
            read(&dir, "memory.memsw.limit_in_bytes"),
            (192 * MIB).to_string()
        );
        group.set_memory_limit(Some(1024 * MIB)).unwrap();
        assert_eq!(
            read(&dir, "memory.memsw.limit_in_bytes"),
            (1088 * MIB).to_string()
        );
        assert_eq!(group.memory_limit().unwrap(), Some(1024 * MIB));

        group.set_memory_limit(None).unwrap();
        assert_eq!(read(&dir, "memory.limit_in_bytes"), "-1");
        assert_eq!(read(&dir, "memory.memsw.limit_in_bytes"), "-1");
    }

    #[test]
    fn v1_has_no_memory_high_and_reads_v1_names() {
        let fake = fake_v1(true);
        let group = fake.group("vm1");
        let err = group.set_memory_high(Some(MIB)).unwrap_err().to_string();
        assert!(err.contains("memory.high") && err.contains("v1"), "{err}");
        let dir = fake.v1_dir("memory", "vm1");
        std::fs::write(dir.join("memory.stat"), "cache 4096\nrss 8192\n").unwrap();
        let stat = group.memory_stat().unwrap();
        assert_eq!((stat.anon(), stat.file()), (Some(8192), Some(4096)));
        assert_eq!(
            group.memory_limit().unwrap(),
            None,
            "the kernel's unlimited value"
        );
    }

    #[test]
    fn v1_without_the_memory_tree_says_so() {
        let fake = fake_v1(false);
        let err = fake.group("vm1").set_memory_limit(Some(MIB)).unwrap_err();
        assert!(
            matches!(
                err,
                CgroupError::NoController {
                    controller: "memory",
                    ..
                }
            ),
            "{err}"
        );
    }
}
