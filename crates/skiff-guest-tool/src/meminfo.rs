//! `/proc/meminfo` and `/sys/devices/system/cpu/online` parsing.

use crate::error::{Error, Result};

/// Fields always printed: (meminfo name, output key).
pub const REQUIRED: &[(&str, &str)] = &[
    ("MemTotal", "mem_total_kib"),
    ("MemFree", "mem_free_kib"),
    ("MemAvailable", "mem_available_kib"),
    ("Cached", "cached_kib"),
];

/// Fields printed when the kernel reports them.
pub const OPTIONAL: &[(&str, &str)] = &[
    ("Buffers", "buffers_kib"),
    ("AnonPages", "anon_pages_kib"),
    ("SwapTotal", "swap_total_kib"),
    ("SwapFree", "swap_free_kib"),
];

/// Value in KiB of one `/proc/meminfo` field, if present.
pub fn field(text: &str, name: &str) -> Result<Option<u64>> {
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        if key.trim() != name {
            continue;
        }
        let mut parts = rest.split_whitespace();
        let value = parts
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Error::runtime(format!("/proc/meminfo: malformed line '{line}'")))?;
        return match parts.next() {
            None | Some("kB") => Ok(Some(value)),
            Some(unit) => Err(Error::runtime(format!(
                "/proc/meminfo: unexpected unit '{unit}' for {name}"
            ))),
        };
    }
    Ok(None)
}

/// The `key=value` pairs printed by `meminfo`, in order.
pub fn report(text: &str) -> Result<Vec<(&'static str, u64)>> {
    let mut out = Vec::new();
    for (name, key) in REQUIRED {
        let v = field(text, name)?
            .ok_or_else(|| Error::runtime(format!("/proc/meminfo: no {name} field")))?;
        out.push((*key, v));
    }
    for (name, key) in OPTIONAL {
        if let Some(v) = field(text, name)? {
            out.push((*key, v));
        }
    }
    Ok(out)
}

/// Count the CPUs in a kernel CPU list such as `0-3,5,7-8`.
pub fn count_cpu_list(text: &str) -> Result<u32> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    let bad = || Error::runtime(format!("malformed CPU list '{text}'"));
    let mut n: u32 = 0;
    for part in text.split(',') {
        let part = part.trim();
        let count = match part.split_once('-') {
            Some((a, b)) => {
                let a: u32 = a.parse().map_err(|_| bad())?;
                let b: u32 = b.parse().map_err(|_| bad())?;
                if b < a {
                    return Err(bad());
                }
                b - a + 1
            }
            None => {
                part.parse::<u32>().map_err(|_| bad())?;
                1
            }
        };
        n = n.checked_add(count).ok_or_else(bad)?;
    }
    Ok(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
MemTotal:         493540 kB
MemFree:          402112 kB
MemAvailable:     430004 kB
Buffers:            1024 kB
Cached:            30720 kB
SwapCached:            0 kB
Active:            12000 kB
AnonPages:          8888 kB
SwapTotal:             0 kB
SwapFree:              0 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    #[test]
    fn parses_sample() {
        let r = report(SAMPLE).unwrap();
        assert_eq!(
            r,
            vec![
                ("mem_total_kib", 493540),
                ("mem_free_kib", 402112),
                ("mem_available_kib", 430004),
                ("cached_kib", 30720),
                ("buffers_kib", 1024),
                ("anon_pages_kib", 8888),
                ("swap_total_kib", 0),
                ("swap_free_kib", 0),
            ]
        );
        // "Cached" must not match "SwapCached".
        assert_eq!(field(SAMPLE, "Cached").unwrap(), Some(30720));
        assert_eq!(field(SAMPLE, "HugePages_Total").unwrap(), Some(0));
        assert_eq!(field(SAMPLE, "Nope").unwrap(), None);
    }

    #[test]
    fn missing_or_malformed() {
        let e = report("MemTotal: 1 kB\n").unwrap_err();
        assert!(e.to_string().contains("no MemFree"));
        assert!(field("MemTotal: x kB\n", "MemTotal").is_err());
        assert!(field("MemTotal: 5 MB\n", "MemTotal").is_err());
        let minimal = "MemTotal: 4 kB\nMemFree: 3 kB\nMemAvailable: 2 kB\nCached: 1 kB\n";
        assert_eq!(report(minimal).unwrap().len(), 4);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0\n").unwrap(), 1);
        assert_eq!(count_cpu_list("0-3\n").unwrap(), 4);
        assert_eq!(count_cpu_list("0-3,5,7-8").unwrap(), 7);
        assert_eq!(count_cpu_list("").unwrap(), 0);
        assert!(count_cpu_list("3-1").is_err());
        assert!(count_cpu_list("a").is_err());
        assert!(count_cpu_list("0-").is_err());
    }
}
