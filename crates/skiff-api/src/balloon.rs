//! The balloon in the data model: its spec (`[balloon]` in a VM spec) and the figures the
//! VMM reports in its stats.

use serde::{Deserialize, Serialize};

/// The virtio-balloon device. On by default: the memory manager needs it on every VM, and
/// free page reporting is what returns memory a guest freed to the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalloonSpec {
    pub enabled: bool,
    /// Seconds between requests for the guest's memory statistics; 0 offers no stats queue.
    pub stats_interval_secs: u32,
    /// Let the guest report free memory, which the VMM returns to the host.
    pub free_page_reporting: bool,
    /// Let the guest take pages back from the balloon when it would otherwise OOM.
    pub deflate_on_oom: bool,
}

impl Default for BalloonSpec {
    fn default() -> Self {
        BalloonSpec {
            enabled: true,
            stats_interval_secs: 1,
            free_page_reporting: true,
            deflate_on_oom: true,
        }
    }
}

/// The longest stats interval accepted (a day).
pub const MAX_STATS_INTERVAL_SECS: u32 = 86_400;

/// The balloon as the VMM sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStats {
    /// What the host asked for: memory to take from the guest.
    pub target_bytes: u64,
    /// What the guest's driver says the balloon holds (config `actual`).
    pub actual_bytes: u64,
    /// Bytes returned to the host by inflation since boot.
    pub inflated_bytes: u64,
    /// Bytes returned to the host by free page reporting since boot.
    pub reported_bytes: u64,
    /// The guest's latest statistics, if it sent any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestMemoryStats>,
}

/// The guest's own memory figures from the stats queue (bytes, except fault counts).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMemoryStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    /// How long ago the guest sent them.
    pub age_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_partial_tables() {
        let b: BalloonSpec = toml::from_str("stats_interval_secs = 5").expect("parse");
        assert_eq!(
            b,
            BalloonSpec {
                stats_interval_secs: 5,
                ..BalloonSpec::default()
            }
        );
        assert!(toml::from_str::<BalloonSpec>("size = 1").is_err());
    }
}
