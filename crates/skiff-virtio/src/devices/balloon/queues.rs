//! Queue roles by negotiated features, and the pure parts of inflate and free page
//! reporting: reading PFNs, merging them into runs, and discarding those runs.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{Discard, F_FREE_PAGE_HINT, F_REPORTING, F_STATS_VQ, PAGE_SHIFT, PAGE_SIZE};
use crate::chain::{Buffer, Chain, ChainError};
use crate::features::has;

/// What a queue is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Inflate,
    Deflate,
    Stats,
    FreePageHint,
    Reporting,
}

/// The role of each queue index, as Linux numbers them: inflate, deflate, then each
/// optional queue only if its feature was negotiated (virtio_balloon.c's `init_vqs` passes
/// NULL names for the others, and virtio_pci skips those when it numbers queues).
pub fn queue_roles(features: u64) -> Vec<Role> {
    let mut roles = vec![Role::Inflate, Role::Deflate];
    if has(features, F_STATS_VQ) {
        roles.push(Role::Stats);
    }
    if has(features, F_FREE_PAGE_HINT) {
        roles.push(Role::FreePageHint);
    }
    if has(features, F_REPORTING) {
        roles.push(Role::Reporting);
    }
    roles
}

/// PFNs accepted per request; Linux sends at most 256 (VIRTIO_BALLOON_ARRAY_PFNS_MAX).
pub const MAX_PFNS: usize = 16 * 1024;

/// Reads the little-endian u32 PFNs in the chain's device-readable buffers (at most
/// [`MAX_PFNS`]; a trailing partial PFN is ignored).
pub fn read_pfns(mem: &GuestMemoryMmap, chain: &Chain) -> Result<Vec<u32>, ChainError> {
    let want = (chain.readable_len() / 4).min(MAX_PFNS as u64) as usize;
    let mut bytes = vec![0u8; want * 4];
    let mut done = 0;
    for b in &chain.readable {
        if done == bytes.len() {
            break;
        }
        let n = (b.len as usize).min(bytes.len() - done);
        mem.read_slice(&mut bytes[done..done + n], b.addr)
            .map_err(|_| ChainError::Memory { head: chain.head })?;
        done += n;
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// A run of contiguous 4 KiB frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PfnRun {
    pub first: u64,
    pub pages: u64,
}

impl PfnRun {
    pub fn gpa(&self) -> u64 {
        self.first << PAGE_SHIFT
    }

    pub fn len(&self) -> u64 {
        self.pages << PAGE_SHIFT
    }

    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }
}

/// Sorts, de-duplicates and merges PFNs into runs of contiguous frames, so that one
/// madvise covers each run.
pub fn merge_runs(pfns: &mut [u32]) -> Vec<PfnRun> {
    pfns.sort_unstable();
    let mut runs: Vec<PfnRun> = Vec::new();
    for &pfn in pfns.iter() {
        let pfn = u64::from(pfn);
        match runs.last_mut() {
            Some(run) if run.first + run.pages == pfn => run.pages += 1,
            Some(run) if run.first + run.pages > pfn => {} // duplicate
            _ => runs.push(PfnRun {
                first: pfn,
                pages: 1,
            }),
        }
    }
    runs
}

/// Discards each run that lies in guest RAM; PFNs outside RAM (a buggy or hostile driver)
/// are skipped with a warning. Returns the bytes discarded.
pub fn discard_runs(
    mem: &GuestMemoryMmap,
    pfns: &mut [u32],
    discard: &dyn Discard,
    what: &str,
) -> u64 {
    let mut outside = 0u64;
    let mut done = 0u64;
    for run in merge_runs(pfns) {
        // A run inside RAM never spans the MMIO hole, since the hole's frames are not RAM;
        // a run that is not wholly in RAM is split into the parts that are.
        for part in split_in_ram(mem, run) {
            match part {
                Ok(r) => done += discard_range(discard, r.gpa(), r.len(), what),
                Err(r) => outside += r.pages,
            }
        }
    }
    if outside > 0 {
        log::warn!("virtio-balloon: {what}: ignored {outside} pages outside guest RAM");
    }
    done
}

fn split_in_ram(mem: &GuestMemoryMmap, run: PfnRun) -> Vec<Result<PfnRun, PfnRun>> {
    let whole = usize::try_from(run.len()).ok();
    if whole.is_some_and(|len| GuestMemoryBackend::check_range(mem, GuestAddress(run.gpa()), len)) {
        return vec![Ok(run)];
    }
    let mut parts: Vec<Result<PfnRun, PfnRun>> = Vec::new();
    for pfn in run.first..run.first + run.pages {
        let in_ram = pfn
            .checked_shl(PAGE_SHIFT)
            .is_some_and(|gpa| GuestMemoryBackend::check_range(mem, GuestAddress(gpa), 4096));
        let single = PfnRun {
            first: pfn,
            pages: 1,
        };
        match (parts.last_mut(), in_ram) {
            (Some(Ok(r)), true) | (Some(Err(r)), false) => r.pages += 1,
            (_, true) => parts.push(Ok(single)),
            (_, false) => parts.push(Err(single)),
        }
    }
    parts
}

