//! Working-set sampling (ESX's statistical sampling, with KVM's dirty log): every period,
//! write-protect n random guest pages, and at the period's end count how many the guest
//! wrote. touched / n estimates the fraction of guest memory the guest actively writes.
//!
//! Write-sampling cannot see reads: a page the guest only reads stays "idle" here. See
//! docs/memory.md for what that means and how the manager compensates.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;
use skiff_api::memory::{WorkingSetSample, WorkingSetSpec, WorkingSetStats};
use skiff_mem_policy::{WorkingSetEstimator, WorkingSetParams};
use skiff_pci::msix::lock;

use super::dirty_log::{DirtyLogError, GuestSlots};

/// Finished periods kept for the stats.
const RECENT_PERIODS: usize = 8;
/// Periods whose written pages count as hot when reclaim picks pages.
const HOT_PERIODS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    #[error("invalid sampling settings: {0}")]
    Invalid(String),
    #[error(transparent)]
    DirtyLog(#[from] DirtyLogError),
}

/// The sampler's state, shared by its thread, the control requests and reclaim.
pub struct WorkingSet {
    slots: Arc<GuestSlots>,
    total_pages: u64,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    spec: WorkingSetSpec,
    /// Bumped by every change that invalidates the period in progress.
    generation: u64,
    paused: bool,
    /// The memory policy's own estimator, so the VMM reports the f the policy means.
    estimator: WorkingSetEstimator,
    recent: VecDeque<WorkingSetSample>,
    /// Pages seen written in the last periods, newest last.
    hot: VecDeque<Vec<u64>>,
    /// The pages of the period in progress.
    current: Vec<u64>,
}

impl WorkingSet {
    /// Sampling over `slots` (guest RAM of `total_pages` pages). The sampler turns dirty
    /// logging on itself, one period after it starts (see [`WorkingSet::run`]); a request
    /// that changes the settings turns it on (or off) at once.
    pub fn new(slots: Arc<GuestSlots>, total_pages: u64, spec: WorkingSetSpec) -> Arc<Self> {
        Arc::new(WorkingSet {
            slots,
            total_pages,
            state: Mutex::new(State {
                spec,
                generation: 0,
                paused: false,
                estimator: WorkingSetEstimator::new(WorkingSetParams::default()),
                recent: VecDeque::with_capacity(RECENT_PERIODS),
                hot: VecDeque::with_capacity(HOT_PERIODS),
                current: Vec::new(),
            }),
            changed: Condvar::new(),
        })
    }

