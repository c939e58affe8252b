//! `skiff network ...`: managed networks of the host daemon (docs/network.md).

use anyhow::Result;
use clap::{Args, Subcommand};
use skiff_api::network::{NetworkInfo, NetworkSpec};

use crate::api_client::{call, call_json, DaemonAddress};

#[derive(Args)]
pub struct NetworkArgs {
    #[command(flatten)]
    address: DaemonAddress,
    #[command(subcommand)]
    action: NetworkAction,
}

#[derive(Subcommand)]
enum NetworkAction {
    /// Create a network: a bridge with the subnet's first address, DHCP and DNS for its VMs.
    Create {
        name: String,
        /// IPv4 CIDR, /8 to /29, e.g. 10.77.0.0/24.
        #[arg(long, value_name = "CIDR")]
        subnet: String,
        /// Let the VMs reach the host's uplink (masquerading).
        #[arg(long)]
        nat: bool,
        /// The VMs cannot reach each other, only the gateway.
        #[arg(long)]
        isolated: bool,
    },
    /// List the networks.
    #[command(alias = "list")]
    Ls {
        /// Print the JSON the API returns.
        #[arg(long)]
        json: bool,
    },
    /// A network with its leases (JSON).
    Inspect { name: String },
    /// Remove a network no VM uses.
    #[command(alias = "delete")]
    Rm { name: String },
}

pub fn run(args: NetworkArgs) -> Result<u8> {
    let client = args.address.client()?;
    match args.action {
        NetworkAction::Create {
            name,
            subnet,
            nat,
            isolated,
        } => {
            let spec = NetworkSpec {
                name,
                subnet,
                nat,
                isolated,
            };
            let info: NetworkInfo = call_json(
                &client,
                "POST",
                "/networks",
                Some(serde_json::to_vec(&spec)?),
            )?;
            println!("{} {} gateway {}", info.name, info.subnet, info.gateway);
        }
        NetworkAction::Ls { json } => {
            let body = call(&client, "GET", "/networks", None)?;
            if json {
                println!("{}", String::from_utf8_lossy(&body));
            } else {
                let nets: Vec<NetworkInfo> = serde_json::from_slice(&body)?;
                print!("{}", table(&nets));
            }
        }
        NetworkAction::Inspect { name } => {
            let body = call(&client, "GET", &format!("/networks/{name}"), None)?;
            let value: serde_json::Value = serde_json::from_slice(&body)?;
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        NetworkAction::Rm { name } => {
            call(&client, "DELETE", &format!("/networks/{name}"), None)?;
            println!("{name} removed");
        }
    }
    Ok(0)
}

/// NAME SUBNET GATEWAY BRIDGE NAT ISOLATED LEASES, aligned.
fn table(nets: &[NetworkInfo]) -> String {
    let mut rows = vec![[
        "NAME", "SUBNET", "GATEWAY", "BRIDGE", "NAT", "ISOLATED", "LEASES",
    ]
    .map(String::from)
    .to_vec()];
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    for n in nets {
        rows.push(vec![
            n.name.clone(),
            n.subnet.clone(),
            n.gateway.clone(),
            n.bridge.clone(),
            yes(n.nat),
            yes(n.isolated),
            n.leases.len().to_string(),
        ]);
    }
    crate::table::render(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_each_network() {
        let net = NetworkInfo {
            name: "tenant-a".into(),
            subnet: "10.7.0.0/24".into(),
            gateway: "10.7.0.1".into(),
            bridge: "skbr1".into(),
            nat: true,
            isolated: false,
            leases: Vec::new(),
            dnsmasq_pid: None,
            spoofed_dropped: 0,
        };
        let text = table(&[net]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME"));
        assert!(
            lines[1].starts_with("tenant-a  10.7.0.0/24  10.7.0.1"),
            "{text}"
        );
        assert!(lines[1].contains("yes"));
    }
}
