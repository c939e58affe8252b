//! `iobench`: direct I/O (`O_DIRECT`, so the guest's page cache is out of the picture) on a
//! block device or file: sequential or random, reads or writes, with one or more threads,
//! each keeping one request in flight (queue depth = threads). Blocks are aligned to 4 KiB
//! in memory and on the device; random offsets come from a seeded SplitMix64 per thread.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::datagen::{fill_stream, reduce, SplitMix64};
use crate::error::{Context, Error, Result};

/// Alignment O_DIRECT needs for buffers, offsets and lengths (the logical block size is
/// at most this on the devices we test).
pub const ALIGN: usize = 4096;

/// Access order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// The region once, block after block (each thread its own contiguous stripe).
    Sequential,
    /// Uniformly random aligned blocks of the region, until the time is up.
    Random,
}

/// One benchmark run.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub pattern: Pattern,
    pub write: bool,
    /// Bytes at the start of the device that the run covers.
    pub region: u64,
    /// Bytes per request, a multiple of [`ALIGN`].
    pub block: usize,
    /// How long a random run lasts.
    pub seconds: f64,
    /// Threads, each with one request in flight.
    pub threads: usize,
    pub seed: u64,
}

impl Job {
    /// The name of the mode on the command line and in the output.
    pub fn mode(&self) -> &'static str {
        match (self.pattern, self.write) {
            (Pattern::Sequential, false) => "seq-read",
            (Pattern::Sequential, true) => "seq-write",
            (Pattern::Random, false) => "rand-read",
            (Pattern::Random, true) => "rand-write",
        }
    }

    /// Parses a mode name into (pattern, write).
    pub fn parse_mode(mode: &str) -> Option<(Pattern, bool)> {
        match mode {
            "seq-read" => Some((Pattern::Sequential, false)),
            "seq-write" => Some((Pattern::Sequential, true)),
            "rand-read" => Some((Pattern::Random, false)),
            "rand-write" => Some((Pattern::Random, true)),
            _ => None,
        }
    }

    fn blocks(&self) -> u64 {
        self.region / self.block as u64
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub ops: u64,
    pub bytes: u64,
    /// Including the final `fdatasync` of a write run.
    pub elapsed: Duration,
}

impl Outcome {
    pub fn throughput_mib_s(&self) -> f64 {
        self.bytes as f64 / (1u64 << 20) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Opens `path` with `O_DIRECT` and runs `job` on it.
pub fn run(path: &Path, job: &Job) -> Result<Outcome> {
    let file = OpenOptions::new()
        .read(true)
        .write(job.write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .context(|| format!("open {} with O_DIRECT", path.display()))?;
    let size = file
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .map_or_else(|| device_size(&file, path), Ok)?;
    if job.region > size {
        return Err(Error::usage(format!(
            "iobench: the region ({} MiB) is larger than {} ({} MiB)",
            job.region >> 20,
            path.display(),
            size >> 20
        )));
    }
    run_on(&file, job)
}

/// The size of a block device (its file metadata says 0).
fn device_size(file: &File, path: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::End(0))
        .context(|| format!("size of {}", path.display()))
}

/// Runs `job` on an open file (with or without `O_DIRECT`).
pub fn run_on(file: &File, job: &Job) -> Result<Outcome> {
    if job.block == 0 || job.block % ALIGN != 0 || job.threads == 0 {
        return Err(Error::usage(
            "iobench: the block must be a non-zero multiple of 4 KiB, with at least one thread",
        ));
    }
    if job.blocks() < job.threads as u64 {
        return Err(Error::usage(
            "iobench: the region is smaller than a block per thread",
        ));
    }
    let start = Instant::now();
    let results: Vec<Result<u64>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..job.threads)
            .map(|t| scope.spawn(move || thread_run(file, job, t, start)))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(Error::runtime("iobench: a thread panicked")))
            })
            .collect()
    });
    let mut ops = 0;
    for r in results {
        ops += r?;
    }
    if job.write {
        file.sync_data().context(|| "iobench: fdatasync")?;
    }
    Ok(Outcome {
        ops,
        bytes: ops * job.block as u64,
        elapsed: start.elapsed(),
    })
}

/// A zeroed buffer of `len` bytes whose start is [`ALIGN`]-aligned, as a range of `storage`.
fn aligned(storage: &mut Vec<u8>, len: usize) -> &mut [u8] {
    storage.clear();
    storage.resize(len + ALIGN, 0);
    let skip = storage.as_ptr().align_offset(ALIGN);
    &mut storage[skip..skip + len]
}

