//! CPU controls: a relative weight (shares) and a hard limit (quota per period), and the
//! CPU time a group used.
//!
//! | | v1 | v2 |
//! |---|---|---|
//! | weight | `cpu.shares` (2..262144, default 1024) | `cpu.weight` (1..10000, default 100) |
//! | limit | `cpu.cfs_quota_us`, `cpu.cfs_period_us` | `cpu.max` (`QUOTA PERIOD` or `max PERIOD`) |
//! | usage | `cpuacct.usage` (ns) | `cpu.stat` `usage_usec` |

use std::time::Duration;

use crate::cgroup::Cgroup;
use crate::error::{CgroupError, Result};
use crate::files;

/// cgroup v1's range for cpu.shares (the kernel's MIN_SHARES and MAX_SHARES).
pub const MIN_SHARES: u64 = 2;
pub const MAX_SHARES: u64 = 262_144;
const DEFAULT_SHARES_V1: u64 = 1024;
const DEFAULT_WEIGHT_V2: u64 = 100;
const MIN_WEIGHT: u64 = 1;
const MAX_WEIGHT: u64 = 10_000;

/// v2's cpu.weight for v1 cpu.shares: proportional, 1024 shares = weight 100, clamped to
/// 1..10000. This is how the kernel itself relates the two (and systemd's conversion): it keeps
/// the ratio between groups, which is what shares mean. The linear map of 2..262144 onto
/// 1..10000 that OCI runtimes used turns 1024 into 39 and 20:10 into 1:1.
pub fn shares_to_weight(shares: u64) -> u64 {
    let scaled = shares
        .saturating_mul(DEFAULT_WEIGHT_V2)
        .saturating_add(DEFAULT_SHARES_V1 / 2);
    let weight = scaled / DEFAULT_SHARES_V1;
    weight.clamp(MIN_WEIGHT, MAX_WEIGHT)
}

/// A hard CPU limit: at most `quota_us` of CPU time (summed over all CPUs) in every
/// `period_us`. 50_000 / 100_000 is half a CPU; 200_000 / 100_000 is two CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuQuota {
    quota_us: u64,
    period_us: u64,
}

impl CpuQuota {
    /// The scheduler's default period (100 ms).
    pub const DEFAULT_PERIOD_US: u64 = 100_000;
    /// The kernel's bounds: a period of 1 ms to 1 s, a quota of at least 1 ms.
    const MIN_PERIOD_US: u64 = 1_000;
    const MAX_PERIOD_US: u64 = 1_000_000;
    const MIN_QUOTA_US: u64 = 1_000;
    /// The kernel refuses quotas that overflow its fixed-point ratio; no host has this many CPUs.
    const MAX_QUOTA_US: u64 = 1 << 40;

    pub fn new(quota_us: u64, period_us: u64) -> Result<CpuQuota> {
        if !(Self::MIN_PERIOD_US..=Self::MAX_PERIOD_US).contains(&period_us) {
            return Err(CgroupError::InvalidValue {
                what: "cpu quota period",
                value: format!("{period_us} us"),
                reason: "must be 1000 to 1000000 us",
            });
        }
        if !(Self::MIN_QUOTA_US..=Self::MAX_QUOTA_US).contains(&quota_us) {
            return Err(CgroupError::InvalidValue {
                what: "cpu quota",
                value: format!("{quota_us} us"),
                reason: "must be at least 1000 us per period",
            });
        }
        Ok(CpuQuota {
            quota_us,
            period_us,
        })
    }

    /// `cpus` CPUs' worth of time (0.25 = a quarter of one CPU) per default period.
    pub fn from_cpus(cpus: f64) -> Result<CpuQuota> {
        let quota = cpus * Self::DEFAULT_PERIOD_US as f64;
        if !quota.is_finite() || quota < 0.0 || quota > Self::MAX_QUOTA_US as f64 {
            return Err(CgroupError::InvalidValue {
                what: "cpu quota",
                value: format!("{cpus} CPUs"),
                reason: "must be a positive number of CPUs",
            });
        }
        CpuQuota::new(quota.round() as u64, Self::DEFAULT_PERIOD_US)
    }

    /// `percent` of one CPU (50 = half a CPU, 200 = two CPUs) per default period.
    pub fn from_percent(percent: u32) -> Result<CpuQuota> {
        CpuQuota::new(
            u64::from(percent) * Self::DEFAULT_PERIOD_US / 100,
            Self::DEFAULT_PERIOD_US,
        )
    }

    pub fn quota_us(&self) -> u64 {
        self.quota_us
    }

    pub fn period_us(&self) -> u64 {
        self.period_us
    }

