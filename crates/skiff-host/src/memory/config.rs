//! The memory manager's settings (`skiff host --memory-budget`, `--idle-tax`).

use skiff_mem_policy::{ConfigError, PolicyConfig};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryConfig {
    /// Host memory Skiff's VMs may use altogether (guest memory and VMM overheads); `None`:
    /// 90 % of the host's memory, the rest left to the host itself.
    pub budget_bytes: Option<u64>,
    /// Host swap or zram that VMs' max − min may be paged out to; `None`: the host's swap.
    pub reclaim_capacity_bytes: Option<u64>,
    pub policy: PolicyConfig,
    /// Start ksmd and set its scan rate; otherwise KSM is only reported.
    pub manage_ksm: bool,
}

impl MemoryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.policy.validate()
    }

    /// The budget on a host with `mem_total` bytes of memory.
    pub fn budget(&self, mem_total: u64) -> u64 {
        self.budget_bytes.unwrap_or(mem_total / 10 * 9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_defaults_to_most_of_the_host() {
        let config = MemoryConfig::default();
        assert_eq!(config.budget(10_000), 9_000);
        let fixed = MemoryConfig {
            budget_bytes: Some(2 << 30),
            ..MemoryConfig::default()
        };
        assert_eq!(fixed.budget(10_000), 2 << 30);
        assert!(fixed.validate().is_ok());
    }
}
