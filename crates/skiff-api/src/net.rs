//! Network interfaces and vsock in the VM spec: `nics = [{ tap = "tap0", bridge = "br0",
//! mac = "52:54:00:12:34:56" }]` and `vsock = { cid = 3 }`; on the command line
//! `--nic tap=NAME[,bridge=BR][,mac=MAC]` and `--vsock cid=N`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Linux interface names are at most 15 bytes.
const MAX_IFNAME: usize = 15;
/// CIDs 0-2 are reserved (hypervisor, local, host); u32::MAX is `VMADDR_CID_ANY`.
pub const MIN_GUEST_CID: u64 = 3;
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// A MAC address, written `52:54:00:12:34:56`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a MAC address like 52:54:00:12:34:56");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            // Two hex digits (from_str_radix alone would take a sign: `+f`).
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A virtio-net interface on a tap (created if missing), optionally enslaved to a bridge;
/// or, under the host daemon, on a managed network (`network`): the daemon then fills in
/// `tap`, `bridge` and `mac` from the network's address manager (docs/network.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tap: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The guest's MAC; default a random locally administered 52:54:00:xx:xx:xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// A managed network of the host daemon (`skiff network create`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Host ports forwarded to this NIC's address (managed networks only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<crate::network::PortMapping>,
}

/// The command-line form: `tap=NAME[,bridge=BR][,mac=MAC]` (a bare `NAME` first works too).
impl FromStr for NicSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut nic = NicSpec::default();
        for (i, part) in s.split(',').enumerate() {
            match part.split_once('=') {
                Some(("tap", t)) => nic.tap = t.to_string(),
                Some(("bridge", b)) => nic.bridge = Some(b.to_string()),
                Some(("mac", m)) => nic.mac = Some(m.parse()?),
                None if i == 0 => nic.tap = part.to_string(),
                _ => {
                    return Err(format!(
                        "unknown NIC option `{part}` (expected tap=NAME, bridge=BR, mac=MAC)"
                    ))
                }
            }
        }
        check_ifname(&nic.tap).map_err(|e| format!("tap: {e}"))?;
        Ok(nic)
    }
}

/// A vsock device: host programs reach the guest at `cid` with AF_VSOCK sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockSpec {
    pub cid: u64,
}

/// The command-line form: `cid=N` (a bare `N` works too).
impl FromStr for VsockSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n = s.strip_prefix("cid=").unwrap_or(s);
        let cid = n
            .parse()
            .map_err(|_| format!("`{s}` is not cid=N with a number N"))?;
        Ok(VsockSpec { cid })
    }
}

fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFNAME {
        return Err(format!("`{name}` must be 1 to {MAX_IFNAME} bytes"));
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return Err(format!("`{name}` has `/`, `:`, a space or NUL"));
    }
    Ok(())
}

/// The checks `VmSpec::validate` runs on `nics` and `vsock`: (field, reason) on failure.
pub(crate) fn validate(
    nics: &[NicSpec],
    vsock: Option<&VsockSpec>,
) -> Result<(), (&'static str, String)> {
    for (i, nic) in nics.iter().enumerate() {
        if let Some(network) = &nic.network {
            crate::network::check_network_name(network).map_err(|e| ("nics.network", e))?;
            if nic.tap.is_empty() && (nic.bridge.is_some() || nic.mac.is_some()) {
                return Err((
                    "nics.network",
                    "a managed NIC gets its tap, bridge and MAC from its network".into(),
                ));
            }
        }
        crate::network::check_publish(nic, &nics[..i]).map_err(|e| ("nics.publish", e))?;
        if nic.network.is_some() && nic.tap.is_empty() {
            continue; // the daemon names its tap
        }
        check_ifname(&nic.tap).map_err(|e| ("nics.tap", e))?;
        if let Some(bridge) = &nic.bridge {
            check_ifname(bridge).map_err(|e| ("nics.bridge", e))?;
        }
        if let Some(mac) = nic.mac {
            if mac.0[0] & 1 != 0 {
                return Err(("nics.mac", format!("{mac} is a multicast address")));
            }
        }
        if nics[..i].iter().any(|other| other.tap == nic.tap) {
            return Err(("nics.tap", format!("`{}` is used twice", nic.tap)));
        }
    }
    if let Some(v) = vsock {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&v.cid) {
            return Err((
                "vsock.cid",
                format!(
                    "{} is reserved or too large (use {MIN_GUEST_CID} to {MAX_GUEST_CID})",
                    v.cid
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_flag_syntax() {
        let n: NicSpec = "tap=tap0,bridge=br0,mac=52:54:00:AB:cd:01"
            .parse()
            .expect("valid");
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.bridge.as_deref(), Some("br0"));
        assert_eq!(n.mac, Some(MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 1])));
        assert_eq!(
            n.mac.map(|m| m.to_string()).as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        let bare: NicSpec = "tap1".parse().expect("valid");
        assert_eq!(bare.tap, "tap1");
        assert!("tap=tap0,mac=52:54:00:ab:cd".parse::<NicSpec>().is_err());
        assert!("tap=tap0,mac=+2:54:00:ab:cd:01".parse::<NicSpec>().is_err());
        assert!("tap=tap0,mac=52:54:00:ab:cd:01:02"
            .parse::<NicSpec>()
            .is_err());
        assert!("tap=tap0,queues=2".parse::<NicSpec>().is_err());
        assert!("tap=a-name-that-is-too-long".parse::<NicSpec>().is_err());
    }

    #[test]
    fn spec_files_with_nics_and_vsock() {
        let spec = crate::VmSpec::from_toml(
            r#"
            kernel = "/k"
            memory = "256M"
            vsock = { cid = 3 }
            [[nics]]
            tap = "tap0"
            bridge = "br0"
            mac = "52:54:00:12:34:56"
            [[nics]]
            tap = "tap1"
            "#,
        )
        .expect("valid");
        assert_eq!(spec.nics.len(), 2);
        assert_eq!(spec.nics[0].bridge.as_deref(), Some("br0"));
        assert_eq!(spec.nics[1].mac, None);
        assert_eq!(spec.vsock, Some(VsockSpec { cid: 3 }));
        let json = r#"{"kernel":"/k","memory":"256M","vsock":{"cid":1}}"#;
        let err = crate::VmSpec::from_json(json).expect_err("CID 1 is reserved");
        assert_eq!(err.field(), Some("vsock.cid"));
        let json = r#"{"kernel":"/k","memory":"256M","nics":[{"tap":"t","mac":"zz"}]}"#;
        assert!(crate::VmSpec::from_json(json).is_err());
        let json = r#"{"kernel":"/k","memory":"256M","nics":[{"tap":"t"},{"tap":"t"}]}"#;
        let err = crate::VmSpec::from_json(json).expect_err("same tap twice");
        assert_eq!(err.field(), Some("nics.tap"));
    }

    #[test]
    fn vsock_flag_syntax_and_checks() {
        assert_eq!("cid=3".parse::<VsockSpec>(), Ok(VsockSpec { cid: 3 }));
        assert_eq!("42".parse::<VsockSpec>(), Ok(VsockSpec { cid: 42 }));
        assert!("cid=x".parse::<VsockSpec>().is_err());
        assert!(validate(&[], Some(&VsockSpec { cid: 2 })).is_err());
        assert!(validate(&[], Some(&VsockSpec { cid: 3 })).is_ok());
        let nic: NicSpec = "tap0,mac=01:00:5e:00:00:01".parse().expect("syntax");
        assert_eq!(validate(&[nic], None).map_err(|(f, _)| f), Err("nics.mac"));
    }
}
