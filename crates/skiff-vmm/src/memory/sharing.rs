//! Page sharing: KSM's per-process counters for this VMM, and an estimate of how much of
//! the guest's resident memory could be shared, from a hashed random sample of its pages
//! (ESX hashes pages to find sharing candidates; KSM does the merging here, the sample only
//! tells the memory manager whether scanning faster would pay).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use skiff_api::memory::{KsmStats, ShareableEstimate};
use skiff_pci::msix::lock;

use super::sampling::{choose_pages, seeded_rng};
use super::{GuestRam, PAGE_SIZE};

/// Pages hashed per estimate: 1 MiB read, a fraction of a millisecond natively.
pub const SHARING_SAMPLE_PAGES: u32 = 256;
/// An estimate is reused for this long: stats may be polled often.
const ESTIMATE_MAX_AGE: Duration = Duration::from_secs(10);

/// The kernel's KSM counters for this process. Absent files or fields (older kernels,
/// kernels without KSM) leave fields empty.
pub fn ksm_stats() -> KsmStats {
    let mut stats = std::fs::read_to_string("/proc/self/ksm_stat")
        .map(|text| parse_ksm_stat(&text))
        .unwrap_or_default();
    if stats.merging_pages.is_none() {
        // Linux 5.19-6.5 report it in a file of its own.
        stats.merging_pages = std::fs::read_to_string("/proc/self/ksm_merging_pages")
            .ok()
            .and_then(|t| t.trim().parse().ok());
    }
    stats
}

/// `/proc/PID/ksm_stat`: one `name value` per line.
pub fn parse_ksm_stat(text: &str) -> KsmStats {
    let mut stats = KsmStats::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        match name {
            "ksm_rmap_items" => stats.rmap_items = value.parse().ok(),
            "ksm_merging_pages" => stats.merging_pages = value.parse().ok(),
            "ksm_zero_pages" => stats.zero_pages = value.parse().ok(),
            "ksm_process_profit" => stats.process_profit = value.parse().ok(),
            _ => {}
        }
    }
    stats
}

/// Counts zero pages and repeated contents among page hashes.
#[derive(Default)]
pub struct ContentTally {
    seen: HashMap<u64, u32>,
    sampled: u32,
    zero: u32,
    duplicate: u32,
}

impl ContentTally {
    pub fn add(&mut self, page: &[u8]) {
        self.sampled += 1;
        if page.iter().all(|&b| b == 0) {
            self.zero += 1;
            return;
        }
        // 64-bit hashes, as in ESX; a false match needs a collision (about 2^-64 per pair)
        // and costs only a slightly high estimate, since KSM compares in full anyway.
        let mut hasher = DefaultHasher::new();
        hasher.write(page);
        let count = self.seen.entry(hasher.finish()).or_insert(0);
        if *count > 0 {
            self.duplicate += 1;
        }
        *count += 1;
    }

    pub fn estimate(&self) -> ShareableEstimate {
        ShareableEstimate {
            sampled: self.sampled,
            zero: self.zero,
            duplicate: self.duplicate,
            fraction: if self.sampled == 0 {
                0.0
            } else {
                f64::from(self.zero + self.duplicate) / f64::from(self.sampled)
            },
        }
    }
}

/// Hashes a random sample of resident guest pages. Pages not in host RAM are skipped:
/// reading them would fault them in (or back from swap) for nothing.
pub fn estimate_shareable(
    ram: &GuestRam,
    rng: &mut SmallRng,
    pages: u32,
) -> io::Result<ShareableEstimate> {
    let mut sample = Sample::new(ram, rng, pages);
    sample.take(ram, None)?;
    Ok(sample.tally.estimate())
}

/// A sample being taken: the pages still to read (last first) and what the read ones hold.
struct Sample {
    pages: Vec<u64>,
    tally: ContentTally,
}

impl Sample {
    fn new(ram: &GuestRam, rng: &mut SmallRng, pages: u32) -> Self {
        let mut pages = choose_pages(rng, ram.pages(), pages);
        pages.reverse();
        Sample {
            pages,
            tally: ContentTally::default(),
        }
    }

    /// Reads pages until none is left (true) or `until` has passed (false).
    fn take(&mut self, ram: &GuestRam, until: Option<Instant>) -> io::Result<bool> {
        let mut buf = [0u8; PAGE_SIZE as usize];
        let mut resident = [0u8; 1];
        while let Some(&page) = self.pages.last() {
            if until.is_some_and(|t| Instant::now() >= t) {
                return Ok(false);
            }
            ram.resident_map(page, &mut resident)?;
            if resident[0] & 1 != 0 {
                ram.read_page(page, &mut buf)?;
                self.tally.add(&buf);
            }
            self.pages.pop();
        }
        Ok(true)
    }
}

/// The shareable estimate, renewed when the last one is older than a few seconds. It is
/// asked for on the control thread (stats), which must answer at once however busy the
/// host is: each call reads pages for at most [`SLICE`], and a sample not finished by
/// then goes on at the next call (with 16 busy VMs in the emulated host, a whole sample
/// in one call held answers for up to 5 s).
pub struct SharingMonitor {
    ram: GuestRam,
    cached: Mutex<Cached>,
}

/// How long one call may spend sampling.
const SLICE: Duration = Duration::from_millis(10);

