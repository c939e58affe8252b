//! Skiff's managed networks (docs/network.md). The policy is pure and unit-tested: subnets
//! (`subnet`), the address manager persisted with each network (`ipam`), the nftables rules
//! (`rules`) and dnsmasq's configuration (`dnsmasq_config`). The I/O is thin: bridges over
//! rtnetlink (`link`), `nft` (`nft`) and one supervised dnsmasq per network (`dnsmasq`).

pub mod dnsmasq;
pub mod dnsmasq_config;
pub mod ipam;
pub mod link;
pub mod nft;
pub mod rules;
pub mod subnet;

pub use ipam::{Lease, Network};
pub use subnet::Subnet;
