//! The policy's tunables, checked once when a [`crate::MemoryPolicy`] is made.

use serde::{Deserialize, Serialize};

/// The allocation granularity: targets are whole pages.
pub const PAGE_SIZE: u64 = 4096;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// τ, the idle-memory tax rate in [0, 1): an idle page costs its VM k = 1/(1−τ) times an
    /// active one. 0 is plain proportional sharing; the paper's default is 0.75 (k = 4).
    pub tax_rate: f64,
    pub thresholds: FreeThresholds,
    /// How far past what a VM's guest says it uses it may grow before its surplus is given to
    /// others, as a fraction of its max (see `allocation`: demand).
    pub demand_headroom: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            tax_rate: 0.75,
            thresholds: FreeThresholds::default(),
            demand_headroom: 0.05,
        }
    }
}

/// Free memory thresholds as fractions of the budget (the paper's 6/4/2/1 %). A state is
/// entered when free memory falls below its threshold and left when free memory rises back
/// past the next-higher state's threshold (`state`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreeThresholds {
    pub high: f64,
    pub soft: f64,
    pub hard: f64,
    pub low: f64,
}

impl Default for FreeThresholds {
    fn default() -> Self {
        FreeThresholds {
            high: 0.06,
            soft: 0.04,
            hard: 0.02,
            low: 0.01,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("the idle tax rate must be in [0, 1), not {0}")]
    TaxRate(f64),
    #[error(
        "free memory thresholds must satisfy 1 > high > soft > hard > low > 0, \
         not high {high}, soft {soft}, hard {hard}, low {low}"
    )]
    Thresholds {
        high: f64,
        soft: f64,
        hard: f64,
        low: f64,
    },
    #[error("the demand headroom must be in [0, 1], not {0}")]
    DemandHeadroom(f64),
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        // `contains` is false for NaN, so NaN is refused too.
        if !(0.0..1.0).contains(&self.tax_rate) {
            return Err(ConfigError::TaxRate(self.tax_rate));
        }
        let t = self.thresholds;
        let ordered = 1.0 > t.high && t.high > t.soft && t.soft > t.hard && t.hard > t.low;
        if !(ordered && t.low > 0.0) {
            return Err(ConfigError::Thresholds {
                high: t.high,
                soft: t.soft,
                hard: t.hard,
                low: t.low,
            });
        }
        if !(0.0..=1.0).contains(&self.demand_headroom) {
            return Err(ConfigError::DemandHeadroom(self.demand_headroom));
        }
        Ok(())
    }

    /// k = 1/(1−τ): what an idle page costs relative to an active one.
    pub fn idle_cost_factor(&self) -> f64 {
        1.0 / (1.0 - self.tax_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tax_rate_must_be_below_one() {
        for bad in [1.0, 1.5, -0.1, f64::NAN] {
            let config = PolicyConfig {
                tax_rate: bad,
                ..PolicyConfig::default()
            };
            assert!(matches!(config.validate(), Err(ConfigError::TaxRate(_))));
        }
        let config = PolicyConfig {
            tax_rate: 0.0,
            ..PolicyConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.idle_cost_factor(), 1.0);
        assert_eq!(PolicyConfig::default().idle_cost_factor(), 4.0);
    }

    #[test]
    fn thresholds_must_descend() {
        let config = PolicyConfig {
            thresholds: FreeThresholds {
                soft: 0.07,
                ..FreeThresholds::default()
            },
            ..PolicyConfig::default()
        };
        let err = config.validate().expect_err("soft above high");
        assert!(err.to_string().contains("high > soft"), "{err}");
        let config = PolicyConfig {
            thresholds: FreeThresholds {
                low: 0.0,
                ..FreeThresholds::default()
            },
            ..PolicyConfig::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn reads_a_partial_table() {
        let config: PolicyConfig =
            serde_json::from_str(r#"{"tax_rate":0.5,"thresholds":{"low":0.005}}"#).expect("json");
        assert_eq!(config.tax_rate, 0.5);
        assert_eq!(config.thresholds.low, 0.005);
        assert_eq!(config.thresholds.high, 0.06);
    }
}
