//! Hypervisor-level reclaim, for when the balloon cannot free memory fast enough (ESX's
//! "hard" state): page guest memory out to host swap behind the guest's back. The guest
//! does not choose the pages, so this picks them: 2 MiB blocks in which the working-set
//! sample saw no write first, then the rest of memory except the pages seen written; a
//! clock hand carries on where the last request stopped, so repeated requests do not keep
//! paging out (and the guest keep faulting back) the same blocks.
//!
//! Reads, which the write sample cannot see, are seen by the kernel: on Linux before 6.10,
//! MADV_PAGEOUT keeps a page whose accessed bit is set, KVM's nested-page-table bit
//! included (reclaim asks KVM through the MMU notifier), and clears the bit. So a second
//! sweep pages out what the guest did not touch since the first (a second-chance clock).
//! Newer kernels page out what they are given regardless of accessed bits.

use std::sync::Mutex;
use std::time::Instant;

use skiff_api::memory::{ReclaimMode, ReclaimReport, ReclaimStats};
use skiff_pci::msix::lock;

use super::{GuestRam, MemoryError, Release, PAGE_SIZE};

/// Pages per block: a huge page, the unit THP and KVM map and the kernel splits.
const BLOCK_PAGES: u64 = 512;
/// Page-out passes over guest memory per request at most (see `Reclaimer::reclaim`).
const PAGEOUT_SWEEPS: u32 = 2;
pub use skiff_api::memory::RECLAIM_DEADLINE;

#[derive(Debug, thiserror::Error)]
pub enum ReclaimError {
    #[error(
        "the host has no free swap space: paging guest memory out needs swap (e.g. a zram device)"
    )]
    NoSwap,
    #[error("cannot read guest memory residency: {0}")]
    Residency(std::io::Error),
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

pub struct Reclaimer {
    ram: GuestRam,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The block where the next request starts.
    hand: u64,
    totals: ReclaimStats,
}

impl Reclaimer {
    pub fn new(ram: GuestRam) -> Self {
        Reclaimer {
            ram,
            state: Mutex::new(State::default()),
        }
    }

    pub fn totals(&self) -> ReclaimStats {
        lock(&self.state).totals.clone()
    }

    /// Pages out (or marks cold) about `bytes` of resident guest memory, avoiding the RAM
    /// pages in `hot` (sorted) where it can.
    pub fn reclaim(
        &self,
        bytes: u64,
        mode: ReclaimMode,
        hot: &[u64],
    ) -> Result<ReclaimReport, ReclaimError> {
        if mode == ReclaimMode::Pageout && free_swap_bytes() == Some(0) {
            return Err(ReclaimError::NoSwap);
        }
        let started = Instant::now();
        let mut state = lock(&self.state);
        let before = self.resident()?;
        let plan = Plan::new(self.ram.pages(), state.hand, hot);
        let mut run = Run {
            ram: &self.ram,
            how: match mode {
                ReclaimMode::Pageout => Release::PageOut,
                ReclaimMode::Cold => Release::Cold,
            },
            target_pages: bytes.div_ceil(PAGE_SIZE),
            deadline: started + RECLAIM_DEADLINE,
            advised: 0,
            reclaimed: 0,
            last_block: None,
        };
        // Cold blocks first, whole; then hot blocks without their hot pages. A page the
        // guest accessed since the last pass (read or write: KVM's accessed bit, which
        // the kernel's reclaim consults through the MMU notifier) is kept and its bit
        // cleared, so a second sweep takes the pages not touched since the first.
        let sweeps = match mode {
            ReclaimMode::Pageout => PAGEOUT_SWEEPS,
            ReclaimMode::Cold => 1,
        };
        let mut swept = 0;
        while swept < sweeps && !run.done() {
            swept += 1;
            for block in plan.cold_blocks() {
                if run.done() {
                    break;
                }
                run.advise_block(block, &[])?;
            }
            for block in plan.hot_blocks() {
                if run.done() {
                    break;
                }
                run.advise_block(block, plan.hot_in(block))?;
            }
        }
        if let Some(last) = run.last_block {
            state.hand = (last + 1) % plan.blocks.max(1);
        }
        let after = self.resident()?;
        let report = ReclaimReport {
            mode,
            requested_bytes: bytes,
            advised_bytes: run.advised * PAGE_SIZE,
            reclaimed_bytes: run.reclaimed * PAGE_SIZE,
            guest_resident_before: before,
            guest_resident_after: after,
            spared_hot_bytes: self.resident_pages(hot)? * PAGE_SIZE,
            sweeps: swept,
            elapsed_ms: started.elapsed().as_millis() as u64,
            note: run.shortfall_note(mode),
        };
        state.totals.requests += 1;
        state.totals.reclaimed_bytes += report.reclaimed_bytes;
        Ok(report)
    }

