//! `skiff host`: run the host daemon; `skiff host status`: ask it how it is.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use skiff_api::model::HostStatus;
use skiff_api::ByteSize;
use skiff_host::image_dirs::ImageDirs;
use skiff_host::jail::JailConfig;
use skiff_host::memory::{MemoryConfig, PolicyConfig};
use skiff_host::server::ServeOptions;
use skiff_host::HostConfig;

use crate::api_client::{self, DaemonAddress};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HostArgs {
    #[command(subcommand)]
    action: Option<HostAction>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Subcommand)]
enum HostAction {
    /// The daemon's version, uptime, VM counts and host memory.
    Status {
        #[command(flatten)]
        address: DaemonAddress,
        /// Print the JSON the API returns.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct DaemonArgs {
    /// Where VM definitions, consoles, logs and events live.
    #[arg(long, default_value = "/var/lib/skiff", value_name = "DIR")]
    state_dir: PathBuf,
    /// The API's unix socket.
    #[arg(long, env = "SKIFF_SOCKET", default_value = api_client::DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Permissions of the unix socket, in octal (0600: root only).
    #[arg(long, default_value = "600", value_name = "MODE")]
    socket_mode: String,
    /// Also serve the API over TCP on this address (requires --token-file; loopback only:
    /// the API is clear text).
    #[arg(long, value_name = "ADDR:PORT", requires = "token_file")]
    listen: Option<SocketAddr>,
    /// The bearer token TCP clients must present (the file's first line; mode 0600 or
    /// stricter).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The `skiff` binary that runs VMs [default: this program].
    #[arg(long, value_name = "PATH")]
    vmm_bin: Option<PathBuf>,
    /// Seconds a stop waits for a VM to end before killing its VMM.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    stop_timeout: u64,
    /// A directory that VMs' kernels, initrds and disks may be in (repeatable); any other
    /// path is refused [default: <state-dir>/images, created if missing].
    #[arg(long = "image-dir", value_name = "DIR")]
    image_dirs: Vec<PathBuf>,
    /// Host block devices VMs may have as disks: a shell pattern on the path a spec gives,
    /// e.g. '/dev/mapper/vg0-*' (repeatable; none by default). A writable one is opened
    /// exclusively: one VM at a time, and never while mounted.
    #[arg(long = "disk-device-pattern", value_name = "PATTERN")]
    disk_device_patterns: Vec<String>,
    /// Rotate a VM's console log and VMM log past this size (the older part goes to
    /// `<log>.1`), e.g. 64M [default: 16M].
    #[arg(long, value_name = "SIZE")]
    log_max: Option<ByteSize>,
    /// Host memory the VMs may use altogether, e.g. 2G [default: 90 % of the host's].
    #[arg(long, value_name = "SIZE")]
    memory_budget: Option<ByteSize>,
    /// Host swap or zram admission control may promise for VMs' max − min [default: the
    /// host's swap; with none, only VMs' mins are checked].
    #[arg(long, value_name = "SIZE")]
    reclaim_capacity: Option<ByteSize>,
    /// Start KSM (page sharing) and tune its scan rate to the sharing it finds; without
    /// it KSM is left as it is and only reported.
    #[arg(long)]
    ksm: bool,
    /// The page-sharing domain (`memory.sharing_domain`) whose VMs KSM may merge; every
    /// other domain's VMs run unmergeable, since KSM merges across all mergeable memory
    /// (docs/memory.md) [default: the VMs without a domain].
    #[arg(long, value_name = "NAME")]
    sharing_domain: Option<String>,
    /// The idle-memory tax rate τ in [0, 1): an idle page costs 1/(1−τ) active ones.
    #[arg(long, default_value_t = 0.75, value_name = "TAU")]
    idle_tax: f64,
    /// Every VMM runs jailed (docs/security.md) as uid and gid BASE + the VM's index (kept
    /// until the VM is deleted); the daemon keeps [BASE, BASE + 65536) for its VMs.
    #[arg(long, default_value_t = skiff_host::jail::DEFAULT_UID_BASE, value_name = "BASE")]
    jail_uid_base: u32,
    /// Start VMMs unjailed, as root in the host's namespaces: for a daemon that is not root
    /// or a host without namespaces, or to debug a VMM with host tools. Loses the jail's
    /// protection of the host from a VMM a guest took over (docs/security.md).
    #[arg(long, conflicts_with = "jail_uid_base")]
    no_jail: bool,
}

pub fn run(args: HostArgs) -> Result<u8> {
    match args.action {
        Some(HostAction::Status { address, json }) => status(&address, json),
        None => serve(args.daemon),
    }
}

fn status(address: &DaemonAddress, json: bool) -> Result<u8> {
    let client = address.client()?;
    if json {
        let body = api_client::call(&client, "GET", "/host", None)?;
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(0);
    }
    let s: HostStatus = api_client::call_json(&client, "GET", "/host", None)?;
    println!(
        "skiff host {} (pid {}), up {} s",
        s.version, s.pid, s.uptime_secs
    );
    println!("state dir: {}", s.state_dir);
    println!("VMs: {} ({} running)", s.vms, s.running);
    println!(
        "host memory: {} MiB total, {} MiB available",
        s.memory_total_bytes >> 20,
        s.memory_available_bytes >> 20
    );
    if let Some(m) = &s.memory {
        println!(
            "VM memory: {} state, {} MiB free of a {} MiB budget ({} MiB for targets)",
            m.state.as_str(),
            m.free_bytes >> 20,
            m.budget_bytes >> 20,
            m.allocatable_bytes >> 20
        );
        if let Some(k) = &m.ksm {
            println!(
                "page sharing: {} MiB saved, KSM {} ({} pages every {} ms{})",
                k.saved_bytes >> 20,
                if k.running { "running" } else { "stopped" },
                k.pages_to_scan,
                k.sleep_millisecs,
                if k.managed { ", tuned by skiff" } else { "" }
            );
        }
    }
    Ok(0)
}

/// The jail needs root (namespaces, mounts, device nodes, other uids): say so at once
/// rather than at each VM's start.
fn jail_config(uid_base: u32) -> Result<JailConfig> {
    let config = JailConfig { uid_base };
    config
        .validate()
        .map_err(anyhow::Error::msg)
        .context("--jail-uid-base")?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "jailing VMMs needs root: run the daemon as root, or pass --no-jail (VMMs then run \
             unjailed as the daemon's user)"
        );
    }
    Ok(config)
}

