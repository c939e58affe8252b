//! `skiff vm ...`: manage VMs through the host daemon.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use skiff_api::image::{StaticAddress, VmFromImage};
use skiff_api::model::{Event, VmInfo};
use skiff_api::{ByteSize, VmSpec};

use crate::api_client::{call, call_json, DaemonAddress};

#[derive(Args)]
pub struct VmArgs {
    #[command(flatten)]
    address: DaemonAddress,
    #[command(subcommand)]
    action: VmAction,
}

#[derive(Subcommand)]
enum VmAction {
    /// Define a VM from a spec file (TOML, or JSON if it ends in .json), or, as
    /// `create NAME --image IMG`, from a stored image: its disk a new copy-on-write overlay
    /// of the image, its kernel the image's own.
    Create {
        /// The VM's name (with --image).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        name: Option<String>,
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        /// The image to make the VM from (a name, sha256:HEX or a digest prefix).
        #[arg(long, requires = "name", conflicts_with = "file")]
        image: Option<String>,
        #[command(flatten)]
        from_image: FromImageArgs,
        /// Start it too.
        #[arg(long)]
        start: bool,
    },
    /// List the VMs.
    #[command(alias = "list")]
    Ls {
        /// Print the JSON the API returns.
        #[arg(long)]
        json: bool,
    },
    Start {
        name: String,
    },
    /// Stop a VM: the guest gets its power button pressed and the timeout to shut down,
    /// then its power is cut.
    Stop {
        name: String,
        /// Seconds the guest gets to shut down [default: the daemon's --stop-timeout].
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Cut the power at once.
        #[arg(long)]
        force: bool,
    },
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Delete a VM (stopping it first).
    #[command(alias = "delete")]
    Rm {
        name: String,
    },
    /// Everything the daemon knows about a VM (JSON).
    Inspect {
        name: String,
    },
    /// What happened to a VM (JSON lines).
    Events {
        name: String,
    },
    /// The end of a VM's serial console output.
    Logs {
        name: String,
    },
    /// Attach to a VM's serial console (on the daemon's machine); Ctrl-] detaches.
    Console {
        name: String,
    },
    /// SSH to a VM made from an image, at the address its seed gave it.
    Ssh {
        name: String,
        /// The user to log in as.
        #[arg(long, default_value = "root")]
        user: String,
        /// The private key (ssh's -i).
        #[arg(short = 'i', long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// A command to run instead of a shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
}

/// How a VM made from an image differs from the defaults.
#[derive(Args)]
struct FromImageArgs {
    /// The disk's virtual size (at least the image's), e.g. 10G.
    #[arg(long, value_name = "SIZE", requires = "image", value_parser = crate::image::parse_size)]
    disk_size: Option<ByteSize>,
    #[arg(long, requires = "image")]
    vcpus: Option<u32>,
    /// Guest memory, e.g. 1G [default: 512M].
    #[arg(long, requires = "image", value_parser = crate::image::parse_size)]
    memory: Option<ByteSize>,
    /// Added to the image's kernel command line.
    #[arg(long, requires = "image", default_value = "")]
    cmdline: String,
    /// A network interface: tap=NAME[,bridge=BR][,mac=MAC] (repeatable).
    #[arg(long = "nic", value_name = "SPEC", requires = "image")]
    nics: Vec<skiff_api::NicSpec>,
    /// An SSH public key file the guest authorizes (repeatable).
    #[arg(long = "ssh-key", value_name = "FILE", requires = "image")]
    ssh_keys: Vec<PathBuf>,
    /// cloud-init user-data to pass through (a #cloud-config or a script).
    #[arg(long, value_name = "FILE", requires = "image")]
    user_data: Option<PathBuf>,
    /// A static address for the first NIC, e.g. 10.0.2.15/24 (needs --nic).
    #[arg(long, value_name = "ADDR/PREFIX", requires = "nics")]
    ip: Option<String>,
    #[arg(long, value_name = "ADDR", requires = "ip")]
    gateway: Option<String>,
    /// A DNS server for the guest (repeatable).
    #[arg(long, value_name = "ADDR", requires = "ip")]
    dns: Vec<String>,
}

impl FromImageArgs {
    fn request(self, name: String, image: String) -> Result<VmFromImage> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let ssh_keys = self
            .ssh_keys
            .iter()
            .map(|p| read(p).map(|k| k.trim().to_string()))
            .collect::<Result<Vec<_>>>()?;
        Ok(VmFromImage {
            name,
            image,
            disk_size: self.disk_size,
            vcpus: self.vcpus,
            memory: self.memory,
            cmdline: self.cmdline,
            nics: self.nics,
            restart: Default::default(),
            ssh_keys,
            user_data: self.user_data.as_ref().map(read).transpose()?,
            network: self.ip.map(|address| StaticAddress {
                address,
                gateway: self.gateway,
                dns: self.dns,
            }),
        })
    }
}

