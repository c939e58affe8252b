//! The IP address manager of one network, as pure functions over its persisted record: each
//! (VM, NIC) holds one lease (address, MAC, tap name) until the VM is deleted, so addresses
//! stay the same across VM and daemon restarts. Also the checks a new network must pass.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use skiff_api::network::{check_network_name, NetworkSpec, PortMapping};
use skiff_api::MacAddr;

use crate::subnet::Subnet;

/// Network ids name bridges (`skbr<id>`) and taps (`sk<id>n<index>`): 15 bytes at most.
pub const MAX_NETWORKS: u32 = 9999;

/// One NIC's address on the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub vm: String,
    pub nic: usize,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<PortMapping>,
}

/// A network as the daemon keeps it on disk: what was asked for, its id and its leases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub spec: NetworkSpec,
    pub id: u32,
    #[serde(default)]
    pub leases: Vec<Lease>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("network `{network}` ({subnet}) has no address left: its {capacity} guest addresses are all leased")]
    Full {
        network: String,
        subnet: String,
        capacity: u32,
    },
    #[error("network `{0}` has an invalid subnet in its record: {1}")]
    BadRecord(String, String),
}

impl Network {
    pub fn subnet(&self) -> Result<Subnet, IpamError> {
        Subnet::parse(&self.spec.subnet)
            .map_err(|e| IpamError::BadRecord(self.spec.name.clone(), e))
    }

    pub fn bridge(&self) -> String {
        format!("skbr{}", self.id)
    }

    /// The tap of a lease: unique on the host while the lease is.
    pub fn tap(&self, lease: &Lease) -> String {
        let index = self
            .subnet()
            .ok()
            .and_then(|s| s.guest_index(lease.ip))
            .unwrap_or(0);
        format!("sk{}n{index}", self.id)
    }

    /// The lease of NIC `nic` of `vm`: the one it holds, else the lowest free address.
    pub fn lease(
        &mut self,
        vm: &str,
        nic: usize,
        publish: &[PortMapping],
    ) -> Result<Lease, IpamError> {
        if let Some(held) = self.leases.iter_mut().find(|l| l.vm == vm && l.nic == nic) {
            held.publish = publish.to_vec();
            return Ok(held.clone());
        }
        let subnet = self.subnet()?;
        let free = (0..subnet.capacity())
            .filter_map(|n| subnet.guest(n))
            .find(|ip| self.leases.iter().all(|l| l.ip != *ip))
            .ok_or_else(|| IpamError::Full {
                network: self.spec.name.clone(),
                subnet: subnet.to_string(),
                capacity: subnet.capacity(),
            })?;
        let lease = Lease {
            vm: vm.to_string(),
            nic,
            ip: free,
            mac: mac_for(free),
            publish: publish.to_vec(),
        };
        self.leases.push(lease.clone());
        Ok(lease)
    }

    /// Frees every lease of `vm`; returns how many there were.
    pub fn release(&mut self, vm: &str) -> usize {
        let before = self.leases.len();
        self.leases.retain(|l| l.vm != vm);
        before - self.leases.len()
    }

    /// The VMs holding a lease, each once, sorted.
    pub fn vms(&self) -> Vec<String> {
        let mut vms: Vec<String> = self.leases.iter().map(|l| l.vm.clone()).collect();
        vms.sort();
        vms.dedup();
        vms
    }
}

/// A lease's MAC: locally administered 52:54:00 and the address's last three bytes, so it
/// is unique on its network and tells the address at a glance.
pub fn mac_for(ip: Ipv4Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([0x52, 0x54, 0x00, o[1], o[2], o[3]])
}

/// Checks a network to create against the existing ones' names: (field, reason) on failure.
/// Its subnet against theirs is [`overlapping`]: a conflict with them, not a malformed request.
pub fn check_new(
    spec: &NetworkSpec,
    existing: &[&Network],
) -> Result<Subnet, (&'static str, String)> {
    check_network_name(&spec.name).map_err(|e| ("name", e))?;
    if existing.iter().any(|n| n.spec.name == spec.name) {
        return Err(("name", format!("network `{}` already exists", spec.name)));
    }
    Subnet::parse(&spec.subnet).map_err(|e| ("subnet", e))
}

