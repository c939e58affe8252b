//! dnsmasq's configuration for one network, as pure functions: its command line (static
//! DHCP only: the address manager decides every address) and the two files it rereads on
//! SIGHUP, the DHCP hosts (MAC → address) and the hosts file (VM name → address).

use std::ffi::OsString;
use std::fmt::Write;
use std::path::Path;

use crate::ipam::Network;

/// The files dnsmasq uses for a network, all in one directory of the daemon's state.
pub struct DnsmasqFiles<'a> {
    pub dhcp_hosts: &'a Path,
    pub hosts: &'a Path,
    pub pid: &'a Path,
}

/// The arguments of dnsmasq for `network` (without the program).
pub fn args(
    network: &Network,
    files: &DnsmasqFiles<'_>,
) -> Result<Vec<OsString>, crate::ipam::IpamError> {
    let subnet = network.subnet()?;
    let gateway = subnet.gateway();
    let name = &network.spec.name;
    let mut args: Vec<OsString> = [
        "--keep-in-foreground".to_string(),
        "--conf-file=/dev/null".into(),
        "--log-facility=-".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--bind-interfaces".into(),
        "--except-interface=lo".into(),
        format!("--interface={}", network.bridge()),
        format!("--listen-address={gateway}"),
        format!(
            "--dhcp-range={},static,{},infinite",
            subnet.net().network(),
            subnet.net().netmask()
        ),
        "--dhcp-authoritative".into(),
        "--leasefile-ro".into(),
        format!("--domain={name}"),
        format!("--local=/{name}/"),
        "--expand-hosts".into(),
        // The user and group dnsmasq drops to: root's own group stays out of reach.
        "--user=nobody".into(),
        "--group=nogroup".into(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    if !network.spec.nat {
        // No way out: no default route for the guests.
        args.push("--dhcp-option=option:router".into());
    }
    for (flag, path) in [
        ("--dhcp-hostsfile=", files.dhcp_hosts),
        ("--addn-hosts=", files.hosts),
        ("--pid-file=", files.pid),
    ] {
        let mut arg = OsString::from(flag);
        arg.push(path);
        args.push(arg);
    }
    Ok(args)
}

/// `MAC,IP` per lease: dnsmasq answers only these.
pub fn dhcp_hosts(network: &Network) -> String {
    let mut s = String::new();
    for lease in &network.leases {
        let _ = writeln!(s, "{},{}", lease.mac, lease.ip);
    }
    s
}

/// `IP NAME` per VM (its first NIC on the network), for DNS.
pub fn hosts(network: &Network) -> String {
    let mut s = String::new();
    let mut named: Vec<&str> = Vec::new();
    let mut leases: Vec<_> = network.leases.iter().collect();
    leases.sort_by_key(|l| (l.vm.as_str(), l.nic));
    for lease in leases {
        if !named.contains(&lease.vm.as_str()) {
            named.push(&lease.vm);
            let _ = writeln!(s, "{} {}", lease.ip, lease.vm);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::network::NetworkSpec;

    #[test]
    fn static_dhcp_and_names() {
        let mut n = Network {
            spec: NetworkSpec {
                name: "tenant-a".into(),
                subnet: "10.5.0.0/24".into(),
                nat: false,
                isolated: false,
            },
            id: 4,
            leases: Vec::new(),
        };
        n.lease("web", 0, &[]).expect("room");
        n.lease("web", 1, &[]).expect("room");
        n.lease("db", 0, &[]).expect("room");
        assert_eq!(
            dhcp_hosts(&n),
            "52:54:00:05:00:02,10.5.0.2\n52:54:00:05:00:03,10.5.0.3\n52:54:00:05:00:04,10.5.0.4\n"
        );
        assert_eq!(hosts(&n), "10.5.0.4 db\n10.5.0.2 web\n");
        let files = DnsmasqFiles {
            dhcp_hosts: Path::new("/s/dhcp-hosts"),
            hosts: Path::new("/s/hosts"),
            pid: Path::new("/s/pid"),
        };
        let args: Vec<String> = args(&n, &files)
            .expect("valid")
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for want in [
            "--interface=skbr4",
            "--listen-address=10.5.0.1",
            "--dhcp-range=10.5.0.0,static,255.255.255.0,infinite",
            "--domain=tenant-a",
            "--dhcp-option=option:router",
            "--dhcp-hostsfile=/s/dhcp-hosts",
            "--addn-hosts=/s/hosts",
        ] {
            assert!(
                args.iter().any(|a| a == want),
                "{want} missing from {args:?}"
            );
        }
        n.spec.nat = true;
        let args = super::args(&n, &files).expect("valid");
        assert!(!args.iter().any(|a| a == "--dhcp-option=option:router"));
    }
}
