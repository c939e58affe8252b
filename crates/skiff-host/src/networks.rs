//! The daemon's managed networks (docs/network.md): each network's record with its leases in
//! `<state>/networks/<name>/network.json`, its bridge, its dnsmasq and the host's nftables
//! rules, kept in step with the records. VM creation leases addresses here (filling in each
//! managed NIC's tap, bridge and MAC), VM deletion frees them. The policy is skiff-net's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use skiff_api::network::{NetworkInfo, NetworkSpec, NicAddress, PortMapping, Protocol};
use skiff_api::VmSpec;
use skiff_net::dnsmasq::Dnsmasq;
use skiff_net::{dnsmasq_config, ipam, link, nft, rules, Network};

use crate::error::HostError;

/// The daemon's networks; cheap to clone.
#[derive(Clone)]
pub struct Networks {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    dnsmasq_bin: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    nets: BTreeMap<String, Network>,
    dnsmasq: BTreeMap<String, Dnsmasq>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn io_error(what: &str, path: &Path, e: impl std::fmt::Display) -> HostError {
    HostError::Network(format!("{what} {}: {e}", path.display()))
}

/// The files of one network.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn record(&self) -> PathBuf {
        self.dir.join("network.json")
    }
    fn dhcp_hosts(&self) -> PathBuf {
        self.dir.join("dhcp-hosts")
    }
    fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }
    fn pid(&self) -> PathBuf {
        self.dir.join("dnsmasq.pid")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("dnsmasq.log")
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<(), HostError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| io_error("cannot write", path, e))
}