/// Why `subnet` cannot be had beside the existing networks: the first one it overlaps.
pub fn overlapping(subnet: &Subnet, existing: &[&Network]) -> Option<String> {
    existing
        .iter()
        .find(|other| other.subnet().is_ok_and(|s| s.overlaps(subnet)))
        .map(|other| {
            format!(
                "{subnet} overlaps network `{}` ({})",
                other.spec.name, other.spec.subnet
            )
        })
}

/// The lowest id no existing network has.
pub fn next_id(existing: &[&Network]) -> Option<u32> {
    (1..=MAX_NETWORKS).find(|id| existing.iter().all(|n| n.id != *id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(name: &str, subnet: &str, id: u32) -> Network {
        Network {
            spec: NetworkSpec {
                name: name.into(),
                subnet: subnet.into(),
                nat: false,
                isolated: false,
            },
            id,
            leases: Vec::new(),
        }
    }

    #[test]
    fn leases_are_stable_and_freed_with_their_vm() {
        let mut n = network("a", "10.9.0.0/29", 3);
        let web = n.lease("web", 0, &[]).expect("free");
        assert_eq!(web.ip, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(web.mac.to_string(), "52:54:00:09:00:02");
        assert_eq!(n.tap(&web), "sk3n0");
        assert_eq!(n.bridge(), "skbr3");
        let db = n.lease("db", 0, &[]).expect("free");
        assert_eq!(db.ip, Ipv4Addr::new(10, 9, 0, 3));
        // Asked again (a restart), the same lease; a publish change is kept.
        let p: PortMapping = "8080:80".parse().expect("valid");
        let again = n.lease("web", 0, &[p]).expect("held");
        assert_eq!(again.ip, web.ip);
        assert_eq!(again.publish, vec![p]);
        assert_eq!(n.vms(), vec!["db".to_string(), "web".to_string()]);
        assert_eq!(n.release("web"), 1);
        // The freed address is the lowest free one again.
        assert_eq!(n.lease("new", 0, &[]).expect("free").ip, web.ip);
    }

    #[test]
    fn a_full_subnet_says_so() {
        let mut n = network("small", "10.9.0.0/29", 1);
        for i in 0..5 {
            n.lease(&format!("vm{i}"), 0, &[]).expect("room");
        }
        let err = n.lease("vm5", 0, &[]).expect_err("full");
        assert!(err.to_string().contains("10.9.0.0/29"), "{err}");
        assert!(err.to_string().contains("5 guest addresses"), "{err}");
    }

    #[test]
    fn new_networks_are_checked_against_the_others() {
        let a = network("a", "10.1.0.0/16", 1);
        let b = network("b", "10.2.0.0/24", 2);
        let existing = [&a, &b];
        let spec = |name: &str, subnet: &str| NetworkSpec {
            name: name.into(),
            subnet: subnet.into(),
            nat: true,
            isolated: false,
        };
        let field = |s: NetworkSpec| check_new(&s, &existing).err().map(|(f, _)| f);
        assert_eq!(field(spec("c", "10.3.0.0/24")), None);
        assert_eq!(field(spec("a", "10.3.0.0/24")), Some("name"));
        assert_eq!(field(spec("c d", "10.3.0.0/24")), Some("name"));
        assert_eq!(field(spec("c", "10.3.0.0/30")), Some("subnet"));
        let overlap = |s: &str| {
            let subnet = check_new(&spec("c", s), &existing).expect("a well-formed subnet");
            overlapping(&subnet, &existing)
        };
        assert_eq!(overlap("10.3.0.0/24"), None);
        let why = overlap("10.1.7.0/24").expect("overlaps a");
        assert!(why.contains("network `a`"), "{why}");
        let why = overlap("10.0.0.0/8").expect("overlaps a and b");
        assert!(why.contains("network `a`"), "{why}");
        assert_eq!(next_id(&existing), Some(3));
        assert_eq!(next_id(&[&b]), Some(1));
    }
}
