//! Skiff's memory policy, after VMware ESX (Waldspurger, OSDI 2002), as pure functions: no
//! KVM, no files, no clock. The host daemon gathers the inputs from its VMMs each period and
//! carries out the outputs; everything here is decided from the numbers alone, so it is
//! tested by simulation (`tests/`).
//!
//! - [`MemoryPolicy::plan`]: one period. Moves the free-memory [`FreeState`] (high, soft,
//!   hard, low, with hysteresis), computes every VM's target by min-funding revocation with
//!   an idle-memory tax ([`allocate`]) and the [`Action`]s that bring each VM there
//!   (balloon, hypervisor reclaim, pause, resume).
//! - [`admit`]: admission control.
//! - [`WorkingSetEstimator`]: the active fraction f from sampled pages per period.
//! - [`tune_ksm`]: ksmd's scan rate from the sharing there is left to find.
//!
//! The allocation in one line: every VM gets `clamp(cost⁻¹(S/λ), lower, upper)` with cost
//! charging idle bytes k = 1/(1−τ) times active ones and λ chosen to fill the budget, which
//! is where ESX's reclaim-from-the-lowest-ρ loop comes to rest; memory above a VM's demand
//! goes before memory below it. `allocation` explains it, docs/memory.md has the rest.

mod actions;
mod admission;
mod allocation;
mod config;
mod idle_tax;
mod input;
mod ksm;
mod plan;
mod state;
mod working_set;

pub use actions::Action;
pub use admission::{admit, AdmissionError, HostCapacity, Reservation};
pub use allocation::{allocate, VmTarget};
pub use config::{ConfigError, FreeThresholds, PolicyConfig, PAGE_SIZE};
pub use input::{active_fraction_of_resident, BalloonInput, HostInput, InputError, VmInput};
pub use ksm::{opportunity, tune_ksm, KsmObservation, KsmSettings, KsmTuning};
pub use plan::{MemoryPolicy, Plan, VmPlan};
pub use state::FreeState;
pub use working_set::{WorkingSetEstimator, WorkingSetParams, WorkingSetParamsError};

/// The sum of byte counts, at most `u64::MAX`: the inputs come from other processes, and one
/// absurd figure must not wrap a total (or panic a debug build).
pub fn saturating_sum(values: impl IntoIterator<Item = u64>) -> u64 {
    values.into_iter().fold(0, u64::saturating_add)
}