impl Networks {
    /// Loads every network of `<state_dir>/networks` and brings it up again: bridge, files,
    /// dnsmasq and the rules. VMs keep their taps on the bridges meanwhile.
    pub async fn open(state_dir: &Path, dnsmasq_bin: PathBuf) -> Result<Networks, HostError> {
        let dir = state_dir.join("networks");
        std::fs::create_dir_all(&dir).map_err(|e| io_error("cannot create", &dir, e))?;
        let mut nets = BTreeMap::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| io_error("cannot read", &dir, e))?;
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path().join("network.json");
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue; // a network removed half-way: nothing to bring up
            };
            let net: Network =
                serde_json::from_str(&text).map_err(|e| io_error("cannot parse", &path, e))?;
            nets.insert(net.spec.name.clone(), net);
        }
        let networks = Networks {
            inner: Arc::new(Inner {
                dir,
                dnsmasq_bin,
                state: Mutex::new(State::default()),
            }),
        };
        for net in nets.values() {
            networks.bring_up(net).await?;
        }
        let mut state = lock(&networks.inner.state);
        for net in nets.values() {
            let dnsmasq = networks.start_dnsmasq(net)?;
            state.dnsmasq.insert(net.spec.name.clone(), dnsmasq);
        }
        state.nets = nets;
        if !state.nets.is_empty() {
            apply_rules(&state)?;
        }
        drop(state);
        Ok(networks)
    }

    fn files(&self, name: &str) -> Files {
        Files {
            dir: self.inner.dir.join(name),
        }
    }

    async fn bring_up(&self, net: &Network) -> Result<(), HostError> {
        let subnet = net
            .subnet()
            .map_err(|e| HostError::Network(e.to_string()))?;
        link::ensure_bridge(&net.bridge(), &subnet)
            .await
            .map_err(|e| HostError::Network(e.to_string()))?;
        if net.spec.nat {
            link::enable_forwarding()
                .map_err(|e| HostError::Network(format!("cannot turn on IPv4 forwarding: {e}")))?;
        }
        Ok(())
    }

    fn start_dnsmasq(&self, net: &Network) -> Result<Dnsmasq, HostError> {
        let files = self.files(&net.spec.name);
        self.write_hosts(net)?;
        let (dhcp_hosts, hosts, pid) = (files.dhcp_hosts(), files.hosts(), files.pid());
        let args = dnsmasq_config::args(
            net,
            &dnsmasq_config::DnsmasqFiles {
                dhcp_hosts: &dhcp_hosts,
                hosts: &hosts,
                pid: &pid,
            },
        )
        .map_err(|e| HostError::Network(e.to_string()))?;
        Ok(Dnsmasq::start(
            self.inner.dnsmasq_bin.clone(),
            args,
            files.log(),
            &pid,
        ))
    }

    fn write_hosts(&self, net: &Network) -> Result<(), HostError> {
        let files = self.files(&net.spec.name);
        write_atomic(&files.dhcp_hosts(), &dnsmasq_config::dhcp_hosts(net))?;
        write_atomic(&files.hosts(), &dnsmasq_config::hosts(net))
    }

    fn save(&self, net: &Network) -> Result<(), HostError> {
        let files = self.files(&net.spec.name);
        std::fs::create_dir_all(&files.dir)
            .map_err(|e| io_error("cannot create", &files.dir, e))?;
        let json = serde_json::to_string_pretty(net)
            .map_err(|e| HostError::Network(format!("cannot encode network: {e}")))?;
        write_atomic(&files.record(), &json)
    }

    // ---- the API's actions ----

    pub async fn create(&self, body: &[u8]) -> Result<NetworkInfo, HostError> {
        let spec: NetworkSpec =
            serde_json::from_slice(body).map_err(|e| HostError::Malformed(e.to_string()))?;
        let net = {
            let state = lock(&self.inner.state);
            if state.nets.contains_key(&spec.name) {
                return Err(HostError::Conflict(format!(
                    "name: a network named `{}` exists already",
                    spec.name
                )));
            }
            let existing: Vec<&Network> = state.nets.values().collect();
            let subnet =
                ipam::check_new(&spec, &existing).map_err(|(f, e)| HostError::invalid(f, e))?;
            if let Some(why) = ipam::overlapping(&subnet, &existing) {
                return Err(HostError::Conflict(format!("subnet: {why}")));
            }
            let id = ipam::next_id(&existing).ok_or_else(|| {
                HostError::invalid("name", format!("at most {} networks", ipam::MAX_NETWORKS))
            })?;
            Network {
                spec,
                id,
                leases: Vec::new(),
            }
        };
        self.save(&net)?;
        if let Err(e) = self.bring_up(&net).await {
            let _ = link::remove_link(&net.bridge()).await;
            let _ = std::fs::remove_dir_all(self.files(&net.spec.name).dir);
            return Err(e);
        }
        let name = net.spec.name.clone();
        let mut state = lock(&self.inner.state);
        let dnsmasq = self.start_dnsmasq(&net)?;
        state.dnsmasq.insert(name.clone(), dnsmasq);
        state.nets.insert(name.clone(), net);
        apply_rules(&state)?;
        info(&state, &name)
    }

    pub fn list(&self) -> Vec<NetworkInfo> {
        let state = lock(&self.inner.state);
        state
            .nets
            .keys()
            .filter_map(|name| info(&state, name).ok())
            .collect()
    }

    pub fn inspect(&self, name: &str) -> Result<NetworkInfo, HostError> {
        info(&lock(&self.inner.state), name)
    }

    /// Removes a network no VM uses: rules, dnsmasq, bridge and files.
    pub async fn remove(&self, name: &str) -> Result<(), HostError> {
        let (net, dnsmasq) = {
            let mut state = lock(&self.inner.state);
            let net = state.nets.get(name).ok_or_else(|| not_found(name))?;
            let users = net.vms();
            if !users.is_empty() {
                return Err(HostError::Conflict(format!(
                    "network `{name}` is in use by VM{} {}: delete {} first",
                    if users.len() == 1 { "" } else { "s" },
                    users.join(", "),
                    if users.len() == 1 { "it" } else { "them" },
                )));
            }
            let net = state.nets.remove(name).ok_or_else(|| not_found(name))?;
            apply_rules(&state)?;
            (net, state.dnsmasq.remove(name))
        };
        nft::remove_counter(&rules::spoof_counter(&net));
        if let Some(dnsmasq) = dnsmasq {
            dnsmasq.stop().await;
        }
        link::remove_link(&net.bridge())
            .await
            .map_err(|e| HostError::Network(e.to_string()))?;
        let dir = self.files(name).dir;
        std::fs::remove_dir_all(&dir).map_err(|e| io_error("cannot remove", &dir, e))
    }

    // ---- VMs ----

    /// Leases an address for each managed NIC of `vm` and fills in its tap, bridge and MAC;
    /// all or nothing. Returns the addresses.
    pub fn attach(&self, vm: &str, spec: &mut VmSpec) -> Result<Vec<NicAddress>, HostError> {
        if spec.nics.iter().all(|n| n.network.is_none()) {
            return Ok(Vec::new());
        }
        let mut state = lock(&self.inner.state);
        let before = state.nets.clone();
        let result = lease_all(&mut state, vm, spec);
        if result.is_err() {
            state.nets = before;
            return result;
        }
        let changed: Vec<String> = spec.nics.iter().filter_map(|n| n.network.clone()).collect();
        let saved = changed.iter().try_for_each(|name| {
            let net = state.nets.get(name).ok_or_else(|| not_found(name))?;
            self.save(net)?;
            self.write_hosts(net)
        });
        if let Err(e) = saved.and_then(|()| apply_rules(&state)) {
            state.nets = before;
            return Err(e);
        }
        for name in changed {
            if let Some(d) = state.dnsmasq.get(&name) {
                d.reload();
            }
        }
        result
    }

    /// Frees every lease of `vm` (it was deleted).
    pub fn release(&self, vm: &str) -> Result<(), HostError> {
        let mut state = lock(&self.inner.state);
        let mut changed = Vec::new();
        for (name, net) in state.nets.iter_mut() {
            if net.release(vm) > 0 {
                changed.push(name.clone());
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        for name in &changed {
            let net = state.nets.get(name).ok_or_else(|| not_found(name))?;
            self.save(net)?;
            self.write_hosts(net)?;
            if let Some(d) = state.dnsmasq.get(name) {
                d.reload();
            }
        }
        apply_rules(&state)
    }

    /// Stops every dnsmasq (the daemon is ending; bridges and rules stay for the VMs).
    pub async fn shutdown(&self) {
        let all: Vec<Dnsmasq> = {
            let mut state = lock(&self.inner.state);
            std::mem::take(&mut state.dnsmasq).into_values().collect()
        };
        for d in all {
            d.stop().await;
        }
    }
}

fn not_found(name: &str) -> HostError {
    HostError::NotFoundNamed {
        kind: "network",
        name: name.to_string(),
    }
}

fn lease_all(state: &mut State, vm: &str, spec: &mut VmSpec) -> Result<Vec<NicAddress>, HostError> {
    let mut addresses = Vec::new();
    for (index, nic) in spec.nics.iter_mut().enumerate() {
        let Some(name) = nic.network.clone() else {
            continue;
        };
        if !state.nets.contains_key(&name) {
            return Err(HostError::invalid(
                "nics.network",
                format!("no network named `{name}` (see `skiff network ls`)"),
            ));
        }
        for p in &nic.publish {
            check_port_free(state, vm, p)?;
        }
        let net = state.nets.get_mut(&name).ok_or_else(|| not_found(&name))?;
        let lease = net
            .lease(vm, index, &nic.publish)
            .map_err(|e| HostError::invalid("nics.network", e.to_string()))?;
        nic.tap = net.tap(&lease);
        nic.bridge = Some(net.bridge());
        nic.mac = Some(lease.mac);
        addresses.push(address(net, &lease));
    }
    Ok(addresses)
}

/// A published host port must be free: not published by another VM, and not bound on the
/// host (tried by binding it).
fn check_port_free(state: &State, vm: &str, p: &PortMapping) -> Result<(), HostError> {
    let (port, proto) = (p.host_port, p.protocol);
    let taken = state.nets.values().flat_map(|n| &n.leases).find(|l| {
        l.vm != vm
            && l.publish
                .iter()
                .any(|q| q.host_port == port && q.protocol == proto)
    });
    if let Some(other) = taken {
        return Err(HostError::invalid(
            "nics.publish",
            format!(
                "host port {port}/{} is already published by VM `{}`",
                proto.as_str(),
                other.vm
            ),
        ));
    }
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
    let bound = match proto {
        Protocol::Tcp => std::net::TcpListener::bind(addr).map(drop),
        Protocol::Udp => std::net::UdpSocket::bind(addr).map(drop),
    };
    match bound {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(HostError::invalid(
            "nics.publish",
            format!("host port {port}/{} is in use on the host", proto.as_str()),
        )),
        _ => Ok(()),
    }
}

fn address(net: &Network, lease: &skiff_net::Lease) -> NicAddress {
    NicAddress {
        vm: lease.vm.clone(),
        nic: lease.nic,
        network: net.spec.name.clone(),
        ip: lease.ip.to_string(),
        mac: lease.mac,
        tap: net.tap(lease),
        publish: lease.publish.clone(),
    }
}

fn apply_rules(state: &State) -> Result<(), HostError> {
    let nets: Vec<&Network> = state.nets.values().collect();
    nft::load(&rules::ruleset(&nets)).map_err(|e| HostError::Network(e.to_string()))
}

fn info(state: &State, name: &str) -> Result<NetworkInfo, HostError> {
    let net = state.nets.get(name).ok_or_else(|| not_found(name))?;
    let subnet = net
        .subnet()
        .map_err(|e| HostError::Network(e.to_string()))?;
    Ok(NetworkInfo {
        name: name.to_string(),
        subnet: subnet.to_string(),
        gateway: subnet.gateway().to_string(),
        bridge: net.bridge(),
        nat: net.spec.nat,
        isolated: net.spec.isolated,
        leases: net.leases.iter().map(|l| address(net, l)).collect(),
        dnsmasq_pid: state.dnsmasq.get(name).and_then(Dnsmasq::pid),
        spoofed_dropped: nft::counter_packets(&rules::spoof_counter(net)).unwrap_or(0),
    })
}