    /// How many CPUs' worth of time this allows.
    pub fn cpus(&self) -> f64 {
        self.quota_us as f64 / self.period_us as f64
    }
}

/// CPU time a group used, and how often its quota stopped it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// CPU time of all the group's tasks since the group was created.
    pub usage: Duration,
    /// Quota periods in which the group ran, and those that ended with it throttled.
    pub periods: u64,
    pub throttled_periods: u64,
    /// Time the group spent throttled.
    pub throttled: Duration,
}

impl Cgroup {
    /// Sets the group's weight in v1 cpu.shares units (2..262144; 1024 is the default of
    /// every other group); on v2 converted by [`shares_to_weight`].
    pub fn set_cpu_shares(&self, shares: u64) -> Result<()> {
        if !(MIN_SHARES..=MAX_SHARES).contains(&shares) {
            return Err(CgroupError::InvalidValue {
                what: "cpu shares",
                value: shares.to_string(),
                reason: "must be 2 to 262144",
            });
        }
        let dir = self.controller_dir("cpu")?;
        if self.is_unified() {
            files::write(
                &dir.join("cpu.weight"),
                &shares_to_weight(shares).to_string(),
            )
        } else {
            files::write(&dir.join("cpu.shares"), &shares.to_string())
        }
    }

    /// Limits the group to a quota of CPU time per period; `None` lifts the limit.
    pub fn set_cpu_quota(&self, quota: Option<CpuQuota>) -> Result<()> {
        let dir = self.controller_dir("cpu")?;
        if self.is_unified() {
            let value = match quota {
                Some(q) => format!("{} {}", q.quota_us, q.period_us),
                None => "max".to_string(),
            };
            return files::write(&dir.join("cpu.max"), &value);
        }
        let quota_file = dir.join("cpu.cfs_quota_us");
        match quota {
            Some(q) => {
                // Lift the old quota first: a new period must agree with whatever quota is set.
                files::write(&quota_file, "-1")?;
                files::write(&dir.join("cpu.cfs_period_us"), &q.period_us.to_string())?;
                files::write(&quota_file, &q.quota_us.to_string())
            }
            None => files::write(&quota_file, "-1"),
        }
    }

    /// The quota in force, if any.
    pub fn cpu_quota(&self) -> Result<Option<CpuQuota>> {
        let dir = self.controller_dir("cpu")?;
        if self.is_unified() {
            let path = dir.join("cpu.max");
            let text = files::read(&path)?;
            return parse_quota(&path, &text);
        }
        let path = dir.join("cpu.cfs_quota_us");
        let quota = files::read(&path)?;
        let period = files::read(&dir.join("cpu.cfs_period_us"))?;
        parse_quota(&path, &format!("{} {}", quota.trim(), period.trim()))
    }

    /// CPU time the group's tasks used since it was created.
    pub fn cpu_usage(&self) -> Result<Duration> {
        let dir = self.controller_dir("cpuacct")?;
        if self.is_unified() {
            let path = dir.join("cpu.stat");
            let stat = files::read_keyed(&path)?;
            Ok(Duration::from_micros(files::keyed_value(
                &path,
                &stat,
                "usage_usec",
            )?))
        } else {
            Ok(Duration::from_nanos(files::read_u64(
                &dir.join("cpuacct.usage"),
            )?))
        }
    }

    /// Usage and throttling (v1 needs both the cpu and the cpuacct trees).
    pub fn cpu_stat(&self) -> Result<CpuStat> {
        let usage = self.cpu_usage()?;
        let path = self.controller_dir("cpu")?.join("cpu.stat");
        let stat = files::read_keyed(&path)?;
        let throttled = if self.is_unified() {
            Duration::from_micros(files::keyed_value(&path, &stat, "throttled_usec")?)
        } else {
            Duration::from_nanos(files::keyed_value(&path, &stat, "throttled_time")?)
        };
        Ok(CpuStat {
            usage,
            periods: files::keyed_value(&path, &stat, "nr_periods")?,
            throttled_periods: files::keyed_value(&path, &stat, "nr_throttled")?,
            throttled,
        })
    }
}