    fn resident(&self) -> Result<u64, ReclaimError> {
        self.ram.resident_bytes().map_err(ReclaimError::Residency)
    }

    /// How many of `pages` (sorted) are in host RAM: one mincore per block they fall in.
    fn resident_pages(&self, pages: &[u64]) -> Result<u64, ReclaimError> {
        let mut resident = 0;
        let mut map = [0u8; BLOCK_PAGES as usize];
        for block in pages.chunk_by(|a, b| a / BLOCK_PAGES == b / BLOCK_PAGES) {
            let (first, count) = block_pages(block[0] / BLOCK_PAGES, self.ram.pages());
            let map = &mut map[..count as usize];
            self.ram
                .resident_map(first, map)
                .map_err(ReclaimError::Residency)?;
            resident += block
                .iter()
                .filter(|&&p| {
                    map.get(p.saturating_sub(first) as usize)
                        .is_some_and(|b| b & 1 != 0)
                })
                .count() as u64;
        }
        Ok(resident)
    }
}

/// One request in progress.
struct Run<'a> {
    ram: &'a GuestRam,
    how: Release,
    target_pages: u64,
    deadline: Instant,
    /// Resident pages advised so far.
    advised: u64,
    /// Of those, pages that left host RAM.
    reclaimed: u64,
    last_block: Option<u64>,
}

impl Run<'_> {
    fn done(&self) -> bool {
        let progress = match self.how {
            Release::Cold => self.advised,
            _ => self.reclaimed,
        };
        progress >= self.target_pages || Instant::now() >= self.deadline
    }

    /// Advises the block's pages except `skip` (sorted RAM pages inside the block).
    fn advise_block(&mut self, block: u64, skip: &[u64]) -> Result<(), ReclaimError> {
        let (first, count) = block_pages(block, self.ram.pages());
        self.last_block = Some(block);
        let runs = runs_between(first, count, skip);
        let resident_in_runs = |ram: &GuestRam| -> Result<u64, ReclaimError> {
            runs.iter()
                .map(|&(start, len)| count_resident(ram, start, len))
                .sum()
        };
        let resident = resident_in_runs(self.ram)?;
        if resident == 0 {
            return Ok(());
        }
        for &(start, len) in &runs {
            self.ram.release_pages(start, len, self.how)?;
        }
        let left = resident_in_runs(self.ram)?;
        self.advised += resident;
        self.reclaimed += resident.saturating_sub(left);
        Ok(())
    }

    fn shortfall_note(&self, mode: ReclaimMode) -> Option<String> {
        if self.done() && Instant::now() < self.deadline {
            return None;
        }
        if Instant::now() >= self.deadline {
            return Some(format!("stopped after {RECLAIM_DEADLINE:?}"));
        }
        Some(match mode {
            ReclaimMode::Cold => "less resident guest memory than requested".into(),
            ReclaimMode::Pageout if self.advised > 0 && self.reclaimed == 0 => {
                "the kernel kept every page: host swap may be full".into()
            }
            ReclaimMode::Pageout => "the rest is hot, shared (KSM), or not resident".into(),
        })
    }
}

/// The order in which blocks are visited, from the clock hand, split by whether the
/// working-set sample saw a write in them.
struct Plan<'a> {
    blocks: u64,
    hand: u64,
    hot: &'a [u64],
}

impl<'a> Plan<'a> {
    fn new(pages: u64, hand: u64, hot: &'a [u64]) -> Self {
        let blocks = pages.div_ceil(BLOCK_PAGES);
        Plan {
            blocks,
            hand: if blocks == 0 { 0 } else { hand % blocks },
            hot,
        }
    }

    fn clockwise(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.blocks).map(move |i| (self.hand + i) % self.blocks)
    }

    fn cold_blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.clockwise().filter(|&b| self.hot_in(b).is_empty())
    }

    fn hot_blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.clockwise().filter(|&b| !self.hot_in(b).is_empty())
    }

    /// The hot pages inside `block`.
    fn hot_in(&self, block: u64) -> &'a [u64] {
        let start = block * BLOCK_PAGES;
        let from = self.hot.partition_point(|&p| p < start);
        let to = self.hot.partition_point(|&p| p < start + BLOCK_PAGES);
        &self.hot[from..to]
    }
}

