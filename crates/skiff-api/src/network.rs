//! Managed networks in the API: what `skiff network create` sends, what `inspect` shows, the
//! addresses a VM holds, and published ports (`8080:80/tcp`) on a NIC. docs/network.md.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A network's name ends up in file names and dnsmasq's domain: letters, digits and `-`,
/// starting with a letter, at most 32 characters.
pub fn check_network_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` must be 1 to 32 letters, digits or '-', starting with a letter"
        ))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A host port forwarded to a guest port: `HOSTPORT:GUESTPORT[/tcp|udp]` (default tcp).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMapping {
    pub host_port: u16,
    pub guest_port: u16,
    pub protocol: Protocol,
}

impl FromStr for PortMapping {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not HOSTPORT:GUESTPORT[/tcp|udp]");
        let (ports, protocol) = match s.split_once('/') {
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some(_) => return Err(bad()),
            None => (s, Protocol::Tcp),
        };
        let (host, guest) = ports.split_once(':').ok_or_else(bad)?;
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad()),
            Ok(n) => Ok(n),
        };
        Ok(PortMapping {
            host_port: port(host)?,
            guest_port: port(guest)?,
            protocol,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (h, g, p) = (self.host_port, self.guest_port, self.protocol.as_str());
        write!(f, "{h}:{g}/{p}")
    }
}

impl Serialize for PortMapping {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortMapping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `nics.publish`: only on managed NICs, and no host port twice in one spec.
pub(crate) fn check_publish(
    nic: &crate::NicSpec,
    earlier: &[crate::NicSpec],
) -> Result<(), String> {
    if nic.network.is_none() && !nic.publish.is_empty() {
        return Err("ports are published on managed networks only (`network = ...`)".into());
    }
    for (i, p) in nic.publish.iter().enumerate() {
        let taken = nic.publish[..i]
            .iter()
            .chain(earlier.iter().flat_map(|n| &n.publish))
            .any(|q| q.host_port == p.host_port && q.protocol == p.protocol);
        if taken {
            return Err(format!(
                "host port {}/{} is published twice",
                p.host_port,
                p.protocol.as_str()
            ));
        }
    }
    Ok(())
}

/// `POST /networks`: a network to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub name: String,
    /// IPv4 CIDR, e.g. `10.77.0.0/24`: the host holds the first address (the gateway).
    pub subnet: String,
    /// Guests reach the host's uplink through masquerading.
    #[serde(default)]
    pub nat: bool,
    /// Guests on this network cannot reach each other, only the gateway (and NAT).
    #[serde(default)]
    pub isolated: bool,
}

/// One NIC's address on a managed network: `GET /networks/{name}` and a VM's `addresses`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicAddress {
    pub vm: String,
    /// The NIC's index in the VM's spec.
    pub nic: usize,
    pub network: String,
    pub ip: String,
    pub mac: crate::MacAddr,
    pub tap: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<PortMapping>,
}

/// `GET /networks/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    pub subnet: String,
    /// The host's address on the network: gateway, DHCP and DNS server.
    pub gateway: String,
    pub bridge: String,
    pub nat: bool,
    pub isolated: bool,
    /// Every address handed out, by VM and NIC.
    pub leases: Vec<NicAddress>,
    /// dnsmasq's process, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnsmasq_pid: Option<i32>,
    /// Frames dropped by the anti-spoofing rules since the daemon loaded them.
    pub spoofed_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_parse_and_print() {
        let p: PortMapping = "8080:80".parse().expect("valid");
        assert_eq!(
            (p.host_port, p.guest_port, p.protocol),
            (8080, 80, Protocol::Tcp)
        );
        assert_eq!(p.to_string(), "8080:80/tcp");
        let u: PortMapping = "53:5353/udp".parse().expect("valid");
        assert_eq!(u.protocol, Protocol::Udp);
        for bad in [
            "80",
            "0:80",
            "80:0",
            "80:80/sctp",
            "x:80",
            "70000:80",
            "80:80/",
        ] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad}");
        }
    }

    #[test]
    fn network_names() {
        assert!(check_network_name("tenant-a").is_ok());
        for bad in ["", "1net", "a_b", "a.b", &"a".repeat(33)] {
            assert!(check_network_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn managed_nics_in_specs() {
        let spec = crate::VmSpec::from_toml(
            r#"
            kernel = "/k"
            memory = "256M"
            nics = [{ network = "tenant-a", publish = ["8080:80"] }, { tap = "tap0" }]
            "#,
        )
        .expect("valid");
        assert_eq!(spec.nics[0].network.as_deref(), Some("tenant-a"));
        assert_eq!(spec.nics[0].publish[0].host_port, 8080);
        let field = |json: &str| crate::VmSpec::from_json(json).err().and_then(|e| e.field());
        let base = r#"{"kernel":"/k","memory":"256M","nics":"#;
        assert_eq!(
            field(&format!(r#"{base}[{{"network":"a_b"}}]}}"#)),
            Some("nics.network")
        );
        assert_eq!(
            field(&format!(r#"{base}[{{"tap":"t","publish":["80:80"]}}]}}"#)),
            Some("nics.publish")
        );
        assert_eq!(
            field(&format!(
                r#"{base}[{{"network":"a","publish":["80:80"]}},{{"network":"b","publish":["80:81"]}}]}}"#
            )),
            Some("nics.publish")
        );
        assert_eq!(field(&format!(r#"{base}[{{}}]}}"#)), Some("nics.tap"));
    }
}