/// Free page reporting: each buffer is a free block of guest memory (Linux reports blocks
/// of `page_reporting_order`, 2 MiB on x86). Buffers were checked to lie in guest RAM when
/// the chain was parsed; only whole 4 KiB pages inside each are discarded.
pub fn report_ranges(chain: &Chain, discard: &dyn Discard) -> u64 {
    chain
        .writable
        .iter()
        .chain(chain.readable.iter())
        .map(|b: &Buffer| {
            // Checked: a zero-length buffer passes the RAM check at any address, even
            // the top of the address space (found by fuzzing).
            let start = b.addr.0.checked_next_multiple_of(PAGE_SIZE);
            let end = b.addr.0.checked_add(u64::from(b.len));
            match (start, end.map(|e| e & !(PAGE_SIZE - 1))) {
                (Some(start), Some(end)) if end > start => {
                    discard_range(discard, start, end - start, "free page report")
                }
                _ => 0,
            }
        })
        .sum()
}

fn discard_range(discard: &dyn Discard, gpa: u64, len: u64, what: &str) -> u64 {
    match discard.discard(gpa, len) {
        Ok(()) => len,
        Err(e) => {
            log::warn!("virtio-balloon: {what}: cannot discard {gpa:#x}+{len:#x}: {e}");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::balloon::tests::Recorder;
    use crate::features::COMMON;

    #[test]
    fn queue_indices_follow_the_negotiated_features() {
        use Role::*;
        assert_eq!(queue_roles(COMMON), vec![Inflate, Deflate]);
        let stats = 1 << F_STATS_VQ;
        let report = 1 << F_REPORTING;
        let hint = 1 << F_FREE_PAGE_HINT;
        assert_eq!(queue_roles(stats), vec![Inflate, Deflate, Stats]);
        // Without stats, reporting is queue 2, not the spec's 4.
        assert_eq!(queue_roles(report), vec![Inflate, Deflate, Reporting]);
        assert_eq!(
            queue_roles(stats | report),
            vec![Inflate, Deflate, Stats, Reporting]
        );
        assert_eq!(
            queue_roles(stats | hint | report),
            vec![Inflate, Deflate, Stats, FreePageHint, Reporting]
        );
    }

    #[test]
    fn pfns_merge_into_sorted_runs_without_duplicates() {
        let mut pfns = vec![10, 3, 4, 11, 5, 5, 12, 100, u32::MAX];
        let runs = merge_runs(&mut pfns);
        let r = |first, pages| PfnRun { first, pages };
        assert_eq!(
            runs,
            vec![r(3, 3), r(10, 3), r(100, 1), r(u64::from(u32::MAX), 1)]
        );
        assert_eq!(runs[0].gpa(), 0x3000);
        assert_eq!(runs[0].len(), 0x3000);
        assert!(merge_runs(&mut []).is_empty());
    }

    #[test]
    fn pages_outside_ram_are_skipped_and_the_rest_discarded() {
        // RAM at 0-1 MiB and 2-3 MiB: a hole between, like the MMIO hole.
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x20_0000), 0x10_0000),
        ])
        .expect("mem");
        let rec = Recorder::default();
        // 0xfe-0x101 spans the end of the first region into the hole; 0x200 is RAM again.
        let mut pfns = vec![0xfe, 0xff, 0x100, 0x101, 0x200, 0x201, u32::MAX];
        let done = discard_runs(&mem, &mut pfns, &rec, "inflate");
        assert_eq!(done, 4 * PAGE_SIZE);
        assert_eq!(
            *rec.0.lock().expect("lock"),
            vec![(0xfe000, 0x2000), (0x200000, 0x2000)]
        );
    }

    #[test]
    fn pfns_are_read_from_readable_buffers() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem");
        let words: Vec<u8> = [7u32, 8, 9].iter().flat_map(|w| w.to_le_bytes()).collect();
        mem.write_slice(&words, GuestAddress(0x1000))
            .expect("write");
        let chain = Chain {
            head: 0,
            readable: vec![
                Buffer {
                    addr: GuestAddress(0x1000),
                    len: 8,
                },
                Buffer {
                    addr: GuestAddress(0x1008),
                    len: 6, // one whole PFN and a stray half
                },
            ],
            writable: vec![],
        };
        assert_eq!(read_pfns(&mem, &chain).expect("pfns"), vec![7, 8, 9]);
    }

    /// Regression (fuzz target `balloon_reporting`): an empty buffer near the top of the
    /// address space overflowed rounding its start up to a page.
    #[test]
    fn empty_buffers_at_the_top_of_the_address_space_discard_nothing() {
        let rec = Recorder::default();
        let chain = Chain {
            head: 0,
            readable: vec![],
            writable: vec![
                Buffer {
                    addr: GuestAddress(u64::MAX - 5),
                    len: 0,
                },
                Buffer {
                    addr: GuestAddress(u64::MAX),
                    len: 0,
                },
            ],
        };
        assert_eq!(report_ranges(&chain, &rec), 0);
        assert!(rec.0.lock().expect("lock").is_empty());
    }

    #[test]
    fn reported_ranges_are_trimmed_to_whole_pages() {
        let rec = Recorder::default();
        let chain = Chain {
            head: 0,
            readable: vec![],
            writable: vec![
                Buffer {
                    addr: GuestAddress(0x20_0000),
                    len: 0x20_0000,
                },
                Buffer {
                    addr: GuestAddress(0x1800),
                    len: 0x2000,
                },
                Buffer {
                    addr: GuestAddress(0x5800),
                    len: 0x100,
                },
            ],
        };
        assert_eq!(report_ranges(&chain, &rec), 0x20_0000 + 0x1000);
        assert_eq!(
            *rec.0.lock().expect("lock"),
            vec![(0x20_0000, 0x20_0000), (0x2000, 0x1000)]
        );
    }
}