/// The first page and page count of `block` in RAM of `pages` pages.
fn block_pages(block: u64, pages: u64) -> (u64, u64) {
    let first = block * BLOCK_PAGES;
    (first, BLOCK_PAGES.min(pages.saturating_sub(first)))
}

/// The runs of `[first, first+count)` between the sorted pages of `skip`.
fn runs_between(first: u64, count: u64, skip: &[u64]) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let mut start = first;
    for &page in skip.iter().filter(|&&p| p >= first && p < first + count) {
        if page > start {
            runs.push((start, page - start));
        }
        start = start.max(page + 1);
    }
    if start < first + count {
        runs.push((start, first + count - start));
    }
    runs
}

fn count_resident(ram: &GuestRam, first: u64, count: u64) -> Result<u64, ReclaimError> {
    let mut map = [0u8; BLOCK_PAGES as usize];
    let map = &mut map[..count as usize];
    ram.resident_map(first, map)
        .map_err(ReclaimError::Residency)?;
    Ok(map.iter().filter(|&&b| b & 1 != 0).count() as u64)
}

/// Free host swap, if /proc/meminfo says.
fn free_swap_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    crate::host::meminfo_kib(&text, "SwapFree").map(|kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::RamOptions;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn runs_skip_the_hot_pages() {
        assert_eq!(runs_between(0, 8, &[]), vec![(0, 8)]);
        assert_eq!(runs_between(0, 8, &[0, 3, 4, 7]), vec![(1, 2), (5, 2)]);
        assert_eq!(
            runs_between(512, 512, &[3, 600, 2000]),
            vec![(512, 88), (601, 423)]
        );
        assert!(runs_between(0, 2, &[0, 1]).is_empty());
    }

    #[test]
    fn plan_starts_at_the_hand_and_puts_hot_blocks_last() {
        let hot = [5, 700, 2600];
        let plan = Plan::new(6 * BLOCK_PAGES, 2, &hot);
        assert_eq!(plan.cold_blocks().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(plan.hot_blocks().collect::<Vec<_>>(), vec![5, 0, 1]);
        assert_eq!(plan.hot_in(1), &[700]);
        assert!(plan.hot_in(3).is_empty());
        assert_eq!(block_pages(5, 6 * BLOCK_PAGES - 10), (2560, 502));
        assert_eq!(Plan::new(0, 9, &[]).cold_blocks().count(), 0);
    }

    #[test]
    fn cold_mode_advises_resident_cold_blocks_first_and_keeps_data() {
        let ram = GuestRam::new(8 << 20, RamOptions { mergeable: false }).expect("map");
        ram.memory()
            .write_slice(&vec![5u8; 8 << 20], GuestAddress(0))
            .expect("write");
        let reclaimer = Reclaimer::new(ram.clone());
        // A hot page in block 0: the first 2 MiB asked for come from block 1.
        let report = reclaimer
            .reclaim(2 << 20, ReclaimMode::Cold, &[10])
            .expect("cold");
        assert_eq!(report.advised_bytes, 2 << 20, "{report:?}");
        assert_eq!(report.spared_hot_bytes, PAGE_SIZE, "{report:?}");
        assert_eq!((report.note, report.sweeps), (None, 1));
        // The next request carries on from the hand: block 2.
        let report = reclaimer
            .reclaim(2 << 20, ReclaimMode::Cold, &[10])
            .expect("cold");
        assert_eq!(report.advised_bytes, 2 << 20);
        let mut page = [0u8; PAGE_SIZE as usize];
        ram.read_page(600, &mut page).expect("read");
        assert!(page.iter().all(|&b| b == 5));
        assert_eq!(reclaimer.totals().requests, 2);
        // More than there is: everything but the hot page, and a note.
        let report = reclaimer
            .reclaim(64 << 20, ReclaimMode::Cold, &[10])
            .expect("cold");
        assert_eq!(report.advised_bytes, (8 << 20) - PAGE_SIZE);
        assert!(report.note.is_some());
        let mut page = [0u8; PAGE_SIZE as usize];
        ram.read_page(10, &mut page).expect("read");
        assert!(page.iter().all(|&b| b == 5), "the hot page is intact");
    }
}
