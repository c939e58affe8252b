//! What the VMM measures of a guest's memory for the host's memory manager, and the reclaim
//! it offers: working-set sampling (spec and figures), page sharing (KSM figures and a
//! shareable-page estimate) and hypervisor-level reclaim (request and report).

use serde::{Deserialize, Serialize};

/// A reclaim request stops after this long with what it has (its report says so), so a
/// VMM's control socket, which serves one request at a time, stays live; clients wait this
/// long plus a margin for its answer.
/// What a VM's VMM may hold beyond its guest memory before its control group's memory limit
/// stops it: its own heap and threads (about 3 MiB), KVM's page tables (about 1/512 of guest
/// memory) and the page cache of its disks, with room to spare: 64 MiB + 1/64 of the guest's
/// memory. The limit is enforced, so it must never be reached by a healthy VMM.
pub fn vmm_overhead_bound(memory_bytes: u64) -> u64 {
    (64 << 20) + memory_bytes / 64
}

/// The memory limit of a VM's control group (`memory.max`, v1 `memory.limit_in_bytes`): its
/// guest memory plus [`vmm_overhead_bound`].
pub fn vm_memory_limit(memory_bytes: u64) -> u64 {
    memory_bytes.saturating_add(vmm_overhead_bound(memory_bytes))
}

pub const RECLAIM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// Working-set sampling (`[working_set]` in a VM spec): every period the VMM write-protects
/// `pages` random guest pages and counts how many the guest wrote by the period's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkingSetSpec {
    /// Seconds per sampling period; 0 turns sampling (and KVM dirty logging) off.
    pub period_secs: u32,
    /// Guest pages sampled per period.
    pub pages: u32,
}

/// ESX's defaults (Waldspurger, OSDI 2002): 100 pages every 30 seconds.
/// ESX's setting: 100 pages every 30 s.
impl Default for WorkingSetSpec {
    fn default() -> Self {
        WorkingSetSpec {
            period_secs: 30,
            pages: 100,
        }
    }
}

/// The longest sampling period accepted (a day).
pub const MAX_SAMPLING_PERIOD_SECS: u32 = 86_400;
/// The most pages sampled per period: each costs a write fault when the guest touches it.
pub const MAX_SAMPLED_PAGES: u32 = 65_536;

impl WorkingSetSpec {
    /// Why these settings cannot be used, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.period_secs > MAX_SAMPLING_PERIOD_SECS {
            return Err(format!(
                "a period of {} s is more than {MAX_SAMPLING_PERIOD_SECS} s",
                self.period_secs
            ));
        }
        if self.period_secs > 0 && !(1..=MAX_SAMPLED_PAGES).contains(&self.pages) {
            return Err(format!(
                "{} pages per period is not within 1..={MAX_SAMPLED_PAGES}",
                self.pages
            ));
        }
        Ok(())
    }
}

/// One finished sampling period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkingSetSample {
    /// Pages write-protected at the start of the period.
    pub sampled: u32,
    /// Of those, pages the guest wrote before the period ended.
    pub touched: u32,
}

/// The working-set estimate as the VMM reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkingSetStats {
    pub period_secs: u32,
    pub pages: u32,
    /// Whether KVM dirty logging is on for guest RAM (off when the period is 0).
    pub dirty_logging: bool,
    /// Finished periods since boot (periods cut short by a pause or a change of settings
    /// are not counted).
    pub periods: u64,
    /// The latest periods, oldest first.
    pub recent: Vec<WorkingSetSample>,
    /// Fast and slow exponentially weighted moving averages of touched / sampled (absent
    /// before the first period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow: Option<f64>,
    /// The estimate of the active fraction f of guest RAM: the larger of the two averages,
    /// so it rises quickly when the guest becomes busy and falls slowly when it idles
    /// (skiff-mem-policy's `WorkingSetEstimator`). 1 before the first period: memory not
    /// yet measured counts as active.
    pub active_fraction: f64,
}

