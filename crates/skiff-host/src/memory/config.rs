//! The memory manager's settings (`skiff host --memory-budget`, `--idle-tax`,
//! `--sharing-domain`).

use skiff_api::MemorySpec;
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
    /// The one page-sharing domain whose VMs may be mergeable (`None`: the VMs without a
    /// domain). KSM merges across every mergeable process, so the daemon keeps every other
    /// domain's VMs unmergeable (docs/memory.md).
    pub sharing_domain: Option<String>,
}

impl MemoryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.policy.validate()
    }

    /// Whether a VM with `memory` may have KSM merge its pages: it did not opt out and it
    /// is in the host's sharing domain.
    pub fn may_share(&self, memory: &MemorySpec) -> bool {
        memory.page_sharing && memory.sharing_domain == self.sharing_domain
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

    #[test]
    fn only_the_sharing_domain_and_no_opted_out_vm_shares() {
        let vm = |domain: Option<&str>, page_sharing| MemorySpec {
            sharing_domain: domain.map(str::to_string),
            page_sharing,
            ..MemorySpec::of_size(skiff_api::ByteSize::from_mib(256))
        };
        let default = MemoryConfig::default();
        assert!(default.may_share(&vm(None, true)));
        assert!(!default.may_share(&vm(None, false)), "opted out");
        assert!(!default.may_share(&vm(Some("a"), true)), "another domain");
        let a = MemoryConfig {
            sharing_domain: Some("a".into()),
            ..MemoryConfig::default()
        };
        assert!(a.may_share(&vm(Some("a"), true)));
        assert!(!a.may_share(&vm(None, true)));
        assert!(!a.may_share(&vm(Some("b"), true)));
    }
}