/// The blocks thread `t` of `threads` covers in a sequential run: a contiguous stripe.
fn stripe(blocks: u64, threads: usize, t: usize) -> std::ops::Range<u64> {
    let per = |i: usize| blocks * i as u64 / threads as u64;
    per(t)..per(t + 1)
}

/// The next random block offset (bytes) from a thread's generator.
fn random_offset(rng: &mut SplitMix64, job: &Job) -> u64 {
    reduce(rng.next_u64(), job.blocks()) * job.block as u64
}

/// One thread's share: returns the requests it completed.
fn thread_run(file: &File, job: &Job, t: usize, start: Instant) -> Result<u64> {
    let mut storage = Vec::new();
    let buf = aligned(&mut storage, job.block);
    let mut rng = SplitMix64::new(job.seed.wrapping_add(t as u64));
    if job.write {
        // Not zeros: nothing on the way may treat the data specially.
        fill_stream(&mut rng, buf);
    }
    let io = |buf: &mut [u8], offset: u64| -> Result<()> {
        let done = if job.write {
            file.write_all_at(buf, offset)
        } else {
            file.read_exact_at(buf, offset)
        };
        done.context(|| format!("iobench: {} at offset {offset}", job.mode()))
    };
    let mut ops = 0;
    match job.pattern {
        Pattern::Sequential => {
            for block in stripe(job.blocks(), job.threads, t) {
                io(buf, block * job.block as u64)?;
                ops += 1;
            }
        }
        Pattern::Random => {
            let limit = Duration::from_secs_f64(job.seconds);
            while start.elapsed() < limit {
                io(buf, random_offset(&mut rng, job))?;
                ops += 1;
            }
        }
    }
    Ok(ops)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn job(pattern: Pattern, write: bool, threads: usize) -> Job {
        Job {
            pattern,
            write,
            region: 1 << 20,
            block: 64 << 10,
            seconds: 0.05,
            threads,
            seed: 3,
        }
    }

    fn temp_file(name: &str, len: u64) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("iobench-{}-{name}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(len).unwrap();
        (path, file)
    }

    #[test]
    fn stripes_cover_every_block_once() {
        let covered: Vec<u64> = (0..3).flat_map(|t| stripe(10, 3, t)).collect();
        assert_eq!(covered, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn buffers_are_aligned() {
        let mut storage = Vec::new();
        let buf = aligned(&mut storage, 8192);
        assert_eq!(buf.len(), 8192);
        assert_eq!(buf.as_ptr() as usize % ALIGN, 0);
    }

    #[test]
    fn random_offsets_are_aligned_and_inside_the_region() {
        let j = Job {
            block: 4096,
            ..job(Pattern::Random, false, 1)
        };
        let mut rng = SplitMix64::new(1);
        let offsets: Vec<u64> = (0..1000).map(|_| random_offset(&mut rng, &j)).collect();
        assert!(offsets
            .iter()
            .all(|o| o % 4096 == 0 && o + 4096 <= j.region));
        let distinct: std::collections::HashSet<_> = offsets.iter().collect();
        assert!(distinct.len() > 100, "offsets spread over the region");
    }

    #[test]
    fn sequential_write_covers_the_region_and_reads_back() {
        let (path, file) = temp_file("seq", 2 << 20);
        let out = run_on(&file, &job(Pattern::Sequential, true, 2)).unwrap();
        assert_eq!((out.ops, out.bytes), (16, 1 << 20));
        let data = std::fs::read(&path).unwrap();
        assert!(data[..1 << 20].iter().any(|b| *b != 0));
        assert!(
            data[1 << 20..].iter().all(|b| *b == 0),
            "wrote past the region"
        );
        let back = run_on(&file, &job(Pattern::Sequential, false, 1)).unwrap();
        assert_eq!(back.bytes, 1 << 20);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn random_runs_last_their_time_and_count_requests() {
        let (path, file) = temp_file("rand", 1 << 20);
        let out = run_on(&file, &job(Pattern::Random, false, 2)).unwrap();
        assert!(out.ops > 0);
        assert!(out.elapsed >= Duration::from_millis(50));
        assert_eq!(out.bytes, out.ops * (64 << 10));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_jobs_are_usage_errors() {
        let (path, file) = temp_file("bad", 1 << 20);
        let odd = Job {
            block: 1000,
            ..job(Pattern::Random, false, 1)
        };
        assert!(run_on(&file, &odd).unwrap_err().is_usage());
        let too_many = Job {
            threads: 100,
            ..job(Pattern::Sequential, false, 1)
        };
        assert!(run_on(&file, &too_many).unwrap_err().is_usage());
        std::fs::remove_file(path).unwrap();
        assert!(Job::parse_mode("rand-write") == Some((Pattern::Random, true)));
        assert!(Job::parse_mode("write").is_none());
    }
}