/// Page sharing figures of one VM.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SharingStats {
    /// Guest RAM is MADV_MERGEABLE: KSM may merge it.
    pub mergeable: bool,
    /// The sharing domain from the spec (`memory.sharing_domain`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The kernel's per-process KSM counters, where this kernel has them.
    pub ksm: KsmStats,
    /// Shareable pages estimated from a hashed sample of resident guest pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<ShareableEstimate>,
}

/// `/proc/self/ksm_stat` and `/proc/self/ksm_merging_pages`; a field is absent when the
/// kernel does not report it (ksm_process_profit needs Linux 6.6, ksm_zero_pages 6.10).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KsmStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmap_items: Option<u64>,
    /// Pages of this process currently merged with another page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merging_pages: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_pages: Option<u64>,
    /// Bytes saved by merging minus KSM's own metadata for this process (may be negative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_profit: Option<i64>,
}

/// What a hashed random sample of resident guest pages says about sharing potential.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShareableEstimate {
    /// Resident pages hashed.
    pub sampled: u32,
    /// Of those, pages that are all zeros.
    pub zero: u32,
    /// Of those, non-zero pages with the same content as an earlier page of the sample.
    pub duplicate: u32,
    /// (zero + duplicate) / sampled: a lower bound of the fraction of resident guest memory
    /// KSM could merge within this VM (duplicates outside the sample are not seen).
    pub fraction: f64,
}

/// How hypervisor-level reclaim treats the pages it picks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReclaimMode {
    /// MADV_PAGEOUT: write the pages to host swap (zram or disk) now.
    #[default]
    Pageout,
    /// MADV_COLD: only mark them as the first to go when the host needs memory.
    Cold,
}

/// The outcome of a reclaim request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReclaimReport {
    pub mode: ReclaimMode,
    pub requested_bytes: u64,
    /// Guest memory advised (paged out or marked cold).
    pub advised_bytes: u64,
    /// Guest memory that left the host's RAM: guest resident bytes before minus after.
    pub reclaimed_bytes: u64,
    pub guest_resident_before: u64,
    pub guest_resident_after: u64,
    /// Resident pages left alone because the working-set sample saw them written recently.
    pub spared_hot_bytes: u64,
    /// Passes over guest memory (a page-out makes a second one when the first fell short:
    /// the first clears the accessed bits of pages it had to keep).
    pub sweeps: u32,
    pub elapsed_ms: u64,
    /// Why less than requested was reclaimed, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Running totals of hypervisor-level reclaim since boot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReclaimStats {
    pub requests: u64,
    pub reclaimed_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_set_defaults_and_checks() {
        let spec: WorkingSetSpec = toml::from_str("period_secs = 2").expect("parse");
        assert_eq!((spec.period_secs, spec.pages), (2, 100));
        assert!(spec.check().is_ok());
        let off = WorkingSetSpec {
            period_secs: 0,
            pages: 0,
        };
        assert!(off.check().is_ok(), "sampling off needs no pages");
        let no_pages = WorkingSetSpec {
            period_secs: 1,
            pages: 0,
        };
        assert!(no_pages.check().is_err());
        let too_long = WorkingSetSpec {
            period_secs: MAX_SAMPLING_PERIOD_SECS + 1,
            pages: 100,
        };
        assert!(too_long.check().is_err());
        assert!(toml::from_str::<WorkingSetSpec>("rate = 1").is_err());
    }

    #[test]
    fn reclaim_mode_wire_names() {
        assert_eq!(
            serde_json::to_string(&ReclaimMode::Pageout).expect("json"),
            r#""pageout""#
        );
        assert_eq!(
            serde_json::from_str::<ReclaimMode>(r#""cold""#).expect("parse"),
            ReclaimMode::Cold
        );
    }

    #[test]
    fn absent_ksm_fields_are_left_out() {
        let ksm = KsmStats {
            rmap_items: Some(10),
            merging_pages: Some(4),
            ..KsmStats::default()
        };
        let text = serde_json::to_string(&ksm).expect("json");
        assert_eq!(text, r#"{"rmap_items":10,"merging_pages":4}"#);
        assert_eq!(serde_json::from_str::<KsmStats>(&text).expect("parse"), ksm);
    }
}
