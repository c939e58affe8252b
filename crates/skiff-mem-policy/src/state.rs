//! Free-memory states with hysteresis.
//!
//! Going down, a state is entered as soon as free memory falls below its threshold (soft
//! below 4 % of the budget, hard below 2 %, low below 1 %). Going up, a state is left only
//! when free memory is back above the *next-higher* state's threshold: low is left above
//! 2 %, hard above 4 %, soft above 6 %. So a host hovering around one threshold does not
//! flip between two states every period, and a reclaiming host keeps reclaiming until there
//! is a clear margin.

use serde::{Deserialize, Serialize};

use crate::config::FreeThresholds;

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FreeState {
    /// Enough free memory: nothing is reclaimed.
    #[default]
    High,
    /// Balloons reclaim towards targets.
    Soft,
    /// Balloons plus hypervisor-level reclaim of VMs above target.
    Hard,
    /// As hard, and VMs above target are paused until they are back under.
    Low,
}

impl FreeState {
    pub const ALL: [FreeState; 4] = [
        FreeState::High,
        FreeState::Soft,
        FreeState::Hard,
        FreeState::Low,
    ];

    /// The state's name as in the API (`high`, `soft`, `hard`, `low`).
    pub fn as_str(self) -> &'static str {
        match self {
            FreeState::High => "high",
            FreeState::Soft => "soft",
            FreeState::Hard => "hard",
            FreeState::Low => "low",
        }
    }

    /// The state with one level less pressure (`High` stays `High`).
    fn relieved(self) -> FreeState {
        match self {
            FreeState::High | FreeState::Soft => FreeState::High,
            FreeState::Hard => FreeState::Soft,
            FreeState::Low => FreeState::Hard,
        }
    }

    /// The threshold below which this state is entered (`High` has none: it is where the
    /// soft state is left, at `high`).
    fn entry_threshold(self, t: &FreeThresholds) -> f64 {
        match self {
            FreeState::High => t.high,
            FreeState::Soft => t.soft,
            FreeState::Hard => t.hard,
            FreeState::Low => t.low,
        }
    }

    /// The state after `self` given `free` bytes of `budget`.
    pub fn next(self, free: u64, budget: u64, thresholds: &FreeThresholds) -> FreeState {
        let fraction = if budget == 0 {
            0.0
        } else {
            free as f64 / budget as f64
        };
        let by_entry = [FreeState::Low, FreeState::Hard, FreeState::Soft]
            .into_iter()
            .find(|s| fraction < s.entry_threshold(thresholds))
            .unwrap_or(FreeState::High);
        if by_entry >= self {
            return by_entry;
        }
        // Less pressure than the current state: climb one level at a time, each only past
        // the threshold of the level above.
        let mut state = self;
        while state != FreeState::High && fraction >= state.relieved().entry_threshold(thresholds) {
            state = state.relieved();
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FreeState::*;

    fn walk(start: FreeState, percents: &[u64]) -> Vec<FreeState> {
        let t = FreeThresholds::default();
        let mut state = start;
        percents
            .iter()
            .map(|&p| {
                state = state.next(p * 10, 1000, &t);
                state
            })
            .collect()
    }

    #[test]
    fn names_match_the_wire_format() {
        for state in FreeState::ALL {
            let json = serde_json::to_string(&state).expect("json");
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
    }

    #[test]
    fn descends_at_each_threshold() {
        // free memory in tenths of a percent: 7 %, 5 %, 3.9 %, 1.9 %, 0.9 %
        let free = [70, 50, 39, 19, 9];
        let t = FreeThresholds::default();
        let states: Vec<FreeState> = free.iter().map(|&f| High.next(f, 1000, &t)).collect();
        assert_eq!(states, [High, High, Soft, Hard, Low]);
    }

    #[test]
    fn climbs_only_past_the_next_higher_threshold() {
        // percents of the budget
        assert_eq!(
            walk(Low, &[1, 2, 3, 4, 5, 6]),
            [Low, Hard, Hard, Soft, Soft, High]
        );
        // hovering just around the soft threshold does not flap
        assert_eq!(
            walk(High, &[3, 5, 3, 5, 6, 5]),
            [Soft, Soft, Soft, Soft, High, High]
        );
    }

    #[test]
    fn a_big_rise_climbs_several_levels_at_once() {
        assert_eq!(walk(Low, &[50]), [High]);
        assert_eq!(walk(Low, &[4]), [Soft]);
    }

    #[test]
    fn falls_straight_to_the_state_of_the_level() {
        assert_eq!(walk(Soft, &[0]), [Low]);
        assert_eq!(High.next(0, 0, &FreeThresholds::default()), Low);
    }
}
