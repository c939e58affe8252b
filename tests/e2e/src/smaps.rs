//! A VMM's own memory: its resident set outside guest RAM, from /proc/PID/smaps.

use crate::Error;

/// Resident KiB of every mapping of the VMM started as `pid` except guest RAM. Guest RAM is
/// recognised as the mappings at least `guest_bytes` long (Skiff and QEMU both map it in
/// one piece), so this counts the VMM's code, libraries, heap, stacks and device buffers.
/// A jailed Skiff is a supervisor whose child is the VMM: the process measured is the
/// first in `pid`'s tree that maps guest RAM.
pub fn vmm_overhead_kib(pid: u32, guest_bytes: u64) -> Result<u64, Error> {
    let mut queue = vec![pid];
    let mut first = None;
    while let Some(p) = queue.pop() {
        let path = format!("/proc/{p}/smaps");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading smaps", e))?;
        if maps_guest_ram(&text, guest_bytes) {
            return Ok(overhead_from_smaps(&text, guest_bytes));
        }
        first.get_or_insert(text);
        queue.extend(children(p));
    }
    // No process maps guest RAM (yet): the started process is all there is.
    Ok(first.map_or(0, |text| overhead_from_smaps(&text, guest_bytes)))
}

fn maps_guest_ram(text: &str, guest_bytes: u64) -> bool {
    text.lines()
        .filter_map(mapping_size)
        .any(|size| size >= guest_bytes)
}

/// The children of every thread of `pid` (empty if it is gone).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn overhead_from_smaps(text: &str, guest_bytes: u64) -> u64 {
    let mut total = 0;
    let mut in_guest_ram = false;
    for line in text.lines() {
        if let Some(size) = mapping_size(line) {
            in_guest_ram = size >= guest_bytes;
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            if !in_guest_ram {
                total += rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// The length of the mapping a smaps header line (`start-end perms ...`) describes.
fn mapping_size(line: &str) -> Option<u64> {
    let range = line.split_whitespace().next()?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    end.checked_sub(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_is_left_out() {
        let smaps = "\
00400000-00500000 r-xp 00000000 08:01 1 /usr/bin/vmm
Size:               1024 kB
Rss:                 800 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:              100000 kB
7fff0000-7fff2000 rw-p 00000000 00:00 0 [stack]
Rss:                   8 kB
";
        assert_eq!(overhead_from_smaps(smaps, 256 << 20), 808);
        assert!(maps_guest_ram(smaps, 256 << 20));
        assert!(
            !maps_guest_ram(smaps, 512 << 20),
            "a jail's supervisor maps no guest RAM"
        );
    }
}