struct Cached {
    rng: SmallRng,
    last: Option<(Instant, ShareableEstimate)>,
    taking: Option<Sample>,
}

impl SharingMonitor {
    pub fn new(ram: GuestRam) -> Self {
        SharingMonitor {
            ram,
            cached: Mutex::new(Cached {
                rng: seeded_rng(),
                last: None,
                taking: None,
            }),
        }
    }

    /// The newest whole estimate; while none is finished, the part taken so far.
    pub fn estimate(&self) -> io::Result<ShareableEstimate> {
        let mut guard = lock(&self.cached);
        let cached = &mut *guard;
        if let Some((at, estimate)) = &cached.last {
            if at.elapsed() < ESTIMATE_MAX_AGE {
                return Ok(estimate.clone());
            }
        }
        let sample = match &mut cached.taking {
            Some(sample) => sample,
            None => cached.taking.insert(Sample::new(
                &self.ram,
                &mut cached.rng,
                SHARING_SAMPLE_PAGES,
            )),
        };
        if sample.take(&self.ram, Some(Instant::now() + SLICE))? {
            let estimate = sample.tally.estimate();
            cached.last = Some((Instant::now(), estimate.clone()));
            cached.taking = None;
            return Ok(estimate);
        }
        Ok(match &cached.last {
            Some((_, estimate)) => estimate.clone(),
            None => sample.tally.estimate(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::RamOptions;
    use rand::SeedableRng;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn parses_ksm_stat_of_old_and_new_kernels() {
        let linux_6_1 = "ksm_rmap_items 12\n";
        let stats = parse_ksm_stat(linux_6_1);
        assert_eq!(stats.rmap_items, Some(12));
        assert_eq!(stats.merging_pages, None);
        let linux_6_12 = "ksm_rmap_items 300\nksm_zero_pages 7\nksm_merging_pages 120\n\
                          ksm_process_profit -4096\nksm_merge_any no\nksm_mergeable yes\n";
        let stats = parse_ksm_stat(linux_6_12);
        assert_eq!(
            stats,
            KsmStats {
                rmap_items: Some(300),
                merging_pages: Some(120),
                zero_pages: Some(7),
                process_profit: Some(-4096),
            }
        );
        assert_eq!(
            parse_ksm_stat("garbage\nksm_rmap_items x\n"),
            KsmStats::default()
        );
    }

    #[test]
    fn tally_counts_zero_and_repeated_pages() {
        let mut tally = ContentTally::default();
        let zero = [0u8; 4096];
        let a = [1u8; 4096];
        let mut b = [1u8; 4096];
        b[4095] = 2;
        for page in [&zero, &a, &b, &a, &zero, &a] {
            tally.add(page);
        }
        let e = tally.estimate();
        assert_eq!((e.sampled, e.zero, e.duplicate), (6, 2, 2));
        assert!((e.fraction - 4.0 / 6.0).abs() < 1e-9);
        assert_eq!(ContentTally::default().estimate().fraction, 0.0);
    }

    #[test]
    fn estimate_reads_only_resident_pages() {
        let ram = GuestRam::new(16 << 20, RamOptions { mergeable: false }).expect("map");
        // Half of RAM resident, all with the same non-zero content.
        ram.memory()
            .write_slice(&vec![9u8; 8 << 20], GuestAddress(0))
            .expect("write");
        let before = ram.resident_bytes().expect("mincore");
        let mut rng = SmallRng::seed_from_u64(3);
        let e = estimate_shareable(&ram, &mut rng, 512).expect("estimate");
        assert_eq!(
            ram.resident_bytes().expect("mincore"),
            before,
            "nothing faulted in"
        );
        assert!(e.sampled > 150 && e.sampled < 360, "{e:?}");
        assert_eq!(e.zero, 0);
        assert_eq!(e.duplicate, e.sampled - 1, "{e:?}");
    }

    #[test]
    fn a_sample_is_taken_in_slices_and_the_last_whole_one_is_kept_meanwhile() {
        let ram = GuestRam::new(16 << 20, RamOptions { mergeable: false }).expect("map");
        ram.memory()
            .write_slice(&vec![7u8; 16 << 20], GuestAddress(0))
            .expect("write");
        let mut rng = SmallRng::seed_from_u64(5);
        let mut sample = Sample::new(&ram, &mut rng, 64);
        // A deadline already past reads nothing.
        assert!(!sample.take(&ram, Some(Instant::now())).expect("take"));
        assert_eq!(sample.tally.estimate().sampled, 0);
        assert!(sample.take(&ram, None).expect("take"));
        let e = sample.tally.estimate();
        assert_eq!((e.sampled, e.duplicate), (64, 63));

        // Each call reads for at most a slice: the parts grow until the sample is whole,
        // which is then kept.
        let monitor = SharingMonitor::new(ram);
        let mut sampled = 0;
        let mut calls = 0;
        while sampled < SHARING_SAMPLE_PAGES {
            let e = monitor.estimate().expect("estimate");
            assert!(e.sampled >= sampled, "{e:?} after {sampled}");
            sampled = e.sampled;
            calls += 1;
            assert!(calls < 10_000, "never finished: {e:?}");
        }
        let whole = monitor.estimate().expect("estimate");
        assert_eq!(whole.sampled, SHARING_SAMPLE_PAGES);
        assert_eq!(monitor.estimate().expect("estimate"), whole);
    }
}