pub fn run(args: VmArgs) -> Result<u8> {
    let client = args.address.client()?;
    let vm_path = |name: &str, action: &str| format!("/vms/{name}{action}");
    match args.action {
        VmAction::Create {
            name,
            file,
            image,
            from_image,
            start,
        } => {
            let body = match (file, image, name) {
                (Some(file), _, _) => serde_json::to_vec(&read_spec(&file)?)?,
                (None, Some(image), Some(name)) => {
                    serde_json::to_vec(&from_image.request(name, image)?)?
                }
                _ => anyhow::bail!("give -f FILE, or NAME --image IMAGE"),
            };
            let path = if start { "/vms?start=true" } else { "/vms" };
            let info: VmInfo = call_json(&client, "POST", path, Some(body))?;
            println!("{} {}", info.name, info.state.as_str());
        }
        VmAction::Ls { json } => {
            let body = call(&client, "GET", "/vms", None)?;
            if json {
                println!("{}", String::from_utf8_lossy(&body));
            } else {
                let vms: Vec<VmInfo> = serde_json::from_slice(&body)?;
                print!("{}", table(&vms));
            }
        }
        VmAction::Start { name } => {
            print_state(call_json(&client, "POST", &vm_path(&name, "/start"), None)?)
        }
        VmAction::Stop {
            name,
            timeout,
            force,
        } => {
            let mut params = Vec::new();
            if let Some(t) = timeout {
                params.push(format!("timeout_secs={t}"));
            }
            if force {
                params.push("force=true".to_string());
            }
            let query = if params.is_empty() {
                String::new()
            } else {
                format!("?{}", params.join("&"))
            };
            print_state(call_json(
                &client,
                "POST",
                &vm_path(&name, &format!("/stop{query}")),
                None,
            )?)
        }
        VmAction::Pause { name } => {
            print_state(call_json(&client, "POST", &vm_path(&name, "/pause"), None)?)
        }
        VmAction::Resume { name } => print_state(call_json(
            &client,
            "POST",
            &vm_path(&name, "/resume"),
            None,
        )?),
        VmAction::Rm { name } => {
            call(&client, "DELETE", &vm_path(&name, ""), None)?;
            println!("{name} deleted");
        }
        VmAction::Inspect { name } => {
            let body = call(&client, "GET", &vm_path(&name, ""), None)?;
            let value: serde_json::Value = serde_json::from_slice(&body)?;
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        VmAction::Events { name } => {
            let events: Vec<Event> = call_json(&client, "GET", &vm_path(&name, "/events"), None)?;
            for event in events {
                println!("{}", serde_json::to_string(&event)?);
            }
        }
        VmAction::Logs { name } => {
            let body = call(&client, "GET", &vm_path(&name, "/console"), None)?;
            print!("{}", String::from_utf8_lossy(&body));
        }
        VmAction::Console { name } => {
            let info: VmInfo = call_json(&client, "GET", &vm_path(&name, ""), None)?;
            crate::attach::attach(&info)?;
        }
        VmAction::Ssh {
            name,
            user,
            identity,
            command,
        } => {
            let info: VmInfo = call_json(&client, "GET", &vm_path(&name, ""), None)?;
            return ssh(&info, &user, identity.as_deref(), &command);
        }
    }
    Ok(0)
}

/// Runs ssh to the VM's address (its spec's, from its seed), without host key checks: a
/// VM's host keys are new on its first boot.
fn ssh(info: &VmInfo, user: &str, identity: Option<&Path>, command: &[String]) -> Result<u8> {
    let address = info
        .spec
        .address
        .as_deref()
        .and_then(|a| a.split('/').next())
        .with_context(|| {
            format!(
                "VM {} has no address: create it from an image with --ip",
                info.name
            )
        })?;
    let mut ssh = std::process::Command::new("ssh");
    ssh.args([
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
    ]);
    if let Some(key) = identity {
        ssh.arg("-i").arg(key);
    }
    ssh.arg(format!("{user}@{address}")).args(command);
    let status = ssh.status().context("cannot run ssh (openssh-client)")?;
    Ok(status
        .code()
        .map_or(255, |c| u8::try_from(c).unwrap_or(255)))
}

fn print_state(info: VmInfo) {
    match &info.reason {
        Some(reason) => println!("{} {} ({reason})", info.name, info.state.as_str()),
        None => println!("{} {}", info.name, info.state.as_str()),
    }
}

/// Reads a spec file; relative paths in it are taken from the file's directory, since the
/// daemon runs elsewhere.
fn read_spec(path: &Path) -> Result<VmSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut spec = if path.extension().is_some_and(|e| e == "json") {
        VmSpec::from_json(&text)
    } else {
        VmSpec::from_toml(&text)
    }
    .with_context(|| format!("invalid spec {}", path.display()))?;
    let base = std::path::absolute(path.parent().unwrap_or(Path::new(".")))?;
    let absolute = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    absolute(&mut spec.kernel);
    if let Some(initrd) = spec.initrd.as_mut() {
        absolute(initrd);
    }
    for disk in &mut spec.disks {
        absolute(&mut disk.path);
    }
    Ok(spec)
}

