//! The nftables rules of all managed networks, as one pure function of their records: the
//! daemon loads the result with `nft -f -` in one transaction whenever a network or a lease
//! changes (`nft.rs`). Two tables:
//!
//! - `bridge skiff`: anti-spoofing on every managed tap (its own MAC, IP and ARP sender only;
//!   drops counted per network in the named counter `spoof_<id>`), and no frames between the
//!   guests of an `isolated` network;
//! - `inet skiff`: guests reach the host only for DHCP, DNS and ping (never the daemon's API
//!   or anything else), networks never reach each other, `nat` networks reach the uplink
//!   through masquerading, and published ports are DNATed to their guest.

use std::fmt::Write;

use crate::ipam::Network;

/// The named counter of a network's anti-spoofing drops in `bridge skiff`.
pub fn spoof_counter(network: &Network) -> String {
    format!("spoof_{}", network.id)
}

/// The whole nft script for these networks; with none, a script removing both tables.
pub fn ruleset(networks: &[&Network]) -> String {
    if networks.is_empty() {
        return "table bridge skiff\ndelete table bridge skiff\n\
                table inet skiff\ndelete table inet skiff\n"
            .into();
    }
    let mut s = String::new();
    bridge_table(&mut s, networks);
    inet_table(&mut s, networks);
    s
}

fn quoted_set<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.map(|n| format!("\"{n}\"")).collect();
    format!("{{ {} }}", names.join(", "))
}

fn bridge_table(s: &mut String, networks: &[&Network]) {
    // `flush` keeps the named counters: their figures outlive a reload.
    s.push_str("add table bridge skiff\nflush table bridge skiff\ntable bridge skiff {\n");
    for n in networks {
        let _ = writeln!(s, "  counter {} {{ }}", spoof_counter(n));
    }
    s.push_str(
        "  chain prerouting {\n    type filter hook prerouting priority filter; policy accept;\n",
    );
    for n in networks {
        let counter = spoof_counter(n);
        for lease in &n.leases {
            let tap = n.tap(lease);
            let (mac, ip) = (lease.mac, lease.ip);
            let _ = write!(
                s,
                "    iifname \"{tap}\" ether saddr != {mac} counter name \"{counter}\" drop\n\
                 \x20   iifname \"{tap}\" ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept\n\
                 \x20   iifname \"{tap}\" ether type ip ip saddr != {ip} counter name \"{counter}\" drop\n\
                 \x20   iifname \"{tap}\" ether type arp arp saddr ether != {mac} counter name \"{counter}\" drop\n\
                 \x20   iifname \"{tap}\" ether type arp arp saddr ip != {{ 0.0.0.0, {ip} }} counter name \"{counter}\" drop\n\
                 \x20   iifname \"{tap}\" ether type != {{ ip, arp }} counter drop\n"
            );
        }
    }
    s.push_str(
        "  }\n  chain forward {\n    type filter hook forward priority filter; policy accept;\n",
    );
    // Bridged between two ports (a frame for the host goes to input instead): from a guest
    // of an isolated network, that can only be to another of its guests.
    for n in networks
        .iter()
        .filter(|n| n.spec.isolated && !n.leases.is_empty())
    {
        let taps: Vec<String> = n.leases.iter().map(|l| n.tap(l)).collect();
        let _ = writeln!(
            s,
            "    iifname {} counter drop",
            quoted_set(taps.iter().map(String::as_str))
        );
    }
    s.push_str("  }\n}\n");
}