/// `QUOTA PERIOD` in microseconds; a quota of `max` (v2) or `-1` (v1) is no limit.
fn parse_quota(path: &std::path::Path, text: &str) -> Result<Option<CpuQuota>> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let number = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| files::parse_error(path, text, "expected microseconds"))
    };
    match words.as_slice() {
        ["max" | "-1", ..] => Ok(None),
        [quota, period] => CpuQuota::new(number(quota)?, number(period)?).map(Some),
        _ => Err(files::parse_error(path, text, "expected `QUOTA PERIOD`")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{fake_v1, fake_v2, read};

    #[test]
    fn weight_keeps_the_ratio_of_shares() {
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(2048), 200);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(MAX_SHARES), MAX_WEIGHT);
        // Skiff's default of 1000 shares and twice that.
        assert_eq!((shares_to_weight(1000), shares_to_weight(2000)), (98, 195));
        assert_eq!(shares_to_weight(u64::MAX), MAX_WEIGHT);
    }

    #[test]
    fn quota_constructors_and_bounds() {
        let q = CpuQuota::from_cpus(0.25).unwrap();
        assert_eq!((q.quota_us(), q.period_us()), (25_000, 100_000));
        assert_eq!(CpuQuota::from_percent(250).unwrap().quota_us(), 250_000);
        assert_eq!(CpuQuota::from_percent(50).unwrap().cpus(), 0.5);
        assert!(CpuQuota::from_cpus(0.001).is_err(), "under 1 ms per period");
        assert!(CpuQuota::from_cpus(f64::NAN).is_err());
        assert!(CpuQuota::from_cpus(-1.0).is_err());
        assert!(CpuQuota::new(50_000, 10).is_err());
        let err = CpuQuota::from_percent(0).unwrap_err().to_string();
        assert!(err.contains("cpu quota") && err.contains("0 us"), "{err}");
    }

    #[test]
    fn v1_files() {
        let fake = fake_v1(true);
        let group = fake.group("vm1");
        group.set_cpu_shares(2048).unwrap();
        assert_eq!(read(&fake.v1_dir("cpu", "vm1"), "cpu.shares"), "2048");
        group
            .set_cpu_quota(Some(CpuQuota::new(25_000, 50_000).unwrap()))
            .unwrap();
        assert_eq!(
            read(&fake.v1_dir("cpu", "vm1"), "cpu.cfs_quota_us"),
            "25000"
        );
        assert_eq!(
            read(&fake.v1_dir("cpu", "vm1"), "cpu.cfs_period_us"),
            "50000"
        );
        assert_eq!(group.cpu_quota().unwrap().map(|q| q.cpus()), Some(0.5));
        group.set_cpu_quota(None).unwrap();
        assert_eq!(read(&fake.v1_dir("cpu", "vm1"), "cpu.cfs_quota_us"), "-1");
        assert_eq!(group.cpu_quota().unwrap(), None);

        std::fs::write(
            fake.v1_dir("cpuacct", "vm1").join("cpuacct.usage"),
            "2500000000\n",
        )
        .unwrap();
        std::fs::write(
            fake.v1_dir("cpu", "vm1").join("cpu.stat"),
            "nr_periods 10\nnr_throttled 4\nthrottled_time 300000000\nnr_bursts 0\nburst_time 0\n",
        )
        .unwrap();
        assert_eq!(
            group.cpu_stat().unwrap(),
            CpuStat {
                usage: Duration::from_millis(2500),
                periods: 10,
                throttled_periods: 4,
                throttled: Duration::from_millis(300),
            }
        );
    }

    #[test]
    fn v2_files() {
        let fake = fake_v2("cpu memory");
        let group = fake.group("vm1");
        group.set_cpu_shares(2000).unwrap();
        assert_eq!(read(&fake.v2_dir("vm1"), "cpu.weight"), "195");
        group
            .set_cpu_quota(Some(CpuQuota::from_cpus(0.25).unwrap()))
            .unwrap();
        assert_eq!(read(&fake.v2_dir("vm1"), "cpu.max"), "25000 100000");
        assert_eq!(
            group.cpu_quota().unwrap().map(|q| q.quota_us()),
            Some(25_000)
        );
        group.set_cpu_quota(None).unwrap();
        assert_eq!(read(&fake.v2_dir("vm1"), "cpu.max"), "max");
        assert_eq!(group.cpu_quota().unwrap(), None);

        std::fs::write(
            fake.v2_dir("vm1").join("cpu.stat"),
            "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnr_periods 7\nnr_throttled 2\nthrottled_usec 40000\n",
        )
        .unwrap();
        let stat = group.cpu_stat().unwrap();
        assert_eq!(stat.usage, Duration::from_millis(1500));
        assert_eq!((stat.periods, stat.throttled_periods), (7, 2));
        assert_eq!(stat.throttled, Duration::from_millis(40));
    }

    #[test]
    fn out_of_range_shares_name_the_value() {
        let fake = fake_v2("cpu");
        let err = fake.group("vm1").set_cpu_shares(1).unwrap_err().to_string();
        assert!(err.contains("cpu shares") && err.contains(" 1 "), "{err}");
    }
}