/// An aligned table: NAME STATE VCPUS MEMORY PID RESTARTS, then the memory manager's
/// figures in MiB (`-` while it has none): TARGET ALLOC ACTIVE BALLOON SHARED. PID is the
/// VMM's (a jailed VMM's, not its supervisor's: the process that uses the VM's CPU and memory).
/// ADDRESSES: NETWORK:IP of each NIC on a managed network.
fn table(vms: &[VmInfo]) -> String {
    let addresses = |vm: &VmInfo| {
        let all: Vec<String> = vm
            .addresses
            .iter()
            .map(|a| format!("{}:{}", a.network, a.ip))
            .collect();
        if all.is_empty() {
            "-".to_string()
        } else {
            all.join(",")
        }
    };
    let header = [
        "NAME",
        "STATE",
        "VCPUS",
        "MEMORY",
        "PID",
        "RESTARTS",
        "TARGET",
        "ALLOC",
        "ACTIVE",
        "BALLOON",
        "SHARED",
        "ADDRESSES",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    for vm in vms {
        let mib = |field: fn(&skiff_api::model::VmMemoryStatus) -> u64| {
            vm.memory
                .as_ref()
                .map_or("-".into(), |m| (field(m) >> 20).to_string())
        };
        rows.push(vec![
            vm.name.clone(),
            vm.state.as_str().to_string(),
            vm.spec.vcpus.to_string(),
            vm.spec.memory.size.to_string(),
            vm.vmm_pid.or(vm.pid).map_or("-".into(), |p| p.to_string()),
            vm.restarts.to_string(),
            mib(|m| m.target_bytes),
            mib(|m| m.allocated_bytes),
            mib(|m| m.active_bytes),
            mib(|m| m.ballooned_bytes),
            mib(|m| m.shared_bytes),
            addresses(vm),
        ]);
    }
    crate::table::render(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_line_up() {
        let spec =
            VmSpec::from_json(r#"{"name":"web-1","kernel":"/k","memory":"128M"}"#).expect("spec");
        let vm = |name: &str, pid| VmInfo {
            name: name.into(),
            state: skiff_api::model::VmState::Running,
            desired: skiff_api::model::Desired::Running,
            spec: spec.clone(),
            pid,
            vmm_pid: pid.map(|p: i32| p + 1),
            jail: None,
            restarts: 0,
            reason: None,
            stats: None,
            console: skiff_api::model::ConsoleFiles {
                input: String::new(),
                log: String::new(),
            },
            memory: None,
            addresses: Vec::new(),
        };
        let text = table(&[vm("a", Some(12345)), vm("a-much-longer-name", None)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let state_col = lines[0].find("STATE").expect("header");
        assert!(
            lines
                .iter()
                .skip(1)
                .all(|l| l[state_col..].starts_with("running")),
            "{text}"
        );
        assert!(lines[1].contains(" 12346 "), "the VMM's pid: {text}");
        assert!(lines[2].contains(" - "), "no pid shows as -: {text}");
    }
}
