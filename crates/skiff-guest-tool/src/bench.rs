//! Memory-bound workloads: random read-modify-write over a buffer (`membench`), and the same
//! over a working set that changes size step by step (`grow`).

use std::time::{Duration, Instant};

use crate::datagen::{SplitMix64, PAGE_WORDS};
use crate::error::Result;

/// Words in one 64-byte cache line.
pub const LINE_WORDS: usize = 8;
/// Bytes read and written by one operation.
pub const BYTES_PER_OP: u64 = (LINE_WORDS * 8) as u64;
/// Operations between two looks at the clock.
const BATCH: u64 = 4096;

/// One operation: pick a random page and a random line in it, read-modify-write the line.
/// Returns a value folded into the checksum so the work is observable. `words.len()` must be a
/// non-zero multiple of `PAGE_WORDS`.
#[inline]
pub fn one_op(words: &mut [u64], rng: &mut SplitMix64) -> u64 {
    let pages = (words.len() / PAGE_WORDS) as u64;
    let r = rng.next_u64();
    // High bits choose the page (multiply-shift), low 6 bits the line within it.
    let page = crate::datagen::reduce(r, pages) as usize;
    let line = (r & (PAGE_WORDS / LINE_WORDS - 1) as u64) as usize;
    let base = page * PAGE_WORDS + line * LINE_WORDS;
    let mut acc = 0u64;
    for w in &mut words[base..base + LINE_WORDS] {
        acc = acc.wrapping_add(*w);
        *w = w.wrapping_add(r | 1).rotate_left(7);
    }
    acc
}

/// Outcome of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Operations done.
    pub ops: u64,
    /// Time taken.
    pub elapsed: Duration,
    /// Fold of everything read.
    pub checksum: u64,
}

impl Outcome {
    /// MiB/s moved (each op reads and writes one 64-byte line; counted once).
    pub fn throughput_mib_s(&self) -> f64 {
        throughput_mib_s(self.ops, self.elapsed)
    }
}

/// Throughput of `ops` operations in `elapsed`.
pub fn throughput_mib_s(ops: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    (ops as f64) * (BYTES_PER_OP as f64) / secs / (1u64 << 20) as f64
}

/// Run random read-modify-write over `words` for `duration`; every `interval` (if any) call
/// `progress(elapsed, ops_so_far, interval_throughput_mib_s)`.
pub fn run(
    words: &mut [u64],
    duration: Duration,
    rng: &mut SplitMix64,
    interval: Option<Duration>,
    mut progress: impl FnMut(Duration, u64, f64) -> Result<()>,
) -> Result<Outcome> {
    let start = Instant::now();
    let mut ops = 0u64;
    let mut checksum = 0u64;
    let mut next_report = interval.map(|i| (start + i, 0u64, start));
    if words.len() < PAGE_WORDS {
        return Ok(Outcome {
            ops,
            elapsed: start.elapsed(),
            checksum,
        });
    }
    loop {
        for _ in 0..BATCH {
            checksum = checksum.wrapping_add(one_op(words, rng));
        }
        ops += BATCH;
        let now = Instant::now();
        let elapsed = now.duration_since(start);
        if let (Some(every), Some((due, last_ops, last_t))) = (interval, next_report.as_mut()) {
            if now >= *due {
                let tp = throughput_mib_s(ops - *last_ops, now.duration_since(*last_t));
                progress(elapsed, ops, tp)?;
                *last_ops = ops;
                *last_t = now;
                while *due <= now {
                    *due += every;
                }
            }
        }
        if elapsed >= duration {
            return Ok(Outcome {
                ops,
                elapsed,
                checksum,
            });
        }
    }
}

/// Working-set sizes (MiB) visited by `grow`: from `start` to `end` (either direction) in
/// increments of `step`, always ending exactly at `end`.
pub fn grow_steps(start: u64, end: u64, step: u64) -> Vec<u64> {
    let step = step.max(1);
    let mut v = vec![start];
    let mut cur = start;
    while cur != end {
        cur = if end > cur {
            cur.saturating_add(step).min(end)
        } else {
            cur.saturating_sub(step).max(end)
        };
        v.push(cur);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps() {
        assert_eq!(grow_steps(64, 256, 64), vec![64, 128, 192, 256]);
        assert_eq!(grow_steps(64, 200, 64), vec![64, 128, 192, 200]);
        assert_eq!(grow_steps(256, 64, 100), vec![256, 156, 64]);
        assert_eq!(grow_steps(10, 10, 3), vec![10]);
        assert_eq!(grow_steps(1, 3, 0), vec![1, 2, 3]);
    }

    #[test]
    fn one_op_is_deterministic_and_modifies() {
        let mut a = vec![1u64; PAGE_WORDS * 4];
        let mut b = a.clone();
        let (mut ra, mut rb) = (SplitMix64::new(3), SplitMix64::new(3));
        let mut ca = 0u64;
        let mut cb = 0u64;
        for _ in 0..1000 {
            ca = ca.wrapping_add(one_op(&mut a, &mut ra));
            cb = cb.wrapping_add(one_op(&mut b, &mut rb));
        }
        assert_eq!(a, b);
        assert_eq!(ca, cb);
        assert!(a.iter().any(|&w| w != 1));
    }

    #[test]
    fn short_run_reports() {
        let mut buf = vec![0u64; PAGE_WORDS * 16];
        let mut reports = 0;
        let out = run(
            &mut buf,
            Duration::from_millis(30),
            &mut SplitMix64::new(1),
            Some(Duration::from_millis(5)),
            |_, _, _| {
                reports += 1;
                Ok(())
            },
        );
        let out = out.ok();
        assert!(out.is_some_and(|o| o.ops > 0 && o.elapsed >= Duration::from_millis(30)));
        assert!(reports >= 1);
        assert!(out.is_some_and(|o| o.throughput_mib_s() > 0.0));
    }

    #[test]
    fn throughput_math() {
        // 16384 ops * 64 B = 1 MiB in 1 s.
        assert_eq!(throughput_mib_s(16384, Duration::from_secs(1)), 1.0);
        assert_eq!(throughput_mib_s(5, Duration::ZERO), 0.0);
    }
}
