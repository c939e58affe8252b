//! Reading and writing cgroup interface files: one value per file, or `key value` lines.
//! Every error names the file and, for writes, the value.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::error::{CgroupError, Result};

pub(crate) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the value in one write(2): the kernel parses each write on its own.
/// The file must exist (the kernel creates interface files; creating one would hide a typo or
/// a missing controller).
pub(crate) fn write(path: &Path, value: &str) -> Result<()> {
    let err = |source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    file.write_all(value.as_bytes()).map_err(err)
}

pub(crate) fn parse_error(path: &Path, content: &str, reason: &'static str) -> CgroupError {
    CgroupError::Parse {
        path: path.to_path_buf(),
        content: content.trim().chars().take(200).collect(),
        reason,
    }
}

pub(crate) fn read_u64(path: &Path) -> Result<u64> {
    let text = read(path)?;
    text.trim()
        .parse()
        .map_err(|_| parse_error(path, &text, "expected an unsigned number"))
}

/// `key value` lines (cpu.stat, memory.stat, cgroup.events).
pub(crate) fn read_keyed(path: &Path) -> Result<BTreeMap<String, u64>> {
    let text = read(path)?;
    let mut map = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value), None) = (words.next(), words.next(), words.next()) else {
            return Err(parse_error(path, line, "expected `key value` lines"));
        };
        let value = value
            .parse()
            .map_err(|_| parse_error(path, line, "expected an unsigned number"))?;
        map.insert(key.to_string(), value);
    }
    Ok(map)
}

pub(crate) fn keyed_value(
    path: &Path,
    map: &BTreeMap<String, u64>,
    key: &'static str,
) -> Result<u64> {
    map.get(key)
        .copied()
        .ok_or_else(|| CgroupError::MissingKey {
            path: path.to_path_buf(),
            key,
        })
}

/// cgroup.procs / tasks: one id a line.
pub(crate) fn read_ids(path: &Path) -> Result<Vec<u32>> {
    let text = read(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse()
                .map_err(|_| parse_error(path, l, "expected one process id a line"))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keyed_lines_parse_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cpu.stat");
        std::fs::write(&path, "usage_usec 1500\nnr_periods 3\n").unwrap();
        let map = read_keyed(&path).unwrap();
        assert_eq!(keyed_value(&path, &map, "usage_usec").unwrap(), 1500);
        let missing = keyed_value(&path, &map, "throttled_usec").unwrap_err();
        assert!(missing.to_string().contains("cpu.stat"), "{missing}");
        assert!(missing.to_string().contains("throttled_usec"), "{missing}");

        std::fs::write(&path, "usage_usec lots\n").unwrap();
        let bad = read_keyed(&path).unwrap_err().to_string();
        assert!(
            bad.contains("cpu.stat") && bad.contains("usage_usec lots"),
            "{bad}"
        );
    }

    #[test]
    fn write_replaces_the_value_and_needs_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cpu.shares");
        std::fs::write(&path, "1024\n").unwrap();
        write(&path, "2").unwrap();
        assert_eq!(read_u64(&path).unwrap(), 2);
        let absent = dir.path().join("cpu.weight");
        let err = write(&absent, "100").unwrap_err().to_string();
        assert!(err.contains("cpu.weight") && err.contains("`100`"), "{err}");
        assert!(!absent.exists(), "a missing interface file is not created");
    }

    #[test]
    fn ids_one_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cgroup.procs");
        std::fs::write(&path, "12\n345\n").unwrap();
        assert_eq!(read_ids(&path).unwrap(), vec![12, 345]);
        std::fs::write(&path, "").unwrap();
        assert!(read_ids(&path).unwrap().is_empty());
        std::fs::write(&path, "12\nx\n").unwrap();
        assert!(read_ids(&path).is_err());
    }
}