fn inet_table(s: &mut String, networks: &[&Network]) {
    let bridges: Vec<String> = networks.iter().map(|n| n.bridge()).collect();
    let all = quoted_set(bridges.iter().map(String::as_str));
    s.push_str("add table inet skiff\nflush table inet skiff\ntable inet skiff {\n");
    s.push_str("  chain input {\n    type filter hook input priority filter; policy accept;\n");
    let _ = write!(
        s,
        "    iifname {all} ct state established,related accept\n\
         \x20   iifname {all} udp dport {{ 53, 67 }} accept\n\
         \x20   iifname {all} tcp dport 53 accept\n\
         \x20   iifname {all} icmp type echo-request accept\n\
         \x20   iifname {all} counter drop\n"
    );
    s.push_str(
        "  }\n  chain forward {\n    type filter hook forward priority filter; policy accept;\n",
    );
    let _ = writeln!(s, "    oifname {all} ct state established,related accept");
    for n in networks {
        let bridge = n.bridge();
        for lease in &n.leases {
            for p in &lease.publish {
                let _ = writeln!(
                    s,
                    "    oifname \"{bridge}\" ip daddr {} {} dport {} ct status dnat accept",
                    lease.ip,
                    p.protocol.as_str(),
                    p.guest_port
                );
            }
        }
        if n.spec.nat {
            let _ = writeln!(s, "    iifname \"{bridge}\" oifname != {all} accept");
        }
    }
    let _ = write!(
        s,
        "    iifname {all} counter drop\n    oifname {all} counter drop\n  }}\n"
    );
    s.push_str(
        "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n",
    );
    dnat_rules(s, networks);
    s.push_str("  }\n  chain output {\n    type nat hook output priority -100; policy accept;\n");
    dnat_rules(s, networks);
    s.push_str("  }\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
    for n in networks.iter().filter(|n| n.spec.nat) {
        if let Ok(subnet) = n.subnet() {
            let _ = writeln!(s, "    ip saddr {subnet} ip daddr != {subnet} masquerade");
        }
    }
    s.push_str("  }\n}\n");
}

/// Published ports: connections to the port on any of the host's own addresses go to the
/// guest (from outside through prerouting, from the host itself through output).
fn dnat_rules(s: &mut String, networks: &[&Network]) {
    for n in networks {
        for lease in &n.leases {
            for p in &lease.publish {
                let _ = writeln!(
                    s,
                    "    fib daddr type local {} dport {} dnat ip to {}:{}",
                    p.protocol.as_str(),
                    p.host_port,
                    lease.ip,
                    p.guest_port
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::network::NetworkSpec;

    fn network(name: &str, subnet: &str, id: u32, nat: bool, isolated: bool) -> Network {
        Network {
            spec: NetworkSpec {
                name: name.into(),
                subnet: subnet.into(),
                nat,
                isolated,
            },
            id,
            leases: Vec::new(),
        }
    }

    #[test]
    fn no_networks_remove_both_tables() {
        let s = ruleset(&[]);
        assert!(s.contains("delete table bridge skiff"));
        assert!(s.contains("delete table inet skiff"));
    }

    #[test]
    fn every_lease_is_held_to_its_mac_and_address() {
        let mut a = network("a", "10.1.0.0/24", 1, false, false);
        a.lease("web", 0, &[]).expect("room");
        let s = ruleset(&[&a]);
        assert!(s.contains(
            "iifname \"sk1n0\" ether saddr != 52:54:00:01:00:02 counter name \"spoof_1\" drop"
        ));
        assert!(s.contains(
            "iifname \"sk1n0\" ether type ip ip saddr != 10.1.0.2 counter name \"spoof_1\" drop"
        ));
        assert!(s.contains("arp saddr ip != { 0.0.0.0, 10.1.0.2 } counter name \"spoof_1\" drop"));
        assert!(s.contains("counter spoof_1 { }"));
        // Not a NAT network: no way out, and no masquerading.
        assert!(!s.contains("masquerade"));
        assert!(!s.contains("oifname != "));
        assert!(!s.contains("chain forward {\n    type filter hook forward priority filter; policy accept;\n    iifname"));
    }

    #[test]
    fn nat_isolation_and_published_ports() {
        let mut a = network("a", "10.1.0.0/24", 1, true, false);
        let mut b = network("b", "10.2.0.0/24", 2, false, true);
        let p = "8080:80".parse().expect("valid");
        a.lease("web", 0, &[p]).expect("room");
        b.lease("db", 0, &[]).expect("room");
        let s = ruleset(&[&a, &b]);
        let all = "{ \"skbr1\", \"skbr2\" }";
        assert!(s.contains(&format!("iifname \"skbr1\" oifname != {all} accept")));
        assert!(!s.contains("iifname \"skbr2\" oifname != "));
        assert!(s.contains(&format!("iifname {all} counter drop")));
        assert!(s.contains("ip saddr 10.1.0.0/24 ip daddr != 10.1.0.0/24 masquerade"));
        assert!(!s.contains("10.2.0.0/24 masquerade"));
        assert!(s.contains("    iifname { \"sk2n0\" } counter drop"));
        assert_eq!(
            s.matches("fib daddr type local tcp dport 8080 dnat ip to 10.1.0.2:80")
                .count(),
            2
        );
        assert!(
            s.contains("oifname \"skbr1\" ip daddr 10.1.0.2 tcp dport 80 ct status dnat accept")
        );
        // The guest's traffic to the host: DHCP, DNS and ping, then a drop.
        let input = s.split("chain input").nth(1).expect("input chain");
        let input = input.split("chain forward").next().expect("end");
        assert!(input.contains("udp dport { 53, 67 } accept"));
        assert!(input
            .trim_end()
            .ends_with(&format!("iifname {all} counter drop\n  }}").trim_end()));
    }
}