fn serve(args: DaemonArgs) -> Result<u8> {
    if std::env::var_os("SKIFF_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let vmm_bin = match args.vmm_bin {
        Some(path) => path,
        None => std::env::current_exe().context("cannot find this program to run VMs with")?,
    };
    let socket_mode = u32::from_str_radix(&args.socket_mode, 8)
        .with_context(|| format!("--socket-mode {} is not an octal mode", args.socket_mode))?;
    let tcp = match (args.listen, &args.token_file) {
        (Some(addr), Some(path)) => {
            skiff_host::access::check_listen(addr)?;
            Some((addr, skiff_host::access::read_token_file(path)?))
        }
        _ => None,
    };
    let memory = MemoryConfig {
        budget_bytes: args.memory_budget.map(ByteSize::bytes),
        reclaim_capacity_bytes: args.reclaim_capacity.map(ByteSize::bytes),
        manage_ksm: args.ksm,
        sharing_domain: args.sharing_domain,
        policy: PolicyConfig {
            tax_rate: args.idle_tax,
            ..PolicyConfig::default()
        },
    };
    memory.validate().context("--idle-tax")?;
    if let Some(domain) = &memory.sharing_domain {
        skiff_api::validate_domain(domain).context("--sharing-domain")?;
    }
    let image_dirs = image_dirs(&args.state_dir, &args.image_dirs)?
        .with_device_patterns(&args.disk_device_patterns)
        .context("--disk-device-pattern")?;
    let jail = match args.no_jail {
        true => None,
        false => Some(jail_config(args.jail_uid_base)?),
    };
    let config = HostConfig {
        state_dir: args.state_dir,
        vmm_bin,
        stop_timeout: Duration::from_secs(args.stop_timeout),
        start_timeout: Duration::from_secs(60),
        memory,
        jail,
        image_dirs,
        meter: std::sync::Arc::new(skiff_host::memory::measure::ProcMeter),
        log_max_bytes: args
            .log_max
            .map_or(skiff_host::log_rotation::DEFAULT_MAX_BYTES, ByteSize::bytes)
            .max(1),
    };
    let options = ServeOptions {
        socket: args.socket,
        socket_mode,
        tcp,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(skiff_host::server::run(config, options))?;
    Ok(0)
}

/// The directories VM files may be in: those given, or `<state-dir>/images` (made here).
fn image_dirs(state_dir: &std::path::Path, given: &[PathBuf]) -> Result<ImageDirs> {
    let dirs = if given.is_empty() {
        let default = state_dir.join("images");
        std::fs::create_dir_all(&default)
            .with_context(|| format!("cannot create {}", default.display()))?;
        vec![default]
    } else {
        given.to_vec()
    };
    ImageDirs::new(&dirs).context("--image-dir")
}