    /// Starts the sampling thread; it runs until the process ends.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<()> {
        let this = self.clone();
        // Seeded here, not in the thread: its seccomp filter opens no files, and in a static
        // build the random source falls back to reading /dev/urandom.
        let rng = seeded_rng();
        crate::seccomp::spawn(
            "ws-sampler".into(),
            crate::seccomp::Role::Sampler,
            crate::stacks::SERVICE,
            move || this.run(rng),
        )?;
        Ok(())
    }

    /// Changes the period and/or the pages per period (None keeps a value). Period 0 turns
    /// sampling and KVM dirty logging off.
    pub fn configure(
        &self,
        period_secs: Option<u32>,
        pages: Option<u32>,
    ) -> Result<(), SamplingError> {
        let mut state = lock(&self.state);
        let spec = WorkingSetSpec {
            period_secs: period_secs.unwrap_or(state.spec.period_secs),
            pages: pages.unwrap_or(state.spec.pages),
        };
        spec.check().map_err(SamplingError::Invalid)?;
        self.slots.set_logging(spec.period_secs > 0)?;
        state.spec = spec;
        state.generation += 1;
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    /// A paused guest writes nothing: periods are not counted while the VM is paused.
    pub fn set_paused(&self, paused: bool) {
        let mut state = lock(&self.state);
        state.paused = paused;
        state.generation += 1;
        drop(state);
        self.changed.notify_all();
    }

    pub fn stats(&self) -> WorkingSetStats {
        let state = lock(&self.state);
        WorkingSetStats {
            period_secs: state.spec.period_secs,
            pages: state.spec.pages,
            dirty_logging: self.slots.logging(),
            periods: state.estimator.periods(),
            recent: state.recent.iter().copied().collect(),
            fast: state.estimator.fast(),
            slow: state.estimator.slow(),
            active_fraction: state.estimator.estimate(),
        }
    }

    /// RAM pages known to be in use: written during the last periods or so far in this
    /// one. Sorted, without repeats.
    pub fn recently_written(&self) -> Vec<u64> {
        let state = lock(&self.state);
        let mut pages: Vec<u64> = state.hot.iter().flatten().copied().collect();
        if !state.current.is_empty() {
            if let Ok(written) = self.slots.written(&state.current) {
                pages.extend(pick(&state.current, &written));
            }
        }
        drop(state);
        pages.sort_unstable();
        pages.dedup();
        pages
    }

    /// The sampling loop. Dirty logging is turned on only after one period without it:
    /// KVM maps a logged slot with 4 KiB pages only, and a booting guest touches most of
    /// its memory for the first time, so logging from the start made every first touch a
    /// 4 KiB nested fault (boots took about a second longer in the emulated test host, and
    /// guests there died of triple faults far more often; docs/memory.md). Memory
    /// the guest has touched by then keeps its 2 MiB mappings; KVM splits only the blocks
    /// whose pages are sampled.
    fn run(&self, mut rng: SmallRng) {
        let mut warming_up = true;
        loop {
            let (spec, generation) = self.wait_for_work();
            if warming_up && !self.slots.logging() {
                if !self.sleep_unless_changed(generation, period(spec)) {
                    continue;
                }
                warming_up = false;
                if let Err(e) = self.slots.set_logging(true) {
                    log::warn!("working-set sampling: {e}");
                    self.sleep_unless_changed(generation, period(spec));
                    continue;
                }
            }
            let pages = choose_pages(&mut rng, self.total_pages, spec.pages);
            if let Err(e) = self.slots.protect(&pages) {
                log::warn!("working-set sampling: {e}");
                self.sleep_unless_changed(generation, period(spec));
                continue;
            }
            lock(&self.state).current.clone_from(&pages);
            if !self.sleep_unless_changed(generation, period(spec)) {
                continue;
            }
            let mut state = lock(&self.state);
            state.current.clear();
            if state.generation != generation {
                continue;
            }
            match self.slots.written(&pages) {
                Ok(written) => state.finish_period(&pages, &written),
                Err(e) => log::warn!("working-set sampling: {e}"),
            }
        }
    }

    /// Blocks until sampling is on and the guest runs.
    fn wait_for_work(&self) -> (WorkingSetSpec, u64) {
        let mut state = lock(&self.state);
        while state.spec.period_secs == 0 || state.paused {
            state = wait(&self.changed, state, None);
        }
        (state.spec, state.generation)
    }

    /// Sleeps for `period`; false if the settings changed (or the VM paused) meanwhile.
    fn sleep_unless_changed(&self, generation: u64, period: Duration) -> bool {
        let deadline = Instant::now() + period;
        let mut state = lock(&self.state);
        loop {
            if state.generation != generation {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            state = wait(&self.changed, state, Some(left));
        }
    }
}

impl State {
    fn finish_period(&mut self, pages: &[u64], written: &[bool]) {
        let touched = pick(pages, written);
        let sample = WorkingSetSample {
            sampled: pages.len() as u32,
            touched: touched.len() as u32,
        };
        self.estimator.observe(sample.sampled, sample.touched);
        if self.recent.len() == RECENT_PERIODS {
            self.recent.pop_front();
        }
        self.recent.push_back(sample);
        if self.hot.len() == HOT_PERIODS {
            self.hot.pop_front();
        }
        self.hot.push_back(touched);
    }
}

/// `count` distinct random pages of `0..total`, in ascending order.
pub fn choose_pages(rng: &mut SmallRng, total: u64, count: u32) -> Vec<u64> {
    let total = usize::try_from(total).unwrap_or(usize::MAX);
    let count = (count as usize).min(total);
    let mut pages: Vec<u64> = rand::seq::index::sample(rng, total, count)
        .into_iter()
        .map(|p| p as u64)
        .collect();
    pages.sort_unstable();
    pages
}

/// The pages whose flag is set.
fn pick(pages: &[u64], flags: &[bool]) -> Vec<u64> {
    pages
        .iter()
        .zip(flags)
        .filter(|(_, &f)| f)
        .map(|(&p, _)| p)
        .collect()
}

fn period(spec: WorkingSetSpec) -> Duration {
    Duration::from_secs(u64::from(spec.period_secs))
}

pub fn seeded_rng() -> SmallRng {
    SmallRng::try_from_rng(&mut rand::rngs::SysRng).unwrap_or_else(|_| {
        // No entropy from the kernel: sampling only needs pages that do not follow the
        // guest's own patterns, and the clock gives that.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        SmallRng::seed_from_u64(nanos ^ u64::from(std::process::id()))
    })
}

fn wait<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Option<Duration>,
) -> MutexGuard<'a, T> {
    match timeout {
        None => condvar
            .wait(guard)
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        Some(t) => condvar
            .wait_timeout(guard, t)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_pages_are_distinct_sorted_and_in_range() {
        let mut rng = SmallRng::seed_from_u64(7);
        let pages = choose_pages(&mut rng, 1000, 100);
        assert_eq!(pages.len(), 100);
        assert!(pages.windows(2).all(|w| w[0] < w[1]));
        assert!(pages.iter().all(|&p| p < 1000));
        assert_eq!(
            choose_pages(&mut rng, 10, 100).len(),
            10,
            "never more than exist"
        );
        let again = choose_pages(&mut rng, 1000, 100);
        assert_ne!(pages, again, "a new sample every period");
    }

    #[test]
    fn samples_cover_memory_evenly() {
        // Uniform sampling: about as many picks in each quarter of memory.
        let mut rng = SmallRng::seed_from_u64(1);
        let mut quarters = [0u32; 4];
        for _ in 0..100 {
            for p in choose_pages(&mut rng, 65536, 100) {
                quarters[(p / 16384) as usize] += 1;
            }
        }
        assert!(
            quarters.iter().all(|&q| (2000..3000).contains(&q)),
            "{quarters:?}"
        );
    }

    #[test]
    fn a_finished_period_feeds_the_estimate_and_the_hot_pages() {
        let mut state = State {
            spec: WorkingSetSpec::default(),
            generation: 0,
            paused: false,
            estimator: WorkingSetEstimator::new(WorkingSetParams::default()),
            recent: VecDeque::new(),
            hot: VecDeque::new(),
            current: Vec::new(),
        };
        for period in 0..(RECENT_PERIODS as u64 + 2) {
            let pages = [
                period * 10,
                period * 10 + 1,
                period * 10 + 2,
                period * 10 + 3,
            ];
            state.finish_period(&pages, &[true, false, true, false]);
        }
        assert_eq!(state.recent.len(), RECENT_PERIODS);
        assert_eq!(
            state.recent.back(),
            Some(&WorkingSetSample {
                sampled: 4,
                touched: 2
            })
        );
        assert!((state.estimator.estimate() - 0.5).abs() < 1e-9);
        assert_eq!(state.hot.len(), HOT_PERIODS);
        assert_eq!(state.hot.back(), Some(&vec![90, 92]));
    }
}
